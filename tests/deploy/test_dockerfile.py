"""Static checks of the container image definition (no Docker engine runs here)."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import CHART, ROOT
from tests.deploy.dockerfile import Stage, parse

BUILD_TOOLS = ("gcc", "build-essential", "make", "g++", "clang", "cargo", "rustc", "git")
STATE_DIR = "/var/lib/waiqin-poller"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """The parsed build stages of ./Dockerfile."""
    return parse(ROOT / "Dockerfile")[1]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    """The final stage: what the image is."""
    return stages[-1]


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").removeprefix("**/")
        if fnmatch.fnmatch(path, bare) or fnmatch.fnmatch(Path(path).name, bare):
            ignored = not negate
    return ignored


class TestStages:
    def test_multi_stage_on_python_311_slim(self, stages: list[Stage]) -> None:
        """A builder stage makes the venv and a slim Python 3.11 runtime stage carries it."""
        assert len(stages) >= 2
        assert stages[0].name == "builder"
        for stage in stages:
            assert stage.base.startswith("python:3.11-slim"), stage.base
        copies = [c.value for c in stages[-1].all("COPY")]
        assert any(c.startswith("--from=builder /opt/venv") for c in copies)

    def test_runtime_has_no_build_tools_or_installer(self, runtime: Stage) -> None:
        """The final stage installs no compiler and runs no pip: it only copies the built venv."""
        for run in runtime.all("RUN"):
            words = run.value.replace("&&", " ").split()
            assert "pip" not in words and "apt-get" not in words, run.value
            assert not set(words) & set(BUILD_TOOLS), run.value

    def test_builder_installs_the_lock(self, stages: list[Stage]) -> None:
        """The builder installs requirements.lock with hashes, then the project resolving nothing."""
        copies = " ".join(c.value for c in stages[0].all("COPY"))
        assert "requirements.lock" in copies
        runs = " ".join(r.value for r in stages[0].all("RUN"))
        assert "pip install --require-hashes --no-deps -r requirements.lock" in runs
        assert "pip install --no-deps --no-build-isolation ." in runs
        assert "--upgrade" not in runs

    def test_builder_drops_pip_from_the_venv(self, stages: list[Stage]) -> None:
        """The venv that reaches the runtime carries no installer."""
        runs = " ".join(r.value for r in stages[0].all("RUN"))
        assert "pip uninstall --yes pip setuptools wheel" in runs


class TestRuntime:
    def test_runs_as_fixed_non_root_uid_matching_the_chart(self, runtime: Stage) -> None:
        """USER is the numeric UID 10001, the same the chart's securityContext runs as."""
        (user,) = runtime.all("USER")
        uid, _, gid = user.value.partition(":")
        assert uid == gid == "10001"
        values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
        assert values["podSecurityContext"]["runAsUser"] == int(uid)
        assert values["podSecurityContext"]["fsGroup"] == int(gid)

    def test_entrypoint_is_the_console_script_running_the_daemon(self, runtime: Stage) -> None:
        """ENTRYPOINT is waiqin-poller and CMD is run, and pyproject declares that script."""
        assert runtime.all("ENTRYPOINT")[-1].exec_form() == ["waiqin-poller"]
        assert runtime.all("CMD")[-1].exec_form() == ["run"]
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert "waiqin-poller" in pyproject["project"]["scripts"]

    def test_only_the_state_directory_is_writable(self, runtime: Stage) -> None:
        """Only /var/lib/waiqin-poller is chowned, and the default SQLite store lives there."""
        runs = " ".join(r.value for r in runtime.all("RUN"))
        chowned = [w for w in runs.split("chown", 1)[1].split("&&")[0].split() if w.startswith("/")]
        assert chowned == [STATE_DIR]
        env = runtime.env()
        assert env["POLLER_STORE_URL"] == f"sqlite:///{STATE_DIR}/state.db"
        assert runtime.all("WORKDIR")[-1].value == STATE_DIR

    def test_environment_and_port(self, runtime: Stage) -> None:
        """Logs are unbuffered, no .pyc is written at run time, and 8080 is exposed."""
        env = runtime.env()
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
        assert env["POLLER_HTTP_PORT"] == "8080"
        assert [e.value for e in runtime.all("EXPOSE")] == ["8080"]
        assert runtime.all("STOPSIGNAL")[-1].value == "SIGTERM"

    def test_oci_labels(self, runtime: Stage) -> None:
        """The image carries the standard OCI annotations."""
        labels = " ".join(label.value for label in runtime.all("LABEL"))
        for key in ("title", "description", "version", "revision", "licenses"):
            assert f"org.opencontainers.image.{key}=" in labels


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[HTTPServer, type[_Health]]]:
    """A local /healthz answering with a status the test picks."""
    handler = type("Handler", (_Health,), {"status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class TestHealthcheck:
    def test_healthcheck_uses_python_not_curl(self, runtime: Stage) -> None:
        """slim has no curl, so the HEALTHCHECK asks /healthz with Python's stdlib."""
        (check,) = runtime.all("HEALTHCHECK")
        argv = check.exec_form()
        assert argv[:2] == ["python", "-c"]
        assert "/healthz" in argv[2]

    @pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)], ids=["ok", "down"])
    def test_healthcheck_command_reflects_healthz(
        self,
        runtime: Stage,
        health_server: tuple[HTTPServer, type[_Health]],
        status: int,
        healthy: bool,
    ) -> None:
        """The HEALTHCHECK command exits 0 on a 200 from /healthz and non-zero otherwise."""
        server, handler = health_server
        handler.status = status
        argv = runtime.all("HEALTHCHECK")[0].exec_form()
        env = {**os.environ, "POLLER_HTTP_PORT": str(server.server_address[1])}
        result = subprocess.run(
            [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30
        )
        assert (result.returncode == 0) is healthy


class TestBuildContext:
    def test_copy_sources_exist_and_are_not_ignored(self, stages: list[Stage]) -> None:
        """Every file the build copies from the context exists and survives .dockerignore."""
        patterns = _dockerignore()
        for stage in stages:
            for copy in stage.all("COPY"):
                if copy.value.startswith("--from="):
                    continue
                *sources, _ = copy.value.split()
                for source in sources:
                    assert (ROOT / source).exists(), source
                    assert not _ignored(source, patterns), source

    @pytest.mark.parametrize(
        "path",
        [".venv", "tests", "poller-state.db", "poller/__pycache__", ".pytest_cache", ".env"],
    )
    def test_dockerignore_excludes_local_state(self, path: str) -> None:
        """Virtualenvs, caches, state databases, secrets and tests stay out of the context."""
        assert _ignored(path, _dockerignore())
