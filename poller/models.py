"""Value types shared by the stages: the normalised task, stored snapshots, windows, records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

# Waiqin365 speaks Beijing time (UTC+8, no DST since 1991) whatever the pod's zone; a fixed
# offset is exact for every time the API can return and needs no tz database in the image.
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


def beijing_now() -> datetime:
    """The current time in Beijing."""
    return datetime.now(BEIJING)


# --- the normalised task: what events carry and consumers read --------------------------------


class _Model(BaseModel):
    # Unknown upstream fields are kept (extra="allow") so a new API field reaches consumers.
    model_config = ConfigDict(frozen=True, extra="allow")


class Person(_Model):
    """A user reference (creator or receiver)."""

    id: str
    name: str | None = None


class Receiver(Person):
    """An assignee (指派) of the task."""


class Creator(Person):
    """Whoever created the task."""


class Feedback(_Model):
    """One feedback entry; identified by (feedback_time, feedback_visit_id, feedback_content)."""

    feedback_time: datetime | None = None
    feedback_visit_id: str | None = None
    feedback_content: str | None = None


class Task(_Model):
    """A customer task after normalisation: types unified, absent fields None, sets sorted."""

    task_id: str
    task_type_id: str | None = None
    task_content: str | None = None
    customer_id: str | None = None
    execute_demand: int | None = None  # 0 off-site, 1 on-site required, 2 no requirement
    task_source_id: str | None = None
    task_source_name: str | None = None
    visit_implement_id: str | None = None
    achievement: str | None = None
    creator: Creator | None = None
    receivers: tuple[Receiver, ...] = ()
    feedback_deadline: datetime | None = None
    create_time: datetime | None = None
    modify_time: datetime | None = None
    latest_feedback_time: datetime | None = None
    latest_feedback_content: str | None = None
    task_status: int = 0  # 0 awaiting feedback, 1 feedback given, 2 accepted, 3 feedback rejected
    status: int = 1  # 0 deleted, 1 normal
    feedback_detail: tuple[Feedback, ...] = ()


class TaskType(_Model):
    """A task type definition from queryTaskType."""

    type_id: str
    type_name: str | None = None


# --- what the stages hand each other ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NormalisedTask:
    """One observed task in canonical form: `document` is the hashed canonical JSON."""

    task_id: str
    document: bytes  # canonical JSON (sorted keys, no absent fields, sets sorted), UTF-8
    hash: str  # content hash of document, normalisation version included
    type_id: str | None
    modify_time: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the store keeps per task: the last observation consumers have been (or are about to
    be) told about.

    `version` is ce_sequence: it grows by one per observation that produced events, and is 0 for a
    task recorded silently (baseline). `received` is the hash of the record as last received
    (normalise.received_hash): an identical rendering is known unchanged without normalising it.
    """

    task_id: str
    hash: str
    document: bytes
    version: int
    modify_time: datetime | None
    received: int | None = None
    create_date: date | None = None  # the create-date slice the task belongs to
    vanished: bool = False  # confirmed gone from the API; kept as a tombstone


class StoredHashes(NamedTuple):
    """The fast path's view of a stored task: its content hash and its last rendering's hash.

    A named tuple: one is made per task of every page read, and a tuple is made in a third of
    a frozen dataclass's time.
    """

    hash: str
    received: int | None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class TypeSnapshot:
    """What the store keeps per task type; `version` grows by one per TaskTypeChanged."""

    type_id: str
    hash: str
    document: bytes
    version: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetterMark:
    """A dead-lettered record's content fingerprint, so the same bad record is sent once."""

    fingerprint: str
    task_id: str | None


class Walk(BaseModel):
    """Where a walk back through the create dates stands: every day after `end` has been read.

    `width` is the size in days of the next slice; `dense_width` the size of the last slice that
    held tasks. The walk's arithmetic is in poller/slices.py.
    """

    model_config = ConfigDict(frozen=True)

    end: date
    width: int = 1
    dense_width: int = 1


