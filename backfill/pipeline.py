"""One run, wired: read → validate → report (→ events → send, with the checkpoint).

Validation always runs in full before anything is sent, so ``rejects.csv`` is complete and on
disk before the first request; the send pass then re-reads the input and streams the valid
pairs to the sender, never holding them all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from backfill.progress import Counters, Progress
from backfill.read import DEFAULT_CHUNK_ROWS, Chunk, ChunkSource, open_chunks
from backfill.reasons import Reason
from backfill.report import SUMMARY_FILE, RejectRow, RejectsFile, zero_counts
from backfill.settings import Settings
from backfill.times import TimeStatus, now_ms, to_epoch_ms
from backfill.times import describe as describe_time
from backfill.validate import Verdicts, describe, judge


@dataclass
class Validated:
    """The input judged and its rejects written: what ``run`` sends from."""

    source: ChunkSource
    verdicts: Verdicts
    now_ms: int
    rejects: RejectsFile


def validate_input(
    settings: Settings,
    counters: Counters,
    progress: Progress,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Validated:
    """Judge every row and write ``rejects.csv`` (validation part, earlier refusals kept)."""
    source = open_chunks(settings.input_path, settings.format, settings.columns, chunk_rows)
    started = now_ms()

    def on_rows(n: int) -> None:
        counters.rows_read += n
        progress.tick()

    counters.phase = "validating"
    verdicts = judge(
        source, now_ms=started, max_cluster_size=settings.max_cluster_size, on_rows=on_rows
    )
    counters.rows_total = verdicts.rows_read
    counters.phase = "writing rejects"
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    rejects = RejectsFile(settings.out_dir, keep_api_rejects=True)
    try:
        for chunk in source():
            rejects.write(reject_rows(chunk, verdicts, started))
        rejects.commit()
    except BaseException:
        rejects.close()
        raise
    counters.rejected = int(np.count_nonzero(verdicts.reasons)) + rejects.api_rejected
    return Validated(source, verdicts, started, rejects)


def reject_rows(chunk: Chunk, verdicts: Verdicts, now: int) -> Iterator[RejectRow]:
    """The rejects.csv rows of one chunk, with a human detail each."""
    reasons = verdicts.reasons[chunk.first_row - 1 : chunk.end_row - 1]
    bad = np.flatnonzero(reasons)
    if len(bad) == 0:
        return
    take = pa.array(bad)
    anons = chunk.anon.take(take).to_pylist()
    idents = chunk.identified.take(take).to_pylist()
    rows = bad + chunk.first_row
    firsts = verdicts.first_rows(rows)
    time_details: list[str] = [""] * len(bad)
    if chunk.time is not None:
        raw = chunk.time.take(take)
        _, status = to_epoch_ms(raw, now)
        texts = raw.to_pylist()
        time_details = [
            describe_time(TimeStatus(s), "" if t is None else str(t))
            for s, t in zip(status.tolist(), texts, strict=True)
        ]
    for k in range(len(bad)):
        reason = Reason(int(reasons[bad[k]]))
        yield (
            int(rows[k]),
            anons[k] or "",
            idents[k] or "",
            reason.code,
            describe(
                reason,
                anons[k],
                idents[k],
                first_row=int(firsts[k]),
                time_detail=time_details[k],
                max_cluster_size=verdicts.max_cluster_size,
            ),
        )


def base_summary(settings: Settings, validated: Validated, started: float) -> dict[str, Any]:
    """The summary fields every command shares."""
    v = validated.verdicts
    rejected = zero_counts()
    rejected.update(v.counts())
    rejected[Reason.API_REJECTED.code] = validated.rejects.api_rejected
    return {
        "status": "validated",
        "input": str(settings.input_path),
        "format": settings.format,
        "rows_read": v.rows_read,
        "rows_valid": v.rows_valid,
        "rejected": rejected,
        "events_imported": 0,
        "hash_collisions_resolved": v.collisions,
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
        "elapsed_s": round(time.time() - started, 3),
    }


def validate_command(
    settings: Settings, progress_stream: Any = None, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> dict[str, Any]:
    """``backfill validate``: judge, write ``rejects.csv`` and ``summary.json``, send nothing."""
    from backfill.checkpoint import RunLock
    from backfill.files import atomic_write_json

    started = time.time()
    counters = Counters()
    progress = Progress(counters, stream=progress_stream, enabled=settings.progress)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(settings.out_dir, command="validate"):
        try:
            validated = validate_input(settings, counters, progress, chunk_rows=chunk_rows)
        finally:
            progress.close()
        validated.rejects.close()
        summary = base_summary(settings, validated, started)
        valid = summary["rows_valid"]
        summary["batches_planned"] = math.ceil(valid / settings.batch_size)
        summary["rate_per_s"] = settings.rate_per_s
        summary["estimated_send_s"] = round(valid / settings.rate_per_s, 1)
        atomic_write_json(settings.out_dir / SUMMARY_FILE, summary)
    return summary


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")


def out_files(out_dir: Path) -> list[Path]:
    """The report files a command leaves in ``out_dir``."""
    return [out_dir / "rejects.csv", out_dir / SUMMARY_FILE]
