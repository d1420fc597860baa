"""Tests for poller.redact: where secrets sit in the settings, and the Redactor that masks them."""

from __future__ import annotations

import pytest

from poller.config import Settings
from poller.redact import MASK, Redactor, describe_store_url, secret_values, store_url_secrets
from poller.store.rows import describe_url

URL_FORMS = [
    ("postgresql://poller:pw-in-userinfo@db:5432/poller", ["pw-in-userinfo"]),
    ("postgresql://poller@db/poller?sslmode=require&password=pw-in-query", ["pw-in-query"]),
    ("postgresql://poller@db/poller?sslpassword=key-pw", ["key-pw"]),
    ("postgresql://poller:p%40ss%2Fword@db/poller", ["p%40ss%2Fword", "p@ss/word"]),
    ("host=db user=poller password=kv-pw dbname=poller", ["kv-pw"]),
    ("host=db password='kv pw \\' quoted' dbname=poller", ["'kv pw \\' quoted'", "kv pw ' quoted"]),
    ("sqlite:///./poller-state.db", []),
    ("postgresql://poller@db/poller", []),
]


class TestStoreUrl:
    @pytest.mark.parametrize(("url", "secrets"), URL_FORMS,
                             ids=["userinfo", "query", "sslpassword", "percent-encoded", "keyword",
                                  "keyword-quoted", "sqlite", "no-password"])
    def test_every_password_form_is_found(self, url: str, secrets: list[str]) -> None:
        """Passwords in user info, in the query string and in a key=value DSN are all found."""
        assert store_url_secrets(url) == secrets

    @pytest.mark.parametrize(("url", "secrets"), URL_FORMS,
                             ids=["userinfo", "query", "sslpassword", "percent-encoded", "keyword",
                                  "keyword-quoted", "sqlite", "no-password"])
    def test_described_url_holds_no_password(self, url: str, secrets: list[str]) -> None:
        """describe_url keeps host and database but no password, whatever its form."""
        described = describe_url(url)
        for secret in secrets:
            assert secret not in described
        assert ("db" in described) or described == url
        if not secrets:
            assert described == url

    def test_other_query_parameters_survive(self) -> None:
        """Only password parameters are masked; sslmode and the rest stay readable."""
        described = describe_store_url("postgresql://u@db/p?sslmode=require&password=x1y2")
        assert described == f"postgresql://u@db/p?sslmode=require&password={MASK}"


class TestSecretValues:
    def test_every_configured_secret(self) -> None:
        """The appkey, both Kafka passwords and the store password are the settings' secrets."""
        settings = Settings.load({
            "WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "the-appkey",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "kafka-pw", "KAFKA_SSL_PASSWORD": "key-pw",
            "POLLER_STORE_URL": "postgresql://u:db-pw@db/p?sslpassword=db-key-pw",
        })
        assert secret_values(settings) == ["the-appkey", "kafka-pw", "key-pw", "db-pw", "db-key-pw"]

    def test_placeholders_are_not_secrets(self) -> None:
        """A stand-in for an unused credential (tail's appkey) is not masked in text."""
        settings = Settings.load({"WAIQIN_OPENID": "-", "WAIQIN_APPKEY": "-"})
        redactor = Redactor.from_settings(settings, placeholders=["-"])
        assert redactor.is_empty
        assert redactor.text("2026-11-25T08:00:00Z") == "2026-11-25T08:00:00Z"


class TestRedactor:
    def test_longest_secret_first(self) -> None:
        """A secret that contains another is replaced whole."""
        redact = Redactor(["abc", "abcdef", ""])
        assert redact.text("xabcdefx abc") == f"x{MASK}x {MASK}"

    def test_nested_values_and_sensitive_keys(self) -> None:
        """As a log processor it masks values anywhere and keys named like secrets entirely."""
        redact = Redactor(["s3cret"])
        event = redact(None, "info", {"event": "x s3cret", "nested": {"l": ["as3cretb"]},
                                      "password": "anything", "error": ValueError("s3cret!")})
        assert event == {"event": f"x {MASK}", "nested": {"l": [f"a{MASK}b"]},
                         "password": MASK, "error": f"{MASK}!"}
