"""Logging setup: one structlog chain (JSON or console) on stdout, secrets redacted, stdlib too.

Lines go to stdout, the container convention: Kubernetes and docker collect it, and nothing
else of ours writes there (`tail` and `demo` output is the CLI's, never the daemon's).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from poller.config import LogSettings, Settings

MASK = "***"
# Values under keys like these are masked whatever they hold (digest is md5 over the appkey).
SENSITIVE_KEY = re.compile(
    r"appkey|app_key|password|passwd|secret|digest|token|credential|authorization", re.IGNORECASE
)
# Third-party libraries (aiokafka, aiohttp, asyncpg) are chatty below this level.
STDLIB_FLOOR = logging.WARNING
_PLAIN = (str, int, float, bool, type(None), datetime, date)


class Redactor:
    """A processor that replaces secret values in every string and masks sensitive keys."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s and s.strip()}, key=len, reverse=True)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {key: self._field(key, value) for key, value in event_dict.items()}

    def _field(self, key: object, value: Any) -> Any:
        if isinstance(key, str) and value is not None and SENSITIVE_KEY.search(key):
            return MASK
        return self._value(value)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self._field(key, item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(item) for item in value]
        if isinstance(value, _PLAIN):
            return value
        # Anything else (an exception, a model, a URL object) is rendered as text anyway:
        # render it here so its text is redacted too.
        return self.text(str(value))

    def text(self, text: str) -> str:
        """`text` with every secret replaced by ***."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def secret_values(settings: Settings) -> list[str]:
    """The secret values of these settings, for `configure(..., secrets=...)`."""
    candidates = (settings.waiqin.appkey, settings.kafka.sasl_password, settings.kafka.ssl_password)
    return [secret.get_secret_value() for secret in candidates if secret is not None]


def _dumps(event_dict: EventDict, **_: Any) -> str:
    # orjson keeps non-ASCII (Chinese task text) readable and is several times faster than json.
    return orjson.dumps(event_dict, default=str).decode()


def configure(settings: LogSettings, *, secrets: Iterable[str] = (),
              stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger to write one format to `stream` (stdout).

    Every line carries the bound contextvars, an ISO UTC timestamp and the level; exceptions
    are rendered as plain tracebacks (never with local variables, which may hold secrets), and
    `secrets` are replaced by *** everywhere. stdlib loggers (aiokafka, aiohttp) come through
    the same chain from WARNING up. Calling it again replaces the previous configuration.
    """
    out = stream or sys.stdout
    level = logging.getLevelNamesMapping()[settings.level]
    redact = Redactor(secrets)
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
