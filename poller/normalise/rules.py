"""Pure: the general normalisation rules (docs/design.md §3), applied as the field table says.

- absent values are dropped: None, "" and objects or lists that normalise to nothing;
- TEXT fields are strings (a number is the same text), CODE fields integers (a numeric string
  is the same code), TIME fields canonical Beijing times (`times.py`);
- OBJECT fields are read by their table; SET fields are sets of such objects by the table's
  key: duplicates merge (the larger rendering wins, so list order never matters), sorted by key;
- unknown fields are kept, normalised recursively: numbers become decimal strings (the API's
  type drift means 1 and "1" cannot be told apart), list order is kept.

Every function raises NormaliseError, and nothing else, for a value it cannot read.
"""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from itertools import repeat
from typing import Any, Final

import orjson

from poller.errors import NormaliseError
from poller.normalise import times
from poller.normalise.fields import FEEDBACK, MAX_DEPTH, Field, Kind, Table

# Bump when a rule here or in the field table changes: every hash then differs, the field diff
# finds no semantic change and the store is rewritten silently (no events), instead of
# flooding consumers.
NORMALISATION_VERSION: Final = 1

DUMP_OPTS: Final = orjson.OPT_SORT_KEYS  # canonical JSON: keys sorted, UTF-8, compact

# The widest integer a CODE field holds (and orjson writes): a signed 64-bit one.
_CODE_MIN: Final = -(2**63)
_CODE_MAX: Final = 2**63 - 1


class Absent(Enum):
    """The value normalises to nothing: its key is dropped."""

    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT


def read_object(raw: dict[Any, Any], table: Table, path: str, task_id: str | None
                ) -> dict[str, Any]:
    """Normalise an object whose known keys are described by `table`; absent values dropped."""
    out: dict[str, Any] = {}
    known = table.fields
    for key, value in raw.items():
        # Quirk: empty strings (and nulls) stand for absent values.
        if value is None or (type(value) is str and not value):
            continue
        spec = known.get(key)
        if spec is not None and spec.kind is Kind.TEXT and type(value) is str:  # the common case
            out[key] = value
            continue
        result = read(spec, value, f"{path}{key}", task_id)
        if result is not ABSENT:
            out[key] = result
    return out


def read(spec: Field | None, value: Any, where: str, task_id: str | None) -> Any:
    """The canonical value of one field (`spec` None: an unknown field), or ABSENT."""
    if spec is None:
        return generic(value, where=where, task_id=task_id, limit=MAX_DEPTH)
    kind = spec.kind
    if kind is Kind.TEXT:
        return text(value, where, task_id)
    if kind is Kind.CODE:
        return code(value, where, task_id)
    if kind is Kind.TIME:
        return time(value, where, task_id)
    assert spec.table is not None, "OBJECT and SET fields have a table"
    if kind is Kind.OBJECT:
        return nested(value, spec.table, where, task_id)
    return members(value, spec.table, where, task_id)


def text(value: Any, where: str, task_id: str | None) -> str | Absent:
    """A TEXT field."""
    kind = type(value)
    if kind is str:
        return value if value else ABSENT
    # Quirk: ids come as numbers or strings ("task_type_id": 10001 vs "10001").
    if kind is int:
        return decimal(value)
    if kind is float and value.is_integer():
        return decimal(int(value))
    raise NormaliseError(f"{where} must be a string, got {json_type(value)}", task_id=task_id,
                         kind="bad_shape")


def code(value: Any, where: str, task_id: str | None) -> int | Absent:
    """A CODE field."""
    number: int | None = None
    kind = type(value)
    if kind is int:
        number = value
    # Quirk: numeric codes come as numbers or strings ("status": 1 vs "1").
    elif kind is str:
        if not value:
            return ABSENT
        try:
            number = int(value)
        except ValueError:  # not a number, or longer than Python converts (4,300 digits)
            number = None
    elif kind is float and value.is_integer():
        number = int(value)
    if number is None:
        raise NormaliseError(f"{where} must be an integer, got {shown(value)}", task_id=task_id,
                             kind="bad_number")
    if not _CODE_MIN <= number <= _CODE_MAX:
        raise NormaliseError(f"{where} must be a 64-bit integer, got {shown(value)}",
                             task_id=task_id, kind="bad_number")
    return number


def time(value: Any, where: str, task_id: str | None) -> str | Absent:
    """A TIME field."""
    if type(value) is not str:
        raise NormaliseError(f"{where} must be a time string, got {json_type(value)}",
                             task_id=task_id, kind="bad_time")
    if not value:
        return ABSENT
    return times.canonical(value, where, task_id)


def nested(value: Any, table: Table, where: str, task_id: str | None) -> dict[str, Any] | Absent:
    """An OBJECT field (or a SET member): read by `table`; empty is absent."""
    if type(value) is not dict:
        raise NormaliseError(f"{where} must be an object, got {json_type(value)}",
                             task_id=task_id, kind="bad_shape")
    result = read_object(value, table, f"{where}.", task_id)
    if not result:
        return ABSENT
    for name in table.required:
        if name not in result:
            raise NormaliseError(f"{where} has no {name}", task_id=task_id, kind="bad_shape")
    return result


