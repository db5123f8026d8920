"""Progress: a live one-line bar on a terminal, a plain log line every few seconds otherwise.

The pipeline only bumps counters and calls ``tick()``; this module decides when and how to
draw, so the hot path pays a clock read per chunk or batch and nothing more.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from backfill.report import duration


@dataclass
class Counters:
    """What a run has done so far; the pipeline updates it, the display reads it."""

    phase: str = "reading"
    rows_total: int | None = None
    rows_read: int = 0
    events_total: int | None = None
    events_sent: int = 0
    events_imported: int = 0
    events_imported_this_run: int = 0
    rejected: int = 0
    rejected_sent: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    send_started: float | None = None


class Progress:
    """Draws ``Counters``: a bar redrawn in place on a TTY, or a log line every few seconds."""

    def __init__(
        self,
        counters: Counters,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        interactive: bool | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.counters = counters
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty() if interactive is None else interactive
        if interval_s is None:
            # The environment knob exists for tests and for logs that want a denser trace.
            configured = os.environ.get("BACKFILL_PROGRESS_INTERVAL_S")
            interval_s = float(configured) if configured else (0.2 if self.interactive else 5.0)
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._drawn = False

    def phase(self, name: str) -> None:
        """Enter a new phase (validating, writing rejects, sending); a live bar shows it at
        once, a log waits for its next line rather than print one with nothing done yet."""
        self.counters.phase = name
        if self.enabled and self.interactive:
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

    def _draw(self) -> None:
        text = self.render()
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write("backfill: " + text + "\n")
        self._drawn = True
        self.stream.flush()

    def render(self) -> str:
        """The current state as one line."""
        c = self.counters
        rows = f"rows {c.rows_read:,}" + (f"/{c.rows_total:,}" if c.rows_total else "")
        if c.send_started is None:
            return f"{c.phase}  {rows}  rejected {c.rejected:,}"
        parts = [c.phase]
        if self.interactive and c.events_total:
            parts.append(_bar((c.events_imported + c.rejected_sent) / c.events_total))
        parts += [
            rows,
            f"sent {c.events_sent:,}",
            f"imported {c.events_imported:,}",
            f"rejected {c.rejected:,}",
            f"retries {c.retries:,}",
        ]
        elapsed = max(time.monotonic() - c.send_started, 1e-9)
        rate = c.events_imported_this_run / elapsed
        parts.append(f"{rate:,.0f} ev/s")
        if c.events_total and rate > 0:
            left = max(c.events_total - c.events_imported - c.rejected_sent, 0) / rate
            parts.append(f"left {duration(left)}")
        return "  ".join(parts)


def _bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width)
    return "[" + "#" * full + "." * (width - full) + f"] {fraction * 100:3.0f}%"
