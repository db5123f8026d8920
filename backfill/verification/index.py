"""The run's sent pairs, the merged set and the export's lines, joined by key within a budget.

A verification joins three streams on a pair's 64-bit key: the pairs the run sent (10^8 of
them is a real migration), the keys an earlier verify found merged, and the export's lines
(which also hold the project's own events, and repeats). None of them is held whole. Each
record is (key, tag, value) in one ``spill.Store``:

* a sent pair: ``tag`` is its ordinal among the sent pairs (0, 1, ... in row order), ``value``
  the UTC day of its event time;
* a key an earlier verify found merged: ``tag`` is ``BEFORE``;
* an exported event shaped like ours: ``tag`` is ``EXPORTED``, ``value`` 0 when it carries no
  failure property, else the index of Mixpanel's reason in ``Matcher.reasons``.

The store keeps records in memory up to its limit and in hash partitions of a temp file past
it, and reads them back in units that never split a key, each in the order the records were
added. So a unit holds everything known of its keys, the export's lines in the order read,
and the join is a group-by per unit. The outcomes come out in hash order and are wanted in row
order, for ``verify.csv``: ``Outcomes`` keeps them by ordinal, in ranges on disk past its own
limit, read back one range at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from backfill.arrays.groups import members
from backfill.validation.spill import Records, SpillAdvice, Store
from backfill.verification.files import MergedSet
from backfill.verification.match import MERGED, NOT_MERGED
from backfill.verification.pairs import I64, U64

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
I32 = npt.NDArray[np.int32]
#: ``tag`` of a key an earlier verify found merged, and of an exported event.
BEFORE = -1
EXPORTED = -2
#: verify's temp files go in the run folder and nowhere else: the fix is to move the folder.
_ADVICE = SpillAdvice(
    "verification",
    "move the run folder to a disk with room and pass it as --out (out= for backfill.verify)",
    "make the run folder writable, or copy it to a folder you can write and pass that as "
    "--out (out= for backfill.verify)",
)


@dataclass(frozen=True)
class Budget:
    """The memory one verification's stores may hold, roughly; past it they use the disk.

    ``index_bytes`` and ``unit_bytes``: the key index (20 bytes a record) and one unit of it
    read back (joining it takes about three times that again). A store still under its limit
    comes back as one unit, so the index's limit is a unit's size too (at 48 MiB, a million
    pairs all in memory peaked 47 MiB above ten million on disk: ``verify_index.py``).
    ``outcome_bytes``: the outcomes by ordinal (11 bytes a pair), in ranges of ``range_rows``
    pairs once on disk. 256 partitions keep a partition of 10^8 pairs near a unit's size.
    """

    index_bytes: int = 16 << 20
    unit_bytes: int = 16 << 20
    outcome_bytes: int = 16 << 20
    partitions: int = 256
    range_rows: int = 1 << 20


DEFAULT_BUDGET = Budget()


class KeyIndex:
    """The join of sent pairs, earlier merges and exported lines; see the module docstring."""

    def __init__(self, budget: Budget, spill_dir: Path) -> None:
        self._budget = budget
        self._store = Store(
            (np.uint64, np.int64, np.int32),
            key=0,
            partitions=budget.partitions,
            limit_bytes=budget.index_bytes,
            spill_dir=spill_dir,
            advice=_ADVICE,
        )
        #: Pairs added by ``add_sent``; their ordinals are 0 to ``sent - 1``.
        self.sent = 0
        self._days: set[int] = set()
        self._before = 0

    def add_sent(self, keys: U64, days: I64) -> None:
        """The next sent pairs, in row order, with the UTC days of their event times."""
        n = len(keys)
        ordinals = np.arange(self.sent, self.sent + n, dtype=np.int64)
        self._store.add(Records((keys, ordinals, days.astype(np.int32))))
        self._days.update(np.unique(days).tolist())
        self.sent += n

    def add_before(self, keys: U64) -> None:
        """Keys an earlier verify found merged."""
        self._store.add(Records((keys, _tags(len(keys), BEFORE), np.zeros(len(keys), np.int32))))
        self._before += len(keys)

    def add_exported(self, keys: U64, codes: I32) -> None:
        """Keys of exported events, in the order read: code 0 merged, else a reason index."""
        self._store.add(Records((keys, _tags(len(keys), EXPORTED), codes)))

    def still_to_find(self) -> tuple[int, I64]:
        """How many sent pairs an earlier verify found merged, and the UTC days of the rest."""
        if not self._before:
            return 0, np.array(sorted(self._days), dtype=np.int64)
        known, days = 0, set()
        for unit in self._store.units(self._budget.unit_bytes):
            keys, tags, values = unit.numbers
            sent = tags >= 0
            hit = _isin(keys[sent], np.unique(keys[tags == BEFORE]))
            known += int(hit.sum())
            days.update(np.unique(values[sent][~hit]).tolist())
        return known, np.array(sorted(days), dtype=np.int64)

    def resolve(self, outcomes: Outcomes, merged: MergedSet) -> None:
        """Every sent pair's outcome into ``outcomes``; every key known merged into ``merged``."""
        for unit in self._store.units(self._budget.unit_bytes):
            keys, tags, values = unit.numbers
            sent = tags >= 0
            before = np.unique(keys[tags == BEFORE])
            exported = tags == EXPORTED
            outcome, reason = judge_keys(keys[sent], before, keys[exported], values[exported])
            outcomes.add(tags[sent], outcome, reason)
            merged.add(np.union1d(before, keys[sent][outcome == MERGED]))

    @property
    def disk_bytes(self) -> int:
        """Bytes its temp file holds."""
        return self._store.disk_bytes

    def close(self) -> None:
        """Give back the memory and the temp file."""
        self._store.close()

    def __enter__(self) -> KeyIndex:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def judge_keys(keys: U64, before: U64, exported: U64, codes: I32) -> tuple[U8, U16]:
    """The outcome and reason index of each of ``keys``, from the sorted keys found merged
    before and the exported lines' keys and codes in the order read.

    An export is not deduplicated and a broken query is read again, so a key may come many
    times: any stored copy that says it did not merge is believed over one that does not, and
    of several such copies the last read gives the reason.
    """
    outcome = np.zeros(len(keys), dtype=np.uint8)
    reason = np.zeros(len(keys), dtype=np.uint16)
    outcome[_isin(keys, np.unique(exported[codes == 0]))] = MERGED
    failed = codes > 0
    # Reversed, np.unique's first index of a key is the last copy read.
    failing, first = np.unique(exported[failed][::-1], return_index=True)
    pos, hit = _find(failing, keys)
    outcome[hit] = NOT_MERGED
    reason[hit] = codes[failed][::-1][first][pos[hit]]
    # A merge is never undone: what an earlier verify found merged stays merged.
    known = _isin(keys, before)
    outcome[known] = MERGED
    reason[known] = 0
    return outcome, reason


