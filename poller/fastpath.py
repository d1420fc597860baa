"""The fast path of normalise: the record shape the API usually sends, and time parsing.

`fast_task` returns None for anything unusual, handing the record to the general rules in
poller.normalise; for every record it accepts it must produce exactly what they produce (a
property test checks this). It reuses raw sub-objects that are already canonical (receivers,
creator) and never mutates the raw record.
"""

from __future__ import annotations

import operator
from datetime import datetime
from typing import Any, Final

from poller.errors import NormaliseError
from poller.models import BEIJING

# Raw time string -> (canonical string, datetime). A page repeats the same minutes over and
# over, so parsing each distinct string once makes times nearly free; bounded by clearing.
TIMES: dict[str, tuple[str, datetime]] = {}
TIMES_MAX: Final = 20_000  # about 7 MB; two weeks of distinct minutes

_TIME_KEYS: Final = ("create_time", "modify_time", "feedback_deadline", "latest_feedback_time")
_INT_KEYS: Final = ("task_status", "status", "execute_demand")
# The text fields every real record carries; checked in one C-level pass when all are present.
_USUAL_STR_KEYS: Final = (
    "task_id", "task_type_id", "task_content", "customer_id", "task_source_id",
    "task_source_name", "visit_implement_id", "latest_feedback_content",
)
_usual_strs = operator.itemgetter(*_USUAL_STR_KEYS)
# Quirk: numeric codes often arrive as strings ("task_status": "1"); these are the usual ones.
_SMALL_INTS: Final[dict[str, int]] = {str(n): n for n in range(10)}


def fast_task(raw: dict[str, Any], task_id: str) -> dict[str, Any] | None:
    """The canonical document of a record of the usual shape, or None to use the general rules.

    Raises NormaliseError only for what the general rules would reject the same way (a time
    string that does not parse).
    """
    doc = raw.copy()
    times_seen = _fast_times(doc, task_id)
    if times_seen < 0:
        return None
    ints = _fast_ints(doc)
    objects = _fast_objects(doc, task_id)
    if ints < 0 or objects < 0:
        return None
    return _fast_text(doc, ints + objects, times_seen)


def _fast_times(doc: dict[str, Any], task_id: str) -> int:
    """Convert the times in place; how many there are, or -1 to bail out."""
    count = 0
    times = TIMES
    for key in _TIME_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        if type(value) is not str:
            return -1
        if not value:  # Quirk: "" stands for an absent value.
            del doc[key]
            continue
        cached = times.get(value)
        if cached is None:
            cached = parse_time(value, key, task_id)
        doc[key] = cached[0]
        count += 1
    return count


def _fast_ints(doc: dict[str, Any]) -> int:
    """Convert the numeric codes in place; how many there are, or -1 to bail out."""
    count = 0
    for key in _INT_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        if type(value) is not int:
            if value == "":
                del doc[key]
                continue
            value = _SMALL_INTS.get(value) if type(value) is str else None
            if value is None:
                return -1
            doc[key] = value
        count += 1
    return count


def _fast_objects(doc: dict[str, Any], task_id: str) -> int:
    """Canonicalise receivers, feedback and creator in place; how many, or -1 to bail out."""
    count = 0
    value = doc.get("receivers")
    if value is not None:
        items = _fast_receivers(value) if type(value) is list else None
        if items is None:
            return -1
        if items:
            doc["receivers"] = items
            count += 1
        else:  # an empty list is absent
            del doc["receivers"]
    value = doc.get("feedback_detail")
    if value is not None:
        items = _fast_feedback(value, task_id) if type(value) is list else None
        if items is None:
            return -1
        if items:
            doc["feedback_detail"] = items
            count += 1
        else:  # an empty list is absent
            del doc["feedback_detail"]
    value = doc.get("creator")
    if value is not None:
        if _plain_person(value) is None:
            return -1
        count += 1
    return count


def _fast_text(doc: dict[str, Any], known: int, times_seen: int) -> dict[str, Any] | None:
    """`doc` when every value but the `known` non-text ones is a string (dropping "")."""
    try:
        usual = _usual_strs(doc)
    except KeyError:
        usual = None
    # The usual shape: exactly the usual text keys besides the ones already checked.
    if usual is not None and len(doc) == len(_USUAL_STR_KEYS) + known + times_seen:
        try:
            "".join(usual)  # TypeError unless every one is a string
        except TypeError:
            return None
        if all(usual):
            return doc
    types = list(map(type, doc.values()))
    if len(types) - types.count(str) != known:
        return None
    if "" in doc.values():  # Quirk: "" stands for an absent value.
        return {key: value for key, value in doc.items() if value != ""}
    return doc


