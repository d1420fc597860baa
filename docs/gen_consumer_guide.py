"""Generate docs/consumers.md: how to consume, with real records and real library verdicts.

The records are produced by the poller's own page planner (poller/plan.py: normalise, diff,
encode, state record; the vanishing path for the tombstone) from simulator tasks on a fixed
seed and clock, and the verdict table is what poller.consumer.TaskStream answers for them, so
tests/test_examples.py can check that the committed guide still matches the code.

    python docs/gen_consumer_guide.py            # rewrite docs/consumers.md
    python docs/gen_consumer_guide.py --check    # exit 1 if docs/consumers.md is stale
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from poller import consumer, plan
from poller.app import event_source
from poller.config import Settings
from poller.models import BEIJING, OutboundRecord, Snapshot, StoredHashes, Window
from poller.simulator.state import TaskStore

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = Path(__file__).with_name("consumers.md")
START = datetime(2026, 3, 12, 9, 30, tzinfo=BEIJING)  # fixed: the guide must not change per run
SEEN_AFTER = timedelta(seconds=17)  # the poller sees a change some seconds after it happened
ENV = {"WAIQIN_OPENID": "6655443322110", "WAIQIN_APPKEY": "not-a-real-appkey"}
TOPICS = {"tasks": "waiqin365.tasks", "state": "waiqin365.tasks.state"}


class Poller:
    """The planner of a running poller, one page per call, with its store kept in memory."""

    def __init__(self) -> None:
        self.now = START
        self.source = event_source(Settings.load(ENV))
        self.snapshots: dict[str, Snapshot] = {}

    def page(self, raws: Sequence[dict[str, Any]]) -> list[OutboundRecord]:
        """The records one page of API records produces (events, then each task's state)."""
        self.now += timedelta(minutes=7)
        received = plan.receive(raws)
        stored = {key: StoredHashes(s.hash, s.received, s.vanished)
                  for key, s in self.snapshots.items()}
        planned = plan.plan_page(plan.observe(received, stored),
                                 plan.Known(snapshots=self.snapshots), received=received,
                                 seen_in_scan=set(), ctx=self.context(), now=self.now + SEEN_AFTER)
        self.snapshots.update((s.task_id, s) for s in planned.commit.snapshots)
        return list(planned.commit.records)

    def vanish(self, task_id: str) -> list[OutboundRecord]:
        """The records of a task the sweep confirmed gone (TaskVanished, then the tombstone)."""
        self.now += timedelta(minutes=7)
        commit = plan.vanished([self.snapshots[task_id]], ctx=self.context(), type_names={},
                               now=self.now + SEEN_AFTER)
        self.snapshots.update((s.task_id, s) for s in commit.snapshots)
        return list(commit.records)

    def context(self) -> plan.PageContext:
        return plan.PageContext(source=self.source, window=Window(), page=1)


def story() -> list[tuple[str, list[OutboundRecord]]]:
    """One task's life as the poller publishes it: each step and the records of its flush."""
    poller = Poller()
    store = TaskStore(seed=365, tasks=4, days=2, types=4, clock=lambda: poller.now)
    task_id = store.create_task(task_content="到店检查陈列并拍照反馈", execute_demand=1)["task_id"]
    steps = [("created", poller.page([store.get(task_id)]))]
    store.add_feedback(task_id, "端架已整改，照片见拜访记录")
    steps.append(("feedback given", poller.page([store.get(task_id)])))
    store.reassign(task_id)
    steps.append(("reassigned", poller.page([store.get(task_id)])))
    store.set_task_status(task_id, 2)
    steps.append(("accepted", poller.page([store.get(task_id)])))
    store.hard_delete(task_id)
    steps.append(("gone from the API", poller.vanish(task_id)))
    return steps


def verdicts(steps: list[tuple[str, list[OutboundRecord]]]) -> list[tuple[str, OutboundRecord, str]]:
    """A group consumer's deliveries of the task topic, in a plausible bad order, judged by
    TaskStream: a re-delivery, a lost observation that arrives late."""
    by_step = {step: [r for r in records if r.topic == "tasks"] for step, records in steps}
    created, feedback, reassigned, accepted = (by_step[s] for s in (
        "created", "feedback given", "reassigned", "accepted"))
    deliveries = [("", r) for r in created + feedback] + [("re-delivered", feedback[0])]
    deliveries += [("", r) for r in accepted] + [("late", r) for r in reassigned]
    stream = consumer.TaskStream()
    return [(note, record, stream.accept(consumer.envelope(record)).value)
            for note, record in deliveries]


def _record_block(record: OutboundRecord) -> str:
    headers = "\n".join(f"{name}: {value.decode()}" for name, value in record.headers)
    key = record.key.decode() if record.key else "(empty)"
    head = f"topic `{TOPICS[record.topic]}`:\n\n```text\nkey: {key}\n{headers}\n```\n"
    if record.value is None:
        return head + "\nvalue: null (no value at all)\n"
    value = orjson.dumps(orjson.loads(record.value), option=orjson.OPT_INDENT_2).decode()
    return head + f"\n```json\n{value}\n```\n"


def _flush_table(steps: list[tuple[str, list[OutboundRecord]]]) -> str:
    rows = ["| step | topic | ce_type | ce_sequence |", "| --- | --- | --- | --- |"]
    for step, records in steps:
        for record in records:
            headers = dict(record.headers)
            kind = headers["ce_type"].decode() + (" (tombstone)" if record.value is None else "")
            rows.append(f"| {step} | `{TOPICS[record.topic]}` | `{kind}`"
                        f" | {headers['ce_sequence'].decode()} |")
            step = ""
    return "\n".join(rows)


def _verdict_table(judged: list[tuple[str, OutboundRecord, str]]) -> str:
    rows = ["| delivered | ce_type | ce_sequence | ce_id | verdict |",
            "| --- | --- | --- | --- | --- |"]
    for note, record, verdict in judged:
        headers = dict(record.headers)
        rows.append(f"| {note} | `{headers['ce_type'].decode()}` | "
                    f"{headers['ce_sequence'].decode()} | `{headers['ce_id'].decode()[:8]}…` | "
                    f"`{verdict.upper()}` |")
    return "\n".join(rows)


def _source(relative: str, name: str) -> str:
    """A function of an example, as it is in the file."""
    text = (ROOT / relative).read_text(encoding="utf-8")
    match = re.search(rf"^(async )?def {name}\(.*?(?=^\S)", text, re.S | re.M)
    assert match, f"{name} not found in {relative}"
    return match.group(0).rstrip()


def _jdbc_sink() -> str:
    return json.dumps({"name": "waiqin365-tasks-mirror", "config": JDBC_SINK}, indent=2,
                      ensure_ascii=False)


LIBRARY = [
    ("envelope(record)", "the record's key and CloudEvents headers (`ce_id`, `ce_type`, "
     "`ce_sequence`), without parsing its value"),
    ("decode(record)", "the typed message: the event's model (`poller.events`), `TaskState` for "
     "a state record, no payload for a tombstone. A task event of a type newer than your release "
     "decodes to the envelope every task event shares, so its task and version still count. "
     "`ConsumeError` for a record the poller did not write"),
    ("RecentIds", "the bounded LRU of recent `ce_id`s"),
    ("TaskStream", "the verdict on each record (`accept`), and `deliveries(records)`: the records "
     "to act on, decoded one at a time as you iterate, in order. A record it cannot read is set "
     "aside in `unreadable` instead of stopping the stream"),
    ("TaskView", "the current state of every task: the highest `ce_sequence` wins; a tombstone or "
     "`TaskVanished` removes the task and keeps its version"),
    ("bootstrap(consumer, prefix=..., margin=...)", "the state topic read into a view, and the "
     "event-topic offsets to follow from"),
    ("follow(consumer, boot)", "the event topic from those offsets, batch by batch, as "
     "deliveries; keeps the view current"),
]
"""The library's parts, as the guide's table lists them."""

JDBC_SINK = {
    "connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector",
    "topics": "waiqin365.tasks.state",
    "connection.url": "jdbc:postgresql://db:5432/warehouse?stringtype=unspecified",
    "table.name.format": "waiqin_tasks",
    "insert.mode": "upsert",
    "pk.mode": "record_key",
    "pk.fields": "task_id",
    "delete.enabled": "true",
    "auto.create": "false",
    "key.converter": "org.apache.kafka.connect.storage.StringConverter",
    "value.converter": "org.apache.kafka.connect.storage.StringConverter",
    "header.converter": "org.apache.kafka.connect.storage.StringConverter",
    "transforms": "wrap,version",
    "transforms.wrap.type": "org.apache.kafka.connect.transforms.HoistField$Value",
    "transforms.wrap.field": "task",
    "transforms.wrap.predicate": "isTombstone",
    "transforms.wrap.negate": "true",
    "transforms.version.type": "io.debezium.transforms.HeaderToValue",
    "transforms.version.headers": "ce_sequence",
    "transforms.version.fields": "sequence",
    "transforms.version.operation": "copy",
    "transforms.version.predicate": "isTombstone",
    "transforms.version.negate": "true",
    "predicates": "isTombstone",
    "predicates.isTombstone.type":
        "org.apache.kafka.connect.transforms.predicates.RecordIsTombstone",
}
"""The Kafka Connect JDBC sink that keeps the same table as examples/mirror_postgres.py."""


def render() -> str:
    """The whole guide as Markdown."""
    steps = story()
    by_step = dict(steps)
    state = next(r for r in by_step["feedback given"] if r.topic == "state")
    tombstone = next(r for r in by_step["gone from the API"] if r.topic == "state")
    create_table = re.search(r"CREATE TABLE IF NOT EXISTS \{self.table\} \((.*?)\);",
                             (ROOT / "examples" / "mirror_postgres.py").read_text(), re.S)
    assert create_table
    columns = "\n".join("    " + line.strip() for line in create_table.group(1).strip().splitlines())
    return TEMPLATE.format(
        flushes=_flush_table(steps),
        state_record=_record_block(state),
        tombstone=_record_block(tombstone),
        verdicts=_verdict_table(verdicts(steps)),
        run_group=_source("examples/consumer.py", "run_group"),
        run_from_state=_source("examples/consumer.py", "run_from_state"),
        margin=int(consumer.DEFAULT_MARGIN.total_seconds() // 60),
        capacity=f"{consumer.DEFAULT_CAPACITY:,}",
        table=f"CREATE TABLE waiqin_tasks (\n{columns}\n);",
        jdbc_sink=_jdbc_sink(),
        library="\n".join(["| name | what it does |", "| --- | --- |"]
                          + [f"| `{name}` | {text} |" for name, text in LIBRARY]),
    )


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python docs/gen_consumer_guide.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


TEMPLATE = """<!-- Generated by docs/gen_consumer_guide.py; do not edit by hand. -->
# Consuming the poller's topics

This guide is for services that read what waiqin-poller publishes. [events.md](events.md)
describes every event type; this page says how to consume them correctly: in order per task,
once per change, knowing when something is missing, starting late from the current state, and
keeping a table in step. The records below are produced by the poller's own code (simulator
data, fixed clock), and the verdicts are those of the typed consumer library shipped in the
package, `poller.consumer`.

## What one change looks like

For each observed task whose content changed, the poller publishes, in one outbox flush, the
observation's events on `waiqin365.tasks`, then the task's current state on
`waiqin365.tasks.state` (unless `POLLER_STATE_TOPIC=false`). One simulated task's life:

{flushes}

## Ordering per task

- Every record of a task has its task_id as key: a task's records share a partition and arrive
  in the order they were published. There is no order across tasks.
- `ce_sequence` is the task's version: one more for every observation that produced events. All
  events of one observation share it, in the order of the table in [events.md](events.md) (e.g.
  `FeedbackAdded` before `TaskFeedbackSubmitted`), and so does the observation's state record.
- The event topic and the state topic are two topics, with no order between them: an
  observation's state record may be read before or after its events.

## De-duplication

Delivery is at least once. After a crash, an outage or a failover the poller publishes again
what it had not marked sent, byte for byte: same key, headers and value, same `ce_id`. Your own
consumer reads records again after a rebalance, or a restart before it committed its offsets.
So:

- remember recent `ce_id`s and skip those already seen (`RecentIds`: an LRU of {capacity} ids
  by default; re-sends arrive within one outbox drain or one consumer batch);
- skip an event whose `ce_sequence` is lower than the one already applied for its task: that
  observation was handled, even if its id has been forgotten since.

`TaskStream.accept` does both.

## Gaps

A `ce_sequence` more than one above the last one applied for a task means observations that
never reached you: records lost downstream (retention removed them before they were read, a
consumer skipped them) or a consumer that started after them. The poller never skips a version
([design.md §5](design.md#5-delivery-guarantees)). A gap loses intermediate events, not the
task's state: every event carries the full task after the change, so applying the newer event
brings your copy up to date. A consumer without history (a new consumer group reading the
retained log) sees each task's first record as `NEW`, not as a gap.

What `TaskStream` answers, record by record, to a group consumer that receives the task's events
with one re-delivery and one observation late:

{verdicts}

`NEW`, `NEXT`, `SAME` and `GAP` are acted on; `DUPLICATE` and `STALE` are skipped. Each gap is
also kept in `TaskStream.gaps` (which versions are missing), and every verdict is counted in
`TaskStream.counts`.

## The current-state topic

`waiqin365.tasks.state` is compacted: Kafka keeps at least the last record of every key. The
value is the task as last observed (the same object as an event's `task`; schema
`poller/schemas/TaskState.json`), the headers are those of events with `ce_type=TaskState` and
the observation's `ce_sequence`. The record of the "feedback given" step above:

{state_record}
When the sweep confirms a task gone from the API, `TaskVanished` on the task topic is followed
by a tombstone on the state topic: the key with a null value, at the vanishing's `ce_sequence`.
Compaction then removes the task's earlier records, and the tombstone itself after
`delete.retention.ms` (Kafka's default: 24 hours). A task that reappears gets `TaskRestored` and
a state record at its next version.

{tombstone}
A task recorded silently by the poller's first run (version 0) has no state record until its
first change; `waiqin-poller snapshot` publishes the state of every stored task.

## Starting late: bootstrap from the state topic

A consumer that joins late (a new service, a rebuilt cache) cannot learn from the event topic the
tasks that did not change recently, and retention may have removed their events. It reads the
state topic instead, then follows the event topic from where the state leaves off.
`bootstrap()` does this:

1. It takes the event topic's end offsets, and the offsets of the first records written `margin`
   ({margin} minutes by default) before now (`offsets_for_times`); each partition starts at the
   earlier of the two.
2. It reads the state topic from the beginning to the end offsets it has at that moment, into a
   view that holds every task at some version.
3. `follow()` reads the event topic from those start offsets. An event whose `ce_sequence` is not
   above the view's version of its task is already reflected in the state (`STALE`, skipped); a
   newer one is applied (`NEXT`, `SAME`) and updates the view.

Why the offsets are taken first, and a margin earlier: an observation's events and its state
record go to two topics, not atomically. The outbox hands them to the producer in one publish
call; when any record of the call is not acknowledged it sends them all again, and after a crash
it sends again everything it had not marked sent. So once an event has landed, either its state
record lands within the same publish call (bounded by `KAFKA_REQUEST_TIMEOUT_MS`), or the event
is sent again later together with it. An event that landed after the offsets of step 1 is read
in step 3 whatever the state held. An event that landed before them, but whose state record step
2 did not find yet, landed shortly before the bootstrap: starting `margin` earlier reads it
again, and as its version is above the view's, it is applied. Anything older than the margin had
its state record in place before step 2 began, so the view holds it. Re-reading the margin costs
little: records are judged by their headers and skipped without their value being parsed.

What this does not cover, and how it shows: after an outage the outbox drains in publish calls
of at most 1000 records, which can split a flush; if the call after the one that carried the
events keeps failing (the state topic's partition unavailable while the event topic takes
records), the state record lands later than the margin. The view then holds that task at an
older version until the task's next event, which arrives as a `GAP`: applying it makes the state
right again, and the gap is reported. Raise `margin` if your brokers can be partly down for
longer; it also covers clock skew between the poller's host, which timestamps the records, and
yours.

Tombstones: a tombstone in the view stops older events of its task, read again within the
margin, from bringing the task back. Kafka removes tombstones after `delete.retention.ms`; keep
that well above `margin` (the default 24 hours is).

A service that only keeps a view (a cache, a search index) can bootstrap at every start: the
state topic is its checkpoint, no consumer group needed. `examples/consumer.py --from-state`:

```python
{run_from_state}
```

A service that reacts to changes (a notification on `TaskAccepted`) must not miss the changes
made while it was down, which a bootstrap would fold into the state: it uses a consumer group
with committed offsets, and `TaskStream` for order and duplicates. `examples/consumer.py
--group NAME`:

```python
{run_group}
```

## A table mirror

`examples/mirror_postgres.py` keeps a PostgreSQL table equal to the state topic:

```sql
{table}
```

A state record upserts its task's row, but only to a higher `sequence`; a tombstone deletes the
row unless the row is newer. The offsets consumed are written in the same transaction as the
rows (table `waiqin_tasks_offsets`), so after a crash the mirror resumes exactly after the last
batch it applied. Run one instance per table.

### The same with Kafka Connect

The JDBC sink connector (Confluent's `kafka-connect-jdbc`) does the mirror's job without code:

```json
{jdbc_sink}
```

- **Upsert on the key:** `insert.mode=upsert` with `pk.mode=record_key`. Our key is a primitive
  (a string), so `pk.fields` names the one column it fills: `task_id`.
- **Tombstones as deletes:** `delete.enabled=true`, which the connector accepts only with
  `pk.mode=record_key`.
- **Converters:** the key is plain UTF-8 text, so `StringConverter`. The value is JSON without an
  embedded schema, but the sink needs a value that is a Connect struct with a schema:
  `JsonConverter` with `schemas.enable=false` does not work. Read the value as a string
  (`StringConverter`) and wrap it into a one-field struct (column `task`) with the
  `HoistField$Value` transform. HoistField would also wrap a tombstone's null into a struct, which
  would be upserted instead of deleting the row, so the `RecordIsTombstone` predicate with
  `negate=true` keeps tombstones away from it. The headers are UTF-8 text:
  `header.converter=StringConverter` keeps them strings (the default `SimpleHeaderConverter`
  infers a type from each value, so `ce_sequence` could change type between records).
- **The version:** `io.debezium.transforms.HeaderToValue` (Debezium 2.2 or later, installed next
  to the connector) copies `ce_sequence` into a `sequence` column. The connector cannot compare
  versions: it relies on the topic's order, which for each key is the order the poller wrote
  (each version once, or the same record again). `examples/mirror_postgres.py` also refuses an
  older version.
- **The table:** create it yourself (`auto.create=false`), as above, so that `task` is `jsonb`
  and `sequence` is `bigint`: the sink binds both as strings, and `stringtype=unspecified` in the
  JDBC URL lets PostgreSQL convert them to the column types.

## The library

`poller.consumer`, in the package (it uses aiokafka, already a dependency of the poller):

{library}

For other languages: `poller/schemas/*.json` (a JSON Schema per payload, `TaskState` included)
and `poller/schemas/asyncapi.yaml` (the four channels, their keys and headers).
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
