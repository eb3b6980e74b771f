"""The Dockerfile's shape, read as text (fast, no root).

The image itself is built with ``scripts/build-image`` and run by the kernel-marked tests in
tests/image/ (version, components, the shipped configs, the wheel's provenance, no compiler, the
charts' default reference, the agent counting a transfer exactly, chDB rows from standalone.yaml).
Those replaced the earlier replay of the Dockerfile's pip lines in virtualenvs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    argument: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their stage index (0 = first FROM); continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions: list[Instruction] = []
    stage = -1
    for text in logical:
        keyword, _, argument = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, argument.strip()))
    return instructions


def _run_line(instructions: list[Instruction], stage: int, needle: str) -> str:
    runs = [i.argument for i in instructions if i.stage == stage and i.keyword == "RUN" and needle in i.argument]
    assert len(runs) == 1, f"expected one RUN with {needle!r} in stage {stage} of the Dockerfile, got {runs}"
    # BuildKit options (--mount=…) belong to docker, not to the shell command.
    return re.sub(r"^(--[a-z]+=\S+\s+)+", "", runs[0])


def test_dockerfile_is_multi_stage_slim_python_and_runs_as_non_root() -> None:
    instructions = parse_dockerfile(DOCKERFILE)
    froms = [i.argument for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS wheels")
    base = next(i.argument for i in instructions if i.keyword == "ARG" and i.argument.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    runtime = [i for i in instructions if i.stage == 1]
    (user,) = [i.argument for i in runtime if i.keyword == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (entrypoint,) = [i.argument for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint == '["kubenetmon"]'
    # No compiler in the runtime stage: it installs wheels only.
    assert "--no-index" in _run_line(instructions, 1, "pip install")
    assert not [i for i in runtime if i.keyword == "RUN" and "build-essential" in i.argument]


def test_dockerignore_keeps_only_what_the_build_copies() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        src.rstrip("/")
        for i in parse_dockerfile(DOCKERFILE)
        if i.keyword == "COPY" and not i.argument.startswith("--from")
        for src in shlex.split(i.argument)[:-1]
    }
    assert copied <= allowed, f"COPY uses {sorted(copied - allowed)}, which .dockerignore excludes"
