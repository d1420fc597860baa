"""Static checks of docker-compose.yml: the Compose Specification schema and the wiring."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from poller.config import Settings
from tests.deploy.conftest import ROOT

SPEC = ROOT / "tests" / "deploy" / "data" / "compose-spec.json"
DURATION = re.compile(r"^(?:(\d+)m)?(?:(\d+)s)?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose reads it (YAML anchors and merge keys resolved)."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services section."""
    return compose["services"]  # type: ignore[no-any-return]


def _seconds(duration: str) -> int:
    match = DURATION.match(duration)
    assert match and duration, f"expected a duration like 30s or 1m30s, got {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def _published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port of a service's short-syntax port mappings."""
    ports = {}
    for mapping in service.get("ports", []):
        host, _, container = str(mapping).rpartition(":")
        ports[int(container)] = int(host)
    return ports


class TestSchema:
    def test_file_is_valid_against_the_compose_specification(self, compose: dict[str, Any]) -> None:
        """docker-compose.yml validates against the vendored Compose Specification schema."""
        schema = json.loads(SPEC.read_text(encoding="utf-8"))
        validator = jsonschema.Draft7Validator(schema)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
        assert errors == []

    def test_schema_rejects_a_misspelt_key(self, compose: dict[str, Any]) -> None:
        """The schema check has teeth: an unknown service key is refused."""
        schema = json.loads(SPEC.read_text(encoding="utf-8"))
        broken = json.loads(json.dumps(compose))
        broken["services"]["poller"]["healthchek"] = broken["services"]["poller"].pop("healthcheck")
        assert not jsonschema.Draft7Validator(schema).is_valid(broken)


