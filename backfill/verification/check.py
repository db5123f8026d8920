"""One verification: the run's sent pairs, the export's events of theirs, an outcome each.

1. Find the run as ``run`` finds it (``location.locate``), read its checkpoint and take the
   run's settings from it (columns, ID merge system, event names, event time): ``verify``
   needs only the input and the credentials. A changed input is refused.
2. Judge the input again (deterministic) and derive the keys of the pairs the run sent
   (``pairs``) into the key index (``index``), with the keys an earlier verify found merged
   (``files.read_merged``).
3. Ask the export for the run's event names over the UTC days the pairs still to find span,
   in at most ``MAX_RANGES`` queries (a day wider on each side: projects created before 2023
   count days in their own time zone), and add every line's key to the index (``match``).
4. Join the index unit by unit into each pair's outcome, then read the input once more to
   write ``verify.csv`` in row order, the new merged set and ``summary.json``'s ``verify``
   block. Memory stays within ``index.Budget`` plus a byte a row (the verdicts), whatever
   the number of pairs: past the budget, the index and the outcomes use the run folder's disk.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from backfill.commands.pipeline import open_source
from backfill.config.settings import Credentials, Settings, credentials_from_env
from backfill.errors import CheckpointMismatch, ConfigError, InputError
from backfill.folder.checkpoint import Checkpoint
from backfill.folder.location import locate
from backfill.folder.lock import FolderLock
from backfill.mixpanel import EXPORT_LAG_S, IdMerge
from backfill.read import Columns, Dataset
from backfill.report.page import add_verification
from backfill.verification.export import ExportClient, ExportConfig
from backfill.verification.files import MergedSet, VerifyCsv, read_merged, write_summary_block
from backfill.verification.index import DEFAULT_BUDGET, Budget, KeyIndex, Outcomes
from backfill.verification.match import NOT_MERGED, OUTCOMES, Matcher
from backfill.verification.pairs import I64, event_names, judge_again, sent_chunks
from backfill.verification.result import Verification

#: Export queries per verify, at most (before retries): the export allows 60 an hour.
MAX_RANGES = 3
Note = Callable[[str], None]


def check(
    settings: Settings,
    export_url: str,
    credentials: Credentials | None,
    env: Mapping[str, str],
    *,
    note: Note | None = None,
    budget: Budget = DEFAULT_BUDGET,
) -> Verification:
    """Verify the run of ``settings.source`` (see the module docstring); ``budget``: the
    memory its key index may hold before it uses the run folder's disk."""
    say = note or (lambda _: None)
    dataset = open_source(settings)
    settings, moved = locate(settings, env, dataset, command="verify")
    if moved:
        say(moved)
    assert settings.out is not None
    ckpt = Checkpoint.read(settings.out)
    if ckpt is None:
        raise InputError(
            f"no run found in {settings.out}: verify checks what `backfill run` sent; pass "
            "--out with the run's folder"
        )
    settings = _as_run(settings, ckpt.identity)
    if dataset.columns != settings.columns or dataset.format != settings.format:
        dataset = open_source(settings)
    if dataset.fingerprint() != ckpt.identity.get("input"):
        raise CheckpointMismatch(
            f"the input is not what the run in {settings.out} sent (a file was added, removed "
            "or changed): verify needs the same files"
        )
    creds = credentials or credentials_from_env(env, settings.project_id)
    config = ExportConfig(
        export_url, creds, settings.project_id, max(settings.timeout_s, 60.0),
        settings.max_attempts, settings.retry_base_s,
    )  # fmt: skip
    out = settings.out
    assert out is not None
    with FolderLock(out, command="verify"):
        return _verify(settings, dataset, ckpt, ExportClient(config), say, budget)


def _as_run(settings: Settings, identity: Mapping[str, Any]) -> Settings:
    """``settings`` with what the run's checkpoint fixed: its columns, system, project."""
    recorded = identity.get("project_id")
    if settings.project_id and recorded and settings.project_id != recorded:
        raise ConfigError(
            f"the run was sent to project {recorded}, not {settings.project_id}: verify asks "
            f"the project the run sent to (unset MIXPANEL_PROJECT_ID or pass --project-id "
            f"{recorded})"
        )
    return replace(
        settings,
        format=identity.get("format") or settings.format,
        columns=Columns(
            anon=identity["anon_column"],
            identified=identity["identified_column"],
            time=identity.get("time_column"),
        ),
        # A checkpoint holds only its own system's setting (and one of before the ID merge
        # systems, none): what it lacks is the table's, as the run took it.
        id_merge=IdMerge(identity.get("id_merge") or settings.id_merge),
        non_uuid_anon=identity.get("non_uuid_anon") or settings.non_uuid_anon,
        pairing_event=identity.get("pairing_event") or settings.pairing_event,
        max_cluster_size=identity.get("max_cluster_size") or settings.max_cluster_size,
        project_id=recorded or settings.project_id,
    )


