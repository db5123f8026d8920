"""The send benchmarks: ``backfill run`` unpaced against ``backfill serve`` (throughput), and
how closely ``--rate`` is held against a logged stand-in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import OUT, PYTHON, SCRIPT, backfill_cmd, fresh_dir, log, warm_cache
from .measuring import CpuSampler, Measured
from .session import Row, Session, fmt_mib, fmt_s, measured_json
from .standin import StandinProcess, client_env, standin_summary

#: The summary.json fields results.json keeps of each unpaced run.
_SUMMARY_FIELDS = (
    "status",
    "rows_read",
    "rows_valid",
    "events_imported",
    "requests",
    "retries",
    "elapsed_s",
    "events_per_s",
    "this_run",
)


def run_cmd(csv_path: Path, url: str, out: Path, rate: float) -> list[str]:
    """``backfill run`` of ``csv_path`` against the stand-in at ``url``, from scratch."""
    return backfill_cmd(
        "run", str(csv_path), "--api-url", url, "--out", str(out / "run"), "--no-progress",
        "--restart", "--rate", f"{rate:g}",
    )  # fmt: skip


@dataclass
class RunMeasurement:
    """One ``backfill run`` against its own ``backfill serve``."""

    client: Measured
    served: Measured
    summary: dict[str, Any]
    server: dict[str, Any]
    standin_cpu_s: float
    standin_cpu_sampled: bool
    standin_cpu_at_ready_s: float
    client_send_cpu_s: float | None

    @property
    def send_s(self) -> float:
        """The client's send phase (``this_run.send_s``)."""
        return float(self.summary["this_run"]["send_s"])

    def as_json(self) -> dict[str, Any]:
        """This run's figures for results.json."""
        return {
            "client": measured_json(self.client, also=self.standin_cpu_s),
            "standin": measured_json(self.served),
            "standin_cpu_at_ready_s": round(self.standin_cpu_at_ready_s, 3),
            "standin_cpu_during_send_s": self.standin_cpu_s if self.standin_cpu_sampled else None,
            "client_cpu_during_send_s": self.client_send_cpu_s,
            "summary": {k: self.summary.get(k) for k in _SUMMARY_FIELDS},
            "standin_summary": self.server,
        }


def run_once(session: Session, csv_path: Path, rate: float, out: Path) -> RunMeasurement:
    """Start a stand-in, run the client against it to the end, stop the stand-in."""
    out = fresh_dir(out)
    session.wait_for_quiet()
    standin = StandinProcess(backfill_cmd("serve", "--port", "0"), out / "standin-logs")
    log(f"run {csv_path.name} against {standin.url} (stand-in pid {standin.proc.pid})")
    pids = {"standin": standin.proc.pid}
    sampler = CpuSampler(pids)
    try:
        with sampler:
            client, ended = session.run_child(
                run_cmd(csv_path, standin.url, out, rate),
                out / "client-logs",
                env=client_env(),
                on_start=lambda pid: pids.__setitem__("client", pid),
            )
    finally:
        served, printed = standin.stop()
    client.check("backfill run")
    summary = json.loads((out / "run" / "summary.json").read_text())
    send_s = float(summary["this_run"]["send_s"])
    # The stand-in's CPU while the client sent (sampled), else all it used after start-up
    # (which then also counts its shutdown: freeing every stored event).
    sampled = sampler.cpu_between("standin", ended - send_s, ended)
    return RunMeasurement(
        client=client,
        served=served,
        summary=summary,
        server=standin_summary(printed),
        standin_cpu_s=sampled if sampled is not None else served.cpu_s - standin.cpu_at_ready,
        standin_cpu_sampled=sampled is not None,
        standin_cpu_at_ready_s=standin.cpu_at_ready,
        client_send_cpu_s=sampler.cpu_between("client", ended - send_s, ended),
    )


def bench_run(session: Session, csv_path: Path, rows: int, rate: float, repeat: int = 1) -> None:
    """``backfill run`` against ``backfill serve`` in its own process, unpaced.

    With ``repeat`` > 1 the run with the least client wall time is reported.
    """
    report = session.report
    warm_cache(csv_path)
    runs = [run_once(session, csv_path, rate, OUT / f"run-{rows}") for _ in range(repeat)]
    best = min(runs, key=lambda r: r.client.wall_s)
    report.raw[f"run_{rows}"] = [r.as_json() for r in runs]
    report.check_background(f"run {rows:,} rows", best.client, also=best.standin_cpu_s)
    retries = _check_run(session, best)
    report.rows.append(_run_row(best, rows, rate, retries))


def _check_run(session: Session, best: RunMeasurement) -> int:
    """Warn about anything but a clean, complete run; returns its number of retries."""
    report, summary, server = session.report, best.summary, best.server
    imported = int(summary["events_imported"])
    if summary["status"] != "completed":
        report.warn(f"run: status {summary['status']!r}")
    if imported != summary["rows_valid"]:
        report.warn(f"run: imported {imported:,} of {summary['rows_valid']:,} valid rows")
    if server and server.get("events_imported") != imported:
        report.warn(
            f"run: the stand-in stored {server.get('events_imported')} events, "
            f"the client counts {imported:,}"
        )
    retries = int(sum((summary.get("retries") or {}).values()))
    if retries:
        report.warn(f"run: {retries} retries against an unfaulted stand-in: {summary['retries']}")
    return retries


