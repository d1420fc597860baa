"""The domain events of docs/design.md §4 and their CloudEvents 1.0 Kafka (binary mode) encoding.

Every task event shares an envelope: `id` (= ce_id, deterministic), `type` (the event name,
= ce_type), `task_id`, `modify_time` (RFC 3339, +08:00), `observed_at`, `sequence`
(= ce_sequence, the task's version), `task_type_name` (when known) and `task`, the full
normalised task after the change. Status events carry the old and new `task_status` as
"from" and "to" in JSON (`from_status`/`to_status` in Python, where `from` is a keyword).
No record is larger than its byte budget (KAFKA_MAX_MESSAGE_BYTES): a payload that would be is
cut to fit and lists what was cut in `truncated` (poller/truncate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import orjson
import xxhash
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import PydanticSerializationError

from poller import truncate
from poller.config import DEFAULT_MAX_MESSAGE_BYTES
from poller.errors import NormaliseError
from poller.metrics import EVENTS_TRUNCATED
from poller.models import BEIJING, Feedback, OutboundRecord, Receiver, Snapshot, Task, TaskType
from poller.normalise import fingerprint, to_task

SPEC_VERSION = "1.0"  # CloudEvents specification version (ce_specversion)
CONTENT_TYPE = b"application/json"  # binary content mode: the value is the bare JSON payload
# What Kafka adds around a record's key, value and header bytes, counted against the budget:
# the record batch header (61 bytes), the record's attributes, deltas and length varints (at
# most 36) and two length varints per header (at most 10 each). 512 bounds a record with up to
# 40 headers, and is more than aiokafka's own estimate (61 + 21 + the varints).
RECORD_OVERHEAD_BYTES = 512

# The headers that repeat the key.
_SUBJECT_HEADERS = frozenset({"ce_subject", "ce_partitionkey"})

Truncated = Annotated[tuple[str, ...], Field(
    exclude_if=lambda paths: not paths,
    description=(
        "JSON paths of the values cut so that the message fits KAFKA_MAX_MESSAGE_BYTES, such "
        "as task.feedback_detail[2].feedback_content: the longest texts, each keeping a "
        "prefix, and nesting deeper than 100 levels. Absent when nothing was cut."
    ),
)]
"""The `truncated` field of every payload: present only when something was cut."""


class _Event(BaseModel):
    # Consumers on an older release ignore fields added later instead of failing.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class FieldChange(_Event):
    """One changed field: its canonical value before and after (absent = null)."""

    before: Any = None
    after: Any = None


class TaskEvent(_Event):
    """The envelope every task event shares."""

    id: str = Field(description="Deterministic event id, equal to the ce_id header.")
    type: str = Field(description="The event name, equal to the ce_type header.")
    task_id: str
    modify_time: AwareDatetime | None = Field(
        description="The task's modify_time (when it happened), RFC 3339 in Beijing time."
    )
    observed_at: AwareDatetime = Field(description="When the poller saw the change.")
    sequence: int = Field(
        ge=0, description="The task's version (ce_sequence): +1 per observation with events."
    )
    task_type_name: str | None = Field(default=None, description="The task type's name, if known.")
    task: Task = Field(description="The full normalised task after the change.")
    truncated: Truncated = ()


class TaskCreated(TaskEvent):
    """A task_id seen for the first time."""

    type: Literal["TaskCreated"] = "TaskCreated"


class TaskUpdated(TaskEvent):
    """Fields other than receivers, feedback, deadline, status and modify/feedback times changed."""

    type: Literal["TaskUpdated"] = "TaskUpdated"
    changes: dict[str, FieldChange]


class TaskReassigned(TaskEvent):
    """The receivers (assignees) set changed."""

    type: Literal["TaskReassigned"] = "TaskReassigned"
    added: tuple[Receiver, ...] = ()
    removed: tuple[Receiver, ...] = ()


class TaskDeadlineChanged(TaskEvent):
    """feedback_deadline changed (null = no deadline)."""

    type: Literal["TaskDeadlineChanged"] = "TaskDeadlineChanged"
    before: AwareDatetime | None = None
    after: AwareDatetime | None = None


class FeedbackAdded(TaskEvent):
    """A feedback entry not seen before; one event per entry, oldest first."""

    type: Literal["FeedbackAdded"] = "FeedbackAdded"
    feedback: Feedback


class _StatusChange(TaskEvent):
    from_status: int = Field(alias="from", description="task_status before.")
    to_status: int = Field(alias="to", description="task_status after.")


class TaskFeedbackSubmitted(_StatusChange):
    """task_status changed to 1 (已反馈, feedback given)."""

    type: Literal["TaskFeedbackSubmitted"] = "TaskFeedbackSubmitted"


class TaskAccepted(_StatusChange):
    """task_status changed to 2 (验收通过, accepted)."""

    type: Literal["TaskAccepted"] = "TaskAccepted"


class TaskRejected(_StatusChange):
    """task_status changed to 3 (需重新反馈, feedback rejected)."""

    type: Literal["TaskRejected"] = "TaskRejected"


class TaskReopened(_StatusChange):
    """task_status changed to 0 (待反馈, awaiting feedback)."""

    type: Literal["TaskReopened"] = "TaskReopened"


class TaskDeleted(TaskEvent):
    """status changed 1 -> 0."""

    type: Literal["TaskDeleted"] = "TaskDeleted"


class TaskRestored(TaskEvent):
    """status changed 0 -> 1, or a vanished task reappeared (then first of its events)."""

    type: Literal["TaskRestored"] = "TaskRestored"


class TaskVanished(TaskEvent):
    """The sweep confirmed the task is gone from the API; `task` is the last known task."""

    type: Literal["TaskVanished"] = "TaskVanished"


class TaskTypeChanged(_Event):
    """A task type definition changed (task-types topic; key and ce_subject = type_id).

    The full type is `task_type`, since `type` is the event name as in every event.
    """

    id: str = Field(description="Deterministic event id, equal to the ce_id header.")
    type: Literal["TaskTypeChanged"] = "TaskTypeChanged"
    type_id: str
    observed_at: AwareDatetime
    changes: dict[str, FieldChange]
    task_type: TaskType = Field(description="The full task type after the change.")
    truncated: Truncated = ()


class DeadLetter(_Event):
    """A record that could not be read (dead-letter topic; ce_type=DeadLetter)."""

    reason: str
    raw: Any = Field(description="The record exactly as received (any JSON value).")
    window: dict[str, str | None] = Field(
        description="The scan's window: modify_date_from and modify_date_to (yyyy-MM-dd)."
    )
    page: int
    truncated: Truncated = ()


class TaskState(Task):
    """The current state of a task (state topic; key = task_id, ce_type=TaskState): the full
    normalised task as last observed, the same object as an event's `task`. Its version is the
    ce_sequence header; a tombstone (null value) follows the task's vanishing."""

    truncated: Truncated = ()


