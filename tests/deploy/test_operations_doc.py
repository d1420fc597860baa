"""docs/operations.md stays in step with the settings and the chart."""

from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import CHART, ROOT

GUIDE = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def _table_variables() -> set[str]:
    """Variable names in the first column of the guide's configuration table."""
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", GUIDE, flags=re.MULTILINE))


class TestOperationsGuide:
    def test_every_setting_is_in_the_configuration_table(self, env_names: set[str]) -> None:
        """Each variable poller/config.py reads has a row in the table, and no row is stale."""
        assert _table_variables() == env_names

    def test_chart_config_values_are_documented(self) -> None:
        """Each config.* value of the chart is named in the guide."""
        values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
        for key in values["config"]:
            assert f"config.{key}" in GUIDE, key

    def test_names_the_console_page_and_the_three_causes(self) -> None:
        """The guide says where the OpenAPI address is and lists the three refusal causes."""
        assert "系统管理 → 集成管理 → API管理 → API授权" in GUIDE
        assert "OpenAPI地址" in GUIDE
        for cause in ("openid/appkey pair", "caller IP allow-list", "granted APIs"):
            assert cause in GUIDE
