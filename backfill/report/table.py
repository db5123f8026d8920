"""The run's reports: ``rejects.csv``, ``summary.json`` and the terminal summary table.

``rejects.csv`` is rebuilt from the input by every run (validation is deterministic), so it is
written to a temp file and renamed into place once complete. Mixpanel's own refusals
(``api_rejected``) cannot be rebuilt: the ones an earlier run recorded are carried over, and new
ones are appended and synced to disk before the checkpoint that marks their batch done, so a
crash can repeat a refusal (it is then skipped) but never lose one.

A cell that a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return) is written with a ``'`` in front, the convention spreadsheets
themselves use for "text, not a formula" (OWASP's advice for CSV exports). The raw value is the
cell without that first ``'`` whenever the second character is one of those six.
"""

from __future__ import annotations

import csv
import errno
import io
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from backfill.errors import InputChanged
from backfill.folder.files import disk_errors, fsync_dir, open_private
from backfill.read import Chunk, ChunkSource, Dataset
from backfill.report.summary import Summary
from backfill.validation.judge import Verdicts
from backfill.validation.reasons import REJECT_REASONS, Reason
from backfill.validation.rules import ORIGINAL, Rules, describe
from backfill.validation.times import TimeStatus, to_epoch_ms
from backfill.validation.times import describe as describe_time

REJECTS_FILE = "rejects.csv"
SUMMARY_FILE = "summary.json"
REJECTS_HEADER = ("row", "anon_id", "identified_id", "reason", "detail", "file")

#: (row within its file, anon id, identified id, reason code, detail, file name)
RejectRow = tuple[int, str, str, str, str, str]


@dataclass
class Validated:
    """The input judged and its rejects written: what a run sends from.

    ``source`` streams ``dataset`` (for a run, checked against what was judged).
    """

    source: ChunkSource
    dataset: Dataset
    verdicts: Verdicts
    now_ms: int
    rejects: RejectsFile
    #: The events the valid pairs make, by kind (``$identify``, ``$merge``, a pairing event).
    events_by_kind: Mapping[str, int] = field(default_factory=dict)


class RejectsFile:
    """Writes ``rejects.csv``: validation rejects in row order, then Mixpanel's refusals."""

    def __init__(self, out_dir: Path, *, keep_api_rejects: bool) -> None:
        self.path = out_dir / REJECTS_FILE
        self._tmp = out_dir / f".{REJECTS_FILE}.{os.getpid()}.tmp"
        self._carried: list[list[str]] = self._read_api_rejects() if keep_api_rejects else []
        self.api_rows: set[tuple[str, int]] = {_where(r) for r in self._carried}
        with disk_errors(self._tmp):
            self._file: io.TextIOWrapper | None = open_private(self._tmp, "w")
            self._csv = csv.writer(self._file, lineterminator="\n")
            self._csv.writerow(REJECTS_HEADER)

    @property
    def api_rejected(self) -> int:
        """How many rows Mixpanel refused, across every run on this folder."""
        return len(self.api_rows)

    def write(self, rows: Iterable[RejectRow]) -> None:
        """Add validation rejects (call in row order)."""
        with disk_errors(self._tmp):
            self._csv.writerows(_safe(r) for r in rows)

    def commit(self) -> None:
        """Finish the validation part: carry over earlier refusals, move the file into place."""
        assert self._file is not None
        with disk_errors(self._tmp):
            self._csv.writerows(self._carried)
            self._carried = []
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        self._file = open_private(self.path, "a")
        self._csv = csv.writer(self._file, lineterminator="\n")

    def add_api_rejects(self, rows: Iterable[RejectRow]) -> int:
        """Append Mixpanel's refusals not already recorded; returns how many were new."""
        new = [r for r in rows if (r[5], r[0]) not in self.api_rows]
        for r in new:
            self.api_rows.add((r[5], r[0]))
        if new:
            assert self._file is not None
            with disk_errors(self.path):
                self._csv.writerows(_safe(r) for r in new)
                self._file.flush()
        return len(new)

    def fileno(self) -> int | None:
        """The open file's descriptor (for an fsync from another thread), if open."""
        return None if self._file is None else self._file.fileno()

    def close(self) -> None:
        """Close the file; an uncommitted temp file is removed.

        On a full disk the lines still buffered are dropped, not raised over the error that
        stopped the run: they can only be refusals whose batch was never marked done (a
        batch is marked after its refusals are flushed), which the rerun meets again.
        """
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        if self._tmp.exists():
            self._tmp.unlink()

    def _read_api_rejects(self) -> list[list[str]]:
        """Mixpanel's refusals recorded by earlier runs, each (file, row) once.

        A crash or a full disk can leave the last line torn: only lines with every column,
        before the file's last line break, count (the refusal of a torn line belongs to a
        batch never marked done, which the run meets again).
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1]))
        next(reader, None)
        seen: set[tuple[str, int]] = set()
        rows = []
        for r in reader:
            if len(r) != len(REJECTS_HEADER) or r[3] != Reason.API_REJECTED.code:
                continue
            if r[0].isdigit() and _where(r) not in seen:
                seen.add(_where(r))
                rows.append(r)
        return rows


def _where(line: list[str]) -> tuple[str, int]:
    """A rejects.csv line's (file, row)."""
    return (line[5], int(line[0]))


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _safe(row: RejectRow) -> RejectRow:
    """The row with every text cell a spreadsheet would run as a formula neutralised."""
    number, anon, ident, code, detail, name = row
    # Tested together first: a million rejects mostly need nothing, and this stays cheap.
    if not (
        anon.startswith(_FORMULA_STARTS)
        or ident.startswith(_FORMULA_STARTS)
        or detail.startswith(_FORMULA_STARTS)
        or name.startswith(_FORMULA_STARTS)
    ):
        return row
    return (number, _cell(anon), _cell(ident), code, _cell(detail), _cell(name))


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def zero_counts() -> dict[str, int]:
    """Every reject code with a zero count, in report order."""
    return {r.code: 0 for r in REJECT_REASONS}


