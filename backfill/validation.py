"""Judge every row: the per-row rules, then the whole-file rules, each row one verdict.

Per-row rules (SPEC 1-5 and ``invalid_time``) are vectorised over a chunk with pyarrow
compute. The whole-file rules (conflict, duplicate, cluster limit) need to see every row, so
the first pass keeps only a fingerprint per row: one reason byte and two 64-bit hashes (anon
id, identified id), about 17 bytes a row whatever the strings' length.

Deciding from hashes alone would be wrong when two different strings share a hash, so the
decisions take two steps. First they are made from the hashes, with numpy sorts. Then a
verification pass re-reads the file and compares the real strings of just the rows whose
verdict rested on two hashes being equal: rows in an anon-hash group of two or more, and rows
of an identified-hash group big enough to reach the cluster limit. Each hash value keeps the
first string seen with it; a different string with the same hash gets a fresh value never used
by any other row. If any collision was found, the decisions are made again on the refined
values, which are now exact. Hashes that differ prove strings differ, so nothing else needs a
look. Memory is the fingerprint plus one string per repeated value, not the file's strings.

The verdicts are independent of chunk size: every rule is a function of the row's own values
or of whole-file groups taken in file order.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.read import ChunkSource
from backfill.reasons import REJECT_REASONS, Reason
from backfill.rules import DEFAULT_MAX_CLUSTER_SIZE, ORIGINAL, Rules, describe, row_reasons

__all__ = ["Rules", "Verdicts", "describe", "hash_strings", "judge", "row_reasons"]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Hasher = Callable[[pa.Array], U64]

# --- hashing -------------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: Masks keeping the first k bytes of a little-endian word, for k = 0..8.
_TAIL_MASKS = np.array(
    [0, *((1 << (8 * k)) - 1 for k in range(1, 8)), (1 << 64) - 1], dtype=np.uint64
)


def _fmix(h: U64) -> U64:
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def hash_strings(values: pa.Array, seed: int = 0) -> U64:
    """A 64-bit hash of each string's UTF-8 bytes (nulls hash like empty strings)."""
    return hash_strings_seeds(values, (seed,))[0]


