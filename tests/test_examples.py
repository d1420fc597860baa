"""The consumer-facing docs: the event catalogue matches the code, the consumer example works."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import jsonschema
from aiokafka import AIOKafkaConsumer, TopicPartition

from poller import events
from poller.localbroker import TansuBroker
from poller.models import OutboundRecord
from poller.publish import KafkaPublisher
from tests.fixtures.broker import kafka_settings, topic_settings

PARTITIONS = 3  # topic_settings() default
# Tansu answers JoinGroup after half the session timeout: a short one keeps the test fast.
FAST_JOIN = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
ROOT = Path(__file__).resolve().parent.parent


def _load(relative: str, name: str) -> ModuleType:
    """Import a script that lives outside the package (docs/, examples/) by its path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


catalogue = _load("docs/gen_event_catalogue.py", "gen_event_catalogue")
consumer = _load("examples/consumer.py", "example_consumer")


def _records() -> dict[str, OutboundRecord]:
    return {example.name: example.record for example in catalogue.examples()}


class TestCatalogue:
    def test_up_to_date(self) -> None:
        """docs/events.md is exactly what the generator produces from today's code."""
        committed = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
        assert committed == catalogue.render(), "run: python docs/gen_event_catalogue.py"

    def test_every_event_type_has_a_decodable_example(self) -> None:
        """Each event type of docs/design.md §4 has one example that decodes to its own model."""
        records = _records()
        names = [cls.__name__ for cls in events.TASK_EVENTS] + ["TaskTypeChanged", "DeadLetter"]
        assert list(records) == names
        for name, record in records.items():
            assert dict(record.headers)["ce_type"] == name.encode()
            assert type(events.decode(record)).__name__ == name

    def test_examples_match_published_schemas(self) -> None:
        """Each example value is valid against its JSON Schema in poller/schemas/."""
        for name, record in _records().items():
            schema = json.loads((ROOT / "poller" / "schemas" / f"{name}.json").read_text())
            jsonschema.Draft202012Validator(schema).validate(json.loads(record.value))


class TestRecentIds:
    def test_bounded_lru(self) -> None:
        """An id is reported as seen until more than `capacity` newer ids pushed it out."""
        recent = consumer.RecentIds(capacity=2)
        assert [recent.seen(i) for i in ("a", "b", "a", "c")] == [False, False, True, False]
        assert recent.seen("a") is True  # "a" was refreshed, so "b" was evicted
        assert recent.seen("b") is False


class TestProcess:
    def test_duplicates_handled_once(self) -> None:
        """A record re-delivered with the same ce_id is skipped."""
        records = _records()
        batch = [records["TaskCreated"], records["TaskAccepted"], records["TaskAccepted"]]
        lines: list[str] = []
        assert consumer.process(batch, consumer.RecentIds(), lines.append) == 2
        assert lines[1].startswith("accepted: task ")


class TestConsumerAgainstBroker:
    async def test_group_consumer_dedupes_and_commits(
        self, running_kafka_broker: TansuBroker
    ) -> None:
        """Published events, one of them twice, are each handled once and all offsets committed."""
        records = _records()
        names = ["TaskCreated", "FeedbackAdded", "TaskFeedbackSubmitted", "TaskAccepted"]
        sent = [records[n] for n in names] + [records["TaskAccepted"]]  # a re-delivery
        topics = topic_settings(partitions=PARTITIONS)
        bootstrap = running_kafka_broker.bootstrap
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            await publisher.publish(sent)

        group = f"{topics.prefix}-group"
        lines: list[str] = []
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(bootstrap, topics.prefix, group,
                                                emit=lines.append, stop=stop,
                                                options=FAST_JOIN))
        try:
            await _until_committed(bootstrap, group, topics.tasks, len(sent), task)
        finally:
            stop.set()
            await task
        assert len(lines) == len(names)
        assert lines[0].startswith("TaskCreated: task ")
        assert lines[1].startswith("feedback on ")
        assert lines[2].startswith("TaskFeedbackSubmitted: task ")
        assert lines[3].startswith("accepted: task ")


async def _until_committed(bootstrap: str, group: str, topic: str, total: int,
                           task: asyncio.Task[None]) -> None:
    """Wait (bounded) until the group's committed offsets cover `total` records."""
    # A consumer that never subscribes does not join the group: it only reads its offsets.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        async with asyncio.timeout(20):
            while True:
                if task.done():
                    task.result()  # the consumer crashed: raise its error
                committed = [await reader.committed(tp) for tp in partitions]
                if sum(offset or 0 for offset in committed) >= total:
                    return
                await asyncio.sleep(0.1)  # committed offsets have no event to await
    finally:
        await reader.stop()
