"""Tests for poller.publish: the Kafka adapter against a real broker, error mapping, the fake."""

from __future__ import annotations

import asyncio
import inspect
import time

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from poller import events
from poller.config import KafkaSettings
from poller.errors import PublishRejected, PublishUnavailable
from poller.metrics import EVENTS_PUBLISHED, PUBLISH_FAILURES
from poller.models import OutboundRecord
from poller.publish import CAUGHT_ERRORS, KafkaPublisher, MemoryPublisher, map_error
from tests.fixtures.broker import (
    BrokerFactory,
    TansuBroker,
    consume,
    kafka_settings,
    topic_settings,
)
from tests.test_events import created_events, long_feedback_task


def record(n: int, *, topic: str = "tasks", ce_type: str = "TaskCreated") -> OutboundRecord:
    return OutboundRecord(
        topic=topic,  # type: ignore[arg-type]
        key=f"task-{n}".encode(),
        value=f'{{"task_id":"task-{n}","content":"拜访客户 {n}"}}'.encode(),
        headers=(("ce_type", ce_type.encode()), ("ce_id", f"id-{n}".encode()),
                 ("content-type", b"application/json")),
    )


def counter_value(counter: object, **labels: str) -> float:
    return float(counter.labels(**labels)._value.get())  # type: ignore[attr-defined]


