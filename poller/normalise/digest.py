"""Pure: the hashes of normalisation: content hash, hash of a record as received, fingerprint."""

from __future__ import annotations

from typing import Any, Final

import orjson
import xxhash
from msgspec import Raw

from poller.normalise.rules import DUMP_OPTS, NORMALISATION_VERSION, decimal

_HASH_PREFIX: Final = f"waiqin-poller/{NORMALISATION_VERSION}\n".encode()
_SIGN_BIT: Final = 1 << 63


def content_hash(document: bytes) -> str:
    """The content hash of a canonical document, normalisation version included."""
    return xxhash.xxh3_128_hexdigest(_HASH_PREFIX + document)


def received_hash(raw: object) -> int:
    """The rendering hash of a parsed record: of its JSON bytes, key order included.

    Never raises: a value orjson refuses is hashed through `json_bytes`.
    """
    try:
        body = orjson.dumps(raw)
    except TypeError:  # deeper than 255 levels, beyond 64 bits, a lone surrogate
        body = json_bytes(raw, sort_keys=False)
    return rendering_hash(body)


def rendering_hash(body: bytes | Raw) -> int:
    """A 64-bit hash of a record's JSON bytes exactly as received, as a signed integer.

    Seeded with the normalisation version, so a rules change makes every record look new.
    """
    unsigned = xxhash.xxh3_64_intdigest(body, seed=NORMALISATION_VERSION)
    # Signed, so it fits SQLite INTEGER and PostgreSQL BIGINT.
    return unsigned - (_SIGN_BIT << 1) if unsigned & _SIGN_BIT else unsigned


def fingerprint(canonical: object) -> str:
    """The hash of a canonical value (of a record, malformed or not); never raises."""
    return xxhash.xxh3_128_hexdigest(_HASH_PREFIX + json_bytes(canonical, sort_keys=True))


def json_bytes(value: Any, *, sort_keys: bool) -> bytes:
    """JSON bytes of any value at any depth, for hashing; never raises.

    orjson when it can; otherwise an iterative writer (no recursion, so no depth limit) that
    also writes what JSON cannot hold (huge integers, lone surrogates, non-JSON values)
    deterministically. Only equality of the bytes matters, not that they parse.
    """
    try:
        return orjson.dumps(value, option=DUMP_OPTS if sort_keys else 0)
    except TypeError:
        pass
    parts: list[bytes] = []
    # (True, bytes) is output as it is; (False, value) is still to be written.
    stack: list[tuple[bool, Any]] = [(False, value)]
    while stack:
        is_literal, item = stack.pop()
        if is_literal:
            parts.append(item)
        elif type(item) is dict:
            stack.extend(reversed(_object_tokens(item, sort_keys)))
        elif type(item) is list:
            stack.extend(reversed(_list_tokens(item)))
        else:
            parts.append(_scalar_bytes(item))
    return b"".join(parts)


def _object_tokens(item: dict[Any, Any], sort_keys: bool) -> list[tuple[bool, Any]]:
    pairs = [(_scalar_bytes(key), value) for key, value in item.items()]
    if sort_keys:
        pairs.sort(key=lambda pair: pair[0])
    tokens: list[tuple[bool, Any]] = [(True, b"{")]
    for index, (key, value) in enumerate(pairs):
        tokens.append((True, b"," + key + b":" if index else key + b":"))
        tokens.append((False, value))
    tokens.append((True, b"}"))
    return tokens


def _list_tokens(item: list[Any]) -> list[tuple[bool, Any]]:
    tokens: list[tuple[bool, Any]] = [(True, b"[")]
    for index, value in enumerate(item):
        if index:
            tokens.append((True, b","))
        tokens.append((False, value))
    tokens.append((True, b"]"))
    return tokens


def _scalar_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    if type(value) is str:  # a lone surrogate: UTF-8 cannot hold it, surrogatepass can
        return b'"' + value.encode("utf-8", "surrogatepass") + b'"'
    if type(value) is int:  # beyond 64 bits
        return decimal(value).encode()
    try:
        return f"<{type(value).__name__} {value!r}>".encode("utf-8", "surrogatepass")
    except Exception:  # a foreign object whose repr fails: its type is all we can say
        return f"<{type(value).__name__}>".encode()
