"""Settings: the only reader of the environment, with the variable names of docs/design.md §6."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from poller.errors import ConfigError

DEFAULT_BASE_URL = "https://openapi.waiqin365.com"
# Prefixes whose unknown variables are reported as likely typos. KAFKA_ is left out on purpose:
# Kubernetes service links inject KAFKA_PORT, KAFKA_SERVICE_HOST, … for a Service named kafka.
OWN_PREFIXES = ("WAIQIN_", "POLLER_", "LOG_")
# The smallest KAFKA_MAX_MESSAGE_BYTES accepted: below it even a cut dead letter (CloudEvents
# headers, window, reason and a prefix of the raw record) might not fit.
MIN_MESSAGE_BYTES = 4096
# Kafka's own default max.message.bytes.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000


class _Group(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)


class WaiqinSettings(_Group):
    """The upstream API and the client's manners towards it."""

    model_config = SettingsConfigDict(env_prefix="WAIQIN_")

    base_url: str = DEFAULT_BASE_URL
    openid: str
    appkey: SecretStr
    # Not in docs/design.md §6; tuning knobs with safe defaults (documented in docs/operations.md, "Configure").
    request_timeout_s: float = Field(30.0, gt=0, validation_alias=AliasChoices("WAIQIN_REQUEST_TIMEOUT_SECONDS"))
    rate_limit_per_s: float = Field(5.0, gt=0, validation_alias=AliasChoices("WAIQIN_RATE_LIMIT_PER_SECOND"))
    max_attempts: int = Field(5, ge=1, validation_alias=AliasChoices("WAIQIN_MAX_ATTEMPTS"))
    page_rows: int = Field(1000, ge=1, le=1000, validation_alias=AliasChoices("WAIQIN_PAGE_ROWS"))
    # A bound on one response body, so a runaway answer fails its request instead of the pod.
    max_response_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # Requests per Beijing day the poller plans within (docs/design.md §3.1); none: no limit.
    daily_request_budget: int | None = Field(None, ge=1)

    @field_validator("openid")
    @classmethod
    def _openid_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("appkey")
    @classmethod
    def _appkey_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL such as {DEFAULT_BASE_URL}, got {value!r}")
        # Any path prefix is kept; one trailing slash or many are all the same base.
        return value.strip().rstrip("/")

    @property
    def is_cleartext_remote(self) -> bool:
        """True for a plain-http base that is not on loopback (digest and data travel in clear)."""
        parts = urlsplit(self.base_url)
        if parts.scheme != "http":
            return False
        host = parts.hostname or ""
        if host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True


