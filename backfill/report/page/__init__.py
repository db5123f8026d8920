"""The pre-merge report: ``report.html`` in the run folder, and ``Summary._repr_html_``.

``Collector`` (``aggregates``) gathers bounded figures while validation runs; ``write_report``
renders them with the ``Summary`` into one self-contained page (``page``), charts in inline
SVG (``svg``). This package imports neither pyarrow nor aiohttp at its top: a notebook can
show a written report without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from backfill.report.page.figures import Figures, SendTrace
from backfill.report.page.page import (
    REPORT_FILE,
    add_verification,
    document,
    fragment_of,
    render,
    write,
)

if TYPE_CHECKING:
    from backfill.commands.validated import Validated
    from backfill.config.settings import Settings
    from backfill.report.summary import Summary

__all__ = [
    "REPORT_FILE",
    "Figures",
    "SendTrace",
    "add_verification",
    "document",
    "fragment_of",
    "render",
    "write",
    "write_report",
]


def write_report(
    summary: Summary,
    validated: Validated,
    settings: Settings,
    *,
    trace: SendTrace | None = None,
    verify: Mapping[str, Any] | None = None,
) -> Summary:
    """Write ``report.html`` in ``summary.out``; the summary with its ``report`` path set.

    Without a collector (``--no-report``) nothing is written. A report that cannot be written
    (a full disk) leaves ``report`` unset rather than hiding the command's own outcome.
    ``verify``: the block ``backfill verify`` adds, shown in a section of its own.
    """
    collector = validated.collector
    if collector is None:
        return summary
    event_time = summary.event_time
    if event_time is None and settings.event_time_ms is not None:
        from backfill.validation.times import iso_utc

        event_time = iso_utc(settings.event_time_ms)
    figures = collector.figures(
        validated.dataset,
        trace=trace,
        rate_per_s=settings.rate_per_s,
        event_time=event_time,
        verify=verify,
    )
    try:
        path = write(summary.out, summary, figures)
    except OSError:
        return summary
    return replace(summary, report=str(path))
