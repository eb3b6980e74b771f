"""The container image: the Dockerfile's own build and install steps, run without Docker.

These machines have no Docker engine, so the slow test replays the Dockerfile instead: it
copies what the build stage COPYs, runs the build stage's ``pip wheel`` RUN line in a clean
virtualenv, then the runtime stage's ``pip install`` RUN line in a second clean virtualenv
(the wheels only, ``--no-index``), and runs ``kubenetmon --version`` and ``kubenetmon
validate`` on the shipped configs with that installation. The only difference from a
``docker build`` is that pip's cache is used (the image sets PIP_NO_CACHE_DIR; the test does
not apply ENV lines), which keeps the run well under two minutes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
CONFIG_DIR = REPO / "config"
SHIPPED_CONFIGS = ("agent.yaml", "gateway.yaml", "standalone.yaml")  # DESIGN §7


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


def _venv(path: Path) -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True, capture_output=True, timeout=120)
    return path / "bin"


def _shell(command: str, env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(["/bin/sh", "-c", command], check=False, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"`{command}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_image_build_steps_install_a_kubenetmon_that_validates_the_shipped_configs(tmp_path: Path) -> None:
    missing = [name for name in SHIPPED_CONFIGS if not (CONFIG_DIR / name).is_file()]
    assert not missing, f"config/ lacks {missing}: the image ships them as examples (DESIGN §7)"
    instructions = parse_dockerfile(DOCKERFILE)

    # Build stage: COPY into the WORKDIR, exactly as the Dockerfile lists it.
    src = tmp_path / "src"
    src.mkdir()
    for i in instructions:
        if i.stage == 0 and i.keyword == "COPY":
            *sources, dest = shlex.split(i.argument)
            for name in sources:
                origin = REPO / name
                assert origin.exists(), f"the Dockerfile copies {name}, which does not exist"
                target = src / dest / origin.name if dest.endswith("/") else src / dest
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(origin, target)

    wheels = tmp_path / "wheels"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_NO_CACHE", "VIRTUAL_ENV", "PYTHON"))}
    build_bin = _venv(tmp_path / "build-venv")
    env = {**base_env, "PATH": f"{build_bin}:{base_env.get('PATH', '')}",
           "SRC": str(src), "WHEELS": str(wheels), "EXTRAS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _shell(_run_line(instructions, 0, "pip wheel"), env, src)
    assert list(wheels.glob("kubenetmon-*.whl")), "no kubenetmon wheel was built"

    app_bin = _venv(tmp_path / "app-venv")
    env["PATH"] = f"{app_bin}:{base_env.get('PATH', '')}"
    _shell(_run_line(instructions, 1, "pip install"), env, tmp_path)

    kubenetmon = app_bin / "kubenetmon"
    version = subprocess.run([str(kubenetmon), "--version"], check=False, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("kubenetmon "), version.stderr
    for name in SHIPPED_CONFIGS:
        proc = subprocess.run(
            [str(kubenetmon), "validate", "--config", str(CONFIG_DIR / name)],
            check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**env, "NODE_NAME": "node-a"},
        )
        assert proc.returncode == 0, f"the installed kubenetmon rejects config/{name}:\n{proc.stdout}{proc.stderr}"
