"""Publishing records to Kafka: the Publisher protocol, the aiokafka adapter and an in-memory fake.

Delivery contract (docs/design.md §5): `publish` returns only after the brokers acknowledged every
record with acks=all. When it raises, some records may already be stored ("maybe sent"): a
record handed to the producer cannot be taken back, neither by an error nor by cancellation,
and may still be delivered later. The caller republishes the same records; event ids are
deterministic, so consumers de-duplicate.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, Protocol

import aiokafka.errors as kafka_errors
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context

from poller.config import KafkaSettings, TopicSettings
from poller.errors import PublishError, PublishRejected, PublishUnavailable
from poller.metrics import BROKER_CONNECTED, EVENTS_PUBLISHED, LAST_EVENT, PUBLISH_FAILURES
from poller.models import OutboundRecord, TopicKind

log = structlog.get_logger(__name__)

# Broker answers that retrying cannot fix, even where aiokafka does not mark them non-retriable.
REJECTED_ERRORS: tuple[type[Exception], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.InvalidTopicError,
    kafka_errors.PolicyViolationError,
)
# Outages and timeouts that aiokafka marks non-retriable (its `retriable` means "the sender may
# retry in place"), but that for us mean "try again later": the brokers may come back.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.ProducerClosed,
    kafka_errors.UnrecognizedBrokerVersion,
    OSError,
    TimeoutError,
)
# What the adapter catches; everything here is mapped by `map_error`.
CAUGHT_ERRORS: tuple[type[BaseException], ...] = (kafka_errors.KafkaError, *UNAVAILABLE_ERRORS)
# Per-partition batch size; stays below the broker's default message.max.bytes (1 MiB), and
# never above KAFKA_MAX_MESSAGE_BYTES, which a broker may also enforce on a whole batch.
MAX_BATCH_BYTES = 512 * 1024
# Topic settings by name suffix: the current-state topic keeps the last record per task_id
# (and drops a task's key once its tombstone has been compacted).
TOPIC_CONFIGS: dict[str, dict[str, str]] = {".tasks.state": {"cleanup.policy": "compact"}}
# CreateTopics answers a topic created concurrently (another replica, auto-create) with this.
TOPIC_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno


class Publisher(Protocol):
    """Sends records to the brokers and returns once they are acknowledged."""

    async def start(self) -> None:
        """Connect and create missing topics; raise PublishUnavailable if brokers are down."""

    async def stop(self) -> None:
        """Flush what is buffered and disconnect; idempotent and safe after a failed start."""

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Send all records; return after every one is acknowledged (acks=all).

        Raises PublishUnavailable (retriable: timeout, connection, not enough replicas) or
        PublishRejected (too large, not authorised). After an error or a cancellation some
        records may have been stored and others may still be delivered later.
        """

    async def ping(self) -> None:
        """A cheap round trip to the brokers, for readiness; PublishUnavailable if none answers."""


def map_error(exc: BaseException, what: str) -> PublishError:
    """Translate an aiokafka/network exception into our tree (the only place that knows both)."""
    detail = f"{what}: {_describe(exc)}"
    if isinstance(exc, REJECTED_ERRORS):
        return PublishRejected(detail)
    if isinstance(exc, UNAVAILABLE_ERRORS) or getattr(exc, "retriable", False):
        return PublishUnavailable(detail)
    return PublishRejected(detail)


def _describe(exc: BaseException) -> str:
    # aiokafka's messages often start with the class name already; say it once.
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # aiokafka's abstract BrokerResponseError cannot render itself (no errno)
        text = ""
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A send future we stopped waiting for still resolves later; read its outcome so asyncio
    # does not log "exception was never retrieved" for a record that is merely "maybe sent".
    if not fut.cancelled():
        fut.exception()


def _event_type(record: OutboundRecord) -> str:
    for name, value in record.headers:
        if name == "ce_type":
            return value.decode("utf-8", "replace")
    return "unknown"


