"""Hypothesis strategies for Waiqin365 queryTask payloads.

- `raw_tasks()`: one record in the API's own shape (times `yyyy-MM-dd HH:mm`, codes as strings
  or numbers, ids as digit strings), sometimes with unknown extra fields.
- `renderings(raw)`: the same record rendered differently but meaning the same (shuffled keys
  and lists, numbers vs strings, times with ":00" seconds, empty strings and nulls for absent
  fields, duplicated receivers and feedback): it must normalise to the same hash.
- `garbled_tasks()`: a record whose fields (known or not) hold arbitrary JSON values, for
  checking that a bad record only ever raises NormaliseError.
- `json_payloads()`: an event-like JSON object (nested objects and arrays, numbers, short
  texts and long ones of Chinese, emoji, quotes and control characters), for cutting to size.
- `hostile_values()` / `hostile_tasks()`: any JSON value, or a record holding some, including
  what once escaped as another exception: nesting hundreds of levels deep, integers beyond
  64 bits (and beyond Python's 4,300-digit str() guard), times out of range.
- `rerendered(value)`: the same value rendered differently in the ways the API drifts (key
  order, numbers vs strings, "" and null for absent keys, set fields shuffled): malformed or
  not, its canonical form and so its dead-letter fingerprint must not change.
- `mutation_steps(raw)`: one step of a task's life (a non-empty set of changes, always with a
  new modify_time) with the event types docs/design.md §4 expects from it, in table order.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

# Ids are digit strings without leading zeros, short enough to be JSON numbers too (int64).
ids = st.integers(min_value=1, max_value=10**18).map(str)
texts = st.text(
    alphabet=st.sampled_from("任务内容反馈来源客户巡检abcXYZ 0123456789-_,.!"),
    min_size=1,
    max_size=12,
)
# Minute-precision Beijing wall times, as the API sends them.
minutes = st.integers(min_value=0, max_value=60 * 24 * 365 * 5).map(
    lambda m: datetime(2020, 1, 1) + timedelta(minutes=m)
)
api_times = minutes.map(lambda t: t.strftime("%Y-%m-%d %H:%M"))

TIME_FIELDS = ("create_time", "modify_time", "feedback_deadline", "latest_feedback_time")
CODE_FIELDS = ("task_status", "status", "execute_demand")
ID_FIELDS = ("task_id", "task_type_id", "customer_id", "task_source_id", "visit_implement_id")
EXTRA_KEYS = ("achievement", "x_region", "x_priority_label")


@st.composite
def people(draw: st.DrawFn) -> dict[str, Any]:
    return {"id": draw(ids), "name": draw(texts)}


@st.composite
def receiver_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    return draw(st.lists(people(), max_size=4, unique_by=lambda p: p["id"]))


@st.composite
def feedback_entries(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "feedback_content": draw(texts),
        "feedback_visit_id": draw(ids),
        "feedback_time": draw(api_times),
    }


@st.composite
def raw_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """One queryTask record as the API sends it."""
    raw: dict[str, Any] = {
        "task_id": draw(ids),
        "task_type_id": draw(ids),
        "customer_id": draw(ids),
        "task_source_id": draw(ids),
        "visit_implement_id": draw(ids),
        "task_source_name": draw(texts),
        "task_content": draw(texts),
        "latest_feedback_content": draw(texts),
        "task_status": str(draw(st.integers(0, 3))),
        "status": draw(st.integers(0, 1)),
        "execute_demand": str(draw(st.integers(0, 2))),
        "creator": draw(people()),
        "receivers": draw(receiver_lists()),
        "feedback_detail": draw(
            st.lists(feedback_entries(), max_size=3,
                     unique_by=lambda f: (f["feedback_time"], f["feedback_visit_id"],
                                          f["feedback_content"]))
        ),
    }
    for key in TIME_FIELDS:
        raw[key] = draw(api_times)
    for key in draw(st.lists(st.sampled_from(EXTRA_KEYS), unique=True, max_size=2)):
        raw[key] = draw(texts)
    return raw


@st.composite
def renderings(draw: st.DrawFn, raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` rendered differently but meaning the same."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[key] = _render(key, value, rng)
    for key in ("achievement", "x_absent"):  # Quirk: "" and null mean absent
        if key not in out and rng.random() < 0.5:
            out[key] = rng.choice(["", None])
    keys = list(out)
    rng.shuffle(keys)
    return {key: out[key] for key in keys}


def _render(key: str, value: Any, rng: random.Random) -> Any:
    if key in CODE_FIELDS or key in ID_FIELDS:
        return rng.choice([str(value), int(value)])
    if key in TIME_FIELDS:
        return value + ":00" if rng.random() < 0.5 else value
    if key == "receivers":
        items = [_shuffled_dict(item, rng) for item in value]
        if items and rng.random() < 0.3:
            items.append(dict(rng.choice(items)))  # a duplicate receiver
        if not items and rng.random() < 0.5:
            return rng.choice([None, ""])
        rng.shuffle(items)
        return items
    if key == "feedback_detail":
        items = [_shuffled_dict(item, rng) for item in value]
        if items and rng.random() < 0.3:
            items.append(dict(rng.choice(items)))  # a duplicate entry
        rng.shuffle(items)
        return items
    if key == "creator":
        return _shuffled_dict(value, rng)
    return value


def _shuffled_dict(value: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    keys = list(value)
    rng.shuffle(keys)
    out = {key: value[key] for key in keys}
    if "id" in out and rng.random() < 0.5:
        out["id"] = int(out["id"])  # Quirk: ids drift between numbers and strings
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20) | api_times,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["id", "name", "feedback_time", "x"]), children, max_size=3),
    max_leaves=8,
)
KNOWN_KEYS = (*TIME_FIELDS, *CODE_FIELDS, *ID_FIELDS, "receivers", "creator", "feedback_detail",
              "task_content", "latest_feedback_content", "achievement", "x_unknown")


@st.composite
def garbled_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """A record (sometimes a valid one) with some fields replaced by arbitrary JSON values."""
    raw = draw(raw_tasks())
    for key in draw(st.lists(st.sampled_from(KNOWN_KEYS), unique=True, max_size=4)):
        raw[key] = draw(json_values)
    return raw


# --- mutations: one step of a task's life and the events it must produce ------------------------

STATUS_EVENT = {1: "TaskFeedbackSubmitted", 2: "TaskAccepted", 3: "TaskRejected", 0: "TaskReopened"}
MUTATIONS = ("content", "reassign", "deadline", "feedback", "task_status", "status")


@st.composite
def mutation_steps(draw: st.DrawFn, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The next state of `raw` and the event types expected, in docs/design.md §4 table order.

    An empty kind set is a "touch" (modify_time alone): no events.
    """
    kinds = draw(st.sets(st.sampled_from(MUTATIONS), max_size=3))
    new = dict(raw)
    new["modify_time"] = _later(raw["modify_time"], draw(st.integers(1, 600)))
    expected: list[str] = []
    if "content" in kinds:
        new["task_content"] = raw["task_content"] + draw(texts)
        expected.append("TaskUpdated")
    if "reassign" in kinds:
        new["receivers"] = [*raw["receivers"], {"id": _fresh_id(raw), "name": draw(texts)}]
        if raw["receivers"] and draw(st.booleans()):
            new["receivers"] = new["receivers"][1:]
        expected.append("TaskReassigned")
    if "deadline" in kinds:
        new["feedback_deadline"] = _later(raw["feedback_deadline"], draw(st.integers(1, 9999)))
        expected.append("TaskDeadlineChanged")
    if "feedback" in kinds:
        count = draw(st.integers(1, 2))
        entries = [{"feedback_content": draw(texts), "feedback_visit_id": _fresh_id(raw, n),
                    "feedback_time": _later(new["modify_time"], n)} for n in range(count)]
        new["feedback_detail"] = [*raw["feedback_detail"], *entries]
        new["latest_feedback_content"] = entries[-1]["feedback_content"]
        expected.extend(["FeedbackAdded"] * count)
    if "task_status" in kinds:
        old = int(raw["task_status"])
        status = draw(st.sampled_from([s for s in range(4) if s != old]))
        new["task_status"] = str(status)
        expected.append(STATUS_EVENT[status])
    if "status" in kinds:
        new["status"] = 1 - int(raw["status"])
        expected.append("TaskDeleted" if new["status"] == 0 else "TaskRestored")
    return new, expected


