"""The embedded SQLite snapshot store (the default), run on one dedicated worker thread.

Durability: the database runs in WAL mode with `synchronous=FULL`: a commit is on disk before
`commit` returns, and its outbox records are published only after that. With NORMAL a power cut
could roll back a transaction whose records Kafka already has, and the next observation would
reuse their ce_sequence for different content (docs/design.md §5). The price is one fsync per
committed page; unchanged pages commit nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from poller.errors import LeadershipLost, PollerError, StoreConflict, StoreError, StoreUnavailable
from poller.models import (
    BEIJING,
    Backfill,
    Commit,
    OutboxEntry,
    PollState,
    Snapshot,
    StoredHashes,
    TypeSnapshot,
)
from poller.store.base import Leadership
from poller.store.locks import FileLeadership
from poller.store.migrations import LATEST_VERSION, VERSION_TABLE, pending
from poller.store.rows import as_beijing, last_wins, outbox_entry, outbox_row

log = structlog.get_logger(__name__)

T = TypeVar("T")

CACHE_KIB = 8 * 1024

URL_PREFIX = "sqlite:///"  # sqlite:///relative.db or sqlite:////abs/path.db
# An API page has at most 1000 rows, so a page's lookup is one statement; old SQLite builds
# cap bound variables at 999, hence the min() with the library's own limit.
IN_LIST_MAX = 1000
# Result codes worth retrying: another connection holds a lock, or the disk/memory failed.
RETRIABLE_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
})

_TASK_COLUMNS = "task_id, hash, document, version, modify_time, received, create_date, vanished"
_UPSERT_TASK = (
    f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id)"
    " DO UPDATE SET hash = excluded.hash, document = excluded.document, version = excluded.version,"
    " modify_time = excluded.modify_time, received = excluded.received,"
    " create_date = excluded.create_date, vanished = excluded.vanished"
)
_BACKFILL_COLUMNS = (
    "id, modify_from, modify_to, requested_at, state, next_day, pages, tasks, events, finished_at, error"
)
_UPDATE_BACKFILL = (
    "UPDATE backfills SET state = ?, next_day = ?, pages = ?, tasks = ?, events = ?,"
    " finished_at = ?, error = ? WHERE id = ?"
)
_UPSERT_USAGE = (
    "INSERT INTO api_usage (day, endpoint, requests) VALUES (?, ?, ?)"
    " ON CONFLICT (day, endpoint) DO UPDATE SET requests = max(requests, excluded.requests)"
)
_UPSERT_TYPE = (
    "INSERT INTO task_types (type_id, hash, document, version) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (type_id) DO UPDATE SET hash = excluded.hash, document = excluded.document,"
    " version = excluded.version"
)
_UPSERT_STATE = (
    "INSERT INTO poll_state (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state"
)
_INSERT_OUTBOX = "INSERT INTO outbox (topic, key, value, headers) VALUES (?, ?, ?, ?)"
# The first sighting of a bad record is the one that was sent; keep its timestamp.
_INSERT_MARK = (
    "INSERT INTO dead_letters (fingerprint, task_id, created_at) VALUES (?, ?, ?)"
    " ON CONFLICT (fingerprint) DO NOTHING"
)


def path_from_url(url: str) -> Path:
    """The database file named by a `sqlite:///…` URL (three slashes: relative, four: absolute)."""
    if not url.startswith(URL_PREFIX) or url == URL_PREFIX:
        raise ValueError(f"expected sqlite:///relative.db or sqlite:////abs/path.db, got {url!r}")
    return Path(url[len(URL_PREFIX):])


def map_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """Translate a sqlite3 error: busy/locked/I-O failures may pass, anything else will not."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in RETRIABLE_CODES:
        return StoreUnavailable(f"SQLite store {path} is unavailable: {exc}")
    return StoreConflict(f"SQLite store {path} refused the operation: {exc}")


@contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    # IMMEDIATE takes the write lock at BEGIN, so a busy database fails before any work.
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _open(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (creating the directory and file), configure and migrate; runs on the worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; every write is an explicit BEGIN/COMMIT.
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        mode = _set_wal(conn, busy_timeout_s)
        if mode != "wal":
            # e.g. a network filesystem without shared memory: still correct, just slower.
            log.warning("sqlite_wal_unavailable", path=str(path), journal_mode=mode)
        conn.execute("PRAGMA synchronous=FULL")  # see the module docstring
        # 8 MiB of page cache (the default is 2 MiB): the (task_id, hash) index of about 100k
        # tasks, so the unchanged path rarely leaves memory. A bound, not a floor.
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _set_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> str:
    """Switch to WAL; returns the journal mode in force.

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once (no busy
    handler) while another process opens the same new file: retry within the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # on the store's worker thread, never the event loop


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(VERSION_TABLE["sqlite"])
    with _transaction(conn):  # IMMEDIATE: a second process starting at once waits, then no-ops
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        for step in pending(current):
            for statement in step.sqlite:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (step.version, step.description, datetime.now(BEIJING).isoformat()),
            )
            log.info("store_migrated", backend="sqlite", path=str(path), version=step.version)


def _time_text(value: datetime | None) -> str | None:
    # ISO 8601 with the +08:00 offset: readable in the sqlite3 shell, parsed back exactly.
    when = as_beijing(value)
    return None if when is None else when.isoformat()


def _snapshot(row: tuple[Any, ...]) -> Snapshot:
    task_id, hash_, document, version, modify_time, received, created, vanished = row
    when = datetime.fromisoformat(modify_time) if modify_time is not None else None
    return Snapshot(task_id, hash_, bytes(document), int(version), when, received,
                    _date(created), bool(vanished))


def _snapshots(rows: list[tuple[Any, ...]]) -> dict[str, Snapshot]:
    return {row[0]: _snapshot(row) for row in rows}


def _stored_hashes(rows: list[tuple[Any, ...]]) -> dict[str, StoredHashes]:
    # This runs for every task of every page: tuple.__new__ skips the named tuple's Python-level
    # __new__ (same result, half the time).
    return {task_id: _new_tuple(StoredHashes, (hash_, received, vanished != 0))
            for task_id, hash_, received, vanished in rows}


_new_tuple = tuple.__new__


def _date(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _backfill(row: tuple[Any, ...]) -> Backfill:
    (id_, modify_from, modify_to, requested_at, state, next_day, pages, tasks, events_,
     finished_at, error) = row
    return Backfill(int(id_), date.fromisoformat(modify_from), date.fromisoformat(modify_to),
                    datetime.fromisoformat(requested_at), state, _date(next_day), int(pages),
                    int(tasks), int(events_),
                    None if finished_at is None else datetime.fromisoformat(finished_at), error)


class SqliteStore:
    """SnapshotStore on one SQLite file; every call runs on a single worker thread in order."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.lock_path = Path(f"{self.path}.lock")
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """A store for a `sqlite:///…` URL."""
        return cls(path_from_url(url))

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def __aenter__(self) -> SqliteStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the file (creating it and its directory) and apply pending migrations.

        Raises StoreUnavailable if the file cannot be opened, StoreConflict if its schema is
        newer than this release.
        """
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(
                executor, _open, self.path, self._busy_timeout_s
            )
        except sqlite3.Error as exc:
            executor.shutdown(wait=False)
            raise map_error(exc, self.path) from exc
        except OSError as exc:
            executor.shutdown(wait=False)
            raise StoreUnavailable(f"SQLite store {self.path} cannot be created: {exc}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def stop(self) -> None:
        """Close the file; idempotent and safe after a failed start."""
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if executor is None:
            return
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        except sqlite3.Error as exc:
            log.warning("store_close_failed", backend="sqlite", error=str(exc))
        finally:
            executor.shutdown(wait=False)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the worker thread; a cancelled caller does not stop a transaction
        midway: it still commits or rolls back as a whole on the worker."""
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not started")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work, conn)
        except PollerError:
            raise
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from exc

    def _in_list_max(self, conn: sqlite3.Connection) -> int:
        return min(IN_LIST_MAX, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))

    async def ping(self) -> None:
        """A cheap round trip, for readiness."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def read_hashes(self, task_ids: Collection[str]) -> dict[str, StoredHashes]:
        """The stored hashes of these tasks, from the fast-path index alone."""
        # INDEXED BY: the planner would pick the primary key, i.e. the table with every
        # document; the narrow index stays in the page cache however large the store grows.
        return await self._select_by_id(task_ids, "task_id, hash, received, vanished",
                                        "INDEXED BY tasks_fast_path", _stored_hashes)

    async def read_snapshots(self, task_ids: Collection[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these tasks, read in one transaction (chunked IN-lists)."""
        return await self._select_by_id(task_ids, _TASK_COLUMNS, "", _snapshots)

    async def _select_by_id(self, task_ids: Collection[str], columns: str, index: str,
                            convert: Callable[[list[Any]], dict[str, T]]) -> dict[str, T]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}

        def select(conn: sqlite3.Connection) -> dict[str, T]:
            found: dict[str, T] = {}
            with _transaction(conn, "DEFERRED"):  # one consistent read across the chunks
                for part in _chunks(ids, self._in_list_max(conn)):
                    rows = conn.execute(
                        f"SELECT {columns} FROM tasks {index} WHERE task_id IN ({_placeholders(len(part))})",
                        part,
                    )
                    found.update(convert(rows.fetchall()))
            return found

        return await self._run(select)

    async def created_counts(self, modify_from: date | None = None) -> dict[date, int]:
        """Live stored tasks per create date (optionally only those modified since a date)."""
        since = "" if modify_from is None else " AND modify_time >= ?"
        params = () if modify_from is None else (modify_from.isoformat(),)
        rows = await self._run(lambda conn: conn.execute(
            "SELECT create_date, count(*) FROM tasks WHERE create_date IS NOT NULL"
            f" AND vanished = 0{since} GROUP BY create_date", params).fetchall())
        return {date.fromisoformat(day): int(count) for day, count in rows}

    async def created_ids(self, start: date, end: date, modify_from: date | None = None) -> set[str]:
        """Ids of live stored tasks created from `start` to `end`."""
        since = "" if modify_from is None else " AND modify_time >= ?"
        params = (start.isoformat(), end.isoformat(),
                  *(() if modify_from is None else (modify_from.isoformat(),)))
        rows = await self._run(lambda conn: conn.execute(
            "SELECT task_id FROM tasks WHERE create_date BETWEEN ? AND ? AND vanished = 0"
            f"{since}", params).fetchall())
        return {row[0] for row in rows}

    async def snapshot_page(self, after: str | None, limit: int, *,
                            created: tuple[date, date] | None = None,
                            task_ids: Collection[str] | None = None) -> list[Snapshot]:
        """Live snapshots after `after` in task_id order, optionally by create date or ids."""
        where, params = ["vanished = 0", "task_id > ?"], [after or ""]
        if created is not None:
            where.append("create_date BETWEEN ? AND ?")
            params += [created[0].isoformat(), created[1].isoformat()]
        ids = None if task_ids is None else sorted(set(task_ids))
        if ids is not None:
            where.append(f"task_id IN ({_placeholders(len(ids))})")
            params += ids
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {' AND '.join(where)} ORDER BY task_id LIMIT ?"
        rows = await self._run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [_snapshot(row) for row in rows]

    async def seen_dead_letters(self, fingerprints: Collection[str]) -> set[str]:
        """Which of these dead-letter fingerprints were already committed."""
        wanted = list(dict.fromkeys(fingerprints))
        if not wanted:
            return set()

        def select(conn: sqlite3.Connection) -> set[str]:
            seen: set[str] = set()
            for part in _chunks(wanted, self._in_list_max(conn)):
                rows = conn.execute(
                    "SELECT fingerprint FROM dead_letters"
                    f" WHERE fingerprint IN ({_placeholders(len(part))})", part,
                )
                seen.update(row[0] for row in rows)
            return seen

        return await self._run(select)

    async def commit(self, commit: Commit, lease: Leadership) -> int | None:
        """Write `commit` in one IMMEDIATE transaction, after proving `lease` holds this file's lock."""
        if commit.is_empty:
            return None
        verify = self._verifier(lease)
        now = datetime.now(BEIJING).isoformat()
        task_rows = [
            (s.task_id, s.hash, s.document, s.version, _time_text(s.modify_time), s.received,
             None if s.create_date is None else s.create_date.isoformat(), int(s.vanished))
            for s in last_wins(commit.snapshots, lambda s: s.task_id)
        ]
        usage_rows = [(day.isoformat(), endpoint, count) for day, endpoint, count in commit.usage]
        backfill = commit.backfill
        backfill_row = None if backfill is None else (
            backfill.state, None if backfill.next_day is None else backfill.next_day.isoformat(),
            backfill.pages, backfill.tasks, backfill.events, _time_text(backfill.finished_at),
            backfill.error, backfill.id)
        rendering_rows = [(received, task_id) for task_id, received in commit.renderings]
        mark_rows = [(m.fingerprint, m.task_id, now) for m in commit.marks]
        type_rows = [(t.type_id, t.hash, t.document, t.version)
                     for t in last_wins(commit.types, lambda t: t.type_id)]
        outbox_rows = [outbox_row(record) for record in commit.records]
        state = None if commit.state is None else commit.state.model_dump_json()

        def write(conn: sqlite3.Connection) -> int | None:
            with _transaction(conn):
                verify()  # the flock is ours: no other poller can be writing meanwhile
                conn.executemany(_UPSERT_TASK, task_rows)
                conn.executemany("UPDATE tasks SET received = ? WHERE task_id = ?", rendering_rows)
                conn.executemany(_INSERT_MARK, mark_rows)
                conn.executemany(_UPSERT_TYPE, type_rows)
                if state is not None:
                    conn.execute(_UPSERT_STATE, (state,))
                conn.executemany(_UPSERT_USAGE, usage_rows)
                if backfill_row is not None:
                    conn.execute(_UPDATE_BACKFILL, backfill_row)
                last = None
                if outbox_rows:
                    conn.executemany(_INSERT_OUTBOX, outbox_rows)
                    last = int(conn.execute("SELECT max(id) FROM outbox").fetchone()[0])
            return last

        return await self._run(write)

    def _verifier(self, lease: Leadership) -> Callable[[], None]:
        if not isinstance(lease, FileLeadership) or lease.path != self.lock_path:
            raise LeadershipLost(f"not a leadership of {self.path}: nothing was written")
        return lease.verify

    async def pending(self, limit: int) -> list[OutboxEntry]:
        """Up to `limit` unsent outbox entries, oldest first."""
        rows = await self._run(lambda conn: conn.execute(
            "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT ?", (limit,),
        ).fetchall())
        return [outbox_entry(*row) for row in rows]

    async def mark_sent(self, through_id: int) -> None:
        """Drop the outbox entries up to `through_id`."""
        def delete(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM outbox WHERE id <= ?", (through_id,))

        await self._run(delete)

    async def outbox_depth(self) -> int:
        """How many outbox entries wait to be sent."""
        row = await self._run(lambda conn: conn.execute("SELECT count(*) FROM outbox").fetchone())
        return int(row[0])

    async def read_types(self, type_ids: Collection[str] | None = None) -> dict[str, TypeSnapshot]:
        """Stored task types: these ids, or all of them when None."""
        wanted = None if type_ids is None else list(dict.fromkeys(type_ids))
        if wanted == []:
            return {}

        def select(conn: sqlite3.Connection) -> dict[str, TypeSnapshot]:
            query = "SELECT type_id, hash, document, version FROM task_types"
            if wanted is None:
                rows = conn.execute(query).fetchall()
            else:
                rows = []
                for part in _chunks(wanted, self._in_list_max(conn)):
                    sql = f"{query} WHERE type_id IN ({_placeholders(len(part))})"
                    rows.extend(conn.execute(sql, part))
            return {row[0]: TypeSnapshot(row[0], row[1], bytes(row[2]), int(row[3])) for row in rows}

        return await self._run(select)

    async def load_state(self) -> PollState:
        """The saved poll state; PollState() on a new store."""
        row = await self._run(
            lambda conn: conn.execute("SELECT state FROM poll_state WHERE id = 1").fetchone()
        )
        if row is None:
            return PollState()
        try:
            return PollState.model_validate_json(row[0])
        except ValidationError as exc:
            raise StoreConflict(f"SQLite store {self.path} holds an unreadable poll state") from exc

    async def request_backfill(self, modify_from: date, modify_to: date, requested_at: datetime
                               ) -> Backfill:
        """Record a backfill request (not fenced: the command asks while a daemon leads)."""
        def insert(conn: sqlite3.Connection) -> Backfill:
            with _transaction(conn):
                cursor = conn.execute(
                    "INSERT INTO backfills (modify_from, modify_to, requested_at, state, pages, tasks,"
                    " events) VALUES (?, ?, ?, 'pending', 0, 0, 0)",
                    (modify_from.isoformat(), modify_to.isoformat(), _time_text(requested_at)))
                row = conn.execute(f"SELECT {_BACKFILL_COLUMNS} FROM backfills WHERE id = ?",
                                   (cursor.lastrowid,)).fetchone()
            return _backfill(row)

        return await self._run(insert)

    async def backfills(self, *, active_only: bool = True) -> list[Backfill]:
        """Backfill requests, oldest first."""
        where = " WHERE state IN ('pending', 'running')" if active_only else ""
        rows = await self._run(lambda conn: conn.execute(
            f"SELECT {_BACKFILL_COLUMNS} FROM backfills{where} ORDER BY id").fetchall())
        return [_backfill(row) for row in rows]

    async def read_usage(self, day: date) -> dict[str, int]:
        """API requests made on a Beijing day, by endpoint."""
        rows = await self._run(lambda conn: conn.execute(
            "SELECT endpoint, requests FROM api_usage WHERE day = ?", (day.isoformat(),)).fetchall())
        return {endpoint: int(count) for endpoint, count in rows}

    async def count_tasks(self) -> int:
        """How many tasks the store holds: a trigger-maintained counter, not a scan."""
        row = await self._run(
            lambda conn: conn.execute("SELECT value FROM counters WHERE name = 'tasks'").fetchone()
        )
        return int(row[0])

    async def schema_version(self) -> int:
        """The schema version recorded in the file (LATEST_VERSION after a successful start)."""
        row = await self._run(
            lambda conn: conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            .fetchone()
        )
        return int(row[0])

    def leadership(self) -> FileLeadership:
        """An exclusive flock on `<db>.lock`: one active poller per database file on this host."""
        return FileLeadership(self.lock_path)


__all__ = ["LATEST_VERSION", "SqliteStore", "map_error", "path_from_url"]
