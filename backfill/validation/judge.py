"""Judge every row: the per-row rules, then the whole-file rules, each row one verdict.

Per-row rules (SPEC 1-5 and ``invalid_time``) are vectorised over a chunk with pyarrow
compute. The whole-file rules (conflict, duplicate, cluster limit) need to see every row, so
the first pass keeps one reason byte per row and, for each row passing rules 1-5, a
fingerprint: its row number and two 64-bit hashes (anon id, identified id).

**Memory flat in the row count.** The fingerprints go into two stores
(``backfill.validation.spill``): one keyed by the anon hash (row, anon hash, identified hash)
for rules 6-7, one keyed by the identified hash (row, identified hash) for rule 8. A store
stays in memory while it fits its share of ``index_memory_bytes``; past that it moves to a temp
file in hash partitions, and is read back one unit at a time. Every rule is a group-by on one
hash, taken in file order, and a unit holds every row of each hash it holds, in file order: so
rules 6-7 are decided unit by unit of the anon store, then rule 8 unit by unit of the
identified store, counting the rows the first step left valid. Memory is the reason bytes (one
per row) plus about ``index_memory_bytes``; the disk holds about 40 bytes per passing row for
the time it runs.

**Exact despite hashes.** Deciding from hashes alone would be wrong when two different
strings share a hash, so the decisions take two steps. First they are made from the hashes,
with numpy sorts, and the rows whose verdict rested on two hashes being equal are marked (one
bit per row): rows of an anon-hash group of two or more, and rows of an identified-hash group
big enough to reach the cluster limit. Then a verification pass re-reads the file and compares
the real strings of the marked rows, grouped by hash in the same way (in memory, or in
partitions on disk). Each hash value keeps the first string seen with it; each other string
with the same hash gets a tie number, and (hash, tie) is exact. If any collision was found,
the decisions are made again with each (hash, tie) given a value no other row of its unit has.
Hashes that differ prove strings differ, so nothing else needs a look.

The row each conflict or duplicate refers to (``Verdicts.first_rows``, the reject detail) is
kept by ``References``, in memory or, for a file of mostly repeats, on disk by row range.

The verdicts are independent of chunk size, partitions and memory budget: every rule is a
function of the row's own values or of whole-file groups taken in file order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from backfill.arrays.groups import members, repeated_in_sorted, repeated_values, runs
from backfill.arrays.hashing import Hasher, hash_strings, hash_strings_seeds
from backfill.read import Chunk, ChunkSource
from backfill.validation.collisions import RowBits, TiesFound, verify
from backfill.validation.reasons import Reason
from backfill.validation.rules import (
    DEFAULT_MAX_CLUSTER_SIZE,
    ORIGINAL,
    Rules,
    describe,
    row_reasons,
)
from backfill.validation.spill import Records, Store
from backfill.validation.times import to_epoch_ms
from backfill.validation.verdicts import References, Trimmed, Verdicts, blocks

__all__ = [
    "Hasher",
    "Rules",
    "Verdicts",
    "describe",
    "hash_strings",
    "hash_strings_seeds",
    "judge",
    "row_reasons",
]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


class Observer(Protocol):
    """Sees what judging computes anyway, for the report's figures (``backfill.report.page``).

    Called with arrays the rules made; it must not change them.
    """

    def rows(self, reasons: U8, times: tuple[I64, U8] | None) -> None:
        """A chunk's per-row verdicts, and its times as ``to_epoch_ms`` parsed them."""

    def begin(self) -> None:
        """The whole-dataset decisions start (again, when a hash collision remakes them)."""

    def anon_groups(
        self, idx: I64, starts: I64, group_of: I64, ident: U64, conflicted: npt.NDArray[np.bool_]
    ) -> None:
        """One unit's anon groups of two or more rows (rules 6-7), rows in group order."""

    def clusters(self, rows: I64, hu: U64, ordered: U64, reasons: U8) -> None:
        """One unit of the identified index before rule 8; ``ordered`` is ``hu`` sorted."""


# --- whole-file rules ----------------------------------------------------------------------

