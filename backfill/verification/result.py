"""``Verification``: what one ``backfill verify`` found, as a frozen value, and its views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backfill.errors import EXIT_OK, EXIT_UNVERIFIED


@dataclass(frozen=True)
class Verification:
    """The outcome of every pair a run sent, as Mixpanel's export shows it.

    ``merged + not_merged + not_found == pairs_sent``. ``reasons`` counts Mixpanel's failure
    reasons of the ``not_merged`` pairs, most frequent first. ``try_again_at`` (ISO 8601, UTC)
    is set when some pairs were not found: the export shows new events within about 45
    minutes of their import.
    """

    out: Path
    pairs_sent: int
    merged: int
    not_merged: int
    not_found: int
    reasons: Mapping[str, int] = field(default_factory=dict)
    queries: int = 0
    export_lines: int = 0
    days: tuple[str, str] | None = None
    already_merged: int = 0
    try_again_at: str | None = None

    @property
    def complete(self) -> bool:
        """Whether every sent pair merged."""
        return self.not_merged == 0 and self.not_found == 0

    @property
    def exit_code(self) -> int:
        """0 when every sent pair merged, 4 otherwise."""
        return EXIT_OK if self.complete else EXIT_UNVERIFIED

    def to_json(self) -> dict[str, Any]:
        """The ``verify`` block of ``summary.json`` (and ``--json``)."""
        return {
            "pairs_sent": self.pairs_sent,
            "merged": self.merged,
            "not_merged": self.not_merged,
            "not_found": self.not_found,
            "reasons": dict(self.reasons),
            "queries": self.queries,
            "export_lines": self.export_lines,
            "days": list(self.days) if self.days else None,
            "already_merged": self.already_merged,
            "try_again_at": self.try_again_at,
            "verify_csv": str(self.out / "verify.csv"),
        }


def render_verification(v: Verification) -> str:
    """The verification as a few lines for the terminal."""
    lines = [
        f"verification ({v.queries} export quer{'y' if v.queries == 1 else 'ies'}, "
        f"{v.export_lines:,} exported events read"
        + (f", {v.days[0]} to {v.days[1]}" if v.days else "")
        + ")",
        f"  pairs sent        {v.pairs_sent:,}",
        f"  merged            {v.merged:,}"
        + (f" ({v.already_merged:,} found by an earlier verify)" if v.already_merged else ""),
        f"  not merged        {v.not_merged:,}",
    ]
    for reason, count in list(v.reasons.items())[:5]:
        lines.append(f"    {count:>10,}  {reason}")
    lines.append(f"  not found yet     {v.not_found:,}")
    if v.not_found:
        lines.append(
            f"  the export shows new events within about 45 minutes: run backfill verify "
            f"again after {v.try_again_at} (only pairs not yet merged are checked)"
        )
    lines.append(f"details: {v.out / 'verify.csv'}")
    return "\n".join(lines)
