"""Settings: exactly the variables of docs/design.md §6, validated, failing with one clear line."""

from __future__ import annotations

from datetime import date

import pytest

from poller.config import Settings
from poller.errors import ConfigError

REQUIRED = {"WAIQIN_OPENID": "openid-1", "WAIQIN_APPKEY": "appkey-秘密-1"}


def load(**env: str) -> Settings:
    return Settings.load({**REQUIRED, **env})


class TestDefaults:
    def test_defaults_are_the_design_table(self) -> None:
        """Only the credentials are required; every default is docs/design.md §6's."""
        s = load()
        assert s.waiqin.base_url == "https://openapi.waiqin365.com"
        assert s.kafka.bootstrap_servers == "localhost:9092" and s.kafka.enable_idempotence
        assert s.kafka.security_protocol == "PLAINTEXT"
        assert s.store.url == "sqlite:///./poller-state.db" and s.store.backend == "sqlite"
        assert (s.poll.poll_interval_s, s.poll.lookback_minutes) == (60.0, 30)
        assert (s.poll.start_mode, s.poll.start_date) == ("baseline", None)
        assert s.poll.type_refresh_s == 300.0
        assert s.topics.tasks == "waiqin365.tasks"
        assert s.topics.task_types == "waiqin365.task-types"
        assert s.topics.dead_letter == "waiqin365.poller.dead-letter"
        assert s.http.port == 8080 and (s.log.level, s.log.format) == ("INFO", "json")
        assert s.waiqin.max_response_bytes == 67_108_864
        assert s.kafka.max_message_bytes == 1_000_000

    def test_every_variable_is_read(self) -> None:
        """Each variable of the table changes its setting."""
        s = load(WAIQIN_BASE_URL="https://openapi.qince.com/", KAFKA_BOOTSTRAP_SERVERS="k1:9093,k2:9093",
                 KAFKA_ENABLE_IDEMPOTENCE="false", POLLER_STORE_URL="postgresql://poller@db:5432/poller",
                 POLLER_POLL_INTERVAL="0.5", POLLER_LOOKBACK_MINUTES="45", POLLER_START_MODE="replay",
                 POLLER_START_DATE="2026-01-31", POLLER_TYPE_REFRESH_SECONDS="60",
                 POLLER_TOPIC_PREFIX="acme.waiqin", POLLER_HTTP_PORT="9100", LOG_LEVEL="debug",
                 LOG_FORMAT="console", WAIQIN_MAX_RESPONSE_BYTES="1048576",
                 KAFKA_MAX_MESSAGE_BYTES="5242880")
        assert s.waiqin.base_url == "https://openapi.qince.com"
        assert s.kafka.bootstrap_servers == "k1:9093,k2:9093" and not s.kafka.enable_idempotence
        assert s.store.backend == "postgresql"
        assert (s.poll.poll_interval_s, s.poll.lookback_minutes, s.poll.start_mode) == (0.5, 45, "replay")
        assert s.poll.start_date == date(2026, 1, 31) and s.poll.type_refresh_s == 60.0
        assert s.topics.tasks == "acme.waiqin.tasks" and s.http.port == 9100
        assert (s.log.level, s.log.format) == ("DEBUG", "console")
        assert s.waiqin.max_response_bytes == 1_048_576 and s.kafka.max_message_bytes == 5_242_880


class TestBaseUrl:
    @pytest.mark.parametrize("url", ["https://x.example.com/", "https://x.example.com///"])
    def test_trailing_slashes_are_one_base(self, url: str) -> None:
        """Trailing slashes do not change the base."""
        assert load(WAIQIN_BASE_URL=url).waiqin.base_url == "https://x.example.com"

    def test_path_prefix_is_kept(self) -> None:
        """A dedicated domain with a path prefix keeps the prefix."""
        assert load(WAIQIN_BASE_URL="https://gw.acme.cn/waiqin/").waiqin.base_url == "https://gw.acme.cn/waiqin"

    @pytest.mark.parametrize(("url", "cleartext"), [
        ("http://127.0.0.1:8090", False), ("http://localhost:8090", False), ("http://[::1]:8090", False),
        ("http://simulator:8090", True), ("http://10.0.0.5", True), ("https://openapi.qince.com", False),
    ])
    def test_cleartext_remote_is_detected(self, url: str, cleartext: bool) -> None:
        """Plain http off loopback is flagged (the digest and the data would travel in clear)."""
        assert load(WAIQIN_BASE_URL=url).waiqin.is_cleartext_remote is cleartext


