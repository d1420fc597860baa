"""The soak's witness: every record the broker ever held, across its memory-only incarnations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

# (broker incarnation, topic, partition, offset): the delivery order of a record.
Position = tuple[int, str, int, int]


class SweepIncomplete(RuntimeError):
    """The sweep did not reach the end offsets it noted before the broker went away."""


class Collector:
    """A consumer kept running throughout, plus sweeps that read a broker to its end.

    Tansu forgets everything when it stops, so before each outage the harness sweeps: whatever
    the background consumer has not fetched yet is collected before the broker goes away.
    """

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self.records: dict[Position, Any] = {}
        self.generation = 0
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._resubscribe = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def resubscribe(self) -> None:
        """Read the new broker incarnation from its beginning."""
        self._resubscribe.set()

    def delivered(self, topic: str) -> list[tuple[Position, Any]]:
        """The records of `topic` in delivery order: incarnation by incarnation, by offset."""
        return sorted((p, r) for p, r in list(self.records.items()) if p[1] == topic)

    async def _run(self) -> None:
        while True:
            self._resubscribe.clear()
            consumer = AIOKafkaConsumer(*self.topics, bootstrap_servers=self.bootstrap, group_id=None,
                                        auto_offset_reset="earliest", metadata_max_age_ms=500,
                                        request_timeout_ms=3000)
            try:
                await consumer.start()
                while not self._resubscribe.is_set():
                    batches = await consumer.getmany(timeout_ms=100)
                    for tp, batch in batches.items():
                        for r in batch:
                            self.records[(self.generation, tp.topic, tp.partition, r.offset)] = r
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down: try again shortly
                self.errors.append(repr(exc)[:200])
                await asyncio.sleep(0.2)  # retry pacing while the broker is away
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def sweep(self, timeout_s: float = 60.0) -> int:
        """Read every partition from offset 0 up to the end offsets noted first and merge what
        was read; returns how many records were read. A condition, not a duration: under load a
        fixed read time stopped short. Raises SweepIncomplete when the deadline passes first."""
        # Requests may take as long as the sweep itself: under load, it is the deadline that counts.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest",
                                    enable_auto_commit=False, request_timeout_ms=int(timeout_s * 1000))
        try:
            return await asyncio.wait_for(self._sweep(consumer), timeout_s)
        except TimeoutError:
            raise SweepIncomplete(f"sweep did not reach the end offsets within {timeout_s}s") from None
        finally:
            await consumer.stop()

    async def _sweep(self, consumer: AIOKafkaConsumer) -> int:
        await consumer.start()
        partitions = await self._partitions(consumer)
        consumer.assign(partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        # The fetcher starts every partition at its earliest offset (auto_offset_reset);
        # seek_to_beginning() would race that first reset and could start at the end.
        read = 0
        while await _behind(consumer, ends):
            for tp, batch in (await consumer.getmany(*ends, timeout_ms=200)).items():
                for r in batch:
                    self.records[(self.generation, tp.topic, tp.partition, r.offset)] = r
                read += len(batch)
        return read

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Every partition of every topic, once the metadata knows them all."""
        while True:
            known = {topic: consumer.partitions_for_topic(topic) for topic in self.topics}
            if all(known.values()):
                return [TopicPartition(topic, p) for topic, parts in known.items() for p in sorted(parts)]
            await consumer.topics()  # a fresh metadata request
            await asyncio.sleep(0.1)  # polling the metadata until the topics appear


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False
