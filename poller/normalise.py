"""Pure: a raw Waiqin365 record -> its canonical JSON document and content hash (docs/design.md §3).

The unchanged path (normalise + hash + a string compare) runs for every task of every page, so
`task()` is plain dict/str work with fast paths; pydantic is only paid in `to_task()`, i.e. by
tasks that changed.

Canonical form:
- keys sorted, absent values dropped (None, "" and empty lists/objects all mean "absent");
- `task_status`, `status`, `execute_demand` are ints; ids and text are strings;
- times are RFC 3339 in Beijing time with seconds, e.g. "2020-11-19T10:33:00+08:00";
- `receivers` is a set by id (sorted by id, duplicates merged); `feedback_detail` is a set by
  (feedback_time, feedback_visit_id, feedback_content), sorted oldest first;
- unknown fields are kept, normalised recursively: numbers become decimal strings (the API's
  type drift means 1 and "1" cannot be told apart), list order is kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import orjson
import xxhash

from poller import fastpath
from poller.errors import NormaliseError
from poller.models import NormalisedTask, Task, TypeSnapshot

# Bump when a rule above changes: every hash then differs, the field diff finds no semantic
# change and the store is rewritten silently (no events), instead of flooding consumers.
NORMALISATION_VERSION: Final = 1

_HASH_PREFIX: Final = f"waiqin-poller/{NORMALISATION_VERSION}\n".encode()
_DUMP_OPTS: Final = orjson.OPT_SORT_KEYS

_STR, _INT, _TIME, _PERSON, _RECEIVERS, _FEEDBACK = range(6)

# How each known task field is read; anything else is an unknown field (kept, generic rules).
_TASK_FIELDS: Final[dict[str, int]] = {
    "task_id": _STR,
    "task_type_id": _STR,
    "task_content": _STR,
    "customer_id": _STR,
    "task_source_id": _STR,
    "task_source_name": _STR,
    "visit_implement_id": _STR,
    "achievement": _STR,
    "latest_feedback_content": _STR,
    "task_status": _INT,
    "status": _INT,
    "execute_demand": _INT,
    "feedback_deadline": _TIME,
    "create_time": _TIME,
    "modify_time": _TIME,
    "latest_feedback_time": _TIME,
    "creator": _PERSON,
    "receivers": _RECEIVERS,
    "feedback_detail": _FEEDBACK,
}
_PERSON_FIELDS: Final[dict[str, int]] = {"id": _STR, "name": _STR}
_FEEDBACK_FIELDS: Final[dict[str, int]] = {
    "feedback_time": _TIME,
    "feedback_visit_id": _STR,
    "feedback_content": _STR,
}
_TYPE_FIELDS: Final[dict[str, int]] = {"type_id": _STR, "type_name": _STR}

# Record-as-received hash -> result; FIFO-bounded (~1 KB per entry: the canonical document).
_MEMO: dict[int, NormalisedTask] = {}
_MEMO_MAX: Final = 20_000


class _Absent(Exception):
    """Internal signal: the value normalises to nothing and the key is dropped."""


def task(raw: object) -> NormalisedTask:
    """Normalise one queryTask record.

    Raises NormaliseError (with the task_id when readable) when the record is not a JSON
    object, has no non-empty task_id, or has a field whose shape cannot be read.
    """
    if type(raw) is not dict:
        raise NormaliseError(
            f"record is not a JSON object but {_json_type(raw)}", kind="not_object"
        )
    # Every cycle re-reads the open window, so most records are byte-for-byte what we saw a
    # minute ago: a hash of the record as received finds the earlier result for the price of
    # one dump + hash. Same input, same output: the memo changes speed, never results.
    try:
        seen_as = xxhash.xxh3_128_intdigest(orjson.dumps(raw, option=_DUMP_OPTS))
    except TypeError:  # non-JSON values (cannot come from the API); no memo then
        return _task(raw)
    memo = _MEMO
    result = memo.get(seen_as)
    if result is None:
        result = _task(raw)
        if len(memo) >= _MEMO_MAX:
            del memo[next(iter(memo))]  # oldest first
        memo[seen_as] = result
    return result


def clear_caches() -> None:
    """Forget memoised records and parsed times (benchmarks measure the cold path with it)."""
    _MEMO.clear()
    fastpath.TIMES.clear()


def clear_memo() -> None:
    """Forget memoised records only."""
    _MEMO.clear()


def _task(raw: dict[str, Any]) -> NormalisedTask:
    task_id = _task_id(raw)
    doc = fastpath.fast_task(raw, task_id)
    if doc is None:  # something unusual: the general rules decide (or raise)
        doc = _object(raw, _TASK_FIELDS, "", task_id)
    try:
        # orjson hands back its whole working buffer (about 8 KiB for a 1 KiB document); the
        # memo keeps thousands of these, so keep an exact-size copy instead.
        document = memoryview(orjson.dumps(doc, option=_DUMP_OPTS)).tobytes()
    except TypeError as exc:  # orjson refuses integers beyond 64 bits
        raise NormaliseError(f"record holds an unreadable value: {exc}", task_id=task_id,
                             kind="bad_number") from None
    modify = doc.get("modify_time")
    return _new_normalised(
        task_id,
        document,
        _hash(document),
        doc.get("task_type_id"),
        _modify_time(raw["modify_time"], task_id) if modify is not None else None,
    )


def general_document(raw: dict[str, Any]) -> dict[str, Any]:
    """The canonical document by the general rules alone: the reference for the fast path."""
    return _object(raw, _TASK_FIELDS, "", _task_id(raw))


def _new_normalised(
    task_id: str, document: bytes, hash_: str, type_id: str | None, modify_time: datetime | None
) -> NormalisedTask:
    """NormalisedTask(...) without the frozen dataclass's per-field __setattr__ detour (~3x)."""
    result = object.__new__(NormalisedTask)
    _SET_TASK_ID(result, task_id)
    _SET_DOCUMENT(result, document)
    _SET_HASH(result, hash_)
    _SET_TYPE_ID(result, type_id)
    _SET_MODIFY_TIME(result, modify_time)
    return result


