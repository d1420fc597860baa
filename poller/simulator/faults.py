"""Faults the simulator injects into its next N API responses, optionally for one endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

# Every fault kind, with what it does to a matching request.
KINDS: Final = {
    "http_500": "answer HTTP 500",
    "http_429": "answer HTTP 429 with Retry-After: <retry_after> seconds (default 1)",
    "garbage": "answer HTTP 200 with a non-JSON (HTML) body",
    "error_code": "answer return_code <code> (default 9001) with return_msg <msg>",
    "latency": "delay the answer by <ms> milliseconds (default 500)",
    "malformed_record": "insert a bad record (<variant>: not_object, missing_task_id, "
                        "receivers_not_list; default rotates) into the next queryTask page",
    "ignore_page": "answer page 1 whatever page was asked for (queryTask)",
    "auth": "refuse as if the caller IP were not on the allow-list (return_code 1004)",
}
MALFORMED_VARIANTS: Final = ("not_object", "missing_task_id", "receivers_not_list")


@dataclass
class Fault:
    """One armed fault: applies to the next `remaining` matching requests."""

    kind: str
    remaining: int
    endpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "remaining": self.remaining, "endpoint": self.endpoint,
                "params": dict(self.params)}


class FaultPlan:
    """The armed faults; `take` consumes one use of every fault matching a request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, kind: str, count: int = 1, endpoint: str | None = None,
            **params: Any) -> Fault:
        """Arm `kind` for the next `count` requests (to `endpoint` only, when given)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(KINDS)}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        fault = Fault(kind, count, endpoint, params)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self._faults]

    def take(self, endpoint: str) -> dict[str, Fault]:
        """The faults hitting this request, one per kind, each with one use consumed."""
        hit: dict[str, Fault] = {}
        for fault in self._faults:
            if fault.kind in hit or fault.endpoint not in (None, endpoint):
                continue
            if fault.kind in ("malformed_record", "ignore_page") and endpoint != "queryTask":
                continue  # page-shaped faults only make sense for queryTask
            fault.remaining -= 1
            hit[fault.kind] = fault
        self._faults = [f for f in self._faults if f.remaining > 0]
        return hit