class TestServices:
    def test_the_stack(self, services: dict[str, dict[str, Any]]) -> None:
        """Kafka, the simulator, the poller, Prometheus and Grafana make up the stack."""
        assert set(services) == {"kafka", "simulator", "poller", "prometheus", "grafana"}

    def test_kafka_is_official_apache_image_in_kraft_mode(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        """Kafka runs the official apache/kafka image as one combined KRaft broker+controller."""
        kafka = services["kafka"]
        assert kafka["image"].startswith("apache/kafka:")
        env = kafka["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
        assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"

    def test_simulator_and_poller_share_the_built_image(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        """Both run the image built from ./Dockerfile; the simulator listens on 8090 with churn."""
        for name in ("simulator", "poller"):
            assert services[name]["build"]["context"] == "."
        assert services["simulator"]["image"] == services["poller"]["image"]
        assert services["simulator"]["command"] == [
            "simulator",
            "--host",
            "0.0.0.0",
            "--port",
            "8090",
            "--churn",
            "2",
        ]
        assert services["poller"]["command"] == ["run"]

    def test_every_service_has_a_healthcheck(self, services: dict[str, dict[str, Any]]) -> None:
        """Each service declares a health check command, so start ordering can wait on it."""
        for name, service in services.items():
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), name

    def test_start_ordering_waits_for_health(self, services: dict[str, dict[str, Any]]) -> None:
        """The poller starts once Kafka and the simulator are healthy; Grafana after Prometheus."""
        assert services["poller"]["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "simulator": {"condition": "service_healthy"},
        }
        assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
        for name, service in services.items():
            for dependency in service.get("depends_on", {}):
                assert dependency in services, f"{name} depends on unknown {dependency}"


class TestPollerWiring:
    def test_every_variable_is_a_setting(
        self, services: dict[str, dict[str, Any]], env_names: set[str]
    ) -> None:
        """Each environment variable of the poller is one that poller/config.py reads."""
        env = services["poller"]["environment"]
        assert set(env) - env_names == set()
        assert Settings.load(env).unknown_variables(env) == []

    def test_settings_load_and_point_at_the_stack(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        """The poller's settings load and name the simulator, Kafka and the SQLite volume."""
        settings = Settings.load(services["poller"]["environment"])
        assert settings.waiqin.base_url == "http://simulator:8090"
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.kafka.enable_idempotence is True
        assert settings.store.url == "sqlite:////var/lib/waiqin-poller/state.db"

    def test_simulator_and_poller_share_credentials(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        """The simulator verifies signatures with the same openid/appkey the poller signs with."""
        for key in ("WAIQIN_OPENID", "WAIQIN_APPKEY"):
            assert (
                services["simulator"]["environment"][key] == services["poller"]["environment"][key]
            )

    def test_state_lives_on_a_named_volume(
        self, compose: dict[str, Any], services: dict[str, dict[str, Any]]
    ) -> None:
        """The SQLite directory is a declared named volume, and the root filesystem is read-only."""
        poller = services["poller"]
        mounts = dict(str(v).split(":", 1) for v in poller["volumes"])
        volume = {target: source for source, target in mounts.items()}["/var/lib/waiqin-poller"]
        assert volume in compose["volumes"]
        assert poller["read_only"] is True and "/tmp" in poller["tmpfs"]

    def test_ports_match_the_settings(self, services: dict[str, dict[str, Any]]) -> None:
        """Published ports reach the poller's HTTP port and the simulator's listen port."""
        poller_port = int(services["poller"]["environment"]["POLLER_HTTP_PORT"])
        assert _published(services["poller"]) == {poller_port: 8080}
        assert 8090 in _published(services["simulator"])
        assert "http://127.0.0.1:8080/healthz" in " ".join(
            services["poller"]["healthcheck"]["test"]
        )

    def test_stop_grace_covers_the_shutdown_grace(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        """Compose waits longer after SIGTERM than the poller's own shutdown grace period."""
        poller = services["poller"]
        grace = float(poller["environment"]["POLLER_SHUTDOWN_GRACE_SECONDS"])
        assert _seconds(poller["stop_grace_period"]) > grace


class TestMonitoringWiring:
    def test_prometheus_scrapes_the_poller_with_the_alert_rules(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        """Prometheus mounts its config and the rules, and scrapes the poller's published port."""
        mounts = {
            v.split(":")[1]: v.split(":")[0]
            for v in services["prometheus"]["volumes"]
            if v.startswith("./")
        }
        config = yaml.safe_load(
            (ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text(encoding="utf-8")
        )
        assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
        assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "waiqin-poller"]
        assert job["static_configs"][0]["targets"] == ["poller:8080"]

    def test_bind_mounts_exist(self, services: dict[str, dict[str, Any]]) -> None:
        """Every ./ path the stack mounts is in the repository."""
        for service in services.values():
            for volume in service.get("volumes", []):
                source = str(volume).split(":")[0]
                if source.startswith("./"):
                    assert (ROOT / source).exists(), source

    def test_grafana_is_provisioned(self, services: dict[str, dict[str, Any]]) -> None:
        """Grafana gets the datasource and a dashboard provider whose path holds the dashboard."""
        mounts = {
            v.split(":")[1]: v.split(":")[0]
            for v in services["grafana"]["volumes"]
            if v.startswith("./")
        }
        provisioning = ROOT / mounts["/etc/grafana/provisioning"]
        datasources = yaml.safe_load(
            (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
        )
        assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
        providers = yaml.safe_load(
            (provisioning / "dashboards" / "waiqin-poller.yml").read_text(encoding="utf-8")
        )
        path = providers["providers"][0]["options"]["path"]
        assert (ROOT / mounts[path] / "waiqin-poller.json").is_file()


class TestReproducible:
    def test_third_party_images_are_pinned_by_digest(self, services: dict[str, dict[str, Any]]) -> None:
        """Every image not built here is pinned as tag@sha256:<64 hex>, so each pull is the same."""
        pinned = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
        for name, service in services.items():
            if "build" in service:
                continue
            assert pinned.match(service["image"]), (name, service["image"])
