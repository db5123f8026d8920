"""Progress: a live one-line bar on a terminal, a plain log line every few seconds otherwise.

The pipeline only bumps counters and calls ``tick()``; this module decides when and how to
draw, so the hot path pays a clock read per chunk or batch and nothing more.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Counters:
    """What a run has done so far; the pipeline updates it, the display reads it."""

    phase: str = "reading"
    rows_total: int | None = None
    rows_read: int = 0
    events_total: int | None = None
    events_sent: int = 0
    events_imported: int = 0
    rejected: int = 0
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
        self.interval_s = (
            interval_s if interval_s is not None else (0.2 if self.interactive else 5.0)
        )
        self._last = time.monotonic()
        self._drawn = False

    def tick(self) -> None:
        """Redraw if the interval has passed since the last drawing."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._draw()

    def close(self) -> None:
        """End the live line so that what follows starts on a fresh one."""
        if self.enabled and self.interactive and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def _draw(self) -> None:
        text = self.render()
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def render(self) -> str:
        """The current state as one line."""
        c = self.counters
        parts = [c.phase]
        if c.phase == "sending" and c.events_total:
            done = c.events_imported + c.rejected
            parts.append(_bar(done / c.events_total) if self.interactive else "")
        parts.append(f"rows {c.rows_read:,}" + (f"/{c.rows_total:,}" if c.rows_total else ""))
        parts.append(f"sent {c.events_sent:,}")
        parts.append(f"imported {c.events_imported:,}")
        parts.append(f"rejected {c.rejected:,}")
        parts.append(f"retries {c.retries:,}")
        if c.send_started is not None:
            elapsed = max(time.monotonic() - c.send_started, 1e-9)
            rate = c.events_imported / elapsed
            parts.append(f"{rate:,.0f} ev/s")
            if c.events_total and rate > 0:
                left = max(c.events_total - c.events_imported, 0) / rate
                parts.append(f"left {_duration(left)}")
        return "  ".join(p for p in parts if p)


def _bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width)
    return "[" + "#" * full + "." * (width - full) + f"] {fraction * 100:3.0f}%"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
