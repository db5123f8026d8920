"""The pacing benchmarks: default flags against a stand-in 1.5 s late on every request
(latency), and against one that answers 429 above a rate limit (backoff).

With ``--compare-root`` the client of another source tree runs first and the current
version's row gives the ratio.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import OUT, ROOT, fresh_dir, log, source_digest
from .measuring import Measured
from .sending import arrival_rate, logged_standin_cmd, run_cmd
from .session import Row, Session, measured_json
from .standin import StandinProcess, client_env, standin_summary


def held_at_standin(requests: list[dict[str, Any]]) -> tuple[float, float, int]:
    """The rate held as the stand-in saw it: (events/s, window s, accepted requests).

    Accepted requests (200/400 with records imported) but the one-event canary, by arrival:
    every one but the last was paid for between the first arrival and the last.
    """
    accepted = sorted(
        (r for r in requests if r["status"] in (200, 400) and r["imported"]),
        key=lambda r: r["arrived_s"],
    )
    if accepted and accepted[0]["events"] == 1:
        accepted = accepted[1:]  # the canary goes alone, a round trip before the pool starts
    return arrival_rate(accepted)


@dataclass
class PacedRun:
    """One ``backfill run`` with default pacing against a logged stand-in in its own process."""

    client: Measured
    summary: dict[str, Any]
    requests: list[dict[str, Any]]
    server: dict[str, Any]
    #: CPU seconds the stand-in used after its start-up (not counted as background load).
    standin_cpu_s: float

    @property
    def this_run(self) -> dict[str, Any]:
        """The client's ``this_run`` (empty if it wrote no summary)."""
        this = self.summary.get("this_run")
        return this if isinstance(this, dict) else {}

    def as_json(self, held: float, window: float) -> dict[str, Any]:
        """This run's figures for results.json."""
        statuses = Counter(r["status"] for r in self.requests)
        return {
            "client": measured_json(self.client),
            "status": self.summary.get("status"),
            "rows_valid": self.summary.get("rows_valid"),
            "events_imported": self.summary.get("events_imported"),
            "this_run": self.this_run,
            "standin_requests": len(self.requests),
            "standin_statuses": {str(k): v for k, v in statuses.items()},
            "standin_max_in_flight": self.server.get("max_in_flight"),
            "standin_events_imported": self.server.get("events_imported"),
            "standin_held_events_per_s": held,
            "standin_window_s": window,
        }


def paced_run(
    session: Session,
    csv_path: Path,
    out: Path,
    rate: float,
    *,
    latency_s: float = 0.0,
    rate_limit: float | None = None,
    client_root: Path = ROOT,
) -> PacedRun:
    """Serve a logged stand-in (latency, rate limit), run the client to its end, stop both.

    The client gets only ``--rate`` beyond the run's plumbing: every pacing flag at its default.
    A client that exits non-zero is measured all the same (an old version may abort).
    """
    out = fresh_dir(out)
    log_path = out / "requests.json"
    session.wait_for_quiet()
    serve = [*logged_standin_cmd(log_path), "--serve-latency", f"{latency_s:g}"]
    if rate_limit is not None:
        serve += ["--serve-rate-limit", f"{rate_limit:g}"]
    standin = StandinProcess(serve, out / "standin-logs")
    log(
        f"paced run of {csv_path.name} at --rate {rate:g} against {standin.url} "
        f"(latency {latency_s:g} s, rate limit {rate_limit}; client from {client_root})"
    )
    try:
        client, _ = session.run_child(
            run_cmd(csv_path, standin.url, out, rate),
            out / "client-logs",
            env=client_env(),
            cwd=client_root,
        )
    finally:
        served, printed = standin.stop()
    summary_path = out / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    logged = json.loads(log_path.read_text()) if log_path.exists() else {}
    return PacedRun(
        client,
        summary,
        logged.get("requests", []),
        standin_summary(printed),
        served.cpu_s - standin.cpu_at_ready,
    )


def _client_label(client_root: Path) -> str:
    if client_root == ROOT:
        return ""
    return f" [client from {client_root}, sources sha256 {source_digest(client_root)}]"


def _versus(held: float, previous: float | None) -> str:
    if previous is None or not previous > 0:
        return ""
    return f"; {held / previous:.2f}x the previous version's {previous:,.0f} events/s"


def bench_latency(
    session: Session,
    csv_path: Path,
    rows: int,
    rate: float,
    latency_s: float,
    client_root: Path,
    previous: float | None = None,
) -> float:
    """Default flags against a stand-in that answers every request ``latency_s`` late: the
    rate held while sending, as the stand-in saw the requests arrive (returned).

    ``previous`` is the previous version's figure, for the ratio.
    """
    report = session.report
    label = f"latency {latency_s:g} s, --rate {rate:,.0f}, {rows:,} rows, default flags"
    label += _client_label(client_root)
    out = OUT / f"latency-{latency_s:g}-{client_root.name}"
    run = paced_run(session, csv_path, out, rate, latency_s=latency_s, client_root=client_root)
    report.check_background(label, run.client, also=run.standin_cpu_s)
    held, window, accepted = held_at_standin(run.requests)
    report.raw[f"latency_{latency_s:g}_{client_root.name}"] = run.as_json(held, window)
    if run.client.returncode != 0 or run.summary.get("status") != "completed":
        report.warn(f"{label}: exit {run.client.returncode}, status {run.summary.get('status')}")
    report.rows.append(_latency_row(label, run, rate, (held, window, accepted), previous))
    return held


