"""``report.html``: one self-contained page of a run's shape, the same fragment in a notebook.

The page has no script, no external resource and a Content-Security-Policy that forbids
loading any: opened from a change request's attachment years later, it makes no request. Its
charts are inline SVG (``svg.py``); every id, file name and message is escaped. Sections, top
to bottom: verdict, settings, refusals, cluster sizes, conflicts, event times, sending (a run),
verification (when a ``verify`` block is given). The fragment between the ``FRAGMENT`` markers
(a ``<div class="bfr">`` with its own scoped style) is what ``Summary._repr_html_`` shows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backfill.report.page.figures import Example, Figures
from backfill.report.page.sending import sending
from backfill.report.page.style import CSS
from backfill.report.page.svg import columns, esc, hbars, number

if TYPE_CHECKING:
    from backfill.report.summary import Summary

REPORT_FILE = "report.html"
FRAGMENT = ("<!-- backfill-report -->", "<!-- /backfill-report -->")
#: Where ``backfill verify`` puts its section into a written page (``add_verification``).
VERIFICATION = ("<!-- backfill-verification -->", "<!-- /backfill-verification -->")
_SYSTEMS = {"original": "Original ID Merge", "simplified": "Simplified ID Merge"}
#: One line per reason: what it means and what to do.
EXPLAIN = {
    "missing_anon_id": "The anon id is empty.",
    "invalid_anon_id": "The anon id cannot be merged: not a UUID v4 (Original ID Merge), a "
    "placeholder, too long, or broken.",
    "missing_identified_id": "The identified id is empty.",
    "invalid_identified_id": "The identified id is a placeholder Mixpanel refuses, over 255 "
    "bytes, or broken.",
    "self_merge": "The identified id equals the anon id: nothing to merge.",
    "invalid_time": "The event time is unparseable, before 1971 or in the future.",
    "conflicting_anon_id": "The anon id maps to two or more identified ids; a merge cannot be "
    "undone, so none of its rows is sent.",
    "duplicate_pair": "An exact repeat of an earlier pair; the first is kept.",
    "cluster_limit": "The identified id already holds the most anon ids a cluster takes; the "
    "rest would be silently not merged.",
    "api_rejected": "Mixpanel refused the record by name (its message is kept).",
}


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0%"


def verdict(summary: Summary) -> str:
    """The outcome in one sentence."""
    read, refused = summary.rows_read, summary.rows_rejected
    system = _SYSTEMS.get(summary.id_merge, summary.id_merge)
    tail = f"{number(refused)} refused, {_pct(refused, read)}"
    if not summary.sent:
        return (
            f"{number(summary.rows_valid)} of {number(read)} pairs ready to send to an "
            f"{system} project; {tail}."
        )
    total = summary.events_total or summary.rows_valid
    head = f"{number(summary.events_imported)} of {number(total)} valid pairs imported into "
    state = {"completed": "", "aborted": " The run was aborted: see below and resume it."}
    end = state.get(summary.status.value, " The run was interrupted: run it again to resume.")
    return f"{head}an {system} project ({number(read)} read); {tail}.{end}"


def render(summary: Summary, figures: Figures | None) -> str:
    """The report as an HTML fragment (a ``div`` with its scoped style)."""
    parts = [
        f"<style>{CSS}</style>",
        '<div class="bfr">',
        f"<h1>backfill {esc(summary.status.value)}: {esc(summary.input)}</h1>",
        f'<p class="verdict" id="verdict">{esc(verdict(summary))}</p>',
        f'<p class="when">{esc(summary.started_at)} to {esc(summary.finished_at)}, '
        f"{esc(summary.out)}</p>",
        *_settings(summary, figures),
        *_refusals(summary, figures),
    ]
    if figures is not None:
        parts += [*_clusters(figures, summary), *_conflicts(figures), *_times(figures)]
    if summary.sent:
        parts += sending(summary, figures)
    parts.append(VERIFICATION[0])
    if figures is not None and figures.verify:
        parts += _verification(figures.verify)
    parts += [VERIFICATION[1], "</div>"]
    return "\n".join(parts)


def document(summary: Summary, figures: Figures | None) -> str:
    """The whole self-contained document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>backfill report: {esc(summary.input)}</title></head>\n<body>\n"
        f"{FRAGMENT[0]}\n{render(summary, figures)}\n{FRAGMENT[1]}\n</body></html>\n"
    )


def write(out_dir: Path, summary: Summary, figures: Figures | None) -> Path:
    """Write ``report.html`` (owner-only, replaced atomically); returns its path."""
    path = out_dir / REPORT_FILE
    _replace(path, document(summary, figures))
    return path


