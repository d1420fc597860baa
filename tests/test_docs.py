"""The documentation holds together: every link and every cited file exists, the contract is in
the repository (docs/design.md), and nothing points at files users do not have."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CITED_DOC = re.compile(r"\bdocs/[\w.-]+\.md\b")
# Files users do not have (the design brief lived outside the repository).
OUTSIDE = re.compile(r"\bDESIGN\.md|\bSTYLE\.md|\.\./shared/")
# Modules still citing the old name. The list may only shrink: a test below fails once a file
# no longer needs its place here.
PENDING: set[str] = set()
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".tpl", ".txt", ".toml", ".json", ".in", ""}


@cache
def tracked() -> list[str]:
    """The repository's tracked text files."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in listed.stdout.splitlines()
            if Path(p).suffix in TEXT_SUFFIXES and not p.startswith("tests/deploy/data/")]


def read(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def markdown() -> list[str]:
    return [p for p in tracked() if p.endswith(".md")]


class TestLinks:
    @pytest.mark.parametrize("doc", markdown())
    def test_every_relative_link_resolves(self, doc: str) -> None:
        """Each relative link of a Markdown file names an existing file, and an existing heading."""
        broken = []
        for target in LINK.findall(read(doc)):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path_part, _, anchor = target.partition("#")
            path = (ROOT / doc).parent / path_part if path_part else ROOT / doc
            if not path.exists():
                broken.append(target)
            elif anchor and path.suffix == ".md" and anchor not in anchors(path.resolve()):
                broken.append(target)
        assert broken == []

    def test_cited_docs_exist(self) -> None:
        """Every `docs/….md` cited anywhere (code, chart, docs) exists."""
        missing = {(path, cited) for path in tracked() for cited in CITED_DOC.findall(read(path))
                   if not (ROOT / cited).exists()}
        assert missing == set()


class TestContract:
    def test_the_contract_is_in_the_repository(self) -> None:
        """docs/design.md holds every section of the contract, and the README links it."""
        headings = {line for line in read("docs/design.md").splitlines() if line.startswith("## ")}
        for number, title in enumerate(("What it is", "The upstream API", "Finding changes", "Events",
                                        "Delivery guarantees", "Configuration", "Commands"), start=1):
            assert f"## {number}. {title}" in headings
        assert "(docs/design.md)" in read("README.md")

    def test_nothing_points_outside_the_repository(self) -> None:
        """No file cites DESIGN.md, STYLE.md or ../shared, which users do not have."""
        citing = {path for path in tracked() if OUTSIDE.search(read(path))} - {"tests/test_docs.py"}
        assert citing - PENDING == set()

    def test_pending_list_only_shrinks(self) -> None:
        """Every file still listed as pending does still cite the old name (else drop it)."""
        assert {path for path in PENDING if not OUTSIDE.search(read(path))} == set()
