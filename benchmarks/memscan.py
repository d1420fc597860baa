"""Memory benchmark worker: `memscan.py prefill DB N` stores N tasks; `memscan.py scan DB N` scans N.

The scan prints one JSON line: {"scanned", "start_mb", "peak_mb"} (peak RSS from getrusage). It
runs as its own process so the figure is the poller's alone (no simulator, no prefill garbage).
Pages come from an in-process source (the same records bench_diff uses), not HTTP.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_diff import OBSERVED_AT, record
from benchmarks.common import in_process_poller, settings
from poller import diff, normalise, wire
from poller.fetch import QUERY_TASK, Page
from poller.models import Commit, Window
from poller.pages import ReadMode

PAGE = 1000


def records(count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(42)  # the same sequence in prefill and scan: stored tasks are unchanged
    for i in range(count):
        yield record(i, rng)


class Source:
    """Pages of generated records, built lazily (one page in memory at a time, like HTTP)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self.requests: dict[str, int] = {}

    async def iter_pages(self, window: Window, *, split_days: int | None = None, start_page: int = 1,
                         max_pages: int | None = None) -> AsyncIterator[Page]:
        page: list[Any] = []
        number = 1
        for raw in records(self._count):
            page.append(raw)
            if len(page) == PAGE:
                yield Page(window, number, as_received(page))
                page, number = [], number + 1
        yield Page(window, number, as_received(page), is_last=True)

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        return []


def as_received(page: list[Any]) -> Sequence[Any]:
    """The page as the client hands it on: response_data (a string) split into its records' bytes."""
    records = wire.split(QUERY_TASK, orjson.dumps(page).decode())
    assert records is not None
    return records


def rss_mb() -> float:
    """Peak RSS so far. VmHWM, not getrusage: ru_maxrss survives exec (a child starts with the
    parent's peak), VmHWM is this program's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB; not Linux /proc


async def prefill(db: Path, count: int) -> None:
    _poller, client, store, lease = await in_process_poller(
        settings("http://127.0.0.1:1", f"sqlite:///{db}"))
    try:
        batch = []
        for raw in records(count):
            task = normalise.task(raw)
            snapshot = diff.observe(None, task, observed_at=OBSERVED_AT, silent=True).snapshot(task)
            assert snapshot is not None
            batch.append(snapshot)
            if len(batch) == 5000:
                await store.commit(Commit(snapshots=batch), lease)
                batch = []
        if batch:
            await store.commit(Commit(snapshots=batch), lease)
    finally:
        await client.stop()
        await store.stop()


async def scan(db: Path, count: int) -> None:
    poller, client, store, lease = await in_process_poller(
        settings("http://127.0.0.1:1", f"sqlite:///{db}"), source=Source(count))
    try:
        start = rss_mb()
        stats = await poller.pages.scan(Window(), lease, mode=ReadMode(silent_new=True))
        print(orjson.dumps({"scanned": stats.tasks, "start_mb": start, "peak_mb": rss_mb()}).decode())
    finally:
        await client.stop()
        await store.stop()


if __name__ == "__main__":
    action, path, number = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    asyncio.run(prefill(path, number) if action == "prefill" else scan(path, number))
