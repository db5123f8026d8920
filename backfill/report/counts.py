"""What sending has done at one instant, as one typed value.

The send phase makes it (``SendPhase.counts``): the checkpoint's counts of every run on the
folder, the sender's of this invocation. The progress line draws it, the summary is filled
from it and ``status`` builds the same value from the checkpoint alone; no view keeps counts
of its own or passes them on as a dict, so a renamed field is a type error, not a silent gap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    """Pairs to send, imported and refused (all runs on the folder) and what this run did."""

    #: Valid pairs to send, all runs (None while not known: before validation ends).
    pairs_total: int | None
    #: Pairs Mixpanel imported, all runs.
    imported: int
    #: Pairs Mixpanel refused by name, all runs.
    refused: int
    #: Events this invocation sent, retries included.
    sent_this_run: int = 0
    #: Retried requests, this invocation.
    retries: int = 0
    #: Pairs settled per second over this invocation's sending.
    rate_per_s: float | None = None
    #: 429 answers, this invocation.
    rate_limited: int = 0
    #: The run's rate while 429s hold it below ``--rate``.
    paced_per_s: float | None = None
    #: A retry pause of several seconds now under way.
    waiting_s: float | None = None
    #: While stopping after a signal: requests still on the wire.
    in_flight: int | None = None

    @property
    def settled(self) -> int:
        """Pairs settled, all runs: imported or refused, either way never sent again."""
        return self.imported + self.refused
