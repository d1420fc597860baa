"""Pure: one page of raw records -> what to commit and publish (snapshots, events, dead letters).

Every decision of a page is made here, without I/O and without a clock (`now` is an argument):
which renderings are already known, which tasks changed, their events and ids, which records
are dead letters, and the counts the metrics report. The loop only reads what this module asks
for, commits the plan and sends its records.

No record can stop the stream: whatever goes wrong while one record is normalised, diffed or
encoded makes that record a dead letter; the page and the cycle go on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import structlog

from poller import diff, events, normalise
from poller.config import DEFAULT_MAX_MESSAGE_BYTES
from poller.errors import NormaliseError
from poller.models import (
    Commit,
    DeadLetterMark,
    NormalisedTask,
    OutboundRecord,
    Snapshot,
    StoredHashes,
    Window,
)
from poller.wire import WireRecords

log = structlog.get_logger(__name__)

NO_WINDOW = Window()
"""The window of records made outside a scan (vanished tasks)."""

# Bit 0 of a stored rendering hash: set when the rendering was stored after a rendering-only
# change and has not been received again since (see `_write_back`).
UNCONFIRMED = 1
RESAMPLE = 64

# modify_time has minute precision: a change stamped in the minute a scan started may be missed
# by it without any skip having happened.
MODIFY_TIME_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Received:
    """One page as received: each record with its readable task_id and its rendering's hash."""

    records: Sequence[Any]
    task_ids: Sequence[str | None]
    hashes: Sequence[int]

    @property
    def readable_ids(self) -> list[str]:
        """The task_ids that could be read, malformed records included, in page order."""
        return [task_id for task_id in self.task_ids if task_id is not None]


@dataclass(frozen=True, slots=True)
class Seen:
    """A record whose rendering is new: normalised, with what it was normalised from."""

    task: NormalisedTask
    received: int
    raw: Any


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that could not be processed, on its way to the dead-letter topic."""

    raw: Any
    error: NormaliseError
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Observed:
    """A page after normalisation: what is new, what is known, what is unreadable.

    `tasks` holds the last rendering of each task whose rendering is new (within one page the
    last one wins); `renderings` the tasks whose content is known but rendering is new.
    """

    tasks: dict[str, Seen]
    rejects: list[Reject]
    renderings: list[tuple[str, int]]
    unchanged: int

    @property
    def changed_ids(self) -> list[str]:
        """Tasks whose content differs from (or is missing in) the store."""
        return list(self.tasks)

    @property
    def type_ids(self) -> set[str]:
        """Task types referenced by the changed tasks."""
        return {seen.task.type_id for seen in self.tasks.values() if seen.task.type_id}

    @property
    def fingerprints(self) -> list[str]:
        """The dead-letter fingerprints of this page's rejects."""
        return [reject.fingerprint for reject in self.rejects]


@dataclass(frozen=True, slots=True)
class Known:
    """What the store and the type catalog know about an observed page."""

    snapshots: Mapping[str, Snapshot] = field(default_factory=dict)
    dead_lettered: AbstractSet[str] = frozenset()
    type_names: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PageContext:
    """What every page of one scan shares."""

    source: str
    window: Window
    page: int
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # no record is larger (KAFKA_MAX_MESSAGE_BYTES)
    state_topic: bool = True  # a current-state record follows each observation's events
    silent_new: bool = False  # baseline: record unseen tasks without events
    previous_scan: datetime | None = None  # start of the last complete scan, to spot healed skips
    # For sweep pages: the open window's first day, to tell why the window missed a change.
    sweep_window_from: date | None = None


@dataclass(frozen=True, slots=True)
class PageCounts:
    """What one page did, for the scan's stats and the metrics."""

    records: int = 0
    repeats: int = 0
    unchanged: int = 0
    changed: int = 0
    events: int = 0
    skips_healed: int = 0
    dead_letters: Mapping[str, int] = field(default_factory=dict)  # by kind
    # Changes found by the sweep, by why the window missed them (docs/design.md §3.1).
    missed_by_window: Mapping[str, int] = field(default_factory=dict)
    # Seconds between a change's modify_time and when it was seen, per changed task.
    lateness_s: Sequence[float] = ()


