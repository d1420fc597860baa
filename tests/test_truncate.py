"""Tests for poller.truncate: payloads cut to a byte budget, longest texts first, depth bounded."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from poller import truncate
from poller.truncate import MAX_DEPTH, MIN_TEXT_BYTES, TRUNCATED, DoesNotFitError, fit, too_deep
from tests.strategies import json_payloads

JSON_READER: TypeAdapter[Any] = TypeAdapter(Any)  # pydantic's own JSON reader, as decode uses it


def cost(text: str) -> int:
    return len(orjson.dumps(text))


def nested(levels: int) -> Any:
    """`levels` nested objects around a string: nested(2) == {"a": {"a": "leaf"}}."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def resolve(document: Any, path: str) -> Any:
    """The value at a JSON path as truncate writes it: a.b[2]["odd key"].c."""
    token = re.compile(r'\.?([^.\["]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')
    position, node = 0, document
    while position < len(path):
        match = token.match(path, position)
        assert match, f"unreadable path {path!r} at {position}"
        name, index, quoted = match.groups()
        node = node[int(index)] if index is not None else node[orjson.loads(quoted) if quoted else name]
        position = match.end()
    return node


def deepest_cut(payload: dict[str, Any]) -> int:
    """Size of the payload with every text above the floor cut to the floor (the best possible).

    Written independently of the module: a binary search for each text's longest prefix.
    """
    paths: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and cost(value) > MIN_TEXT_BYTES:
            paths.append(path)
            low, high = 0, len(value)
            while low < high:
                middle = (low + high + 1) // 2
                low, high = (middle, high) if cost(value[:middle]) <= MIN_TEXT_BYTES else (low, middle - 1)
            return value[:low]
        return value

    cut = walk(payload, "")
    return len(orjson.dumps({**cut, TRUNCATED: paths} if paths else cut))


