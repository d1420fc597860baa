"""Pure: the canonical form of any record, malformed or not: the rules applied as far as they go.

Each field is read by its rule; a field the rule cannot read keeps its generic canonical form
(keys sorted, numbers as strings, empty = absent), objects are read field by field and sets
stay sets. So a bad record rendered differently (number vs string, key order, "" vs missing)
has the same canonical form, and is dead-lettered once (docs/design.md §4).
"""

from __future__ import annotations

from typing import Any

from poller.errors import NormaliseError
from poller.normalise import rules
from poller.normalise.digest import json_bytes
from poller.normalise.fields import TASK, Field, Kind, Table
from poller.normalise.rules import ABSENT


def canonical(raw: object) -> Any:
    """The canonical form of a record as far as the rules go; never raises (ABSENT for nothing)."""
    if type(raw) is dict:
        return _object(raw, TASK)
    return rules.generic(raw, limit=None)


def _object(raw: dict[Any, Any], table: Table) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in raw.items():
        result = _field(table.fields.get(key), value, str(key))
        if result is not ABSENT:
            out[key] = result
    return out


def _field(spec: Field | None, value: Any, where: str) -> Any:
    if spec is None:
        return rules.generic(value, limit=None)
    try:
        return rules.read(spec, value, where, None) if value is not None and value != "" else ABSENT
    except NormaliseError:
        pass
    if spec.kind is Kind.OBJECT and spec.table is not None and type(value) is dict:
        return _object(value, spec.table) or ABSENT
    if spec.kind is Kind.SET and spec.table is not None and type(value) is list:
        return _members(value, spec.table)
    return rules.generic(value, limit=None)


def _members(items: list[Any], table: Table) -> Any:
    """A set: each member as far as the rules go, distinct, in the order of their encoding."""
    members: dict[bytes, Any] = {}
    for item in items:
        member = _object(item, table) if type(item) is dict else rules.generic(item, limit=None)
        if member is not ABSENT and member != {}:
            members[json_bytes(member, sort_keys=True)] = member
    return [members[key] for key in sorted(members)] or ABSENT