def hash_strings_seeds(values: pa.Array, seeds: tuple[int, ...]) -> list[U64]:
    """One 64-bit hash per string and seed, sharing one pass over the bytes.

    Vectorised over the Arrow buffers: word ``j`` of every string is gathered at once through
    an unaligned 8-byte window view of the data, masked to the string's length, and mixed in,
    with the length folded in first so that trailing NUL bytes cannot alias. Little-endian on
    every machine, so the same string always gets the same value: ``$insert_id`` relies on it.
    """
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    n = len(values)
    if n == 0:
        return [np.zeros(0, dtype=np.uint64) for _ in seeds]
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype="<i4")[values.offset : values.offset + n + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(end - start + 8, dtype=np.uint8)
    if end > start:
        padded[: end - start] = np.frombuffer(buffers[2], dtype=np.uint8)[start:end]
    windows = np.ndarray((end - start + 1,), dtype="<u8", buffer=padded, strides=(1,))
    at = (offsets[:-1] - start).astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    longest = int(lengths.max())
    folded = lengths.astype(np.uint64) * _M2
    hashes = [np.full(n, np.uint64(seed) ^ _GOLDEN, dtype=np.uint64) ^ folded for seed in seeds]
    with np.errstate(over="ignore"):
        for j in range(0, max(longest, 1), 8):
            # Only strings that still have bytes at j take a round (every string takes the
            # first): a string's hash must not depend on the strings hashed beside it.
            active = (lengths > j) | (j == 0)
            tail = _TAIL_MASKS[np.clip(lengths - j, 0, 8)]
            word = windows[np.minimum(at + j, end - start)] & tail
            hashes = [np.where(active, _fmix(h ^ word) + _GOLDEN, h) for h in hashes]
        return [_fmix(h) for h in hashes]


# --- whole-file rules ----------------------------------------------------------------------


class _Column:
    """A 64-bit hash per row, kept as the per-chunk arrays the first pass made.

    Joining them into one array would hold the index twice for a moment (the allocator keeps
    the freed parts), and the index is most of the memory a big file needs.
    """

    def __init__(self) -> None:
        self.parts: list[U64] = []
        self._starts: list[int] = [0]

    def append(self, part: U64) -> None:
        self.parts.append(part)
        self._starts.append(self._starts[-1] + len(part))

    def __len__(self) -> int:
        return self._starts[-1]

    def _spans(self) -> Iterator[tuple[int, int, U64]]:
        for k, part in enumerate(self.parts):
            yield self._starts[k], self._starts[k + 1], part

    def masked(self, mask: npt.NDArray[np.bool_]) -> U64:
        """The values where ``mask`` holds, in row order (one new array, filled part by part)."""
        out = np.empty(int(np.count_nonzero(mask)), dtype=np.uint64)
        at = 0
        for lo, hi, part in self._spans():
            piece = part[mask[lo:hi]]
            out[at : at + len(piece)] = piece
            at += len(piece)
        return out

    def take(self, rows: I64) -> U64:
        """The values at ``rows`` (any order)."""
        out = np.empty(len(rows), dtype=np.uint64)
        if len(rows) == 0:
            return out
        part_of = np.searchsorted(np.asarray(self._starts), rows, side="right") - 1
        order = np.argsort(part_of, kind="stable")
        bounds = np.searchsorted(part_of[order], np.arange(len(self.parts) + 1))
        for k in range(len(self.parts)):
            sel = order[bounds[k] : bounds[k + 1]]
            if len(sel):
                out[sel] = self.parts[k][rows[sel] - self._starts[k]]
        return out

    def members(self, mask: npt.NDArray[np.bool_], sorted_set: U64) -> I64:
        """Ascending rows where ``mask`` holds and the value is in ``sorted_set``."""
        if len(sorted_set) == 0:
            return np.zeros(0, dtype=np.int64)
        found: list[I64] = []
        for lo, hi, part in self._spans():
            pos = np.searchsorted(sorted_set, part)
            pos[pos == len(sorted_set)] = 0
            hit = (sorted_set[pos] == part) & mask[lo:hi]
            found.append(np.flatnonzero(hit) + lo)
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def __getitem__(self, row: int) -> int:
        k = bisect.bisect_right(self._starts, row) - 1
        return int(self.parts[k][row - self._starts[k]])

    def __setitem__(self, row: int, value: int) -> None:
        k = bisect.bisect_right(self._starts, row) - 1
        self.parts[k][row - self._starts[k]] = value

    def contains(self, value: int) -> bool:
        """Whether any row holds ``value``."""
        probe = np.uint64(value)
        return any(bool(np.any(part == probe)) for part in self.parts)


@dataclass
class _Decisions:
    conflict: I64
    conflict_first: I64
    duplicate: I64
    duplicate_first: I64
    cluster: I64
    #: Rows whose verdict rested on equal anon hashes / equal identified hashes.
    check_anon: I64
    check_ident: I64


def _decide(
    passing: npt.NDArray[np.bool_], ha: _Column, hu: _Column, max_cluster_size: int
) -> _Decisions:
    """Rules 6-8 over all passing rows, judged by hash equality (indices are row - 1)."""
    repeated = _repeated_values(ha, passing, 2)
    grouped = ha.members(passing, repeated)
    grouped_hashes = ha.take(grouped)
    order = np.argsort(grouped_hashes, kind="stable")
    idx = grouped[order]  # anon groups, file order within each
    starts, sizes = _runs(grouped_hashes[order])
    group_of = np.repeat(np.arange(len(starts)), sizes)
    ident = hu.take(idx)
    # A group conflicts when some identified hash differs from its first row's; the first such
    # row is what the first row's own reject detail points at.
    differs = ident != ident[starts][group_of]
    positions = np.where(differs, np.arange(len(idx)), len(idx))
    first_other = (
        np.minimum.reduceat(positions, starts) if len(starts) else np.zeros(0, dtype=np.int64)
    )
    conflicted = first_other < len(idx)
    first = idx[starts][group_of]
    is_conflict = conflicted[group_of]
    is_duplicate = ~is_conflict & (idx != first)
    other = idx[np.minimum(first_other, len(idx) - 1)][group_of] if len(idx) else first
    refs = np.where(idx == first, other, first)

    survivors = passing.copy()
    survivors[idx[is_conflict | is_duplicate]] = False

    limit = max_cluster_size - 1  # the identified id itself is one of the cluster's ids
    heavy = _repeated_values(hu, passing, max_cluster_size)
    big = hu.members(passing, heavy)
    kept = big[survivors[big]]
    kept_hashes = hu.take(kept)
    order = np.argsort(kept_hashes, kind="stable")
    ranked = kept[order]
    starts, sizes = _runs(kept_hashes[order])
    rank = np.arange(len(ranked)) - np.repeat(starts, sizes)

    dup_order = np.argsort(idx[is_duplicate])
    conflict_order = np.argsort(idx[is_conflict])
    return _Decisions(
        conflict=idx[is_conflict][conflict_order],
        conflict_first=refs[is_conflict][conflict_order],
        duplicate=idx[is_duplicate][dup_order],
        duplicate_first=first[is_duplicate][dup_order],
        cluster=np.sort(ranked[rank >= limit]),
        check_anon=grouped,
        check_ident=big,
    )


def _runs(sorted_values: U64) -> tuple[I64, I64]:
    """Start index and length of each run of equal values in a sorted array."""
    n = len(sorted_values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.empty(n, dtype=np.bool_)
    change[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, n))


def _repeated_values(values: _Column, mask: npt.NDArray[np.bool_], at_least: int) -> U64:
    """The distinct values among ``values[mask]`` occurring at least ``at_least`` times, sorted.

    Memory matters here (this runs over every row): one masked copy sorted in place, and a
    boolean per row; a run of ``k`` or more equal values is where ``v[i] == v[i + k - 1]``.
    """
    ordered = values.masked(mask)
    ordered.sort()
    n = len(ordered)
    if n < at_least:
        return np.zeros(0, dtype=np.uint64)
    span = at_least - 1
    hits = ordered[: n - span][ordered[span:] == ordered[: n - span]]
    del ordered
    return np.unique(hits)


# --- verification of hash equality ---------------------------------------------------------


@dataclass
class _Refiner:
    """Gives each distinct string sharing a hash value its own value (the first keeps it)."""

    hashes: _Column
    rng: random.Random = field(default_factory=lambda: random.Random(0x5EED))
    first_seen: dict[int, str] = field(default_factory=dict)
    fresh: dict[tuple[int, str], int] = field(default_factory=dict)
    collisions: int = 0

    def see(self, i: int, text: str) -> None:
        key = self.hashes[i]
        seen = self.first_seen.setdefault(key, text)
        if seen == text:
            return
        value = self.fresh.get((key, text))
        if value is None:
            value = self._unused_value()
            self.fresh[(key, text)] = value
            self.collisions += 1
        self.hashes[i] = value

    def _unused_value(self) -> int:
        taken = set(self.fresh.values())
        while True:
            value = self.rng.getrandbits(64)
            if value not in taken and not self.hashes.contains(value):
                return value


def _verify(source: ChunkSource, decisions: _Decisions, ha: _Column, hu: _Column) -> int:
    """Compare the real strings behind equal hashes; refine ``ha``/``hu`` in place.

    Returns how many distinct colliding strings were found (0 almost always).
    """
    rows = np.union1d(decisions.check_anon, decisions.check_ident)
    if len(rows) == 0:
        return 0
    anon_too = np.isin(rows, decisions.check_anon)
    anons, idents = _Refiner(ha), _Refiner(hu)
    for chunk in source():
        lo, hi = np.searchsorted(rows, [chunk.first_row - 1, chunk.end_row - 1])
        if lo == hi:
            continue
        local = pa.array(rows[lo:hi] - (chunk.first_row - 1))
        a_values = chunk.anon.take(local).to_pylist()
        u_values = chunk.identified.take(local).to_pylist()
        for k, i in enumerate(rows[lo:hi].tolist()):
            if anon_too[lo + k]:
                anons.see(i, a_values[k])
            idents.see(i, u_values[k])
    return anons.collisions + idents.collisions


# --- the verdict ---------------------------------------------------------------------------


@dataclass
class Verdicts:
    """One reason byte per row (index row - 1), plus the row each repeat refers back to."""

    reasons: npt.NDArray[np.uint8]
    max_cluster_size: int
    ref_rows: I64
    ref_first: I64
    collisions: int = 0

    @property
    def rows_read(self) -> int:
        """How many rows the input has."""
        return len(self.reasons)

    @property
    def rows_valid(self) -> int:
        """How many rows passed every rule."""
        return int(np.count_nonzero(self.reasons == Reason.VALID))

    def counts(self) -> dict[str, int]:
        """Rejected rows per reason code, every code present (zero when none)."""
        tally = np.bincount(self.reasons, minlength=len(Reason))
        return {r.code: int(tally[r]) for r in REJECT_REASONS if r is not Reason.API_REJECTED}

    def first_rows(self, rows: I64) -> I64:
        """The row a conflict or duplicate row refers to: the pair it repeats, or a row
        with the same anon id and another identified id."""
        if len(self.ref_rows) == 0:
            return np.zeros(len(rows), dtype=np.int64)
        pos = np.searchsorted(self.ref_rows, rows - 1)
        pos[pos >= len(self.ref_rows)] = 0
        return self.ref_first[pos] + 1


def judge(
    source: ChunkSource,
    *,
    now_ms: int,
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE,
    hasher: Hasher = hash_strings,
    on_rows: Callable[[int], None] | None = None,
    rules: Rules = ORIGINAL,
) -> Verdicts:
    """Read the whole input once (twice if hashes repeat) and decide every row's verdict.

    ``rules`` says what the per-row rules accept (by ID merge system); the source gives the
    anon ids as they are to be compared (for Simplified: devices, see ``rules.devices``).
    """
    if max_cluster_size < 2:
        raise ValueError("max_cluster_size must be at least 2")
    reason_parts: list[npt.NDArray[np.uint8]] = []
    anon_hashes, ident_hashes = _Column(), _Column()
    for chunk in source():
        reasons = row_reasons(chunk, now_ms, rules)
        ok = reasons == Reason.VALID
        ha = np.zeros(len(chunk), dtype=np.uint64)
        hu = np.zeros(len(chunk), dtype=np.uint64)
        if ok.any():
            keep = pa.array(ok)
            ha[ok] = hasher(chunk.anon.filter(keep))
            hu[ok] = hasher(chunk.identified.filter(keep))
        reason_parts.append(reasons)
        anon_hashes.append(ha)
        ident_hashes.append(hu)
        if on_rows is not None:
            on_rows(len(chunk))
    reasons_all = np.concatenate(reason_parts) if reason_parts else np.zeros(0, np.uint8)
    del reason_parts
    passing = reasons_all == Reason.VALID

    decisions = _decide(passing, anon_hashes, ident_hashes, max_cluster_size)
    collisions = _verify(source, decisions, anon_hashes, ident_hashes)
    if collisions:
        decisions = _decide(passing, anon_hashes, ident_hashes, max_cluster_size)
    del anon_hashes, ident_hashes

    reasons_all[decisions.conflict] = Reason.CONFLICTING_ANON_ID
    reasons_all[decisions.duplicate] = Reason.DUPLICATE_PAIR
    reasons_all[decisions.cluster] = Reason.CLUSTER_LIMIT
    ref_rows = np.concatenate([decisions.conflict, decisions.duplicate])
    ref_first = np.concatenate([decisions.conflict_first, decisions.duplicate_first])
    order = np.argsort(ref_rows)
    return Verdicts(
        reasons=reasons_all,
        max_cluster_size=max_cluster_size,
        ref_rows=ref_rows[order],
        ref_first=ref_first[order],
        collisions=collisions,
    )