@dataclass(frozen=True, slots=True)
class PagePlan:
    """Everything one page commits (in one transaction) and then publishes."""

    commit: Commit
    counts: PageCounts


def receive(records: Sequence[Any]) -> Received:
    """The task_id and rendering hash of every record (cheap: no normalisation; records that
    arrived as bytes are not even parsed)."""
    if isinstance(records, WireRecords):
        return Received(records, records.task_ids, records.hashes)
    return Received(
        records=records,
        task_ids=[normalise.task_id_of(raw) for raw in records],
        hashes=[normalise.received_hash(raw) for raw in records],
    )


def observe(received: Received, stored: Mapping[str, StoredHashes], *, sample: int = 0) -> Observed:
    """Normalise the records whose rendering the store does not know; reject the unreadable.

    A rendering identical to the one last received for that task is unchanged without being
    normalised (nor, when it arrived as bytes, parsed): that is the whole cost of an unchanged
    task. Which new renderings of unchanged tasks are written back is `_write_back`'s decision;
    `sample` (any number, drawn afresh per page) picks the pages that write back what an API
    re-rendering every response sends. Nothing a record holds raises; a record that arrived as
    bytes and is not JSON raises the SourceResponseError a whole-page parse would have raised.
    """
    tasks: dict[str, Seen] = {}
    rejects: list[Reject] = []
    renderings: dict[str, int] = {}
    unchanged = 0
    records: Any = received.records
    wire = isinstance(records, WireRecords)
    lookup: Any = stored.get  # a task_id of None is simply not found
    for index, (task_id, rendering) in enumerate(zip(received.task_ids, received.hashes, strict=True)):
        known: StoredHashes | None = lookup(task_id)
        if known is not None:
            last = known.received
            if last is not None and last | UNCONFIRMED == rendering | UNCONFIRMED and not known.vanished:
                if tasks or renderings:  # on one page the last readable rendering wins
                    _forget(task_id, tasks, renderings)
                if last & UNCONFIRMED and task_id is not None:  # seen twice: the API's rendering
                    renderings[task_id] = last & ~UNCONFIRMED
                unchanged += 1
                continue
            if known.vanished:
                known = None  # back after it vanished: observed in full, so it is restored
        task = _normalise(records, index, task_id, wire)
        if isinstance(task, Reject):
            rejects.append(task)
            continue
        _forget(task.task_id, tasks, renderings)
        if known is not None and known.hash == task.hash:
            unchanged += 1
            if _write_back(known.received, sample):
                renderings[task.task_id] = rendering | UNCONFIRMED
        else:
            tasks[task.task_id] = Seen(task, rendering & ~UNCONFIRMED, records[index])
    return Observed(tasks, rejects, list(renderings.items()), unchanged)


def _normalise(records: Any, index: int, task_id: str | None, wire: bool) -> NormalisedTask | Reject:
    """Record `index` normalised, or why it cannot be; records still in bytes take the compiled
    fast path first, which reads the usual shape without parsing it."""
    task = normalise.encoded_task(records.span(index)) if wire else None
    if task is not None:
        return task
    raw = records[index]
    try:
        return normalise.task(raw)
    except Exception as exc:  # one record never stops the page
        return _reject(raw, task_id, exc)


def _write_back(last: int | None, sample: int) -> bool:
    """Whether a new rendering of an unchanged task is stored, to be recognised next time.

    A write costs more than normalising the record again (the task's row and an index entry,
    ~40 µs on SQLite, and a transaction for the page), so it is made when it is likely to pay:
    after a rendering that was confirmed (an API release renders every task anew, once), but
    when the last rendering was itself new and already gone (the API re-renders every response:
    no rendering comes again) only on one page in RESAMPLE, which `sample` (drawn per page)
    picks. That lets a task converge once such an API settles.
    """
    if last is None or not last & UNCONFIRMED:
        return True
    return sample % RESAMPLE == 0


def _forget(task_id: str | None, tasks: dict[str, Seen], renderings: dict[str, int]) -> None:
    if task_id is not None and (tasks or renderings):
        tasks.pop(task_id, None)
        renderings.pop(task_id, None)


