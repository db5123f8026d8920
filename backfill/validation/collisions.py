"""Hash collisions: rows whose verdict rested on two equal hashes are checked on their strings.

Deciding from hashes alone would be wrong when two different strings share a hash. The first
decisions mark the rows whose verdict rested on equal hashes (``RowBits``, one bit a row);
``verify`` re-reads just those rows' strings, grouped by hash (in memory, or in partitions on
disk), and ``find_ties`` numbers each string that differs from the first one with its hash.
``Ties`` then gives each (hash, tie) a value of its own, and the decisions are made again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.arrays.groups import members, repeated_values, runs
from backfill.arrays.hashing import Hasher
from backfill.read import ChunkSource
from backfill.validation.rules import bool_mask
from backfill.validation.spill import Records, Store

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


class RowBits:
    """One bit per row: the rows whose verdict rested on equal hashes."""

    def __init__(self, rows: int) -> None:
        self._bits = np.zeros((rows + 7) // 8, dtype=np.uint8)

    def set(self, rows: I64) -> None:
        """Mark ``rows`` (0-based)."""
        bits = np.left_shift(np.uint8(1), (rows & 7).astype(np.uint8))
        np.bitwise_or.at(self._bits, rows >> 3, bits)

    def any(self) -> bool:
        """Whether any row is marked."""
        return bool(self._bits.any())

    def within(self, lo: int, hi: int) -> I64:
        """The marked rows in ``[lo, hi)``, counted from ``lo``."""
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        bits = np.unpackbits(self._bits[lo >> 3 : (hi + 7) >> 3], bitorder="little")
        return np.flatnonzero(bits[lo & 7 : (lo & 7) + hi - lo])


@dataclass
class Ties:
    """Rows whose string shares its hash with a different string seen earlier.

    ``ties[k]`` numbers the distinct strings of one hash value in order of first appearance
    (the first, 0, is not listed): the pair (hash, tie) is exact where the hash alone was not.
    Kept in memory: with 64-bit hashes, 10^8 distinct strings hold a colliding pair about once
    in 3,000 inputs, so this is empty in practice (the tests' colliding hashers fill it).
    """

    rows: I64
    ties: I64
    collisions: int

    @classmethod
    def none(cls) -> Ties:
        """No collision."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0)

    def apply(self, rows: I64, keys: U64) -> U64:
        """``keys`` of ``rows`` (one unit), each tied row's (key, tie) given its own new value.

        A new value is unused by every key of the unit, and groups never span units, so it
        stands for its string alone.
        """
        if len(self.rows) == 0:
            return keys
        pos = np.searchsorted(self.rows, rows)
        pos[pos == len(self.rows)] = 0
        hit = self.rows[pos] == rows
        if not hit.any():
            return keys
        pairs = np.stack([keys[hit], self.ties[pos[hit]].astype(np.uint64)], axis=1)
        distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
        out = keys.copy()
        out[hit] = fresh_values(len(distinct), keys)[inverse.ravel()]
        return out


def fresh_values(n: int, taken: U64) -> U64:
    """``n`` distinct 64-bit values, none of them in ``taken`` (deterministic)."""
    rng = np.random.default_rng(0x5EED)
    values = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    while True:
        bad = np.isin(values, taken)
        _, first = np.unique(values, return_index=True)
        repeated = np.ones(n, dtype=np.bool_)
        repeated[first] = False
        bad |= repeated
        if not bad.any():
            return values
        values[bad] = rng.integers(
            0, np.iinfo(np.uint64).max, size=int(bad.sum()), dtype=np.uint64, endpoint=True
        )


@dataclass
class TiesFound:
    """What the verification found, for anon ids and for identified ids."""

    anon: Ties
    ident: Ties

    @property
    def collisions(self) -> int:
        return self.anon.collisions + self.ident.collisions


def verify(
    source: ChunkSource,
    check: RowBits,
    hasher: Hasher,
    *,
    unit_bytes: int,
    small_bytes: int,
    partitions: int,
    spill_dir: Path | None,
) -> TiesFound:
    """Compare the real strings of the rows in ``check``, grouped by hash, in a second read.

    Both ids of every marked row are compared: an anon group's rows are judged on their
    identified hashes too. A marked row that was marked for its identified id alone has an
    anon hash no other passing row has, so comparing its anon string finds nothing new.
    """
    if not check.any():
        return TiesFound(Ties.none(), Ties.none())
    # (row, hash) with the string, grouped by hash: one store per id column.
    columns = functools.partial(
        Store,
        (np.int64, np.uint64),
        key=1,
        text=True,
        partitions=partitions,
        limit_bytes=small_bytes,
        spill_dir=spill_dir,
    )
    with columns() as anons, columns() as idents:
        for chunk in source():
            local = check.within(chunk.first_row - 1, chunk.end_row - 1)
            if len(local) == 0:
                continue
            take = pa.array(local)
            rows = local + (chunk.first_row - 1)
            anon, ident = chunk.anon.take(take), chunk.identified.take(take)
            anons.add(Records((rows, hasher(anon)), anon))
            idents.add(Records((rows, hasher(ident)), ident))
        return TiesFound(find_ties(anons.units(unit_bytes)), find_ties(idents.units(unit_bytes)))


def find_ties(units: Iterator[Records]) -> Ties:
    """Rows whose string differs from the first string with the same hash, numbered."""
    found_rows: list[int] = []
    found_ties: list[int] = []
    collisions = 0
    for unit in units:
        rows, hashes = unit.numbers
        text = unit.text
        assert text is not None
        sel = members(hashes, repeated_values(hashes, 2))
        if len(sel) == 0:
            continue
        order = sel[np.argsort(hashes[sel], kind="stable")]
        starts, sizes = runs(hashes[order])
        firsts = order[np.repeat(starts, sizes)]
        same = bool_mask(pc.equal(text.take(pa.array(order)), text.take(pa.array(firsts))))
        if same.all():
            continue
        # A real collision (rare): number the distinct strings of each such hash in order.
        group_of = np.repeat(np.arange(len(starts)), sizes)
        for g in np.unique(group_of[~same]).tolist():
            group = order[starts[g] : starts[g] + sizes[g]]
            distinct: dict[str, int] = {}
            values = text.take(pa.array(group)).to_pylist()
            for row, value in zip(rows[group].tolist(), values, strict=True):
                tie = distinct.setdefault(value, len(distinct))
                if tie:
                    found_rows.append(row)
                    found_ties.append(tie)
            collisions += len(distinct) - 1
    rows_found = np.array(found_rows, dtype=np.int64)
    order = np.argsort(rows_found)
    return Ties(rows_found[order], np.array(found_ties, dtype=np.int64)[order], collisions)
