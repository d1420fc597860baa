"""Pure: a page's records as they arrived: each one's JSON bytes, task_id and rendering hash.

An unchanged task costs the hash of its bytes and one indexed lookup, so a page is split into
its records' bytes (one C-level pass of msgspec) instead of parsed into Python objects; only the
records whose rendering the store has not seen are parsed, with orjson, exactly as a whole-page
parse would have parsed them.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any, Final, overload

import msgspec
import orjson

from poller.errors import SourceResponseError
from poller.normalise import rendering_hash, task_id_of


class _Head(msgspec.Struct):
    """What the split reads of a record besides its bytes: the task_id (every other key is
    skipped without being decoded)."""

    task_id: Any = None


# Decoding the same bytes twice in C is cheaper than building the records' objects once.
_SPANS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_HEADS: Final = msgspec.json.Decoder(list[_Head])


class WireRecords(Sequence[Any]):
    """The records of one response, each parsed (with orjson) when it is first read.

    `task_ids` and `hashes` are those `normalise.task_id_of` and the rendering hash give for
    the parsed records; `raw_ids` the `task_id` values as sent (None when absent).
    """

    __slots__ = ("_parsed", "_preview", "_spans", "endpoint", "hashes", "raw_ids", "task_ids")

    def __init__(self, endpoint: str, spans: list[msgspec.Raw], raw_ids: list[Any],
                 preview: str) -> None:
        self.endpoint = endpoint
        self._spans = spans
        self._preview = preview
        self._parsed: dict[int, Any] = {}
        self.raw_ids = raw_ids
        self.hashes = list(map(rendering_hash, spans))
        # The usual task_id is a non-empty string, which both parsers read alike; any other
        # value (a number, an object, "") is read from the parsed record, as it would have been.
        self.task_ids: list[str | None] = [
            task_id if type(task_id) is str and task_id else task_id_of(self[index])
            for index, task_id in enumerate(raw_ids)
        ]

    def span(self, index: int) -> msgspec.Raw:
        """The JSON bytes of record `index`, exactly as received."""
        return self._spans[index]

    def __len__(self) -> int:
        return len(self._spans)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if index in self._parsed:
            return self._parsed[index]
        try:
            record = orjson.loads(memoryview(self._spans[index]))
        except orjson.JSONDecodeError as exc:
            # What a whole-page parse would have raised, the moment the record is needed.
            raise SourceResponseError(
                f"{self.endpoint} response_data is a string but not JSON: {self._preview!r}",
                endpoint=self.endpoint) from exc
        self._parsed[index] = record
        return record

    def __iter__(self) -> Iterator[Any]:
        return (self[index] for index in range(len(self)))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence (a list, say) of the same records."""
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(map(operator.eq, self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable-like: equal to lists, so not hashable

    def __repr__(self) -> str:
        return f"WireRecords({len(self)} records of {self.endpoint})"


def split(endpoint: str, data: str) -> WireRecords | None:
    """The records of a response_data string holding a JSON array of objects, unparsed; None
    for anything else (not an array, a record that is not an object, nesting msgspec refuses),
    which the caller parses in full as before."""
    body = data.encode()
    try:
        spans = _SPANS.decode(body)
        heads = _HEADS.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return WireRecords(endpoint, spans, [head.task_id for head in heads], data[:40])
