"""Consuming the poller's topics: typed records, de-duplication, per-task order, and a bootstrap
from the state topic (docs/consumers.md)."""

from __future__ import annotations

import enum
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndTimestamp
from pydantic import ValidationError

from poller import events
from poller.errors import ConsumeError
from poller.models import Task

DEFAULT_PREFIX = "waiqin365"  # POLLER_TOPIC_PREFIX's default
# ce_ids remembered for de-duplication: re-sends arrive within one outbox drain (1000 records)
# or one consumer re-delivery (a batch), far fewer than this.
DEFAULT_CAPACITY = 100_000
# How far before the state read bootstrap() starts on the task topic. An event and its state
# record are published in one outbox flush; the margin covers the time between them (one
# publish call, or a drain that splits a flush) plus clock skew between the poller and us.
DEFAULT_MARGIN = timedelta(hours=1)
GAPS_KEPT = 1000  # the most recent gaps and unreadable records kept for inspection
KNOWN_TYPES = frozenset(
    [model.__name__ for model in events.TASK_EVENTS]
    + ["TaskTypeChanged", "DeadLetter", events.STATE_TYPE]
)
"""The ce_types this release decodes into their own model."""

Payload = events.Event | events.DeadLetter | events.TaskState | events.TaskEvent
"""A decoded value: a typed event, a dead letter, a task's current state, or (for a task event
of a type newer than this release) the envelope every task event shares."""


