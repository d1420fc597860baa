"""Render canonical tasks the way Waiqin365 does: drifting types, empty strings, shuffled keys."""

from __future__ import annotations

import random
from typing import Any

# Fields the real API sends as numbers one day and as numeric strings the next.
NUMERIC_FIELDS = ("status", "task_status", "execute_demand")
# Fields the API sometimes sends empty and sometimes leaves out: both mean "absent", so
# adding them must never look like a change. (Real unknown fields are part of the task data.)
EMPTY_EXTRA_FIELDS = (("ext_region", ""), ("ext_priority", ""), ("achievement", ""))
# Lists with set semantics: their order carries no meaning and varies between responses.
SET_FIELDS = ("receivers", "feedback_detail")


class Renderer:
    """Turns canonical dicts into wire records; with drift off, a stable, tidy rendering."""

    def __init__(self, seed: int, *, drift: bool) -> None:
        self.rng = random.Random(seed ^ 0x5EED)
        self.drift = drift

    def task(self, task: dict[str, Any]) -> dict[str, Any]:
        """One wire record for `task` (a fresh dict; the canonical task is not touched)."""
        out: dict[str, Any] = {}
        for key, value in task.items():
            if value is None:
                # Waiqin quirk: absent values arrive as "" (and now and then not at all).
                if self.drift and self.rng.random() < 0.1:
                    continue
                out[key] = ""
            elif key in NUMERIC_FIELDS:
                out[key] = value if self.drift and self.rng.random() < 0.5 else str(value)
            elif key in SET_FIELDS and self.drift and isinstance(value, list):
                out[key] = self.rng.sample(value, len(value))
            else:
                out[key] = value
        if not self.drift:
            return out
        if self.rng.random() < 0.05:
            key, value = self.rng.choice(EMPTY_EXTRA_FIELDS)
            out.setdefault(key, value)
        items = list(out.items())
        self.rng.shuffle(items)  # key order carries no meaning and varies between responses
        return dict(items)

    def task_type(self, entry: dict[str, Any]) -> dict[str, Any]:
        """One wire record for a task type."""
        return {k: ("" if v is None else str(v) if k == "status" and self.drift and
                    self.rng.random() < 0.5 else v) for k, v in entry.items()}
