"""The SQLite store's leader lock: an exclusive flock on a sidecar file next to the database."""

from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from poller.errors import LeadershipLost, StoreUnavailable

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.5  # how often a waiting poller retries the lock
# Linux lists every lock of the system here: who holds ours can be read without taking it.
PROC_LOCKS = Path("/proc/locks")


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a store's leader lock, as far as an onlooker can tell (for `status`)."""

    pid: int | None  # SQLite: the poller's process id; PostgreSQL: the lock session's backend pid
    where: str  # the lock file, or the lock session's client address and application name
    since: datetime | None = None  # when the lock session started (PostgreSQL only)


def file_lock_holder(path: Path, *, proc_locks: Path = PROC_LOCKS) -> Holder | None:
    """The holder of the flock on `path` (None: nobody holds it), without taking the lock.

    On Linux the kernel's lock table says whether the file is locked; elsewhere a shared lock
    is tried and dropped at once (a daemon starting in that instant retries half a second
    later). The pid is the one the holder wrote into the file.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"cannot read the leader lock file {path}: {exc}") from exc
    try:
        table = proc_locks.read_text()
    except OSError:
        held = _is_locked_probe(path)
    else:
        held = _is_listed(table, stat)
    if not held:
        return None
    return Holder(pid=_written_pid(path), where=f"lock file {path}")


def _is_listed(table: str, stat: os.stat_result) -> bool:
    # A line reads "1: FLOCK  ADVISORY  WRITE 18056 fe:00:2220979 0 EOF" (device in hex).
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter queued behind a lock, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == file_id:
            return True
    return False


def _is_locked_probe(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreUnavailable(f"cannot read the leader lock file {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if it was granted
    return False


def _written_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


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
