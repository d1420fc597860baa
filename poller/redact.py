"""Secrets out of every output: where they sit in the settings, and the Redactor that masks them.

One Redactor, built once from the Settings, serves the logs, the error lines of the CLI, the
health endpoints and /metrics (docs/design.md §6: a secret never appears in any of them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from poller.config import Settings

MASK = "***"
# Values under keys like these are masked whatever they hold (digest is md5 over the appkey).
SENSITIVE_KEY = re.compile(
    r"appkey|app_key|password|passwd|secret|digest|token|credential|authorization", re.IGNORECASE
)
# libpq connection parameters that carry a password (in a URL's query or a key=value DSN).
PASSWORD_PARAMETERS = frozenset({"password", "sslpassword"})
# One `key=value` or `key='quoted value'` pair of a libpq key=value DSN.
_KEYWORD_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_PLAIN = (str, int, float, bool, type(None), datetime, date)


def store_url_secrets(url: str) -> list[str]:
    """Every password in a store URL, as written and percent-decoded.

    Covers `postgresql://user:pw@host/db`, `?password=…` and `?sslpassword=…` in the query
    string, and a libpq key=value DSN (`host=db password='p w'`).
    """
    found: list[str] = []
    if "://" in url:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[0]
        if ":" in netloc:
            found.append(netloc.partition(":")[2])
        for raw in parts.query.split("&"):
            key, _, value = raw.partition("=")
            if unquote(key).lower() in PASSWORD_PARAMETERS:
                found.append(value)
    else:
        for key, value in _KEYWORD_PAIR.findall(url):
            if key.lower() in PASSWORD_PARAMETERS:
                found.append(value)
                found.append(_unquote_keyword(value))
    return _distinct([form for secret in found for form in (secret, unquote(secret)) if form])


def describe_store_url(url: str) -> str:
    """The store URL with every password replaced by ***, for logs and error messages."""
    if "://" not in url:
        return _KEYWORD_PAIR.sub(
            lambda m: f"{m.group(1)}={MASK}" if m.group(1).lower() in PASSWORD_PARAMETERS else m.group(0),
            url,
        )
    if not store_url_secrets(url):
        return url  # nothing to hide; rebuilding would also turn sqlite:/// into sqlite:/
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{MASK}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in PASSWORD_PARAMETERS for key, _ in pairs):
            query = urlencode([(key, MASK if key.lower() in PASSWORD_PARAMETERS else value)
                               for key, value in pairs], safe="*")
    return parts._replace(netloc=f"{userinfo}{at}{host}", query=query).geturl()


def secret_values(settings: Settings) -> list[str]:
    """Every secret value these settings hold: the appkey, Kafka passwords, store passwords."""
    candidates = (settings.waiqin.appkey, settings.kafka.sasl_password, settings.kafka.ssl_password)
    values = [secret.get_secret_value() for secret in candidates if secret is not None]
    return _distinct([*values, *store_url_secrets(settings.store.url)])


class Redactor:
    """Replaces secret values in text and in log events, and masks sensitive keys.

    Also a structlog processor: called with (logger, method_name, event_dict).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s and s.strip()}, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings, *, placeholders: Iterable[str] = ()) -> Redactor:
        """The Redactor for these settings; `placeholders` (stand-ins for values the user did
        not give, such as `tail`'s appkey) are not secrets and are left alone."""
        ignored = set(placeholders)
        return cls(value for value in secret_values(settings) if value not in ignored)

    @property
    def is_empty(self) -> bool:
        """True when there is no secret to replace."""
        return not self._secrets

    def text(self, text: str) -> str:
        """`text` with every secret replaced by ***."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(self, logger: Any, method_name: str,
                 event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
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


def _unquote_keyword(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))
