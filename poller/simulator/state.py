"""The simulator's task store: seeded tasks, the mutations the real service performs, a ledger."""

from __future__ import annotations

import contextlib
import copy
import gc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any, Final

from poller.models import BEIJING
from poller.simulator.generate import TIME_FORMAT, Generator
from poller.simulator.index import DayFilters, TaskIndex

# The task fields update_fields() may not touch: identity and the service-owned timestamps.
PROTECTED = frozenset({"task_id", "create_time", "modify_time"})
# How many tasks keep their state from before their last change, for revert().
UNDO_DEPTH: Final = 4096

Change = Callable[[dict[str, Any]], dict[str, Any]]
"""Edits a task in place (replacing values, never editing them) and returns the ledger detail."""

Stamp = datetime | str | None
"""An explicit modify_time for a write: a datetime (any zone) or `yyyy-MM-dd HH:mm` Beijing."""


def visible_to_window(entry: dict[str, Any], window_from: date) -> bool:
    """Whether a modify-date window starting at `window_from` can see this ledgered change.

    It can when the change moved modify_time to a day the window covers; anything else (a
    silent change, a write stamped before the window, a hard delete) only a reconciliation
    sweep finds.
    """
    stamped = entry.get("modify_time")
    return bool(entry.get("modify_time_moved")) and stamped is not None and \
        stamped[:10] >= window_from.isoformat()


