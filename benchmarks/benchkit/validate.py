"""The validate benchmarks: ``backfill validate`` against the naive pandas script on the same
file, and again next to CPU hogs (peak RSS against the quiet run's)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from .common import NAIVE, OUT, PYTHON, backfill_cmd, fresh_dir, log, warm_cache
from .measuring import Measured, cpu_hogs, proc_cpu_s
from .session import Row, Session, best, fmt_mib, fmt_s, measured_json, ratio, speed_text


def _validate_cmd(path: Path, out: Path) -> list[str]:
    return backfill_cmd("validate", str(path), "--out", str(out / "backfill"), "--no-progress")


def _measure_both(
    session: Session, path: Path, out: Path, label: str, naive: bool, repeat: int
) -> tuple[list[Measured], list[Measured]]:
    """``repeat`` runs of backfill (and of the naive script), alternating; the naive script's
    runs stop at its first failure."""
    ours_runs: list[Measured] = []
    theirs_runs: list[Measured] = []
    for attempt in range(repeat):
        session.wait_for_quiet()
        log(f"{label}: backfill validate ({attempt + 1}/{repeat})")
        ours, _ = session.run_child(_validate_cmd(path, out), out / "backfill-logs")
        ours.check("backfill validate")
        ours_runs.append(ours)
        if naive:
            session.wait_for_quiet()
            log(f"{label}: naive pandas ({attempt + 1}/{repeat})")
            theirs, _ = session.run_child(
                [PYTHON, str(NAIVE), str(path), "--out", str(out / "naive")], out / "naive-logs"
            )
            theirs_runs.append(theirs)
            if theirs.returncode != 0:
                break
    return ours_runs, theirs_runs


def bench_validate(
    session: Session, path: Path, rows: int, label: str, *, naive: bool = True, repeat: int = 1
) -> Measured:
    """``backfill validate`` against the naive pandas script on the same file.

    With ``repeat`` > 1 the two alternate and each keeps its fastest run, which is returned.
    """
    report = session.report
    warm_cache(path)
    out = fresh_dir(OUT / f"validate-{rows}{path.suffix.replace('.', '-')}")
    ours_runs, theirs_runs = _measure_both(session, path, out, label, naive, repeat)
    ours = best(ours_runs)
    report.check_background(f"{label}, backfill", ours)
    summary = json.loads((out / "backfill" / "summary.json").read_text())
    rejected = {k: v for k, v in summary["rejected"].items() if k != "api_rejected"}
    total = sum(rejected.values())
    raw: dict[str, Any] = {
        "backfill": [measured_json(m) for m in ours_runs],
        "rows_read": summary["rows_read"],
        "rows_valid": summary["rows_valid"],
        "rejected": rejected,
    }
    report.raw[f"validate_{rows}{path.suffix}"] = raw
    ours_text = (
        f"{fmt_s(ours.wall_s)} wall, {fmt_s(ours.cpu_s)} CPU, "
        f"{fmt_mib(ours.rss_mib)} peak RSS; {rows / ours.wall_s / 1e6:.2f}M rows/s"
    )
    if summary["rows_read"] != rows:
        report.warn(f"{label}: backfill read {summary['rows_read']:,} rows, expected {rows:,}")
    if not naive:
        report.rows.append(Row(label, ours_text, "–", f"{total:,} rejected ({total / rows:.2%})"))
        return ours
    raw["naive"] = [measured_json(m) for m in theirs_runs]
    _against_naive(session, label, out, rows, ours, ours_text, theirs_runs, raw)
    return ours


def _against_naive(
    session: Session,
    label: str,
    out: Path,
    rows: int,
    ours: Measured,
    ours_text: str,
    theirs_runs: list[Measured],
    raw: dict[str, Any],
) -> None:
    """The table row of backfill against the naive script, and whether their rejects agree."""
    report = session.report
    theirs = theirs_runs[-1]
    if theirs.returncode != 0:
        tail = " ".join(theirs.stderr.strip().splitlines()[-2:])
        report.warn(f"{label}: the naive script exited {theirs.returncode}: {tail}")
        report.rows.append(
            Row(label, ours_text, f"naive pandas failed (exit {theirs.returncode})", "")
        )
        return
    theirs = best(theirs_runs)
    report.check_background(f"{label}, naive pandas", theirs)
    naive_rejected = json.loads(theirs.stdout.strip().splitlines()[-1])["rejected"]
    raw["naive_rejected"] = naive_rejected
    agreement = _agreement(session, label, out, rows, raw["rejected"], naive_rejected)
    report.rows.append(
        Row(
            label,
            ours_text,
            f"naive pandas: {fmt_s(theirs.wall_s)} wall, {fmt_s(theirs.cpu_s)} CPU, "
            f"{fmt_mib(theirs.rss_mib)} peak RSS",
            f"{speed_text(theirs.wall_s, ours.wall_s)} naive, "
            f"{ratio(ours.rss_mib / theirs.rss_mib)} its peak RSS, "
            f"{ratio(ours.cpu_s / theirs.cpu_s)} its CPU; {agreement}",
        )
    )


def _agreement(
    session: Session,
    label: str,
    out: Path,
    rows: int,
    rejected: dict[str, int],
    naive_rejected: dict[str, int],
) -> str:
    """Whether both tools reject the same rows for each reason (warned if not), as text."""
    total = sum(rejected.values())
    naive_total = sum(naive_rejected.values())
    differing = {
        k: (rejected.get(k, 0), naive_rejected.get(k, 0))
        for k in sorted(set(rejected) | set(naive_rejected))
        if rejected.get(k, 0) != naive_rejected.get(k, 0)
    }
    if naive_total != total or differing:
        examples = first_differences(
            out / "backfill" / "rejects.csv", out / "naive" / "rejects.csv", limit=3
        )
        session.report.warn(
            f"{label}: backfill and the naive script disagree: {total:,} vs {naive_total:,} "
            f"rejected rows; by reason (backfill, naive): {differing}; e.g. {examples}"
        )
    return (
        f"rejected rows agree ({total:,}, {total / rows:.2%})"
        if naive_total == total and not differing
        else f"rejected rows DIFFER ({total:,} vs {naive_total:,})"
    )


def bench_validate_busy(
    session: Session, path: Path, rows: int, hogs: int, quiet: Measured, repeat: int = 1
) -> None:
    """``backfill validate`` again with ``hogs`` CPU hogs running: peak RSS against quiet.

    The validator then gets a fraction of a core, while its reader thread would read on: the
    peak must not grow with the wait.
    """
    report = session.report
    warm_cache(path)
    out = fresh_dir(OUT / f"validate-{rows}-{hogs}-hogs")
    label = f"validate {rows:,} rows (CSV), {hogs} CPU hogs"
    runs: list[tuple[Measured, float]] = []
    with cpu_hogs(hogs) as pids:
        time.sleep(1.0)  # let them take the cores first
        for attempt in range(repeat):
            log(f"{label}: backfill validate ({attempt + 1}/{repeat})")
            before = sum(proc_cpu_s(pid) or 0.0 for pid in pids)
            ours, _ = session.run_child(_validate_cmd(path, out), out / "backfill-logs")
            ours.check("backfill validate")
            runs.append((ours, sum(proc_cpu_s(pid) or 0.0 for pid in pids) - before))
    ours, hogs_cpu = min(runs, key=lambda r: r[0].wall_s)
    report.check_background(label, ours, also=hogs_cpu)
    report.raw[f"validate_{rows}_{hogs}_hogs"] = {
        "backfill": [measured_json(m, also=c) for m, c in runs],
        "hogs_cpu_s": [round(c, 3) for _, c in runs],
    }
    report.rows.append(
        Row(
            label,
            f"{fmt_s(ours.wall_s)} wall, {fmt_s(ours.cpu_s)} CPU, "
            f"{fmt_mib(ours.rss_mib)} peak RSS; the hogs used {hogs_cpu / ours.wall_s:.2f} "
            "cores meanwhile",
            f"quiet: {fmt_s(quiet.wall_s)} wall, {fmt_s(quiet.cpu_s)} CPU, "
            f"{fmt_mib(quiet.rss_mib)} peak RSS",
            f"peak RSS {ratio(ours.rss_mib / quiet.rss_mib)} the quiet run's "
            f"({(ours.rss_mib - quiet.rss_mib) / quiet.rss_mib:+.0%}); "
            f"CPU {ratio(ours.cpu_s / quiet.cpu_s)}",
        )
    )


def first_differences(ours: Path, theirs: Path, limit: int) -> str:
    """The first rows whose reason differs between two rejects.csv files, as text."""

    def reasons(path: Path) -> dict[int, tuple[str, str, str]]:
        with path.open(newline="", encoding="utf-8") as f:
            return {
                int(r["row"]): (r["reason"], r["anon_id"], r["identified_id"])
                for r in csv.DictReader(f)
            }

    a, b = reasons(ours), reasons(theirs)
    found = []
    for row in sorted(set(a) | set(b)):
        mine, other = a.get(row), b.get(row)
        if (mine and mine[0]) != (other and other[0]):
            pair = (mine or other or ("", "", ""))[1:]
            found.append(
                f"row {row} {pair[0]},{pair[1]}: backfill {mine[0] if mine else 'valid'}, "
                f"naive {other[0] if other else 'valid'}"
            )
            if len(found) == limit:
                break
    return "; ".join(found)
