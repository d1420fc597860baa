"""The PostgreSQL snapshot store (asyncpg), for shared and highly available deployments."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any

import asyncpg
import structlog

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
from poller.store.locks import Holder
from poller.store.migrations import VERSION_TABLE, pending
from poller.store.rows import as_beijing, describe_url, last_wins, outbox_entry, outbox_row

log = structlog.get_logger(__name__)


def _advisory_key(name: bytes) -> int:
    # A fixed positive 63-bit key, so every release and replica agrees on it and pg_locks shows
    # it as (classid = high 32 bits, objid = low 32 bits).
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 1


LEADER_KEY = _advisory_key(b"waiqin-poller")  # the HA lock, held for a leader's lifetime
MIGRATION_KEY = _advisory_key(b"waiqin-poller/migrations")  # serialises replicas migrating at once
# SQLSTATE classes worth retrying: connection (08), transaction rollback such as serialization
# failure or deadlock (40), insufficient resources (53), operator intervention such as admin
# shutdown (57), system error (58); plus lock_not_available.
RETRIABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
# lock_not_available; and object_not_in_prerequisite_state, which is what a database answers
# while it refuses connections (ALLOW_CONNECTIONS false, during maintenance): an outage.
RETRIABLE_SQLSTATES = frozenset({"55P03", "55000"})
DRIVER_ERRORS = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
    # e.g. "another operation is in progress" when the server killed the session mid-query
    asyncpg.exceptions.InternalClientError,
)
"""Every exception the driver raises; none of them leaves this module untranslated."""
# A leader whose host vanishes (no FIN, no RST) is noticed by the server after about
# idle + interval * count seconds, which bounds how long the lock outlives it.
LEADER_SERVER_SETTINGS = {
    "application_name": "waiqin-poller-leader",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}

_TASK_COLUMNS = "task_id, hash, document, version, modify_time, received, create_date, vanished"
_UPSERT_TASKS = (
    f"INSERT INTO tasks ({_TASK_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[],"
    " $3::bytea[], $4::bigint[], $5::timestamptz[], $6::bigint[], $7::date[], $8::boolean[])"
    " ON CONFLICT (task_id) DO UPDATE SET hash = excluded.hash, document = excluded.document,"
    " version = excluded.version, modify_time = excluded.modify_time, received = excluded.received,"
    " create_date = excluded.create_date, vanished = excluded.vanished"
)
_BACKFILL_COLUMNS = (
    "id, modify_from, modify_to, requested_at, state, next_day, pages, tasks, events, finished_at, error"
)
_UPDATE_BACKFILL = (
    "UPDATE backfills SET state = $1, next_day = $2, pages = $3, tasks = $4, events = $5,"
    " finished_at = $6, error = $7 WHERE id = $8"
)
_UPSERT_USAGE = (
    "INSERT INTO api_usage (day, endpoint, requests) SELECT * FROM unnest($1::date[], $2::text[],"
    " $3::bigint[]) ON CONFLICT (day, endpoint) DO UPDATE"
    " SET requests = greatest(api_usage.requests, excluded.requests)"
)
_UPDATE_RENDERINGS = (
    "UPDATE tasks SET received = r.received FROM unnest($1::text[], $2::bigint[])"
    " AS r(task_id, received) WHERE tasks.task_id = r.task_id"
)
_UPSERT_STATE = (
    "INSERT INTO poll_state (id, state) VALUES (1, $1::jsonb)"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state"
)
# Outbox ids come from a sequence, in the order of the unnest (WITH ORDINALITY): the relay
# sends by id, so a page's records keep their order.
_INSERT_OUTBOX = (
    "WITH added AS (INSERT INTO outbox (topic, key, value, headers)"
    " SELECT topic, key, value, headers FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bytea[])"
    " WITH ORDINALITY AS r(topic, key, value, headers, n) ORDER BY n RETURNING id)"
    " SELECT max(id) FROM added"
)
_INSERT_MARKS = (  # the first sighting is the one that was sent; keep its timestamp
    "INSERT INTO dead_letters (fingerprint, task_id)"
    " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (fingerprint) DO NOTHING"
)
_UPSERT_TYPES = (
    "INSERT INTO task_types (type_id, hash, document, version)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[])"
    " ON CONFLICT (type_id) DO UPDATE SET hash = excluded.hash, document = excluded.document,"
    " version = excluded.version"
)
_LOCK_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2)"
)
# The same question asked from a pooled connection inside a page's transaction: is the lock
# still held by our lock session? This fences the commit itself, not only the moment before.
_LOCK_HELD_BY = _LOCK_HELD.replace("pid = pg_backend_pid()", "pid = $3")
# Who holds the leader lock of this database (advisory locks are per database), for `status`.
_LOCK_HOLDER = (
    "SELECT l.pid, a.client_addr::text AS client_addr, a.client_port, a.application_name,"
    " a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid::bigint = $1 AND l.objid::bigint = $2"
)


def map_error(exc: BaseException, where: str) -> StoreError:
    """Translate an asyncpg/OS error: connection and transient failures may pass, others not."""
    if isinstance(exc, OSError | TimeoutError):
        return StoreUnavailable(f"PostgreSQL store {where} is unreachable: {exc!r}")
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state[:2] in RETRIABLE_SQLSTATE_CLASSES or state in RETRIABLE_SQLSTATES:
            return StoreUnavailable(f"PostgreSQL store {where} is unavailable: {exc} ({state})")
        return StoreConflict(f"PostgreSQL store {where} refused the operation: {exc} ({state})")
    broken = isinstance(exc, asyncpg.exceptions.InternalClientError)  # session killed mid-query
    closed = isinstance(exc, asyncpg.InterfaceError) and "clos" in str(exc)  # closed, closing
    if broken or closed:
        return StoreUnavailable(f"PostgreSQL store {where} connection is gone: {exc}")
    return StoreConflict(f"PostgreSQL store {where} failed: {exc!r}")


def _snapshot(row: Any) -> Snapshot:
    return Snapshot(
        row["task_id"], row["hash"], bytes(row["document"]), int(row["version"]),
        as_beijing(row["modify_time"]), row["received"], row["create_date"], row["vanished"],
    )


def _backfill(row: Any) -> Backfill:
    return Backfill(
        int(row["id"]), row["modify_from"], row["modify_to"], row["requested_at"].astimezone(BEIJING),
        row["state"], row["next_day"], int(row["pages"]), int(row["tasks"]), int(row["events"]),
        as_beijing(row["finished_at"]), row["error"],
    )


class PostgresStore:
    """SnapshotStore on PostgreSQL through a small asyncpg pool."""

    def __init__(
        self, dsn: str, *, min_connections: int = 1, max_connections: int = 4,
        command_timeout_s: float = 30.0, connect_timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self.where = describe_url(dsn)  # never the password
        self._min = min_connections
        self._max = max_connections
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    async def __aenter__(self) -> PostgresStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the pool and apply pending migrations (one replica at a time).

        Raises StoreUnavailable if the server cannot be reached, StoreConflict if the schema is
        newer than this release or the role may not create the tables.
        """
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min, max_size=self._max,
                timeout=self._connect_timeout_s, command_timeout=self._command_timeout_s,
                server_settings={"application_name": "waiqin-poller"},
            )
        except DRIVER_ERRORS as exc:
            raise map_error(exc, self.where) from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, DRIVER_ERRORS):
                raise map_error(exc, self.where) from exc
            raise
        self._pool = pool

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # Two replicas starting together: the second waits here, then finds nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_KEY)
            await conn.execute(VERSION_TABLE["postgresql"])
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for step in pending(int(current)):
                for statement in step.postgresql:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                    step.version, step.description,
                )
                log.info("store_migrated", backend="postgresql", store=self.where,
                         version=step.version)

    async def stop(self) -> None:
        """Close the pool; idempotent and safe after a failed start."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._connect_timeout_s)
        except (*DRIVER_ERRORS, TimeoutError) as exc:
            log.warning("store_close_failed", backend="postgresql", error=repr(exc))
            pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; driver errors raised inside are translated here."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"PostgreSQL store {self.where} is not started")
        try:
            async with pool.acquire() as conn:
                yield conn
        except PollerError:
            raise
        except DRIVER_ERRORS as exc:
            raise map_error(exc, self.where) from exc

    async def ping(self) -> None:
        """A cheap round trip, for readiness."""
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def read_hashes(self, task_ids: Collection[str]) -> dict[str, StoredHashes]:
        """The stored hashes of these tasks, in one `= ANY($1)` query (an index-only scan)."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT task_id, hash, received, vanished FROM tasks WHERE task_id = ANY($1::text[])",
                ids)
        return {row[0]: StoredHashes(row[1], row[2], row[3]) for row in rows}

    async def read_snapshots(self, task_ids: Collection[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these tasks, in one `= ANY($1)` query."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ANY($1::text[])", ids,
            )
        return {row["task_id"]: _snapshot(row) for row in rows}

    async def created_counts(self, modify_from: date | None = None) -> dict[date, int]:
        """Live stored tasks per create date (optionally only those modified since a date)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT create_date, count(*) FROM tasks WHERE create_date IS NOT NULL"
                " AND NOT vanished AND ($1::date IS NULL OR modify_time >= $1::date)"
                " GROUP BY create_date", modify_from)
        return {row[0]: int(row[1]) for row in rows}

    async def created_ids(self, start: date, end: date, modify_from: date | None = None) -> set[str]:
        """Ids of live stored tasks created from `start` to `end`."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT task_id FROM tasks WHERE create_date BETWEEN $1 AND $2 AND NOT vanished"
                " AND ($3::date IS NULL OR modify_time >= $3::date)", start, end, modify_from)
        return {row[0] for row in rows}

    async def snapshot_page(self, after: str | None, limit: int, *,
                            created: tuple[date, date] | None = None,
                            task_ids: Collection[str] | None = None) -> list[Snapshot]:
        """Live snapshots after `after` in task_id order, optionally by create date or ids."""
        start, end = created if created is not None else (None, None)
        ids = None if task_ids is None else sorted(set(task_ids))
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE NOT vanished AND task_id > $1"
                " AND ($2::date IS NULL OR create_date BETWEEN $2::date AND $3::date)"
                " AND ($4::text[] IS NULL OR task_id = ANY($4::text[]))"
                " ORDER BY task_id LIMIT $5", after or "", start, end, ids, limit)
        return [_snapshot(row) for row in rows]

    async def seen_dead_letters(self, fingerprints: Collection[str]) -> set[str]:
        """Which of these dead-letter fingerprints were already committed."""
        wanted = list(dict.fromkeys(fingerprints))
        if not wanted:
            return set()
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT fingerprint FROM dead_letters WHERE fingerprint = ANY($1::text[])", wanted
            )
        return {row["fingerprint"] for row in rows}

    async def commit(self, commit: Commit, lease: Leadership) -> int | None:
        """Write `commit` in one transaction that first proves, inside itself, that `lease` holds."""
        if commit.is_empty:
            return None
        if not isinstance(lease, AdvisoryLeadership):
            raise LeadershipLost(f"not a leadership of {self.where}: nothing was written")
        async with self._connection() as conn, conn.transaction():
            await _fence(conn, lease)
            await _write_tasks(conn, commit)
            await _write_progress(conn, commit)
            if not commit.records:
                return None
            rows = [outbox_row(record) for record in commit.records]
            last = await conn.fetchval(_INSERT_OUTBOX, *(list(column) for column in zip(*rows, strict=True)))
        return int(last)

    async def pending(self, limit: int) -> list[OutboxEntry]:
        """Up to `limit` unsent outbox entries, oldest first."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1", limit)
        return [outbox_entry(*row) for row in rows]

    async def mark_sent(self, through_id: int) -> None:
        """Drop the outbox entries up to `through_id`."""
        async with self._connection() as conn:
            await conn.execute("DELETE FROM outbox WHERE id <= $1", through_id)

    async def outbox_depth(self) -> int:
        """How many outbox entries wait to be sent."""
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM outbox"))

    async def read_types(self, type_ids: Collection[str] | None = None) -> dict[str, TypeSnapshot]:
        """Stored task types: these ids, or all of them when None."""
        query = "SELECT type_id, hash, document, version FROM task_types"
        async with self._connection() as conn:
            if type_ids is None:
                rows = await conn.fetch(query)
            else:
                wanted = list(dict.fromkeys(type_ids))
                if not wanted:
                    return {}
                rows = await conn.fetch(f"{query} WHERE type_id = ANY($1::text[])", wanted)
        return {
            row["type_id"]: TypeSnapshot(row["type_id"], row["hash"], bytes(row["document"]),
                                         int(row["version"]))
            for row in rows
        }

    async def load_state(self) -> PollState:
        """The saved poll state; PollState() on a new store."""
        async with self._connection() as conn:
            document = await conn.fetchval("SELECT state::text FROM poll_state WHERE id = 1")
        if document is None:
            return PollState()
        try:
            return PollState.model_validate_json(document)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise StoreConflict(
                f"PostgreSQL store {self.where} holds an unreadable poll state"
            ) from exc

    async def request_backfill(self, modify_from: date, modify_to: date, requested_at: datetime
                               ) -> Backfill:
        """Record a backfill request (not fenced: the command asks while a daemon leads)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO backfills (modify_from, modify_to, requested_at, state, pages, tasks,"
                f" events) VALUES ($1, $2, $3, 'pending', 0, 0, 0) RETURNING {_BACKFILL_COLUMNS}",
                modify_from, modify_to, requested_at)
        return _backfill(row)

    async def backfills(self, *, active_only: bool = True) -> list[Backfill]:
        """Backfill requests, oldest first."""
        where = " WHERE state IN ('pending', 'running')" if active_only else ""
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT {_BACKFILL_COLUMNS} FROM backfills{where} ORDER BY id")
        return [_backfill(row) for row in rows]

    async def read_usage(self, day: date) -> dict[str, int]:
        """API requests made on a Beijing day, by endpoint."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT endpoint, requests FROM api_usage WHERE day = $1", day)
        return {row[0]: int(row[1]) for row in rows}

    async def count_tasks(self) -> int:
        """How many tasks the store holds: a trigger-maintained counter, not a scan."""
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT value FROM counters WHERE name = 'tasks'"))

    async def leader(self) -> Holder | None:
        """The session holding the leader lock (None: no poller leads), read from pg_locks.

        Only looks: no lock is taken. The pid is the server backend's (what
        pg_terminate_backend takes); the client address says which host leads.
        """
        async with self._connection() as conn:
            row = await conn.fetchrow(_LOCK_HOLDER, LEADER_KEY >> 32, LEADER_KEY & 0xFFFF_FFFF)
        if row is None:
            return None
        client = row["client_addr"] or "local socket"
        if row["client_port"] is not None and row["client_addr"]:
            client = f"{client.split('/')[0]}:{row['client_port']}"
        application = f" ({row['application_name']})" if row["application_name"] else ""
        return Holder(pid=int(row["pid"]), where=f"session from {client}{application}",
                      since=as_beijing(row["backend_start"]))

    async def schema_version(self) -> int:
        """The schema version recorded in the database (LATEST_VERSION after start)."""
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    def leadership(self) -> AdvisoryLeadership:
        """A session advisory lock on a dedicated connection: one active poller per database.

        Every commit under it proves inside its own transaction that this lock is still held by
        its session, so a leader that lost it (and may have been replaced) writes nothing.
        """
        return AdvisoryLeadership(self._dsn, connect_timeout_s=self._connect_timeout_s)


async def _write_tasks(conn: Any, commit: Commit) -> None:
    """A commit's snapshots, rendering hashes, dead-letter marks and task types."""
    tasks = last_wins(commit.snapshots, lambda s: s.task_id)
    if tasks:
        await conn.execute(
            _UPSERT_TASKS, [s.task_id for s in tasks], [s.hash for s in tasks],
            [s.document for s in tasks], [s.version for s in tasks],
            [as_beijing(s.modify_time) for s in tasks], [s.received for s in tasks],
            [s.create_date for s in tasks], [s.vanished for s in tasks],
        )
    if commit.renderings:
        await conn.execute(_UPDATE_RENDERINGS, [t for t, _ in commit.renderings],
                           [r for _, r in commit.renderings])
    marks = last_wins(commit.marks, lambda m: m.fingerprint)
    if marks:
        await conn.execute(_INSERT_MARKS, [m.fingerprint for m in marks], [m.task_id for m in marks])
    types = last_wins(commit.types, lambda t: t.type_id)
    if types:
        await conn.execute(_UPSERT_TYPES, [t.type_id for t in types], [t.hash for t in types],
                           [t.document for t in types], [t.version for t in types])


