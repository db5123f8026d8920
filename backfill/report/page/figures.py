"""The report's figures as plain values: what the page draws, bounded whatever the input's size.

Everything here is small by construction: at most ``TOP`` clusters and conflicts, a few
example rows per reason, one count per month and per power-of-two cluster size, a few hundred
points of the send timeline. The page (``page.py``) renders these and a ``Summary``; nothing
here imports numpy or pyarrow, so a notebook can render a report without the validation stack.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backfill.folder.rejects import RejectRow

#: Largest clusters and most-claimed anon ids shown.
TOP = 20
#: Example rows shown per refusal reason.
EXAMPLES = 3
#: Points kept of the send timeline (halved when full: the spacing doubles instead).
TIMELINE_POINTS = 400


#: A rejects.csv line: row within its file, anon id, identified id, reason, detail, file.


@dataclass(frozen=True)
class Example:
    """One refused row, as a person finds it: file, row within it, the ids, the detail."""

    file: str
    row: int
    anon: str
    identified: str
    detail: str


@dataclass(frozen=True)
class Cluster:
    """An identified id and how many distinct anon ids the input gives it."""

    identified: str
    anon_ids: int
    file: str
    row: int


@dataclass(frozen=True)
class Conflict:
    """An anon id claimed by several identified ids (every one of its rows refused)."""

    anon: str
    identified_ids: int
    rows: int
    file: str
    row: int


@dataclass(frozen=True)
class Figures:
    """Everything the report shows beyond the ``Summary``'s counts."""

    max_cluster_size: int | None = None
    time_column: str | None = None
    event_time: str | None = None
    rate_per_s: float | None = None
    #: One entry per input file: name, size and its content fingerprint (sha256 or version).
    files: tuple[Mapping[str, Any], ...] = ()
    files_total: int = 0
    #: Identified ids per cluster size bin: bin 0 holds size 1, bin i sizes 2**(i-1)+1..2**i.
    cluster_bins: tuple[int, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    identified_ids: int = 0
    conflicts: tuple[Conflict, ...] = ()
    conflicted_anon_ids: int = 0
    #: (``YYYY-MM``, pairs) for every month with pairs, in order.
    months: tuple[tuple[str, int], ...] = ()
    #: Refused times by why (``unparseable``, ``before 1971``, ``in the future``, …).
    refused_times: tuple[tuple[str, int], ...] = ()
    examples: Mapping[str, tuple[Example, ...]] = field(default_factory=dict)
    trace: SendTrace | None = None
    #: A ``verify`` block (from ``backfill verify``'s summary), shown when present.
    verify: Mapping[str, Any] | None = None


class SendTrace:
    """What one invocation's send phase did over time: imported events, Mixpanel's refusals.

    ``settled`` is called for every settled batch; it keeps at most ``TIMELINE_POINTS`` points
    (when full, every other point goes and the spacing doubles), the first refusals and a
    tally of refusal messages (bounded to the most frequent ``TOP``).
    """

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []
        self.last: tuple[float, int] | None = None
        self._every_s = 0.5
        self.refusals: list[Example] = []
        self.messages: Counter[str] = Counter()

    def settled(self, elapsed_s: float, imported: int, refused: Sequence[RejectRow]) -> None:
        """Record the all-runs imported count at ``elapsed_s``, and this batch's refusals
        (as rejects.csv lines: the detail is Mixpanel's message)."""
        self.last = (elapsed_s, imported)
        if not self.points or elapsed_s - self.points[-1][0] >= self._every_s:
            self.points.append(self.last)
            if len(self.points) >= TIMELINE_POINTS:
                self.points = self.points[::2]
                self._every_s *= 2
        for r in refused:
            message = r.detail[:200]
            if len(self.refusals) < EXAMPLES:
                self.refusals.append(
                    Example(r.file, r.row, r.anon_id[:160], r.identified_id[:160], message)
                )
            self.messages[message] += 1
        if len(self.messages) > 4 * TOP:
            self.messages = Counter(dict(self.messages.most_common(TOP)))

    def timeline(self) -> list[tuple[float, int]]:
        """The kept points, the last settled batch included."""
        if self.last is not None and (not self.points or self.points[-1] != self.last):
            return [*self.points, self.last]
        return list(self.points)
