"""The report's section on a run: events imported over time, requests, retries, 429s, the
rate held against ``--rate``, and what Mixpanel refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from backfill.report.page.figures import Figures
from backfill.report.page.svg import esc, line, number

if TYPE_CHECKING:
    from backfill.report.summary import Summary


def sending(summary: Summary, figures: Figures | None) -> Iterator[str]:
    """The ``sending`` section (a run or rehearsal only)."""
    yield '<section id="sending"><h2>Sending</h2>'
    this = summary.this_run
    trace = figures.trace if figures is not None else None
    points = trace.timeline() if trace is not None else []
    if len(points) >= 2:
        chart = line(points, title="events imported over time", x_unit="s",
                     y_unit="events imported (all runs)")  # fmt: skip
        yield f"<figure>{chart}</figure>"
    rows: list[tuple[str, str]] = [
        ("events imported (all runs)", number(summary.events_imported)),
        ("requests (all runs)", number(summary.requests or 0)),
    ]
    retries = dict(summary.retries or {})
    rows.append(("retries (all runs)", _causes(retries)))
    if this is not None:
        rows += [
            ("this run: events imported", number(this.events_imported)),
            ("this run: requests", number(this.requests)),
            ("this run: 429 answers", number(this.rate_limited)),
            ("this run: send time", f"{this.send_s:,.1f} s"),
        ]
        rate = figures.rate_per_s if figures is not None else None
        held = this.rate_held_per_s or this.events_per_s
        against = f" against --rate {number(rate)}" if rate else ""
        rows.append(("rate held", f"{number(held)} events/s{against}"))
        if this.rate_lowered and this.lowest_rate_per_s is not None:
            low = f"{this.rate_lowered}x, lowest {number(this.lowest_rate_per_s)} events/s"
            rows.append(("rate lowered by 429s", low))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    yield f"<table><tbody>{body}</tbody></table>"
    yield from _refused(summary, figures)
    yield "</section>"


def _causes(retries: dict[str, int]) -> str:
    total = sum(retries.values())
    detail = ", ".join(f"{k} {v:,}" for k, v in retries.items() if v)
    return number(total) + (f" ({detail})" if detail else "")


def _refused(summary: Summary, figures: Figures | None) -> Iterator[str]:
    refused = summary.rejected.get("api_rejected", 0)
    yield f"<h3>What Mixpanel refused: {number(refused)} records</h3>"
    trace = figures.trace if figures is not None else None
    if trace is None or not trace.messages:
        return
    rows = "".join(
        f'<tr><td>{esc(m)}</td><td class="num">{number(n)}</td></tr>'
        for m, n in trace.messages.most_common(10)
    )
    yield '<table><thead><tr><th>message (this run)</th><th class="num">records</th></tr>'
    yield f"</thead><tbody>{rows}</tbody></table>"
