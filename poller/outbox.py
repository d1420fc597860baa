"""The outbox relay: send what the store committed, in order, then mark it sent.

Records reach Kafka only through here, and only after the transaction that wrote them (with the
state they announce) committed. A failed or interrupted send leaves them in the store, and the
next cycle sends them again before it reads anything new: at worst a re-emission with the same
ids, never a record for state that was not committed, never a lost one.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from poller import metrics
from poller.models import OutboundRecord
from poller.publish import Publisher
from poller.store.base import Leadership, SnapshotStore

log = structlog.get_logger(__name__)

# Entries read and published per round while draining: about one page of events.
DRAIN_BATCH = 1000


class Outbox:
    """Publishes committed records for one store through one publisher."""

    def __init__(self, store: SnapshotStore, publisher: Publisher, *, batch: int = DRAIN_BATCH) -> None:
        self._store = store
        self._publisher = publisher
        self._batch = batch

    async def send(self, records: Sequence[OutboundRecord], through_id: int | None,
                   lease: Leadership) -> None:
        """Publish records just committed (their last outbox id is `through_id`), then mark them.

        Raises LeadershipLost before publishing anything when `lease` is gone, and the
        publisher's errors when Kafka does not acknowledge; the records then stay in the outbox.
        """
        if through_id is None:
            return
        await lease.ensure()  # a deposed leader publishes nothing more
        await self._publisher.publish(records)
        await self._store.mark_sent(through_id)

    async def drain(self, lease: Leadership) -> int:
        """Publish everything the outbox still holds, oldest first; the number of records sent."""
        sent = 0
        while entries := await self._store.pending(self._batch):
            await self.send([entry.record for entry in entries], entries[-1].id, lease)
            sent += len(entries)
        if sent:
            log.info("outbox_drained", records=sent)
            metrics.OUTBOX_RESENT.inc(sent)
        return sent
