"""What one invocation of ``bench.py`` carries from measurement to measurement.

Everything measured goes into a ``Report`` (the table's rows, warnings, notes, raw figures);
the ``Session`` holds it with the ``--wait-quiet`` budget and the record of which sources each
measurement ran, and is passed to every benchmark instead of living in module globals.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import BACKGROUND_WARN_CORES, ROOT, log, source_digest
from .measuring import Measured, run_child, wait_for_quiet


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    backfill: str
    reference: str
    result: str


@dataclass
class Report:
    """Everything measured, for the table and for the notes below it."""

    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        """Record a problem and say it now."""
        self.warnings.append(message)
        log(f"WARNING: {message}")

    def check_background(self, what: str, m: Measured, also: float = 0.0) -> None:
        """Warn when other processes kept the machine busy during a measurement."""
        cores = m.background_cores(also)
        if cores > BACKGROUND_WARN_CORES:
            self.warn(
                f"{what}: other processes kept {cores:.2f} of {os.cpu_count()} cores busy "
                "during the measurement; its wall time is inflated (CPU time and peak RSS are "
                "not)"
            )


@dataclass
class Session:
    """The report being filled, how long to wait for a quiet machine before each measurement
    (``--wait-quiet``), and which sources each measurement of this tree's client ran."""

    report: Report = field(default_factory=Report)
    quiet_wait_s: float = 0.0
    #: Digest of backfill/**/*.py -> the measurements that ran with it (normally one digest).
    measured_with: dict[str, list[str]] = field(default_factory=dict)

    def wait_for_quiet(self) -> None:
        """Wait up to ``quiet_wait_s`` for the machine to be nearly idle."""
        wait_for_quiet(self.quiet_wait_s)

    def run_child(
        self,
        cmd: Sequence[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        on_start: Callable[[int], None] | None = None,
        cwd: Path = ROOT,
    ) -> tuple[Measured, float]:
        """``measuring.run_child``, noting which sources a run of this tree measured."""
        if cwd == ROOT:  # another tree's client (--compare-root) is named in its own row
            measured_as = f"{log_dir.parent.name}/{log_dir.name}"
            self.measured_with.setdefault(source_digest(), []).append(measured_as)
        return run_child(cmd, log_dir, env=env, on_start=on_start, cwd=cwd)


def fmt_s(seconds: float) -> str:
    """Seconds, with two decimals under 10 s."""
    return f"{seconds:,.1f} s" if seconds >= 10 else f"{seconds:,.2f} s"


def fmt_mib(mib: float) -> str:
    """MiB, whole."""
    return f"{mib:,.0f} MiB"


def ratio(x: float) -> str:
    """A ratio as ``1.23x`` (one decimal from 10x)."""
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def best(runs: list[Measured]) -> Measured:
    """The run with the least wall time (the least disturbed by anything else)."""
    return min(runs, key=lambda m: m.wall_s)


def speed_text(theirs_s: float, ours_s: float) -> str:
    """``N faster than`` or ``N slower than``, from two wall times."""
    speed = theirs_s / ours_s
    return f"{ratio(speed)} faster than" if speed >= 1 else f"{ratio(1 / speed)} slower than"


def measured_json(m: Measured, also: float = 0.0) -> dict[str, Any]:
    """A measurement's figures for results.json."""
    return {
        "wall_s": round(m.wall_s, 3),
        "user_s": round(m.user_s, 3),
        "sys_s": round(m.sys_s, 3),
        "maxrss_mib": round(m.rss_mib, 1),
        "returncode": m.returncode,
        "background_cores": round(m.background_cores(also), 3),
    }
