"""Generate docs/events.md: the event catalogue, with one real message per event type.

Every example is produced by the real pipeline (simulator task store -> normalise.task ->
diff.observe -> events.encode, and events.dead_letter for the dead-letter topic) on a fixed
seed and a fixed clock, so the output is deterministic and tests/test_examples.py can check
that the committed catalogue still matches the code.

    python docs/gen_event_catalogue.py            # rewrite docs/events.md
    python docs/gen_event_catalogue.py --check    # exit 1 if docs/events.md is stale
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from poller import diff, events, normalise
from poller.app import event_source
from poller.config import Settings
from poller.errors import NormaliseError
from poller.models import BEIJING, OutboundRecord, Snapshot
from poller.simulator.state import TaskStore

OUTPUT = Path(__file__).with_name("events.md")
# A fixed start for the simulator clock: the examples must not change from run to run.
START = datetime(2026, 3, 12, 9, 30, tzinfo=BEIJING)
# The poller sees a change some seconds after the service stamped it (ce_recordedtime).
SEEN_AFTER = timedelta(seconds=17)
# A made-up enterprise; only the openid appears in ce_source, never the appkey.
TOPICS = {"tasks": "waiqin365.tasks", "task-types": "waiqin365.task-types",
          "dead-letter": "waiqin365.poller.dead-letter"}  # default prefix
ENV = {"WAIQIN_OPENID": "6655443322110", "WAIQIN_APPKEY": "not-a-real-appkey"}


@dataclass(frozen=True)
class Example:
    """One event type: when it is emitted, what the step was, and the real record."""

    name: str
    when: str
    step: str
    record: OutboundRecord


class _Clock:
    """A manual clock for the simulator: each step happens a few minutes after the last."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 7) -> None:
        self.now += timedelta(minutes=minutes)


WHEN: dict[str, str] = {
    "TaskCreated": "The task_id is not in the snapshot store. Carries the full task. The rest of "
    "the table is then derived as if the previous state were the same task with no feedback, "
    "`task_status` 0 and `status` 1 (so a task first seen with feedback also yields "
    "`FeedbackAdded` and a status event).",
    "TaskUpdated": "Any other field changed: content, type, customer, execute_demand, source, "
    "achievement, visit ids, unknown new fields; also a receiver renamed under the same id and a "
    "feedback entry removed or edited (no other event announces those). Not for `modify_time` "
    "or `latest_feedback_*` alone.",
    "TaskReassigned": "The receivers (assignees, 指派) set changed, compared by id.",
    "TaskDeadlineChanged": "`feedback_deadline` changed (null = no deadline).",
    "FeedbackAdded": "One per feedback entry not seen before, oldest first. Entries are "
    "identified by (feedback_time, feedback_visit_id, feedback_content).",
    "TaskFeedbackSubmitted": "`task_status` changed to 1 (已反馈, feedback given).",
    "TaskAccepted": "`task_status` changed to 2 (验收通过, accepted).",
    "TaskRejected": "`task_status` changed to 3 (需重新反馈, feedback rejected).",
    "TaskReopened": "`task_status` changed to 0 (待反馈, awaiting feedback).",
    "TaskDeleted": "`status` changed 1 → 0 (soft delete: the API keeps returning the task).",
    "TaskRestored": "`status` changed 0 → 1, or a vanished task reappeared in the API (then it "
    "comes first, before the events of what changed meanwhile).",
    "TaskVanished": "The reconciliation sweep confirmed the task is gone from the API: missing "
    "from two complete reads of its create-date slice in different cycles. Carries the last "
    "known task; the current-state topic gets a tombstone for it.",
    "TaskTypeChanged": "A task type definition referenced by tasks changed (re-read with "
    "queryTaskType every `POLLER_TYPE_REFRESH_SECONDS`). The first sight of a type is silent.",
    "DeadLetter": "A record could not be read: not a JSON object, no non-empty `task_id`, or a "
    "field whose shape cannot be read (`receivers`/`feedback_detail` not a list of objects, an "
    "unparseable time). Once per distinct content, not once per cycle.",
}