class TaskStore:
    """Tasks and types as canonical dicts, indexed in result order; every mutation is ledgered.

    Like the real service, a change stamps modify_time with the current Beijing minute, so
    several changes within one minute share a modify_time and only the (modify_time, task_id)
    order separates them. The vendor's worse habits are options of every task mutation:
    `touch=False` leaves modify_time as it was, `stamp_at=` stamps another (earlier) time;
    hard_delete() makes a task vanish from every answer and reappear() brings it back;
    revert() puts a task back to its state before its last change. Each ledger entry says
    whether modify_time moved, so a harness knows what only a sweep can find.

    Tasks returned by query()/page() are the store's own: read them, never edit them.
    """

    def __init__(self, *, seed: int, tasks: int, days: int, types: int,
                 clock: Callable[[], datetime], late_feedback: float = 0.0) -> None:
        self.clock = clock
        self.gen = Generator(seed, types, late_feedback=late_feedback)
        with _gc_paused():
            self.tasks: dict[str, dict[str, Any]] = {
                t["task_id"]: t for t in self.gen.seed_tasks(tasks, days, self._now())}
            self.index = TaskIndex(self.tasks.values())
        self.removed: dict[str, dict[str, Any]] = {}  # hard-deleted tasks, as they were last
        self.types: dict[str, dict[str, Any]] = {
            type_id: {"type_id": type_id, "type_name": name, "status": 1}
            for type_id, name in self.gen.types.items()}
        self.ledger: list[dict[str, Any]] = []
        # task_id -> (ledger seq, state before that change, when): what revert() goes back to.
        self._undo: OrderedDict[str, tuple[int, dict[str, Any], datetime]] = OrderedDict()

    # --- reading ----------------------------------------------------------------------------

    def query(self, *, modify_from: date | None = None, modify_to: date | None = None,
              create_from: date | None = None, create_to: date | None = None,
              ) -> list[dict[str, Any]]:
        """Tasks matching the inclusive day filters, ordered by (modify_time, task_id)."""
        return self.page(DayFilters(modify_from, modify_to, create_from, create_to))

    def page(self, filters: DayFilters, *, offset: int = 0, rows: int | None = None,
             keep: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
        """One page of the result set (see TaskIndex.ids); `keep` drops ids from the set."""
        return [self.tasks[i] for i in self.index.ids(filters, offset=offset, rows=rows,
                                                      keep=keep)]

    def get(self, task_id: str) -> dict[str, Any]:
        """A copy of one task; KeyError for an unknown or hard-deleted id."""
        if task_id in self.removed:
            raise KeyError(f"{task_id} (hard-deleted)")
        return copy.deepcopy(self.tasks[task_id])

    def recent(self, within: timedelta) -> Iterator[str]:
        """Live tasks that revert() can undo, changed within `within` of now, newest first."""
        cutoff = self._now() - within
        for task_id, (_, _, when) in reversed(self._undo.items()):
            if when < cutoff:
                return
            if task_id in self.tasks:
                yield task_id

    # --- mutations (each returns the task after the change) --------------------------------

    def create_task(self, **fields: Any) -> dict[str, Any]:
        """A new task created now (random content unless `fields` say otherwise)."""
        now = self._now()
        task = self.gen.task(now, now)
        task.update({"task_status": 0, "status": 1, "feedback_detail": [],
                     "latest_feedback_time": None, "latest_feedback_content": None})
        task.update({k: v for k, v in copy.deepcopy(fields).items() if k not in PROTECTED})
        self.tasks[task["task_id"]] = task
        self.index.add(task)
        self._append(task["task_id"], "create", {}, task["modify_time"], moved=True)
        return copy.deepcopy(task)

    def add_feedback(self, task_id: str, content: str | None = None,
                     visit_id: str | None = None, *, touch: bool = True,
                     stamp_at: Stamp = None) -> dict[str, Any]:
        """Append a feedback entry (dated now, whatever the stamp); task_status becomes 1."""
        def change(task: dict[str, Any]) -> dict[str, Any]:
            entry = {"feedback_content": content or self.gen.feedback_text(),
                     "feedback_visit_id": visit_id or self.gen.visit_id(),
                     "feedback_time": self._minute()}
            task["feedback_detail"] = [*task["feedback_detail"], entry]
            task["latest_feedback_time"] = entry["feedback_time"]
            task["latest_feedback_content"] = entry["feedback_content"]
            task["task_status"] = 1
            return dict(entry)
        return self._change(task_id, "feedback", change, touch=touch, stamp_at=stamp_at)

    def set_task_status(self, task_id: str, task_status: int, *, touch: bool = True,
                        stamp_at: Stamp = None) -> dict[str, Any]:
        """Accept (2), reject (3), reopen (0) or mark feedback given (1)."""
        if task_status not in (0, 1, 2, 3):
            raise ValueError(f"task_status must be 0-3, got {task_status!r}")

        def change(task: dict[str, Any]) -> dict[str, Any]:
            before, task["task_status"] = task["task_status"], task_status
            return {"before": before, "after": task_status}
        return self._change(task_id, "task_status", change, touch=touch, stamp_at=stamp_at)

    def reassign(self, task_id: str, receivers: list[dict[str, str]] | None = None, *,
                 touch: bool = True, stamp_at: Stamp = None) -> dict[str, Any]:
        """Replace the receivers (指派); random ones from the user pool when not given."""
        def change(task: dict[str, Any]) -> dict[str, Any]:
            before = task["receivers"]
            after = receivers if receivers is not None else self.gen.receivers()
            task["receivers"] = [dict(r) for r in after]
            return {"before": copy.deepcopy(before), "after": copy.deepcopy(task["receivers"])}
        return self._change(task_id, "reassign", change, touch=touch, stamp_at=stamp_at)

    def set_deadline(self, task_id: str, deadline: str | None = None, *, touch: bool = True,
                     stamp_at: Stamp = None) -> dict[str, Any]:
        """Move feedback_deadline (yyyy-MM-dd HH:mm); a few days later when not given."""
        if deadline is not None:
            datetime.strptime(deadline, TIME_FORMAT)  # ValueError for a malformed time

        def change(task: dict[str, Any]) -> dict[str, Any]:
            before, after = task["feedback_deadline"], deadline
            if after is None:
                current = datetime.strptime(before, TIME_FORMAT) if before else self._now()
                after = (current + timedelta(days=self.gen.rng.randint(1, 5))).strftime(
                    TIME_FORMAT)
            task["feedback_deadline"] = after
            return {"before": before, "after": after}
        return self._change(task_id, "deadline", change, touch=touch, stamp_at=stamp_at)

    def delete(self, task_id: str, *, touch: bool = True,
               stamp_at: Stamp = None) -> dict[str, Any]:
        """Soft delete: status 0 (queryTask keeps returning the task)."""
        return self._change(task_id, "delete", _setter("status", 0), touch=touch,
                            stamp_at=stamp_at)

    def restore(self, task_id: str, *, touch: bool = True,
                stamp_at: Stamp = None) -> dict[str, Any]:
        """Undo a soft delete: status 1."""
        return self._change(task_id, "restore", _setter("status", 1), touch=touch,
                            stamp_at=stamp_at)

    def update_fields(self, task_id: str, *, touch: bool = True, stamp_at: Stamp = None,
                      **fields: Any) -> dict[str, Any]:
        """Change arbitrary fields (content, customer, type, unknown new fields, ...)."""
        bad = PROTECTED & fields.keys()
        if bad:
            raise ValueError(f"fields {sorted(bad)} are set by the service, not by callers")

        def change(task: dict[str, Any]) -> dict[str, Any]:
            task.update(copy.deepcopy(fields))
            return {"fields": sorted(fields)}
        return self._change(task_id, "update", change, touch=touch, stamp_at=stamp_at)

    def revert(self, task_id: str, *, touch: bool = True,
               stamp_at: Stamp = None) -> dict[str, Any]:
        """Put the task back to its state before its last change (A -> B -> A); reverting
        twice goes forward again. ValueError when the store kept no earlier state."""
        if task_id in self.tasks and task_id not in self._undo:
            raise ValueError(f"task {task_id} has no earlier state to revert to")

        def change(task: dict[str, Any]) -> dict[str, Any]:
            undone, state, _ = self._undo[task_id]
            fields = sorted(k for k in state.keys() | task.keys()
                            if k not in PROTECTED and state.get(k, _GONE) != task.get(k, _GONE))
            for name in [k for k in task if k not in PROTECTED and k not in state]:
                del task[name]
            task.update({k: v for k, v in state.items() if k not in PROTECTED})
            return {"reverts": undone, "fields": fields}
        return self._change(task_id, "revert", change, touch=touch, stamp_at=stamp_at)

    def hard_delete(self, task_id: str) -> dict[str, Any]:
        """Remove the task from every answer (no status 0, no trace); reappear() undoes it."""
        if task_id in self.removed:
            raise ValueError(f"task {task_id} is already hard-deleted")
        task = self.tasks.pop(task_id)
        self.index.remove(task)
        self.removed[task_id] = task
        self._undo.pop(task_id, None)
        self._append(task_id, "hard_delete", {}, task["modify_time"], moved=False)
        return copy.deepcopy(task)

    def reappear(self, task_id: str, *, touch: bool = False, stamp_at: Stamp = None,
                 **fields: Any) -> dict[str, Any]:
        """Bring a hard-deleted task back as it was (or with `fields` changed); modify_time
        stays as it was unless `touch` or `stamp_at` say otherwise."""
        if task_id in self.tasks:
            raise ValueError(f"task {task_id} is not hard-deleted")
        bad = PROTECTED & fields.keys()
        if bad:
            raise ValueError(f"fields {sorted(bad)} are set by the service, not by callers")
        task = self.removed[task_id]
        stamp = self._stamp(task, touch, stamp_at)
        del self.removed[task_id]
        task.update(copy.deepcopy(fields))
        self.tasks[task_id] = task
        self.index.add(task)
        return self._record(task, "reappear", {"fields": sorted(fields)}, stamp, None)

    def update_type(self, type_id: str, **fields: Any) -> dict[str, Any]:
        """Change (or create) a task type definition; tasks' modify_time does not move."""
        entry = self.types.setdefault(type_id, {"type_id": type_id, "type_name": None,
                                                "status": 1})
        entry.update({k: v for k, v in fields.items() if k != "type_id"})
        self._append(None, "type", {"type_id": type_id, **fields}, None, moved=False)
        return dict(entry)

    # --- helpers ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock().astimezone(BEIJING)

    def _minute(self) -> str:
        return self._now().strftime(TIME_FORMAT)

    def _stamp(self, task: dict[str, Any], touch: bool, stamp_at: Stamp) -> str | None:
        """The modify_time this write sets, or None to leave it as it was."""
        if stamp_at is None:
            # The real service stamps every change, to the minute, in Beijing time.
            return self._minute() if touch else None
        if not touch:
            raise ValueError("touch=False and stamp_at contradict each other; give one of them")
        if isinstance(stamp_at, datetime):
            text = stamp_at.astimezone(BEIJING).strftime(TIME_FORMAT)
        else:
            try:
                text = datetime.strptime(stamp_at, TIME_FORMAT).strftime(TIME_FORMAT)
            except (TypeError, ValueError):
                raise ValueError(f"stamp_at must be yyyy-MM-dd HH:mm, got {stamp_at!r}") from None
        if text < task["create_time"]:
            raise ValueError(f"stamp_at {text} is before the task's create_time "
                             f"{task['create_time']}")
        return text

    def _change(self, task_id: str, kind: str, change: Change, *, touch: bool,
                stamp_at: Stamp) -> dict[str, Any]:
        """Apply `change` to a live task, stamp it as asked, remember the state before."""
        task = self.tasks[task_id]
        stamp = self._stamp(task, touch, stamp_at)  # a bad stamp changes nothing
        before = dict(task)  # changes replace values, never edit them: a shallow copy holds
        return self._record(task, kind, change(task), stamp, before)

    def _record(self, task: dict[str, Any], kind: str, detail: dict[str, Any],
                stamp: str | None, before: dict[str, Any] | None) -> dict[str, Any]:
        if stamp is not None:
            self.index.restamp(task, stamp)
        seq = self._append(task["task_id"], kind, detail, task["modify_time"],
                           moved=stamp is not None)
        if before is not None:
            self._undo[task["task_id"]] = (seq, before, self._now())
            self._undo.move_to_end(task["task_id"])
            if len(self._undo) > UNDO_DEPTH:
                self._undo.popitem(last=False)
        return copy.deepcopy(task)

    def _append(self, task_id: str | None, kind: str, detail: dict[str, Any],
                modify_time: str | None, *, moved: bool) -> int:
        seq = len(self.ledger) + 1
        self.ledger.append({"seq": seq, "task_id": task_id, "kind": kind, "at": self._minute(),
                            "modify_time": modify_time, "modify_time_moved": moved,
                            "detail": copy.deepcopy(detail)})
        return seq


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: seeding makes millions of long-lived containers,
    and every collection would walk all of them again for nothing (a fifth of the time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Tells a field that is absent from one that holds None when comparing two task states.
_GONE: Final = object()


def _setter(name: str, value: Any) -> Change:
    def change(task: dict[str, Any]) -> dict[str, Any]:
        task[name] = value
        return {}
    return change
