"""The run's reports: ``rejects.csv``, ``summary.json`` and the terminal summary table.

``rejects.csv`` is rebuilt from the input by every run (validation is deterministic), so it is
written to a temp file and renamed into place once complete. Mixpanel's own refusals
(``api_rejected``) cannot be rebuilt: the ones an earlier run recorded are carried over, and new
ones are appended and synced to disk before the checkpoint that marks their batch done, so a
crash can repeat a refusal (it is then skipped) but never lose one.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from backfill.files import fsync_dir
from backfill.reasons import REJECT_REASONS, Reason

REJECTS_FILE = "rejects.csv"
SUMMARY_FILE = "summary.json"
REJECTS_HEADER = ("row", "anon_id", "identified_id", "reason", "detail")

RejectRow = tuple[int, str, str, str, str]


class RejectsFile:
    """Writes ``rejects.csv``: validation rejects in row order, then Mixpanel's refusals."""

    def __init__(self, out_dir: Path, *, keep_api_rejects: bool) -> None:
        self.path = out_dir / REJECTS_FILE
        self._tmp = out_dir / f".{REJECTS_FILE}.{os.getpid()}.tmp"
        self._carried: list[list[str]] = self._read_api_rejects() if keep_api_rejects else []
        self.api_rows: set[int] = {int(r[0]) for r in self._carried}
        self._file: io.TextIOWrapper | None = self._tmp.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(REJECTS_HEADER)

    @property
    def api_rejected(self) -> int:
        """How many rows Mixpanel refused, across every run on this folder."""
        return len(self.api_rows)

    def write(self, rows: Iterable[RejectRow]) -> None:
        """Add validation rejects (call in row order)."""
        self._csv.writerows(rows)

    def commit(self) -> None:
        """Finish the validation part: carry over earlier refusals, move the file into place."""
        assert self._file is not None
        self._csv.writerows(self._carried)
        self._carried = []
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")

    def add_api_rejects(self, rows: Iterable[RejectRow]) -> int:
        """Append Mixpanel's refusals not already recorded; returns how many were new."""
        new = [r for r in rows if r[0] not in self.api_rows]
        for r in new:
            self.api_rows.add(r[0])
        if new:
            self._csv.writerows(new)
            assert self._file is not None
            self._file.flush()
        return len(new)

    def fileno(self) -> int | None:
        """The open file's descriptor (for an fsync from another thread), if open."""
        return None if self._file is None else self._file.fileno()

    def close(self) -> None:
        """Close the file; an uncommitted temp file is removed."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._tmp.exists():
            self._tmp.unlink()

    def _read_api_rejects(self) -> list[list[str]]:
        try:
            with self.path.open(encoding="utf-8", newline="") as f:
                reader = csv.reader(f)
                next(reader, None)
                seen: set[str] = set()
                rows = []
                for r in reader:
                    if len(r) >= 4 and r[3] == Reason.API_REJECTED.code and r[0] not in seen:
                        seen.add(r[0])
                        rows.append(r)
                return rows
        except FileNotFoundError:
            return []


def zero_counts() -> dict[str, int]:
    """Every reject code with a zero count, in report order."""
    return {r.code: 0 for r in REJECT_REASONS}


def render_table(summary: Mapping[str, Any], *, title: str) -> str:
    """The summary as an aligned plain-text table for the terminal."""
    read = int(summary.get("rows_read", 0))
    valid = int(summary.get("rows_valid", 0))
    lines: list[tuple[str, str, str]] = [
        ("rows read", f"{read:,}", ""),
        ("rows valid", f"{valid:,}", _share(valid, read)),
    ]
    rejected: Mapping[str, int] = summary.get("rejected", {})
    total = sum(rejected.values())
    lines.append(("rows rejected", f"{total:,}", _share(total, read)))
    for code, count in rejected.items():
        if count:
            lines.append((f"  {code}", f"{count:,}", _share(count, read)))
    sent = "requests" in summary
    for label, key, fmt in _EXTRA_ROWS:
        if key == "estimated_send_s" and "rate_per_s" in summary:
            label = f"time at {float(summary['rate_per_s']):,.0f} events/s"
        if key == "events_imported" and not sent:
            continue
        if key in summary and summary[key] is not None:
            lines.append((label, fmt(summary[key]), ""))
    width = max(len(a) for a, _, _ in lines)
    num = max(len(b) for _, b, _ in lines)
    body = [f"  {a:<{width}}  {b:>{num}}  {c}".rstrip() for a, b, c in lines]
    return "\n".join([title, *body])


def _share(part: Any, whole: int) -> str:
    return f"{100.0 * float(part) / whole:5.1f}%" if whole else ""


def duration(seconds: float) -> str:
    """A duration for people: "under 1 s", "42 s", "17 min", "3.5 h"."""
    s = float(seconds)
    if s < 1:
        return "under 1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _seconds(value: Any) -> str:
    return duration(float(value))


def _int(value: Any) -> str:
    return f"{int(value):,}"


def _rate(value: Any) -> str:
    return f"{float(value):,.0f} events/s"


def _retries(value: Any) -> str:
    causes: Mapping[str, int] = value
    total = sum(causes.values())
    detail = ", ".join(f"{k} {v}" for k, v in causes.items() if v)
    return f"{total:,}" + (f" ({detail})" if detail else "")


_EXTRA_ROWS: Sequence[tuple[str, str, Any]] = (
    ("batches to send", "batches_planned", _int),
    ("estimated send time", "estimated_send_s", _seconds),
    ("events imported", "events_imported", _int),
    ("requests", "requests", _int),
    ("retries", "retries", _retries),
    ("elapsed", "elapsed_s", _seconds),
    ("throughput", "events_per_s", _rate),
)
