"""The SQLite store's leader lock: an exclusive flock on a sidecar file next to the database."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

import structlog

from poller.errors import LeadershipLost, StoreUnavailable

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.5  # how often a waiting poller retries the lock


class FileLeadership:
    """Leadership through `flock(LOCK_EX | LOCK_NB)` on `<db>.lock`.

    flock belongs to the open file description, so the kernel drops it when the holder dies
    (kill -9 included), and two instances in one process (separate `open` calls) exclude each
    other too. The lock file is never deleted: unlinking it would let a newcomer lock a fresh
    file of the same name while the old holder still believes it leads. Local disks only:
    flock over NFS is not dependable.
    """

    def __init__(self, path: Path, *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.path = path
        self._poll_interval_s = poll_interval_s
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"FileLeadership({str(self.path)!r}, held={self._fd is not None})"

    @property
    def is_held(self) -> bool:
        """Whether this instance holds the lock (as far as it knows; ensure() checks)."""
        return self._fd is not None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the lock is ours (True) or `stop` is set (False).

        Raises StoreUnavailable if the lock file cannot be created (permissions, missing disk).
        """
        waiting_logged = False
        while not stop.is_set():
            if self._try_lock():
                log.info("leadership_acquired", backend="sqlite", lock=str(self.path))
                return True
            if not waiting_logged:
                log.info("leadership_waiting", backend="sqlite", lock=str(self.path))
                waiting_logged = True
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._poll_interval_s)
            except TimeoutError:
                pass
        return False

    def _try_lock(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the leader lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise StoreUnavailable(f"cannot lock {self.path}: {exc}") from exc
        self._fd = fd
        if not self._same_file():  # replaced between open and flock: not the live lock file
            self._close()
            return False
        # The holder's pid, for a human wondering which process leads.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def _same_file(self) -> bool:
        if self._fd is None:
            return False
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    async def ensure(self) -> None:
        """Raise LeadershipLost unless we hold the lock on the file that is at `path` now."""
        self.verify()

    def verify(self) -> None:
        """`ensure` without awaiting, for the store's worker thread inside a transaction."""
        if self._fd is None:
            raise LeadershipLost(f"not the leader: the lock {self.path} is not held")
        if not self._same_file():
            raise LeadershipLost(
                f"leadership lost: the lock file {self.path} was removed or replaced, "
                "another poller may be active"
            )

    async def release(self) -> None:
        """Unlock and close; idempotent."""
        if self._fd is not None:
            self._close()
            log.info("leadership_released", backend="sqlite", lock=str(self.path))

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
