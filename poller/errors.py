"""The exception tree, grouped by what the caller does next.

    PollerError
    ├── ConfigError                          startup; exit code 2
    ├── SourceError
    │   ├── SourceUnavailable    retriable   timeout, connect error, 429, 5xx, transient codes
    │   ├── SourceAuthError      fatal       digest, openid/appkey, IP allow-list, API not granted
    │   └── SourceResponseError  fatal       API error code, unparseable body, a server ignoring `page`
    ├── NormaliseError           skippable   the record goes to the dead-letter topic
    ├── PublishError
    │   ├── PublishUnavailable   retriable
    │   └── PublishRejected      fatal       too large, unauthorised topic
    ├── StoreError
    │   ├── StoreUnavailable     retriable
    │   ├── StoreNotFound        fatal       a command pointed at a store no poller ever wrote
    │   └── StoreConflict        fatal       unreadable state, a schema newer than this release
    │       └── LeadershipLost   fatal       the HA lock is gone: stop, back off, acquire again
    ├── ServeError               startup     the HTTP port cannot be bound (taken, not allowed)
    └── ConsumeError             skippable   (consumer library) a topic or record it cannot read

`retriable` says whether the same operation may simply be tried again in place. A fatal error
fails the current cycle: the daemon logs it, turns not-ready and starts the next cycle after an
exponential backoff; it never exits for a source, broker or store problem (docs/design.md §5).
"""

from __future__ import annotations

from typing import Any, ClassVar

# Every auth failure names the three causes the Waiqin365 console controls (docs/design.md §2).
AUTH_CAUSES = (
    "check (1) the WAIQIN_OPENID/WAIQIN_APPKEY pair, "
    "(2) the caller IP allow-list of this openid (this host's egress IP must be on it), "
    "(3) the APIs granted to this openid (queryTask, queryTaskType) in "
    "系统管理 → 集成管理 → API管理 → API授权"
)


class PollerError(Exception):
    """Base of every error the poller raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(PollerError):
    """A setting is missing or malformed; the message names the variable(s)."""


class SourceError(PollerError):
    """The Waiqin365 API could not give us what we asked for."""

    def __init__(self, message: str, *, endpoint: str | None = None,
                 status: int | None = None, code: str | None = None,
                 return_msg: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.code = code
        self.return_msg = return_msg  # the vendor's return_msg with a non-zero return_code


class SourceUnavailable(SourceError):
    """Timeout, connection error, HTTP 429/5xx or a transient return code: try again later."""

    retriable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class SourceAuthError(SourceError):
    """The API refused our credentials, our IP or the endpoint."""


class SourceResponseError(SourceError):
    """The API answered with an error code, an unreadable body or pages that make no sense."""


class NormaliseError(PollerError):
    """A record cannot be read into a task; it belongs on the dead-letter topic."""

    def __init__(self, reason: str, *, task_id: str | None = None, kind: str = "malformed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id
        # A short, bounded label for the dead-letter metric (`reason` is free text).
        self.kind = kind


class PublishError(PollerError):
    """Kafka did not acknowledge what we sent."""


class PublishUnavailable(PublishError):
    """The brokers are unreachable or timed out: the records may or may not be stored."""

    retriable = True


class PublishRejected(PublishError):
    """The brokers refused the records (too large, not authorised): retrying will not help."""


class StoreError(PollerError):
    """The snapshot store failed."""


class StoreUnavailable(StoreError):
    """The database is unreachable or busy."""

    retriable = True


class StoreNotFound(StoreError):
    """Nothing is stored where POLLER_STORE_URL points: no poller ever ran with it."""


class StoreConflict(StoreError):
    """The store refuses the operation (corrupt or read-only file, schema newer than this release)."""


class LeadershipLost(StoreConflict):
    """This process is not, or no longer, the store's leader: it must neither commit nor publish."""


class ServeError(PollerError):
    """The health/metrics server cannot listen where it was told to (port taken, no permission)."""


class ConsumeError(PollerError):
    """The consumer library (poller.consumer) cannot read a topic or a record; says where."""

    def __init__(self, message: str, topic: str | None = None, partition: int | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
