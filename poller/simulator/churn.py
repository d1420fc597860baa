"""Churn mode: mutate random tasks at a steady rate, like a busy field-sales team."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import structlog

from poller.simulator.state import TaskStore

log = structlog.get_logger(__name__)

# Relative weights of each mutation; feedback and status changes dominate real traffic.
MIX = (("feedback", 30), ("status", 25), ("create", 15), ("reassign", 10),
       ("deadline", 10), ("delete", 5), ("restore", 5))


def mutate_once(store: TaskStore, rng: random.Random) -> dict[str, Any]:
    """Apply one random mutation from MIX to a random task and return the task after it."""
    kinds, weights = zip(*MIX, strict=True)
    kind = rng.choices(kinds, weights)[0]
    if kind == "create" or not store.tasks:
        return store.create_task()
    task_id = rng.choice(list(store.tasks))
    if kind == "feedback":
        return store.add_feedback(task_id)
    if kind == "status":
        return store.set_task_status(task_id, rng.choice((0, 2, 2, 3)))
    if kind == "reassign":
        return store.reassign(task_id)
    if kind == "deadline":
        return store.set_deadline(task_id)
    if kind == "delete":
        return store.delete(task_id)
    return store.restore(task_id)


class Churn:
    """A background task performing `per_s` random mutations per second until stopped."""

    def __init__(self, store: TaskStore, seed: int) -> None:
        self._store = store
        self._rng = random.Random(seed ^ 0xC4A2)
        self._task: asyncio.Task[None] | None = None
        self.per_s = 0.0

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, per_s: float) -> None:
        """(Re)start churning at `per_s` mutations per second; 0 stops."""
        await self.stop()
        if per_s <= 0:
            return
        self.per_s = per_s
        self._task = asyncio.create_task(self._run(per_s), name="simulator-churn")

    async def stop(self) -> None:
        """Stop churning; idempotent."""
        task, self._task = self._task, None
        self.per_s = 0.0
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, per_s: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / per_s
        due = loop.time()
        while True:
            # Never owe more than a second of work after a stall (a paused process, a debugger).
            due = max(due, loop.time() - 1.0)
            # Catch up in bursts when the loop was busy, so the average rate holds.
            while due <= loop.time():
                mutate_once(self._store, self._rng)
                due += interval
            await asyncio.sleep(due - loop.time())  # pacing, not synchronisation