class KafkaPublisher:
    """The aiokafka adapter: acks=all, batching, compression, topics created at start."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings) -> None:
        self._kafka = kafka
        self._topics = topics
        self._names: dict[TopicKind, str] = {
            "tasks": topics.tasks,
            "task-types": topics.task_types,
            "dead-letter": topics.dead_letter,
        }
        if topics.state_enabled:
            self._names["state"] = topics.state
        self._producer: AIOKafkaProducer | None = None
        # Set after a failed publish: the next one first re-creates missing topics. A broker
        # that lost its topics (Tansu is memory-only; an operator may delete one) would
        # otherwise leave the producer waiting for partitions that no longer exist.
        self._check_topics = False

    @property
    def topic_names(self) -> dict[TopicKind, str]:
        """The Kafka topic of each record kind."""
        return dict(self._names)

    @property
    def _timeout_s(self) -> float:
        return self._kafka.request_timeout_ms / 1000

    async def __aenter__(self) -> KafkaPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create missing topics and start the producer, within one request timeout.

        Raises PublishUnavailable when the brokers cannot be reached (nothing is left running)
        and PublishRejected when they refuse us (authentication, topic creation not allowed).
        """
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._producer_options())
        started = False
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ensure_topics()
                await producer.start()
            started = True
        except CAUGHT_ERRORS as exc:
            BROKER_CONNECTED.set(0)
            where = self._kafka.bootstrap_servers
            raise map_error(exc, f"cannot start the Kafka producer ({where})") from exc
        finally:
            if not started:
                await producer.stop()
        BROKER_CONNECTED.set(1)
        self._producer = producer

    async def stop(self) -> None:
        """Flush buffered records (bounded by their request timeout) and disconnect; idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ping(self) -> None:
        """Fetch cluster metadata; raise PublishUnavailable if no broker answers."""
        producer = self._producer
        if producer is None:
            raise PublishUnavailable("the Kafka producer is not started")
        try:
            async with asyncio.timeout(self._timeout_s):
                await producer.client.fetch_all_metadata()
        except CAUGHT_ERRORS as exc:
            BROKER_CONNECTED.set(0)
            raise PublishUnavailable(f"Kafka brokers do not answer: {_describe(exc)}") from exc

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Send every record, then wait for all acknowledgements (see `Publisher.publish`).

        Records are handed to the producer one by one (it batches them per partition) and the
        acknowledgements are awaited together: awaiting each send in turn would cost a round
        trip per record. Cancellation stops the waiting, not the delivery ("maybe sent").
        """
        if not records:
            return
        producer = self._producer
        if producer is None:
            raise PublishUnavailable("the Kafka producer is not started")
        futures: list[asyncio.Future[Any]] = []
        try:
            if self._check_topics:
                async with asyncio.timeout(self._timeout_s):
                    await self._ensure_topics()
                self._check_topics = False
            for record in records:
                futures.append(await producer.send(
                    self._names[record.topic], value=record.value, key=record.key,
                    headers=list(record.headers),
                ))
            # asyncio.wait, not gather: a cancelled gather would cancel the delivery futures,
            # which must stay with the producer until the brokers answer.
            await asyncio.wait(futures)
        except CAUGHT_ERRORS as exc:
            self._fail(exc, len(records))
        finally:
            for fut in futures:
                if not fut.done():
                    fut.add_done_callback(_retrieve)
        # Read every outcome (asyncio logs unread exceptions), then report the first failure.
        failures = [failure for fut in futures if (failure := fut.exception()) is not None]
        if failures:
            self._fail(failures[0], len(records))
        for event_type, count in Counter(_event_type(r) for r in records).items():
            EVENTS_PUBLISHED.labels(type=event_type).inc(count)
        BROKER_CONNECTED.set(1)
        LAST_EVENT.set(time.time())

    def _fail(self, exc: BaseException, count: int) -> NoReturn:
        self._check_topics = True
        PUBLISH_FAILURES.labels(error=type(exc).__name__).inc()
        BROKER_CONNECTED.set(0)
        if not isinstance(exc, CAUGHT_ERRORS):
            raise exc
        raise map_error(exc, f"Kafka did not acknowledge a batch of {count} record(s)") from exc

    async def _ensure_topics(self) -> None:
        """Create the topics that do not exist yet; existing ones are used as they are."""
        admin = AIOKafkaAdminClient(**client_options(self._kafka))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in self._names.values() if name not in existing]
            if missing:
                response = await admin.create_topics([
                    NewTopic(name, self._topics.partitions, self._topics.replication_factor,
                             topic_configs=TOPIC_CONFIGS.get(name.removeprefix(self._topics.prefix), {}))
                    for name in missing
                ])
                _check_created(response.topic_errors)
                log.info("kafka_topics_created", topics=missing,
                         partitions=self._topics.partitions,
                         replication_factor=self._topics.replication_factor)
        finally:
            await admin.close()

    def _producer_options(self) -> dict[str, Any]:
        kafka = self._kafka
        return {
            **client_options(self._kafka),
            "acks": "all",
            "enable_idempotence": kafka.enable_idempotence,
            "compression_type": None if kafka.compression_type == "none" else "gzip",
            "linger_ms": kafka.linger_ms,
            # aiokafka's 16 KiB default holds about ten of our events (each carries the full
            # task); bigger batches mean fewer requests and better compression.
            "max_batch_size": min(MAX_BATCH_BYTES, kafka.max_message_bytes),
            # The records are cut to this budget (events.encode), and aiokafka's own estimate of
            # a record's size stays below ours: a record we made is never refused here.
            "max_request_size": kafka.max_message_bytes,
        }


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client (producer, admin, tail's consumer)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": "waiqin-poller",
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return options


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=kafka.ssl_cafile,
        certfile=kafka.ssl_certfile,
        keyfile=kafka.ssl_keyfile,
        password=kafka.ssl_password.get_secret_value() if kafka.ssl_password else None,
    )
    return context


