"""The verification's files in the run folder: ``verify.csv``, the merged set, and the
``verify`` block of ``summary.json``.

* ``verify.csv``: one line per pair the run sent: ``row,file,anon_id,identified_id,outcome,
  reason,detail``; cells a spreadsheet would run as formulas get a leading ``'`` as in
  ``rejects.csv``; written to a temp file and renamed, readable by the owner only.
* ``verify-merged.npy``: the 64-bit keys of the pairs found merged (a one-dimensional
  uint64 array, each key once, in no particular order), so that the next verify asks the
  export only for the rest (a merge is never undone). Read and written a block at a time.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from backfill.folder.files import (
    atomic_write_blocks,
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
_KEY = np.dtype("<u8")
#: Keys read or copied at a time (8 MiB).
_MERGED_BLOCK = 1 << 20


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


def read_merged(out_dir: Path, block: int = _MERGED_BLOCK) -> Iterator[U64]:
    """The keys found merged by earlier verifications, ``block`` at a time; none when the
    file is missing, is not a one-dimensional array of uint64, or is cut short (the set
    only saves asking the export again: without it, everything is asked again)."""
    try:
        f = (out_dir / MERGED_FILE).open("rb")
    except OSError:
        return
    with f:
        try:
            version = npformat.read_magic(f)
            read_header = npformat.read_array_header_1_0
            if version != (1, 0):
                read_header = npformat.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            start = f.tell()
            size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError, SyntaxError):
            return
        if dtype != _KEY or len(shape) != 1 or fortran_order or size != start + 8 * shape[0]:
            return
        left = int(shape[0])
        while left:
            keys = np.fromfile(f, dtype=_KEY, count=min(left, block))
            if len(keys) == 0:
                return
            left -= len(keys)
            yield keys.astype(np.uint64, copy=False)


class MergedSet:
    """A new merged set, added in blocks of distinct keys (no key in two blocks), kept in an
    unnamed temp file in the run folder until ``commit`` writes it as ``verify-merged.npy``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / MERGED_FILE
        self.count = 0
        with disk_errors(self.path):
            # Closed by close(); unnamed, so even a kill leaves nothing behind.
            self._file = tempfile.TemporaryFile(dir=out_dir, prefix="backfill-")  # noqa: SIM115

    def add(self, keys: U64) -> None:
        """Add keys none of the earlier blocks held."""
        with disk_errors(self.path):
            self._file.write(keys.astype(_KEY, copy=False).tobytes())
        self.count += len(keys)

    def commit(self) -> None:
        """Replace the merged set with the keys added, atomically, owner-only."""
        header = io.BytesIO()
        npformat.write_array_header_1_0(
            header, {"descr": _KEY.str, "fortran_order": False, "shape": (self.count,)}
        )
        with disk_errors(self.path):
            self._file.flush()
            self._file.seek(0)
        blocks = iter(lambda: self._file.read(_MERGED_BLOCK * 8), b"")
        atomic_write_blocks(self.path, itertools.chain([header.getvalue()], blocks))

    def close(self) -> None:
        """Give back the temp file (its disk space returns at once)."""
        self._file.close()

    def __enter__(self) -> MergedSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_summary_block(out_dir: Path, block: dict[str, Any]) -> None:
    """Put ``block`` under ``verify`` in ``summary.json``, keeping every other key."""
    path = out_dir / SUMMARY_FILE
    data = read_json_dict(path) or {}
    data["verify"] = block
    atomic_write_json(path, data)
