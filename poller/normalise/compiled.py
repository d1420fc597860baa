"""Pure: the fast path for a record still in bytes: msgspec types compiled from the field table.

An API that renders every response anew makes every record new, so each one is normalised.
Here its bytes are decoded straight into types built from `fields.TASK` (in C, no dict of the
whole record), the few conversions the rules ask for are applied, and the canonical document is
encoded from them (fields in sorted order, absent values omitted). Only the usual shape is
accepted, as on `fast.py`'s path: every known field of its usual type, no unknown field, no
null; anything else returns None and is parsed and normalised by the rules, so for every record
it accepts the document is byte for byte what `normalise.task` makes of the parsed record (a
property test checks this).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec

from poller.normalise.fast import CODES
from poller.normalise.fields import TASK, Kind, Table
from poller.normalise.times import api_minute

_NON_EMPTY: Final = Annotated[str, msgspec.Meta(min_length=1)]
ABSENT: Final = ""  # the default of every field: "" and a missing field both mean absent


def _member_type(table: Table, name: str) -> type[msgspec.Struct]:
    """An object of a SET or OBJECT field: exactly its fields, each a non-empty string."""
    if any(spec.kind not in (Kind.TEXT, Kind.TIME) for spec in table.fields.values()):
        raise ValueError("the compiled path reads objects of TEXT and TIME fields only")
    return msgspec.defstruct(name, [(field, _NON_EMPTY) for field in sorted(table.fields)],
                             forbid_unknown_fields=True, gc=False)


def _field_type(name: str, kind: Kind, table: Table | None) -> Any:
    if kind is Kind.CODE:
        return int | str  # Quirk: codes drift between numbers and numeric strings.
    if table is None:
        return str
    member = _member_type(table, name)
    return (member if kind is Kind.OBJECT else list[member]) | str  # type: ignore[valid-type]


_TASK: Final = msgspec.defstruct(
    "CompiledTask",
    # Sorted: the encoder writes fields in this order, which is the canonical key order.
    [(name, _field_type(name, spec.kind, spec.table), ABSENT)
     for name, spec in sorted(TASK.fields.items())],
    # gc=False: decoded values hold no cycles, and untracked objects spare the collector.
    forbid_unknown_fields=True, omit_defaults=True, gc=False,
)
_DECODE: Final = msgspec.json.Decoder(_TASK).decode
_ENCODE: Final = msgspec.json.Encoder().encode

_TIME_KEYS: Final = TASK.keys_of(Kind.TIME)
_CODE_KEYS: Final = TASK.keys_of(Kind.CODE)
_OBJECT_KEYS: Final = TASK.keys_of(Kind.OBJECT)
_REQUIRED: Final = TASK.required


def _set_reader(table: Table) -> Callable[[list[Any]], bool]:
    """Canonicalise a SET's members in place (times, then sorted by the table's key); False when
    two members share a key (merging them is the rules' job) or a time is not the API's."""
    times = table.keys_of(Kind.TIME)
    key = operator.attrgetter(*table.key)

    def read(members: list[Any]) -> bool:
        for member in members:
            for name in times:
                minute = api_minute(getattr(member, name))
                if minute is None:
                    return False
                setattr(member, name, minute)
        if len(members) > 1:
            members.sort(key=key)
            keys = list(map(key, members))
            if any(map(operator.eq, keys, keys[1:])):
                return False
        return True

    return read


_SETS: Final = tuple((name, _set_reader(spec.table)) for name, spec in TASK.fields.items()
                     if spec.kind is Kind.SET and spec.table is not None)


def document(body: Any) -> tuple[bytes, str, str | None, str | None] | None:
    """The canonical document of a record's JSON bytes, with its task_id, task_type_id and
    modify_time (canonical), or None when the record is not of the usual shape."""
    try:
        task: Any = _DECODE(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None  # a null, a number in a text field, an unknown field, ...: the rules decide
    for name in _REQUIRED:
        if getattr(task, name) == ABSENT:
            return None
    if not (_times(task) and _codes(task) and _objects(task) and _sets(task)):
        return None
    type_id = task.task_type_id
    modify = task.modify_time
    return _ENCODE(task), task.task_id, type_id or None, modify or None


_TIME_VALUES: Final = operator.attrgetter(*_TIME_KEYS)


def _times(task: Any) -> bool:
    for name, value in zip(_TIME_KEYS, _TIME_VALUES(task), strict=True):
        if value:
            minute = api_minute(value)
            if minute is None:
                return False
            setattr(task, name, minute)
    return True


def _codes(task: Any) -> bool:
    for name in _CODE_KEYS:
        value = getattr(task, name)
        if value == ABSENT:
            continue
        number = CODES.get(value) if type(value) is not bool else None
        if number is None:
            return False
        setattr(task, name, number)
    return True


def _objects(task: Any) -> bool:
    # An object's members were checked by its type; a non-empty string instead is not usual.
    for name in _OBJECT_KEYS:
        value = getattr(task, name)
        if type(value) is str and value:
            return False
    return True


def _sets(task: Any) -> bool:
    for name, read in _SETS:
        value = getattr(task, name)
        if type(value) is str:
            if value:
                return False
        elif not value:
            setattr(task, name, ABSENT)  # an empty list is absent
        elif not read(value):
            return False
    return True