def long_text(n: int, unit: str = "反馈内容") -> str:
    return (unit * (n // len(unit) + 1))[:n]


class TestFit:
    def test_fitting_payload_is_unchanged(self) -> None:
        """A payload within budget comes back as orjson writes it, with nothing listed."""
        payload = {"task": {"task_id": "1", "task_content": long_text(5000)}, "id": "e1"}
        fitted = fit(payload, 1_000_000)
        assert fitted.body == orjson.dumps(payload) and fitted.truncated == ()

    def test_longest_text_is_cut_first(self) -> None:
        """Only the longest text is cut when that is enough; shorter ones stay whole."""
        payload = {"task": {"task_content": long_text(3000), "achievement": long_text(20_000)}}
        fitted = fit(payload, 15_000)
        result = orjson.loads(fitted.body)
        assert fitted.truncated == ("task.achievement",)
        assert result[TRUNCATED] == ["task.achievement"]
        assert result["task"]["task_content"] == payload["task"]["task_content"]
        assert payload["task"]["achievement"].startswith(result["task"]["achievement"])
        assert 14_900 < len(fitted.body) <= 15_000

    def test_cut_texts_keep_equal_prefixes(self) -> None:
        """Texts cut together keep prefixes of the same size, the longest possible."""
        feedback = [{"feedback_content": long_text(400_000), "feedback_time": "2026-03-12T09:30:00+08:00"}
                    for _ in range(3)]
        payload = {"type": "TaskCreated", "task": {"task_id": "1", "feedback_detail": feedback}}
        fitted = fit(payload, 1_000_000)
        result = orjson.loads(fitted.body)
        kept = [len(entry["feedback_content"].encode()) for entry in result["task"]["feedback_detail"]]
        assert fitted.truncated == tuple(f"task.feedback_detail[{i}].feedback_content" for i in range(3))
        assert max(kept) - min(kept) <= 3 and min(kept) > 330_000
        assert len(fitted.body) <= 1_000_000
        assert [e["feedback_time"] for e in result["task"]["feedback_detail"]] == ["2026-03-12T09:30:00+08:00"] * 3

    def test_cut_falls_on_a_character_boundary(self) -> None:
        """A cut Chinese text is a prefix of whole characters (valid UTF-8, no half character)."""
        for budget in range(1000, 1012):
            fitted = fit({"text": long_text(3000, "任务🚀")}, budget)
            text = orjson.loads(fitted.body)["text"]
            assert long_text(3000, "任务🚀").startswith(text) and "\ufffd" not in text

    def test_escaped_characters_are_counted(self) -> None:
        """Quotes, backslashes and control characters count as the bytes they take in JSON."""
        payload = {"text": '"\\\n\x01' * 2000}
        fitted = fit(payload, 3000)
        assert len(fitted.body) <= 3000
        assert payload["text"].startswith(orjson.loads(fitted.body)["text"])

    def test_paths_quote_unusual_keys(self) -> None:
        """A key that is not a plain name is written as a quoted JSON string in the path."""
        payload = {"raw": {"a.b": [{"": long_text(5000)}], "task_id": "1"}}
        fitted = fit(payload, 2000)
        assert fitted.truncated == ('raw["a.b"][0][""]',)
        assert resolve(orjson.loads(fitted.body), fitted.truncated[0]).startswith("反馈")

    def test_short_texts_are_never_cut(self) -> None:
        """Values at or below the floor (times, ids, names) stay whole even when that cannot fit."""
        payload = {"ids": [f"{n:0>200}" for n in range(100)]}
        with pytest.raises(DoesNotFitError, match="more than the 5000 allowed") as caught:
            fit(payload, 5000)
        assert caught.value.smallest == len(orjson.dumps(payload))

    def test_collapsible_value_becomes_cut_text(self) -> None:
        """A structure too large even with its texts cut is replaced by a prefix of its JSON."""
        raw = {"task_id": "1", "receivers": [{"id": str(n), "name": "张三"} for n in range(5000)]}
        payload = {"reason": "too large", "raw": raw, "page": 1}
        with pytest.raises(DoesNotFitError):
            fit(payload, 4000)
        fitted = fit(payload, 4000, collapsible=("raw",))
        result = orjson.loads(fitted.body)
        assert fitted.truncated == ("raw",) and len(fitted.body) <= 4000
        assert orjson.dumps(raw).decode().startswith(result["raw"])
        assert result["reason"] == "too large" and result["page"] == 1

    def test_collapse_is_a_last_resort(self) -> None:
        """A collapsible value whose texts can be cut keeps its structure."""
        payload = {"reason": "bad", "raw": {"task_id": "1", "task_content": long_text(10_000)}}
        fitted = fit(payload, 3000, collapsible=("raw",))
        assert fitted.truncated == ("raw.task_content",)
        assert orjson.loads(fitted.body)["raw"]["task_id"] == "1"

    def test_anything_not_json_is_written_readably(self) -> None:
        """Values orjson cannot write (a set, a huge integer, a tuple key) become text, never an error."""
        payload = {"raw": {"ids": {7}, (1, 2): "pair", "n": 2**70}, "text": long_text(5000)}
        result = orjson.loads(fit(payload, 2000).body)
        assert result["raw"] == {"ids": "{7}", "(1, 2)": "pair", "n": str(2**70)}

    def test_earlier_list_is_kept(self) -> None:
        """A payload that already lists cut paths keeps them and adds its own."""
        payload = {"text": long_text(10_000), TRUNCATED: ["task.achievement"]}
        fitted = fit(payload, 2000)
        assert fitted.truncated == ("task.achievement", "text")
        assert orjson.loads(fitted.body)[TRUNCATED] == ["task.achievement", "text"]


class TestDepth:
    def test_deep_nesting_becomes_a_marker(self) -> None:
        """A record nested 600 levels is cut at MAX_DEPTH, listed, and readable by pydantic."""
        payload = {"reason": "nesting", "raw": {"task_id": "1", "x": nested(600)}}
        fitted = fit(payload, 1_000_000)
        [path] = fitted.truncated
        result = JSON_READER.validate_json(fitted.body)
        assert resolve(result, path) == truncate.DEEP_MARKER
        assert path.startswith("raw.x.a") and not too_deep(fitted.body)
        assert result["raw"]["task_id"] == "1"

    def test_nesting_up_to_the_limit_is_kept(self) -> None:
        """A payload nesting exactly MAX_DEPTH levels (itself included) is returned unchanged."""
        payload = {"x": _chain(MAX_DEPTH - 1)}
        fitted = fit(payload, 1_000_000)
        assert fitted.truncated == () and fitted.body == orjson.dumps(payload)

    def test_one_level_more_is_cut(self) -> None:
        """One container beyond MAX_DEPTH is replaced; the document is then exactly MAX_DEPTH deep."""
        fitted = fit({"x": _chain(MAX_DEPTH)}, 1_000_000)
        assert fitted.truncated == ("x" + "[0]" * (MAX_DEPTH - 1),)
        assert not too_deep(fitted.body)

    def test_too_deep(self) -> None:
        """too_deep counts container levels, not brackets inside strings."""
        assert not too_deep(orjson.dumps({"t": "[" * 500}))
        assert not too_deep(orjson.dumps([[1]] * 500))
        assert too_deep(orjson.dumps(_chain(MAX_DEPTH + 1)))
        assert too_deep(b"[" * 2000 + b"]" * 2000)  # beyond what orjson reads


def _chain(levels: int) -> Any:
    """`levels` nested lists: _chain(2) == [[]]."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


class TestProperties:
    @settings(deadline=None, max_examples=150)
    @given(json_payloads(), st.integers(min_value=200, max_value=40_000))
    def test_fits_whenever_possible(self, payload: dict[str, Any], budget: int) -> None:
        """The result never exceeds the budget, and is refused only when the deepest cut exceeds it."""
        try:
            fitted = fit(payload, budget)
        except DoesNotFitError:
            assert deepest_cut(payload) > budget
            return
        assert len(fitted.body) <= budget

    @settings(deadline=None, max_examples=150)
    @given(json_payloads(), st.integers(min_value=200, max_value=40_000))
    def test_paths_point_at_cut_values(self, payload: dict[str, Any], budget: int) -> None:
        """Each listed path holds a proper prefix of the original text; everything else is equal."""
        try:
            fitted = fit(payload, budget)
        except DoesNotFitError:
            return
        result = orjson.loads(fitted.body)
        restored = dict(result)
        assert restored.pop(TRUNCATED, []) == list(fitted.truncated)
        for path in fitted.truncated:
            original, cut = resolve(payload, path), resolve(result, path)
            assert isinstance(cut, str) and original.startswith(cut) and cut != original
            assert cost(cut) > MIN_TEXT_BYTES - 6  # a readable prefix, up to one escaped character
            replace_at(restored, path, original)
        assert restored == payload

    @settings(deadline=None, max_examples=100)
    @given(json_payloads())
    def test_fitting_input_unchanged(self, payload: dict[str, Any]) -> None:
        """An input within budget is returned byte for byte as orjson writes it."""
        body = orjson.dumps(payload)
        assume(not too_deep(body))
        fitted = fit(payload, len(body))
        assert fitted.body == body and fitted.truncated == ()


def replace_at(document: Any, path: str, value: Any) -> None:
    """Put `value` at a JSON path as truncate writes it."""
    parent_path, _, last = path.rpartition(".")
    index = re.search(r'\[(\d+|"(?:[^"\\]|\\.)*")\]$', path)
    if index:
        parent, slot = resolve(document, path[:index.start()]), orjson.loads(index.group(1))
    else:
        parent, slot = (resolve(document, parent_path) if parent_path else document), last
    parent[slot] = value
