"""Tests for poller.commands.hints: the likely cause of a failure, in words."""

from __future__ import annotations

import errno
import socket

import pytest

from poller.commands.hints import kafka_cause, network_cause
from poller.config import Settings
from poller.errors import PublishRejected, SourceUnavailable


def caused_by(cause: BaseException) -> SourceUnavailable:
    try:
        raise SourceUnavailable("queryTask: connection failed") from cause
    except SourceUnavailable as exc:
        return exc


class TestNetworkCause:
    @pytest.mark.parametrize(("cause", "words"), [
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve api.example"),
        (OSError(errno.ECONNREFUSED, "Connect call failed"), "api.example:443 refused the connection"),
        (TimeoutError(), "did not answer in time"),
    ], ids=["dns", "refused", "timeout"])
    def test_cause_names_the_address(self, cause: BaseException, words: str) -> None:
        """DNS, refusal and silence each get their own sentence naming the host."""
        assert words in (network_cause(caused_by(cause), "api.example:443") or "")

    def test_unknown_cause(self) -> None:
        """An error without a network cause gets no guess."""
        assert network_cause(SourceUnavailable("HTTP 503"), "api.example:443") is None


class TestKafkaCause:
    def test_idempotence_refused(self) -> None:
        """An UnknownError at producer start with idempotence on points at the setting."""
        settings = Settings.load({"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k"})
        error = PublishRejected("cannot start the Kafka producer: UnknownError: [Error -1]")
        assert "KAFKA_ENABLE_IDEMPOTENCE=false" in kafka_cause(error, settings)
