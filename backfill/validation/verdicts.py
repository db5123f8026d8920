"""The verdict of every row: one reason byte each, and the row each repeat refers back to.

``References`` keeps, for each conflict or duplicate, the row its reject detail names: a small
table in memory, or, for a file of mostly repeats, ranges of rows on disk read back one at a
time, in the row order the rejects report asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from backfill.validation.reasons import REJECT_REASONS, Reason
from backfill.validation.spill import Records, Store

I64 = npt.NDArray[np.int64]
#: Rows per range of the reference table once it is on disk.
_REFERENCE_RANGE_ROWS = 1 << 20


class References:
    """The row each conflict or duplicate row refers to (0-based inside, 1-based outside).

    Usually a small table, sorted and kept in memory by ``finish``. A file where most rows
    repeat others makes it as long as the file, so past its limit it goes to disk in ranges of
    rows, and the rejects report, which asks in row order, reads one range at a time.
    """

    def __init__(
        self,
        rows_total: int,
        *,
        limit_bytes: int,
        spill_dir: Path | None,
        range_rows: int = _REFERENCE_RANGE_ROWS,
    ) -> None:
        self._range_rows = range_rows
        self._ranges = max(1, math.ceil(rows_total / range_rows))
        self._store = Store(
            (np.int64, np.int64),
            key=0,
            partitions=self._ranges,
            limit_bytes=limit_bytes,
            spill_dir=spill_dir,
            bucket_rows=range_rows,
        )
        #: (range, rows, refs) of the range last read, sorted by row; range -1: all of it.
        self._table: tuple[int, I64, I64] | None = None
        self._closed = False

    def add(self, rows: I64, refs: I64) -> None:
        """Record that each of ``rows`` refers to the same place in ``refs``."""
        self._store.add(Records((rows, refs)))

    def finish(self) -> None:
        """Done adding: a table that fit in memory is sorted once, its buffer given back."""
        if self._store.spilled:
            return
        unit = next(self._store.units(1), None)
        self._table = (-1, *_by_row(unit)) if unit is not None else None
        self._store.close()

    def reset(self) -> None:
        """Forget everything added (the decisions are being made again)."""
        self._store.close()
        self._table = None

    def close(self) -> None:
        """Give back the memory and any temp file; nothing can be asked after this."""
        self.reset()
        self._closed = True

    @property
    def disk_bytes(self) -> int:
        """Bytes on disk."""
        return self._store.disk_bytes

    def first_rows(self, rows: I64) -> I64:
        """For each 1-based row, the 1-based row it refers to; 0 where it refers to none."""
        if self._closed:
            raise ValueError("the references were closed (Verdicts.close)")
        index = np.asarray(rows, dtype=np.int64) - 1
        out = np.zeros(len(index), dtype=np.int64)
        if not self._store.spilled:
            if self._table is not None:
                _look_up(self._table[1], self._table[2], index, out)
            return out
        ranges = index // self._range_rows
        for r in np.unique(ranges).tolist():
            if not 0 <= r < self._ranges:
                continue
            if self._table is None or self._table[0] != r:
                self._table = (r, *_by_row(self._store.read(r)))
            at = np.flatnonzero(ranges == r)
            found = np.zeros(len(at), dtype=np.int64)
            _look_up(self._table[1], self._table[2], index[at], found)
            out[at] = found
        return out


def _by_row(records: Records) -> tuple[I64, I64]:
    rows, refs = records.numbers
    order = np.argsort(rows, kind="stable")
    return rows[order], refs[order]


def _look_up(keys: I64, refs: I64, index: I64, out: I64) -> None:
    if len(keys) == 0:
        return
    pos = np.searchsorted(keys, index)
    pos[pos == len(keys)] = 0
    found = keys[pos] == index
    out[found] = refs[pos[found]] + 1


_BLOCK_ROWS = 1 << 20


def blocks(reasons: npt.NDArray[np.uint8]) -> Iterator[npt.NDArray[np.uint8]]:
    """Views of ``reasons`` in blocks, for passes whose temporaries must stay small."""
    for lo in range(0, len(reasons), _BLOCK_ROWS):
        yield reasons[lo : lo + _BLOCK_ROWS]


def _tally(reasons: npt.NDArray[np.uint8]) -> I64:
    """How many rows have each reason (indexed by reason)."""
    tally = np.zeros(len(Reason), dtype=np.int64)
    for block in blocks(reasons):
        tally += np.bincount(block, minlength=len(Reason))[: len(Reason)]
    return tally


@dataclass
class Verdicts:
    """One reason byte per row (index row - 1), plus the row each repeat refers back to.

    ``close`` gives back the reference table (its temp file, if it has one): after it,
    ``first_rows`` raises; the reasons and counts stay.
    """

    reasons: npt.NDArray[np.uint8]
    max_cluster_size: int | None
    references: References = field(repr=False)
    collisions: int = 0
    #: Bytes of temporary files the judging wrote (0 when the index fit in memory).
    spilled_bytes: int = 0

    @property
    def rows_read(self) -> int:
        """How many rows the input has."""
        return len(self.reasons)

    @property
    def rows_valid(self) -> int:
        """How many rows passed every rule."""
        return int(_tally(self.reasons)[Reason.VALID])

    def counts(self) -> dict[str, int]:
        """Rejected rows per reason code, every code present (zero when none)."""
        tally = _tally(self.reasons)
        return {r.code: int(tally[r]) for r in REJECT_REASONS if r is not Reason.API_REJECTED}

    def first_rows(self, rows: I64) -> I64:
        """The row a conflict or duplicate row refers to: the pair it repeats, or a row
        with the same anon id and another identified id (0 for any other row)."""
        return self.references.first_rows(rows)

    def close(self) -> None:
        """Give back the reference table's memory and temp file."""
        self.references.close()