def _verify(
    settings: Settings,
    dataset: Dataset,
    ckpt: Checkpoint,
    client: ExportClient,
    say: Note,
    budget: Budget,
) -> Verification:
    assert settings.out is not None
    out = settings.out
    verdicts = judge_again(settings, dataset, out, ckpt.started_ms)
    try:
        with KeyIndex(budget, out) as index:
            for sent in sent_chunks(settings, dataset, verdicts, ckpt, out):
                index.add_sent(sent.keys, sent.days)
            for keys in read_merged(out):
                index.add_before(keys)
            known, days = index.still_to_find()
            ranges = plan_ranges(days, _today())
            matcher = Matcher(index.add_exported)
            if index.sent > known:
                _query(client, ranges, event_names(settings), matcher, say)
            with Outcomes(index.sent, budget, out) as outcomes, MergedSet(out) as merged:
                index.resolve(outcomes, merged)
                index.close()  # its temp file is not needed any more
                try_again = _try_again(ckpt)
                counts, reasons = _write(settings, dataset, verdicts, ckpt, outcomes,
                                         matcher.reasons, try_again)  # fmt: skip
                merged.commit()
    finally:
        verdicts.close()
    result = Verification(
        out=out,
        pairs_sent=sum(counts.values()),
        merged=counts["merged"],
        not_merged=counts["not_merged"],
        not_found=counts["not_found"],
        reasons=dict(reasons.most_common()),
        queries=client.requests,
        export_lines=matcher.lines,
        days=(ranges[0][0].isoformat(), ranges[-1][1].isoformat()) if ranges else None,
        already_merged=known,
        try_again_at=try_again if counts["not_found"] else None,
    )
    write_summary_block(out, result.to_json())
    add_verification(out, result.to_json())  # report.html shows it too, when there is one
    return result


def plan_ranges(days: I64, today: int) -> list[tuple[date, date]]:
    """At most ``MAX_RANGES`` ranges of UTC days covering ``days``, a day wider each side.

    Runs of days are joined across their smallest gaps first, so a migration whose events
    fall on a few far-apart days asks for those days, not for the years between them.
    """
    unique = np.unique(days).tolist()
    if not unique:
        return []
    spans = [[unique[0], unique[0]]]
    for day in unique[1:]:
        if day - spans[-1][1] <= 1:
            spans[-1][1] = day
        else:
            spans.append([day, day])
    while len(spans) > MAX_RANGES:
        gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
        i = gaps.index(min(gaps))
        spans[i : i + 2] = [[spans[i][0], spans[i + 1][1]]]
    widened: list[list[int]] = []
    for first, last in spans:
        first, last = first - 1, min(last + 1, today)
        if widened and first <= widened[-1][1] + 1:
            widened[-1][1] = max(widened[-1][1], last)
        else:
            widened.append([first, last])
    epoch = date(1970, 1, 1)
    return [(epoch + timedelta(days=a), epoch + timedelta(days=b)) for a, b in widened]


def _today() -> int:
    return int(time.time() // 86_400)


def _query(
    client: ExportClient,
    ranges: list[tuple[date, date]],
    names: list[str],
    matcher: Matcher,
    say: Note,
) -> None:
    shown = [time.monotonic()]

    def on_line(raw: bytes) -> None:
        matcher.line(raw)
        if matcher.lines % 50_000 == 0 and time.monotonic() - shown[0] > 5.0:
            shown[0] = time.monotonic()
            say(f"verify: {matcher.lines:,} exported events read")

    for first, last in ranges:
        say(f"verify: asking Mixpanel's export for {', '.join(names)} from {first} to {last}")
        _run_async(client.query(first, last, names, on_line))
    matcher.flush()


def _run_async(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` to its end, also from inside a running loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def _try_again(ckpt: Checkpoint) -> str:
    """When the export should show what is missing: 45 minutes after the run's last write,
    or, if that has passed, 15 minutes from now."""
    at = max(ckpt.updated_at + EXPORT_LAG_S, time.time() + 15 * 60)
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="minutes")


def _write(
    settings: Settings,
    dataset: Dataset,
    verdicts: Any,
    ckpt: Checkpoint,
    outcomes: Outcomes,
    reason_texts: list[tuple[str, str]],
    try_again: str,
) -> tuple[Counter[str], Counter[str]]:
    assert settings.out is not None
    counts: Counter[str] = Counter({name: 0 for name in OUTCOMES})
    reasons: Counter[str] = Counter()
    csv_file = VerifyCsv(settings.out)
    missing = f"not in Mixpanel's export yet: run backfill verify again after {try_again}"
    ordinal = 0
    try:
        for sent in sent_chunks(settings, dataset, verdicts, ckpt, settings.out):
            outcome, why = outcomes.of(ordinal, len(sent.keys))
            ordinal += len(sent.keys)
            lines = []
            anons, idents = sent.anon.to_pylist(), sent.identified.to_pylist()
            rows = sent.file_rows.tolist()
            for i, (o, w) in enumerate(zip(outcome.tolist(), why.tolist(), strict=True)):
                name = OUTCOMES[o]
                counts[name] += 1
                reason, description = reason_texts[w] if o == NOT_MERGED else ("", "")
                if o == NOT_MERGED:
                    reasons[reason] += 1
                detail = (description or "Mixpanel gave no description") if o == NOT_MERGED \
                    else missing if name == "not_found" else ""  # fmt: skip
                lines.append((rows[i], sent.file, anons[i], idents[i], name, reason, detail))
            csv_file.write(lines)
        csv_file.commit()
    except BaseException:
        csv_file.discard()
        raise
    return counts, reasons
