"""Likely causes of the failures operators meet, in words: what to look at next."""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

from poller.config import Settings
from poller.errors import PollerError, PublishError, SourceUnavailable, StoreUnavailable
from poller.redact import describe_store_url


def for_error(exc: PollerError, settings: Settings | None) -> str | None:
    """One sentence on the likely cause of `exc`, or None when the message says it all."""
    if settings is None:
        return None
    if isinstance(exc, PublishError):
        return kafka_cause(exc, settings)
    if isinstance(exc, SourceUnavailable):
        return network_cause(exc, api_address(settings))
    if isinstance(exc, StoreUnavailable):
        return f"the store at {describe_store_url(settings.store.url)} does not answer (POLLER_STORE_URL)"
    return None


def api_address(settings: Settings) -> str:
    """host:port of the API base, as the connection is made."""
    parts = urlsplit(settings.waiqin.base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def kafka_cause(exc: BaseException, settings: Settings) -> str:
    """Why the brokers did not take our requests, as far as the error tells."""
    servers = settings.kafka.bootstrap_servers
    text = _chain_text(exc)
    if settings.kafka.enable_idempotence and ("UnknownError" in text or "InitProducerId" in text):
        return ("the broker refused an idempotent producer; brokers without that feature (Tansu, "
                "`waiqin-poller broker`, the demo) need KAFKA_ENABLE_IDEMPOTENCE=false")
    if "Authentication" in text or "Sasl" in text or "SASL" in text:
        return "the brokers refused the credentials: check KAFKA_SASL_MECHANISM/USERNAME/PASSWORD"
    if "Authorization" in text:
        return "the brokers refused access to the topics: check the ACLs of this principal"
    return (f"no broker answered at KAFKA_BOOTSTRAP_SERVERS={servers}: is it running and "
            "reachable from here? (`waiqin-poller broker` starts a local one)")


def network_cause(exc: BaseException, address: str) -> str | None:
    """What a connection failure to `address` (host:port) most likely means."""
    host = address.rpartition(":")[0]
    for cause in _chain(exc):
        if isinstance(cause, socket.gaierror) or "Name or service not known" in str(cause) \
                or "nodename nor servname" in str(cause) or type(cause).__name__ == "ClientConnectorDNSError":
            return f"cannot resolve {host}: check the host name in WAIQIN_BASE_URL and this host's DNS"
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return (f"{address} refused the connection: nothing listens there (wrong port in "
                    "WAIQIN_BASE_URL, or the service is down)")
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"{host}'s TLS certificate is not trusted here (a TLS-intercepting proxy? "
                    "its CA must be in this host's trust store)")
        if isinstance(cause, ssl.SSLError):
            return f"the TLS handshake with {address} failed (is it really https on that port?)"
        if isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__:
            return (f"{address} did not answer in time: a firewall dropping the traffic, an egress "
                    "proxy that is required here, or a wrong address")
        if isinstance(cause, OSError) and cause.strerror:
            return f"connecting to {address} failed: {cause.strerror}"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes, outermost first (aiohttp keeps the OS error as `os_error`)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, BaseException) and os_error not in seen:
            seen.append(os_error)
        current = current.__cause__ or current.__context__
    return seen


def _chain_text(exc: BaseException) -> str:
    return " | ".join(f"{type(e).__name__}: {e}" for e in _chain(exc))
