"""The one field table: which fields a Waiqin365 record has and how each is read (docs/design.md §3).

The general rules (`rules.py`), the fast path (`fast.py`) and the lenient canonical form of
malformed records (`canonical.py`) all read these tables; a field is added or changed here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final


class Kind(Enum):
    """How a known field is read."""

    TEXT = "text"  # a string; a number is the same text (ids drift: 10001 vs "10001")
    CODE = "code"  # an integer code; a numeric string is the same code (1 vs "1")
    TIME = "time"  # "yyyy-MM-dd HH:mm" Beijing time (or ISO 8601) -> RFC 3339 with +08:00
    OBJECT = "object"  # a nested object, read by its own table
    SET = "set"  # a list of objects read by their own table: a set by the table's key


@dataclass(frozen=True, slots=True)
class Field:
    """One known field: its kind and, for OBJECT and SET, the table of its objects."""

    kind: Kind
    table: Table | None = None


@dataclass(frozen=True, slots=True)
class Table:
    """The known fields of one object; any other field is unknown and kept (generic rules).

    `key` names the fields that identify an object of this table inside a SET (the set is
    sorted by it; an absent key field counts as ""). `required` fields must be present in a
    non-empty object.
    """

    fields: Mapping[str, Field]
    key: tuple[str, ...] = ()
    required: tuple[str, ...] = field(default=())

    def keys_of(self, kind: Kind) -> tuple[str, ...]:
        """The names of this table's fields of one kind, in table order."""
        return tuple(name for name, spec in self.fields.items() if spec.kind is kind)


def _table(fields: dict[str, Field], *, key: tuple[str, ...] = (),
           required: tuple[str, ...] = ()) -> Table:
    return Table(MappingProxyType(fields), key, required)


TEXT: Final = Field(Kind.TEXT)
CODE: Final = Field(Kind.CODE)
TIME: Final = Field(Kind.TIME)

# A user reference (creator, receiver). Receivers are a set by id (docs/design.md §3).
PERSON: Final = _table({"id": TEXT, "name": TEXT}, key=("id",), required=("id",))

# One feedback entry. feedback_detail is a set by (feedback_time, feedback_visit_id,
# feedback_content); time first, so the set sorts oldest first.
FEEDBACK: Final = _table(
    {"feedback_time": TIME, "feedback_visit_id": TEXT, "feedback_content": TEXT},
    key=("feedback_time", "feedback_visit_id", "feedback_content"),
)

# One queryTask record (docs/design.md §2 lists the meanings of the codes).
TASK: Final = _table(
    {
        "task_id": TEXT,
        "task_type_id": TEXT,
        "task_content": TEXT,
        "customer_id": TEXT,
        "task_source_id": TEXT,
        "task_source_name": TEXT,
        "visit_implement_id": TEXT,
        "achievement": TEXT,
        "latest_feedback_content": TEXT,
        "task_status": CODE,
        "status": CODE,
        "execute_demand": CODE,
        "feedback_deadline": TIME,
        "create_time": TIME,
        "modify_time": TIME,
        "latest_feedback_time": TIME,
        "creator": Field(Kind.OBJECT, PERSON),
        "receivers": Field(Kind.SET, PERSON),
        "feedback_detail": Field(Kind.SET, FEEDBACK),
    },
    required=("task_id",),
)

# One queryTaskType record.
TASK_TYPE: Final = _table({"type_id": TEXT, "type_name": TEXT}, required=("type_id",))

# How deep an unknown field may nest (objects and lists) below the field itself. Real records
# are flat; the bound keeps every canonical document encodable (orjson stops at 255 levels)
# and readable by pydantic, and turns a pathological record into a dead letter.
MAX_DEPTH: Final = 64