FIELD_NOTES: dict[str, str] = {
    "changes": "`{field: {before, after}}`, canonical values, absent = null",
    "added": "receivers (`{id, name}`) now assigned",
    "removed": "receivers no longer assigned",
    "before": "the old value (RFC 3339, +08:00, or null)",
    "after": "the new value (RFC 3339, +08:00, or null)",
    "feedback": "the new entry: `feedback_time`, `feedback_visit_id`, `feedback_content`",
    "from": "`task_status` before",
    "to": "`task_status` after",
    "type_id": "the task type's id (also the key and `ce_subject`)",
    "task_type": "the full task type after the change",
    "reason": "why the record could not be read",
    "raw": "the record exactly as received",
    "window": "the scan's `modify_date_from`/`modify_date_to`",
    "page": "the queryTask page the record came from",
}


def examples() -> list[Example]:
    """Drive one simulated task through every transition and keep the first record of each type."""
    clock = _Clock()
    store = TaskStore(seed=365, tasks=4, days=2, types=4, clock=clock)
    source = event_source(Settings.load(ENV))
    snapshot: Snapshot | None = None
    found: dict[str, Example] = {}

    def observe(step: str, change: Callable[[], dict[str, Any]]) -> None:
        nonlocal snapshot
        clock.tick()
        raw = change()
        name = store.types[raw["task_type_id"]]["type_name"]
        task = normalise.task(raw)
        seen = diff.observe(snapshot, task, observed_at=clock() + SEEN_AFTER, type_name=name)
        snapshot = seen.snapshot(task) or snapshot
        for event in seen.events:
            found.setdefault(event.type, Example(event.type, WHEN[event.type], step,
                                                 events.encode(event, source=source)))

    observe("simulator step `create_task`",
            lambda: store.create_task(task_content="到店检查陈列并拍照反馈", execute_demand=1))
    assert snapshot is not None
    task_id = snapshot.task_id
    observe("simulator step `update_fields(task_content=...)`",
            lambda: store.update_fields(task_id, task_content="到店检查端架陈列、价签并拍照反馈"))
    observe("simulator step `reassign`", lambda: store.reassign(task_id))
    observe("simulator step `set_deadline`", lambda: store.set_deadline(task_id))
    observe("simulator step `add_feedback`",
            lambda: store.add_feedback(task_id, "端架已整改，照片见拜访记录"))
    observe("simulator step `set_task_status(3)`", lambda: store.set_task_status(task_id, 3))
    observe("simulator step `set_task_status(2)`", lambda: store.set_task_status(task_id, 2))
    observe("simulator step `set_task_status(0)`", lambda: store.set_task_status(task_id, 0))
    observe("simulator step `delete`", lambda: store.delete(task_id))
    observe("simulator step `restore`", lambda: store.restore(task_id))
    clock.tick()
    (gone,) = diff.vanished(snapshot, observed_at=clock() + SEEN_AFTER,
                            type_name=store.types[store.get(task_id)["task_type_id"]]["type_name"]).events
    found["TaskVanished"] = Example(gone.type, WHEN[gone.type], "simulator step `hard_delete`, "
                                    "confirmed by two sweep reads", events.encode(gone, source=source))
    found["TaskTypeChanged"] = _type_example(store, clock, source)
    found["DeadLetter"] = _dead_letter_example(store, clock, source)
    return [found[name] for name in WHEN]


def _type_example(store: TaskStore, clock: _Clock, source: str) -> Example:
    type_id = next(iter(store.types))
    before = normalise.task_type(dict(store.types[type_id]))
    clock.tick()
    after = normalise.task_type(store.update_type(type_id, type_name="门店陈列检查（新版）"))
    (event,), _ = diff.observe_type(before, after, observed_at=clock() + SEEN_AFTER)
    return Example(event.type, WHEN[event.type], "simulator step `update_type(type_name=...)`",
                   events.encode(event, source=source))


def _dead_letter_example(store: TaskStore, clock: _Clock, source: str) -> Example:
    # A record whose receivers arrive as a string instead of a list of objects.
    raw = store.get(next(iter(store.tasks)))
    raw["receivers"] = "张伟,李娜"
    try:
        normalise.task(raw)
    except NormaliseError as exc:
        clock.tick()
        day = clock().date().isoformat()
        record = events.dead_letter(
            raw, reason=exc.reason, task_id=exc.task_id, page=1, source=source,
            window={"modify_date_from": day, "modify_date_to": day}, observed_at=clock())
        return Example("DeadLetter", WHEN["DeadLetter"], "a record whose `receivers` is a string",
                       record)
    raise AssertionError("the malformed record was accepted")