def _check_created(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    # Each entry is (name, error_code[, error_message]); "already exists" means another
    # process won the race, which is just as good.
    for name, code, *rest in topic_errors:
        if code in (0, TOPIC_ALREADY_EXISTS):
            continue
        error = kafka_errors.for_code(code)
        message = rest[0] if rest and rest[0] else error.description
        raise error(f"creating topic {name}: {message}")


class MemoryPublisher:
    """An in-memory Publisher for unit tests of the loop, with fault injection."""

    def __init__(self) -> None:
        self.records: list[OutboundRecord] = []
        self.started = False
        self._failures_left = 0
        self._delivered_before_failing = 0
        self._reachable = True

    def fail_next(self, count: int = 1, *, delivered: int = 0) -> None:
        """Make the next `count` publish calls raise PublishUnavailable; each keeps its first
        `delivered` records before raising, as a broker that stored part of a batch would."""
        self._failures_left = count
        self._delivered_before_failing = delivered

    def set_reachable(self, reachable: bool) -> None:
        """Make `ping` (and `start`) fail while False, as if the brokers were down."""
        self._reachable = reachable

    def of(self, topic: TopicKind) -> list[OutboundRecord]:
        """The records published to one topic kind, in order."""
        return [r for r in self.records if r.topic == topic]

    async def __aenter__(self) -> MemoryPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start; raise PublishUnavailable while set unreachable."""
        if not self._reachable:
            raise PublishUnavailable("memory publisher set unreachable")
        self.started = True

    async def stop(self) -> None:
        """Stop; idempotent."""
        self.started = False

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Keep the records, or raise PublishUnavailable if a failure was injected."""
        if self._failures_left > 0:
            self._failures_left -= 1
            self.records.extend(records[:self._delivered_before_failing])
            raise PublishUnavailable("injected publish failure")
        if not self.started:
            raise PublishUnavailable("the memory publisher is not started")
        self.records.extend(records)
        for event_type, count in Counter(_event_type(r) for r in records).items():
            EVENTS_PUBLISHED.labels(type=event_type).inc(count)
        BROKER_CONNECTED.set(1)
        LAST_EVENT.set(time.time())

    async def ping(self) -> None:
        """Raise PublishUnavailable while set unreachable."""
        if not self._reachable:
            raise PublishUnavailable("memory publisher set unreachable")
