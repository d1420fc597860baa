"""Churn mode: mutate random tasks at a steady rate, like a busy field-sales team (and its vendor)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import structlog

from poller.models import BEIJING
from poller.simulator.generate import TIME_FORMAT
from poller.simulator.state import TaskStore

log = structlog.get_logger(__name__)

# Relative weights of each ordinary mutation; feedback and status changes dominate real traffic.
MIX = (("feedback", 30), ("status", 25), ("create", 15), ("reassign", 10),
       ("deadline", 10), ("delete", 5), ("restore", 5))
# A reverted change is one made this recently, so A -> B -> A happens within a minute.
REVERT_WITHIN: Final = timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class ChurnMix:
    """The vendor's habits in churn, as fractions of all churn mutations (all 0: an honest one).

    `hard_delete`, `reappear` and `revert` are mutation kinds drawn before the ordinary MIX;
    `silent` and `past` modify the changes that follow (not creations or hard deletes): a
    silent one leaves modify_time as it was, a past one stamps it 1 to `past_days` days ago
    (never before the task's creation).
    """

    silent: float = 0.0
    past: float = 0.0
    past_days: int = 3
    hard_delete: float = 0.0
    reappear: float = 0.0
    revert: float = 0.0

    def __post_init__(self) -> None:
        for name in ("silent", "past", "hard_delete", "reappear", "revert"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"churn {name} must be a fraction in [0, 1], got {value!r}")
        if self.silent + self.past > 1.0:
            raise ValueError("churn silent + past must not exceed 1")
        if self.hard_delete + self.reappear + self.revert > 1.0:
            raise ValueError("churn hard_delete + reappear + revert must not exceed 1")
        if self.past_days < 1:
            raise ValueError(f"churn past_days must be at least 1, got {self.past_days!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ChurnMix:
        """A mix from JSON-ish values; ValueError naming an unknown key or a bad value."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown churn option(s) {unknown}; expected some of {sorted(names)}")
        try:
            typed: dict[str, Any] = {k: int(v) if k == "past_days" else float(v)
                                     for k, v in values.items()}
            return cls(**typed)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad churn option: {exc}") from None

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HONEST: Final = ChurnMix()


def mutate_once(store: TaskStore, rng: random.Random,
                mix: ChurnMix = HONEST) -> dict[str, Any]:
    """Apply one random mutation to a random task and return the task after it.

    With the default mix this is one ordinary mutation from MIX, as a real team would make.
    """
    special = _special(store, rng, mix)
    if special is not None:
        return special
    kinds, weights = zip(*MIX, strict=True)
    kind = rng.choices(kinds, weights)[0]
    if kind == "create" or not store.tasks:
        return store.create_task()
    task_id = _any_task(store, rng)
    stamp = _stamp_options(store, task_id, rng, mix)
    if kind == "feedback":
        return store.add_feedback(task_id, **stamp)
    if kind == "status":
        return store.set_task_status(task_id, rng.choice((0, 2, 2, 3)), **stamp)
    if kind == "reassign":
        return store.reassign(task_id, **stamp)
    if kind == "deadline":
        return store.set_deadline(task_id, **stamp)
    if kind == "delete":
        return store.delete(task_id, **stamp)
    return store.restore(task_id, **stamp)


def _special(store: TaskStore, rng: random.Random, mix: ChurnMix) -> dict[str, Any] | None:
    """A hard delete, reappearance or revert when the mix draws one and a task fits."""
    if not (mix.hard_delete or mix.reappear or mix.revert):
        return None  # no extra draw: an honest mix churns exactly as before
    draw = rng.random()
    if draw < mix.hard_delete:
        return store.hard_delete(_any_task(store, rng)) if store.tasks else None
    draw -= mix.hard_delete
    if draw < mix.reappear:
        return store.reappear(rng.choice(sorted(store.removed))) if store.removed else None
    draw -= mix.reappear
    if draw < mix.revert:
        recent = list(store.recent(REVERT_WITHIN))
        if recent:
            task_id = rng.choice(recent)
            return store.revert(task_id, **_stamp_options(store, task_id, rng, mix))
    return None


def _any_task(store: TaskStore, rng: random.Random) -> str:
    return store.index.id_at(rng.randrange(len(store.index)))


def _stamp_options(store: TaskStore, task_id: str, rng: random.Random,
                   mix: ChurnMix) -> dict[str, Any]:
    """touch/stamp_at for one churn change: honest, silent, or stamped days in the past."""
    if not (mix.silent or mix.past):
        return {}
    draw = rng.random()
    if draw < mix.silent:
        return {"touch": False}
    if draw < mix.silent + mix.past:
        back = timedelta(days=rng.randint(1, mix.past_days), minutes=rng.randrange(60))
        stamp = (store.clock() - back).astimezone(BEIJING).strftime(TIME_FORMAT)
        # Never before the task existed: the vendor stamps wrong, not impossibly.
        return {"stamp_at": max(stamp, store.tasks[task_id]["create_time"])}
    return {}


class Churn:
    """A background task performing `per_s` random mutations per second until stopped."""

    def __init__(self, store: TaskStore, seed: int, mix: ChurnMix = HONEST) -> None:
        self._store = store
        self._rng = random.Random(seed ^ 0xC4A2)
        self._task: asyncio.Task[None] | None = None
        self.per_s = 0.0
        self.mix = mix

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, per_s: float, mix: ChurnMix | None = None) -> None:
        """(Re)start churning at `per_s` mutations per second (with `mix` when given); 0 stops."""
        await self.stop()
        if mix is not None:
            self.mix = mix
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
                mutate_once(self._store, self._rng, self.mix)
                due += interval
            await asyncio.sleep(due - loop.time())  # pacing, not synchronisation
