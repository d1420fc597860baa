"""Small value helpers shared by the SQL backends: de-duplication, time zones, outbox rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar, cast

import orjson

from poller.models import BEIJING, OutboundRecord, OutboxEntry, TopicKind
from poller.redact import describe_store_url

T = TypeVar("T")


def last_wins(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """The items with duplicate keys removed, keeping the last one (the latest observation).

    PostgreSQL refuses an upsert that touches one row twice, and a page may repeat a task
    (pagination drift), so both backends write one row per key.
    """
    return list({key(item): item for item in items}.values())


def as_beijing(value: datetime | None) -> datetime | None:
    """The same instant in Beijing time; a naive time is taken as Beijing (the API's zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=BEIJING)
    return value.astimezone(BEIJING)


def describe_url(url: str) -> str:
    """The store URL without any password (user info, query string, key=value), for logs and
    error messages."""
    return describe_store_url(url)


def encode_headers(headers: Iterable[tuple[str, bytes]]) -> bytes:
    """Kafka headers as stored in an outbox row (a JSON list of [name, UTF-8 value] pairs)."""
    return orjson.dumps([[name, value.decode()] for name, value in headers])


def decode_headers(stored: bytes) -> tuple[tuple[str, bytes], ...]:
    """The headers of an outbox row, as `encode_headers` wrote them."""
    return tuple((name, value.encode()) for name, value in orjson.loads(stored))


def outbox_row(record: OutboundRecord) -> tuple[str, bytes | None, bytes | None, bytes]:
    """(topic, key, value, headers) of an outbox row."""
    return record.topic, record.key, record.value, encode_headers(record.headers)


def outbox_entry(row_id: int, topic: str, key: bytes | None, value: bytes | None,
                 headers: bytes) -> OutboxEntry:
    """The OutboxEntry of a stored row."""
    record = OutboundRecord(
        topic=cast(TopicKind, topic), key=None if key is None else bytes(key),
        value=None if value is None else bytes(value), headers=decode_headers(bytes(headers)),
    )
    return OutboxEntry(int(row_id), record)