#: Memory the fingerprint index may use at once, records and working space (roughly).
DEFAULT_INDEX_MEMORY_BYTES = 256 << 20
#: Hash partitions of an index that outgrew memory.
DEFAULT_PARTITIONS = 64


@dataclass(frozen=True)
class _Budget:
    """How ``index_memory_bytes`` is shared out.

    The two fingerprint stores (by anon hash, by identified hash) get a quarter each; a unit
    read back to be judged gets a quarter, since judging it takes about twice its size again
    (a sorted copy, positions, the repeated rows); the strings to verify and the reference
    table get an eighth each.
    """

    store_bytes: int
    unit_bytes: int
    small_bytes: int
    #: Hash partitions of a store past its share.
    partitions: int

    @classmethod
    def of(cls, total: int, partitions: int) -> _Budget:
        """The shares of ``total`` bytes (spread over at least one partition past it)."""
        if total < 0 or partitions < 1:
            raise ValueError("index_memory_bytes must be at least 0 and partitions at least 1")
        return cls(total // 4, max(total // 4, 1), total // 8, partitions)

    def store(self, stack: contextlib.ExitStack, spill_dir: Path | None, *columns: type) -> Store:
        """A fingerprint store of ``columns`` keyed by the second, closed with ``stack``."""
        made = Store(
            columns,
            key=1,
            partitions=self.partitions,
            limit_bytes=self.store_bytes,
            spill_dir=spill_dir,
        )
        return stack.enter_context(made)


def _judge_anon_unit(
    rows: I64,
    ha: U64,
    hu: U64,
    reasons: npt.NDArray[np.uint8],
    references: References,
    check: RowBits | None,
    observe: Observer | None = None,
) -> None:
    """Rules 6-7 in one unit of rows (every row of an anon hash is in the same unit)."""
    sel = members(ha, repeated_values(ha, 2))
    if len(sel) == 0:
        return
    if check is not None:
        check.set(rows[sel])
    grouped = ha[sel]
    order = np.argsort(grouped, kind="stable")
    at = sel[order]
    idx = rows[at]  # anon groups, file order within each
    starts, sizes = runs(grouped[order])
    group_of = np.repeat(np.arange(len(starts)), sizes)
    ident = hu[at]
    # A group conflicts when some identified hash differs from its first row's; the first such
    # row is what the first row's own reject detail points at.
    differs = ident != ident[starts][group_of]
    positions = np.where(differs, np.arange(len(idx)), len(idx))
    first_other = np.minimum.reduceat(positions, starts)
    conflicted = first_other < len(idx)
    if observe is not None:
        observe.anon_groups(idx, starts, group_of, ident, conflicted)
    first = idx[starts][group_of]
    is_conflict = conflicted[group_of]
    is_duplicate = ~is_conflict & (idx != first)
    other = idx[np.minimum(first_other, len(idx) - 1)][group_of]
    refs = np.where(idx == first, other, first)
    reasons[idx[is_conflict]] = Reason.CONFLICTING_ANON_ID
    reasons[idx[is_duplicate]] = Reason.DUPLICATE_PAIR
    repeat = is_conflict | is_duplicate
    references.add(idx[repeat], refs[repeat])


def _judge_cluster_unit(
    rows: I64,
    hu: U64,
    reasons: npt.NDArray[np.uint8],
    max_cluster_size: int,
    check: RowBits | None,
    observe: Observer | None = None,
) -> None:
    """Rule 8 in one unit of rows (every row of an identified hash is in the same unit).

    Groups big enough to matter are found among all passing rows, not only the survivors of
    rules 6-7: after a collision is resolved a group can only split, so the rows to verify
    must cover every group that could reach the limit.
    """
    ordered = np.sort(hu)
    if observe is not None:
        observe.clusters(rows, hu, ordered, reasons)
    sel = members(hu, repeated_in_sorted(ordered, max_cluster_size))
    del ordered
    if len(sel) == 0:
        return
    if check is not None:
        check.set(rows[sel])
    kept = sel[reasons[rows[sel]] == Reason.VALID]
    keys = hu[kept]
    order = np.argsort(keys, kind="stable")
    ranked = rows[kept[order]]
    starts, sizes = runs(keys[order])
    rank = np.arange(len(ranked)) - np.repeat(starts, sizes)
    # The identified id itself is one of the cluster's ids.
    reasons[ranked[rank >= max_cluster_size - 1]] = Reason.CLUSTER_LIMIT


@dataclass
class _Index:
    """The fingerprints of the passing rows, by anon hash and by identified hash."""

    reasons: npt.NDArray[np.uint8]
    by_anon: Store
    by_ident: Store | None
    max_cluster_size: int | None
    unit_bytes: int
    observe: Observer | None = None

    def decide(
        self, references: References, *, check: RowBits | None, ties: TiesFound | None
    ) -> None:
        """Rules 6-8 for every passing row, unit by unit; ``check`` collects rows to verify."""
        if self.observe is not None:
            self.observe.begin()
        for unit in self.by_anon.units(self.unit_bytes):
            rows, ha, hu = unit.numbers
            if ties is not None:
                ha, hu = ties.anon.apply(rows, ha), ties.ident.apply(rows, hu)
            _judge_anon_unit(rows, ha, hu, self.reasons, references, check, self.observe)
        if self.by_ident is None or self.max_cluster_size is None:
            return
        # Only now: the cluster rule counts the rows that survived rules 6-7 in every unit.
        for unit in self.by_ident.units(self.unit_bytes):
            rows, hu = unit.numbers
            if ties is not None:
                hu = ties.ident.apply(rows, hu)
            _judge_cluster_unit(
                rows, hu, self.reasons, self.max_cluster_size, check, self.observe
            )

    def undo(self) -> None:
        """Forget the decisions of rules 6-8 (they alone set these reasons)."""
        decided = (Reason.CONFLICTING_ANON_ID, Reason.DUPLICATE_PAIR, Reason.CLUSTER_LIMIT)
        whole_file = np.isin(np.arange(256), decided)
        for block in blocks(self.reasons):
            block[whole_file[block]] = Reason.VALID


#: Rows per block of a pass over every reason byte: a whole-array temporary would cost a
#: byte per row (a mask) or eight (``bincount`` counts through a copy of 64-bit integers).
def judge(
    source: ChunkSource,
    *,
    now_ms: int,
    max_cluster_size: int | None = DEFAULT_MAX_CLUSTER_SIZE,
    hasher: Hasher = hash_strings,
    on_rows: Callable[[int], None] | None = None,
    spill_dir: Path | None = None,
    index_memory_bytes: int = DEFAULT_INDEX_MEMORY_BYTES,
    partitions: int = DEFAULT_PARTITIONS,
    rules: Rules = ORIGINAL,
    observe: Observer | None = None,
) -> Verdicts:
    """Read the whole input once (twice if hashes repeat) and decide every row's verdict.

    ``rules`` says what the per-row rules accept (by ID merge system); the source gives the
    anon ids as they are to be compared (for Simplified: devices, see ``rules.devices``).

    ``max_cluster_size=None`` turns the cluster rule off. The fingerprint index stays in
    memory while it fits ``index_memory_bytes``, else it goes to temp files in ``spill_dir``
    (default: the system's temp folder) in ``partitions`` hash partitions; the files have no
    name and vanish with the process, whatever way it ends. Memory is then one byte per row
    (the reasons) plus about ``index_memory_bytes``, whatever the row count.

    ``observe`` sees what the rules compute, for the report (see ``Observer``).
    """
    if max_cluster_size is not None and max_cluster_size < 2:
        raise ValueError("max_cluster_size must be at least 2")
    budget = _Budget.of(index_memory_bytes, partitions)
    with contextlib.ExitStack() as stack:
        # Rules 6-7 group by anon hash (row, anon, identified); rule 8 by identified hash.
        by_anon = budget.store(stack, spill_dir, np.int64, np.uint64, np.uint64)
        by_ident = budget.store(stack, spill_dir, np.int64, np.uint64) if max_cluster_size else None
        trimmed = Trimmed()
        reasons = _first_pass(
            source, now_ms, hasher, on_rows, by_anon, by_ident, rules, trimmed, observe
        )
        index = _Index(reasons, by_anon, by_ident, max_cluster_size, budget.unit_bytes, observe)
        spilled = by_anon.disk_bytes + (0 if by_ident is None else by_ident.disk_bytes)
        references = References(len(reasons), limit_bytes=budget.small_bytes, spill_dir=spill_dir)
        with _closed_on_error(references):
            ties = _decide(index, references, source, hasher, budget, partitions, spill_dir)
    return Verdicts(
        reasons=reasons,
        max_cluster_size=max_cluster_size,
        references=references,
        collisions=ties.collisions,
        spilled_bytes=spilled + references.disk_bytes,
        trimmed=trimmed,
    )


@contextlib.contextmanager
def _closed_on_error(references: References) -> Iterator[None]:
    """``references`` closed (its temp files gone) if the block raises; kept open otherwise."""
    try:
        yield
    except BaseException:
        references.close()
        raise


def _decide(
    index: _Index,
    references: References,
    source: ChunkSource,
    hasher: Hasher,
    budget: _Budget,
    partitions: int,
    spill_dir: Path | None,
) -> TiesFound:
    """Rules 6-8 from the hashes, checked on the strings; made again if two strings collided."""
    check = RowBits(len(index.reasons))
    index.decide(references, check=check, ties=None)
    ties = verify(
        source,
        check,
        hasher,
        unit_bytes=budget.unit_bytes,
        small_bytes=budget.small_bytes,
        partitions=partitions,
        spill_dir=spill_dir,
    )
    del check
    if ties.collisions:
        # Made again on keys that are now exact where it matters.
        index.undo()
        references.reset()
        index.decide(references, check=None, ties=ties)
    references.finish()
    return ties


def _first_pass(
    source: ChunkSource,
    now_ms: int,
    hasher: Hasher,
    on_rows: Callable[[int], None] | None,
    by_anon: Store,
    by_ident: Store | None,
    rules: Rules,
    trimmed: Trimmed,
    observe: Observer | None = None,
) -> npt.NDArray[np.uint8]:
    """Per-row rules for every row; each passing row's fingerprint into the stores; the
    trimmed ids counted into ``trimmed``."""
    # A bytearray grows in place (realloc), where joining per-chunk arrays would hold the
    # reasons twice for a moment.
    reasons = bytearray()
    for chunk in source():
        times = None
        if observe is not None and chunk.time is not None:
            times = to_epoch_ms(chunk.time, now_ms)
        chunk_reasons = row_reasons(chunk, now_ms, rules, times=times)
        if observe is not None:
            observe.rows(chunk_reasons, times)
        ok = chunk_reasons == Reason.VALID
        if ok.any():
            keep = pa.array(ok)
            rows = np.flatnonzero(ok) + (chunk.first_row - 1)
            ha = hasher(chunk.anon.filter(keep))
            hu = hasher(chunk.identified.filter(keep))
            by_anon.add(Records((rows, ha, hu)))
            if by_ident is not None:
                by_ident.add(Records((rows, hu)))
        reasons += chunk_reasons.data
        _count_trimmed(chunk, trimmed)
        if on_rows is not None:
            on_rows(len(chunk))
    return np.frombuffer(reasons, dtype=np.uint8)


def _count_trimmed(chunk: Chunk, trimmed: Trimmed) -> None:
    """Add the chunk's trimmed ids; the first one seen is the sample."""
    anon, identified = chunk.trimmed
    if not len(anon) and not len(identified):
        return
    trimmed.count += len(anon) + len(identified)
    if trimmed.first is None:
        candidates = []
        if len(anon):
            candidates.append((int(anon[0]), 0, "anon"))
        if len(identified):
            candidates.append((int(identified[0]), 1, "identified"))
        at, _, role = min(candidates)
        trimmed.first = (chunk.file_index, chunk.file_row + at, role)
