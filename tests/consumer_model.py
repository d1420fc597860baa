"""A model downstream consumer, the judge of the delivery guarantees in tests and the soak.

It does what docs/design.md tells consumers to do: de-duplicate by ce_id and apply each task's
events in ce_sequence order. It also records every way the stream could contradict itself: one
id with two payloads, one sequence of one task with two different states.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from poller import diff, normalise
from poller.models import Task


class Message(Protocol):
    """A published record: an OutboundRecord or a consumed aiokafka record."""

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Any: ...


@dataclass
class TaskView:
    """What the consumer believes of one task."""

    sequence: int
    task: dict[str, Any]


@dataclass
class ConsumerModel:
    """Applies task events by ce_sequence, de-duplicated by ce_id; notes contradictions."""

    tasks: dict[str, TaskView] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)  # ce_id -> value
    sequences: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (task, seq) -> task
    contradictions: list[str] = field(default_factory=list)
    duplicates: int = 0

    def apply_all(self, records: Iterable[Message]) -> ConsumerModel:
        """Apply records in the order they were delivered."""
        for record in records:
            self.apply(record)
        return self

    def apply(self, record: Message) -> None:
        """Apply one task-topic record (other record kinds are ignored)."""
        headers = {name: value.decode() for name, value in record.headers}
        if "ce_sequence" not in headers or record.value is None:
            return
        ce_id = headers["ce_id"]
        if ce_id in self.payloads:
            self.duplicates += 1
            if self.payloads[ce_id] != record.value:  # a re-send is the same outbox row
                self.contradictions.append(f"ce_id {ce_id} carried two different payloads")
            return
        self.payloads[ce_id] = record.value
        payload = orjson.loads(record.value)
        task_id, sequence = headers["ce_subject"], int(headers["ce_sequence"])
        state = orjson.dumps(payload["task"], option=orjson.OPT_SORT_KEYS)
        earlier = self.sequences.setdefault((task_id, sequence), state)
        if earlier != state:
            self.contradictions.append(f"task {task_id} sequence {sequence} carried two states")
        view = self.tasks.get(task_id)
        if view is None or sequence > view.sequence:
            self.tasks[task_id] = TaskView(sequence, payload["task"])

    def differences(self, truth: dict[str, dict[str, Any]]) -> list[str]:
        """How the consumer's view differs from raw API records (task_id -> record), ignoring
        what is no event by itself (modify_time and the latest-feedback summary)."""
        problems = []
        for task_id, raw in truth.items():
            view = self.tasks.get(task_id)
            if view is None:
                problems.append(f"task {task_id}: never told")
            elif comparable(view.task) != expected(raw):
                problems.append(f"task {task_id}: consumer has seq {view.sequence} {view.task}, "
                                f"API has {expected(raw)}")
        return problems


def expected(raw: dict[str, Any]) -> dict[str, Any]:
    """What a consumer should end with for a raw API record, comparable()."""
    return comparable(normalise.to_task(normalise.task(raw).document).model_dump(mode="json"))


def comparable(task: dict[str, Any]) -> dict[str, Any]:
    """A task (an event's `task`) without what is no event by itself."""
    model = Task.model_validate(task).model_dump(mode="json")
    for key in diff.SILENT_FIELDS:
        model.pop(key, None)
    return model
