"""Pure: a raw Waiqin365 record -> its canonical JSON document and content hash (docs/design.md §3).

Canonical form (the rules in `rules.py`, the fields in `fields.py`):
- keys sorted, absent values dropped (None, "" and empty lists/objects all mean "absent");
- `task_status`, `status`, `execute_demand` are integers; ids and text are strings;
- times are RFC 3339 in Beijing time with seconds, e.g. "2020-11-19T10:33:00+08:00";
- `receivers` is a set by id (sorted by id, duplicates merged); `feedback_detail` is a set by
  (feedback_time, feedback_visit_id, feedback_content), sorted oldest first;
- unknown fields are kept, normalised recursively: numbers become decimal strings, list order
  is kept.

`task()` runs for every record whose rendering the store has not seen (`received_hash`), so it
keeps no cache: the fast path (`fast.py`) handles the API's usual shape in plain dict and string
work, the general rules decide the rest, and pydantic is only paid in `to_task()`. A record
still in bytes takes `encoded_task()` first: the same usual shape, decoded and encoded in C.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from msgspec import Raw

from poller.errors import NormaliseError
from poller.models import NormalisedTask, Task, TypeSnapshot
from poller.normalise import compiled, digest, fast, lenient, rules, times
from poller.normalise.digest import content_hash, received_hash, rendering_hash
from poller.normalise.fields import TASK, TASK_TYPE
from poller.normalise.rules import NORMALISATION_VERSION, feedback_key

__all__ = [
    "NORMALISATION_VERSION",
    "content_hash",
    "encoded_task",
    "feedback_key",
    "fingerprint",
    "general_document",
    "received_hash",
    "rendering_hash",
    "task",
    "task_id_of",
    "task_type",
    "to_task",
]


def task(raw: object) -> NormalisedTask:
    """Normalise one queryTask record.

    Raises NormaliseError, and nothing else, for any value that is not a readable record (not
    a JSON object, no non-empty task_id, a field whose shape cannot be read, a time out of
    range, nesting too deep); it carries the task_id when readable and a short `kind`.
    """
    if type(raw) is not dict:
        raise NormaliseError(f"record is not a JSON object but {rules.json_type(raw)}",
                             kind="not_object")
    task_id = _task_id(raw)
    doc = fast.document(raw)
    try:
        document = orjson.dumps(doc, option=rules.DUMP_OPTS) if doc is not None else None
    except TypeError:  # e.g. a lone surrogate: the general rules name the field
        document = None
    if doc is None or document is None:
        doc = general_document(raw)
        document = rules.encode(doc, "", task_id)
    modify = doc.get("modify_time")
    return _normalised(
        task_id,
        # orjson hands back its whole working buffer (about 8 KiB for a 1 KiB document);
        # snapshots keep many of these, so keep an exact-size copy instead.
        memoryview(document).tobytes(),
        content_hash(document),
        doc.get("task_type_id"),
        times.to_datetime(modify) if modify is not None else None,
    )


def encoded_task(body: bytes | Raw) -> NormalisedTask | None:
    """Normalise one queryTask record from its JSON bytes, when it has the API's usual shape
    (`compiled.py`); None otherwise: then `task` of the parsed record decides."""
    result = compiled.document(body)
    if result is None:
        return None
    document, task_id, type_id, modify = result
    return _normalised(task_id, document, content_hash(document), type_id,
                       times.to_datetime(modify) if modify is not None else None)


def general_document(raw: dict[str, Any]) -> dict[str, Any]:
    """The canonical document by the general rules alone: the reference for the fast path."""
    return rules.read_object(raw, TASK, "", _task_id(raw))


def task_id_of(raw: object) -> str | None:
    """The readable task_id of any record, malformed or not (None when there is none)."""
    if type(raw) is not dict:
        return None
    try:
        value = rules.text(raw.get("task_id"), "task_id", None)
    except NormaliseError:
        return None
    return value if type(value) is str else None


def fingerprint(raw: object) -> str:
    """The dead-letter key of a record: a hash of its canonical form as far as the rules go.

    A re-rendering of the same record (number vs string, key order, "" vs missing) has the
    same fingerprint, so it is dead-lettered once. Never raises.
    """
    canonical = lenient.canonical(raw)
    return digest.fingerprint(None if canonical is rules.ABSENT else canonical)


def to_task(document: bytes) -> Task:
    """The typed Task of a canonical document (only changed tasks pay for pydantic)."""
    return Task.model_validate_json(document)


def task_type(raw: object) -> TypeSnapshot:
    """Normalise one queryTaskType record ({"type_id", "type_name", ...extra}).

    Raises NormaliseError when it is not an object, has no non-empty type_id, or has a field
    whose shape cannot be read.
    """
    if type(raw) is not dict:
        raise NormaliseError(f"task type is not a JSON object but {rules.json_type(raw)}",
                             kind="not_object")
    type_id = raw.get("type_id")
    try:
        type_id = rules.text(type_id, "type_id", None) if type_id is not None else None
    except NormaliseError:
        type_id = None
    if type(type_id) is not str:
        raise NormaliseError(f"task type has no non-empty type_id (got {rules.shown(raw.get('type_id'))})",
                             kind="no_id")
    document = rules.encode(rules.read_object(raw, TASK_TYPE, "", None), "", None)
    return TypeSnapshot(type_id=type_id, hash=content_hash(document), document=document)


def _task_id(raw: dict[Any, Any]) -> str:
    task_id = raw.get("task_id")
    if type(task_id) is str and task_id:  # the usual case, first
        return task_id
    task_id = task_id_of(raw)
    if task_id is None:
        raise NormaliseError(f"record has no non-empty task_id (got {rules.shown(raw.get('task_id'))})",
                             kind="no_id")
    return task_id


def _normalised(
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