async def _write_progress(conn: Any, commit: Commit) -> None:
    """A commit's poll state, API usage and backfill progress."""
    if commit.state is not None:
        await conn.execute(_UPSERT_STATE, commit.state.model_dump_json())
    if commit.usage:
        await conn.execute(_UPSERT_USAGE, *(list(c) for c in zip(*commit.usage, strict=True)))
    if commit.backfill is not None:
        b = commit.backfill
        await conn.execute(_UPDATE_BACKFILL, b.state, b.next_day, b.pages, b.tasks, b.events,
                           as_beijing(b.finished_at), b.error, b.id)


async def _fence(conn: Any, lease: AdvisoryLeadership) -> None:
    pid = lease.server_pid
    key = lease.key
    if pid is None or not await conn.fetchval(_LOCK_HELD_BY, key >> 32, key & 0xFFFF_FFFF, pid):
        raise LeadershipLost(
            f"leadership of {lease.where} lost before the commit: nothing was written")


class AdvisoryLeadership:
    """Leadership as `pg_try_advisory_lock(LEADER_KEY)` held by one dedicated connection.

    The lock lives exactly as long as that session: when the leader dies (kill -9 included)
    the server ends the session and frees the lock, and a waiting replica takes it on its next
    try (every `retry_interval_s`).
    """

    def __init__(
        self, dsn: str, *, key: int = LEADER_KEY, retry_interval_s: float = 1.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self.where = describe_url(dsn)
        self.key = key
        self._retry_interval_s = retry_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._conn: Any = None
        self._held = False
        self._guard = asyncio.Lock()  # one query at a time on the lock connection

    def __repr__(self) -> str:
        return f"AdvisoryLeadership({self.where!r}, held={self._held})"

    @property
    def is_held(self) -> bool:
        """Whether this instance holds the lock (as far as it knows; ensure() checks)."""
        return self._held

    @property
    def server_pid(self) -> int | None:
        """The backend pid of the lock session while the lock is believed held."""
        if not self._held or self._conn is None or self._conn.is_closed():
            return None
        return int(self._conn.get_server_pid())

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the lock is ours (True) or `stop` is set (False).

        An unreachable server is logged and retried like a held lock: waiting is the job.
        """
        waiting_logged = False
        while not stop.is_set():
            try:
                if await self._try_lock():
                    log.info("leadership_acquired", backend="postgresql", store=self.where)
                    return True
                if not waiting_logged:
                    log.info("leadership_waiting", backend="postgresql", store=self.where)
                    waiting_logged = True
            except StoreError as exc:
                log.warning("leadership_unavailable", backend="postgresql", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._retry_interval_s)
            except TimeoutError:
                pass
        return False

    async def _try_lock(self) -> bool:
        async with self._guard:
            if self._held:
                return True
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self._dsn, timeout=self._connect_timeout_s,
                        server_settings=LEADER_SERVER_SETTINGS,
                    )
                got = await self._conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", self.key, timeout=self._connect_timeout_s
                )
            except DRIVER_ERRORS as exc:
                await self._discard()
                raise map_error(exc, self.where) from exc
            self._held = bool(got)
            return self._held

    async def ensure(self) -> None:
        """Raise LeadershipLost unless the lock connection is alive and still holds the lock.

        Any failure of the check counts as lost: the connection is dropped (freeing the lock if
        the server still had it) so two pollers can never both believe they lead.
        """
        async with self._guard:
            if not self._held:
                raise LeadershipLost(f"not the leader of {self.where}: the lock is not held")
            if self._conn is None or self._conn.is_closed():
                await self._discard()
                raise LeadershipLost(
                    f"leadership of {self.where} lost: the lock connection was closed"
                )
            try:
                held = await self._conn.fetchval(
                    _LOCK_HELD, self.key >> 32, self.key & 0xFFFF_FFFF,
                    timeout=self._connect_timeout_s,
                )
            except Exception as exc:  # whatever went wrong, we can no longer prove we lead
                await self._discard()
                raise LeadershipLost(
                    f"leadership of {self.where} lost: the lock connection failed ({exc!r})"
                ) from exc
            if not held:
                await self._discard()
                raise LeadershipLost(f"leadership of {self.where} lost: the advisory lock is gone")

    async def release(self) -> None:
        """Unlock and close the lock connection; idempotent."""
        async with self._guard:
            was_held = self._held
            if self._conn is not None and not self._conn.is_closed() and self._held:
                try:
                    await self._conn.execute(
                        "SELECT pg_advisory_unlock($1)", self.key, timeout=self._connect_timeout_s
                    )
                except DRIVER_ERRORS as exc:  # closing the session below frees it anyway
                    log.warning("leadership_unlock_failed", error=repr(exc))
            await self._discard()
            if was_held:
                log.info("leadership_released", backend="postgresql", store=self.where)

    async def _discard(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=self._connect_timeout_s)
        except (*DRIVER_ERRORS, TimeoutError):
            conn.terminate()
