"""The lock files: every dependency pinned with hashes, in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    """Package -> pinned version of a lock file."""
    text = (ROOT / lock).read_text(encoding="utf-8")
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def requirements(*extras: str) -> list[Requirement]:
    """The project's requirements, with those of `extras` (self-references resolved)."""
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


class TestLocks:
    @pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))],
                             ids=["runtime", "dev"])
    def test_every_requirement_is_pinned_within_its_range(self, lock: str, extras: tuple[str, ...]) -> None:
        """Each dependency of pyproject.toml is pinned in the lock at a version it allows."""
        pinned = pins(lock)
        for requirement in requirements(*extras):
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{requirement.name} missing from {lock}: regenerate it (README)"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (lock, requirement, pinned[name])

    @pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
    def test_every_pin_has_hashes(self, lock: str) -> None:
        """pip --require-hashes installs it: every pinned package carries its sha256 hashes."""
        text = (ROOT / lock).read_text(encoding="utf-8")
        blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 2)[2])
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, block.splitlines()[0]

    def test_runtime_lock_has_the_build_backend(self) -> None:
        """The image builds without build isolation, so setuptools is locked with the runtime."""
        assert "setuptools" in pins("requirements.lock")