def plan_page(observed: Observed, known: Known, *, received: Received, seen_in_scan: AbstractSet[str],
              ctx: PageContext, now: datetime) -> PagePlan:
    """Every decision of one page: snapshots, events (encoded), dead letters and counts."""
    snapshots: list[Snapshot] = []
    records: list[OutboundRecord] = []
    rejects = list(observed.rejects)
    changed = events_count = healed = 0
    missed: Counter[str] = Counter()
    lateness: list[float] = []
    for task_id, seen in observed.tasks.items():
        before = known.snapshots.get(task_id)
        try:
            snapshot, encoded, told = _observe_task(seen, before, known, ctx, now)
        except Exception as exc:  # a diff or encoding bug dead-letters one record
            rejects.append(_reject(seen.raw, task_id, exc))
            continue
        snapshots.append(snapshot)
        if told:
            changed += 1
            events_count += told
            records.extend(encoded)
            healed += _was_skipped(before, seen.task, ctx.previous_scan)
            if seen.task.modify_time is not None:
                lateness.append((now - seen.task.modify_time).total_seconds())
            cause = _missed_by_window(before, seen.task, ctx.sweep_window_from)
            if cause is not None:
                missed[cause] += 1
    marks, dead, kinds = _dead_letters(rejects, known.dead_lettered, ctx, now)
    commit = Commit(snapshots=snapshots, renderings=observed.renderings, marks=marks,
                    records=records + dead)
    counts = PageCounts(
        records=len(received.records),
        repeats=count_repeats(received.readable_ids, seen_in_scan),
        unchanged=observed.unchanged,
        changed=changed,
        events=events_count,
        skips_healed=healed,
        dead_letters=kinds,
        missed_by_window=dict(missed),
        lateness_s=lateness,
    )
    return PagePlan(commit, counts)


def count_repeats(task_ids: Sequence[str], seen_in_scan: AbstractSet[str]) -> int:
    """Task ids read earlier in the same scan or twice on this page: pagination drift.

    Repeats are harmless for events (the diff is idempotent), but they mean the scan may also
    have skipped a task, so its days must stay in the window.
    """
    on_page: set[str] = set()
    repeats = 0
    for task_id in task_ids:
        if task_id in seen_in_scan or task_id in on_page:
            repeats += 1
        on_page.add(task_id)
    return repeats


def _observe_task(seen: Seen, before: Snapshot | None, known: Known, ctx: PageContext,
                  now: datetime) -> tuple[Snapshot, list[OutboundRecord], int]:
    """The snapshot to store, the records to send (events, then the state record) and the
    number of events."""
    task = seen.task
    observation = diff.observe(
        before, task, observed_at=now,
        type_name=known.type_names.get(task.type_id) if task.type_id else None,
        silent=ctx.silent_new and before is None,
    )
    snapshot = observation.snapshot(task, seen.received, created_on(task.document))
    # Only tasks whose hash differs are observed here, so there is always something to store.
    assert snapshot is not None, "a differing task always has a snapshot to store"
    records = [events.encode(event, source=ctx.source, max_bytes=ctx.max_message_bytes)
               for event in observation.events]
    if records and ctx.state_topic:
        records.append(events.state_record(observation.events[0], source=ctx.source,
                                           max_bytes=ctx.max_message_bytes))
    return snapshot, records, len(observation.events)


def _reject(raw: Any, task_id: str | None, exc: Exception) -> Reject:
    if isinstance(exc, NormaliseError):
        error = exc
    else:  # a bug met by one record: the record is set aside, the stream goes on
        log.error("record_failed", task_id=task_id, error_type=type(exc).__name__, error=str(exc))
        error = NormaliseError(f"processing failed: {type(exc).__name__}: {exc}",
                               task_id=task_id, kind="failed")
    return Reject(raw, error, normalise.fingerprint(raw))