async def describe(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


def fresh_publisher(broker: TansuBroker) -> KafkaPublisher:
    return KafkaPublisher(kafka_settings(broker), topic_settings())


class TestKafkaPublisher:
    async def test_records_arrive_exactly(self, running_kafka_broker: TansuBroker) -> None:
        """Keys, values and headers read back from the broker equal what was published."""
        topics = topic_settings()
        sent = [record(n) for n in range(5)]
        dead_letter = OutboundRecord("dead-letter", None, b'{"r":1}', (("ce_type", b"DeadLetter"),))
        sent.append(dead_letter)
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            await publisher.publish(sent)
        got = await consume(running_kafka_broker.bootstrap, topics.tasks, min_records=5)
        assert sorted((r.key, r.value, list(r.headers)) for r in got) == sorted(
            (r.key, r.value, list(r.headers)) for r in sent[:5]
        )
        dead = await consume(running_kafka_broker.bootstrap, topics.dead_letter, min_records=1)
        assert [(r.key, r.value, list(r.headers)) for r in dead] == [
            (None, b'{"r":1}', [("ce_type", b"DeadLetter")])
        ]

    async def test_one_key_keeps_its_order(self, running_kafka_broker: TansuBroker) -> None:
        """Records with one key land on one partition in the order they were given."""
        topics = topic_settings()
        sent = [OutboundRecord("tasks", b"same", str(n).encode()) for n in range(50)]
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            await publisher.publish(sent)
        got = await consume(running_kafka_broker.bootstrap, topics.tasks, min_records=50)
        assert [r.value for r in got] == [r.value for r in sent]
        assert len({r.partition for r in got}) == 1

    async def test_missing_topics_are_created(self, running_kafka_broker: TansuBroker) -> None:
        """start() creates the three topics with the configured partition count."""
        topics = topic_settings(partitions=4)
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics):
            pass
        names = [topics.tasks, topics.task_types, topics.dead_letter]
        assert await describe(running_kafka_broker.bootstrap, names) == dict.fromkeys(names, 4)

    async def test_existing_topic_is_used_as_is(self, running_kafka_broker: TansuBroker) -> None:
        """A topic that already exists keeps its partitions; the others are still created."""
        topics = topic_settings(partitions=3)
        admin = AIOKafkaAdminClient(bootstrap_servers=running_kafka_broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.tasks, 1, 1)])
        finally:
            await admin.close()
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            await publisher.publish([record(1)])
        names = [topics.tasks, topics.task_types]
        assert await describe(running_kafka_broker.bootstrap, names) == {
            topics.tasks: 1, topics.task_types: 3,
        }

    async def test_racing_topic_creation(self, running_kafka_broker: TansuBroker) -> None:
        """Two publishers starting at once both start, whichever creates the topics."""
        topics = topic_settings()
        settings = kafka_settings(running_kafka_broker)
        first, second = KafkaPublisher(settings, topics), KafkaPublisher(settings, topics)
        try:
            await asyncio.gather(first.start(), second.start())
        finally:
            await asyncio.gather(first.stop(), second.stop())

    async def test_throughput_smoke(self, running_kafka_broker: TansuBroker) -> None:
        """2,000 records in one publish call are all acknowledged and arrive."""
        topics = topic_settings()
        sent = [record(n) for n in range(2000)]
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            started = time.perf_counter()
            await publisher.publish(sent)
            elapsed = time.perf_counter() - started
        got = await consume(running_kafka_broker.bootstrap, topics.tasks, min_records=2000)
        assert {r.key for r in got} == {r.key for r in sent}
        assert elapsed < 5.0, f"2,000 records took {elapsed:.2f}s"

    async def test_metrics_count_events(self, running_kafka_broker: TansuBroker) -> None:
        """EVENTS_PUBLISHED grows by the number of acknowledged records of each ce_type."""
        before = counter_value(EVENTS_PUBLISHED, type="TaskAccepted")
        async with fresh_publisher(running_kafka_broker) as publisher:
            await publisher.publish([record(n, ce_type="TaskAccepted") for n in range(3)])
        assert counter_value(EVENTS_PUBLISHED, type="TaskAccepted") == before + 3

    async def test_record_too_large_is_rejected(self, running_kafka_broker: TansuBroker) -> None:
        """A record above the producer's size limit raises PublishRejected and is counted."""
        huge = OutboundRecord("tasks", b"k", b"x" * 2_000_000)
        before = counter_value(PUBLISH_FAILURES, error="MessageSizeTooLargeError")
        async with fresh_publisher(running_kafka_broker) as publisher:
            with pytest.raises(PublishRejected, match="MessageSizeTooLargeError"):
                await publisher.publish([record(1), huge])
        assert counter_value(PUBLISH_FAILURES, error="MessageSizeTooLargeError") == before + 1

    async def test_ping_answers(self, running_kafka_broker: TansuBroker) -> None:
        """ping() returns when the broker is up."""
        async with fresh_publisher(running_kafka_broker) as publisher:
            await publisher.ping()

    async def test_not_started(self, running_kafka_broker: TansuBroker) -> None:
        """publish and ping before start raise PublishUnavailable; stop is a no-op."""
        publisher = fresh_publisher(running_kafka_broker)
        with pytest.raises(PublishUnavailable):
            await publisher.publish([record(1)])
        with pytest.raises(PublishUnavailable):
            await publisher.ping()
        await publisher.stop()
        await publisher.stop()

    async def test_empty_publish_is_a_no_op(self, running_kafka_broker: TansuBroker) -> None:
        """Publishing nothing returns at once, even before start."""
        await fresh_publisher(running_kafka_broker).publish([])