def _plain_person(item: Any) -> str | None:
    """The id of {"id": "...", "name": "..."} with both non-empty strings, else None."""
    try:
        person_id = item["id"]
        name = item["name"]
    except (KeyError, TypeError):
        return None
    if (type(item) is not dict or len(item) != 2 or type(person_id) is not str
            or type(name) is not str or not person_id or not name):
        return None
    return person_id


def _fast_receivers(value: list[Any]) -> list[dict[str, Any]] | None:
    ids = []
    for item in value:
        person_id = _plain_person(item)
        if person_id is None:
            return None
        ids.append(person_id)
    if len(ids) == 1:
        return value
    if len(ids) == 2:  # the usual case: no set needed
        if ids[0] == ids[1]:
            return None  # duplicates: merging is the general path's job
        return value if ids[0] < ids[1] else [value[1], value[0]]
    if len(set(ids)) != len(ids):
        return None
    return value if ids == sorted(ids) else sorted(value, key=_receiver_id)


def _receiver_id(item: dict[str, Any]) -> str:
    return item["id"]  # type: ignore[no-any-return]


def _fast_feedback(value: list[Any], task_id: str) -> list[dict[str, Any]] | None:
    entries = []
    for index, item in enumerate(value):
        if type(item) is not dict or len(item) != 3:
            return None
        when = item.get("feedback_time")
        visit = item.get("feedback_visit_id")
        content = item.get("feedback_content")
        if (type(when) is not str or type(visit) is not str or type(content) is not str
                or not when or not visit or not content):
            return None
        cached = TIMES.get(when)
        if cached is None:
            cached = parse_time(when, f"feedback_detail[{index}].feedback_time", task_id)
        entries.append({
            "feedback_content": content, "feedback_time": cached[0], "feedback_visit_id": visit,
        })
    if len(entries) > 1:
        keys = [feedback_key(entry) for entry in entries]
        if len(set(keys)) != len(keys):
            return None
        if keys != sorted(keys):
            entries.sort(key=feedback_key)
    return entries


def parse_time(value: str, where: str, task_id: str | None) -> tuple[str, datetime]:
    """Read `yyyy-MM-dd HH:mm[:ss]` Beijing time (the API's format) or any ISO 8601 time.

    Returns (canonical RFC 3339 string, aware datetime) and caches it; raises NormaliseError.
    """
    # Quirk: the API's times are "yyyy-MM-dd HH:mm", Beijing time (UTC+8), with no zone.
    if len(value) == 16 and value[10] == " " and value.isascii():
        parsed = _api_minute(value)
        if parsed is not None:
            return _remember(value, (f"{value[:10]}T{value[11:]}:00+08:00", parsed))
    # fromisoformat alone also takes "20201119"; insist on a dashed date first.
    if len(value) < 10 or value[4] != "-" or value[7] != "-":
        raise NormaliseError(
            f"{where} is not a time like 'yyyy-MM-dd HH:mm', got {value!r}", task_id=task_id,
            kind="bad_time",
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise NormaliseError(
            f"{where} is not a time like 'yyyy-MM-dd HH:mm', got {value!r}", task_id=task_id,
            kind="bad_time",
        ) from None
    # Quirk: API times carry no zone and are Beijing time (UTC+8) whatever our own zone is.
    parsed = parsed.replace(tzinfo=BEIJING) if parsed.tzinfo is None else parsed.astimezone(BEIJING)
    parsed = parsed.replace(microsecond=0)
    return _remember(value, (parsed.isoformat(), parsed))


def _api_minute(value: str) -> datetime | None:
    """"yyyy-MM-dd HH:mm" as a Beijing datetime, None when it is not exactly that shape."""
    digits = value[0:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16]
    if value[4] != "-" or value[7] != "-" or value[13] != ":" or not digits.isdigit():
        return None
    try:
        return datetime(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]),
                        int(digits[8:10]), int(digits[10:12]), tzinfo=BEIJING)
    except ValueError:  # out of range (month 13): fromisoformat below reports it
        return None


def _remember(value: str, result: tuple[str, datetime]) -> tuple[str, datetime]:
    if len(TIMES) >= TIMES_MAX:
        TIMES.clear()
    TIMES[value] = result
    return result


def feedback_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    """The identity of a canonical feedback entry: (time, visit id, content), "" when absent."""
    return (
        entry.get("feedback_time", ""),
        entry.get("feedback_visit_id", ""),
        entry.get("feedback_content", ""),
    )