class TestErrors:
    @pytest.mark.parametrize(("env", "variable"), [
        ({"WAIQIN_OPENID": ""}, "WAIQIN_OPENID"),
        ({"WAIQIN_APPKEY": "  "}, "WAIQIN_APPKEY"),
        ({"WAIQIN_BASE_URL": "openapi.waiqin365.com"}, "WAIQIN_BASE_URL"),
        ({"POLLER_POLL_INTERVAL": "soon"}, "POLLER_POLL_INTERVAL"),
        ({"POLLER_POLL_INTERVAL": "0"}, "POLLER_POLL_INTERVAL"),
        ({"POLLER_LOOKBACK_MINUTES": "-1"}, "POLLER_LOOKBACK_MINUTES"),
        ({"POLLER_START_MODE": "basline"}, "POLLER_START_MODE"),
        ({"POLLER_START_DATE": "2026-1-5"}, "POLLER_START_DATE"),
        ({"POLLER_START_DATE": "2026-02-30"}, "POLLER_START_DATE"),
        ({"POLLER_STORE_URL": "mysql://db/x"}, "POLLER_STORE_URL"),
        ({"POLLER_HTTP_PORT": "70000"}, "POLLER_HTTP_PORT"),
        ({"POLLER_TOPIC_PREFIX": "has space"}, "POLLER_TOPIC_PREFIX"),
        ({"KAFKA_ENABLE_IDEMPOTENCE": "maybe"}, "KAFKA_ENABLE_IDEMPOTENCE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"WAIQIN_PAGE_ROWS": "5000"}, "WAIQIN_PAGE_ROWS"),
        ({"WAIQIN_MAX_RESPONSE_BYTES": "0"}, "WAIQIN_MAX_RESPONSE_BYTES"),
        ({"WAIQIN_MAX_RESPONSE_BYTES": "64MiB"}, "WAIQIN_MAX_RESPONSE_BYTES"),
        ({"KAFKA_MAX_MESSAGE_BYTES": "1000"}, "KAFKA_MAX_MESSAGE_BYTES"),
        ({"KAFKA_MAX_MESSAGE_BYTES": "1e6x"}, "KAFKA_MAX_MESSAGE_BYTES"),
    ], ids=lambda v: next(iter(v)) if isinstance(v, dict) else v)
    def test_bad_value_names_its_variable(self, env: dict[str, str], variable: str) -> None:
        """A bad value is a ConfigError on one line that names the variable."""
        with pytest.raises(ConfigError, match=variable) as caught:
            load(**env)
        assert "\n" not in str(caught.value)

    def test_every_problem_is_reported_at_once(self) -> None:
        """Several bad variables are all named in the same error."""
        with pytest.raises(ConfigError) as caught:
            Settings.load({"POLLER_POLL_INTERVAL": "x", "LOG_LEVEL": "loud"})
        for name in ("WAIQIN_OPENID", "WAIQIN_APPKEY", "POLLER_POLL_INTERVAL", "LOG_LEVEL"):
            assert name in str(caught.value)

    def test_secrets_never_show(self) -> None:
        """The appkey and the SASL password appear in no repr and no error."""
        s = load(KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                 KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD="pw-秘密")
        assert "appkey-秘密-1" not in repr(s) and "pw-秘密" not in repr(s)
        with pytest.raises(ConfigError) as caught:
            load(WAIQIN_APPKEY="appkey-秘密-2", POLLER_POLL_INTERVAL="x")
        assert "appkey-秘密-2" not in str(caught.value)


class TestUnknownVariables:
    def test_likely_typos_are_listed(self) -> None:
        """Our prefixes with no matching setting are reported; KAFKA_ service links are not."""
        env = {**REQUIRED, "POLLER_POLL_INTERVALL": "5", "KAFKA_PORT": "tcp://10.0.0.1:9092"}
        assert load().unknown_variables(env) == ["POLLER_POLL_INTERVALL"]