class TestRecordSize:
    @pytest.mark.parametrize("compression", ["gzip", "none"])
    async def test_long_feedback_arrives_cut(self, running_kafka_broker: TansuBroker,
                                             compression: str) -> None:
        """A task with 1.8 MB of feedback texts reaches the topic cut, `truncated` naming the paths.

        Before the cut, the producer refused such a record with MessageSizeTooLargeError and
        the page could never be published.
        """
        topics = topic_settings()
        created = created_events(long_feedback_task())
        records = [events.encode(event, source="test") for event in created]
        settings = kafka_settings(running_kafka_broker, compression_type=compression)
        async with KafkaPublisher(settings, topics) as publisher:
            await publisher.publish(records)
        got = await consume(running_kafka_broker.bootstrap, topics.tasks, min_records=len(records),
                            timeout_s=30)
        decoded = [events.decode(r) for r in got]
        assert [type(d) for d in decoded] == [type(e) for e in created]
        assert decoded[0].truncated == ("task.latest_feedback_content",
                                        "task.feedback_detail[0].feedback_content")
        for message, event in zip(decoded, created, strict=True):
            assert message.truncated and message.id == event.id
            assert len(message.task.feedback_detail) == 3
        assert max(events.record_size(r) for r in records) <= 1_000_000

    async def test_producer_limit_is_the_budget(self, running_kafka_broker: TansuBroker) -> None:
        """With KAFKA_MAX_MESSAGE_BYTES=65536, records cut to it are sent; a larger one is refused."""
        topics = topic_settings()
        settings = kafka_settings(running_kafka_broker, max_message_bytes=65536)
        created = created_events(long_feedback_task(chars=20_000))
        records = [events.encode(event, source="test", max_bytes=65536) for event in created]
        assert all(60_000 < events.record_size(r) <= 65536 for r in records)
        async with KafkaPublisher(settings, topics) as publisher:
            await publisher.publish(records)
            with pytest.raises(PublishRejected, match="MessageSizeTooLargeError"):
                await publisher.publish([OutboundRecord("tasks", b"k", b"x" * 70_000)])
        got = await consume(running_kafka_broker.bootstrap, topics.tasks, min_records=len(records))
        assert [r.value for r in got] == [r.value for r in records]


class TestFailures:
    async def test_start_fails_promptly(self, broker_factory: BrokerFactory) -> None:
        """start() against a stopped broker raises PublishUnavailable within the request timeout."""
        broker = broker_factory()
        broker.stop()
        settings = kafka_settings(broker, request_timeout_ms=2000)
        publisher = KafkaPublisher(settings, topic_settings())
        started = time.monotonic()
        with pytest.raises(PublishUnavailable, match="cannot start"):
            await publisher.start()
        assert time.monotonic() - started < 4.0
        await publisher.stop()  # safe after a failed start
        broker.start()
        await publisher.start()  # a later start succeeds
        await publisher.stop()

    async def test_publish_survives_restart(self, broker_factory: BrokerFactory) -> None:
        """In an outage publish and ping raise PublishUnavailable; later the producer delivers."""
        broker = broker_factory()
        topics = topic_settings()
        settings = kafka_settings(broker, request_timeout_ms=1500)
        async with KafkaPublisher(settings, topics) as publisher:
            await publisher.publish([record(1)])
            broker.stop()
            started = time.monotonic()
            with pytest.raises(PublishUnavailable):
                await publisher.publish([record(2), record(3)])
            assert time.monotonic() - started < 5.0
            with pytest.raises(PublishUnavailable):
                await publisher.ping()
            broker.start()
            await publisher.publish([record(4)])
            await publisher.ping()
        # Tansu is memory-only: the restart emptied the topic, so only what came after is there
        # (plus, possibly, the records of the failed call: "maybe sent").
        got = await consume(broker.bootstrap, topics.tasks, until=lambda rs: any(
            r.key == b"task-4" for r in rs))
        assert b"task-4" in {r.key for r in got}
        assert {r.key for r in got} <= {b"task-2", b"task-3", b"task-4"}


    async def test_start_gives_up_on_a_silent_address(self) -> None:
        """start() against an address that never answers gives up within the request timeout."""
        settings = KafkaSettings(bootstrap_servers="10.255.255.1:9092", request_timeout_ms=500,
                                 enable_idempotence=False)
        publisher = KafkaPublisher(settings, topic_settings())
        started = time.monotonic()
        with pytest.raises(PublishUnavailable):
            await publisher.start()
        assert time.monotonic() - started < 3.0
        await publisher.stop()

    async def test_cancelled_publish_is_maybe_sent(self, running_kafka_broker: TansuBroker) -> None:
        """Cancelling publish stops the waiting, not the delivery; the producer keeps working."""
        topics = topic_settings()
        first = [record(n) for n in range(2000)]
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(publisher.publish(first), timeout=0.001)
            await publisher.publish([record(5000)])
        got = await consume(running_kafka_broker.bootstrap, topics.tasks,
                            until=lambda rs: any(r.key == b"task-5000" for r in rs))
        assert b"task-5000" in {r.key for r in got}
        assert {r.key for r in got} <= {r.key for r in first} | {b"task-5000"}