def _latency_row(
    label: str,
    run: PacedRun,
    rate: float,
    measured: tuple[float, float, int],
    previous: float | None,
) -> Row:
    """The table row of a latency run: ``measured`` is ``held_at_standin``'s."""
    held, window, accepted = measured
    this = run.this_run
    target = 0.9 * rate
    verdict = "meets" if held >= target else "MISSES"
    client_held = this.get("rate_held_per_s")
    client_text = "client: "
    if isinstance(client_held, int | float):
        client_text += f"held {client_held:,.0f}/s, "
    return Row(
        label,
        f"**{held:,.0f} events/s** held at the stand-in ({held / rate:.0%} of --rate) over "
        f"{window:.1f} s, {accepted} requests; {client_text}"
        f"{float(this.get('events_per_s', 0)):,.0f}/s over its whole "
        f"{float(this.get('send_s', 0)):.1f} s send phase (canary round trip included); "
        f"at most {run.server.get('max_in_flight')} requests in flight",
        f"target: ≥ 90% of --rate = {target:,.0f} events/s",
        f"{verdict} the target{_versus(held, previous)}; "
        f"{run.summary.get('events_imported', 0):,} of "
        f"{run.summary.get('rows_valid', 0):,} pairs imported",
    )


@dataclass(frozen=True)
class Backoff:
    """The backoff benchmark's settings: ``--rate`` against a 429 limit (events/s), with the
    stand-in's latency."""

    rows: int
    rate: float
    limit: float
    latency_s: float


def bench_backoff(
    session: Session,
    csv_path: Path,
    setting: Backoff,
    client_root: Path,
    previous: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Default flags at ``rate`` against a stand-in answering 429 above ``limit`` events/s:
    every pair imported, the share of requests answered 429, the rate held.

    Returns (share of 429s, rate held); ``previous`` is the previous version's, for the ratio.
    """
    report, rate, limit = session.report, setting.rate, setting.limit
    label = (
        f"--rate {rate:,.0f} against a 429 limit of {limit:,.0f} events/s, {setting.rows:,} rows"
    )
    if setting.latency_s:
        label += f", latency {setting.latency_s:g} s"
    label += _client_label(client_root)
    run = paced_run(
        session,
        csv_path,
        OUT / f"backoff-{limit:g}-{client_root.name}",
        rate,
        latency_s=setting.latency_s,
        rate_limit=limit,
        client_root=client_root,
    )
    report.check_background(label, run.client, also=run.standin_cpu_s)
    held, window, _ = held_at_standin(run.requests)
    report.raw[f"backoff_{limit:g}_{client_root.name}"] = run.as_json(held, window)
    total = len(run.requests)
    limited = sum(1 for r in run.requests if r["status"] == 429)
    share = limited / total if total else float("nan")
    valid = int(run.summary.get("rows_valid", 0))
    imported = int(run.summary.get("events_imported", 0))
    status = run.summary.get("status")
    everything = status == "completed" and imported == valid
    if not everything:
        report.warn(f"{label}: status {status}, {imported:,} of {valid:,} pairs imported")
    ok = everything and share < 0.10 and held >= 0.8 * limit
    report.rows.append(
        _backoff_row(label, run, limit, (limited, total, held, window), ok, previous)
    )
    return share, held


def _backoff_row(
    label: str,
    run: PacedRun,
    limit: float,
    measured: tuple[int, int, float, float],
    ok: bool,
    previous: tuple[float, float] | None,
) -> Row:
    """The table row of a backoff run: ``measured`` is (429s, requests, rate held, window)."""
    limited, total, held, window = measured
    share = limited / total if total else float("nan")
    this = run.this_run
    lowest = this.get("lowest_rate_per_s")
    lowered = (
        f"; rate lowered {this.get('rate_lowered')}x, lowest {lowest:,.0f}/s"
        if isinstance(lowest, int | float)
        else ""
    )
    retries = run.summary.get("retries") or {}
    valid = int(run.summary.get("rows_valid", 0))
    imported = int(run.summary.get("events_imported", 0))
    return Row(
        label,
        f"status {run.summary.get('status')}: {imported:,} of {valid:,} pairs imported; "
        f"**{limited:,} of {total:,} requests answered 429 ({share:.1%})**; "
        f"**{held:,.0f} events/s held** at the stand-in over {window:.1f} s{lowered}; "
        f"retries {retries}",
        f"target: every pair, < 10% 429, ≥ {0.8 * limit:,.0f} events/s held",
        ("meets the targets" if ok else "MISSES a target")
        + (
            f"; the previous version: {previous[0]:.1%} of requests 429, "
            f"{previous[1]:,.0f} events/s held"
            if previous is not None
            else ""
        ),
    )