def render_table(summary: Summary, *, title: str) -> str:
    """The summary as an aligned plain-text table for the terminal."""
    read, valid = summary.rows_read, summary.rows_valid
    lines: list[tuple[str, str, str]] = [
        ("rows read", f"{read:,}", ""),
        ("rows valid", f"{valid:,}", _share(valid, read)),
    ]
    total = summary.rows_rejected
    lines.append(("rows rejected", f"{total:,}", _share(total, read)))
    for code, count in summary.rejected.items():
        if count:
            lines.append((f"  {code}", f"{count:,}", _share(count, read)))
    for kind, count in summary.events_by_kind.items():
        lines.append((f"{kind} events", f"{count:,}", ""))
    if summary.sent:
        lines += _send_rows(summary)
    else:
        lines += _plan_rows(summary)
    lines.append(("elapsed", duration(summary.elapsed_s), ""))
    width = max(len(a) for a, _, _ in lines)
    num = max(len(b) for _, b, _ in lines)
    body = [f"  {a:<{width}}  {b:>{num}}  {c}".rstrip() for a, b, c in lines]
    return "\n".join([title, *body])


def _plan_rows(summary: Summary) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    if summary.events_imported:
        rows.append(("already imported", f"{summary.events_imported:,}", "(earlier runs)"))
    if summary.batches_planned is not None:
        rows.append(("batches to send", f"{summary.batches_planned:,}", ""))
    if summary.estimated_send_s is not None and summary.rate_per_s:
        label = f"time at {summary.rate_per_s:,.0f} events/s"
        rows.append((label, duration(summary.estimated_send_s), ""))
    return rows


def _send_rows(summary: Summary) -> list[tuple[str, str, str]]:
    this = summary.this_run
    assert this is not None
    rows = [("events imported", f"{summary.events_imported:,}", "(all runs)")]
    if summary.already_complete:
        rows.append(("this run", "nothing left", "(already complete)"))
        return rows
    rows += [
        ("  this run", f"{this.events_imported:,}", ""),
        ("requests", f"{this.requests:,}", ""),
        ("retries", _retries(this.retries), ""),
    ]
    if this.send_s >= 1 and this.events_imported:
        held = this.rate_held_per_s or this.events_per_s
        whole = f"({this.events_per_s:,.0f}/s over the whole send phase)"
        rows.append(("rate held", f"{held:,.0f} events/s", whole if this.rate_held_per_s else ""))
    if this.rate_limited:
        lowered = (
            f"(rate lowered {this.rate_lowered:,}x, to {this.lowest_rate_per_s:,.0f} events/s "
            "at the lowest)"
            if this.rate_lowered and this.lowest_rate_per_s is not None
            else ""
        )
        rows.append(("429 answers", f"{this.rate_limited:,}", lowered))
    return rows


