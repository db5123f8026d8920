"""report.html: the pre-merge report in the run folder, and ``Summary._repr_html_``.

The page is parsed with ``html.parser`` (what elements exist, what text shows); when Chromium
is on PATH, it is also opened headless with the network off, through the DevTools protocol.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest
from runkit import REPO, backfill_cli

import backfill

SAMPLE = REPO / "sample_data" / "mappings.csv"
MARKUP = "<img src=x onerror=alert(1)>"
KIOSK = "kiosk@store-7.example.com"
SECTIONS = {"verdict", "settings", "refusals", "clusters", "conflicts", "times"}


class Page(HTMLParser):
    """Every element's tag and attributes, and the text, of a parsed page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.ids: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.texts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += attrs
        self.ids.update(v for k, v in attrs if k == "id" and v)

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def _uuid4(rng: np.random.Generator, n: int) -> list[str]:
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def kiosk_frame(rows: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Pairs with a kiosk (1,200 anon ids on one identified id), a markup id, a conflict,
    refusals of several kinds and event times over two years."""
    rng = np.random.default_rng(seed)
    anon = _uuid4(rng, rows)
    ident = [f"user_{i % (rows // 3)}" for i in range(rows)]
    ident[:1200] = [KIOSK] * 1200
    ident[1200:1210] = [MARKUP] * 10
    anon[1300] = MARKUP  # an invalid anon id holding markup: shown as an example row
    anon[1301] = anon[1302]  # one anon id, two identified ids
    ident[1303] = "null"
    times = 1_640_995_200 + (np.arange(rows) * 20_000).astype(np.int64)
    when = [str(t) for t in times]
    when[1304] = "last tuesday"
    return pd.DataFrame({"anon_id": anon, "identified_id": ident, "merged_at": when})


@pytest.fixture(scope="module")
def kiosk_report(tmp_path_factory: pytest.TempPathFactory) -> backfill.Summary:
    """The dry run of ``kiosk_frame`` (shared by the tests that only read its page)."""
    out = tmp_path_factory.mktemp("kiosk") / "run"
    return backfill.validate(kiosk_frame(), out=out, time_column="merged_at")


def test_report_written_and_named_in_summary(kiosk_report: backfill.Summary) -> None:
    """A dry run writes report.html in its folder; summary.json and Summary name its path."""
    path = kiosk_report.report_path
    assert path == kiosk_report.out / "report.html"
    assert path.is_file()
    saved = json.loads((kiosk_report.out / "summary.json").read_text())
    assert saved["report"] == str(path)
    assert path.stat().st_mode & 0o077 == 0


def test_markup_id_shows_as_text(kiosk_report: backfill.Summary) -> None:
    """An id holding markup appears as text, and no element or attribute is made from it."""
    assert kiosk_report.report_path is not None
    page = Page(kiosk_report.report_path.read_text(encoding="utf-8"))
    assert page.tags["img"] == 0
    assert page.tags["script"] == 0
    assert not any(k.startswith("on") for k, _ in page.attrs)
    assert sum(MARKUP in t for t in page.texts) >= 2  # a largest cluster, an example row


def test_sections_top_to_bottom(kiosk_report: backfill.Summary) -> None:
    """Every section is present, in the issue's order, and the verdict is one sentence."""
    assert kiosk_report.report_path is not None
    text = kiosk_report.report_path.read_text(encoding="utf-8")
    assert Page(text).ids >= SECTIONS
    order = [text.index(f'id="{s}"') for s in ("verdict", "settings", "refusals", "clusters")]
    assert order == sorted(order)
    rows = f"{kiosk_report.rows_read:,}"
    assert f"of {rows} pairs ready to send to an Original ID Merge project" in text


def test_kiosk_is_the_first_largest_cluster(kiosk_report: backfill.Summary) -> None:
    """The largest-clusters chart's first bar is the kiosk, with its 1,200 anon ids."""
    assert kiosk_report.report_path is not None
    text = kiosk_report.report_path.read_text(encoding="utf-8")
    top = text[text.index('<figure class="top">') :]
    first = top.index('class="label"')
    assert top[first:].split(">", 1)[1].startswith(KIOSK)
    assert "1,200</text>" in top[: top.index("</g>")]


def test_months_and_refused_times(kiosk_report: backfill.Summary) -> None:
    """Pairs per month come from the time column; refused times are counted apart."""
    assert kiosk_report.report_path is not None
    text = kiosk_report.report_path.read_text(encoding="utf-8")
    assert "2022-01: " in text
    assert "2023-01: " in text
    assert "Times refused (<code>invalid_time</code>): 1." in text


def test_repr_html_is_the_page_fragment(kiosk_report: backfill.Summary) -> None:
    """In a notebook, the summary renders the report's content inline (no document shell)."""
    fragment = kiosk_report._repr_html_()
    assert fragment.startswith("<style>")
    assert "<html" not in fragment
    assert Page(fragment).ids >= SECTIONS


def test_no_report_option(tmp_path: Path) -> None:
    """``--no-report`` writes no page; summary.json has no ``report``; the notebook view
    falls back to the counts."""
    result = backfill_cli(
        "validate", SAMPLE, "--out", tmp_path / "r", "--no-report", "--no-progress", cwd=tmp_path
    )
    assert result.code == 0, result.stderr
    assert not (tmp_path / "r" / "report.html").exists()
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "report" not in saved
    summary = backfill.Summary.from_json(saved, tmp_path / "r")
    assert summary.report_path is None
    assert {"verdict", "refusals"} <= Page(summary._repr_html_()).ids


def test_size_bounded_for_a_big_input(tmp_path: Path) -> None:
    """The page holds aggregates only: 200,000 rows of long, distinct, mostly refused ids and
    30 years of months give a page far under 1.5 MB, about the size of 20,000 rows' page."""
    sizes = []
    for rows in (20_000, 200_000):
        rng = np.random.default_rng(rows)
        long = [f"{'x' * 250}{i}" for i in range(rows)]
        anon = _uuid4(rng, rows)
        anon[::3] = long[::3]  # invalid anon ids, 250+ characters each
        ident = [f"{'u' * 200}{i % (rows // 2)}" for i in range(rows)]
        when = [str(40_000_000 + i * (940_000_000 // rows)) for i in range(rows)]
        frame = pd.DataFrame({"anon_id": anon, "identified_id": ident, "t": when})
        summary = backfill.validate(frame, out=tmp_path / str(rows), time_column="t")
        assert summary.report_path is not None
        sizes.append(summary.report_path.stat().st_size)
    assert sizes[1] < 1_500_000 / 5
    assert sizes[1] < sizes[0] * 1.2


def test_rehearsal_has_a_sending_section(tmp_path: Path) -> None:
    """A rehearsal's page shows what sending did: imported over time, requests, the rate."""
    result = backfill_cli(
        "rehearse", SAMPLE, "--time-column", "merged_at", "--out", tmp_path / "r",
        "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    text = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert {"sending", *SECTIONS} <= Page(text).ids
    assert "rate held" in text
    assert "against --rate 25,000" in text
    assert "What Mixpanel refused: 0 records" in text
    assert "report.html" in result.stdout


# --- in a browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def _open_offline(url: str, profile: Path) -> dict[str, Any]:
    """Open ``url`` in headless Chromium with the network off: console errors, requests
    other than the page itself, and what the page shows."""
    assert CHROMIUM is not None
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                return await _drive(ws, url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _drive(ws: aiohttp.ClientWebSocketResponse, url: str) -> dict[str, Any]:
    ids = iter(range(1, 1000))
    errors: list[str] = []
    requests: list[str] = []

    async def call(method: str, **params: Any) -> dict[str, Any]:
        n = next(ids)
        await ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = json.loads((await ws.receive(timeout=60)).data)
            if msg.get("id") == n:
                return dict(msg.get("result", {}))
            _note(msg)

    def _note(msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        console = method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert")
        logged = method == "Log.entryAdded" and p["entry"]["level"] == "error"
        if console or logged or method == "Runtime.exceptionThrown":
            errors.append(str(p))
        elif method == "Network.requestWillBeSent" and p["request"]["url"] != url:
            requests.append(p["request"]["url"])

    for domain in ("Page", "Runtime", "Log", "Network"):
        await call(f"{domain}.enable")
    await call("Network.emulateNetworkConditions", offline=True, latency=0,
               downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
    await call("Page.navigate", url=url)
    while True:
        msg = json.loads((await ws.receive(timeout=60)).data)
        _note(msg)
        if msg.get("method") == "Page.loadEventFired":
            break
    shown = await call("Runtime.evaluate", returnByValue=True, expression="""JSON.stringify({
        sections: [...document.querySelectorAll('section[id], p[id]')].map(e => e.id),
        firstBar: document.querySelector('#clusters figure.top .bar text.label').textContent,
        images: document.images.length,
        heights: [...document.querySelectorAll('svg.chart')]
            .map(s => s.getBoundingClientRect().height),
    })""")  # fmt: skip
    return {"errors": errors, "requests": requests, **json.loads(shown["result"]["value"])}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_page_in_headless_chromium_offline(kiosk_report: backfill.Summary, tmp_path: Path) -> None:
    """Offline Chromium renders every section and chart, with no console error and no request
    leaving the page, and the kiosk as the first bar of the largest-clusters chart."""
    assert kiosk_report.report_path is not None
    url = kiosk_report.report_path.resolve().as_uri()
    seen = asyncio.run(_open_offline(url, tmp_path / "profile"))
    assert seen["errors"] == []
    assert seen["requests"] == []
    assert set(seen["sections"]) >= SECTIONS
    assert seen["firstBar"] == KIOSK
    assert seen["images"] == 0
    assert seen["heights"]
    assert all(h > 20 for h in seen["heights"])


def test_figures_match_a_plain_pandas_count(tmp_path: Path) -> None:
    """Cluster sizes, the largest clusters, the most claimed anon ids and the months equal a
    plain pandas computation over the rows the rules keep, also with a tiny index budget."""
    rng = np.random.default_rng(5)
    n = 4000
    anon = _uuid4(rng, n // 2) * 2  # every anon id twice: duplicates and conflicts
    ident = [f"u{int(k)}" for k in rng.zipf(1.6, n) % 300]
    times = [str(1_500_000_000 + int(k) * 86_400) for k in rng.integers(0, 900, n)]
    frame = pd.DataFrame({"anon_id": anon, "identified_id": ident, "t": times})
    summary = backfill.validate(frame, out=tmp_path / "r", time_column="t", max_cluster_size=50)
    assert summary.report_path is not None
    text = summary.report_path.read_text(encoding="utf-8")
    claims = frame.groupby("anon_id")["identified_id"].nunique()
    kept = frame[frame["anon_id"].map(claims) == 1].drop_duplicates(["anon_id", "identified_id"])
    sizes = kept.groupby("identified_id").size()
    top = sizes.sort_values(ascending=False, kind="stable")
    assert f"{len(sizes):,} identified ids" in text
    largest = text[text.index('<figure class="top">') :]
    assert f'class="label" x="292" y="19" text-anchor="end">{top.index[0]}<' in largest
    assert f">{top.iloc[0]:,}</text>" in largest
    assert f"Anon ids in conflict: {int((claims > 1).sum()):,}." in text
    months = pd.to_datetime(frame["t"].astype(int), unit="s").dt.strftime("%Y-%m").value_counts()
    for month, count in months.items():
        assert f"<title>{month}: {count:,}</title>" in text