def add_verification(out_dir: Path, verify: Mapping[str, Any]) -> Path | None:
    """Put (or put anew) ``backfill verify``'s section into the written page; None if there
    is no page with a place for it (``--no-report``, or a page of an earlier version)."""
    path = out_dir / REPORT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    start, end = text.find(VERIFICATION[0]), text.find(VERIFICATION[1])
    if start < 0 or end < start:
        return None
    section = "\n".join(_verification(verify))
    _replace(path, f"{text[: start + len(VERIFICATION[0])]}\n{section}\n{text[end:]}")
    return path


def _replace(path: Path, text: str) -> None:
    """``path`` holds ``text``: owner-only, replaced atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)
    os.replace(tmp, path)


def fragment_of(text: str) -> str | None:
    """The notebook fragment of a written page, or None if it holds none."""
    start, end = text.find(FRAGMENT[0]), text.rfind(FRAGMENT[1])
    if start < 0 or end < start:
        return None
    return text[start + len(FRAGMENT[0]) : end].strip()


def _section(key: str, title: str) -> str:
    return f'<section id="{key}"><h2>{esc(title)}</h2>'


def _table(
    head: Sequence[str], rows: Sequence[Sequence[object]], nums: int = 0, *, at: int = -1
) -> str:
    """A table; the last ``nums`` columns (and column ``at``) are right-aligned numbers."""
    cls = [""] * (len(head) - nums) + [' class="num"'] * nums
    if at >= 0:
        cls[at] = ' class="num"'
    th = "".join(f"<th{c}>{esc(h)}</th>" for h, c in zip(head, cls, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{esc(v)}</td>" for v, c in zip(r, cls, strict=True)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _settings(summary: Summary, figures: Figures | None) -> Iterator[str]:
    yield _section("settings", "Settings")
    rows: list[tuple[str, str]] = [("ID merge system", _SYSTEMS.get(summary.id_merge, "?"))]
    if figures is not None:
        limit = figures.max_cluster_size
        rows.append(("cluster limit", f"{limit} ids" if limit else "none (Simplified ID Merge)"))
        source = f"column {figures.time_column}" if figures.time_column else None
        rows.append(("time source", source or figures.event_time or "the first run's start"))
        if figures.rate_per_s:
            rows.append(("--rate", f"{number(figures.rate_per_s)} events/s"))
    rows.append(("input", f"{summary.input} ({summary.format})"))
    yield _table(("setting", "value"), rows)
    files = figures.files if figures is not None else ()
    if files:
        yield _table(("file", "bytes", "fingerprint"), [_file_row(f) for f in files])
        if figures is not None and figures.files_total > len(files):
            yield f"<p>… and {number(figures.files_total - len(files))} more files.</p>"
    elif summary.files:
        yield _table(("file", "rows"), [(f.name, number(f.rows)) for f in summary.files[:50]], 1)
    yield "</section>"


def _file_row(f: Mapping[str, Any]) -> tuple[str, str, str]:
    digest = next((f"{k} {f[k]}" for k in ("sha256", "etag", "generation") if k in f), "")
    size = f.get("size", f.get("rows", ""))
    return (str(f.get("name", "")), number(size) if isinstance(size, int) else "", digest)


def _refusals(summary: Summary, figures: Figures | None) -> Iterator[str]:
    yield _section("refusals", "Refusals by reason")
    read = summary.rows_read
    present = [(code, n) for code, n in summary.rejected.items() if n]
    if not present:
        yield "<p>No row is refused.</p></section>"
        return
    items = [(code, float(n), f"{number(n)} ({_pct(n, read)})") for code, n in present]
    yield f"<figure>{hbars(items, title='refused rows by reason', label_w=180)}</figure>"
    examples = figures.examples if figures is not None else {}
    for code, n in present:
        yield f"<h3>{esc(code)}: {number(n)}</h3><p>{esc(EXPLAIN.get(code, ''))}</p>"
        shown = list(examples.get(code, ()))
        if code == "api_rejected" and figures is not None and figures.trace is not None:
            shown = shown or figures.trace.refusals[:3]
        if shown:
            yield _examples(shown)
    yield "</section>"


def _examples(rows: Sequence[Example]) -> str:
    return _table(
        ("file", "row", "anon id", "identified id", "detail"),
        [(e.file, number(e.row), e.anon, e.identified, e.detail) for e in rows],
        at=1,
    )


def _clusters(figures: Figures, summary: Summary) -> Iterator[str]:
    yield _section("clusters", "Cluster sizes: anon ids per identified id")
    if not figures.cluster_bins:
        why = "Simplified ID Merge has no cluster limit" if not figures.max_cluster_size else ""
        yield f"<p>No cluster to show{esc(': ' + why if why else '')}.</p></section>"
        return
    bins = list(figures.cluster_bins)
    marker = None
    if figures.max_cluster_size:
        anon_limit = figures.max_cluster_size - 1
        need = math.ceil(math.log2(anon_limit)) + 1 if anon_limit > 1 else 1
        bins += [0] * (need - len(bins))
        marker = (math.log2(anon_limit) + 1, f"limit: {anon_limit} anon ids")
    labels = ["1", "2", *(f"{2 ** (i - 1) + 1}-{2**i}" for i in range(2, len(bins)))]
    yield (
        f"<p>{number(figures.identified_ids)} identified ids; distinct anon ids each "
        "(pairs refused as conflicts or duplicates not counted). Log scale.</p>"
    )
    chart = columns(list(zip(labels, bins, strict=False)), title="cluster sizes", log_y=True,
                    marker=marker, every=1 if len(bins) <= 16 else 2)  # fmt: skip
    yield f'<figure class="hist">{chart}</figure>'
    top = figures.clusters
    if top:
        yield f"<h3>The {len(top)} largest clusters</h3>"
        items = [(c.identified, float(c.anon_ids), f"{number(c.anon_ids)}") for c in top]
        yield f'<figure class="top">{hbars(items, title="largest clusters")}</figure>'
        rows = [(c.identified, c.file, number(c.row), number(c.anon_ids)) for c in top]
        yield _table(("identified id", "file", "first row", "anon ids"), rows, 2)
    yield "</section>"


def _conflicts(figures: Figures) -> Iterator[str]:
    yield _section("conflicts", "Conflicts: anon ids claimed by several identified ids")
    if not figures.conflicts:
        yield "<p>No anon id maps to two identified ids.</p></section>"
        return
    yield f"<p>Anon ids in conflict: {number(figures.conflicted_anon_ids)}. The most claimed:</p>"
    items = [
        (c.anon, float(c.identified_ids), f"{c.identified_ids} ids") for c in figures.conflicts
    ]
    yield f"<figure>{hbars(items, title='most claimed anon ids')}</figure>"
    rows = [
        (c.anon, c.file, number(c.row), number(c.identified_ids), number(c.rows))
        for c in figures.conflicts
    ]
    yield _table(("anon id", "file", "first row", "identified ids", "rows"), rows, 3)
    yield "</section>"


def _times(figures: Figures) -> Iterator[str]:
    yield _section("times", "Event times")
    if figures.time_column is None:
        when = figures.event_time or "the first run's start"
        yield f"<p>No time column: every event takes one time ({esc(when)}).</p></section>"
        return
    if figures.months:
        yield "<p>Pairs that passed the per-row rules, by month of their event time (UTC).</p>"
        months = list(figures.months)
        every = max(1, math.ceil(len(months) / 12))
        yield f"<figure>{columns(months, title='pairs per month', every=every)}</figure>"
    refused = figures.refused_times
    total = sum(n for _, n in refused)
    yield f"<p>Times refused (<code>invalid_time</code>): {number(total)}.</p>"
    if refused:
        yield _table(("why", "rows"), [(w, number(n)) for w, n in refused], 1)
    yield "</section>"


def _verification(verify: Mapping[str, Any]) -> Iterator[str]:
    """What ``backfill verify`` found in Mixpanel's export (its summary's ``verify`` object):
    the sent pairs by outcome, then Mixpanel's reasons for the ones it did not merge."""
    yield _section("verification", "Verification: what Mixpanel merged")
    outcomes = [
        ("pairs sent", verify.get("pairs_sent")),
        ("merged", verify.get("merged")),
        ("not merged (Mixpanel's reason below)", verify.get("not_merged")),
        ("not in the export yet", verify.get("not_found")),
    ]
    rows = [(label, number(n)) for label, n in outcomes if isinstance(n, int)]
    if verify.get("try_again_at"):
        rows.append(("verify again after", str(verify["try_again_at"])))
    yield _table(("outcome", "pairs"), rows, 1)
    reasons = verify.get("reasons")
    if isinstance(reasons, Mapping) and reasons:
        yield _table(
            ("Mixpanel's reason", "pairs"),
            [(str(k), number(int(v))) for k, v in reasons.items()],
            1,
        )
    yield "</section>"
