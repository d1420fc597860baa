"""TaskTypeCatalog: task type names for enrichment, and TaskTypeChanged on refresh."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
import structlog

from poller import diff, events, metrics, normalise
from poller.config import DEFAULT_MAX_MESSAGE_BYTES
from poller.errors import AUTH_CAUSES, NormaliseError, SourceAuthError, SourceError
from poller.models import Commit, OutboundRecord, TypeSnapshot
from poller.outbox import Outbox
from poller.store.base import Leadership, SnapshotStore

log = structlog.get_logger(__name__)


class TypeSource(Protocol):
    """The part of the API client the catalog needs."""

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        """Raw task type records for these ids."""



class TaskTypeCatalog:
    """Knows every task type the tasks reference, so events can carry the type name.

    Types are few, so all of them are kept in memory. Unknown ids are fetched once (their
    first sight is recorded silently); all known types are re-read every `refresh_s` (by the
    injected `clock`) and a changed definition becomes a TaskTypeChanged on the task-types
    topic, committed with the new type version and sent through the outbox. If the openid is
    not granted queryTaskType, task events keep flowing without names (docs/design.md §2).
    """

    def __init__(self, client: TypeSource, store: SnapshotStore, outbox: Outbox, *,
                 refresh_s: float, source: str, clock: Callable[[], datetime],
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._client = client
        self._store = store
        self._outbox = outbox
        self._refresh = timedelta(seconds=refresh_s)
        self._source = source
        self._clock = clock
        self._max_message_bytes = max_message_bytes
        self._known: dict[str, TypeSnapshot] = {}
        self._names: dict[str, str | None] = {}
        self._missing: set[str] = set()  # ids the API did not return; asked again on refresh
        self._refused = False
        self._next_refresh: datetime | None = None
        self._is_loaded = False

    def reset(self) -> None:
        """Forget what is cached; the next refresh() reads the store again."""
        self._known.clear()
        self._names.clear()
        self._missing.clear()
        self._is_loaded = False

    async def refresh(self, lease: Leadership) -> int:
        """Load the stored types once; re-read all known types when due and commit and send
        a TaskTypeChanged for each changed definition. Returns the events sent."""
        if not self._is_loaded:
            for snapshot in (await self._store.read_types(None)).values():
                self._remember(snapshot)
            self._next_refresh = self._clock() + self._refresh
            self._is_loaded = True
        if self._next_refresh is not None and self._clock() < self._next_refresh:
            return 0
        self._next_refresh = self._clock() + self._refresh
        self._refused = False  # a grant may have been added in the console meanwhile
        self._missing.clear()
        if not self._known:
            return 0
        fetched = await self._fetch(sorted(self._known))
        observed_at = self._clock()
        changes: list[TypeSnapshot] = []
        records: list[OutboundRecord] = []
        for type_id, current in fetched.items():
            changed, stored = diff.observe_type(self._known.get(type_id), current,
                                                observed_at=observed_at)
            if stored is not None:
                changes.append(stored)
            records.extend(events.encode(event, source=self._source, max_bytes=self._max_message_bytes)
                           for event in changed)
        await self._commit(changes, records, lease)
        return len(records)

    async def names_for(self, type_ids: Collection[str], lease: Leadership) -> dict[str, str | None]:
        """Names of these types, fetching the ones never seen; missing names are None."""
        unknown = [t for t in type_ids if t not in self._known and t not in self._missing]
        if unknown and not self._refused:
            fetched = await self._fetch(unknown)
            # The first sight of a type is recorded silently (docs/design.md §4).
            firsts = [diff.observe_type(None, snap, observed_at=self._clock())[1]
                      for snap in fetched.values() if snap.type_id not in self._known]
            await self._commit([snap for snap in firsts if snap is not None], [], lease)
            self._missing.update(t for t in unknown if t not in fetched)
        return {t: self._names.get(t) for t in type_ids}

    async def _commit(self, types: list[TypeSnapshot], records: list[OutboundRecord],
                      lease: Leadership) -> None:
        last_id = await self._store.commit(Commit(types=types, records=records), lease)
        for snapshot in types:
            self._remember(snapshot)
        await self._outbox.send(records, last_id, lease)

    async def _fetch(self, type_ids: Sequence[str]) -> dict[str, TypeSnapshot]:
        try:
            raws = await self._client.query_task_types(list(type_ids))
        except SourceAuthError as exc:
            if not self._refused:
                log.warning("task_types_refused", error=str(exc), causes=AUTH_CAUSES)
            self._refused = True
            metrics.TASK_TYPES_REFUSED.set(1)
            return {}
        except SourceError as exc:
            # Enrichment never blocks task events: go on without names, ask again later.
            log.warning("task_types_unavailable", error=str(exc))
            return {}
        metrics.TASK_TYPES_REFUSED.set(0)
        fetched: dict[str, TypeSnapshot] = {}
        for raw in raws:
            try:
                snapshot = normalise.task_type(raw)
            except NormaliseError as exc:
                log.warning("task_type_unreadable", reason=exc.reason)
                continue
            fetched[snapshot.type_id] = snapshot
        return fetched

    def _remember(self, snapshot: TypeSnapshot) -> None:
        self._known[snapshot.type_id] = snapshot
        name = orjson.loads(snapshot.document).get("type_name")
        self._names[snapshot.type_id] = name if isinstance(name, str) else None
