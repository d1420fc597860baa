"""Keep a PostgreSQL table equal to the poller's current-state topic (one row per task).

    python examples/mirror_postgres.py --bootstrap localhost:9092 \\
        --dsn postgresql://user@db/warehouse --prefix waiqin365 --table waiqin_tasks

Each state record upserts its task's row (task_id, sequence = ce_sequence, task as jsonb)
unless the row already holds that version or a newer one; a tombstone deletes the row. The
offsets consumed are stored in `<table>_offsets` in the same transaction as the rows, so a
restart resumes exactly after the last batch applied: no consumer group, no double work, and
an older record re-delivered can never roll a row back. Run one instance per table.
docs/consumers.md shows the Kafka Connect JDBC sink configuration that does the same job.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from poller import consumer
from poller.errors import ConsumeError

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")  # a table name we may put into SQL as is


class Mirror:
    """The table and its offsets in PostgreSQL; `apply` writes one batch in one transaction."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        if not IDENTIFIER.match(table):
            raise ValueError(f"--table must be a plain lower-case identifier, got {table!r}")
        self.conn = conn
        self.table = table

    async def create(self) -> None:
        """Create the table and its offsets table if they do not exist."""
        await self.conn.execute(f"""
            CREATE TABLE IF NOT EXISTS {self.table} (
                task_id text PRIMARY KEY,
                sequence bigint NOT NULL,
                task jsonb NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {self.table}_offsets (
                topic text NOT NULL,
                partition integer NOT NULL,
                next_offset bigint NOT NULL,
                PRIMARY KEY (topic, partition)
            )""")

    async def offsets(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition, as committed with the rows."""
        rows = await self.conn.fetch(
            f"SELECT partition, next_offset FROM {self.table}_offsets WHERE topic = $1", topic)
        return {row["partition"]: row["next_offset"] for row in rows}

    async def apply(self, records: Iterable[Any]) -> int:
        """Apply consumed state records and advance the offsets, atomically; rows changed."""
        upserts, deletes, offsets = plan(records)
        async with self.conn.transaction():
            changed = 0
            if upserts:
                changed += len(await self.conn.fetch(f"""
                    INSERT INTO {self.table} (task_id, sequence, task)
                    SELECT * FROM unnest($1::text[], $2::bigint[], $3::jsonb[])
                    ON CONFLICT (task_id) DO UPDATE
                        SET sequence = EXCLUDED.sequence, task = EXCLUDED.task
                        WHERE {self.table}.sequence < EXCLUDED.sequence
                    RETURNING task_id""", *zip(*upserts, strict=True)))
            if deletes:
                ids, sequences = zip(*deletes, strict=True)
                changed += len(await self.conn.fetch(f"""
                    DELETE FROM {self.table} AS t USING unnest($1::text[], $2::bigint[]) AS d(id, seq)
                    WHERE t.task_id = d.id AND (d.seq IS NULL OR t.sequence <= d.seq)
                    RETURNING t.task_id""", ids, sequences))
            await self.conn.executemany(f"""
                INSERT INTO {self.table}_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
                ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset""",
                [(tp.topic, tp.partition, offset) for tp, offset in offsets.items()])
        return changed


def plan(records: Iterable[Any]
         ) -> tuple[list[tuple[str, int, str]], list[tuple[str, int | None]],
                    dict[TopicPartition, int]]:
    """What a batch asks of the table: the newest record per task (upserts as task_id,
    sequence, JSON text; deletes as task_id, sequence) and the next offset per partition.

    A record the library cannot read is skipped (and printed): one bad record must not stop
    the mirror.
    """
    newest: dict[str, tuple[int | None, str | None]] = {}
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        try:
            message = consumer.decode(record)
        except ConsumeError as exc:
            print(f"skipped: {exc}")
            continue
        if message.ce_type != "TaskState":
            continue
        kept = newest.get(message.task_id)
        # A key's records share a partition, in order: the later one wins unless it is older.
        if kept is None or kept[0] is None or message.sequence is None \
                or message.sequence >= kept[0]:
            newest[message.task_id] = (message.sequence, None if message.is_tombstone
                                       else _jsonb_text(record.value))
    upserts = [(task_id, seq, text) for task_id, (seq, text) in newest.items()
               if text is not None and seq is not None]
    deletes = [(task_id, seq) for task_id, (seq, text) in newest.items() if text is None]
    return upserts, deletes, offsets


def _jsonb_text(value: bytes) -> str:
    # jsonb cannot store U+0000, which JSON allows in strings: keep the rest of the task.
    return value.decode().replace("\\u0000", "\\ufffd")


async def run(bootstrap: str, dsn: str, *, prefix: str = "waiqin365", table: str = "waiqin_tasks",
              stop: asyncio.Event | None = None, options: Mapping[str, Any] | None = None) -> None:
    """Mirror `{prefix}.tasks.state` into `table` until `stop` is set."""
    stop = stop or asyncio.Event()
    _, state_topic = consumer.topics(prefix)
    conn = await asyncpg.connect(dsn)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, **(options or {}))
    try:
        mirror = Mirror(conn, table)
        await mirror.create()
        await reader.start()
        partitions = _partitions(reader, state_topic, await reader.topics())
        begins = await reader.beginning_offsets(partitions)
        stored = await mirror.offsets(state_topic)
        reader.assign(partitions)
        for tp in partitions:  # resume after the last batch applied, or read from the start
            reader.seek(tp, max(stored.get(tp.partition, 0), begins[tp]))
        while not stop.is_set():
            batches = await reader.getmany(timeout_ms=500)
            if batches:
                await mirror.apply(r for records in batches.values() for r in records)
    finally:
        await reader.stop()
        await conn.close()


def _partitions(reader: AIOKafkaConsumer, topic: str, existing: set[str]) -> list[TopicPartition]:
    found = reader.partitions_for_topic(topic) if topic in existing else None
    if not found:
        raise ConsumeError(f"topic {topic} does not exist: check --prefix (POLLER_TOPIC_PREFIX) "
                           "and that the poller runs with POLLER_STATE_TOPIC=true", topic)
    return [TopicPartition(topic, partition) for partition in sorted(found)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    parser.add_argument("--dsn", required=True, help="PostgreSQL URL, postgresql://…")
    parser.add_argument("--prefix", default="waiqin365", help="POLLER_TOPIC_PREFIX of the poller")
    parser.add_argument("--table", default="waiqin_tasks", help="the table to keep (created)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(args.bootstrap, args.dsn, prefix=args.prefix, table=args.table, stop=stop)

    try:
        asyncio.run(serve())
    except (ConsumeError, KafkaError, OSError, asyncpg.PostgresError, ValueError) as exc:
        print(f"error: {exc}")  # expected conditions: one line, no traceback
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
