"""Logging setup: one structlog chain (JSON or console), secrets redacted, stdlib too.

The daemon logs to stdout, the container convention: Kubernetes and docker collect it, and
nothing else of ours writes there. Human-facing commands (check, backfill, tail, demo, ...)
log to stderr, so their own output on stdout stays clean.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor

from poller.config import LogSettings
from poller.redact import Redactor

# Third-party libraries (aiokafka, aiohttp, asyncpg) are chatty below this level.
STDLIB_FLOOR = logging.WARNING


class _CurrentStderr:
    """A stream that writes to whatever sys.stderr is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def current_stderr() -> TextIO:
    """A stream for human-facing commands' logs: stderr as it is at each write.

    rich's progress bar swaps sys.stderr for a proxy that prints lines above the bar; a logger
    holding the original stream would write straight through the bar instead.
    """
    return cast(TextIO, _CurrentStderr())


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """Silence a library's logger for a while: a command that reports the failure itself in
    one line does not need the library's own complaint about it first."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dumps(event_dict: EventDict, **_: Any) -> str:
    # orjson keeps non-ASCII (Chinese task text) readable and is several times faster than json.
    return orjson.dumps(event_dict, default=str).decode()


def configure(settings: LogSettings, *, redactor: Redactor | None = None,
              secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger to write one format to `stream` (stdout).

    Every line carries the bound contextvars, an ISO UTC timestamp and the level; exceptions
    are rendered as plain tracebacks (never with local variables, which may hold secrets), and
    the secrets of `redactor` (or the plain `secrets`) are replaced by *** everywhere. stdlib
    loggers (aiokafka, aiohttp) come through the same chain from WARNING up. Calling it again
    replaces the previous configuration.
    """
    out = stream or sys.stdout
    level = logging.getLevelNamesMapping()[settings.level]
    redact = redactor or Redactor(secrets)
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps) if settings.format == "json"
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback,
        )
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(out),
        # Not cached, so that configuring again (tests, `demo`) reaches module-level loggers.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(out, max(level, STDLIB_FLOOR), [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ], [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ])


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our root handler, recognisable so that configuring again replaces it."""


def _route_stdlib(out: TextIO, level: int, pre_chain: list[Processor],
                  processors: list[Processor]) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(out)
    handler.setLevel(level)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain, processors=processors,
    ))
    root.addHandler(handler)
    root.setLevel(level)
