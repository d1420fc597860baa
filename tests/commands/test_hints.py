"""Tests for poller.commands.hints: the likely cause of a failure, in words."""

from __future__ import annotations

import errno
import socket

import pytest

from poller.commands.hints import for_error, kafka_cause, network_cause
from poller.config import Settings
from poller.errors import ConfigError, PublishRejected, PublishUnavailable, SourceUnavailable, StoreUnavailable


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


class TestForError:
    def test_store_hint_hides_the_password(self) -> None:
        """A store outage names the store without its password."""
        settings = Settings.load({"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k1k2k3",
                                  "POLLER_STORE_URL": "postgresql://u:pw-77@db/p"})
        hint = for_error(StoreUnavailable("down"), settings) or ""
        assert "postgresql://u:***@db/p" in hint and "pw-77" not in hint

    def test_kafka_unreachable_names_the_servers(self) -> None:
        """A broker that does not answer is named with the setting to check."""
        settings = Settings.load({"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k1k2k3",
                                  "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092"})
        assert "KAFKA_BOOTSTRAP_SERVERS=kafka-1:9092" in (for_error(PublishUnavailable("x"), settings) or "")

    def test_no_guess_without_settings_or_for_config(self) -> None:
        """Without settings, or for a configuration error, there is nothing to add."""
        settings = Settings.load({"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k1k2k3"})
        assert for_error(StoreUnavailable("down"), None) is None
        assert for_error(ConfigError("bad"), settings) is None
