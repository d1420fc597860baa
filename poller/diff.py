"""Pure: (stored snapshot or none, observed task) -> the ordered events of docs/design.md §4."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, Final

import orjson

from poller import normalise
from poller.errors import NormaliseError
from poller.events import (
    FeedbackAdded,
    FieldChange,
    TaskAccepted,
    TaskCreated,
    TaskDeadlineChanged,
    TaskDeleted,
    TaskEvent,
    TaskFeedbackSubmitted,
    TaskReassigned,
    TaskRejected,
    TaskReopened,
    TaskRestored,
    TaskTypeChanged,
    TaskUpdated,
    TaskVanished,
    event_id,
)
from poller.models import BEIJING, NormalisedTask, Snapshot, TaskType, TypeSnapshot
from poller.normalise import feedback_key

# Bookkeeping fields: a change to them alone is not news (the task was touched, or its
# latest-feedback summary moved with a feedback entry that has its own event).
SILENT_FIELDS: Final = frozenset({"modify_time", "latest_feedback_time", "latest_feedback_content"})
# Fields with their own events: listed in TaskUpdated.changes only for what those events do not
# announce (a receiver renamed under the same id, a feedback entry removed or edited).
OWN_EVENT_FIELDS: Final = frozenset(
    {"task_id", "receivers", "feedback_detail", "feedback_deadline", "task_status", "status"}
)
# task_status -> the event announcing a change to it (docs/design.md §2 field meanings).
STATUS_EVENTS: Final[dict[int, type[TaskEvent]]] = {
    1: TaskFeedbackSubmitted,
    2: TaskAccepted,
    3: TaskRejected,
    0: TaskReopened,
}
# (status before, status after) -> event; 0 deleted, 1 normal.
LIFECYCLE_EVENTS: Final[dict[tuple[int, int], type[TaskEvent]]] = {
    (1, 0): TaskDeleted,
    (0, 1): TaskRestored,
}


@dataclass(frozen=True, slots=True)
class Observation:
    """What one observation of a task means: its events, in order, and the version to store.

    `version` is None when nothing needs writing (same hash); otherwise the snapshot is stored
    at it (the previous version plus one when there are events). `events` must not be mutated:
    the unchanged result is one shared instance.
    """

    events: list[TaskEvent]
    version: int | None

    def snapshot(self, current: NormalisedTask, received: int | None = None,
                 create_date: date | None = None) -> Snapshot | None:
        """The snapshot to store for the observed task (None when nothing needs writing)."""
        if self.version is None:
            return None
        return Snapshot(current.task_id, current.hash, current.document, self.version,
                        current.modify_time, received, create_date)


UNCHANGED: Final = Observation([], None)


def observe(
    previous: Snapshot | None,
    current: NormalisedTask,
    *,
    observed_at: datetime,
    type_name: str | None = None,
    silent: bool = False,
) -> Observation:
    """Diff one observed task against its stored snapshot.

    Same hash: UNCHANGED, after one string compare. Otherwise the field diff decides: no
    semantic change (modify_time alone, or a new normalisation version) rewrites the snapshot
    at the same version; events bump the version by one (ce_sequence), and every event id
    includes that version. `silent` (baseline) records the task without events, at version 0
    when new.
    """
    if previous is not None and previous.hash == current.hash and not previous.vanished:
        return UNCHANGED
    base_version = previous.version if previous is not None else 0
    if silent:
        return Observation([], base_version)
    after = orjson.loads(current.document)
    before = _as_new(after) if previous is None else _previous_document(previous)
    specs = _changes(before, after, current.hash)
    if previous is None:
        specs.insert(0, (TaskCreated, {}, current.hash))
    elif previous.vanished:  # back from the dead: restored first, then what changed meanwhile
        specs = [(TaskRestored, {}, current.hash), *(s for s in specs if s[0] is not TaskRestored)]
    if not specs:
        return Observation([], base_version)
    version = base_version + 1
    envelope: dict[str, Any] = {
        "task_id": current.task_id,
        "modify_time": current.modify_time,
        "observed_at": observed_at.astimezone(BEIJING),
        "sequence": version,
        "task_type_name": type_name,
        "task": normalise.to_task(current.document),
    }
    events = [
        cls(id=event_id(current.task_id, cls.__name__, version, content), **envelope, **detail)
        for cls, detail, content in specs
    ]
    return Observation(events, version)


def vanished(previous: Snapshot, *, observed_at: datetime, type_name: str | None = None
             ) -> Observation:
    """The TaskVanished of a task the sweep confirmed gone: the next version, the last known task."""
    version = previous.version + 1
    event = TaskVanished(
        id=event_id(previous.task_id, "TaskVanished", version, previous.hash),
        task_id=previous.task_id, modify_time=previous.modify_time,
        observed_at=observed_at.astimezone(BEIJING), sequence=version, task_type_name=type_name,
        task=normalise.to_task(previous.document),
    )
    return Observation([event], version)


def observe_type(
    previous: TypeSnapshot | None, current: TypeSnapshot, *, observed_at: datetime
) -> tuple[list[TaskTypeChanged], TypeSnapshot | None]:
    """The TaskTypeChanged of a re-read task type, and the snapshot to store (None: unchanged).

    The first sight of a type is recorded silently at version 0; a change of meaning is stored
    at the previous version plus one, which its event id includes; a change of normalisation
    alone is stored at the same version.
    """
    if previous is not None and previous.hash == current.hash:
        return [], None
    if previous is None:
        return [], replace(current, version=0)
    before: dict[str, Any] = orjson.loads(previous.document)
    if previous.hash != normalise.content_hash(previous.document):  # stored under older rules
        try:
            before = orjson.loads(normalise.task_type(before).document)
        except NormaliseError:
            pass
    changes = _field_changes(before, orjson.loads(current.document), skip=frozenset({"type_id"}))
    if not changes:  # only the normalisation changed
        return [], replace(current, version=previous.version)
    version = previous.version + 1
    event = TaskTypeChanged(
        id=event_id(current.type_id, "TaskTypeChanged", version, current.hash),
        type_id=current.type_id,
        observed_at=observed_at.astimezone(BEIJING),
        changes=changes,
        task_type=TaskType.model_validate_json(current.document),
    )
    return [event], replace(current, version=version)


_Spec = tuple[type[TaskEvent], dict[str, Any], str]
"""An event to build: its class, its own fields, and the content its id derives from."""


def _changes(before: dict[str, Any], after: dict[str, Any], state: str) -> list[_Spec]:
    """The events between two canonical documents, in the order of the docs/design.md §4 table.

    `state` is the hash of `after`: the ids of state events derive from it.
    """
    specs: list[_Spec] = []
    receivers = before.get("receivers", []), after.get("receivers", [])
    reassigned = _reassignment(*receivers)
    feedback = before.get("feedback_detail", []), after.get("feedback_detail", [])
    # What no event of its own announces is a plain field change: a receiver renamed under the
    # same id, a feedback entry removed or edited. So every observation that changes the task
    # yields an event, and a consumer's copy of the task (each event carries it) never goes stale.
    unannounced = set()
    if not reassigned and receivers[0] != receivers[1]:
        unannounced.add("receivers")
    if _feedback_keys(feedback[0]) - _feedback_keys(feedback[1]):
        unannounced.add("feedback_detail")
    changes = _field_changes(before, after, skip=SILENT_FIELDS | (OWN_EVENT_FIELDS - unannounced))
    status_before, status_after = before.get("task_status", 0), after.get("task_status", 0)
    if status_before != status_after and status_after not in STATUS_EVENTS:
        changes["task_status"] = FieldChange(before=status_before, after=status_after)
    life_before, life_after = before.get("status", 1), after.get("status", 1)
    lifecycle = LIFECYCLE_EVENTS.get((life_before, life_after))
    if life_before != life_after and lifecycle is None:
        changes["status"] = FieldChange(before=life_before, after=life_after)
    if changes:
        specs.append((TaskUpdated, {"changes": dict(sorted(changes.items()))}, state))
    if reassigned:
        specs.append((TaskReassigned, reassigned, state))
    deadline = (before.get("feedback_deadline"), after.get("feedback_deadline"))
    if deadline[0] != deadline[1]:
        specs.append((TaskDeadlineChanged, {"before": deadline[0], "after": deadline[1]}, state))
    specs.extend(_new_feedback(*feedback))
    if status_before != status_after and status_after in STATUS_EVENTS:
        detail = {"from_status": status_before, "to_status": status_after}
        specs.append((STATUS_EVENTS[status_after], detail, state))
    if lifecycle is not None:
        specs.append((lifecycle, {}, state))
    return specs


def _field_changes(
    before: dict[str, Any], after: dict[str, Any], *, skip: frozenset[str]
) -> dict[str, FieldChange]:
    return {
        key: FieldChange(before=before.get(key), after=after.get(key))
        for key in sorted(before.keys() | after.keys())
        if key not in skip and before.get(key) != after.get(key)
    }


def _reassignment(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """Receivers are a set by id (docs/design.md §3): a renamed receiver is not a reassignment."""
    old = {person["id"]: person for person in before}
    new = {person["id"]: person for person in after}
    added = [new[key] for key in sorted(new.keys() - old.keys())]
    removed = [old[key] for key in sorted(old.keys() - new.keys())]
    return {"added": added, "removed": removed} if added or removed else {}


def _feedback_keys(entries: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {feedback_key(entry) for entry in entries}


def _new_feedback(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[_Spec]:
    """One FeedbackAdded per entry not seen before, oldest first (the canonical order).

    The id derives from the entry's identity, so the same feedback always has the same id.
    """
    seen = _feedback_keys(before)
    return [
        (FeedbackAdded, {"feedback": entry}, orjson.dumps(key).decode())
        for entry in after
        if (key := feedback_key(entry)) not in seen
    ]


def _previous_document(previous: Snapshot) -> dict[str, Any]:
    """The stored document, read under today's normalisation rules.

    A snapshot written by another NORMALISATION_VERSION has a hash that its document no
    longer reproduces; normalising that document again makes the field diff compare like with
    like, so a rule change re-baselines silently instead of flooding consumers.
    """
    before: dict[str, Any] = orjson.loads(previous.document)
    if previous.hash == normalise.content_hash(previous.document):
        return before
    try:
        renewed: dict[str, Any] = orjson.loads(normalise.task(before).document)
    except NormaliseError:  # unreadable under today's rules: compare it as stored
        return before
    return renewed


def _as_new(after: dict[str, Any]) -> dict[str, Any]:
    """The state a new task is diffed from (docs/design.md §4): itself, without feedback, status
    awaiting feedback (0) and not deleted (1); so a task first seen with feedback or a
    non-zero status also yields its FeedbackAdded and status events."""
    before = {key: value for key, value in after.items() if key != "feedback_detail"}
    before["task_status"] = 0
    before["status"] = 1
    return before