class Record(Protocol):
    """What the functions here read: a consumed aiokafka record, or the poller's OutboundRecord."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a record's key and CloudEvents headers say, read without parsing its value."""

    ce_id: str
    ce_type: str
    key: str  # the task_id; the type_id on task-types; "" for an unkeyed dead letter
    sequence: int | None  # ce_sequence: task events and state records only
    topic: str | None = None  # where it was read (None for a record not read from Kafka)
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded record: its envelope and its typed payload (None for a tombstone)."""

    envelope: Envelope
    payload: Payload | None

    @property
    def task_id(self) -> str:
        return self.envelope.key

    @property
    def sequence(self) -> int | None:
        return self.envelope.sequence

    @property
    def ce_type(self) -> str:
        return self.envelope.ce_type

    @property
    def is_tombstone(self) -> bool:
        """A state-topic record with a null value: the task vanished."""
        return self.payload is None

    @property
    def task(self) -> Task | None:
        """The task after the change (a state record's value, an event's `task`), if any."""
        if isinstance(self.payload, Task):
            return self.payload
        if isinstance(self.payload, events.TaskEvent):
            return self.payload.task
        return None


def envelope(record: Record) -> Envelope:
    """The envelope of a record; ConsumeError when it lacks the headers every record carries."""
    headers = dict(record.headers)
    where = _where(record)
    try:
        ce_id, ce_type = headers["ce_id"].decode(), headers["ce_type"].decode()
        sequence = headers.get("ce_sequence")
        return Envelope(ce_id, ce_type, (record.key or b"").decode(),
                        int(sequence) if sequence is not None else None, *where)
    except KeyError as exc:
        raise ConsumeError(f"{_describe(where)}: no {exc.args[0]} header; not a record of the "
                           "poller", *where) from None
    except ValueError as exc:  # undecodable UTF-8 or a ce_sequence that is no integer
        raise ConsumeError(f"{_describe(where)}: unreadable headers: {exc}", *where) from None


def decode(record: Record, known: Envelope | None = None) -> Message:
    """The typed message of a record (pass its envelope if already read).

    A task event of a type this release does not know (the poller is newer) decodes to the
    envelope every task event shares, so its task and sequence still count. Raises
    ConsumeError for a value that does not match its type's schema.
    """
    head = known or envelope(record)
    where = (head.topic, head.partition, head.offset)
    try:
        if head.ce_type in KNOWN_TYPES:
            return Message(head, events.decode(record))
        if head.sequence is not None and record.value is not None:
            return Message(head, events.TaskEvent.model_validate_json(record.value))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][1:] if first["loc"][:1] == (head.ce_type,) else first["loc"]
        path = ".".join(str(part) for part in loc) or "value"  # (the union's tag dropped)
        raise ConsumeError(f"{_describe(where)}: {head.ce_type} does not match its schema: "
                           f"{path}: {first['msg']}", *where) from None
    raise ConsumeError(f"{_describe(where)}: unknown ce_type {head.ce_type!r} without a "
                       "ce_sequence", *where)


def _where(record: Record) -> tuple[str | None, int | None, int | None]:
    offset = getattr(record, "offset", None)
    if offset is None:  # not read from Kafka (an OutboundRecord's topic is only its kind)
        return None, None, None
    return getattr(record, "topic", None), getattr(record, "partition", None), offset


def _describe(where: tuple[str | None, int | None, int | None]) -> str:
    topic, partition, offset = where
    return f"{topic}[{partition}]@{offset}" if topic is not None else "a record"


class RecentIds:
    """The last `capacity` ce_ids seen: a bounded LRU, enough to absorb re-deliveries."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, ce_id: str) -> bool:
        """True if `ce_id` was seen before; otherwise remember it (forgetting the oldest)."""
        if ce_id in self._ids:
            self._ids.move_to_end(ce_id)
            return True
        self._ids[ce_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


@dataclass(frozen=True, slots=True)
class Current:
    """What a view holds of one task: its version and its state (None once it vanished)."""

    sequence: int
    task: Task | None


class TaskView:
    """The current state of every task: the record with the highest ce_sequence wins."""

    def __init__(self) -> None:
        self._tasks: dict[str, Current] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> Current | None:
        """The task's entry (vanished tasks included), or None if never seen."""
        return self._tasks.get(task_id)

    def tasks(self) -> dict[str, Task]:
        """Every task that exists now (vanished ones left out)."""
        return {key: entry.task for key, entry in self._tasks.items() if entry.task is not None}

    def sequences(self) -> dict[str, int]:
        """The version of every task seen, vanished ones included."""
        return {key: entry.sequence for key, entry in self._tasks.items()}

    def apply(self, message: Message) -> bool:
        """Take a state record, tombstone or task event into the view if it is newer than what
        the view holds; True when it changed the view. Other records are ignored."""
        current = self._tasks.get(message.task_id)
        sequence = message.sequence
        if sequence is None:
            if not message.is_tombstone or (current is not None and current.task is None):
                return False
            sequence = current.sequence if current is not None else 0
        gone = message.is_tombstone or isinstance(message.payload, events.TaskVanished)
        if current is not None and (sequence < current.sequence or (
                sequence == current.sequence and not (gone and current.task is not None))):
            return False  # the view already holds this observation, or a later one
        self._tasks[message.task_id] = Current(sequence, None if gone else message.task)
        return True


class Verdict(enum.Enum):
    """What to do with one record of the task topic."""

    NEW = "new"  # the first record of a task this consumer has no history for
    NEXT = "next"  # the task's next observation (ce_sequence + 1)
    SAME = "same"  # another event of the observation just applied (equal ce_sequence)
    GAP = "gap"  # ce_sequence jumped by more than one: observations were missed
    DUPLICATE = "duplicate"  # a ce_id seen before: skip
    STALE = "stale"  # a ce_sequence already applied (a re-delivery, or held by the state): skip

    @property
    def is_applied(self) -> bool:
        """Whether the consumer should act on the record."""
        return self not in (Verdict.DUPLICATE, Verdict.STALE)


@dataclass(frozen=True, slots=True)
class Gap:
    """Observations of a task that this consumer never received."""

    task_id: str
    last: int  # the sequence applied before
    got: int  # the sequence that arrived

    @property
    def missing(self) -> range:
        return range(self.last + 1, self.got)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A record to act on, and why."""

    message: Message
    verdict: Verdict
    gap: Gap | None = None  # with Verdict.GAP: the versions that never arrived


class TaskStream:
    """Decides, record by record, what a consumer of the task topic acts on.

    Duplicates (by ce_id, within `capacity` recent ids) and re-deliveries (a ce_sequence lower
    than the task's last applied one) are skipped; a jump of more than one is applied and
    recorded as a gap. Given a `view` read from the state topic, every task's observations up to
    its version there count as applied, and a task missing from it as being at version 0.
    """

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, view: TaskView | None = None) -> None:
        self.recent = RecentIds(capacity)
        self.view = view
        self._last: dict[str, int] = view.sequences() if view is not None else {}
        # Tasks whose last applied observation came whole from the state: an event with that
        # same sequence is already reflected, not the next event of an observation in progress.
        self._settled: set[str] = set(self._last)
        self._complete = view is not None
        self.counts: Counter[Verdict] = Counter()
        self.gaps: deque[Gap] = deque(maxlen=GAPS_KEPT)
        self.unreadable: deque[ConsumeError] = deque(maxlen=GAPS_KEPT)

    def accept(self, head: Envelope) -> Verdict:
        """The verdict on one record, remembered (its id, the task's last applied sequence)."""
        verdict = self._judge(head)
        self.counts[verdict] += 1
        return verdict

    def _judge(self, head: Envelope) -> Verdict:
        if self.recent.seen(head.ce_id):
            return Verdict.DUPLICATE
        sequence = head.sequence
        if sequence is None:  # task types and dead letters carry no order
            return Verdict.NEW
        last = self._last.get(head.key)
        if last is None and not self._complete:
            self._last[head.key] = sequence
            return Verdict.NEW
        last = last or 0
        if sequence < last or (sequence == last and head.key in self._settled):
            return Verdict.STALE
        if sequence == last:
            return Verdict.SAME
        self._last[head.key] = sequence
        self._settled.discard(head.key)
        if sequence == last + 1:
            return Verdict.NEXT
        self.gaps.append(Gap(head.key, last, sequence))
        return Verdict.GAP

    @property
    def gap_count(self) -> int:
        """Gaps seen so far (all of them, not only the ones kept)."""
        return self.counts[Verdict.GAP]

    def deliveries(self, records: Iterable[Record]) -> Iterator[Delivery]:
        """The records to act on, decoded, in order; the view (if any) follows them.

        Lazy: each record is judged and decoded when the iteration reaches it, so a consumer
        that handles one delivery at a time holds only that one (iterate to the end to account
        for every record). A record that cannot be read is skipped and kept in `unreadable`:
        one bad record never stops the stream.
        """
        for record in records:
            try:
                head = envelope(record)
                verdict = self.accept(head)
                if not verdict.is_applied:
                    continue
                message = decode(record, head)
            except ConsumeError as exc:
                self.unreadable.append(exc)
                continue
            if self.view is not None:
                self.view.apply(message)
            yield Delivery(message, verdict, self.gaps[-1] if verdict is Verdict.GAP else None)


@dataclass(frozen=True)
class Bootstrap:
    """A late consumer's starting point: the state topic read to its end, a stream that counts
    it as applied, and the task-topic offsets to follow from."""

    view: TaskView
    stream: TaskStream
    offsets: dict[TopicPartition, int]
    state_records: int  # records read from the state topic


def topics(prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """The task topic and the state topic under POLLER_TOPIC_PREFIX (docs/design.md §4)."""
    return f"{prefix}.tasks", f"{prefix}.tasks.state"


def start_offset(found: OffsetAndTimestamp | None, end: int) -> int:
    """Where to start a partition: the first record at or after the margin's timestamp, never
    beyond the end taken before the state read; the end when no record is that recent."""
    if found is None or found.timestamp < 0:  # none (Tansu answers offset 0, timestamp -1)
        return end
    return min(int(found.offset), end)


async def bootstrap(consumer: AIOKafkaConsumer, *, prefix: str = DEFAULT_PREFIX,
                    margin: timedelta = DEFAULT_MARGIN, capacity: int = DEFAULT_CAPACITY,
                    now: Callable[[], float] = time.time) -> Bootstrap:
    """Read the state topic to its end into a view and choose where to follow the task topic.

    `consumer` is a started AIOKafkaConsumer without a group subscription (this assigns
    partitions itself). The task-topic offsets are taken before the state read, at the first
    record `margin` before it began: every event whose state record the read may have missed is
    read again by follow(), and ce_sequence discards the ones the state already holds. Raises
    ConsumeError when a topic does not exist.
    """
    tasks_topic, state_topic = topics(prefix)
    existing = await consumer.topics()
    event_partitions = _partitions(consumer, tasks_topic, existing)
    state_partitions = _partitions(consumer, state_topic, existing)
    since_ms = max(0, int((now() - margin.total_seconds()) * 1000))
    ends = await consumer.end_offsets(event_partitions)
    found = await consumer.offsets_for_times({tp: since_ms for tp in event_partitions})
    offsets = {tp: start_offset(found.get(tp), ends[tp]) for tp in event_partitions}
    view, count = await read_state(consumer, state_partitions)
    return Bootstrap(view, TaskStream(capacity=capacity, view=view), offsets, count)


async def read_state(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
                     ) -> tuple[TaskView, int]:
    """The view in the state topic's partitions, read from the beginning to the end they had
    when the read began, and how many records were read.

    Only the newest record of each key (by ce_sequence) is decoded; a record that cannot be
    read raises ConsumeError, since a view without it would be silently wrong.
    """
    begins = await consumer.beginning_offsets(list(partitions))
    ends = await consumer.end_offsets(list(partitions))
    consumer.assign(list(partitions))
    for tp in partitions:
        # seek(), not seek_to_beginning(): aiokafka lets the reset that assign() starts (to
        # auto_offset_reset) land after an asynchronous seek and win.
        consumer.seek(tp, begins[tp])
    newest: dict[str, tuple[Envelope, Any]] = {}
    count = 0
    pending = [tp for tp in partitions if begins[tp] < ends[tp]]
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=1000)
        for records in batches.values():
            count += len(records)
            for record in records:
                head = envelope(record)
                kept = newest.get(head.key)
                # A key's records share a partition: the later one wins, as compaction decides,
                # unless it carries an older version.
                if kept is None or not _older(head, kept[0]):
                    newest[head.key] = (head, record)
        pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    view = TaskView()
    for head, record in newest.values():
        view.apply(decode(record, head))
    return view, count


async def follow(consumer: AIOKafkaConsumer, boot: Bootstrap, *, timeout_ms: int = 500
                 ) -> AsyncIterator[list[Delivery]]:
    """The task topic from the bootstrap's offsets, batch by batch, as deliveries to act on.

    Runs until the caller stops iterating; a batch may be empty (nothing arrived within
    `timeout_ms`), so a caller can check its own stop condition between batches.
    """
    consumer.assign(list(boot.offsets))
    for tp, offset in boot.offsets.items():
        consumer.seek(tp, offset)
    while True:
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        yield list(boot.stream.deliveries(r for records in batches.values() for r in records))


def _older(head: Envelope, than: Envelope) -> bool:
    return head.sequence is not None and than.sequence is not None and head.sequence < than.sequence


def _partitions(consumer: AIOKafkaConsumer, topic: str, existing: set[str]
                ) -> list[TopicPartition]:
    if topic not in existing:
        raise ConsumeError(f"topic {topic} does not exist: check the prefix (POLLER_TOPIC_PREFIX) "
                           "and, for the state topic, that POLLER_STATE_TOPIC is not false",
                           topic)
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:  # created after the consumer started: its metadata does not know it yet
        raise ConsumeError(f"topic {topic} is newer than this consumer: start it again", topic)
    return [TopicPartition(topic, p) for p in sorted(partitions)]