_SET_TASK_ID, _SET_DOCUMENT, _SET_HASH, _SET_TYPE_ID, _SET_MODIFY_TIME = (
    NormalisedTask.__dict__[name].__set__
    for name in ("task_id", "document", "hash", "type_id", "modify_time")
)


def _modify_time(value: str, task_id: str) -> datetime:
    cached = fastpath.TIMES.get(value)
    if cached is None:  # evicted by a cache clear while this record was read
        cached = fastpath.parse_time(value, "modify_time", task_id)
    return cached[1]


def to_task(document: bytes) -> Task:
    """The typed Task of a canonical document (only changed tasks pay for pydantic)."""
    return Task.model_validate_json(document)


def task_type(raw: object) -> TypeSnapshot:
    """Normalise one queryTaskType record ({"type_id", "type_name", ...extra}).

    Raises NormaliseError when it is not an object or has no non-empty type_id.
    """
    if not isinstance(raw, dict):
        raise NormaliseError(f"task type is not a JSON object but {_json_type(raw)}",
                             kind="not_object")
    type_id = raw.get("type_id")
    if isinstance(type_id, int) and not isinstance(type_id, bool):
        type_id = str(type_id)
    if not isinstance(type_id, str) or not type_id:
        raise NormaliseError(f"task type has no non-empty type_id (got {type_id!r})", kind="no_id")
    doc = _object(raw, _TYPE_FIELDS, "", None)
    document = orjson.dumps(doc, option=_DUMP_OPTS)
    return TypeSnapshot(type_id=type_id, hash=_hash(document), document=document)


