"""Row intervals: the checkpoint's set of done rows, kept as sorted, merged inclusive spans.

Spans arrive in any order (batches finish out of order) and merge with their neighbours, so a
run of millions of rows done in order is one span however many batches it took.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class RowIntervals:
    """A set of rows as sorted, disjoint, non-adjacent inclusive intervals."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def add(self, first: int, last: int) -> None:
        """Add rows ``first`` to ``last`` (inclusive), merging with neighbours."""
        if last < first:
            return
        i = bisect.bisect_left(self.ends, first - 1)
        j = bisect.bisect_right(self.starts, last + 1)
        if i < j:
            first = min(first, self.starts[i])
            last = max(last, self.ends[j - 1])
        self.starts[i:j] = [first]
        self.ends[i:j] = [last]

    def copy(self) -> RowIntervals:
        """An independent copy."""
        return RowIntervals(list(self.starts), list(self.ends))

    def contains(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of ``rows`` are in the set (vectorised)."""
        if not self.starts:
            return np.zeros(len(rows), dtype=np.bool_)
        starts = np.asarray(self.starts, dtype=np.int64)
        ends = np.asarray(self.ends, dtype=np.int64)
        k = np.searchsorted(starts, rows, side="right") - 1
        inside = k >= 0
        return inside & (rows <= ends[np.maximum(k, 0)])

    def covers(self, first: int, last: int) -> bool:
        """Whether every row from ``first`` to ``last`` is in the set."""
        k = bisect.bisect_right(self.starts, first) - 1
        return k >= 0 and self.ends[k] >= last

    def count(self) -> int:
        """How many rows the set holds."""
        return sum(e - s + 1 for s, e in zip(self.starts, self.ends, strict=True))

    def to_json(self) -> list[list[int]]:
        """``[[first, last], ...]``."""
        return [[s, e] for s, e in zip(self.starts, self.ends, strict=True)]

    @classmethod
    def from_json(cls, data: Any) -> RowIntervals:
        """Rebuild from ``to_json`` output, merging defensively; ValueError if malformed."""
        if not isinstance(data, list):
            raise ValueError(f"done is {type(data).__name__}, not a list of [first, last]")
        spans: list[tuple[int, int]] = []
        for pair in data:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"done holds {pair!r}, not [first, last]")
            first, last = (count_of(v, "a done row") for v in pair)
            if not 1 <= first <= last:
                raise ValueError(f"done holds [{first}, {last}]")
            spans.append((first, last))
        # In order, each add lands at the end of the lists: a file written out of order (by
        # hand, or built to hurt) costs n log n, not the n² of inserting at the front.
        out = cls()
        for first, last in sorted(spans):
            out.add(first, last)
        return out

    @property
    def last(self) -> int:
        """The highest row in the set (0 when empty)."""
        return self.ends[-1] if self.ends else 0


#: No input has more rows than this; a count or row number past it is a damaged file.
MAX_COUNT = 1 << 48


def count_of(value: Any, name: str) -> int:
    """A non-negative whole number, as JSON wrote it (not a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} is {value!r}, not a count")
    return value
