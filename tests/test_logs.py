"""Tests for poller.logs: JSON and console output, contextvars, redaction, stdlib routing."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from poller.config import LogSettings
from poller.logs import configure
from poller.redact import MASK

APPKEY = "s3cr3t-appkey-0123456789"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A text stream to log into; logging is reset to structlog's defaults afterwards."""
    out = io.StringIO()
    yield out
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__ == "poller.logs":
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def json_logs(out: io.StringIO, level: str = "INFO") -> None:
    configure(LogSettings(level=level, format="json"), secrets=[APPKEY], stream=out)


class TestJson:
    def test_line_fields(self, stream: io.StringIO) -> None:
        """A JSON line has the event, level, UTC ISO timestamp and fields, non-ASCII kept."""
        json_logs(stream)
        structlog.get_logger().info("cycle_completed", tasks=3, note="拜访客户")
        (line,) = lines(stream)
        assert line["event"] == "cycle_completed"
        assert (line["level"], line["tasks"], line["note"]) == ("info", 3, "拜访客户")
        assert line["timestamp"].endswith("Z")
        assert "拜访客户" in stream.getvalue()

    def test_contextvars_are_merged(self, stream: io.StringIO) -> None:
        """Values bound through contextvars appear on every line."""
        json_logs(stream)
        structlog.contextvars.bind_contextvars(cycle_id=7, window_from="2024-05-01")
        structlog.get_logger().info("page_fetched", page=2)
        (line,) = lines(stream)
        assert (line["cycle_id"], line["window_from"], line["page"]) == (7, "2024-05-01", 2)

    def test_level_filtering(self, stream: io.StringIO) -> None:
        """Lines below the configured level are dropped."""
        json_logs(stream, level="WARNING")
        log = structlog.get_logger()
        log.info("quiet")
        log.warning("loud")
        assert [line["event"] for line in lines(stream)] == ["loud"]

    def test_exception_rendered(self, stream: io.StringIO) -> None:
        """log.exception renders the traceback into the line, secrets redacted."""
        json_logs(stream)
        try:
            raise ValueError(f"bad signature for {APPKEY}")
        except ValueError:
            structlog.get_logger().exception("cycle_failed")
        (line,) = lines(stream)
        assert "Traceback" in line["exception"]
        assert f"ValueError: bad signature for {MASK}" in line["exception"]
        assert APPKEY not in stream.getvalue()


class TestRedaction:
    def test_secret_values_replaced_everywhere(self, stream: io.StringIO) -> None:
        """The appkey is replaced in the message, in fields, in nested values and in objects."""
        json_logs(stream)
        structlog.get_logger().warning(
            f"calling with {APPKEY}",
            url=f"https://x/{APPKEY}/y",
            nested={"list": [f"a{APPKEY}b"], "n": 1},
            error=RuntimeError(f"refused {APPKEY}"),
        )
        (line,) = lines(stream)
        assert APPKEY not in stream.getvalue()
        assert line["event"] == f"calling with {MASK}"
        assert line["url"] == f"https://x/{MASK}/y"
        assert line["nested"] == {"list": [f"a{MASK}b"], "n": 1}
        assert line["error"] == f"refused {MASK}"

    def test_sensitive_keys_masked(self, stream: io.StringIO) -> None:
        """Keys named like appkey, password, secret or digest are masked whatever they hold."""
        json_logs(stream)
        structlog.get_logger().info(
            "request", appkey="other", sasl_password="pw", digest="abc", client_secret=1,
            params={"WAIQIN_APPKEY": "x"}, openid="visible",
        )
        (line,) = lines(stream)
        assert {k: line[k] for k in ("appkey", "sasl_password", "digest", "client_secret")} == (
            dict.fromkeys(("appkey", "sasl_password", "digest", "client_secret"), MASK)
        )
        assert line["params"] == {"WAIQIN_APPKEY": MASK}
        assert line["openid"] == "visible"


class TestStdlib:
    def test_warnings_come_through_as_json(self, stream: io.StringIO) -> None:
        """stdlib warnings (aiokafka, aiohttp) become JSON lines with logger name and context."""
        json_logs(stream)
        structlog.contextvars.bind_contextvars(cycle_id=3)
        logging.getLogger("aiokafka").warning("Unable connect to %s with %s", "node 1", APPKEY)
        (line,) = lines(stream)
        assert line["event"] == f"Unable connect to node 1 with {MASK}"
        assert (line["logger"], line["level"], line["cycle_id"]) == ("aiokafka", "warning", 3)

    def test_info_is_dropped(self, stream: io.StringIO) -> None:
        """stdlib lines below WARNING are dropped even when our level is DEBUG."""
        json_logs(stream, level="DEBUG")
        logging.getLogger("aiohttp.access").info("GET /healthz")
        assert lines(stream) == []

    def test_stdlib_exception(self, stream: io.StringIO) -> None:
        """A stdlib log with exc_info carries the traceback."""
        json_logs(stream)
        try:
            raise OSError("connection refused")
        except OSError:
            logging.getLogger("aiokafka").error("send failed", exc_info=True)
        (line,) = lines(stream)
        assert "OSError: connection refused" in line["exception"]

    def test_configuring_again_replaces_handler(self, stream: io.StringIO) -> None:
        """A second configure leaves one root handler, so stdlib lines are not doubled."""
        json_logs(stream)
        json_logs(stream)
        logging.getLogger("x").warning("once")
        assert len(lines(stream)) == 1


class TestConsole:
    def test_console_format(self, stream: io.StringIO) -> None:
        """The console format prints a readable line with the event and fields, redacted."""
        configure(LogSettings(format="console"), secrets=[APPKEY], stream=stream)
        structlog.contextvars.bind_contextvars(cycle_id=9)
        structlog.get_logger().info("cycle_completed", tasks=3, key=APPKEY)
        text = stream.getvalue()
        assert "cycle_completed" in text
        assert "tasks=3" in text
        assert "cycle_id=9" in text
        assert APPKEY not in text
        assert "\x1b[" not in text  # no colours on a non-terminal stream

    def test_console_exception(self, stream: io.StringIO) -> None:
        """The console format renders a plain traceback."""
        configure(LogSettings(format="console"), stream=stream)
        try:
            raise KeyError("gone")
        except KeyError:
            structlog.get_logger().exception("failed")
        assert "KeyError: 'gone'" in stream.getvalue()
