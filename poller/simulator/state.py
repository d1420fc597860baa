"""The simulator's task store: seeded tasks, the mutations the real service performs, a ledger."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from poller.models import BEIJING
from poller.simulator.generate import TIME_FORMAT, Generator

# The task fields update_fields() may not touch: identity and the service-owned timestamps.
PROTECTED = frozenset({"task_id", "create_time", "modify_time"})


class TaskStore:
    """Tasks and types as canonical dicts; every mutation stamps modify_time and is ledgered.

    Like the real service, modify_time is the current Beijing minute from `clock`, so several
    changes within one minute share a modify_time and only the (modify_time, task_id) order
    separates them.
    """

    def __init__(self, *, seed: int, tasks: int, days: int, types: int,
                 clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.gen = Generator(seed, types)
        self.tasks: dict[str, dict[str, Any]] = {
            t["task_id"]: t for t in self.gen.seed_tasks(tasks, days, self._now())}
        self.types: dict[str, dict[str, Any]] = {
            type_id: {"type_id": type_id, "type_name": name, "status": 1}
            for type_id, name in self.gen.types.items()}
        self.ledger: list[dict[str, Any]] = []

    # --- reading ----------------------------------------------------------------------------

    def query(self, *, modify_from: date | None = None, modify_to: date | None = None,
              create_from: date | None = None, create_to: date | None = None,
              ) -> list[dict[str, Any]]:
        """Tasks matching the inclusive day filters, ordered by (modify_time, task_id)."""
        bounds = (
            ("modify_time", modify_from, modify_to), ("create_time", create_from, create_to))
        # The API filters by Beijing calendar day: compare the yyyy-MM-dd prefix of the time.
        checks = [(f, lo.isoformat() if lo else None, hi.isoformat() if hi else None)
                  for f, lo, hi in bounds if lo or hi]
        selected = [t for t in self.tasks.values() if all(
            (lo is None or t[f][:10] >= lo) and (hi is None or t[f][:10] <= hi)
            for f, lo, hi in checks)]
        selected.sort(key=lambda t: (t["modify_time"], len(t["task_id"]), t["task_id"]))
        return selected

    def get(self, task_id: str) -> dict[str, Any]:
        """A copy of one task; KeyError for an unknown id."""
        return copy.deepcopy(self.tasks[task_id])

    # --- mutations (each returns the task after the change) --------------------------------

    def create_task(self, **fields: Any) -> dict[str, Any]:
        """A new task created now (random content unless `fields` say otherwise)."""
        now = self._now()
        task = self.gen.task(now, now)
        task.update({"task_status": 0, "status": 1, "feedback_detail": [],
                     "latest_feedback_time": None, "latest_feedback_content": None})
        task.update({k: v for k, v in fields.items() if k not in PROTECTED})
        self.tasks[task["task_id"]] = task
        return self._record(task, "create", {})

    def add_feedback(self, task_id: str, content: str | None = None,
                     visit_id: str | None = None) -> dict[str, Any]:
        """Append a feedback entry; the task becomes task_status 1 (feedback given)."""
        task = self.tasks[task_id]
        stamp = self._minute()
        entry = {"feedback_content": content or self.gen.feedback_text(),
                 "feedback_visit_id": visit_id or self.gen.visit_id(), "feedback_time": stamp}
        task["feedback_detail"].append(entry)
        task["latest_feedback_time"] = stamp
        task["latest_feedback_content"] = entry["feedback_content"]
        task["task_status"] = 1
        return self._record(task, "feedback", dict(entry))

    def set_task_status(self, task_id: str, task_status: int) -> dict[str, Any]:
        """Accept (2), reject (3), reopen (0) or mark feedback given (1)."""
        if task_status not in (0, 1, 2, 3):
            raise ValueError(f"task_status must be 0-3, got {task_status!r}")
        task = self.tasks[task_id]
        before, task["task_status"] = task["task_status"], task_status
        return self._record(task, "task_status", {"before": before, "after": task_status})

    def reassign(self, task_id: str,
                 receivers: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """Replace the receivers (指派); random ones from the user pool when not given."""
        task = self.tasks[task_id]
        before = task["receivers"]
        after = receivers if receivers is not None else self.gen.receivers()
        task["receivers"] = [dict(r) for r in after]
        return self._record(task, "reassign", {"before": before, "after": task["receivers"]})

    def set_deadline(self, task_id: str, deadline: str | None = None) -> dict[str, Any]:
        """Move feedback_deadline (yyyy-MM-dd HH:mm); a few days later when not given."""
        task = self.tasks[task_id]
        before = task["feedback_deadline"]
        if deadline is None:
            current = datetime.strptime(before, TIME_FORMAT) if before else self._now()
            deadline = (current + timedelta(days=self.gen.rng.randint(1, 5))).strftime(
                TIME_FORMAT)
        else:
            datetime.strptime(deadline, TIME_FORMAT)  # ValueError for a malformed time
        task["feedback_deadline"] = deadline
        return self._record(task, "deadline", {"before": before, "after": deadline})

    def delete(self, task_id: str) -> dict[str, Any]:
        """Soft delete: status 0 (queryTask keeps returning the task)."""
        self.tasks[task_id]["status"] = 0
        return self._record(self.tasks[task_id], "delete", {})

    def restore(self, task_id: str) -> dict[str, Any]:
        """Undo a delete: status 1."""
        self.tasks[task_id]["status"] = 1
        return self._record(self.tasks[task_id], "restore", {})

    def update_fields(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """Change arbitrary fields (content, customer, type, unknown new fields, ...)."""
        bad = PROTECTED & fields.keys()
        if bad:
            raise ValueError(f"fields {sorted(bad)} are set by the service, not by callers")
        task = self.tasks[task_id]
        task.update(copy.deepcopy(fields))
        return self._record(task, "update", {"fields": sorted(fields)})

    def update_type(self, type_id: str, **fields: Any) -> dict[str, Any]:
        """Change (or create) a task type definition; tasks' modify_time does not move."""
        entry = self.types.setdefault(type_id, {"type_id": type_id, "type_name": None,
                                                "status": 1})
        entry.update({k: v for k, v in fields.items() if k != "type_id"})
        self.ledger.append({"seq": len(self.ledger) + 1, "task_id": None, "kind": "type",
                            "at": self._minute(), "detail": {"type_id": type_id, **fields}})
        return dict(entry)

    # --- helpers ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock().astimezone(BEIJING)

    def _minute(self) -> str:
        return self._now().strftime(TIME_FORMAT)

    def _record(self, task: dict[str, Any], kind: str, detail: dict[str, Any]) -> dict[str, Any]:
        # The real service stamps modify_time on every change, to the minute, in Beijing time.
        task["modify_time"] = self._minute()
        self.ledger.append({"seq": len(self.ledger) + 1, "task_id": task["task_id"],
                            "kind": kind, "at": task["modify_time"],
                            "detail": copy.deepcopy(detail)})
        return copy.deepcopy(task)