def _dead_letters(rejects: Sequence[Reject], dead_lettered: AbstractSet[str], ctx: PageContext,
                  now: datetime) -> tuple[list[DeadLetterMark], list[OutboundRecord], Counter[str]]:
    """Dead letters for contents never sent before: once per distinct content, not per cycle.

    Returns the marks to commit, the records to send and how many of each kind.
    """
    marks: list[DeadLetterMark] = []
    records: list[OutboundRecord] = []
    kinds: Counter[str] = Counter()
    distinct = {reject.fingerprint: reject for reject in rejects}  # twice on one page: once
    for reject in distinct.values():
        if reject.fingerprint in dead_lettered:
            continue
        kinds[reject.error.kind] += 1
        error = reject.error
        log.warning("record_dead_lettered", reason=error.reason, task_id=error.task_id)
        marks.append(DeadLetterMark(fingerprint=reject.fingerprint, task_id=error.task_id))
        records.append(events.dead_letter(
            reject.raw, reason=error.reason, task_id=error.task_id,
            window=ctx.window.describe(), page=ctx.page, source=ctx.source, observed_at=now,
            max_bytes=ctx.max_message_bytes))
    return marks, records, kinds


def created_on(document: bytes) -> date | None:
    """The create date of a canonical task document (its create-date slice), read without
    parsing it: canonical times are RFC 3339, so the date is the first ten characters."""
    at = document.find(b'"create_time":"')
    if at < 0:
        return None
    try:
        return date.fromisoformat(document[at + 15:at + 25].decode())
    except ValueError:
        return None


def type_of(snapshot: Snapshot) -> str | None:
    """The task type id of a stored task."""
    type_id = orjson.loads(snapshot.document).get("task_type_id")
    return type_id if isinstance(type_id, str) else None


def vanished(previous: Sequence[Snapshot], *, ctx: PageContext, type_names: Mapping[str, str | None],
             now: datetime) -> Commit:
    """The commit of tasks the sweep confirmed gone: each kept as a tombstone at its next
    version, announced by TaskVanished and, on the state topic, by a tombstone record."""
    snapshots: list[Snapshot] = []
    records: list[OutboundRecord] = []
    for before in previous:
        type_id = type_of(before)
        observation = diff.vanished(before, observed_at=now,
                                    type_name=type_names.get(type_id) if type_id else None)
        [event] = observation.events
        assert isinstance(event, events.TaskVanished) and observation.version is not None
        snapshots.append(replace(before, version=observation.version, vanished=True))
        records.append(events.encode(event, source=ctx.source, max_bytes=ctx.max_message_bytes))
        if ctx.state_topic:
            records.append(events.state_tombstone(event, source=ctx.source))
    return Commit(snapshots=snapshots, records=records)


@dataclass(frozen=True, slots=True)
class VanishVerdict:
    """What a complete, drift-free read of a slice means for the stored tasks it did not see."""

    vanished: frozenset[str] = frozenset()  # confirmed: announce them now
    to_confirm: frozenset[str] = frozenset()  # first miss: read the slice once more, later
    tripped: bool = False  # too many at once: the API is serving partial data, announce nothing


def judge_missing(stored: int, missing: AbstractSet[str], confirming: AbstractSet[str] | None, *,
                  max_fraction: float) -> VanishVerdict:
    """The circuit breaker and the confirmation read of docs/design.md §3.1, as a decision.

    `stored` live tasks of the slice, `missing` those the read did not return; `confirming` the
    ids a previous read missed (this read is their confirmation), or None.
    """
    if not missing:
        return VanishVerdict()
    if len(missing) > 3 and len(missing) > max_fraction * stored:
        return VanishVerdict(tripped=True)
    if confirming is None:
        return VanishVerdict(to_confirm=frozenset(missing))
    return VanishVerdict(vanished=frozenset(missing & confirming))


def _missed_by_window(before: Snapshot | None, task: NormalisedTask,
                      window_from: date | None) -> str | None:
    """Why the window did not see a change the sweep found (None: not a sweep page, a new task,
    or a change the window would have seen on its own)."""
    if window_from is None or before is None:
        return None
    if task.modify_time == before.modify_time:
        return "modify_time_unchanged"
    if task.modify_time is not None and task.modify_time.date() < window_from:
        return "modify_time_before_window"
    return None


def _was_skipped(before: Snapshot | None, task: NormalisedTask, previous_scan: datetime | None) -> bool:
    """A change stamped well before the previous scan started should have been seen by it."""
    if before is None or previous_scan is None or task.modify_time is None:
        return False
    return task.modify_time < previous_scan - MODIFY_TIME_PRECISION
