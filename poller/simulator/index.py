"""The simulator's result order, indexed: tasks by (modify_time, task_id), overall and per create day."""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from itertools import islice
from typing import Any, Final

Key = str
"""modify_time (`yyyy-MM-dd HH:mm`), len(task_id) as two digits, task_id: one string whose order
is the order queryTask answers in (modify_time, then ids compared as numbers). One string
sorts and bisects about three times faster than the equivalent tuple."""

# Where the task id starts in a key: after the 16 characters of the time and 2 of the length.
ID_AT: Final = 18
# Sorts after " HH:mm", so "yyyy-MM-dd~" bounds every key of that day from above.
AFTER_DAY: Final = "~"


def key(task: dict[str, Any]) -> Key:
    """The index key of a canonical task (modify_time always has the API's 16 characters)."""
    return f"{task['modify_time']}{len(task['task_id']):02d}{task['task_id']}"


@dataclass(frozen=True)
class DayFilters:
    """queryTask's inclusive Beijing-day filters; None leaves that side open."""

    modify_from: date | None = None
    modify_to: date | None = None
    create_from: date | None = None
    create_to: date | None = None


class TaskIndex:
    """Sorted keys of the live tasks: one list over all of them and one per create day.

    A modify-day filter is a bisection of the overall list; a create-day filter merges the
    per-day lists it covers. A page therefore costs about its offset plus its rows, never a
    sort of the whole store (a million seeded tasks answer a day-filtered page in
    milliseconds). Mutations cost a bisection and a list insert (a memmove), fine at churn
    rates.
    """

    def __init__(self, tasks: Iterable[dict[str, Any]] = ()) -> None:
        self._all: list[Key] = []
        self._by_create: dict[str, list[Key]] = {}
        for task in tasks:
            k = key(task)
            self._all.append(k)
            self._by_create.setdefault(task["create_time"][:10], []).append(k)
        self._all.sort()
        for keys in self._by_create.values():
            keys.sort()
        self._days = sorted(self._by_create)  # the create days that have a list

    def __len__(self) -> int:
        return len(self._all)

    def id_at(self, position: int) -> str:
        """The id of the task at `position` in the overall order (random picks without
        copying a million ids into a list first)."""
        return self._all[position][ID_AT:]

    def add(self, task: dict[str, Any]) -> None:
        """Index a task that is not indexed yet."""
        k = key(task)
        insort(self._all, k)
        insort(self._day(task["create_time"][:10]), k)

    def remove(self, task: dict[str, Any]) -> None:
        """Drop a task, as indexed under its current modify_time; KeyError when absent."""
        k = key(task)
        _delete(self._all, k)
        _delete(self._by_create.get(task["create_time"][:10], []), k)

    def restamp(self, task: dict[str, Any], modify_time: str) -> None:
        """Set the task's modify_time and move it in the order accordingly."""
        if modify_time == task["modify_time"]:
            return
        self.remove(task)
        task["modify_time"] = modify_time
        self.add(task)

    def ids(self, filters: DayFilters, *, offset: int = 0, rows: int | None = None,
            keep: Callable[[str], bool] | None = None) -> list[str]:
        """Task ids matching `filters`, in result order, from `offset`, at most `rows`.

        `keep` drops ids from the result set itself (before the offset is applied), the way a
        server serving partial data would: offset paging stays consistent, so pages keep their
        shape and nothing tells a client that records are missing.
        """
        runs = self._runs(filters)
        end = None if rows is None else offset + rows
        if keep is None and len(runs) == 1:
            keys, lo, hi = runs[0]  # one sorted run: slice it directly
            stop = hi if end is None else min(hi, lo + end)
            return [k[ID_AT:] for k in keys[lo + offset:stop]]
        ordered: Iterator[Key] = heapq.merge(*(map(keys.__getitem__, range(lo, hi))
                                               for keys, lo, hi in runs))
        found: Iterator[str] = (k[ID_AT:] for k in ordered)
        if keep is not None:
            found = filter(keep, found)
        return list(islice(found, offset, end))

    def _runs(self, filters: DayFilters) -> list[tuple[list[Key], int, int]]:
        """The sorted lists a query reads, each with the [lo, hi) span its modify filter allows."""
        if filters.create_from is None and filters.create_to is None:
            lists = [self._all]
        else:
            first = (bisect_left(self._days, filters.create_from.isoformat())
                     if filters.create_from else 0)
            last = (bisect_right(self._days, filters.create_to.isoformat())
                    if filters.create_to else len(self._days))
            lists = [self._by_create[day] for day in self._days[first:last]]
        low = filters.modify_from.isoformat() if filters.modify_from else None
        high = filters.modify_to.isoformat() + AFTER_DAY if filters.modify_to else None
        runs = []
        for keys in lists:
            lo = bisect_left(keys, low) if low else 0
            hi = bisect_left(keys, high) if high else len(keys)
            if lo < hi:
                runs.append((keys, lo, hi))
        return runs or [([], 0, 0)]

    def _day(self, day: str) -> list[Key]:
        keys = self._by_create.get(day)
        if keys is None:
            keys = self._by_create[day] = []
            insort(self._days, day)
        return keys


def _delete(keys: list[Key], k: Key) -> None:
    at = bisect_left(keys, k)
    if at == len(keys) or keys[at] != k:
        raise KeyError(k[ID_AT:])
    del keys[at]
