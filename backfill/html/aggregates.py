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

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from backfill.groups import members, runs
from backfill.html.figures import (
    EXAMPLES,
    TOP,
    Cluster,
    Conflict,
    Example,
    Figures,
    RejectLine,
    SendTrace,
)
from backfill.read import Chunk, Dataset
from backfill.reasons import Reason
from backfill.times import TimeStatus

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
#: Cluster size bins: 1, 2, 3-4, 5-8, … (64 covers any count of rows).
_BINS = 64
#: Months since 1970-01 kept (to 2119): valid times are never in the future.
_MONTHS = 150 * 12
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

    def __init__(self, *, max_cluster_size: int | None, time_column: str | None) -> None:
        self.max_cluster_size = max_cluster_size
        self.time_column = time_column
        self._months = np.zeros(_MONTHS, dtype=np.int64)
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
            months = ms[ok].astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
            self._months += np.bincount(np.clip(months, 0, _MONTHS - 1), minlength=_MONTHS)
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

        A cluster's size is its distinct anon ids: the rows rules 6-7 left valid.
        """
        starts, sizes = runs(ordered)
        keys = ordered[starts]
        dead = hu[reasons[rows] != Reason.VALID]
        if len(dead):
            sizes = sizes - np.bincount(np.searchsorted(keys, dead), minlength=len(keys))
        alive = sizes > 0
        sizes, keys = sizes[alive], keys[alive]
        if len(sizes) == 0:
            return
        self._identified += len(sizes)
        bins = np.ceil(np.log2(sizes)).astype(np.int64)
        self._bins += np.bincount(bins, minlength=_BINS)[:_BINS]
        pick = np.argpartition(-sizes, TOP)[:TOP] if len(sizes) > TOP else np.arange(len(sizes))
        wanted = np.sort(keys[pick])
        at = members(hu, wanted)
        _, first = np.unique(hu[at], return_index=True)  # ascending hashes, like ``wanted``
        size_of = dict(zip(keys[pick].tolist(), sizes[pick].tolist(), strict=True))
        top = np.array([size_of[k] for k in wanted.tolist()], dtype=np.int64)
        self._clusters.offer(top, top, rows[at[first]])

    # --- the rejects pass ------------------------------------------------------------------

    def see(
        self, chunk: Chunk, rejects: Iterable[RejectLine], dataset: Dataset
    ) -> Iterator[RejectLine]:
        """Pass ``rejects`` (rejects.csv rows) through, keeping examples; pick up the ids."""
        self._pick_texts(chunk, dataset)
        for r in rejects:
            found = self._examples.setdefault(r[3], [])
            if len(found) < EXAMPLES:
                found.append(Example(r[5], r[0], _cut(r[1]), _cut(r[2]), _cut(r[4])))
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

    def figures(
        self, dataset: Dataset, *, trace: SendTrace | None = None, **more: Any
    ) -> Figures:
        """The collected figures, with the dataset's files and whatever ``more`` sets."""
        files = dataset.fingerprint()["files"]
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
        nonzero = np.flatnonzero(self._months)
        if len(nonzero) == 0:
            return ()
        span = range(int(nonzero[0]), int(nonzero[-1]) + 1)
        return tuple((f"{1970 + m // 12}-{m % 12 + 1:02d}", int(self._months[m])) for m in span)


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT else text[: _TEXT - 1] + "…"

