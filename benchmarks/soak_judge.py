"""The soak's verdict: what the collected stream tells a consumer, against what the simulator did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from poller.models import Task
from tests.consumer_model import ConsumerModel, comparable


@dataclass(frozen=True)
class Truth:
    """What the simulator did: each mutated task's final state and every task's state before
    churn (both comparable()), and the malformed records it served (canonical JSON)."""

    finals: dict[str, dict[str, Any]]
    initial: dict[str, dict[str, Any]]
    injected: frozenset[bytes] = frozenset()


@dataclass
class Verdict:
    events: int = 0
    duplicates: int = 0
    lost: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    state_records: int = 0
    state_wrong: list[str] = field(default_factory=list)
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)


def judge(events: Sequence[Any], states: Sequence[Any], dead: Sequence[Any], truth: Truth) -> Verdict:
    """Judge records given in delivery order: the task topic through a ConsumerModel (de-dup by
    ce_id, apply by ce_sequence), the state topic by its newest record per task, dead letters
    against the injected malformed records."""
    model = ConsumerModel().apply_all(events)
    return Verdict(
        events=len(model.payloads), duplicates=model.duplicates, lost=lost(model, truth),
        contradictions=list(model.contradictions), state_records=len(states),
        state_wrong=state_wrong(model, states), dead_letters=len(dead),
        problems=strangers(model, truth) + dead_letter_problems(dead, truth.injected))


def lost(model: ConsumerModel, truth: Truth) -> list[str]:
    """Mutated tasks whose final state the consumer does not hold. A task whose mutations were
    all no-ops (a restore of a live task, a revert inside one cycle) rightly has no event: the
    consumer then holds its state from before churn."""
    problems = []
    for task_id, final in truth.finals.items():
        view = model.tasks.get(task_id)
        held = comparable(view.task) if view is not None else truth.initial.get(task_id)
        if held != final:
            problems.append(f"final state of {task_id} not on the topic: sim {_delta(final, held)}")
    return problems


def state_wrong(model: ConsumerModel, states: Sequence[Any]) -> list[str]:
    """Tasks whose newest state record (what a compacted topic keeps) is not the task, and the
    ce_sequence, of their newest event; a task with events but no state record, or the reverse."""
    newest: dict[str, tuple[int, dict[str, Any]]] = {}
    for record in states:
        task_id = record.key.decode()
        if record.value is None:  # a tombstone: the task is gone from the compacted topic
            newest.pop(task_id, None)
            continue
        headers = {name: value.decode() for name, value in record.headers}
        newest[task_id] = (int(headers["ce_sequence"]), _full(orjson.loads(record.value)))
    problems = [f"state record for {task_id} which has no event" for task_id in newest.keys() - model.tasks.keys()]
    for task_id, view in model.tasks.items():
        if task_id not in newest:
            problems.append(f"no state record for {task_id} (newest event seq {view.sequence})")
            continue
        sequence, task = newest[task_id]
        if sequence != view.sequence or task != _full(view.task):
            problems.append(f"state of {task_id} is seq {sequence}, newest event is seq {view.sequence}: "
                            f"{_delta(_full(view.task), task)}")
    return problems


def strangers(model: ConsumerModel, truth: Truth) -> list[str]:
    """Events for tasks the simulator never mutated: noise."""
    return [f"event for a task never mutated: {task_id}" for task_id in model.tasks.keys() - truth.finals.keys()]


def dead_letter_problems(dead: Sequence[Any], injected: frozenset[bytes]) -> list[str]:
    """Dead letters must be exactly the injected malformed records."""
    lettered = {orjson.dumps(orjson.loads(r.value)["raw"], option=orjson.OPT_SORT_KEYS) for r in dead}
    return ([f"dead letter for a record never injected: {d[:80]!r}" for d in lettered - injected]
            + [f"injected malformed record not dead-lettered: {d[:80]!r}" for d in injected - lettered])


def _full(task: dict[str, Any]) -> dict[str, Any]:
    return Task.model_validate(task).model_dump(mode="json")


def _delta(want: dict[str, Any], seen: dict[str, Any] | None) -> str:
    if seen is None:
        return "no event at all"
    return str({k: (want.get(k), seen.get(k)) for k in set(want) | set(seen) if want.get(k) != seen.get(k)})
