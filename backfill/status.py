"""``backfill status``: a run's progress, read from the files in ``--out``, while it runs or after.

Reads only: the lock (is a command active?), ``checkpoint.json`` (live progress, written
every second or so by a run) and ``summary.json`` (the last command's outcome). To ask whether
a command is active it holds a shared lock for an instant; a starting run retries past that.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backfill.checkpoint import CHECKPOINT_FILE, LOCK_FILE, active_holder
from backfill.errors import InputError
from backfill.files import read_json_dict
from backfill.reasons import Reason
from backfill.report import SUMMARY_FILE, duration

RUNS_ROOT = Path("runs")


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


def read_status(out_dir: Path, *, now: float | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as a dict (also what ``status --json`` prints)."""
    now = time.time() if now is None else now
    ckpt = read_json_dict(out_dir / CHECKPOINT_FILE)
    summary = read_json_dict(out_dir / SUMMARY_FILE)
    holder = active_holder(out_dir)
    status: dict[str, Any] = {
        "out": str(out_dir),
        "active": holder is not None,
        "active_command": (holder or {}).get("command"),
        "pid": (holder or {}).get("pid"),
        "last_status": (summary or {}).get("status"),
    }
    if ckpt is not None:
        total = ckpt.get("events_total")
        imported = int(ckpt.get("events_imported", 0))
        refused = int(ckpt.get("events_refused", 0))
        settled = imported + refused
        rejected = dict(ckpt.get("rejected") or {})
        rejected[Reason.API_REJECTED.code] = refused
        updated = float(ckpt.get("updated_at", now))
        run_events = int(ckpt.get("run_events", 0))
        span = updated - float(ckpt.get("run_started_at", updated))
        rate = run_events / span if span > 0 and run_events else None
        left = (total - settled) / rate if rate and total is not None else None
        status.update(
            {
                "rows_read": ckpt.get("rows_total"),
                "pairs_total": total,
                "pairs_settled": settled,
                "events_imported": imported,
                "rejected": rejected,
                "last_checkpoint": _iso(updated),
                "checkpoint_age_s": round(max(now - updated, 0.0), 1),
                "events_per_s": None if rate is None else round(rate, 1),
                "seconds_left": None if left is None or not status["active"] else round(left),
                "runs": ckpt.get("runs"),
                "finished": ckpt.get("state") == "completed",
            }
        )
    elif summary is not None:
        status.update(
            {
                "rows_read": summary.get("rows_read"),
                "pairs_total": summary.get("rows_valid"),
                "pairs_settled": 0,
                "events_imported": summary.get("events_imported", 0),
                "rejected": summary.get("rejected", {}),
                "finished": False,
            }
        )
    elif holder is not None:
        status.update({"pairs_settled": 0, "events_imported": 0, "rejected": {}})
    else:
        raise InputError(f"{out_dir} holds no checkpoint.json or summary.json: is it a run folder?")
    return status


def render_status(status: dict[str, Any]) -> str:
    """``read_status`` as a few aligned lines."""
    if status["active"]:
        state = f"running ({status.get('active_command')}, pid {status.get('pid')})"
    elif status.get("finished"):
        state = "finished"
    elif status.get("last_status"):
        state = f"not running (last: {status['last_status']})"
    else:
        state = "not running (stopped without a summary: killed? rerun the same command)"
    lines = [f"{status['out']}: {state}"]
    total = status.get("pairs_total")
    settled = status.get("pairs_settled", 0)
    if status.get("rows_read") is not None:
        lines.append(f"  rows read        {status['rows_read']:,}")
    if total is not None:
        share = f" ({100 * settled / total:.1f}%)" if total else ""
        lines.append(f"  pairs done       {settled:,} of {total:,}{share}")
    lines.append(f"  imported         {status.get('events_imported', 0):,}")
    rejected = {k: v for k, v in (status.get("rejected") or {}).items() if v}
    lines.append(f"  rejected         {sum(rejected.values()):,}")
    for code, count in rejected.items():
        lines.append(f"    {code:<22}{count:,}")
    if status.get("last_checkpoint"):
        lines.append(
            f"  last checkpoint  {status['last_checkpoint']} ({status['checkpoint_age_s']} s ago)"
        )
    if status.get("events_per_s"):
        lines.append(f"  speed            {status['events_per_s']:,.0f} events/s")
    if status.get("seconds_left") is not None:
        lines.append(f"  time left        {duration(status['seconds_left'])}")
    return "\n".join(lines)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
