"""A small Dockerfile reader for static tests: instructions per build stage."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's arguments; raises ValueError for the shell form."""
        text = re.sub(r"^(--\S+\s+)*", "", self.value)
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip()
        parsed = json.loads(text)
        if not isinstance(parsed, list):
            raise ValueError(f"expected a JSON array, got {self.value!r}")
        return [str(item) for item in parsed]


@dataclass
class Stage:
    """The instructions from one FROM to the next."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage (the key=value form only)."""
        pairs: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for match in re.finditer(r'(\w+)=("[^"]*"|\S+)', instruction.value):
                pairs[match.group(1)] = match.group(2).strip('"')
        return pairs


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages of a Dockerfile."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in _instructions(path.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            parts = instruction.value.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages and instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append(instruction)
    return args, stages


def _instructions(text: str) -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        result.append(Instruction(keyword.upper(), value.strip()))
    return result