def _detail_fields(name: str) -> list[str]:
    if name == "DeadLetter":
        model: type[Any] = events.DeadLetter
        shared: set[str] = {"truncated"}
    elif name == "TaskTypeChanged":
        model, shared = events.TaskTypeChanged, {"id", "type", "observed_at", "truncated"}
    else:
        model, shared = getattr(events, name), set(events.TaskEvent.model_fields)
    return [field.alias or key for key, field in model.model_fields.items() if key not in shared]


def _section(example: Example) -> str:
    record = example.record
    fields = _detail_fields(example.name)
    detail = "\n".join(f"- `{f}`: {FIELD_NOTES[f]}" for f in fields) or "- none beyond the envelope"
    headers = "\n".join(f"{k}: {v.decode()}" for k, v in record.headers)
    value = orjson.dumps(orjson.loads(record.value), option=orjson.OPT_INDENT_2).decode()
    return f"""### {example.name}

**When:** {example.when}

**Detail fields:**

{detail}

**Example** ({example.step}), topic `{TOPICS[record.topic]}`:

```text
key: {record.key.decode() if record.key else "(empty)"}
{headers}
```

```json
{value}
```
"""


def render() -> str:
    """The whole catalogue as Markdown."""
    body = "\n".join(_section(e) for e in examples())
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python docs/gen_event_catalogue.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


