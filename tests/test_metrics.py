"""Tests for poller.metrics: what /metrics exposes before anything happened."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poller import __version__, fetch, metrics


def exposition(registry: CollectorRegistry | None = None) -> str:
    return generate_latest(registry or metrics.REGISTRY).decode()


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample in an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


class TestExposition:
    def test_no_created_series(self) -> None:
        """Counters export no `_created` series."""
        assert "_created" not in exposition()

    def test_build_info(self) -> None:
        """build_info names the running version."""
        found = [k for k in samples(exposition()) if k.startswith("waiqin_poller_build_info")]
        assert len(found) == 1 and f'version="{__version__}"' in found[0]

    def test_alerted_label_sets_exist_at_zero(self) -> None:
        """Series that alerts take increase() of exist before their first increment."""
        text = samples(exposition())
        for endpoint in metrics.ENDPOINTS:
            assert f'waiqin_poller_api_auth_failures_total{{endpoint="{endpoint}"}}' in text
        for kind in metrics.DEAD_LETTER_KINDS:
            assert f'waiqin_poller_dead_letters_total{{reason="{kind}"}}' in text
        assert 'waiqin_poller_cycles_total{outcome="failure"}' in text

    def test_endpoints_are_the_clients(self) -> None:
        """The pre-initialised endpoint labels are the client's endpoint names."""
        assert set(metrics.ENDPOINTS) == set(fetch.PATHS)


class TestOptionalGauge:
    def test_absent_until_set(self) -> None:
        """An unknown value exports no sample at all, not 0."""
        registry = CollectorRegistry()
        gauge = metrics.OptionalGauge("x_timestamp_seconds", "x", registry=registry)
        assert "x_timestamp_seconds " not in exposition(registry)
        gauge.set(12.5)
        assert samples(exposition(registry))["x_timestamp_seconds"] == 12.5
        gauge.clear()
        assert "x_timestamp_seconds " not in exposition(registry)

    def test_function_returning_none_exports_nothing(self) -> None:
        """A function value is read at each scrape; None means no sample."""
        registry = CollectorRegistry()
        gauge = metrics.OptionalGauge("lag_seconds", "x", registry=registry)
        current: list[float | None] = [None]
        gauge.set_function(lambda: current[0])
        assert "lag_seconds " not in exposition(registry)
        current[0] = 3.0
        assert samples(exposition(registry))["lag_seconds"] == 3.0