def _later(api_time: str, minutes_later: int) -> str:
    then = datetime.strptime(api_time[:16], "%Y-%m-%d %H:%M") + timedelta(minutes=minutes_later)
    return then.strftime("%Y-%m-%d %H:%M")


def _fresh_id(raw: dict[str, Any], salt: int = 0) -> str:
    """An id no receiver or feedback of `raw` uses (ids are <= 10**18, so this is longer)."""
    taken = {p["id"] for p in raw["receivers"]}
    taken |= {f["feedback_visit_id"] for f in raw["feedback_detail"]}
    candidate = 10**18 + 1 + salt
    while str(candidate) in taken:
        candidate += 10
    return str(candidate)


# Runs of one character, so a long text costs one draw: plain, 3-byte Chinese, 4-byte emoji,
# and characters JSON escapes (2 bytes for a quote, backslash or newline, 6 for \u0001).
_runs = st.tuples(st.sampled_from(["a", "任务", "é", "🚀", '"', "\\", "\n", "\x01"]),
                  st.integers(min_value=0, max_value=3000)).map(lambda run: run[0] * run[1])
_long_texts = st.lists(_runs, min_size=1, max_size=3).map("".join)
_keys = st.sampled_from(["task", "task_id", "feedback_detail", "feedback_content", "raw", "x", "名称"])
_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | texts | _long_texts)
_json_values = st.recursive(
    _leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


def json_payloads() -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with plain-name keys, a few levels deep, holding long and short texts."""
    return st.dictionaries(_keys, _json_values, min_size=1, max_size=5)


# --- hostile input: values that must still only ever raise NormaliseError ------------------------


def nested(depth: int, leaf: Any, *, as_objects: bool) -> Any:
    """`leaf` wrapped in `depth` lists or objects (built without recursion)."""
    value = leaf
    for _ in range(depth):
        value = {"x": value} if as_objects else [value]
    return value


deep_values = st.builds(nested, st.integers(600, 3000), st.sampled_from([1, "a", None, True]),
                        as_objects=st.booleans())
huge_integers = st.one_of(
    st.integers(min_value=2**63, max_value=2**200), st.integers(min_value=-(2**200), max_value=-(2**63) - 1),
    # Beyond Python's 4,300-digit str() guard (built lazily: hypothesis cannot repr them).
    st.builds(lambda digits, sign: sign * 10**digits, st.integers(4300, 6000), st.sampled_from([1, -1])),
)
far_times = st.sampled_from([
    "9999-12-31T23:59:00-05:00", "0001-01-01 00:00", "0001-01-01T07:59:00", "9999-12-31 23:59",
    "0001-01-01T00:00:00+14:00", "2024-02-30 10:00", "2023-02-29 10:00", "2024-13-01 10:00",
    "2024-05-01 24:00", "2024-05-01 10:60", "2024-05-01T10:33:00.999999+08:00", "1850-06-01 10:00",
])
hostile_scalars = st.one_of(huge_integers, far_times, st.floats(), st.text(max_size=20))
hostile_values = st.one_of(
    json_values, deep_values, hostile_scalars,
    st.recursive(hostile_scalars, lambda children: st.lists(children, max_size=3)
                 | st.dictionaries(st.sampled_from(["id", "name", "feedback_time", "x"]), children,
                                   max_size=3), max_leaves=6),
)


@st.composite
def hostile_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """A record (sometimes a valid one) with some fields replaced by hostile values."""
    raw = draw(raw_tasks())
    for key in draw(st.lists(st.sampled_from(KNOWN_KEYS), unique=True, max_size=3)):
        raw[key] = draw(hostile_values)
    return raw


# --- re-renderings of any value: what the fingerprint must not see --------------------------------

SET_FIELDS = ("receivers", "feedback_detail")


@st.composite
def rerendered(draw: st.DrawFn, value: Any) -> Any:
    """`value` (a record or anything else) rendered differently but meaning the same."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    return _rerender(value, rng, top=True, depth=0)


def _rerender(value: Any, rng: random.Random, *, top: bool, depth: int) -> Any:
    if depth > 40:  # deep values stay as they are (the helper must not recurse 600 levels)
        return value
    if type(value) is int and value.bit_length() < 10_000 and rng.random() < 0.5:
        return str(value)  # Quirk: numbers drift into strings
    if type(value) is list:
        return [_rerender(item, rng, top=False, depth=depth + 1) for item in value]
    if type(value) is not dict:
        return value
    return _rerender_object(value, rng, top=top, depth=depth)


def _rerender_object(value: dict[str, Any], rng: random.Random, *, top: bool, depth: int
                     ) -> dict[str, Any]:
    out = {key: _rerender(item, rng, top=False, depth=depth + 1) for key, item in value.items()}
    if top:
        for key in SET_FIELDS:  # sets: order carries no meaning
            if type(out.get(key)) is list:
                rng.shuffle(out[key])
    for key in [key for key, item in out.items() if item == "" or item is None]:
        if rng.random() < 0.5:
            del out[key]  # "" and null mean absent, like a missing key
    if rng.random() < 0.5:
        out.setdefault("x_absent", rng.choice(["", None]))
    keys = list(out)
    rng.shuffle(keys)
    return {key: out[key] for key in keys}