class KafkaSettings(_Group):
    """The brokers and the producer."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_")

    bootstrap_servers: str = "localhost:9092"
    enable_idempotence: bool = True
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    compression_type: Literal["gzip", "none"] = "gzip"
    linger_ms: int = Field(20, ge=0)
    request_timeout_ms: int = Field(30_000, gt=0)
    # Larger events are cut to fit (docs/design.md §4).
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=MIN_MESSAGE_BYTES)

    @field_validator("security_protocol", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            missing = [name for name, value in (
                ("KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                ("KAFKA_SASL_USERNAME", self.sasl_username),
                ("KAFKA_SASL_PASSWORD", self.sasl_password),
            ) if not value]
            if missing:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs {', '.join(missing)}")
        return self


class TopicSettings(_Group):
    """Topic names and how missing topics are created."""

    model_config = SettingsConfigDict(env_prefix="POLLER_TOPIC_")

    prefix: str = Field("waiqin365", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    # The compacted current-state topic (docs/design.md §4), on unless POLLER_STATE_TOPIC=false.
    state_enabled: bool = Field(True, validation_alias=AliasChoices("POLLER_STATE_TOPIC"))

    @property
    def tasks(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def state(self) -> str:
        return f"{self.prefix}.tasks.state"

    @property
    def task_types(self) -> str:
        return f"{self.prefix}.task-types"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.poller.dead-letter"


class StoreSettings(_Group):
    """Where snapshots and the poll state live."""

    model_config = SettingsConfigDict(env_prefix="POLLER_STORE_")

    url: str = "sqlite:///./poller-state.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme == "sqlite":
            if not value.startswith("sqlite:///") or value == "sqlite:///":
                raise ValueError(f"expected sqlite:///relative/path.db or sqlite:////abs/path.db, got {value!r}")
        elif scheme in ("postgresql", "postgres"):
            if not urlsplit(value).netloc and "host=" not in value:
                raise ValueError("a postgresql:// URL needs a host, e.g. postgresql://user@db:5432/poller")
        else:
            raise ValueError(f"expected sqlite:///… or postgresql://…, got scheme {scheme!r}")
        return value

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"


class PollSettings(_Group):
    """The cycle: how often, how far back, and what the first run does."""

    model_config = SettingsConfigDict(env_prefix="POLLER_")

    poll_interval_s: float = Field(60.0, gt=0, validation_alias=AliasChoices("POLLER_POLL_INTERVAL"))
    lookback_minutes: int = Field(30, ge=0)  # days of lookback (2880, ...) are legitimate
    start_mode: Literal["baseline", "replay"] = "baseline"
    start_date: date | None = None
    type_refresh_s: float = Field(300.0, gt=0, validation_alias=AliasChoices("POLLER_TYPE_REFRESH_SECONDS"))
    # Below Kubernetes' terminationGracePeriodSeconds (30 s by default; the chart says so too).
    shutdown_grace_s: float = Field(20.0, ge=0, validation_alias=AliasChoices("POLLER_SHUTDOWN_GRACE_SECONDS"))
    # Readiness turns false when no cycle has succeeded for this many intervals.
    ready_after_failed_intervals: int = Field(3, ge=1, validation_alias=AliasChoices("POLLER_READY_INTERVALS"))
    max_backoff_s: float = Field(300.0, gt=0, validation_alias=AliasChoices("POLLER_MAX_BACKOFF_SECONDS"))
    # The reconciliation sweep (docs/design.md §3.1): every stored task is read again at least
    # this often (0 turns it off); a create-date slice of more than one day filling more pages
    # is split; and the vanished-task circuit breaker.
    sweep_period_h: float = Field(24.0, ge=0, validation_alias=AliasChoices("POLLER_SWEEP_PERIOD_HOURS"))
    sweep_slice_pages: int = Field(10, ge=1, validation_alias=AliasChoices("POLLER_SWEEP_SLICE_PAGES"))
    vanish_max_fraction: float = Field(0.1, ge=0, le=1,
                                       validation_alias=AliasChoices("POLLER_VANISH_MAX_FRACTION"))

    @field_validator("start_date", mode="before")
    @classmethod
    def _strict_date(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        if isinstance(value, str):
            try:
                return date.fromisoformat(value) if len(value) == 10 else _bad_date(value)
            except ValueError:
                _bad_date(value)
        return value


def _bad_date(value: str) -> date:
    raise ValueError(f"expected yyyy-MM-dd, got {value!r}")


class HttpSettings(_Group):
    """The /metrics, /healthz and /readyz server."""

    model_config = SettingsConfigDict(env_prefix="POLLER_HTTP_")

    port: int = Field(8080, ge=0, le=65535)
    host: str = "0.0.0.0"


class LogSettings(_Group):
    """structlog output."""

    model_config = SettingsConfigDict(env_prefix="LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _case(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "level" else value.lower()


class Settings(BaseModel):
    """Every setting, grouped; each component receives only its own group."""

    model_config = ConfigDict(frozen=True)

    waiqin: WaiqinSettings
    kafka: KafkaSettings
    topics: TopicSettings
    store: StoreSettings
    poll: PollSettings
    http: HttpSettings
    log: LogSettings

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, *,
             defaults: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (or `environ`); `defaults` fill variables that are unset.

        Raises ConfigError naming every bad variable at once.
        """
        env = {**(defaults or {}), **(os.environ if environ is None else environ)}
        groups: dict[str, Any] = {}
        problems: list[str] = []
        for name, group in _GROUPS.items():
            try:
                groups[name] = _load_group(group, env)
            except ValidationError as exc:
                problems.extend(_describe(group, exc))
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**groups)

    def unknown_variables(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Variables with our prefixes that no setting reads (most likely typos)."""
        env = os.environ if environ is None else environ
        known = {name.upper() for group in _GROUPS.values() for name in _env_names(group)}
        return sorted(k for k in env if k.upper().startswith(OWN_PREFIXES) and k.upper() not in known)


_GROUPS: dict[str, type[_Group]] = {
    "waiqin": WaiqinSettings,
    "kafka": KafkaSettings,
    "topics": TopicSettings,
    "store": StoreSettings,
    "poll": PollSettings,
    "http": HttpSettings,
    "log": LogSettings,
}


def _load_group(group: type[_Group], env: Mapping[str, str]) -> _Group:
    # Read only our own variables from the given mapping (not from os.environ or .env files),
    # so tests and `check` see exactly what the daemon would.
    upper = {key.upper(): value for key, value in env.items()}
    values: dict[str, Any] = {}
    for field, names in _env_fields(group).items():
        aliased = group.model_fields[field].validation_alias is not None
        for env_name in names:
            if env_name in upper:
                values[env_name if aliased else field] = upper[env_name]
    return group.model_validate(values)


def _env_fields(group: type[_Group]) -> dict[str, list[str]]:
    prefix = group.model_config.get("env_prefix", "")
    fields: dict[str, list[str]] = {}
    for field, info in group.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            fields[field] = [str(choice) for choice in alias.choices]
        else:
            fields[field] = [f"{prefix}{field}".upper()]
    return fields


def _env_names(group: type[_Group]) -> list[str]:
    return [name for names in _env_fields(group).values() for name in names]


def _describe(group: type[_Group], exc: ValidationError) -> list[str]:
    fields = _env_fields(group)
    prefix = str(group.model_config.get("env_prefix", ""))
    lines = []
    for error in exc.errors():
        loc = error["loc"][0] if error["loc"] else None
        if isinstance(loc, str) and loc in fields:
            variable = fields[loc][0]
        elif isinstance(loc, str) and loc.upper() == loc:
            variable = loc
        elif isinstance(loc, str):
            variable = loc.upper()
        else:
            variable = f"{prefix}*"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
            lines.append(f"{variable} {message}")
        else:
            lines.append(f"{variable}: {message}")
    return lines