def members(value: Any, table: Table, where: str, task_id: str | None
            ) -> list[dict[str, Any]] | Absent:
    """A SET field: a list of objects, as a set by the table's key, sorted by it."""
    if type(value) is not list:
        raise NormaliseError(f"{where} must be a list of objects, got {json_type(value)}",
                             task_id=task_id, kind="bad_shape")
    by_key: dict[tuple[str, ...], dict[str, Any]] = {}
    for index, item in enumerate(value):
        member = nested(item, table, f"{where}[{index}]", task_id)
        if member is ABSENT:
            continue
        key = identity(table, member)
        seen = by_key.get(key)
        # Duplicates merge; which rendering wins must not depend on list order.
        if seen is None or encode(member, where, task_id) > encode(seen, where, task_id):
            by_key[key] = member
    if not by_key:
        return ABSENT
    # Canonical times are fixed-width +08:00 strings, so string order is time order.
    return [by_key[key] for key in sorted(by_key)]


def identity(table: Table, member: dict[str, Any]) -> tuple[str, ...]:
    """What identifies a canonical member of a SET of `table` objects ("" when absent)."""
    return tuple(member.get(name, "") for name in table.key)


def feedback_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    """The identity of a canonical feedback entry: (time, visit id, content), "" when absent."""
    time_, visit, content = identity(FEEDBACK, entry)
    return time_, visit, content


def generic(value: Any, *, where: str = "", task_id: str | None = None,
            limit: int | None = MAX_DEPTH) -> Any:
    """An unknown field: absent dropped, numbers as decimal strings, containers recursively.

    Iterative, so nesting never exhausts the stack; with `limit`, a value that nests deeper
    raises NormaliseError (kind "too_deep").
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return scalar(value)
    if not value:
        return ABSENT
    root: dict[str, Any] = {}
    # Frames: (the (key, item) pairs still to read, the output container, its parent, its key).
    stack: list[tuple[Any, Any, Any, Any]] = [(_entries(value), _empty(value), root, "")]
    while stack:
        pending, out, parent, key = stack[-1]
        for name, item in pending:
            if type(item) is dict or type(item) is list:
                if not item:
                    continue
                if limit is not None and len(stack) >= limit:
                    raise NormaliseError(f"{where} nests deeper than {limit} levels",
                                         task_id=task_id, kind="too_deep")
                stack.append((_entries(item), _empty(item), out, name))
                break
            result = scalar(item)
            if result is not ABSENT:
                _put(out, name, result)
        else:
            stack.pop()
            if out:
                _put(parent, key, out)
    return root.get("", ABSENT)


def scalar(value: Any) -> Any:
    """The generic rule for a value that is not an object or a list."""
    kind = type(value)
    if kind is str:
        return value if value else ABSENT
    if kind is bool:
        return value
    if kind is int:
        return decimal(value)
    if kind is float:
        return decimal(int(value)) if value.is_integer() else repr(value)
    if value is None:
        return ABSENT
    return value  # not a JSON value (cannot come from the API); encoding decides


def decimal(number: int) -> str:
    """A whole number as a decimal string, however long."""
    try:
        return str(number)
    except ValueError:  # beyond Python's 4,300-digit str() guard; Decimal has none
        return str(Decimal(number))


def encode(value: Any, where: str, task_id: str | None) -> bytes:
    """Canonical JSON bytes of a canonical value; raises NormaliseError when JSON cannot hold it."""
    try:
        return orjson.dumps(value, option=DUMP_OPTS)
    except TypeError as exc:  # a lone surrogate in a string, a value that is not JSON
        raise NormaliseError(f"{where or 'record'} holds a value JSON cannot carry: {exc}",
                             task_id=task_id, kind="bad_value") from None


def json_type(value: object) -> str:
    """How a value reads in an error message ("an object", "a number", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shown(value: object) -> str:
    """A short rendering of a value for an error message (never the whole of a big one)."""
    if type(value) is int and value.bit_length() > 64:
        return "a number beyond 64 bits"
    if type(value) in (str, int, float, bool) or value is None:
        text_ = repr(value)
        return text_ if len(text_) <= 40 else text_[:37] + "..."
    return json_type(value)


_JSON_TYPES: Final[dict[type, str]] = {
    dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
    float: "a number", type(None): "null",
}


def _entries(container: dict[Any, Any] | list[Any]) -> Any:
    return iter(container.items()) if type(container) is dict else zip(repeat(None), container)


def _empty(container: dict[Any, Any] | list[Any]) -> dict[Any, Any] | list[Any]:
    return {} if type(container) is dict else []


def _put(out: dict[Any, Any] | list[Any], key: Any, value: Any) -> None:
    if type(out) is list:
        out.append(value)
    else:
        out[key] = value