def _run_row(best: RunMeasurement, rows: int, rate: float, retries: int) -> Row:
    """The table row of the unpaced run."""
    client, served, summary = best.client, best.served, best.summary
    imported = int(summary["events_imported"])
    send_s = best.send_s
    millions = max(imported, 1) / 1e6
    standin_busy = best.standin_cpu_s / send_s
    client_busy = None if best.client_send_cpu_s is None else best.client_send_cpu_s / send_s
    bound = (
        "stand-in CPU-bound (≥ 90% of a core while sending)"
        if standin_busy >= 0.9
        else "stand-in not CPU-bound"
    )
    client_text = "n/a" if client_busy is None else f"{client_busy:.0%}"
    client_send_text = (
        ""
        if best.client_send_cpu_s is None
        else f" ({best.client_send_cpu_s / millions:,.1f} s of them while sending)"
    )
    return Row(
        f"run {rows:,} rows → stand-in, --rate {rate:,.0f} (unpaced)",
        f"{fmt_s(client.wall_s)} wall (whole process); {imported:,} events imported; "
        f"{imported / client.wall_s:,.0f} events/s whole process, "
        f"{float(summary['events_per_s']):,.0f}/s over the {fmt_s(send_s)} send phase; "
        f"{client.cpu_s / millions:,.1f} CPU s per 1M events{client_send_text}; "
        f"{fmt_mib(client.rss_mib)} peak RSS",
        f"stand-in: {best.standin_cpu_s:,.1f} CPU s = {standin_busy:.0%} of a core over the "
        f"send phase ({best.standin_cpu_s / millions:,.1f} CPU s per 1M events), "
        f"{fmt_mib(served.rss_mib)} peak RSS",
        f"{bound}; client used {client_text} of a core while sending; "
        f"{summary['this_run']['requests']:,} requests, {retries} retries",
    )


def logged_standin_cmd(log_path: Path) -> list[str]:
    """This script serving the stand-in and writing its request log to ``log_path``."""
    return [PYTHON, str(SCRIPT), "--serve-logged", str(log_path)]


def arrival_rate(requests: list[dict[str, Any]]) -> tuple[float, float, int]:
    """The rate of accepted requests' arrivals: (events/s, window s, accepted requests).

    Between the first and the last arrival, every request but the last was paid for.
    """
    accepted = sorted(
        (r for r in requests if r["status"] in (200, 400) and r["imported"]),
        key=lambda r: r["arrived_s"],
    )
    window = accepted[-1]["arrived_s"] - accepted[0]["arrived_s"] if len(accepted) > 1 else 0.0
    paid = sum(r["events"] for r in accepted[:-1])
    return (paid / window if window > 0 else float("nan")), window, len(accepted)


def bench_rate(session: Session, csv_path: Path, rate: float) -> None:
    """Hold ``--rate``: the achieved rate from the stand-in's request log and the client."""
    report = session.report
    out = fresh_dir(OUT / f"rate-{rate:g}")
    log_path = out / "requests.json"
    session.wait_for_quiet()
    standin = StandinProcess(logged_standin_cmd(log_path), out / "standin-logs")
    log(f"rate check at {rate:,.0f} events/s against {standin.url}")
    try:
        client, _ = session.run_child(
            run_cmd(csv_path, standin.url, out, rate), out / "client-logs", env=client_env()
        )
    finally:
        served, _ = standin.stop()
    client.check("backfill run --rate")
    report.check_background(f"--rate {rate:g}", client, also=served.cpu_s - standin.cpu_at_ready)
    summary = json.loads((out / "run" / "summary.json").read_text())
    send_s = float(summary["this_run"]["send_s"])
    client_rate = float(summary["events_per_s"])
    requests = json.loads(log_path.read_text())["requests"] if log_path.exists() else []
    log_rate, window, accepted = arrival_rate(requests)
    if send_s < 10:
        report.warn(f"rate check: the send phase lasted {send_s:.1f} s, under 10 s")
    if not accepted:
        report.warn("rate check: the stand-in's request log is empty or missing")
    report.raw[f"rate_{rate:g}"] = {
        "client": measured_json(client),
        "send_s": send_s,
        "events_imported": summary["events_imported"],
        "client_events_per_s": client_rate,
        "standin_requests": len(requests),
        "standin_window_s": window,
        "standin_events_per_s": log_rate,
    }

    def deviation(x: float) -> str:
        return f"{(x - rate) / rate:+.1%}"

    report.rows.append(
        Row(
            f"--rate {rate:,.0f}: {summary['events_imported']:,} events",
            f"{log_rate:,.0f} events/s over {window:.1f} s of request arrivals (stand-in log); "
            f"client summary {client_rate:,.0f}/s over its {send_s:.1f} s send phase",
            f"target {rate:,.0f} events/s",
            f"{deviation(log_rate)} (stand-in log), {deviation(client_rate)} (client summary)",
        )
    )
