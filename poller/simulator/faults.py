"""Faults the simulator injects into its next N API responses, optionally for one endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from poller.simulator.partial import check_fraction

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
    "partial_pages": "leave <fraction> (default 0.5) of the matching tasks out of the result set "
                     "(queryTask; the same tasks for the fault's whole life)",
}
MALFORMED_VARIANTS: Final = ("not_object", "missing_task_id", "receivers_not_list")
# Faults that shape a queryTask page; other endpoints neither trigger nor consume them.
QUERY_TASK_ONLY: Final = frozenset({"malformed_record", "ignore_page", "partial_pages"})


@dataclass
class Fault:
    """One armed fault: applies to the next `remaining` matching requests, or to every matching
    request until the monotonic time `until` when it was armed for a number of seconds."""

    kind: str
    remaining: int
    endpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    until: float | None = None
    serial: int = 0  # numbers the faults of one plan: partial_pages derives its choice from it

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "remaining": None if self.until else self.remaining,
                "endpoint": self.endpoint, "params": dict(self.params),
                "seconds_left": None if self.until is None else max(
                    0.0, round(self.until - time.monotonic(), 3))}


class FaultPlan:
    """The armed faults; `take` consumes one use of every fault matching a request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._serials = 0

    def add(self, kind: str, count: int = 1, endpoint: str | None = None,
            seconds: float | None = None, **params: Any) -> Fault:
        """Arm `kind` for the next `count` requests, or for every request during the next
        `seconds` (to `endpoint` only, when given)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(KINDS)}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds!r}")
        if kind == "partial_pages":
            params["fraction"] = check_fraction(float(params.get("fraction", 0.5)))
        self._serials += 1
        until = None if seconds is None else time.monotonic() + seconds
        fault = Fault(kind, count, endpoint, params, until, self._serials)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self._faults]

    def take(self, endpoint: str) -> dict[str, Fault]:
        """The faults hitting this request, one per kind, each with one use consumed."""
        now = time.monotonic()
        self._faults = [f for f in self._faults if f.until is None or f.until > now]
        hit: dict[str, Fault] = {}
        for fault in self._faults:
            if fault.kind in hit or fault.endpoint not in (None, endpoint):
                continue
            if fault.kind in QUERY_TASK_ONLY and endpoint != "queryTask":
                continue  # page-shaped faults only make sense for queryTask
            if fault.until is None:
                fault.remaining -= 1
            hit[fault.kind] = fault
        self._faults = [f for f in self._faults if f.remaining > 0]
        return hit
