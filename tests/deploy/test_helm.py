"""The Helm chart, rendered and linted by Helm's own Go code, checked with Kubernetes schemas."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from poller.config import Settings
from tests.deploy.conftest import CHART

Rendered = dict[str, list[dict[str, Any]]]
"""Value-set name -> its rendered manifests."""

IMAGE = {"repository": "registry.example.com/integrations/waiqin-poller"}
CREDENTIALS = {"image": IMAGE, "waiqin": {"openid": "ent-openid", "appkey": "appkey-from-values"}}
DIGEST = "sha256:" + "ab" * 32
POSTGRES_URL = "postgresql://poller:pw@db.example:5432/poller"
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": CREDENTIALS,
    "ha": {
        **CREDENTIALS,
        "replicaCount": 3,
        "store": {"postgresql": {"enabled": True, "url": POSTGRES_URL}},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "kafka": {
            "bootstrapServers": "b1.example:9093,b2.example:9093",
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "poller", "password": "sasl-pw"},
            "ssl": {"secretName": "kafka-ca", "caFile": "ca.crt"},
        },
        "config": {"extraEnv": {"WAIQIN_RATE_LIMIT_PER_SECOND": "3"}},
    },
    "existing-secret": {
        "image": IMAGE,
        "waiqin": {"openid": "ent-openid", "baseUrl": "https://openapi.qince.com/"},
        "existingSecret": "poller-credentials",
        "kafka": {
            "securityProtocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "PLAIN", "username": "poller"},
        },
    },
    "no-persistence": {**CREDENTIALS, "persistence": {"enabled": False}},
    "extras": {
        **CREDENTIALS,
        "image": {**IMAGE, "digest": DIGEST},
        "replicaCount": 2,
        "store": {"postgresql": {"enabled": True, "url": POSTGRES_URL}},
        "podAnnotations": {"example.com/team": "integrations"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"},
                     {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "extraEnvFrom": [{"secretRef": {"name": "proxy-credentials"}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
        "sidecars": [{"name": "shipper", "image": "registry.example.com/shipper:1.0"}],
        "initContainers": [{"name": "wait", "image": "registry.example.com/wait:1.0"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
    },
}
# Custom resources of the Prometheus Operator: not in the Kubernetes schemas, checked by hand.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
KUBE_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml kubeVersion floor, and the newest schemas


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart, loaded once."""
    helm.disable_logging()
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def _render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = chart.render(values=values, name="wq", namespace="integrations")
    documents: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        documents.extend(d for d in yaml.safe_load_all(text) if d)
    return documents


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> Rendered:
    """Every value set rendered once: name -> manifests."""
    return {name: _render(chart, values) for name, values in VALUE_SETS.items()}


def _one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind]
    return found


