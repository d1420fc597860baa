"""Versioned schema migrations of the snapshot store, written once per SQL dialect.

Each migration runs in one transaction together with the row that records it in
`schema_version`, so a crash mid-migration leaves the previous version intact. A database
whose recorded version is newer than the last one listed here was written by a newer release;
this release refuses to touch it (StoreConflict) rather than guess at its layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from poller.errors import StoreConflict

Dialect = Literal["sqlite", "postgresql"]
"""The two SQL backends; each migration carries statements for both."""

# Created before anything else so the current version can be read; never altered, so every
# release (older or newer) can still read it and refuse politely.
VERSION_TABLE = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    ),
    "postgresql": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ),
}


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: applied in order, exactly once, in one transaction."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        """The statements of this step in the given dialect."""
        return self.sqlite if dialect == "sqlite" else self.postgresql


_V1_SQLITE = (
    # WITHOUT ROWID: the text primary key is the only lookup path, so the table is the index.
    "CREATE TABLE tasks ("
    " task_id TEXT PRIMARY KEY, hash TEXT NOT NULL, document BLOB NOT NULL,"
    " version INTEGER NOT NULL, modify_time TEXT) WITHOUT ROWID",
    "CREATE TABLE task_types ("
    " type_id TEXT PRIMARY KEY, hash TEXT NOT NULL, document BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE dead_letters ("
    " fingerprint TEXT PRIMARY KEY, task_id TEXT, created_at TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE poll_state (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)",
    # count(*) walks the whole primary key; the store-size metric reads this counter instead,
    # kept exact by triggers (an upsert that updates fires no INSERT trigger).
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO counters (name, value) VALUES ('tasks', 0)",
    "CREATE TRIGGER tasks_counted_insert AFTER INSERT ON tasks BEGIN"
    " UPDATE counters SET value = value + 1 WHERE name = 'tasks'; END",
    "CREATE TRIGGER tasks_counted_delete AFTER DELETE ON tasks BEGIN"
    " UPDATE counters SET value = value - 1 WHERE name = 'tasks'; END",
)

_V1_POSTGRESQL = (
    "CREATE TABLE tasks ("
    " task_id TEXT PRIMARY KEY, hash TEXT NOT NULL, document BYTEA NOT NULL,"
    " version BIGINT NOT NULL, modify_time TIMESTAMPTZ)",
    "CREATE TABLE task_types ("
    " type_id TEXT PRIMARY KEY, hash TEXT NOT NULL, document BYTEA NOT NULL)",
    "CREATE TABLE dead_letters ("
    " fingerprint TEXT PRIMARY KEY, task_id TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE poll_state (id INTEGER PRIMARY KEY CHECK (id = 1), state JSONB NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO counters (name, value) VALUES ('tasks', 0)",
    # Statement-level triggers with transition tables: one counter update per page, not per
    # row. For INSERT … ON CONFLICT DO UPDATE the inserted-rows table holds only real inserts.
    "CREATE FUNCTION count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " UPDATE counters SET value = value"
    "  + (CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END) * (SELECT count(*) FROM changed_rows)"
    "  WHERE name = 'tasks';"
    " RETURN NULL; END $$",
    "CREATE TRIGGER tasks_counted_insert AFTER INSERT ON tasks"
    " REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION count_tasks()",
    "CREATE TRIGGER tasks_counted_delete AFTER DELETE ON tasks"
    " REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION count_tasks()",
)

# The unchanged path compares hashes only: an index holding (task_id, hash) answers that
# lookup without reading the documents (about 6× faster on SQLite once the table outgrows its
# page cache; an index-only scan on PostgreSQL).
_V2_SQLITE = ("CREATE INDEX tasks_hash ON tasks (task_id, hash)",)
_V2_POSTGRESQL = ("CREATE INDEX tasks_hash ON tasks (task_id) INCLUDE (hash)",)

# The outbox (docs/design.md §5): records are written in the transaction of the state they
# announce and deleted once Kafka acknowledged them. Beside each task's content hash, the hash of
# the record as last received, so an unchanged rendering skips normalisation; the fast-path
# index covers both. Task types get a version, which their event ids include.
_V3_SQLITE = (
    "ALTER TABLE tasks ADD COLUMN received INTEGER",
    "DROP INDEX tasks_hash",
    "CREATE INDEX tasks_fast_path ON tasks (task_id, hash, received)",
    "ALTER TABLE task_types ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE outbox ("
    " id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB, value BLOB, headers BLOB NOT NULL)",
)
_V3_POSTGRESQL = (
    "ALTER TABLE tasks ADD COLUMN received BIGINT",
    "DROP INDEX tasks_hash",
    "CREATE INDEX tasks_fast_path ON tasks (task_id) INCLUDE (hash, received)",
    "ALTER TABLE task_types ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
    "CREATE TABLE outbox ("
    " id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, key BYTEA, value BYTEA, headers BYTEA NOT NULL)",
)

# The reconciliation sweep (docs/design.md §3.1) reads the history by create date and must know
# which stored tasks a slice holds; vanished tasks stay as tombstones; backfill requests are
# recorded by the command and run by the leader; API requests are counted per Beijing day.
_V4_SQLITE = (
    "ALTER TABLE tasks ADD COLUMN create_date TEXT",
    "ALTER TABLE tasks ADD COLUMN vanished INTEGER NOT NULL DEFAULT 0",
    "UPDATE tasks SET create_date ="
    " substr(json_extract(CAST(document AS TEXT), '$.create_time'), 1, 10)",
    "CREATE INDEX tasks_created ON tasks (create_date)",
    "DROP INDEX tasks_fast_path",
    "CREATE INDEX tasks_fast_path ON tasks (task_id, hash, received, vanished)",
    "CREATE TABLE backfills ("
    " id INTEGER PRIMARY KEY, modify_from TEXT NOT NULL, modify_to TEXT NOT NULL,"
    " requested_at TEXT NOT NULL, state TEXT NOT NULL, next_day TEXT, pages INTEGER NOT NULL,"
    " tasks INTEGER NOT NULL, events INTEGER NOT NULL, finished_at TEXT, error TEXT)",
    "CREATE TABLE api_usage ("
    " day TEXT NOT NULL, endpoint TEXT NOT NULL, requests INTEGER NOT NULL,"
    " PRIMARY KEY (day, endpoint)) WITHOUT ROWID",
)
_V4_POSTGRESQL = (
    "ALTER TABLE tasks ADD COLUMN create_date DATE",
    "ALTER TABLE tasks ADD COLUMN vanished BOOLEAN NOT NULL DEFAULT false",
    "UPDATE tasks SET create_date ="
    " substring(convert_from(document, 'UTF8')::jsonb->>'create_time' from 1 for 10)::date",
    "CREATE INDEX tasks_created ON tasks (create_date)",
    "DROP INDEX tasks_fast_path",
    "CREATE INDEX tasks_fast_path ON tasks (task_id) INCLUDE (hash, received, vanished)",
    "CREATE TABLE backfills ("
    " id BIGSERIAL PRIMARY KEY, modify_from DATE NOT NULL, modify_to DATE NOT NULL,"
    " requested_at TIMESTAMPTZ NOT NULL, state TEXT NOT NULL, next_day DATE, pages BIGINT NOT NULL,"
    " tasks BIGINT NOT NULL, events BIGINT NOT NULL, finished_at TIMESTAMPTZ, error TEXT)",
    "CREATE TABLE api_usage ("
    " day DATE NOT NULL, endpoint TEXT NOT NULL, requests BIGINT NOT NULL,"
    " PRIMARY KEY (day, endpoint))",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "snapshots, task types, dead-letter marks, poll state", _V1_SQLITE, _V1_POSTGRESQL
    ),
    Migration(2, "covering index for the hash fast path", _V2_SQLITE, _V2_POSTGRESQL),
    Migration(3, "outbox, rendering hashes, task type versions", _V3_SQLITE, _V3_POSTGRESQL),
    Migration(4, "create dates, tombstones, backfill requests, API usage", _V4_SQLITE,
              _V4_POSTGRESQL),
)
"""Every schema step this release knows, in order; append, never edit a released step."""

LATEST_VERSION = MIGRATIONS[-1].version
"""The schema version this release writes."""


def pending(current: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The steps still to apply to a database at `current`, oldest first.

    Raises StoreConflict when the database is newer than this release knows.
    """
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise StoreConflict(
            f"the store's schema is version {current} but this release knows versions up to "
            f"{latest}: it was written by a newer waiqin-poller; upgrade this one (downgrades "
            "are not supported)"
        )
    return [step for step in migrations if step.version > current]
