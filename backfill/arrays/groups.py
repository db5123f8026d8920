"""Equal values among 64-bit hashes, found with sorts: the group-by of the whole-file rules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def runs(sorted_values: U64) -> tuple[I64, I64]:
    """Start index and length of each run of equal values in a sorted array."""
    n = len(sorted_values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.empty(n, dtype=np.bool_)
    change[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, n))


def repeated_values(values: U64, at_least: int) -> U64:
    """The distinct values occurring at least ``at_least`` times, sorted.

    One sorted copy (sorting is several times faster than an argsort of everything); a run of
    ``k`` or more equal values is where ``v[i] == v[i + k - 1]``.
    """
    ordered = np.sort(values)
    n = len(ordered)
    if n < at_least:
        return np.zeros(0, dtype=np.uint64)
    span = at_least - 1
    hits = ordered[: n - span][ordered[span:] == ordered[: n - span]]
    del ordered
    return np.unique(hits)


PREFILTER_BITS = 20


def members(values: U64, sorted_set: U64) -> I64:
    """Ascending positions of the values that are in ``sorted_set``.

    A table of the set's top bits first rules out most values at the cost of one lookup each
    (the set is usually a few % of the values); only the rest pay for a binary search.
    """
    if len(sorted_set) == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.uint64(64 - PREFILTER_BITS)
    table = np.zeros(1 << PREFILTER_BITS, dtype=np.bool_)
    table[sorted_set >> shift] = True
    maybe: I64 = np.flatnonzero(table[values >> shift])
    candidates = values[maybe]
    pos = np.searchsorted(sorted_set, candidates)
    pos[pos == len(sorted_set)] = 0
    found: I64 = maybe[sorted_set[pos] == candidates]
    return found
