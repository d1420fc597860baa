"""Shared fixtures. Each fixture family lives in tests/fixtures/ (one module per real part)."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.postgres",
    "tests.fixtures.simulator",
    "tests.fixtures.rig",
]
