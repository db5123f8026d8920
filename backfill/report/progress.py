"""Progress: one line redrawn in place on a terminal, a plain log line every few seconds otherwise.

The display keeps no counts of its own: it asks a *view* (a function returning a ``Snapshot``)
each time it draws. While validating the view reads the validator's row count; while sending
it reads the checkpoint (all runs) and the sender's stats (this run), so what is shown can
never drift from what is recorded. The pipeline only calls ``tick()``; this module decides
when to draw, so the hot path pays a clock read per chunk or batch and nothing more.

On a terminal the line never grows past the terminal's width: the least useful parts are
dropped first (retries, refusals, the bar), so an 80-column window shows the essentials and
never wraps.

**Time left** comes from the rate actually held lately: pairs settled over the last
``HELD_WINDOW_S`` seconds of drawings, 429 pauses and retries included, not the average since
the start (which stays high after the 429s begin). While a retry pause is under way its rest
is added, since the rest of the run cannot settle before that batch does.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from backfill.report.counts import Counts
from backfill.report.summary import duration


@dataclass(frozen=True)
class Snapshot:
    """What the line shows at one instant: the phase, and the rows read or what sending did."""

    phase: str
    rows_read: int = 0
    #: What sending has done (None while reading or validating).
    sending: Counts | None = None
    #: Pairs settled per second lately (``HeldRate``), filled in as the line is drawn.
    held_per_s: float | None = None


View = Callable[[], Snapshot]

#: Seconds of recent drawings the held rate is taken over: long enough to span the pauses
#: 429s bring, short enough to follow a rate that changed.
HELD_WINDOW_S = 20.0


class HeldRate:
    """Pairs settled per second over the last ``HELD_WINDOW_S`` seconds, pauses included."""

    def __init__(self, window_s: float = HELD_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, int]] = deque()

    def see(self, now: float, pairs_done: int) -> float | None:
        """Record a drawing's count; the rate since the window's start (None: under 1 s seen)."""
        seen = self._seen
        if seen and pairs_done < seen[-1][1]:
            seen.clear()  # another phase's count
        seen.append((now, pairs_done))
        # Keep one drawing at or before the window's start, as the rate's first point.
        while len(seen) > 2 and seen[1][0] <= now - self.window_s:
            seen.popleft()
        start, done = seen[0]
        return (pairs_done - done) / (now - start) if now - start >= 1.0 else None


class Progress:
    """Draws what a view returns: in place on a TTY, or a log line every few seconds."""

    def __init__(
        self,
        view: View | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        interactive: bool | None = None,
        interval_s: float | None = None,
        width: int | None = None,
    ) -> None:
        self.view: View = view or (lambda: Snapshot("starting"))
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty() if interactive is None else interactive
        # --progress-interval-s, else a terminal redraws often and a log line comes now and then.
        if interval_s is None:
            interval_s = 0.2 if self.interactive else 5.0
        self.interval_s = interval_s
        self._width = width
        self._last = time.monotonic()
        self._drawn = False
        self._held = HeldRate()

    def follow(self, view: View) -> None:
        """Show ``view`` from now on (a new phase); a live line shows it at once."""
        self.view = view
        if self.enabled and self.interactive:
            self._last = time.monotonic()
            self._draw()

    def show(self, view: View) -> None:
        """Show ``view`` from now on, drawn at once even in a log (the stopping line)."""
        self.view = view
        if self.enabled:
            self._last = time.monotonic()
            self._draw()

    def tick(self) -> None:
        """Redraw if the interval has passed since the last drawing."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the live line, so what follows starts on a fresh one."""
        if self.enabled and self._drawn:
            self._draw()
            if self.interactive:
                self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def width(self) -> int:
        """Columns available for the line: the terminal's, less one so it never wraps."""
        if self._width is not None:
            return self._width
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = shutil.get_terminal_size().columns
        return max(columns - 1, 20)

    def _draw(self) -> None:
        snap = self.view()
        counts = snap.sending
        if counts is not None and counts.pairs_total is not None and snap.held_per_s is None:
            snap = replace(snap, held_per_s=self._held.see(time.monotonic(), counts.settled))
        if self.interactive:
            self.stream.write("\r\x1b[2K" + render(snap, self.width(), bar=True))
        else:
            self.stream.write("backfill: " + render(snap, 200, bar=False) + "\n")
        self._drawn = True
        self.stream.flush()


def render(snap: Snapshot, width: int, *, bar: bool) -> str:
    """The snapshot as one line of at most ``width`` characters.

    Parts carry a rank; while the line is too wide, the part of the highest rank goes.
    """
    parts = _parts(snap, bar)
    while len(_join(parts)) > width and len(parts) > 1:
        worst = max(range(len(parts)), key=lambda i: (parts[i][0], i))
        del parts[worst]
    return _join(parts)[:width]


def _join(parts: list[tuple[int, str]]) -> str:
    return "  ".join(text for _, text in parts)


def _parts(snap: Snapshot, bar: bool) -> list[tuple[int, str]]:
    c = snap.sending
    if c is not None and c.in_flight is not None:
        # Stopping: what it waits for and how to cut it short; rates and time left no longer
        # mean anything.
        requests = "request" if c.in_flight == 1 else "requests"
        return [
            (0, f"stopping: waiting for {c.in_flight:,} {requests} in flight"),
            (1, "(Ctrl-C again to stop now)"),
            (2, f"{c.settled:,}/{c.pairs_total or 0:,} pairs done"),
        ]
    parts: list[tuple[int, str]] = [(0, snap.phase)]
    if c is None or c.pairs_total is None:
        parts.append((1, f"{snap.rows_read:,} rows read"))
        return parts
    total = c.pairs_total
    share = c.settled / total if total else 1.0
    if bar:
        parts.append((5, _bar(share)))
    parts.append((2, f"{100 * share:.0f}%"))
    parts.append((1, f"{c.settled:,}/{total:,} pairs done"))
    if c.waiting_s is not None:
        parts.append((0, f"retry in {duration(c.waiting_s)}"))
    # The rate held lately; the run's average until a window of drawings exists (or when
    # nothing settled in it: a long pause, whose rest is added below).
    rate = snap.held_per_s or c.rate_per_s
    if rate:
        parts.append((3, f"{rate:,.0f}/s"))
        left = max(total - c.settled, 0) / rate + (c.waiting_s or 0.0)
        parts.append((2, f"{duration(left)} left"))
    if c.paced_per_s is not None:
        parts.append((3, f"paced {c.paced_per_s:,.0f}/s"))
    if c.rate_limited:
        parts.append((4, f"429s: {c.rate_limited:,}"))
    if c.refused:
        parts.append((4, f"{c.refused:,} refused"))
    if c.retries:
        parts.append((6, f"{c.retries:,} retries"))
    return parts


def _bar(fraction: float, width: int = 16) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width)
    return "[" + "#" * full + "." * (width - full) + "]"
