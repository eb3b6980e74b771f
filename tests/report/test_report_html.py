"""``kubenetmon report --format html``: one offline page, opened in real headless Chromium.

The page is written by the real CLI from the seeded chDB; Chromium loads it
from a file with networking features off. Checked: no console errors, every
chart drawn (a non-empty plotly SVG; a screenshot of each is kept under the
test's tmp dir, path printed), and the numbers in the page — chart data and
table cells — equal what the SQL returns.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.cli import main
from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.report import ReportWindow
from kubenetmon.report.html import CHARTS, collect
from kubenetmon.report.prices import load_prices
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS
from tests.report.chromium import Chromium

T0 = datetime.fromtimestamp(T0_NS // SECOND, UTC)
WINDOW = ReportWindow(since=T0, until=T0 + timedelta(minutes=2))
SINCE, UNTIL = T0.strftime("%Y-%m-%dT%H:%M:%SZ"), (T0 + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")

_PLOTS = """JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot')).map(e => ({
  id: e.id,
  shapes: e.querySelectorAll('svg.main-svg path, svg.main-svg rect').length,
  width: e.getBoundingClientRect().width,
  data: e.data.map(t => ({type: t.type, name: t.name, x: t.x, y: t.y,
                          link: t.link ? {value: t.link.value} : null})),
})))"""
_CELLS = """JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll('table')).map(t =>
  [t.id, Array.from(t.querySelectorAll('tbody tr')).map(r =>
     Array.from(r.querySelectorAll('td')).map(c => c.dataset.value ?? c.textContent))])))"""


@pytest.fixture
def page(seeded: Connection, chdb_path: Path, tmp_path: Path, capsys: Any) -> Path:
    out = tmp_path / "report.html"
    code = main(["report", "--format", "html", "--out", str(out), "--endpoint", str(chdb_path),
                 "--since", SINCE, "--until", UNTIL])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert str(out) in printed
    return out


def test_the_page_is_one_offline_file(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"<script[^>]+src=", text), "scripts must be inline (no CDN)"
    assert not re.search(r"<link[^>]+href=\"?https?:", text)
    assert text.count('class="plotly-graph-div"') == len(CHARTS)


def test_page_renders_in_headless_chromium_with_the_sql_numbers(
    page: Path, seeded: Connection, tmp_path: Path
) -> None:
    expected = collect(seeded.client, WINDOW, load_prices())
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Chromium(tmp_path / "chromium-profile") as browser:
        browser.open(page.as_uri())
        plots = json.loads(browser.evaluate(_PLOTS))
        cells = json.loads(browser.evaluate(_CELLS))
        sizes = {p["id"]: browser.screenshot(f"#{p['id']}", shots / f"{p['id']}.png") for p in plots}
        total = browser.evaluate("document.getElementById('total-usd').dataset.value")
        caption = browser.evaluate("document.getElementById('price-caption').textContent")
        problems = browser.problems()
    print(f"\nscreenshots of every chart: {shots}")

    assert problems == []
    assert [p["id"] for p in plots] == [f"chart-{c}" for c in CHARTS]
    for p in plots:
        assert p["shapes"] > 0 and p["width"] > 0, f"{p['id']} drew nothing"
        assert sizes[p["id"]] > 5000, f"{p['id']} screenshot is blank"  # a drawn 420 px chart is tens of KB
    by_id = {p["id"].removeprefix("chart-"): p["data"] for p in plots}

    pairs = expected["cost-by-pair"].records()
    assert by_id["sankey-bytes"][0]["link"]["value"] == [r["billed_bytes"] for r in pairs]
    assert by_id["sankey-cost"][0]["link"]["value"] == pytest.approx([r["cost_usd"] for r in pairs], rel=1e-15)
    plotted = {(t["name"], x): y for t in by_id["cost-class-time"] for x, y in zip(t["x"], t["y"], strict=True)}
    assert plotted == pytest.approx(
        {(r["billed_class"], r["time"]): r["cost_usd"] for r in expected["cost-over-time"].records()}, rel=1e-15)
    talkers = by_id["top-talkers"]
    assert talkers[0]["y"] == [r["sent_bytes"] for r in expected["top-talkers"].records()]
    services = by_id["cloud-services"]
    assert services[1]["y"] == [r["received_bytes"] for r in expected["cloud-services"].records()]
    nodes = {t["name"]: t["y"] for t in by_id["throughput-node"]}
    for r in expected["throughput-node"].records():
        assert r["sent_mbps"] in nodes[f"{r['node']} sent"]

    for name in ("cost-by-class", "cost-by-namespace", "cost-by-pair", "cost-by-service"):
        shown = cells[f"table-{name}"]
        assert len(shown) == len(expected[name].rows), name
        for row, want in zip(shown, expected[name].rows, strict=True):
            assert [_number(v) if isinstance(w, int | float) else v for v, w in zip(row, want, strict=True)] \
                == [w if isinstance(w, int | float) else (w or "-") for w in want], name
    assert float(total) == pytest.approx(sum(r["cost_usd"] for r in expected["cost-by-class"].records()), rel=1e-15)
    assert f"read {load_prices().read.isoformat()}" in caption


def _number(text: str) -> float:
    return float(text)


def test_html_needs_an_output_file(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    code = main(["report", "--format", "html", "--endpoint", str(chdb_path)])
    _, err = capsys.readouterr()
    assert code == 2
    assert "--out FILE" in err


NOTHING_TO_DRAW = {
    "empty-window": (["--since", "2020-01-01", "--until", "2020-01-02"], "", len(CHARTS)),
    "free-inter-zone": (["--since", SINCE, "--until", UNTIL], "cross_zone_per_gb: 0\n", 1),  # no dollar flows
}


@pytest.mark.parametrize("case", NOTHING_TO_DRAW)
def test_nothing_to_draw_still_opens_cleanly(seeded: Connection, chdb_path: Path, tmp_path: Path, capsys: Any,
                                            case: str) -> None:
    argv, prices, blank = NOTHING_TO_DRAW[case]
    out = tmp_path / "page.html"
    extra = []
    if prices:
        (tmp_path / "prices.yaml").write_text(prices)
        extra = ["--prices", str(tmp_path / "prices.yaml")]
    code = main(["report", "--format", "html", "--out", str(out), "--endpoint", str(chdb_path), *argv, *extra])
    assert code == 0, capsys.readouterr().err
    with Chromium(tmp_path / "chromium-profile") as browser:
        browser.open(out.as_uri())
        charts = browser.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        text = browser.evaluate("document.body.innerText")
        problems = browser.problems()
    assert problems == []
    assert charts == len(CHARTS)
    assert text.count("nothing to draw in this window") == blank