def _share(part: float, whole: int) -> str:
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


def _retries(causes: Mapping[str, int]) -> str:
    total = sum(causes.values())
    detail = ", ".join(f"{k} {v}" for k, v in causes.items() if v)
    return f"{total:,}" + (f" ({detail})" if detail else "")


# --- rejects.csv rows ---------------------------------------------------------------------


def reject_rows(
    chunk: Chunk, verdicts: Verdicts, now: int, dataset: Dataset, rules: Rules = ORIGINAL
) -> Iterator[RejectRow]:
    """The rejects.csv rows of one chunk, with a human detail each; rows count within the file."""
    reasons = chunk_reasons(chunk, verdicts)
    bad = np.flatnonzero(reasons)
    if len(bad) == 0:
        return
    take = pa.array(bad)
    anons = [a or "" for a in chunk.anon.take(take).to_pylist()]
    idents = [i or "" for i in chunk.identified.take(take).to_pylist()]
    values = reasons[bad]
    details = [""] * len(bad)
    # One reason at a time: most details are the same sentence, or one with a row number.
    for value in np.unique(values).tolist():
        at = np.flatnonzero(values == value)
        reason = Reason(value)
        if reason in (Reason.DUPLICATE_PAIR, Reason.CONFLICTING_ANON_ID):
            refs = row_references(dataset, verdicts.first_rows(bad[at] + chunk.first_row))
            texts = [describe(reason, None, None, first_row=ref) for ref in refs]
        elif reason is Reason.INVALID_TIME:
            texts = _time_details(chunk, at, bad, now)
        elif reason in (Reason.INVALID_ANON_ID, Reason.INVALID_IDENTIFIED_ID):
            texts = [describe(reason, anons[k], idents[k], rules=rules) for k in at.tolist()]
        else:
            same = describe(reason, None, None, max_cluster_size=verdicts.max_cluster_size)
            texts = [same] * len(at)
        for k, text in zip(at.tolist(), texts, strict=True):
            details[k] = text
    name = dataset.files[chunk.file_index].name
    rows = (bad + chunk.file_row).tolist()
    codes = [_CODES[v] for v in values.tolist()]
    yield from zip(rows, anons, idents, codes, details, itertools.repeat(name))


_CODES = {int(r): r.code for r in Reason}


def _time_details(
    chunk: Chunk, at: npt.NDArray[np.intp], bad: npt.NDArray[np.intp], now: int
) -> list[str]:
    """Why each of these rows' times is refused (``at`` indexes ``bad``)."""
    assert chunk.time is not None
    raw = chunk.time.take(pa.array(bad[at]))
    _, status = to_epoch_ms(raw, now)
    return [
        describe_time(TimeStatus(s), "" if t is None else str(t))
        for s, t in zip(status.tolist(), raw.to_pylist(), strict=True)
    ]


def row_references(dataset: Dataset, rows: npt.NDArray[np.int64]) -> list[str]:
    """Dataset rows as a person finds them: "147", or "147 of part-0002.parquet" across files."""
    if len(dataset.files) == 1:
        return [str(r) for r in rows.tolist()]
    files, within = dataset.locate(np.maximum(rows, 1))
    names = [f.name for f in dataset.files]
    return [f"{r} of {names[i]}" for i, r in zip(files.tolist(), within.tolist(), strict=True)]


def chunk_reasons(chunk: Chunk, verdicts: Verdicts) -> npt.NDArray[np.uint8]:
    """The verdicts of a chunk's rows, re-read after judging; a grown file is refused."""
    if chunk.end_row - 1 > verdicts.rows_read:
        raise InputChanged(
            "the input file grew while backfill was reading it: let the export finish, "
            "then run the same command again"
        )
    return verdicts.reasons[chunk.first_row - 1 : chunk.end_row - 1]