HEADER = """<!-- Generated by docs/gen_event_catalogue.py; do not edit by hand. -->
# Event catalogue

waiqin-poller turns polled Waiqin365 customer tasks into CloudEvents on Kafka. This page is the
contract for consumers: topics, message layout, ordering, de-duplication, and every event type
with one real message produced by the poller's own code (simulator data, fixed clock).

## Topics

The prefix is `POLLER_TOPIC_PREFIX` (default `waiqin365`).

| topic | key | content |
| --- | --- | --- |
| `waiqin365.tasks` | task_id | every task event (`TaskCreated` … `TaskVanished`) |
| `waiqin365.tasks.state` | task_id | the task as last observed (`TaskState`, compacted) |
| `waiqin365.task-types` | type_id | `TaskTypeChanged` |
| `waiqin365.poller.dead-letter` | task_id if readable, else empty | `DeadLetter` |

The poller creates missing topics at start (`POLLER_TOPIC_PARTITIONS`,
`POLLER_TOPIC_REPLICATION_FACTOR`) or uses existing ones.

## Message layout (CloudEvents 1.0, Kafka binary content mode)

- **key**: the task_id (UTF-8); type_id on the task-types topic.
- **value**: the JSON payload, UTF-8, non-ASCII kept as is (the examples below are
  pretty-printed; on the wire the JSON is compact).
- **headers**:

| header | value |
| --- | --- |
| `ce_specversion` | `1.0` |
| `ce_id` | deterministic event id (equals the payload's `id`) |
| `ce_source` | `{WAIQIN_BASE_URL}/api/cusTask/{openid}`: which enterprise on which cloud |
| `ce_type` | the event name, e.g. `TaskAccepted` (equals the payload's `type`) |
| `ce_subject` | the task_id (type_id for `TaskTypeChanged`) |
| `ce_time` | the task's `modify_time` (when it happened), RFC 3339, +08:00 |
| `ce_recordedtime` | when the poller saw it |
| `ce_partitionkey` | same as the key |
| `ce_sequence` | task events only: the task's version (see ordering) |
| `content-type` | `application/json` |

Every task event payload carries the envelope `id`, `type`, `task_id`, `modify_time`
(RFC 3339, +08:00), `observed_at`, `sequence`, `task_type_name` (when known) and `task`,
the full normalised task after the change, so a consumer never has to call the API. Task
fields: `task_status` 0 待反馈 awaiting feedback, 1 已反馈 feedback given, 2 验收通过 accepted,
3 需重新反馈 feedback rejected; `status` 0 deleted, 1 normal; `execute_demand` 0 off-site,
1 on-site required, 2 no requirement; absent values are `null`. Consumers should ignore
fields they do not know: later releases may add some.

## Size

No message is larger than `KAFKA_MAX_MESSAGE_BYTES` (default 1,000,000, Kafka's default
`max.message.bytes`), counting key, value, headers and 512 bytes for Kafka's record framing.
An event that would be larger (a task with very long feedback texts) is still sent, cut to fit:
the fewest of its longest texts are shortened, each to the same prefix (whole characters,
never below about 250 bytes), and the payload lists the JSON paths of what was cut in a
`truncated` array, e.g. `"truncated": ["task.feedback_detail[2].feedback_content"]`. Values nested more than 100
levels deep (only unknown fields can be) are replaced by a marker string and listed the same
way; a dead letter whose record is too large even so carries a prefix of the record's JSON
text as `raw`. `truncated` is absent when nothing was cut. The full text stays in Waiqin365.

## Ordering

All events of a task share its key, so they land on one partition, in order. One
observation of a task may yield several events, always in the order of the table below
(e.g. `FeedbackAdded` then `TaskFeedbackSubmitted`), all with the same `ce_sequence`.
`ce_sequence` is the task's version in the poller's store: it grows by one with every
observation that produced events (a change that produces none, such as `modify_time` alone,
does not move it). A jump of more than one means the poller saw several changes at once
(it polls; intermediate states between two polls are not visible) or events were lost
downstream; a lower sequence than already processed is a re-delivery.

## Delivery and de-duplication

Delivery is at-least-once: the poller commits every observation and the records it produces
to its store (an outbox) before it publishes them, and after a crash, an outage or a failover
it re-publishes what it had not yet sent, byte for byte. `ce_id` is deterministic from what was
observed (task, event type, the version the observation gave the task, and the state or
feedback entry it describes), so a re-published event has the same `ce_id`, and two different
changes never share one, even when a task changes back and forth: de-duplicate on it (a
bounded set of recent ids is enough; `poller.consumer.TaskStream` keeps one). Commit consumer
offsets only after processing.

## Schemas

- `poller/schemas/<Event>.json`: a JSON Schema (draft 2020-12) per event, for the state
  topic's `TaskState` and for `DeadLetter`, generated from the pydantic models
  (`python -m poller.schemas`).
- `poller/schemas/asyncapi.yaml`: an AsyncAPI 3.0 document of the four channels, their
  messages, keys and headers.
- Python consumers can use the models directly: `poller.events.decode(record)` returns the
  typed event (`TaskAccepted`, …, `TaskState`, or `DeadLetter`) of a consumed aiokafka record.

## A consumer in Python

[consumers.md](consumers.md) is the guide to consuming: ordering per task, de-duplication,
gaps, starting late from the current-state topic, and a table mirror (with the Kafka Connect
JDBC sink that does the same). The package ships a typed consumer library for it,
`poller.consumer`; `examples/consumer.py` is a short, runnable consumer built on it: with
`--group` it joins a consumer group, acts on each change once and in order and commits offsets
after each processed batch; with `--from-state` it starts from the current state of every task.

```console
python examples/consumer.py --bootstrap localhost:9092 --prefix waiqin365 --group my-service
python examples/consumer.py --bootstrap localhost:9092 --prefix waiqin365 --from-state
```

## Event types

| event | topic | when |
| --- | --- | --- |
| `TaskCreated` | tasks | task_id not seen before |
| `TaskUpdated` | tasks | another field changed |
| `TaskReassigned` | tasks | receivers changed |
| `TaskDeadlineChanged` | tasks | feedback_deadline changed |
| `FeedbackAdded` | tasks | a new feedback entry |
| `TaskFeedbackSubmitted` | tasks | task_status → 1 (feedback given) |
| `TaskAccepted` | tasks | task_status → 2 (accepted) |
| `TaskRejected` | tasks | task_status → 3 (feedback rejected) |
| `TaskReopened` | tasks | task_status → 0 (awaiting feedback) |
| `TaskDeleted` | tasks | status 1 → 0 |
| `TaskRestored` | tasks | status 0 → 1, or a vanished task reappeared |
| `TaskVanished` | tasks | the sweep confirmed the task is gone from the API |
| `TaskTypeChanged` | task-types | a task type definition changed |
| `DeadLetter` | poller.dead-letter | a record could not be read |

"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