class TestMapError:
    @pytest.mark.parametrize("error", [
        cls for _, cls in inspect.getmembers(kafka_errors, inspect.isclass)
        if issubclass(cls, CAUGHT_ERRORS)
    ], ids=lambda cls: cls.__name__)
    def test_every_caught_type_is_mapped(self, error: type[Exception]) -> None:
        """Each aiokafka error the adapter catches maps to PublishUnavailable or PublishRejected."""
        try:
            exc = error("boom")
        except TypeError:
            exc = error.__new__(error)
        mapped = map_error(exc, "sending")
        assert isinstance(mapped, PublishUnavailable | PublishRejected)
        if getattr(error, "retriable", False):
            assert isinstance(mapped, PublishUnavailable)

    @pytest.mark.parametrize(("error", "expected"), [
        (kafka_errors.KafkaTimeoutError(), PublishUnavailable),
        (kafka_errors.RequestTimedOutError(), PublishUnavailable),
        (kafka_errors.NotEnoughReplicasError(), PublishUnavailable),
        (kafka_errors.NotEnoughReplicasAfterAppendError(), PublishUnavailable),
        (kafka_errors.KafkaConnectionError(), PublishUnavailable),
        (kafka_errors.NodeNotReadyError(), PublishUnavailable),
        (kafka_errors.LeaderNotAvailableError(), PublishUnavailable),
        (ConnectionRefusedError(), PublishUnavailable),
        (TimeoutError(), PublishUnavailable),
        (kafka_errors.MessageSizeTooLargeError(), PublishRejected),
        (kafka_errors.RecordTooLargeError(), PublishRejected),
        (kafka_errors.TopicAuthorizationFailedError(), PublishRejected),
        (kafka_errors.SaslAuthenticationFailed(), PublishRejected),
        (kafka_errors.InvalidTopicError(), PublishRejected),
    ], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__)
    def test_known_errors(self, error: BaseException, expected: type[Exception]) -> None:
        """Timeouts, outages and missing replicas are retriable; size and authorisation are not."""
        mapped = map_error(error, "sending")
        assert type(mapped) is expected
        assert type(error).__name__ in str(mapped)


class TestMemoryPublisher:
    async def test_keeps_records(self) -> None:
        """Published records are kept in order and can be read per topic kind."""
        async with MemoryPublisher() as publisher:
            await publisher.publish([record(1), record(2, topic="dead-letter")])
            await publisher.publish([record(3)])
        assert [r.key for r in publisher.records] == [b"task-1", b"task-2", b"task-3"]
        assert [r.key for r in publisher.of("tasks")] == [b"task-1", b"task-3"]

    async def test_injected_failures(self) -> None:
        """fail_next(n) makes the next n publishes raise PublishUnavailable and store nothing."""
        async with MemoryPublisher() as publisher:
            publisher.fail_next(2)
            for _ in range(2):
                with pytest.raises(PublishUnavailable):
                    await publisher.publish([record(1)])
            await publisher.publish([record(2)])
        assert [r.key for r in publisher.records] == [b"task-2"]

    async def test_unreachable(self) -> None:
        """While set unreachable, start and ping raise PublishUnavailable."""
        publisher = MemoryPublisher()
        publisher.set_reachable(False)
        with pytest.raises(PublishUnavailable):
            await publisher.start()
        publisher.set_reachable(True)
        await publisher.start()
        await publisher.ping()
        await publisher.stop()
