"""The report's figures, collected from what validation computes anyway: no second read.

``Collector`` is handed to ``validation.judge`` as its observer and sees:

* each chunk's per-row verdicts and parsed times (``rows``): pairs per month, refused times
  by why: a ``bincount`` per chunk;
* each unit of the anon-hash index as rules 6-7 group it (``anon_groups``): the anon ids
  claimed by several identified ids, only the conflicting rows re-sorted;
* each unit of the identified-hash index with the sorted copy rule 8 makes anyway
  (``clusters``): the size of every cluster, a power-of-two histogram and the top ``TOP``.

The ids themselves (the index holds hashes) and a few example rows per reason are picked up
during the pass that writes ``rejects.csv`` (``see``), which reads every chunk already.
Whatever the input, the figures hold a few thousand numbers and a few dozen strings.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from backfill.arrays.groups import members, runs
from backfill.errors import BackfillError
from backfill.folder.rejects import RejectRow
from backfill.read import Chunk, Dataset
from backfill.report.page.figures import (
    EXAMPLES,
    TOP,
    Cluster,
    Conflict,
    Example,
    Figures,
    SendTrace,
)
from backfill.validation.reasons import Reason
from backfill.validation.times import TimeStatus

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
#: Cluster size bins: 1, 2, 3-4, 5-8, … (64 covers any count of rows).
_BINS = 64
#: Days since 1970-01-01 counted (to 2119): valid times are never in the future.
_DAYS = 150 * 366
#: Characters of an id or detail kept for the page (ids over 255 bytes are refused anyway).
_TEXT = 160
_TIME_WORDS = {
    TimeStatus.MISSING: "empty",
    TimeStatus.UNPARSEABLE: "unparseable",
    TimeStatus.TOO_EARLY: "before 1971",
    TimeStatus.FUTURE: "in the future",
    TimeStatus.MICROSECONDS: "epoch microseconds",
    TimeStatus.NANOSECONDS: "epoch nanoseconds",
}


class _Top:
    """The best ``k`` rows of (score, second, row), by score then second (descending), row."""

    def __init__(self, k: int = TOP) -> None:
        self.k = k
        self.table = np.zeros((0, 3), dtype=np.int64)

    def offer(self, score: I64, second: I64, row: I64) -> None:
        table = np.concatenate([self.table, np.stack([score, second, row], axis=1)])
        order = np.lexsort((table[:, 2], -table[:, 1], -table[:, 0]))
        self.table = table[order[: self.k]]


class Collector:
    """Observes validation and the rejects pass; ``figures`` gives the result (module doc)."""

    def __init__(
        self, dataset: Dataset, *, max_cluster_size: int | None, time_column: str | None
    ) -> None:
        # The input's fingerprint (SHA-256 of a local file) is hashed beside validation, on
        # another core when there is one: the dry run's wall time does not pay for it.
        self._fingerprint = threading.Thread(target=_fingerprint, args=(dataset,), daemon=True)
        self._fingerprint.start()
        self.max_cluster_size = max_cluster_size
        self.time_column = time_column
        self._days = np.zeros(_DAYS, dtype=np.int64)
        self._refused_times = np.zeros(len(TimeStatus), dtype=np.int64)
        self._examples: dict[str, list[Example]] = {}
        self._texts: dict[int, tuple[str, str, str, int]] = {}
        self.begin()

    # --- validation.Observer ---------------------------------------------------------------

    def begin(self) -> None:
        """The whole-dataset decisions start (again, after a hash collision): forget them."""
        self._bins = np.zeros(_BINS, dtype=np.int64)
        self._identified = 0
        self._clusters = _Top()
        self._conflicts = _Top()
        self._conflicted = 0

    def rows(self, reasons: U8, times: tuple[I64, U8] | None) -> None:
        """A chunk's per-row verdicts and its parsed times (ms, ``TimeStatus``), if any."""
        if times is None:
            return
        ms, status = times
        ok = reasons == Reason.VALID
        if ok.any():
            # Days, not months: an integer division is a tenth of a calendar conversion.
            days = np.clip(ms[ok] // 86_400_000, 0, _DAYS - 1)
            self._days += np.bincount(days, minlength=_DAYS)
        refused = status[reasons == Reason.INVALID_TIME]
        if len(refused):
            self._refused_times += np.bincount(refused, minlength=len(TimeStatus))

    def anon_groups(
        self, idx: I64, starts: I64, group_of: I64, ident: U64, conflicted: npt.NDArray[np.bool_]
    ) -> None:
        """Rules 6-7's groups of one unit: rows ``idx`` in groups, their identified hashes."""
        groups = np.flatnonzero(conflicted)
        if len(groups) == 0:
            return
        self._conflicted += len(groups)
        mask = conflicted[group_of]
        g, h = group_of[mask], ident[mask]
        order = np.lexsort((h, g))
        g, h = g[order], h[order]
        new = np.ones(len(g), dtype=np.bool_)
        new[1:] = (g[1:] != g[:-1]) | (h[1:] != h[:-1])
        claims = np.bincount(g[new], minlength=len(conflicted))[groups]
        rows = np.bincount(g, minlength=len(conflicted))[groups]
        self._conflicts.offer(claims, rows, idx[starts[groups]])

    def clusters(self, rows: I64, hu: U64, ordered: U64, reasons: U8) -> None:
        """Rule 8's unit before it is applied: ``ordered`` is ``hu`` sorted (made anyway).

        A cluster's size is its distinct anon ids: the rows rules 6-7 left valid. The sizes are
        counted a block of ``ordered`` at a time (blocks end where an identified id does), so
        the temporaries stay a block long whatever the unit's size; each block hands on the
        clusters that could be among the largest (every tie at its cut included), and the cut
        over those is the cut over the whole unit.
        """
        dead = np.sort(hu[reasons[rows] != Reason.VALID])
        found = [self._sizes(block, dead) for block in _blocks(ordered)]
        keys = np.concatenate([k for k, _ in found]) if found else np.zeros(0, np.uint64)
        sizes = np.concatenate([s for _, s in found]) if found else np.zeros(0, np.int64)
        if not len(sizes):
            return
        cut = _size_cut(np.bincount(sizes))
        above = np.flatnonzero(sizes > cut)
        pick = np.concatenate([above, np.flatnonzero(sizes == cut)[: TOP - len(above)]])
        wanted = np.sort(keys[pick])
        at = members(hu, wanted)
        _, first = np.unique(hu[at], return_index=True)  # ascending hashes, like ``wanted``
        size_of = dict(zip(keys[pick].tolist(), sizes[pick].tolist(), strict=True))
        top = np.array([size_of[k] for k in wanted.tolist()], dtype=np.int64)
        self._clusters.offer(top, top, rows[at[first]])

    def _sizes(self, block: U64, dead: U64) -> tuple[U64, I64]:
        """Count one block's clusters into the histogram; its candidates for the largest."""
        starts, sizes = runs(block)
        keys = block[starts]
        del starts
        lo = int(np.searchsorted(dead, block[0], side="left"))
        hi = int(np.searchsorted(dead, block[-1], side="right"))
        if hi > lo:
            np.subtract.at(sizes, np.searchsorted(keys, dead[lo:hi]), 1)
        # Counts per exact size (a short array), not one entry per identified id.
        per_size = np.bincount(sizes)
        per_size[0] = 0  # every row of these identified ids was refused by rules 6-7
        if not per_size.any():
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        self._identified += int(per_size.sum())
        bins = np.zeros(len(per_size), dtype=np.int64)
        bins[1:] = np.ceil(np.log2(np.arange(1, len(per_size))))
        self._bins += np.bincount(bins, weights=per_size, minlength=_BINS)[:_BINS].astype(np.int64)
        keep = sizes >= _size_cut(per_size)
        return keys[keep], sizes[keep]

    # --- the rejects pass ------------------------------------------------------------------

    def see(
        self, chunk: Chunk, rejects: Iterable[RejectRow], dataset: Dataset
    ) -> Iterator[RejectRow]:
        """Pass ``rejects`` (rejects.csv rows) through, keeping examples; pick up the ids."""
        self._pick_texts(chunk, dataset)
        for r in rejects:
            found = self._examples.setdefault(r.reason, [])
            if len(found) < EXAMPLES:
                found.append(
                    Example(r.file, r.row, _cut(r.anon_id), _cut(r.identified_id), _cut(r.detail))
                )
            yield r

    def _pick_texts(self, chunk: Chunk, dataset: Dataset) -> None:
        wanted = np.union1d(self._clusters.table[:, 2], self._conflicts.table[:, 2])
        lo, hi = chunk.first_row - 1, chunk.end_row - 1
        inside = wanted[(wanted >= lo) & (wanted < hi)]
        name = dataset.files[chunk.file_index].name
        for row in inside.tolist():
            at = row - lo
            anon, ident = chunk.anon[at].as_py(), chunk.identified[at].as_py()
            self._texts[row] = (_cut(str(anon)), _cut(str(ident)), name, chunk.file_row + at)

    # --- the result ------------------------------------------------------------------------

    def figures(self, dataset: Dataset, *, trace: SendTrace | None = None, **more: Any) -> Figures:
        """The collected figures, with the dataset's files and whatever ``more`` sets."""
        self._fingerprint.join()
        try:
            files = dataset.fingerprint()["files"]
        except BackfillError:  # unreadable now: the report names the files without a digest
            files = [{"name": f.name, "size": f.size} for f in dataset.files]
        return Figures(
            max_cluster_size=self.max_cluster_size,
            time_column=self.time_column,
            files=tuple(files[:50]),
            files_total=len(files),
            cluster_bins=tuple(np.trim_zeros(self._bins, "b").tolist()),
            clusters=tuple(self._cluster_list()),
            identified_ids=self._identified,
            conflicts=tuple(self._conflict_list()),
            conflicted_anon_ids=self._conflicted,
            months=self._month_list(),
            refused_times=tuple(
                (_TIME_WORDS[TimeStatus(s)], int(n))
                for s, n in enumerate(self._refused_times.tolist())
                if n and s != TimeStatus.OK
            ),
            examples={k: tuple(v) for k, v in self._examples.items()},
            trace=trace,
            **more,
        )

    def _cluster_list(self) -> Iterator[Cluster]:
        for size, _, row in self._clusters.table.tolist():
            _, ident, name, file_row = self._texts.get(row, ("", "?", "", 0))
            yield Cluster(ident, size, name, file_row)

    def _conflict_list(self) -> Iterator[Conflict]:
        for claims, n, row in self._conflicts.table.tolist():
            anon, _, name, file_row = self._texts.get(row, ("?", "", "", 0))
            yield Conflict(anon, claims, n, name, file_row)

    def _month_list(self) -> tuple[tuple[str, int], ...]:
        days = np.flatnonzero(self._days)
        if len(days) == 0:
            return ()
        months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
        counts = np.bincount(months - months[0], weights=self._days[days]).astype(np.int64)
        first = int(months[0])
        return tuple(
            (f"{1970 + (first + i) // 12}-{(first + i) % 12 + 1:02d}", int(n))
            for i, n in enumerate(counts.tolist())
        )


def _fingerprint(dataset: Dataset) -> None:
    with contextlib.suppress(BackfillError):
        dataset.fingerprint()  # kept by the dataset


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT else text[: _TEXT - 1] + "…"


#: Rows of a unit's sorted identified hashes counted at once for the cluster histogram.
_BLOCK_ROWS = 1 << 20


def _blocks(ordered: U64) -> Iterator[U64]:
    """``ordered`` (sorted) in views of about ``_BLOCK_ROWS``, each ending with a value."""
    start, n = 0, len(ordered)
    while start < n:
        end = min(start + _BLOCK_ROWS, n)
        if end < n:
            end = int(np.searchsorted(ordered, ordered[end - 1], side="right"))
        yield ordered[start:end]
        start = end


def _size_cut(per_size: I64) -> int:
    """The largest size that at least ``TOP`` clusters reach (1 when fewer are that big)."""
    at_least = np.cumsum(per_size[::-1])[::-1]  # clusters of this size or more
    big = np.flatnonzero(at_least[1:] >= TOP)
    return int(big[-1]) + 1 if len(big) else 1
