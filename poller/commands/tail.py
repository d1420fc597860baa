"""`waiqin-poller tail`: follow the task topic and print events, human readable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.markup import escape

from poller import events, logs
from poller.config import KafkaSettings, Settings
from poller.publish import CAUGHT_ERRORS, client_options, map_error
from poller.window import beijing_date

log = structlog.get_logger(__name__)

KNOWN_TYPES: tuple[str, ...] = (
    *(str(cls.model_fields["type"].default) for cls in events.TASK_EVENTS), "DeadLetter",
)
"""The ce_type values `--type` accepts."""
# task_status values in words (docs/design.md §2), for status changes.
TASK_STATUS = {0: "awaiting feedback", 1: "feedback given", 2: "accepted", 3: "feedback rejected"}
SWEEP_MARK = "found by sweep"  # the demo's mark on changes the window could not see
SWEEP_MARK_STYLE = "bold yellow"
COLOURS = {
    "TaskCreated": "bold green", "TaskDeleted": "red", "TaskRestored": "green",
    "TaskAccepted": "bold cyan", "TaskRejected": "magenta", "FeedbackAdded": "yellow",
    "DeadLetter": "bold red", "TaskTypeChanged": "blue",
}


async def run(settings: Settings, *, types: set[str], task_ids: set[str], from_beginning: bool,
              dead_letters: bool, stop: asyncio.Event | None = None,
              printer: Callable[[str], None] | None = None,
              mark_sweep_finds: timedelta | None = None) -> None:
    """Print matching events until cancelled (or `stop` is set).

    With `mark_sweep_finds` (the poller's lookback), an event stamped before the window it
    was seen in is marked as found by the sweep (the demo's live view does this).
    """
    console = Console(highlight=False, soft_wrap=True)  # one event, one line, piped or not
    emit = printer or console.print
    topic = settings.topics.dead_letter if dead_letters else settings.topics.tasks
    consumer = AIOKafkaConsumer(**consumer_options(settings.kafka))
    try:
        with logs.quiet("aiokafka"):  # the one line below says it
            await consumer.start()
    except CAUGHT_ERRORS as exc:
        await consumer.stop()  # a consumer that failed to start still holds its client
        raise map_error(exc, f"cannot reach Kafka at {settings.kafka.bootstrap_servers}") from exc
    try:
        await _assign(consumer, topic, from_beginning)
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    line = describe(record, types=types, task_ids=task_ids,
                                    mark_sweep_finds=mark_sweep_finds)
                    if line is not None:
                        emit(line)
    finally:
        await consumer.stop()


def consumer_options(kafka: KafkaSettings) -> dict[str, Any]:
    """A group-less consumer: tail must not move any consumer group's offsets."""
    return {**client_options(kafka), "enable_auto_commit": False, "group_id": None}


async def _assign(consumer: AIOKafkaConsumer, topic: str, from_beginning: bool) -> None:
    partitions: set[int] | None = None
    announced = False
    # The topic may not exist yet (the poller creates it at start): wait for it.
    while not partitions:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            if not announced:
                log.info("waiting_for_topic", topic=topic)
                announced = True
            # aiokafka offers no public refresh for a manually assigned consumer (topics()
            # returns a copy and leaves the consumer's own metadata stale).
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.5)  # metadata has no event to await
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    if from_beginning:
        await consumer.seek_to_beginning(*assigned)
    else:
        await consumer.seek_to_end(*assigned)


def describe(record: Any, *, types: set[str] = frozenset(),  # type: ignore[assignment]
             task_ids: set[str] = frozenset(),  # type: ignore[assignment]
             mark_sweep_finds: timedelta | None = None) -> str | None:
    """One rich-markup line for a record, or None when filtered out."""
    headers = {k: v.decode() for k, v in record.headers}
    kind = headers.get("ce_type", "?")
    subject = headers.get("ce_subject", "")
    if (types and kind not in types) or (task_ids and subject not in task_ids):
        return None
    if kind == "DeadLetter":
        body = orjson.loads(record.value)
        return f"[{COLOURS['DeadLetter']}]DeadLetter[/] key={subject or '-'} reason={body.get('reason')}"
    event = events.decode(record)
    colour = COLOURS.get(kind, "white")
    when = headers.get("ce_time", "")
    line = f"{when}  [{colour}]{kind:<22}[/] {subject:<22} seq={headers.get('ce_sequence', '-'):<4} {_detail(event)}"
    if mark_sweep_finds is not None and found_by_sweep(when, headers.get("ce_recordedtime", ""),
                                                        lookback=mark_sweep_finds):
        line += f"  [{SWEEP_MARK_STYLE}]{SWEEP_MARK}[/]"
    return line


def found_by_sweep(happened: str, recorded: str, *, lookback: timedelta) -> bool:
    """Whether a change stamped `happened` (ce_time) and seen at `recorded` (ce_recordedtime)
    lies before the window of the cycle that saw it, so only the reconciliation sweep (or a
    backfill) could find it: its Beijing date is before that of (recorded - lookback).

    A hint for people, not a guarantee: after an outage, or while a drifting day is held open,
    the window reaches further back than that.
    """
    try:
        stamped, seen = datetime.fromisoformat(happened), datetime.fromisoformat(recorded)
    except ValueError:
        return False
    if stamped.tzinfo is None or seen.tzinfo is None:
        return False
    return beijing_date(stamped) < beijing_date(seen - lookback)


def _detail(event: Any) -> str:
    name = getattr(event, "task_type_name", None)
    parts = [f"type={escape(name)}"] if name else []
    if hasattr(event, "from_status") and hasattr(event, "to_status"):
        parts.append(f"{status_words(event.from_status)} → {status_words(event.to_status)}")
    if hasattr(event, "changes"):
        parts.append("changed=" + ",".join(sorted(event.changes)))
    if hasattr(event, "added"):
        parts.append(receivers_words(event.added, event.removed))
    if hasattr(event, "feedback"):
        parts.append(f"“{escape((event.feedback.feedback_content or '')[:40])}”")
    if hasattr(event, "after") and hasattr(event, "before"):
        parts.append(f"{event.before} → {event.after}")
    task = getattr(event, "task", None)
    if getattr(event, "type", "") == "TaskCreated" and task is not None:
        parts.append(f"“{escape((task.task_content or '')[:40])}”")
    return " ".join(parts)


def status_words(value: int) -> str:
    """A task_status as words (the number itself when unknown)."""
    return TASK_STATUS.get(value, f"status {value}")


def receivers_words(added: Iterable[Any], removed: Iterable[Any]) -> str:
    """`+张三, 李四 −王五`: who was assigned and who was taken off, by name (id if unnamed)."""
    def names(people: Iterable[Any]) -> str:
        return ", ".join(escape(person.name or person.id) for person in people)

    parts = [f"+{names(added)}" if added else "", f"−{names(removed)}" if removed else ""]
    return " ".join(part for part in parts if part)