def _config(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings ConfigMap (not the Grafana dashboard's)."""
    (found,) = [m for m in manifests if m["kind"] == "ConfigMap" and not m["metadata"]["name"].endswith("-dashboard")]
    return found


def _pod(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(manifests, "Deployment")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in _pod(manifests)["containers"] if c["name"] == "poller"]
    return container


def _env_refs(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in _container(manifests)["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}


def _pod_env(manifests: list[dict[str, Any]], secret: dict[str, str]) -> dict[str, str]:
    """The environment the pod would see: the ConfigMap plus the referenced Secret keys."""
    env = dict(_config(manifests)["data"])
    for name, ref in _env_refs(manifests).items():
        if ref["key"] in secret:
            env[name] = secret[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{name} refers to missing key {ref['key']}"
    return env


def _secret_data(manifests: list[dict[str, Any]]) -> dict[str, str]:
    secret = _one(manifests, "Secret")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


class TestLintAndSchemas:
    @pytest.mark.parametrize("name", VALUE_SETS)
    def test_lint_is_clean(self, name: str) -> None:
        """helm lint --strict reports no warning or error for each value set."""
        report = helm.lint(CHART, VALUE_SETS[name], strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []

    @pytest.mark.parametrize("version", KUBE_VERSIONS)
    @pytest.mark.parametrize("name", VALUE_SETS)
    def test_manifests_validate_against_kubernetes(
        self,
        rendered: Rendered,
        name: str,
        version: str,
    ) -> None:
        """Every manifest but the operator CRDs passes kubernetes-validate in strict mode."""
        checked = 0
        for manifest in rendered[name]:
            if manifest["kind"] in CRD_KINDS:
                continue
            kubernetes_validate.validate(manifest, version, strict=True)
            checked += 1
        assert checked >= 6

    def test_values_schema_is_valid_draft7(self) -> None:
        """values.schema.json is itself a valid JSON schema, and accepts values.yaml."""
        schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
        jsonschema.Draft7Validator.check_schema(schema)
        defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
        assert list(jsonschema.Draft7Validator(schema).iter_errors(defaults)) == []

    def test_expected_resources(self, rendered: Rendered) -> None:
        """Each value set yields the resources it asks for, and nothing more."""
        kinds = {name: sorted(m["kind"] for m in docs) for name, docs in rendered.items()}
        base = ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
        assert kinds["default"] == sorted([*base, "PersistentVolumeClaim", "Secret"])
        assert kinds["ha"] == sorted([*base, "PrometheusRule", "Secret", "ServiceMonitor"])
        assert kinds["existing-secret"] == sorted([*base, "PersistentVolumeClaim"])
        assert kinds["no-persistence"] == sorted([*base, "Secret"])


class TestDeployment:
    def test_sqlite_default_is_one_replica_recreate_on_a_pvc(self, rendered: Rendered) -> None:
        """The SQLite store runs one replica with Recreate and the PVC mounted at the state dir."""
        manifests = rendered["default"]
        spec = _one(manifests, "Deployment")["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        pvc = _one(manifests, "PersistentVolumeClaim")
        assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in _container(manifests)["volumeMounts"]}
        assert mounts["state"] == "/var/lib/waiqin-poller"
        config = _config(manifests)["data"]
        assert config["POLLER_STORE_URL"] == "sqlite:////var/lib/waiqin-poller/state.db"

    def test_postgresql_allows_replicas_with_rolling_update(self, rendered: Rendered) -> None:
        """With PostgreSQL: 3 replicas, RollingUpdate, no state volume, the URL from the Secret."""
        manifests = rendered["ha"]
        spec = _one(manifests, "Deployment")["spec"]
        assert spec["replicas"] == 3
        assert spec["strategy"]["type"] == "RollingUpdate"
        assert "state" not in {v["name"] for v in spec["template"]["spec"]["volumes"]}
        assert "POLLER_STORE_URL" not in _config(manifests)["data"]
        assert _env_refs(manifests)["POLLER_STORE_URL"]["key"] == "POLLER_STORE_URL"
        assert _secret_data(manifests)["POLLER_STORE_URL"] == POSTGRES_URL
        assert _one(manifests, "PodDisruptionBudget")["spec"] == {
            "minAvailable": 1,
            "selector": spec["selector"],
        }

    @pytest.mark.parametrize("name", VALUE_SETS)
    def test_security_context(self, rendered: Rendered, name: str) -> None:
        """Non-root, read-only root, emptyDir /tmp, no escalation, no capabilities, seccomp."""
        pod = _one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = _container(rendered[name])["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in _container(rendered[name])["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert pod["enableServiceLinks"] is False
        assert pod["automountServiceAccountToken"] is False

    def test_probes_and_port(self, rendered: Rendered) -> None:
        """Liveness asks /healthz, readiness /readyz, on the named port that the Service targets."""
        manifests = rendered["default"]
        container = _container(manifests)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        (port,) = container["ports"]
        assert port["name"] == "http"
        assert (
            str(port["containerPort"]) == _config(manifests)["data"]["POLLER_HTTP_PORT"]
        )
        (service_port,) = _one(manifests, "Service")["spec"]["ports"]
        assert service_port["targetPort"] == "http"
        assert container["args"] == ["run"]
        assert container["resources"]["requests"] and container["resources"]["limits"]

    @pytest.mark.parametrize("name", VALUE_SETS)
    def test_kubernetes_grace_exceeds_the_shutdown_grace(
        self, rendered: Rendered, name: str
    ) -> None:
        """terminationGracePeriodSeconds (30) exceeds POLLER_SHUTDOWN_GRACE_SECONDS (20)."""
        pod = _one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        grace = float(_config(rendered[name])["data"]["POLLER_SHUTDOWN_GRACE_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] == 30
        assert grace == 20
        assert pod["terminationGracePeriodSeconds"] > grace


class TestSettingsAndSecrets:
    def test_chart_secret_holds_the_secrets_and_the_configmap_none(
        self, rendered: Rendered
    ) -> None:
        """The appkey and the SASL password live only in the chart's Secret, referenced by key."""
        manifests = rendered["ha"]
        secret = _one(manifests, "Secret")
        refs = _env_refs(manifests)
        assert {refs[n]["name"] for n in refs} == {secret["metadata"]["name"]}
        data = _secret_data(manifests)
        assert data["WAIQIN_APPKEY"] == "appkey-from-values"
        assert data["KAFKA_SASL_PASSWORD"] == "sasl-pw"
        config_text = json.dumps(_config(manifests))
        for value in ("appkey-from-values", "sasl-pw", "pw@db"):
            assert value not in config_text

    def test_existing_secret_is_referenced_not_created(self, rendered: Rendered) -> None:
        """With existingSecret no Secret is rendered and the pod reads the named one."""
        manifests = rendered["existing-secret"]
        assert not [m for m in manifests if m["kind"] == "Secret"]
        refs = _env_refs(manifests)
        assert {r["name"] for r in refs.values()} == {"poller-credentials"}
        assert refs["WAIQIN_APPKEY"]["key"] == "WAIQIN_APPKEY"
        assert refs["KAFKA_SASL_PASSWORD"]["key"] == "KAFKA_SASL_PASSWORD"
        annotations = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/secret" not in annotations

    @pytest.mark.parametrize("name", VALUE_SETS)
    def test_pod_environment_is_valid_settings(
        self,
        rendered: Rendered,
        name: str,
        env_names: set[str],
    ) -> None:
        """Every variable the pod gets is a real setting name, and together they load."""
        manifests = rendered[name]
        if name == "existing-secret":
            secret = {"WAIQIN_APPKEY": "k", "KAFKA_SASL_PASSWORD": "p"}
        else:
            secret = _secret_data(manifests)
        env = _pod_env(manifests, secret)
        assert set(env) - env_names == set()
        settings = Settings.load(env)
        assert settings.unknown_variables(env) == []
        assert settings.http.port == 8080

    def test_tls_files_are_mounted_where_the_settings_point(self, rendered: Rendered) -> None:
        """KAFKA_SSL_CAFILE names a file inside the mounted TLS Secret."""
        manifests = rendered["ha"]
        mounts = {m["name"]: m["mountPath"] for m in _container(manifests)["volumeMounts"]}
        cafile = _config(manifests)["data"]["KAFKA_SSL_CAFILE"]
        assert cafile == f"{mounts['kafka-tls']}/ca.crt"


class TestGuards:
    @pytest.mark.parametrize(
        ("values", "message"),
        [
            ({**CREDENTIALS, "replicaCount": 2},
             r"^(?!.*maximum).*replicaCount > 1 needs store.postgresql.enabled=true: the SQLite store"),
            ({"waiqin": {"openid": "o", "appkey": "k"}}, "image.repository is required"),
            (
                {**CREDENTIALS, "config": {"shutdownGraceSeconds": 30}},
                "terminationGracePeriodSeconds",
            ),
            ({"image": IMAGE, "waiqin": {"appkey": "k"}}, "waiqin.openid is required"),
            ({"image": IMAGE, "waiqin": {"openid": "o"}}, "waiqin.appkey is required"),
            ({**CREDENTIALS, "store": {"postgresql": {"enabled": True}}}, "store.postgresql.url"),
            ({**CREDENTIALS, "kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.sasl"),
        ],
        ids=["sqlite-replicas", "image", "grace", "openid", "appkey", "postgres-url", "sasl"],
    )
    def test_broken_values_are_refused(
        self, chart: helm.Chart, values: dict[str, Any], message: str
    ) -> None:
        """Values that would start a broken release fail rendering with a clear line."""
        with pytest.raises(helm.HelmError, match=message):
            chart.render(values=values, name="wq")


class TestMonitoringResources:
    def test_service_monitor_scrapes_metrics_as_job_waiqin_poller(self, rendered: Rendered) -> None:
        """The ServiceMonitor selects the Service, scrapes /metrics on http, and names the job."""
        manifests = rendered["ha"]
        monitor = _one(manifests, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        service = _one(manifests, "Service")
        labels = service["metadata"]["labels"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert labels[monitor["spec"]["jobLabel"]] == "waiqin-poller"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"

    def test_prometheus_rule_structure(self, rendered: Rendered) -> None:
        """The PrometheusRule has one group of alerts, each with expr, severity and a summary."""
        rule = _one(rendered["ha"], "PrometheusRule")
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        (group,) = rule["spec"]["groups"]
        assert group["rules"]
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}
            assert alert["alert"].startswith("WaiqinPoller") and alert["expr"]
            assert alert["labels"]["severity"] in ("warning", "critical")
            assert alert["annotations"]["summary"]


class TestPlacementAndEscapeHatches:
    def test_default_soft_anti_affinity(self, rendered: Rendered) -> None:
        """By default replicas prefer different nodes, selected by this release's labels."""
        manifests = rendered["ha"]
        (term,) = _pod(manifests)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        selector = _one(manifests, "Deployment")["spec"]["selector"]["matchLabels"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector

    @pytest.mark.parametrize(("values", "expected"), [
        ({"podAntiAffinity": "hard"}, "requiredDuringSchedulingIgnoredDuringExecution"),
        ({"podAntiAffinity": "none"}, None),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}]}}}},
         "nodeAffinity"),
    ], ids=["hard", "none", "own-affinity"])
    def test_affinity_choices(self, chart: helm.Chart, values: dict[str, Any], expected: str | None) -> None:
        """podAntiAffinity hard requires spreading, none drops it, an own affinity replaces it."""
        pod = _pod(_render(chart, {**CREDENTIALS, **values}))
        if expected is None:
            assert "affinity" not in pod
        else:
            assert expected in yaml.safe_dump(pod["affinity"])
            if expected == "nodeAffinity":
                assert "podAntiAffinity" not in pod["affinity"]

    def test_topology_spread_counts_own_pods(self, rendered: Rendered) -> None:
        """A spread constraint without a labelSelector gets this release's selector."""
        manifests = rendered["extras"]
        (constraint,) = _pod(manifests)["topologySpreadConstraints"]
        selector = _one(manifests, "Deployment")["spec"]["selector"]["matchLabels"]
        assert constraint["labelSelector"]["matchLabels"] == selector
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"

    def test_escape_hatches_reach_the_pod(self, rendered: Rendered) -> None:
        """extraEnv, extraEnvFrom, extraVolumes/Mounts, sidecars, initContainers, podAnnotations, digest."""
        manifests = rendered["extras"]
        pod, container = _pod(manifests), _container(manifests)
        env = {e["name"]: e for e in container["env"]}
        assert env["HTTPS_PROXY"]["value"] == "http://proxy.example:3128"
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert {"secretRef": {"name": "proxy-credentials"}} in container["envFrom"]
        assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in pod["volumes"]
        assert {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True} in container["volumeMounts"]
        assert [c["name"] for c in pod["containers"]] == ["poller", "shipper"]
        assert [c["name"] for c in pod["initContainers"]] == ["wait"]
        annotations = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["example.com/team"] == "integrations"
        assert container["image"] == f"{IMAGE['repository']}@{DIGEST}"

    def test_tag_defaults_to_the_app_version(self, rendered: Rendered) -> None:
        """Without a digest the image is repository:appVersion."""
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
        assert _container(rendered["default"])["image"] == f"{IMAGE['repository']}:{chart['appVersion']}"


class TestGrafanaDashboard:
    def test_dashboard_configmap_for_the_sidecar(self, rendered: Rendered) -> None:
        """The dashboard ships as a ConfigMap with the sidecar label, holding the file as is."""
        (dashboard,) = [m for m in rendered["default"]
                        if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-dashboard")]
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        shipped = json.loads(dashboard["data"]["waiqin-poller.json"])
        assert shipped == json.loads((CHART / "dashboards" / "waiqin-poller.json").read_text(encoding="utf-8"))
        variables = {v["name"] for v in shipped["templating"]["list"]}
        assert {"datasource", "namespace", "job"} <= variables
