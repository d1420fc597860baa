"""`waiqin-poller snapshot`: re-publish current-state records from the store, no API calls.

Each record is the one the daemon wrote for the task's stored version (same key, ce_id and
ce_sequence; docs/design.md §4), so a consumer that ignores an older ce_sequence can never be
set back by it, and running it twice publishes the same records twice. It takes no lease: it
only publishes, and is safe while the daemon runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from poller import app, events
from poller.commands import stored
from poller.config import Settings
from poller.errors import ConfigError, StoreNotFound
from poller.models import OutboundRecord, Snapshot
from poller.publish import KafkaPublisher, Publisher
from poller.store.base import SnapshotStore

BATCH = 500  # snapshots read and published per round


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored tasks to re-publish: all of them (the default), a create-date range, or ids."""

    created: tuple[date, date] | None = None
    task_ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """What a snapshot run sent."""

    tasks: int  # state records of the selected tasks
    resent: int = 0  # records sent again because the daemon changed those tasks meanwhile


async def run(settings: Settings, selection: Selection) -> Published:
    """Publish the selected tasks' state records with a progress bar, then a final count.

    Raises StoreNotFound (after publishing the others) when given task ids are not stored.
    """
    if not settings.topics.state_enabled:
        raise ConfigError("POLLER_STATE_TOPIC=false: there is no state topic to publish to")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    topic = settings.topics.state
    async with stored.existing(settings) as store:
        total = await _expected(store, selection)
        publisher = KafkaPublisher(settings.kafka, settings.topics)
        await publisher.start()
        try:
            with Progress(TextColumn("snapshot"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console,
                          disable=not console.is_terminal) as progress:
                bar = progress.add_task("", total=total)
                done = await republish(
                    store, publisher, selection, source=app.event_source(settings),
                    max_bytes=settings.kafka.max_message_bytes,
                    on_batch=lambda count: progress.update(bar, completed=count,
                                                           total=max(total, count)))
        finally:
            await publisher.stop()
    resent = f" ({done.resent:,} sent again: the daemon changed them meanwhile)" if done.resent else ""
    console.print(f"snapshot: {done.tasks:,} state records published to {topic}{resent}")
    if selection.task_ids is not None and done.tasks < len(set(selection.task_ids)):
        async with stored.existing(settings) as store:
            found = await store.read_snapshots(selection.task_ids)
        missing = sorted(t for t in set(selection.task_ids) if t not in found or found[t].vanished)
        raise StoreNotFound(f"{len(missing)} of the given tasks are not in the store (or vanished): "
                            + ", ".join(missing))
    return done


async def republish(store: SnapshotStore, publisher: Publisher, selection: Selection, *,
                    source: str, max_bytes: int, batch: int = BATCH,
                    on_batch: Callable[[int], None] | None = None) -> Published:
    """Publish the state record of every selected live task, in task_id order, a batch at a time.

    After each batch is acknowledged its tasks are read again: one the daemon changed meanwhile
    gets its new record (or tombstone) sent once more. The daemon commits before it publishes,
    so a change not seen by that read is published by the daemon after ours: either way the
    newest version is the last record of its key, and compaction keeps the right one.
    """
    after: str | None = None
    tasks = resent = 0
    while page := await store.snapshot_page(after, batch, created=selection.created,
                                            task_ids=selection.task_ids):
        await publisher.publish([events.state_record_of(s, source=source, max_bytes=max_bytes)
                                 for s in page])
        tasks += len(page)
        resent += await _catch_up(store, publisher, {s.task_id: s.version for s in page},
                                  source=source, max_bytes=max_bytes)
        after = page[-1].task_id
        if on_batch is not None:
            on_batch(tasks)
    return Published(tasks, resent)


async def _catch_up(store: SnapshotStore, publisher: Publisher, sent: Mapping[str, int], *,
                    source: str, max_bytes: int) -> int:
    """Send again the tasks whose stored version moved since `sent`; how many records."""
    resent = 0
    while sent:
        moved = [s for s in (await store.read_snapshots(list(sent))).values()
                 if s.version != sent[s.task_id]]
        if moved:
            await publisher.publish([_record(s, source, max_bytes) for s in moved])
        resent += len(moved)
        sent = {s.task_id: s.version for s in moved}
    return resent


def _record(snapshot: Snapshot, source: str, max_bytes: int) -> OutboundRecord:
    if snapshot.vanished:
        return events.state_tombstone_of(snapshot, source=source)
    return events.state_record_of(snapshot, source=source, max_bytes=max_bytes)


async def _expected(store: SnapshotStore, selection: Selection) -> int:
    """About how many records the selection holds (the bar's length)."""
    if selection.task_ids is not None:
        return len(set(selection.task_ids))
    if selection.created is not None:
        start, end = selection.created
        return sum(n for day, n in (await store.created_counts()).items() if start <= day <= end)
    return await store.count_tasks()
