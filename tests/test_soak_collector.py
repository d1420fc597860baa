"""The soak's collector sweeps a broker to the end offsets it noted, however slowly it reads."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.soak_collector import Collector, SweepIncomplete
from poller.localbroker import TansuBroker


async def produce(bootstrap: str, topic: str, batches: list[int]) -> None:
    """Records of `topic` partition 0, in batches of the given sizes (Tansu reports a batched
    partition's end as its last batch's base offset + 1: the sweep must still read that batch whole)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for size in batches:
            batch = producer.create_batch()
            for n in range(size):
                assert batch.append(key=None, value=f"{topic}-{n}".encode(), timestamp=None) is not None
            batch.close()
            await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


@contextmanager
def busy_loop(slice_s: float) -> Iterator[None]:
    """Load like the soak's (the in-process simulator serving pages): the event loop is busy
    for `slice_s` at a time, so a consumer gets a turn only now and then."""
    async def hog() -> None:
        while True:
            until = time.monotonic() + slice_s
            while time.monotonic() < until:
                pass  # CPU work, deliberately blocking the loop
            await asyncio.sleep(0)  # one turn for everyone else

    task = asyncio.get_running_loop().create_task(hog())
    try:
        yield
    finally:
        task.cancel()


class TestCollector:
    @pytest.mark.timeout(60)
    async def test_sweep_reads_every_record_under_load(self, running_kafka_broker: TansuBroker) -> None:
        """With the loop busy most of the time while it reads, a sweep still returns only after
        reading every record up to the end offsets it noted first (a fixed read time stops short)."""
        topic = f"sweep{uuid.uuid4().hex[:8]}.tasks"
        await produce(running_kafka_broker.bootstrap, topic, [1, 1, 300])
        collector = Collector(running_kafka_broker.bootstrap, [topic])
        with busy_loop(0.3):
            read = await collector.sweep(timeout_s=50)
        assert read == 302
        assert sorted(p[3] for p in collector.records if p[1] == topic) == list(range(302))

    async def test_sweep_waits_for_every_topic(self, running_kafka_broker: TansuBroker) -> None:
        """A topic the broker does not know yet is waited for, never silently skipped."""
        collector = Collector(running_kafka_broker.bootstrap, [f"sweep{uuid.uuid4().hex[:8]}.absent"])
        with pytest.raises(SweepIncomplete, match="within 2s"):
            await collector.sweep(timeout_s=2)