class Outcomes:
    """Each sent pair's outcome and reason index: added in any order, read by ordinal."""

    def __init__(self, total: int, budget: Budget, spill_dir: Path) -> None:
        self._range = max(budget.range_rows, 1)
        self._total = total
        self._store = Store(
            (np.int64, np.uint8, np.uint16),
            key=0,
            partitions=max(1, math.ceil(total / self._range)),
            limit_bytes=budget.outcome_bytes,
            spill_dir=spill_dir,
            bucket_rows=self._range,
            advice=_ADVICE,
        )
        #: (range, outcomes, reasons) of the range last read; range -1: all of them.
        self._table: tuple[int, U8, U16] | None = None

    def add(self, ordinals: I64, outcome: U8, reason: U16) -> None:
        """The outcomes of some pairs, by ordinal."""
        self._store.add(Records((ordinals, outcome, reason)))

    def of(self, first: int, n: int) -> tuple[U8, U16]:
        """The outcomes and reason indexes of ordinals ``first`` to ``first + n - 1``."""
        if not self._store.spilled:
            if self._table is None:
                unit = next(self._store.units(1), None)
                self._table = (-1, *_dense(unit, 0, self._total))
                self._store.close()
            _, outcome, reason = self._table
            return outcome[first : first + n], reason[first : first + n]
        outcome = np.zeros(n, dtype=np.uint8)
        reason = np.zeros(n, dtype=np.uint16)
        at = first
        while at < first + n:
            r = at // self._range
            if self._table is None or self._table[0] != r:
                self._table = (r, *_dense(self._store.read(r), r * self._range, self._range))
            end = min(first + n, (r + 1) * self._range)
            lo, hi = at - r * self._range, end - r * self._range
            outcome[at - first : end - first] = self._table[1][lo:hi]
            reason[at - first : end - first] = self._table[2][lo:hi]
            at = end
        return outcome, reason

    @property
    def disk_bytes(self) -> int:
        """Bytes its temp file holds."""
        return self._store.disk_bytes

    def close(self) -> None:
        """Give back the memory and the temp file."""
        self._store.close()
        self._table = None

    def __enter__(self) -> Outcomes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _dense(records: Records | None, base: int, size: int) -> tuple[U8, U16]:
    """The outcomes of ordinals ``base`` to ``base + size - 1`` as arrays (0: not found)."""
    outcome = np.zeros(size, dtype=np.uint8)
    reason = np.zeros(size, dtype=np.uint16)
    if records is not None:
        ordinals, o, r = records.numbers
        outcome[ordinals - base] = o
        reason[ordinals - base] = r
    return outcome, reason


def _tags(n: int, tag: int) -> I64:
    return np.full(n, tag, dtype=np.int64)


def _find(sorted_keys: U64, keys: U64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """For each of ``keys``, its place in ``sorted_keys`` and whether it is there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.intp), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, np.asarray(sorted_keys[pos] == keys)


def _isin(keys: U64, sorted_keys: U64) -> npt.NDArray[np.bool_]:
    mask = np.zeros(len(keys), dtype=bool)
    mask[members(keys, sorted_keys)] = True
    return mask