def fingerprint(raw: object) -> str:
    """A stable hash of a record as received, so the same bad record is dead-lettered once."""
    try:
        body = orjson.dumps(raw, option=_DUMP_OPTS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # not JSON-shaped at all (cannot come from the API, but never crash)
        body = repr(raw).encode()
    return xxhash.xxh3_128_hexdigest(body)


def content_hash(document: bytes) -> str:
    """The content hash of a canonical document, normalisation version included."""
    return _hash(document)


def _hash(document: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(_HASH_PREFIX + document)


def _task_id(raw: dict[str, Any]) -> str:
    value = raw.get("task_id")
    if type(value) is str and value:
        return value
    # Quirk: ids drift between JSON numbers and strings; a number is the same id.
    if type(value) is int:
        return str(value)
    raise NormaliseError(f"record has no non-empty task_id (got {value!r})", kind="no_id")


def _object(
    raw: dict[str, Any], fields: dict[str, int], path: str, task_id: str | None
) -> dict[str, Any]:
    """Normalise an object whose known keys are described by `fields`; absent values dropped."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        # Quirk: empty strings (and nulls) stand for absent values.
        if value is None or value == "":
            continue
        kind = fields.get(key)
        if kind == _STR and type(value) is str:  # the common case, first
            out[key] = value
            continue
        try:
            out[key] = _value(kind, value, path + key, task_id)
        except _Absent:
            continue
    return out


def _value(kind: int | None, value: Any, where: str, task_id: str | None) -> Any:
    if kind is None:
        return _generic(value)
    if kind == _STR:
        return _string(value, where, task_id)
    if kind == _INT:
        return _integer(value, where, task_id)
    if kind == _TIME:
        return _time(value, where, task_id)
    if kind == _PERSON:
        return _person(value, where, task_id)
    if kind == _RECEIVERS:
        return _receivers(value, where, task_id)
    return _feedback(value, where, task_id)


def _string(value: Any, where: str, task_id: str | None) -> str:
    # Quirk: ids come as numbers or strings ("task_type_id": 10001 vs "10001").
    if type(value) is int:
        return str(value)
    if type(value) is float and value.is_integer():
        return str(int(value))
    raise NormaliseError(f"{where} must be a string, got {_json_type(value)}", task_id=task_id,
                         kind="bad_shape")


def _integer(value: Any, where: str, task_id: str | None) -> int:
    if type(value) is int:
        return value
    # Quirk: numeric codes come as numbers or strings ("status": 1 vs "1").
    if type(value) is str:
        try:
            return int(value)
        except ValueError:
            pass
    elif type(value) is float and value.is_integer():
        return int(value)
    raise NormaliseError(f"{where} must be an integer, got {value!r}", task_id=task_id,
                         kind="bad_number")


def _time(value: Any, where: str, task_id: str | None) -> str:
    if type(value) is not str:
        raise NormaliseError(
            f"{where} must be a time string, got {_json_type(value)}", task_id=task_id,
            kind="bad_time",
        )
    cached = fastpath.TIMES.get(value)
    if cached is None:
        cached = fastpath.parse_time(value, where, task_id)
    return cached[0]


def _person(value: Any, where: str, task_id: str | None) -> dict[str, Any]:
    if type(value) is not dict:
        raise NormaliseError(
            f"{where} must be an object, got {_json_type(value)}", task_id=task_id,
            kind="bad_shape",
        )
    person = _object(value, _PERSON_FIELDS, where + ".", task_id)
    if not person:
        raise _Absent
    if "id" not in person:
        raise NormaliseError(f"{where} has no id: {value!r}", task_id=task_id, kind="bad_shape")
    return person


def _receivers(value: Any, where: str, task_id: str | None) -> list[dict[str, Any]]:
    if type(value) is not list:
        raise NormaliseError(
            f"{where} must be a list of objects, got {_json_type(value)}", task_id=task_id,
            kind="bad_shape",
        )
    by_id: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(value):
        person = _item(_person, item, f"{where}[{index}]", task_id)
        if person is None:
            continue
        seen = by_id.get(person["id"])
        # A set by id: duplicates merge; which rendering wins must not depend on list order.
        if seen is None or _dump(person) > _dump(seen):
            by_id[person["id"]] = person
    if not by_id:
        raise _Absent
    return [by_id[key] for key in sorted(by_id)]


def _feedback(value: Any, where: str, task_id: str | None) -> list[dict[str, Any]]:
    if type(value) is not list:
        raise NormaliseError(
            f"{where} must be a list of objects, got {_json_type(value)}", task_id=task_id,
            kind="bad_shape",
        )
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    for index, item in enumerate(value):
        if type(item) is not dict:
            raise NormaliseError(
                f"{where}[{index}] must be an object, got {_json_type(item)}", task_id=task_id,
                kind="bad_shape",
            )
        entry = _object(item, _FEEDBACK_FIELDS, f"{where}[{index}].", task_id)
        if not entry:
            continue
        key = fastpath.feedback_key(entry)
        seen = entries.get(key)
        if seen is None or _dump(entry) > _dump(seen):
            entries[key] = entry
    if not entries:
        raise _Absent
    # Canonical times are fixed-width +08:00 strings, so string order is time order.
    return [entries[key] for key in sorted(entries)]


def _item(read: Any, item: Any, where: str, task_id: str | None) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = read(item, where, task_id)
    except _Absent:
        return None
    return result


def _generic(value: Any) -> Any:
    """Unknown fields: absent dropped, numbers as decimal strings, objects/lists recursively."""
    kind = type(value)
    if kind is str or kind is bool:
        return value
    if kind is int:
        return str(value)
    if kind is float:
        return str(int(value)) if value.is_integer() else repr(value)
    if kind is dict:
        return _generic_object(value)
    if kind is list:
        return _generic_list(value)
    return value


def _generic_object(value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if item is not None and item != "":
            try:
                out[key] = _generic(item)
            except _Absent:
                continue
    if not out:
        raise _Absent
    return out


def _generic_list(value: list[Any]) -> list[Any]:
    items = []
    for item in value:
        if item is not None and item != "":
            try:
                items.append(_generic(item))
            except _Absent:
                continue
    if not items:
        raise _Absent
    return items


def _dump(value: Any) -> bytes:
    return orjson.dumps(value, option=_DUMP_OPTS)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def received_hash(raw: object) -> int:
    """A hash of the record exactly as received (signed 64 bits); never raises."""
    try:
        body = orjson.dumps(raw)
    except TypeError:
        body = repr(raw).encode()
    value = xxhash.xxh3_64_intdigest(body, seed=NORMALISATION_VERSION)
    return value - (1 << 64) if value >= 1 << 63 else value


def task_id_of(raw: object) -> str | None:
    """The readable task_id of any record, malformed or not; never raises."""
    if type(raw) is not dict:
        return None
    try:
        return _task_id(raw)
    except NormaliseError:
        return None
