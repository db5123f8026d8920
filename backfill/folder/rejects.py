"""``rejects.csv``: every refused row, its reason and detail, kept across resumed runs.

``rejects.csv`` is rebuilt from the input by every run (validation is deterministic), so it is
written to a temp file and renamed into place once complete. Mixpanel's own refusals
(``api_rejected``) cannot be rebuilt: the ones an earlier run recorded are carried over, and new
ones are appended and synced to disk before the checkpoint that marks their batch done, so a
crash can repeat a refusal (it is then skipped) but never lose one.

A refusal is known by its file's fingerprint and its row, not by the file's name: the same file
spelled another way (``./x/../x/m.csv``, an absolute path) on a resume is the same file, as it
is for the checkpoint. The ``file_fingerprint`` column holds it on Mixpanel's refusals (the
lines a resume carries over; validation's lines are rebuilt, so theirs stays empty), and a
carried line takes the file's name as this run spells it. Two files of one dataset with the
same fingerprint hold the same rows, so every row of the second repeats one of the first
(``duplicate_pair``) or fails as it does: it is never sent, never refused by Mixpanel.

A cell that a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return) is written with a ``'`` in front, the convention spreadsheets
themselves use for "text, not a formula" (OWASP's advice for CSV exports). The raw value is the
cell without that first ``'`` whenever the second character is one of those six.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from backfill.folder.files import (
    FORMULA_STARTS,
    disk_errors,
    formula_safe,
    formula_unsafe,
    fsync_dir,
    open_private,
)
from backfill.validation.reasons import Reason

if TYPE_CHECKING:
    import pandas as pd

    from backfill.read import Dataset

REJECTS_FILE = "rejects.csv"
REJECTS_HEADER = ("row", "anon_id", "identified_id", "reason", "detail", "file", "file_fingerprint")


class RejectRow(NamedTuple):
    """One refused row as ``rejects.csv`` holds it (less the file's fingerprint)."""

    #: The row within its file, counted from 1.
    row: int
    anon_id: str
    identified_id: str
    #: The reason code (``Reason.code``).
    reason: str
    detail: str
    #: The file's name as this run spells it.
    file: str


#: A refusal's identity: (file fingerprint, or the file's name in a line without one; row).
_Where = tuple[str, int]


class RejectsFile:
    """Writes ``rejects.csv``: validation rejects in row order, then Mixpanel's refusals."""

    def __init__(self, out_dir: Path, dataset: Dataset, *, keep_api_rejects: bool) -> None:
        self.path = out_dir / REJECTS_FILE
        self._tmp = out_dir / f".{REJECTS_FILE}.{os.getpid()}.tmp"
        self._dataset = dataset
        self._ids: dict[str, str] | None = None
        self._names: dict[str, str] = {}  # the inverse of _ids
        self._carried: list[list[str]] = self._read_api_rejects() if keep_api_rejects else []
        self.api_rows: set[_Where] = {_where(r) for r in self._carried}
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
            self._csv.writerows((*_safe(r), "") for r in rows)

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
        ids = self.file_ids()
        new = []
        for r in rows:
            fingerprint = ids.get(r.file, "")
            where = (fingerprint or r.file, r.row)
            if where not in self.api_rows:
                self.api_rows.add(where)
                new.append((*_safe(r), fingerprint))
        if new:
            assert self._file is not None
            with disk_errors(self.path):
                self._csv.writerows(new)
                self._file.flush()
        return len(new)

    def file_ids(self) -> dict[str, str]:
        """Each file's name as this run spells it -> its fingerprint (computed once, on need:
        a dry run with no refusal to carry never reads its files a third time)."""
        if self._ids is None:
            self._ids = file_ids(self._dataset)
            self._names = {v: k for k, v in self._ids.items()}
        return self._ids

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
        """Mixpanel's refusals recorded by earlier runs, each (file, row) once; a line of an
        older version (no fingerprint) is matched by its file's name."""
        seen: set[_Where] = set()
        rows = []
        for r in recorded_refusals(self.path):
            line = self._as_of_now(r[:6], r[6])
            if _where(line) not in seen:
                seen.add(_where(line))
                rows.append(line)
        return rows

    def _as_of_now(self, line: list[str], fingerprint: str) -> list[str]:
        """A carried line with its file's fingerprint and its name as this run spells it."""
        ids = self.file_ids()
        fingerprint = fingerprint or ids.get(line[5], "")
        if fingerprint in self._names:
            line[5] = formula_safe(self._names[fingerprint])
        return [*line, fingerprint]


def recorded_refusals(path: Path) -> Iterator[list[str]]:
    """Mixpanel's refusals in the ``rejects.csv`` at ``path``, as written, seven cells each (a
    line of an older version, which has no fingerprint, gets an empty one).

    A crash or a full disk can leave the last line torn: only lines with every column, before
    the file's last line break, count (the refusal of a torn line belongs to a batch never
    marked done, which the run meets again).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1]))
    next(reader, None)
    for r in reader:
        if len(r) not in (6, len(REJECTS_HEADER)) or r[3] != Reason.API_REJECTED.code:
            continue
        if r[0].isdigit():
            yield r if len(r) == len(REJECTS_HEADER) else [*r, ""]


def file_ids(dataset: Dataset) -> dict[str, str]:
    """Each file of ``dataset``, by its name as this run spells it -> its fingerprint's id."""
    entries = dataset.fingerprint()["files"]
    return {f.name: file_id(entry) for f, entry in zip(dataset.files, entries, strict=True)}


def file_id(entry: Mapping[str, object]) -> str:
    """A short, stable digest of one file's fingerprint entry (``Dataset.fingerprint``)."""
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _where(line: list[str]) -> _Where:
    """A rejects.csv line's identity: (its file's fingerprint, else its file's name; row)."""
    return (line[6] or line[5], int(line[0]))


def _safe(row: RejectRow) -> RejectRow:
    """The row with every text cell a spreadsheet would run as a formula neutralised."""
    # Tested together first: a million rejects mostly need nothing, and this stays cheap.
    if not (
        row.anon_id.startswith(FORMULA_STARTS)
        or row.identified_id.startswith(FORMULA_STARTS)
        or row.detail.startswith(FORMULA_STARTS)
        or row.file.startswith(FORMULA_STARTS)
    ):
        return row
    return row._replace(
        anon_id=formula_safe(row.anon_id),
        identified_id=formula_safe(row.identified_id),
        detail=formula_safe(row.detail),
        file=formula_safe(row.file),
    )


def read_rejects(path: Path, index_labels: Any = None) -> pd.DataFrame:
    """``rejects.csv`` as a DataFrame: every column text as written (no number or NaN
    guessing), cells unmarked (no formula ``'``), ``row`` an integer; with ``index_labels``
    (a DataFrame source's index) an ``index`` column first, each row's label."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    for column in ("anon_id", "identified_id", "detail", "file"):
        frame[column] = frame[column].map(formula_unsafe).astype(str)
    frame["row"] = frame["row"].astype("int64")
    if index_labels is not None:
        positions = frame["row"].to_numpy() - 1
        frame.insert(0, "index", index_labels.take(positions).to_numpy())
    return frame
