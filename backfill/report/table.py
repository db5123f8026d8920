"""The terminal table: what a command did, aligned in plain text (``str(summary)`` too)."""

from __future__ import annotations

from collections.abc import Mapping

from backfill.report.summary import Summary, duration
from backfill.validation.reasons import Reason


def render_table(summary: Summary, *, title: str | None = None) -> str:
    """The summary as an aligned plain-text table for the terminal (``str(summary)``)."""
    if title is None:
        note = f"to {summary.api_url}" if summary.sent else "dry run: nothing sent"
        command = "run" if summary.sent else "validate"
        title = f"backfill {command} {summary.input} ({note}; {summary.status.value})"
    read, valid = summary.rows_read, summary.rows_valid
    lines: list[tuple[str, str, str]] = [
        ("rows read", f"{read:,}", ""),
        ("rows valid", f"{valid:,}", _share(valid, read)),
    ]
    # Mixpanel refuses valid rows: its refusals are shown as a part of the valid ones, so that
    # valid and rejected shares add up to the rows read (counted in both, they passed 100%).
    refused = summary.rejected.get(Reason.API_REJECTED.code, 0)
    if refused:
        share = f"{_share(refused, read)}  (api_rejected)"
        lines.append(("  refused by Mixpanel", f"{refused:,}", share))
    total = summary.rows_rejected - refused
    lines.append(("rows rejected", f"{total:,}", _share(total, read)))
    for code, count in summary.rejected.items():
        if count and code != Reason.API_REJECTED.code:
            lines.append((f"  {code}", f"{count:,}", _share(count, read)))
    trimmed = summary.trimmed_ids
    if trimmed.count:
        where = trimmed.sample
        first = "" if where is None else f"(first: {where.column} of row {where.row}"
        first += "" if where is None or len(summary.files) < 2 else f" of {where.file}"
        lines.append(("ids trimmed", f"{trimmed.count:,}", first + (")" if first else "")))
    for kind, count in summary.events_by_kind.items():
        lines.append((f"{kind} events", f"{count:,}", ""))
    if summary.sent:
        lines += _send_rows(summary)
    else:
        lines += _plan_rows(summary)
    lines.append(("elapsed", duration(summary.elapsed_s), ""))
    width = max(len(a) for a, _, _ in lines)
    num = max(len(b) for _, b, _ in lines)
    body = [f"  {a:<{width}}  {b:>{num}}  {c}".rstrip() for a, b, c in lines]
    return "\n".join([title, *body])


def _plan_rows(summary: Summary) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    if summary.events_imported:
        rows.append(("already imported", f"{summary.events_imported:,}", "(earlier runs)"))
    if summary.batches_planned is not None:
        rows.append(("batches to send", f"{summary.batches_planned:,}", ""))
    if summary.estimated_send_s is not None and summary.rate_per_s:
        label = f"time at {summary.rate_per_s:,.0f} events/s"
        rows.append((label, duration(summary.estimated_send_s), ""))
    return rows


def _send_rows(summary: Summary) -> list[tuple[str, str, str]]:
    this = summary.this_run
    assert this is not None
    rows = [("events imported", f"{summary.events_imported:,}", "(all runs)")]
    if summary.already_complete:
        rows.append(("this run", "nothing left", "(already complete)"))
        return rows
    rows += [
        ("  this run", f"{this.events_imported:,}", ""),
        ("requests", f"{this.requests:,}", ""),
        ("retries", _retries(this.retries), ""),
    ]
    if this.send_s >= 1 and this.events_imported:
        held = this.rate_held_per_s or this.events_per_s
        whole = f"({this.events_per_s:,.0f}/s over the whole send phase)"
        rows.append(("rate held", f"{held:,.0f} events/s", whole if this.rate_held_per_s else ""))
    if this.rate_limited:
        lowered = (
            f"(rate lowered {this.rate_lowered:,}x, to {this.lowest_rate_per_s:,.0f} events/s "
            "at the lowest)"
            if this.rate_lowered and this.lowest_rate_per_s is not None
            else ""
        )
        rows.append(("429 answers", f"{this.rate_limited:,}", lowered))
    return rows


def _share(part: float, whole: int) -> str:
    return f"{100.0 * float(part) / whole:5.1f}%" if whole else ""


def _retries(causes: Mapping[str, int]) -> str:
    total = sum(causes.values())
    detail = ", ".join(f"{k} {v}" for k, v in causes.items() if v)
    return f"{total:,}" + (f" ({detail})" if detail else "")
