"""``backfill status``: a run's progress, read from the files in its folder, while it runs or after.

Which folders: ``--out DIR``; else the runs of the ``INPUT`` given (every folder the
``registry`` recorded for it, and its ``runs/<input name>/`` here); else every run the
registry knows, from any directory, with the run folders under ``runs/`` here.

Reads only (it imports neither pyarrow nor aiohttp): the registry, the lock (is a command
active?), ``checkpoint.json`` (live progress, written every second or so by a run) through
``Checkpoint.read``, and ``summary.json`` (the last command's outcome) through
``Summary.from_json``. To ask whether a command is active it holds
a shared lock for an instant; a starting run retries past that.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backfill.errors import InputError
from backfill.folder import registry
from backfill.folder.checkpoint import CHECKPOINT_FILE, Checkpoint, SendState
from backfill.folder.files import read_json_dict
from backfill.folder.location import RUNS_ROOT, folder_for
from backfill.folder.lock import LOCK_FILE, active_holder
from backfill.report.counts import Counts
from backfill.report.summary import SUMMARY_FILE, Summary, duration
from backfill.validation.reasons import Reason


@dataclass(frozen=True)
class FolderStatus:
    """What ``status`` shows of one run folder (``status --json`` prints ``to_json()``)."""

    out: str
    active: bool
    #: The input the registry recorded for this folder (None when it recorded none).
    input: str | None = None
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


def find_runs(
    out: Path | None, inputs: Sequence[str], env: Mapping[str, str]
) -> list[tuple[Path, str | None]]:
    """The run folders to show, each with its recorded input: ``out`` itself; else the runs of
    ``inputs``; else every recorded run and every run folder under ``runs/`` here."""
    if out is not None:
        if not out.is_dir():
            raise InputError(f"no run folder at {out} (check --out)")
        return [(out, _recorded_inputs(env).get(out.resolve()))]
    if inputs:
        key = registry.key_for(inputs)
        known = [(e.folder, e.input) for e in registry.entries(env) if e.input_key == key]
        found = _unique([*known, (folder_for(inputs), None)])
        if not found:
            raise InputError(
                f"no run of {' '.join(inputs)} is recorded, and {folder_for(inputs)}/ holds "
                "none: pass --out DIR (the folder its run wrote to)"
            )
        return found
    local = sorted(RUNS_ROOT.iterdir()) if RUNS_ROOT.is_dir() else []
    recorded = [(e.folder, e.input) for e in registry.entries(env)]
    found = _unique([*recorded, *((d, None) for d in local)])
    if not found:
        raise InputError(
            f"no runs recorded, and none under {RUNS_ROOT}/ here: pass an INPUT or --out DIR "
            "(the folder a run wrote to)"
        )
    return found


def _unique(candidates: list[tuple[Path, str | None]]) -> list[tuple[Path, str | None]]:
    """Folders that hold a run, each once (by absolute path), the first description kept."""
    seen: dict[Path, tuple[Path, str | None]] = {}
    for folder, described in candidates:
        absolute = folder.resolve()
        if absolute not in seen and (registry.holds_run(folder) or (folder / LOCK_FILE).exists()):
            seen[absolute] = (absolute, described)
    return list(seen.values())


def _recorded_inputs(env: Mapping[str, str]) -> dict[Path, str]:
    return {e.folder: e.input for e in registry.entries(env)}


def read_status(
    out_dir: Path, *, now: float | None = None, recorded_input: str | None = None
) -> FolderStatus:
    """Everything ``status`` shows of ``out_dir``."""
    now = time.time() if now is None else now
    ckpt = Checkpoint.read(out_dir)
    summary = _summary(out_dir)
    holder = active_holder(out_dir)
    base = FolderStatus(
        out=str(out_dir),
        input=recorded_input or (None if summary is None else summary.input),
        active=holder is not None,
        active_command=(holder or {}).get("command"),
        pid=(holder or {}).get("pid"),
        last_status=None if summary is None else summary.status.value,
    )
    if ckpt is not None:
        return _progress(base, ckpt, now)
    if summary is not None:
        return replace(
            base,
            rows_read=summary.rows_read,
            pairs_total=summary.rows_valid,
            events_imported=summary.events_imported,
            rejected=dict(summary.rejected),
        )
    if holder is not None:
        return base
    _refuse_damaged(out_dir)
    raise InputError(f"{out_dir} holds no checkpoint.json or summary.json: is it a run folder?")


def _refuse_damaged(out_dir: Path) -> None:
    """Name the file that is there but cannot be read, and its fix (exit 2, one line)."""
    fixes = {
        CHECKPOINT_FILE: "rerun with --restart to start over, or choose another --out",
        SUMMARY_FILE: "run the same command again to write it anew, or choose another --out",
    }
    for name, fix in fixes.items():
        if (out_dir / name).exists():
            raise InputError(
                f"{out_dir / name} is unreadable (damaged, or not written by backfill): {fix}"
            )


def _summary(out_dir: Path) -> Summary | None:
    data = read_json_dict(out_dir / SUMMARY_FILE)
    try:
        summary = None if data is None else Summary.from_json(data, out_dir)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None  # a damaged summary is a report's to skip, not to fail on
    # from_json keeps this field as written (typed int only by annotation); the view formats it.
    imported: object = None if summary is None else summary.events_imported
    return summary if isinstance(imported, int) else None


def _progress(base: FolderStatus, ckpt: Checkpoint, now: float) -> FolderStatus:
    """``base`` with what the checkpoint says sending did (the same ``Counts`` a run shows)."""
    span = ckpt.updated_at - ckpt.run_started_at
    counts = Counts(
        pairs_total=ckpt.events_total,
        imported=ckpt.events_imported,
        refused=ckpt.events_refused,
        rate_per_s=ckpt.run_events / span if span > 0 and ckpt.run_events else None,
    )
    rejected = dict(ckpt.rejected)
    rejected[Reason.API_REJECTED.code] = counts.refused
    rate, total = counts.rate_per_s, counts.pairs_total
    left = (total - counts.settled) / rate if rate and total is not None else None
    return replace(
        base,
        rows_read=ckpt.rows_total,
        pairs_total=total,
        pairs_settled=counts.settled,
        events_imported=counts.imported,
        rejected=rejected,
        last_checkpoint=_iso(ckpt.updated_at),
        checkpoint_age_s=round(max(now - ckpt.updated_at, 0.0), 1),
        events_per_s=None if rate is None else round(rate, 1),
        seconds_left=None if left is None or not base.active else round(left),
        runs=ckpt.runs,
        finished=ckpt.state is SendState.COMPLETED,
    )


def state_text(status: FolderStatus) -> str:
    """What the run is doing, in a few words."""
    if status.active:
        return f"running ({status.active_command}, pid {status.pid})"
    if status.finished:
        return "finished"
    if status.last_status:
        return f"not running (last: {status.last_status})"
    return "not running (stopped without a summary: killed? rerun the same command)"


def render_list(statuses: Sequence[FolderStatus]) -> str:
    """Several runs, one line each: folder, state, imported of total, input."""
    rows = [("FOLDER", "STATE", "IMPORTED", "INPUT")]
    for s in statuses:
        total = f" of {s.pairs_total:,}" if s.pairs_total is not None else ""
        state = (
            state_text(s) if s.active or s.finished else s.last_status or "stopped (killed?)"
        )
        rows.append((s.out, state, f"{s.events_imported:,}{total}", s.input or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    )


def render_status(status: FolderStatus) -> str:
    """A run's state as a few aligned lines."""
    state = state_text(status)
    lines = [f"{status.out}: {state}"]
    if status.input:
        lines.append(f"  input            {status.input}")
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
