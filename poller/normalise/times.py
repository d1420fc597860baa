"""Pure: Waiqin365 time strings -> canonical RFC 3339 Beijing times, e.g. "2020-11-19T10:33:00+08:00"."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final

from poller.errors import NormaliseError
from poller.models import BEIJING

# A validation table for the API's own "yyyy-MM-dd HH:mm": a page holds thousands of times, and
# two lookups of slices cost a fraction of building a datetime. Bounded: the dates of
# 2000-2099 (36,525) and the 1,440 minutes of a day; other dates take the general parser, which
# gives the same result.
_FAST_DATES: Final = (date(2000, 1, 1), date(2100, 1, 1))
# "yyyy-MM-dd" -> itself (one string object for key and value: about 3 MB in all).
_DATES: Final = {text: text for text in (
    (_FAST_DATES[0] + timedelta(days=n)).isoformat() for n in range((_FAST_DATES[1] - _FAST_DATES[0]).days)
)}
# "HH:mm" -> the canonical rest of the time, "THH:mm:00+08:00".
_MINUTES: Final = {f"{hour:02d}:{minute:02d}": f"T{hour:02d}:{minute:02d}:00+08:00"
                   for hour in range(24) for minute in range(60)}


def api_minute(value: str) -> str | None:
    """The canonical form of an exact, valid "yyyy-MM-dd HH:mm" (years 2000-2099), else None.

    None means "not this exact shape", not "invalid": `canonical` decides those.
    """
    # Quirk: the API's times are "yyyy-MM-dd HH:mm", Beijing time (UTC+8), with no zone.
    if len(value) == 16:
        rest = _MINUTES.get(value[11:])
        if rest is not None and value[10] == " ":
            day = _DATES.get(value[:10])
            if day is not None:
                return day + rest
    return None


def canonical(value: str, where: str, task_id: str | None) -> str:
    """The canonical form of `yyyy-MM-dd HH:mm[:ss]` Beijing time or any ISO 8601 time.

    Seconds are kept, fractions dropped; a time with a zone is converted to Beijing time.
    Raises NormaliseError (kind "bad_time") for anything else, and for a time that Beijing
    time or UTC cannot represent (before year 1 or after 9999).
    """
    minute = api_minute(value)
    if minute is not None:
        return minute
    # fromisoformat alone also takes "20201119"; insist on a dashed date first.
    if len(value) < 10 or value[4] != "-" or value[7] != "-":
        raise _bad_time(where, value, task_id)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _bad_time(where, value, task_id) from None
    try:
        # Quirk: API times carry no zone and are Beijing time (UTC+8) whatever our own zone is.
        parsed = parsed.replace(tzinfo=BEIJING) if parsed.tzinfo is None else parsed.astimezone(BEIJING)
        parsed.astimezone(UTC)  # consumers convert: it must exist in UTC too
    except OverflowError:  # e.g. 9999-12-31T23:59:00-05:00 is in year 10000 in Beijing
        raise NormaliseError(
            f"{where} is out of range (years 1-9999 in Beijing time and UTC), got {value!r}",
            task_id=task_id, kind="bad_time",
        ) from None
    return parsed.replace(microsecond=0).isoformat()


def to_datetime(canonical_time: str) -> datetime:
    """The aware datetime of a canonical time (UTC+8)."""
    return datetime.fromisoformat(canonical_time)


def _bad_time(where: str, value: str, task_id: str | None) -> NormaliseError:
    return NormaliseError(
        f"{where} is not a time like 'yyyy-MM-dd HH:mm', got {value!r}", task_id=task_id,
        kind="bad_time",
    )
