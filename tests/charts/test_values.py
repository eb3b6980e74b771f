"""values.yaml, values.schema.json and README.md agree, and the schema rejects bad values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import AGENT, SERVER, run_helm

CHARTS = [SERVER, AGENT]


def _values(chart: Path) -> dict[str, Any]:
    data = yaml.safe_load((chart / "values.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _schema(chart: Path) -> dict[str, Any]:
    data = json.loads((chart / "values.schema.json").read_text())
    assert isinstance(data, dict)
    return data


def _leaf_paths(data: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted value paths, down to the depth the schema describes (Kubernetes objects such as
    resources or securityContext are one row, not one per field)."""
    paths = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        node = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and value and "properties" in node:
            paths += _leaf_paths(value, node, path + ".")
        else:
            paths.append(path)
    return paths


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_every_top_level_value_is_documented_in_the_readme(chart: Path) -> None:
    readme = (chart / "README.md").read_text()
    missing = [key for key in _values(chart) if f"`{key}`" not in readme and f"`{key}." not in readme]
    assert missing == [], f"{chart.name}/README.md does not document {missing}"


def _table_keys(readme: str) -> list[str]:
    """First-column keys of the table under the README's "## Values" heading."""
    section = readme.partition("\n## Values\n")[2].partition("\n## ")[0]
    return re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", section, flags=re.M)


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_every_leaf_value_is_documented_in_the_readme(chart: Path) -> None:
    """Each leaf has a row in the values table, its own or an enclosing object's (probes)."""
    rows = set(_table_keys((chart / "README.md").read_text()))

    def documented(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in rows for i in range(1, len(parts) + 1))

    missing = [p for p in _leaf_paths(_values(chart), _schema(chart)) if not documented(p)]
    assert missing == [], f"{chart.name}/README.md has no row for {missing}"


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_readme_documents_no_value_that_does_not_exist(chart: Path) -> None:
    rows = _table_keys((chart / "README.md").read_text())
    assert rows, "the README has no values table"
    leaves = _leaf_paths(_values(chart), _schema(chart))
    known = {".".join(p.split(".")[:i]) for p in leaves for i in range(1, p.count(".") + 2)}
    assert [k for k in rows if k not in known] == []


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_schema_knows_every_key_of_values_yaml(chart: Path) -> None:
    schema = _schema(chart)
    assert schema["additionalProperties"] is False

    def compare(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if props is None:
            return  # free-form Kubernetes objects (resources, affinity, …)
        extra = sorted(set(values) - set(props))
        assert extra == [], f"{path or 'top level'}: values.yaml has {extra}, which the schema does not know"
        for key, value in values.items():
            if isinstance(value, dict):
                compare(value, props[key], f"{path}{key}.")

    compare(_values(chart), schema, "")


BAD_VALUES = [
    (SERVER, ["--set", "deployment.replicaCount=three"], "/deployment/replicaCount"),
    (SERVER, ["--set", "cloud=aws2"], "/cloud"),
    (SERVER, ["--set", "service.port=70000"], "/service/port"),
    (SERVER, ["--set", "inserter.disableTLS=maybe"], "/inserter/disableTLS"),
    (SERVER, ["--set", "inserter.batchSendTimeout=soon"], "/inserter/batchSendTimeout"),
    (SERVER, ["--set", "config=oops"], "/config"),
    (SERVER, ["--set", "regoin=us-west-2"], "regoin"),
    # Original keys that mean nothing here are refused, not silently ignored.
    (SERVER, ["--set", "inserter.numInserterWorkers=20"], "numInserterWorkers"),
    (AGENT, ["--set", "configuration.skipConntrackSanityCheck=yes"], "/configuration/skipConntrackSanityCheck"),
    (AGENT, ["--set", "configuration.collectionInterval=5 seconds"], "/configuration/collectionInterval"),
    (AGENT, ["--set", "configuration.sysctls=kernel"], "/configuration/sysctls"),
    (AGENT, ["--set", "priorityClass.value=high"], "/priorityClass/value"),
    (AGENT, ["--set", "region=us-west-2"], "region"),
]


@pytest.mark.parametrize(("chart", "args", "where"), BAD_VALUES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_wrong_values_fail_schema_validation(helm: str, chart: Path, args: list[str], where: str) -> None:
    proc = run_helm(helm, ["template", "x", str(chart), *args], check=False)
    assert proc.returncode != 0, f"helm accepted {args}"
    assert "schema" in proc.stderr and where in proc.stderr, proc.stderr


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_lint_fails_on_wrong_types_too(helm: str, chart: Path) -> None:
    proc = run_helm(helm, ["lint", "--strict", str(chart), "--set", "resources=big"], check=False)
    assert proc.returncode != 0
    assert "resources" in proc.stdout + proc.stderr


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_app_version_is_the_package_version(chart: Path) -> None:
    import tomllib

    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    project = tomllib.loads((chart.parents[1] / "pyproject.toml").read_text())["project"]
    # The image tag defaults to appVersion, so it must name the release the image is built from.
    assert meta["appVersion"] == project["version"]
    assert meta["apiVersion"] == "v2" and meta["name"] == chart.name


def _keys_not_in(documented: Any, rendered: Any, path: str = "") -> list[str]:
    if not isinstance(documented, dict):
        return []
    if not isinstance(rendered, dict):
        return [path]
    missing = []
    for key, value in documented.items():
        if key == "…":
            continue
        if key not in rendered:
            missing.append(f"{path}{key}")
        else:
            missing += _keys_not_in(value, rendered[key], f"{path}{key}::")
    return missing


ALL_FEATURES = {
    SERVER: {"agentChannel": {"tls": {"enabled": True, "secretName": "tls"}, "token": {"enabled": True, "value": "t"}},
             "connectionFlags": {"flags": {"F": ["10.0.0.0/8"]}, "rules": [{"flag": "G", "remote_ports": [1]}]}},
    AGENT: {"gateway": {"tls": {"enabled": True, "caSecret": "ca"}, "token": {"enabled": True, "value": "t"}}},
}


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_readme_pipeline_uses_the_keys_the_chart_renders(render: Any, chart: Path) -> None:
    readme = (chart / "README.md").read_text()
    section = readme.partition("\n## The generated pipeline\n")[2]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.S)
    assert block, "the README shows no generated pipeline"
    documented = yaml.safe_load(block.group(1))
    rendered = render(chart, values=ALL_FEATURES[chart]).configmap_pipeline()
    assert _keys_not_in(documented, rendered) == []