class FirstRun(BaseModel):
    """A first run in progress: read slice by slice, newest first, resumable."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["baseline", "replay"]
    started_at: datetime
    walk: Walk
    tasks: int = 0  # tasks read by completed slices so far


class Confirmation(BaseModel):
    """Stored tasks missing from a complete read of a slice, to be read for once more."""

    model_config = ConfigDict(frozen=True)

    start: date
    end: date
    task_ids: tuple[str, ...]


class Sweep(BaseModel):
    """The reconciliation sweep's progress through the history (docs/design.md §3.1)."""

    model_config = ConfigDict(frozen=True)

    # The next slice ends here; None: the next pass starts at today.
    end: date | None = None
    # After a slice turned out over-full, the next one is at most this many days wide.
    max_width: int | None = None
    # When the pass in progress began, and the one before it: every task was read at least
    # once since `previous_pass_started_at` (the staleness bound).
    pass_started_at: datetime | None = None
    previous_pass_started_at: datetime | None = None
    passes: int = 0
    confirmation: Confirmation | None = None


class PollState(BaseModel):
    """The poller's progress, saved in the store after each fully successful cycle."""

    model_config = ConfigDict(frozen=True)

    # First day of the open modify-date window; None until the first run (baseline) completed.
    window_from: date | None = None
    # When the last fully successful cycle started (Beijing time).
    last_success_started_at: datetime | None = None
    # The start mode the first run used, and whether it read the whole history.
    start_mode: Literal["baseline", "replay"] | None = None
    baseline_complete: bool = False
    # The first run while it is in progress.
    first_run: FirstRun | None = None
    sweep: Sweep = Sweep()


@dataclass(frozen=True, slots=True)
class Window:
    """The day-granular date filter of one queryTask scan; None means no bound."""

    modify_from: date | None = None
    modify_to: date | None = None
    create_from: date | None = None
    create_to: date | None = None

    def body(self, page: int, rows: int) -> dict[str, str]:
        """The queryTask request body: every value a string, dates as yyyy-MM-dd."""
        body = {"page": str(page), "rows": str(rows)}
        for key, value in (
            ("modify_date_from", self.modify_from),
            ("modify_date_to", self.modify_to),
            ("create_date_from", self.create_from),
            ("create_date_to", self.create_to),
        ):
            if value is not None:
                body[key] = value.isoformat()
        return body

    def describe(self) -> dict[str, str | None]:
        """The modify bounds as logged and as written into dead letters."""
        return {
            "modify_date_from": self.modify_from.isoformat() if self.modify_from else None,
            "modify_date_to": self.modify_to.isoformat() if self.modify_to else None,
        }


TopicKind = Literal["tasks", "state", "task-types", "dead-letter"]


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """One Kafka message ready to send; the publisher maps `topic` to the prefixed name."""

    topic: TopicKind
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: tuple[tuple[str, bytes], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Backfill:
    """A backfill request (`waiqin-poller backfill`) and how far the leader has read it.

    Recorded by the command, read by the leader after the window in its page budget; the range
    is read day by day (modify dates), `next_day` is the first day not read yet.
    """

    id: int
    modify_from: date
    modify_to: date
    requested_at: datetime
    state: Literal["pending", "running", "done", "failed"] = "pending"
    next_day: date | None = None
    pages: int = 0
    tasks: int = 0
    events: int = 0
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def days(self) -> int:
        return (self.modify_to - self.modify_from).days + 1

    @property
    def days_done(self) -> int:
        if self.state == "done":
            return self.days
        return 0 if self.next_day is None else (self.next_day - self.modify_from).days


@dataclass(frozen=True, slots=True)
class Commit:
    """What one store transaction writes, all or nothing, fenced by the writer's leadership.

    The records are the outbox: written with the state they announce and published only after
    the transaction committed, so the store never runs ahead of, or behind, what consumers are told.
    """

    snapshots: Sequence[Snapshot] = ()
    # (task_id, received) of tasks re-rendered without a change of content.
    renderings: Sequence[tuple[str, int]] = ()
    marks: Sequence[DeadLetterMark] = ()
    types: Sequence[TypeSnapshot] = ()
    records: Sequence[OutboundRecord] = ()
    state: PollState | None = None
    backfill: Backfill | None = None
    # API requests made per (Beijing day, endpoint), as totals: the daily budget survives restarts.
    usage: Sequence[tuple[date, str, int]] = ()

    @property
    def is_empty(self) -> bool:
        """True when the transaction would write nothing (and is skipped)."""
        return not (self.snapshots or self.renderings or self.marks or self.types
                    or self.records or self.state is not None or self.backfill is not None
                    or self.usage)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A committed record not yet acknowledged by Kafka; `id` orders the outbox."""

    id: int
    record: OutboundRecord
