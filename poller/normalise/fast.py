"""Pure: the fast path of normalisation, compiled from the field table for the API's usual shape.

`document` returns the canonical document of a record whose every value is already of its
field's usual type (text as non-empty strings, codes as small integers or their strings, times
as exact "yyyy-MM-dd HH:mm", sets of plain members), and None for anything else, which the
general rules then decide (and reject, where needed). For every record it accepts it produces
exactly what the general rules produce (a property test checks this). It never raises, reuses
raw members that are already canonical, and never mutates the raw record.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from poller.normalise.fields import TASK, Kind, Table
from poller.normalise.times import api_minute

_join: Final = "".join

Member = Callable[[Any], "dict[str, Any] | None"]
"""Reads one object of a table on the fast path: the canonical object, or None to bail out."""

# Quirk: codes drift between numbers and numeric strings ("task_status": 1 vs "1"); the codes in
# use are small, so one lookup converts both renderings. (bool is excluded by the caller:
# True == 1 in a dict.)
CODES: Final[dict[object, int]] = {**{n: n for n in range(100)}, **{str(n): n for n in range(100)}}


def _member_reader(table: Table) -> Member:
    """The fast reader of objects of `table`: exactly its fields, each a non-empty string."""
    names = tuple(table.fields)
    if any(spec.kind not in (Kind.TEXT, Kind.TIME) for spec in table.fields.values()):
        raise ValueError("the fast path reads objects of TEXT and TIME fields only")
    size = len(names)
    values_of = operator.itemgetter(*names) if size > 1 else _one(names[0])
    time_names = table.keys_of(Kind.TIME)

    def read(item: Any) -> dict[str, Any] | None:
        if type(item) is not dict or len(item) != size:
            return None
        try:
            values = values_of(item)
            _join(values)  # TypeError unless every value is a string: one C-level pass
        except (KeyError, TypeError):
            return None
        if "" in values:
            return None
        if not time_names:  # already canonical: reuse the raw object as it is
            return item
        out: dict[str, Any] = item.copy()
        for name in time_names:
            minute = api_minute(out[name])
            if minute is None:
                return None
            out[name] = minute
        return out

    return read


def _one(name: str) -> Callable[[dict[str, Any]], tuple[Any]]:
    """itemgetter for one name that still returns a tuple."""
    return lambda item: (item[name],)


def _set_reader(table: Table) -> Callable[[Any], list[dict[str, Any]] | None]:
    """The fast reader of a SET of `table` objects: distinct members, sorted by the table's key."""
    member = _member_reader(table)
    key = operator.itemgetter(*table.key)  # a tuple or, for one key field, the value: same order

    def read(value: Any) -> list[dict[str, Any]] | None:
        if type(value) is not list:
            return None
        if len(value) == 1:  # the commonest set, and nothing to sort
            only = member(value[0])
            return None if only is None else [only]
        members: list[Any] = list(map(member, value))
        if None in members:
            return None
        if len(members) > 1:
            members.sort(key=key)
            # Sorted: a duplicate key sits next to its twin. Merging is the general rules' job.
            keys = list(map(key, members))
            if any(map(operator.eq, keys, keys[1:])):
                return None
        return members

    return read


# The table, compiled: which keys take which conversion.
_TIME_KEYS: Final = TASK.keys_of(Kind.TIME)
_CODE_KEYS: Final = TASK.keys_of(Kind.CODE)
_READERS: Final[tuple[tuple[str, Callable[[Any], Any]], ...]] = tuple(
    (name, (_member_reader if spec.kind is Kind.OBJECT else _set_reader)(spec.table))
    for name, spec in TASK.fields.items()
    if spec.kind in (Kind.OBJECT, Kind.SET) and spec.table is not None
)


def document(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The canonical document of a task record of the usual shape, or None (general rules)."""
    doc = raw.copy()
    if not _times(doc):
        return None
    # Values converted to something other than a string; every other value must be a
    # non-empty string, which is its own canonical form (TEXT fields and unknown ones alike).
    codes = _codes(doc)
    objects = _objects(doc) if codes >= 0 else -1
    if objects < 0:
        return None
    return _strings_checked(doc, codes + objects)


def _times(doc: dict[str, Any]) -> bool:
    """Canonicalise the TIME fields in place; False to bail out."""
    for key in _TIME_KEYS:
        value = doc.get(key)
        # Anything but a string is left for `_strings_checked` to refuse.
        if type(value) is str:
            if not value:  # Quirk: "" stands for an absent value.
                del doc[key]
                continue
            minute = api_minute(value)
            if minute is None:
                return False
            doc[key] = minute
    return True


def _codes(doc: dict[str, Any]) -> int:
    """Convert the CODE fields in place; how many there are, or -1 to bail out."""
    count = 0
    for key in _CODE_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        kind = type(value)
        number = CODES.get(value) if kind is int or kind is str else None
        if number is None:
            if value != "":
                return -1
            del doc[key]  # Quirk: "" stands for an absent value.
            continue
        doc[key] = number
        count += 1
    return count


def _objects(doc: dict[str, Any]) -> int:
    """Read the OBJECT and SET fields in place; how many there are, or -1 to bail out."""
    count = 0
    for key, read in _READERS:
        value = doc.get(key)
        if value is None:
            continue
        canonical = read(value)
        if canonical is None:
            if value != "":
                return -1
            del doc[key]  # Quirk: "" stands for an absent value.
        elif not canonical:  # an empty list is absent
            del doc[key]
        else:
            if canonical is not value:
                doc[key] = canonical
            count += 1
    return count


def _strings_checked(doc: dict[str, Any], converted: int) -> dict[str, Any] | None:
    """`doc` when all but `converted` of its values are strings, with "" (absent) dropped."""
    types = list(map(type, doc.values()))
    if len(types) - types.count(str) != converted:
        return None  # a None, a number in a text field, an unknown object: general rules
    if "" in doc.values():
        return {key: value for key, value in doc.items() if value != ""}
    return doc
