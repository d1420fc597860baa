"""Shared helpers for the deployment tests: repository paths, setting names, metric names."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices

from poller import metrics
from poller.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "waiqin-poller"


def known_env_names() -> set[str]:
    """Every environment variable that some setting of poller/config.py reads."""
    names: set[str] = set()
    for group_field in Settings.model_fields.values():
        group = group_field.annotation
        assert isinstance(group, type)
        prefix = str(group.model_config.get("env_prefix", ""))
        for name, info in group.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(choice).upper() for choice in alias.choices)
            else:
                names.add(f"{prefix}{name}".upper())
    return names


def metric_sample_names() -> set[str]:
    """Every time-series name that poller/metrics.py exposes on /metrics."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",)}
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase | metrics.OptionalGauge):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


@pytest.fixture(scope="session")
def env_names() -> set[str]:
    """The setting names, computed once."""
    return known_env_names()


@pytest.fixture(scope="session")
def sample_names() -> set[str]:
    """The metric names, computed once."""
    return metric_sample_names()