TASK_EVENTS: tuple[type[TaskEvent], ...] = (
    TaskCreated, TaskUpdated, TaskReassigned, TaskDeadlineChanged, FeedbackAdded,
    TaskFeedbackSubmitted, TaskAccepted, TaskRejected, TaskReopened, TaskDeleted, TaskRestored,
    TaskVanished,
)
"""Every task event class, in the order of the docs/design.md §4 table."""

Event = Annotated[
    TaskCreated | TaskUpdated | TaskReassigned | TaskDeadlineChanged | FeedbackAdded
    | TaskFeedbackSubmitted | TaskAccepted | TaskRejected | TaskReopened | TaskDeleted
    | TaskRestored | TaskVanished | TaskTypeChanged,
    Field(discriminator="type"),
]
"""Any event of the tasks or task-types topic, discriminated by `type`."""

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class KafkaMessage(Protocol):
    """What decode() reads: an OutboundRecord or a consumed aiokafka record."""

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def event_id(subject: str, event_type: str, version: int, content: str) -> str:
    """The deterministic ce_id of an observation: subject, event type, the version the
    observation gave the subject (ce_sequence), and the state or entry it describes.

    The version makes two different changes differ even when a task returns to an earlier state
    (A→B→A→B); everything else makes one observation's events differ from each other.
    """
    return xxhash.xxh3_128_hexdigest(f"{subject}|{event_type}|{version}|{content}".encode())


