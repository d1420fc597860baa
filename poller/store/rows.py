"""Small value helpers shared by the SQL backends: de-duplication and time zone handling."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

from poller.models import BEIJING

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
    """The store URL without a password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
