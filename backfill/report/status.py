"""``backfill status``: a run's progress, read from the files in its folder, while it runs or after.

Reads only: the lock (is a command active?), ``checkpoint.json`` (live progress, written
every second or so by a run) through ``Checkpoint.read``, and ``summary.json`` (the last
command's outcome) through ``Summary.from_json``. To ask whether a command is active it holds
a shared lock for an instant; a starting run retries past that.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backfill.errors import InputError
from backfill.folder.checkpoint import CHECKPOINT_FILE, Checkpoint
from backfill.folder.files import read_json_dict
from backfill.folder.lock import LOCK_FILE, active_holder
from backfill.report.summary import Summary
from backfill.report.table import SUMMARY_FILE, duration
from backfill.validation.reasons import Reason

RUNS_ROOT = Path("runs")


@dataclass(frozen=True)
class RunState:
    """What ``status`` shows of one run folder (``status --json`` prints ``to_json()``)."""

    out: str
    active: bool
    active_command: str | None = None
    pid: int | None = None
    last_status: str | None = None
    rows_read: int | None = None
    pairs_total: int | None = None
    pairs_settled: int = 0
    events_imported: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    last_checkpoint: str | None = None
    checkpoint_age_s: float | None = None
    events_per_s: float | None = None
    seconds_left: int | None = None
    runs: int | None = None
    finished: bool = False

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON object, every field present."""
        return asdict(self)


def find_run_dirs(out: Path | None) -> list[Path]:
    """``out`` itself, or every run folder under ``runs/`` when no ``--out`` is given."""
    if out is not None:
        if not out.is_dir():
            raise InputError(f"no run folder at {out} (check --out)")
        return [out]
    if RUNS_ROOT.is_dir():
        found = sorted(
            d
            for d in RUNS_ROOT.iterdir()
            if any((d / f).exists() for f in (CHECKPOINT_FILE, SUMMARY_FILE, LOCK_FILE))
        )
        if found:
            return found
    raise InputError("no runs found under runs/: pass --out DIR (the folder a run wrote to)")


def read_status(out_dir: Path, *, now: float | None = None) -> RunState:
    """Everything ``status`` shows of ``out_dir``."""
    now = time.time() if now is None else now
    ckpt = Checkpoint.read(out_dir)
    summary = _summary(out_dir)
    holder = active_holder(out_dir)
    base: dict[str, Any] = {
        "out": str(out_dir),
        "active": holder is not None,
        "active_command": (holder or {}).get("command"),
        "pid": (holder or {}).get("pid"),
        "last_status": None if summary is None else summary.status.value,
    }
    if ckpt is not None:
        return RunState(**base, **_progress(ckpt, now, active=holder is not None))
    if summary is not None:
        return RunState(
            **base,
            rows_read=summary.rows_read,
            pairs_total=summary.rows_valid,
            events_imported=summary.events_imported,
            rejected=dict(summary.rejected),
        )
    if holder is not None:
        return RunState(**base)
    raise InputError(f"{out_dir} holds no checkpoint.json or summary.json: is it a run folder?")


def _summary(out_dir: Path) -> Summary | None:
    data = read_json_dict(out_dir / SUMMARY_FILE)
    try:
        return None if data is None else Summary.from_json(data, out_dir)
    except (KeyError, TypeError, ValueError):
        return None  # a damaged summary is a report's to skip, not to fail on


def _progress(ckpt: Checkpoint, now: float, *, active: bool) -> dict[str, Any]:
    rejected = dict(ckpt.rejected)
    rejected[Reason.API_REJECTED.code] = ckpt.events_refused
    span = ckpt.updated_at - ckpt.run_started_at
    rate = ckpt.run_events / span if span > 0 and ckpt.run_events else None
    total = ckpt.events_total
    left = (total - ckpt.settled) / rate if rate and total is not None else None
    return {
        "rows_read": ckpt.rows_total,
        "pairs_total": total,
        "pairs_settled": ckpt.settled,
        "events_imported": ckpt.events_imported,
        "rejected": rejected,
        "last_checkpoint": _iso(ckpt.updated_at),
        "checkpoint_age_s": round(max(now - ckpt.updated_at, 0.0), 1),
        "events_per_s": None if rate is None else round(rate, 1),
        "seconds_left": None if left is None or not active else round(left),
        "runs": ckpt.runs,
        "finished": ckpt.state == "completed",
    }


def render_status(status: RunState) -> str:
    """A run's state as a few aligned lines."""
    if status.active:
        state = f"running ({status.active_command}, pid {status.pid})"
    elif status.finished:
        state = "finished"
    elif status.last_status:
        state = f"not running (last: {status.last_status})"
    else:
        state = "not running (stopped without a summary: killed? rerun the same command)"
    lines = [f"{status.out}: {state}"]
    total, settled = status.pairs_total, status.pairs_settled
    if status.rows_read is not None:
        lines.append(f"  rows read        {status.rows_read:,}")
    if total is not None:
        share = f" ({100 * settled / total:.1f}%)" if total else ""
        lines.append(f"  pairs done       {settled:,} of {total:,}{share}")
    lines.append(f"  imported         {status.events_imported:,}")
    rejected = {k: v for k, v in status.rejected.items() if v}
    lines.append(f"  rejected         {sum(rejected.values()):,}")
    for code, count in rejected.items():
        lines.append(f"    {code:<22}{count:,}")
    if status.last_checkpoint:
        lines.append(
            f"  last checkpoint  {status.last_checkpoint} ({status.checkpoint_age_s} s ago)"
        )
    if status.events_per_s:
        lines.append(f"  speed            {status.events_per_s:,.0f} events/s")
    if status.seconds_left is not None:
        lines.append(f"  time left        {duration(status.seconds_left)}")
    return "\n".join(lines)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
