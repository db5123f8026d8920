"""The results as markdown: the table, then the machine, the sources measured, the command
and any notes and warnings."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from .common import ROOT, source_digest
from .session import Session


def render(session: Session, argv: list[str]) -> str:
    """The results as markdown: the table, then the machine, the command and any warnings."""
    report = session.report
    lines = [
        "| benchmark | backfill | reference | result |",
        "|---|---|---|---|",
        *(f"| {r.benchmark} | {r.backfill} | {r.reference} | {r.result} |" for r in report.rows),
    ]
    versions = _versions()
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPUs, {_mem_total_gib():.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, {versions}. "
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"backfill: {report.raw.get('revision', revision())} at the end; measured with "
        f"backfill/**/*.py sha256 {', '.join(session.measured_with) or 'n/a'}. "
        f"Command: `python benchmarks/bench.py {' '.join(argv)}`".rstrip()
        + ".",
        "Wall time is the whole child process (interpreter start-up, imports and validation "
        "included); CPU is user + system from `os.wait4`; peak RSS is the child's `ru_maxrss`. "
        "The stand-in's CPU excludes its own start-up (imports), which ends before the run.",
    ]
    lines += [f"Note: {n}" for n in report.notes]
    lines += [f"**Warning:** {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _versions() -> str:
    import aiohttp
    import pandas

    return (
        f"numpy {np.__version__}, pyarrow {pa.__version__}, pandas {pandas.__version__}, "
        f"aiohttp {aiohttp.__version__}"
    )


def _git(*args: str) -> str:
    """A read-only git command's output."""
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def revision() -> str:
    """The commit measured, and whether backfill/ differs from it (read-only git calls)."""
    try:
        head = _git("-C", str(ROOT), "rev-parse", "--short", "HEAD")
        dirty = _git(
            "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "--", "backfill"
        )
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", ""
    return (
        f"commit {head}"
        + (" with uncommitted changes in backfill/" if dirty else "")
        + f" (sources sha256 {source_digest()})"
    )


def loadavg() -> str:
    """The load average over 1, 5 and 15 minutes (n/a off Linux)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")