def encode(
    event: TaskEvent | TaskTypeChanged, *, source: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> OutboundRecord:
    """The Kafka record of an event: key, CloudEvents binary-mode headers, JSON value.

    The value is the payload's JSON exactly as the model serialises it (UTF-8, non-ASCII as
    is, "from"/"to" aliases), written by pydantic-core without a Python dict in between. A
    record that would exceed `max_bytes` (see `record_size`), or nest deeper than JSON
    readers allow, is cut to fit by poller/truncate.py and still decodes to the same event
    type. Raises NormaliseError (kind "too_large", a dead letter) when even that cannot fit.
    """
    recorded = _rfc3339(event.observed_at)
    if isinstance(event, TaskTypeChanged):
        subject = event.type_id
        headers = _headers(event.id, source, event.type, subject, recorded, recorded,
                           sequence=None)
        topic: Literal["tasks", "task-types"] = "task-types"
    else:
        subject = event.task_id
        happened = _rfc3339(event.modify_time) if event.modify_time else recorded
        headers = _headers(event.id, source, event.type, subject, happened, recorded,
                           sequence=event.sequence)
        topic = "tasks"
    key = subject.encode()
    value = _fitted_value(event, max_bytes - _framing(key, headers), max_bytes=max_bytes)
    return OutboundRecord(topic=topic, key=key, value=value, headers=headers)


STATE_TYPE = "TaskState"  # ce_type of the current-state topic's records
NO_TIME = datetime(1970, 1, 1, 8, tzinfo=BEIJING)  # the Unix epoch, for a task without modify_time


def state_record(event: TaskEvent, *, source: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
                 ) -> OutboundRecord:
    """The current-state record that follows an observation's events (`event` is one of them):
    key task_id, value the full task after the change (the same object as the event's `task`),
    `ce_type=TaskState` and the observation's ce_sequence."""
    happened = _rfc3339(event.modify_time) if event.modify_time else _rfc3339(event.observed_at)
    return _state(event.task, event.sequence, happened, _rfc3339(event.observed_at),
                  source=source, max_bytes=max_bytes)


def state_record_of(snapshot: Snapshot, *, source: str,
                    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> OutboundRecord:
    """The current-state record of a stored task, as `waiqin-poller snapshot` re-publishes it.

    Key, ce_id, ce_sequence and value are those of the state record the daemon wrote for the
    snapshot's version; both ce_time and ce_recordedtime are the task's modify_time (the epoch
    when it has none), so publishing the same store twice gives identical records.
    """
    happened = _rfc3339(snapshot.modify_time or NO_TIME)
    return _state(to_task(snapshot.document), snapshot.version, happened, happened,
                  source=source, max_bytes=max_bytes)


def _state(task: Task, sequence: int, happened: str, recorded: str, *, source: str,
           max_bytes: int) -> OutboundRecord:
    key = task.task_id.encode()
    value = task.__pydantic_serializer__.to_json(task)
    # The id covers the state itself: a task re-stored at the same version because only
    # modify_time moved (no event, no new sequence) is another state, so another id.
    state_id = event_id(task.task_id, STATE_TYPE, sequence, xxhash.xxh3_128_hexdigest(value))
    headers = _headers(state_id, source, STATE_TYPE, task.task_id, happened, recorded,
                       sequence=sequence)
    room = max_bytes - _framing(key, headers)
    if len(value) > room or truncate.too_deep(value):
        try:
            value = truncate.fit(orjson.loads(value), room).body
        except truncate.DoesNotFitError as exc:
            raise NormaliseError(f"the state of {task.task_id} exceeds KAFKA_MAX_MESSAGE_BYTES="
                                 f"{max_bytes} even cut: {exc}", task_id=task.task_id,
                                 kind="too_large") from exc
        EVENTS_TRUNCATED.labels(type=STATE_TYPE).inc()
    return OutboundRecord(topic="state", key=key, value=value, headers=headers)


def state_tombstone(event: TaskVanished, *, source: str) -> OutboundRecord:
    """The current-state topic's tombstone for a vanished task: its key with no value, so
    compaction removes the task; headers as for any state record."""
    when = _rfc3339(event.observed_at)
    headers = _headers(event_id(event.task_id, STATE_TYPE, event.sequence, ""), source, STATE_TYPE,
                       event.task_id, when, when, sequence=event.sequence)
    return OutboundRecord(topic="state", key=event.task_id.encode(), value=None, headers=headers)


def state_tombstone_of(snapshot: Snapshot, *, source: str) -> OutboundRecord:
    """The tombstone of a stored vanished task, as `waiqin-poller snapshot` re-sends it: key,
    ce_id and ce_sequence of the daemon's tombstone, times from the task's modify_time."""
    when = _rfc3339(snapshot.modify_time or NO_TIME)
    headers = _headers(event_id(snapshot.task_id, STATE_TYPE, snapshot.version, ""), source,
                       STATE_TYPE, snapshot.task_id, when, when, sequence=snapshot.version)
    return OutboundRecord(topic="state", key=snapshot.task_id.encode(), value=None, headers=headers)


def record_size(record: OutboundRecord) -> int:
    """What a record counts against KAFKA_MAX_MESSAGE_BYTES: key, value, headers and overhead."""
    return _framing(record.key or b"", record.headers) + len(record.value or b"")


def _framing(key: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    return len(key) + sum(len(name.encode()) + len(value) for name, value in headers) \
        + RECORD_OVERHEAD_BYTES


def _fitted_value(event: TaskEvent | TaskTypeChanged, room: int, *, max_bytes: int) -> bytes:
    try:
        value: bytes | None = event.__pydantic_serializer__.to_json(event, by_alias=True)
    except PydanticSerializationError:  # an unknown field nested deeper than pydantic writes
        value = None
    if value is not None and len(value) <= room and not truncate.too_deep(value):
        return value
    payload = orjson.loads(value) if value is not None else event.model_dump(by_alias=True)
    try:
        fitted = truncate.fit(payload, room)
    except truncate.DoesNotFitError as exc:
        subject = event.type_id if isinstance(event, TaskTypeChanged) else event.task_id
        raise NormaliseError(
            f"{event.type} of {subject} exceeds KAFKA_MAX_MESSAGE_BYTES={max_bytes} even cut: {exc}",
            task_id=None if isinstance(event, TaskTypeChanged) else subject, kind="too_large",
        ) from exc
    EVENTS_TRUNCATED.labels(type=event.type).inc()
    return fitted.body


_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _rfc3339(value: datetime) -> str:
    """A time exactly as it appears in the payload JSON."""
    text: str = _DATETIME.dump_python(value, mode="json")
    return text


def dead_letter(
    raw: object,
    *,
    reason: str,
    task_id: str | None,
    window: dict[str, str | None],
    page: int,
    source: str,
    observed_at: datetime,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> OutboundRecord:
    """The dead-letter record of an unreadable record; ce_id derives from its fingerprint,
    so the same bad record always gets the same id.

    Within `max_bytes` like every record: long texts are cut first, nesting too deep for JSON
    is replaced, and as a last resort `raw` becomes a prefix of its JSON text (all listed in
    `truncated`). Anything that is not JSON-shaped is written as its repr. Raises
    DoesNotFitError only for a budget below config.MIN_MESSAGE_BYTES.
    """
    value = {"reason": reason, "raw": raw, "window": window, "page": page}
    when = observed_at.astimezone(BEIJING).isoformat()
    subject = task_id or ""
    headers = _headers(event_id(subject, "DeadLetter", 0, fingerprint(raw)), source, "DeadLetter",
                       subject, when, when, sequence=None)
    key = subject.encode()
    if _framing(key, headers) > max_bytes // 2:
        # A task_id that long is no real one: keying by it would leave no room for the record.
        key = b""
        headers = tuple((name, b"" if name in _SUBJECT_HEADERS else data) for name, data in headers)
    fitted = truncate.fit(value, max_bytes - _framing(key, headers), collapsible=("raw",))
    if fitted.truncated:
        EVENTS_TRUNCATED.labels(type="DeadLetter").inc()
    return OutboundRecord(topic="dead-letter", key=key, value=fitted.body, headers=headers)


def decode(message: KafkaMessage) -> Event | DeadLetter | TaskState | None:
    """The event in a Kafka record written by encode(), dead_letter() or state_record(); None
    for a state-topic tombstone (the key with a null value)."""
    ce_type = dict(message.headers).get("ce_type")
    if ce_type == STATE_TYPE.encode():
        return None if message.value is None else TaskState.model_validate_json(message.value)
    value = message.value or b""
    if ce_type == b"DeadLetter":
        return DeadLetter.model_validate_json(value)
    return _EVENT_ADAPTER.validate_json(value)


def _headers(
    ce_id: str, source: str, ce_type: str, subject: str, time: str, recorded: str,
    *, sequence: int | None,
) -> tuple[tuple[str, bytes], ...]:
    headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", ce_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", time.encode()),
        ("ce_recordedtime", recorded.encode()),
        ("ce_partitionkey", subject.encode()),
    ]
    if sequence is not None:  # task types and dead letters have no version
        headers.append(("ce_sequence", str(sequence).encode()))
    headers.append(("content-type", CONTENT_TYPE))
    return tuple(headers)
