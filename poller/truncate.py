"""Cutting a JSON payload to fit a byte budget, so that no record is too large or too deep to send."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# The payload key that lists the JSON paths of the values cut (docs/design.md §4).
TRUNCATED = "truncated"
# Containers nested deeper than this (the payload itself is level 1) become DEEP_MARKER: orjson
# refuses to write beyond 254 levels and pydantic's JSON reader beyond 201, while a real
# Waiqin365 record nests a few levels. Well below both, so an envelope around it still fits.
MAX_DEPTH = 100
DEEP_MARKER = f"<cut: nested deeper than {MAX_DEPTH} levels>"
# A text is cut to no fewer than this many bytes of JSON (quotes included: about 250 ASCII or
# 80 Chinese characters), so it stays readable; a shorter text is never cut. Every value that is
# not free text (times, ids, event names) is far shorter, so a cut payload still validates.
MIN_TEXT_BYTES = 256
# `,"truncated":[]`: what listing the first path costs besides the path itself.
_LIST_OVERHEAD = len(b',"":[]') + len(TRUNCATED)
# The integers orjson writes.
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


class DoesNotFitError(ValueError):
    """Even with every long text cut as far as allowed, the payload exceeds the budget."""

    def __init__(self, smallest: int, max_bytes: int) -> None:
        super().__init__(f"the payload needs at least {smallest} bytes with every long text cut "
                         f"to {MIN_TEXT_BYTES} bytes, more than the {max_bytes} allowed")
        self.smallest = smallest
        self.max_bytes = max_bytes


@dataclass(frozen=True, slots=True)
class Fitted:
    """A payload as JSON within its budget, and the paths of the values cut to get there."""

    body: bytes
    truncated: tuple[str, ...]


def fit(payload: Mapping[str, Any], max_bytes: int, *, collapsible: Collection[str] = ()) -> Fitted:
    """The payload as compact JSON (UTF-8, orjson) of at most `max_bytes`.

    A payload that fits and nests at most MAX_DEPTH levels is returned exactly as
    `orjson.dumps` writes it, with nothing listed. Otherwise deeper containers become
    DEEP_MARKER, then the fewest of the longest texts are cut, each to the same prefix length
    (on a character boundary, never below MIN_TEXT_BYTES); a top-level key in `collapsible`
    whose value is not free text (a dead letter's `raw`) is, as a last resort, replaced by its
    JSON text, which is then cut like any text. Every value cut or replaced is listed, by JSON
    path (`task.feedback_detail[2].feedback_content`), in the payload's `truncated` array.

    Raises DoesNotFitError when the budget cannot be met that way.
    """
    try:
        body = dumps(payload)
    except TypeError:  # orjson.JSONEncodeError: nested too deep for orjson, or a 65-bit integer
        body = None
    if body is not None and len(body) <= max_bytes and not too_deep(body):
        return Fitted(body, ())
    doc = _Document(payload)
    cut = doc.fit(max_bytes)
    for key in collapsible:
        if cut is not None:
            break
        doc.collapse(key)
        cut = doc.fit(max_bytes)
    if cut is None:
        raise DoesNotFitError(doc.smallest, max_bytes)
    return cut


def dumps(value: Any) -> bytes:
    """Compact JSON as `fit` writes it; anything that is not JSON-shaped becomes its repr."""
    return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)


def too_deep(document: bytes) -> bool:
    """True when the JSON document nests containers more than MAX_DEPTH levels deep."""
    # Counting brackets is cheap and settles almost every document; parse only the rest.
    if document.count(b"{") + document.count(b"[") <= MAX_DEPTH:
        return False
    try:
        return _deeper_than(orjson.loads(document), MAX_DEPTH)
    except orjson.JSONDecodeError:  # orjson reads up to 1024 levels: anything deeper is too deep
        return True


def _deeper_than(value: Any, levels: int) -> bool:
    if isinstance(value, dict):
        children: Collection[Any] = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return False
    return levels == 0 or any(_deeper_than(child, levels - 1) for child in children)


@dataclass(slots=True)
class _Text:
    """A string leaf long enough to be cut, and where it sits."""

    parent: dict[Any, Any] | list[Any]
    slot: Any
    path: str
    cost: int  # bytes in the JSON document, quotes and escapes included
    order: int  # position in the document, for a stable listing


class _Document:
    """A copy of a payload, flattened to MAX_DEPTH, with its long texts indexed for cutting."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.texts: list[_Text] = []
        listed = payload.get(TRUNCATED)  # a payload cut before keeps its list
        self.listed: list[str] = [str(p) for p in listed] if isinstance(listed, list | tuple) else []
        self.root: dict[Any, Any] = {}
        for key, value in payload.items():
            if key != TRUNCATED:
                self._put(self.root, key, value, 2, _key_path("", key))
        self.smallest = 0

    def _put(self, parent: dict[Any, Any] | list[Any], slot: Any, value: Any, depth: int,
             path: str) -> None:
        if isinstance(value, dict | list | tuple) and depth > MAX_DEPTH:
            value = DEEP_MARKER
            self.listed.append(path)
        elif isinstance(value, dict):
            copy: dict[Any, Any] = {}
            for key, child in value.items():
                # A key orjson cannot write (cannot come from JSON) is made readable.
                name = key if isinstance(key, str | int | float | bool | None) else repr(key)
                self._put(copy, name, child, depth + 1, _key_path(path, name))
            value = copy
        elif isinstance(value, list | tuple):
            items: list[Any] = [None] * len(value)
            for index, child in enumerate(value):
                self._put(items, index, child, depth + 1, f"{path}[{index}]")
            value = items
        elif isinstance(value, int) and not _INT_MIN <= value <= _UINT_MAX:
            value = str(value)  # beyond what orjson writes; cannot come from orjson.loads either
        elif isinstance(value, str) and len(value) * 6 + 2 > MIN_TEXT_BYTES:
            cost = len(orjson.dumps(value))
            if cost > MIN_TEXT_BYTES:
                self.texts.append(_Text(parent, slot, path, cost, len(self.texts)))
        parent[slot] = value

    def collapse(self, key: str) -> None:
        """Replace a top-level value by its JSON text, as a text that may be cut."""
        if key not in self.root or isinstance(self.root[key], str):
            return
        prefix = _key_path("", key)
        self.texts = [t for t in self.texts if t.path != prefix
                      and not t.path.startswith((f"{prefix}.", f"{prefix}["))]
        self.listed = [p for p in self.listed if p != prefix
                       and not p.startswith((f"{prefix}.", f"{prefix}["))]
        self.listed.append(prefix)
        text = dumps(self.root[key]).decode()
        self.root[key] = text
        cost = len(orjson.dumps(text))
        if cost > MIN_TEXT_BYTES:
            self.texts.append(_Text(self.root, key, prefix, cost, len(self.texts)))

    def fit(self, max_bytes: int) -> Fitted | None:
        """Cut the fewest longest texts to fit `max_bytes`; None (nothing changed) if impossible."""
        whole = self._dump([])
        if len(whole) <= max_bytes:
            return Fitted(whole, tuple(self.listed))
        longest = sorted(self.texts, key=lambda t: (-t.cost, t.order))
        overhead = 0 if self.listed else _LIST_OVERHEAD
        excess = len(whole) - max_bytes
        total = paths = 0
        for count, text in enumerate(longest, 1):
            total += text.cost
            paths += len(orjson.dumps(text.path)) + 1
            # Each of the `count` longest keeps `cap` bytes; the listing costs `paths` more.
            cap = (total - paths - overhead - excess) // count
            if cap >= MIN_TEXT_BYTES:
                return self._cut(longest[:count], cap, max_bytes)
        # The estimate above assumes a cut text keeps exactly `cap` bytes; a character boundary
        # can leave it a few bytes shorter, so try the deepest cut itself before giving up.
        return self._cut(longest, MIN_TEXT_BYTES, max_bytes)

    def _cut(self, texts: list[_Text], cap: int, max_bytes: int) -> Fitted | None:
        originals = [(text, text.parent[text.slot]) for text in texts]
        for text, value in originals:
            text.parent[text.slot] = _prefix(value, cap)
        # In document order; a collapsed value is listed already.
        paths = [t.path for t in sorted(texts, key=lambda t: t.order) if t.path not in self.listed]
        body = self._dump(paths)
        if len(body) <= max_bytes:
            return Fitted(body, (*self.listed, *paths))
        self.smallest = len(body)
        for text, value in originals:  # leave the document as it was for a collapse
            text.parent[text.slot] = value
        return None

    def _dump(self, extra: list[str]) -> bytes:
        listed = [*self.listed, *extra]
        return dumps({**self.root, TRUNCATED: listed} if listed else self.root)


def _prefix(text: str, cap: int) -> str:
    """The longest prefix of `text` whose JSON string takes at most `cap` bytes."""
    # Cut the UTF-8 bytes, dropping a character the cut split ("ignore"): Chinese text is 3
    # bytes a character, and half a character is not text.
    prefix = text.encode()[:cap - 2].decode("utf-8", "ignore")
    while (over := len(orjson.dumps(prefix)) - cap) > 0:
        # An escaped character (\", \n, \u001f) takes up to 6 bytes: dropping ceil(over / 6)
        # characters can never overshoot the longest prefix that fits.
        prefix = prefix[:len(prefix) - (over + 5) // 6]
    return prefix


def _key_path(parent: str, key: Any) -> str:
    name = str(key)
    if name.isidentifier():  # most keys: task.feedback_detail[2].feedback_content
        return f"{parent}.{name}" if parent else name
    return f"{parent}[{orjson.dumps(name).decode()}]"  # any other key, quoted as JSON
