"""The verification's files in the run folder: ``verify.csv``, the merged set, and the
``verify`` block of ``summary.json``.

* ``verify.csv``: one line per pair the run sent: ``row,file,anon_id,identified_id,outcome,
  reason,detail``; cells a spreadsheet would run as formulas get a leading ``'`` as in
  ``rejects.csv``; written to a temp file and renamed, readable by the owner only.
* ``verify-merged.npy``: the sorted 64-bit keys of the pairs found merged, so that the next
  verify asks the export only for the rest (a merge is never undone).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from backfill.folder.files import (
    atomic_write_bytes,
    atomic_write_json,
    disk_errors,
    formula_safe,
    fsync_dir,
    open_private,
    read_json_dict,
)
from backfill.report.summary import SUMMARY_FILE
from backfill.verification.pairs import U64

VERIFY_FILE = "verify.csv"
MERGED_FILE = "verify-merged.npy"
VERIFY_HEADER = ("row", "file", "anon_id", "identified_id", "outcome", "reason", "detail")
class VerifyCsv:
    """Writes ``verify.csv`` through a temp file; ``commit`` moves it into place."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / VERIFY_FILE
        self._tmp = out_dir / f".{VERIFY_FILE}.{os.getpid()}.tmp"
        with disk_errors(self._tmp):
            self._file = open_private(self._tmp, "w")
            self._csv = csv.writer(self._file, lineterminator="\n")
            self._csv.writerow(VERIFY_HEADER)

    def write(self, rows: Iterable[tuple[int, str, str, str, str, str, str]]) -> None:
        """Add lines (row, file, anon id, identified id, outcome, reason, detail)."""
        with disk_errors(self._tmp):
            self._csv.writerows((row, *map(formula_safe, texts)) for row, *texts in rows)

    def commit(self) -> None:
        """Sync and rename into place."""
        with disk_errors(self._tmp):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Close and remove the temp file (the verification stopped)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def read_merged(out_dir: Path) -> U64:
    """The keys found merged by earlier verifications (sorted), or none."""
    try:
        keys = np.load(out_dir / MERGED_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return np.zeros(0, dtype=np.uint64)
    return np.asarray(keys, dtype=np.uint64)


def write_merged(out_dir: Path, keys: U64) -> None:
    """Replace the merged set with ``keys`` (sorted, unique), atomically, owner-only."""
    data = io.BytesIO()
    np.save(data, keys, allow_pickle=False)
    atomic_write_bytes(out_dir / MERGED_FILE, data.getvalue())


def write_summary_block(out_dir: Path, block: dict[str, Any]) -> None:
    """Put ``block`` under ``verify`` in ``summary.json``, keeping every other key."""
    path = out_dir / SUMMARY_FILE
    data = read_json_dict(path) or {}
    data["verify"] = block
    atomic_write_json(path, data)
