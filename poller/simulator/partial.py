"""Partial pages: when the simulated server serves partial data, and which records it leaves out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import xxhash

# xxh3_64 values are uniform over [0, 2**64): a record is left out when its value is below
# fraction * 2**64, so the same records stay missing for a whole episode (a re-read cannot
# heal them) and a new episode picks others.
HASH_SPACE = 2**64


def check_fraction(fraction: float) -> float:
    """`fraction` when it is in [0, 1]; ValueError naming it otherwise."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    return fraction


def keeper(seed: int, episode: str, fraction: float) -> Callable[[str], bool]:
    """A predicate over task ids: False for the `fraction` of ids this episode leaves out.

    Deterministic for (seed, episode): every request of one episode misses the same tasks.
    """
    threshold = int(check_fraction(fraction) * HASH_SPACE)
    prefix = f"{seed}:{episode}:".encode()

    def keep(task_id: str) -> bool:
        return xxhash.xxh3_64_intdigest(prefix + task_id.encode()) >= threshold
    return keep


@dataclass(frozen=True)
class PartialSchedule:
    """Recurring episodes of partial data: every `every_s` seconds, for `for_s` seconds, the
    server leaves out `fraction` of the records (the first episode starts after `every_s`, so a
    client's first run is not hit at once)."""

    fraction: float
    every_s: float
    for_s: float

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if self.every_s <= 0 or not 0 < self.for_s <= self.every_s:
            raise ValueError(f"need every_s > 0 and 0 < for_s <= every_s, got "
                             f"every_s={self.every_s!r}, for_s={self.for_s!r}")

    def episode(self, elapsed_s: float) -> int | None:
        """The episode number running `elapsed_s` seconds after start, or None between them."""
        number = int(elapsed_s // self.every_s)
        if number >= 1 and elapsed_s - number * self.every_s < self.for_s:
            return number
        return None

    def describe(self) -> dict[str, float]:
        return {"fraction": self.fraction, "every_s": self.every_s, "for_s": self.for_s}
