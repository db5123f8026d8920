"""One run, wired: read → validate → report (→ events → send, with the checkpoint).

Validation always runs in full before anything is sent, so ``rejects.csv`` is complete and on
disk before the first request; the send pass then re-reads the input and streams the valid
pairs to the sender, never holding them all.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from backfill.checkpoint import CHECKPOINT_FILE, Checkpoint, RunLock, file_fingerprint, token_digest
from backfill.errors import BackfillError, Interrupted
from backfill.files import atomic_write_json, read_json_dict
from backfill.progress import Counters, Progress
from backfill.read import DEFAULT_CHUNK_ROWS, Chunk, open_chunks
from backfill.reasons import Reason
from backfill.report import SUMMARY_FILE, RejectRow, RejectsFile, zero_counts
from backfill.run import Run, Validated, chunk_reasons
from backfill.settings import Settings, credentials_from_env
from backfill.times import TimeStatus, iso_utc, now_ms, to_epoch_ms
from backfill.times import describe as describe_time
from backfill.validate import Verdicts, describe, judge


def validate_input(
    settings: Settings,
    counters: Counters,
    progress: Progress,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    keep_api_rejects: bool = True,
) -> Validated:
    """Judge every row and write ``rejects.csv`` (validation part, earlier refusals kept)."""
    source = open_chunks(settings.input_path, settings.format, settings.columns, chunk_rows)
    started = now_ms()

    def on_rows(n: int) -> None:
        counters.rows_read += n
        progress.tick()

    progress.phase("validating")
    verdicts = judge(
        source, now_ms=started, max_cluster_size=settings.max_cluster_size, on_rows=on_rows
    )
    counters.rows_total = verdicts.rows_read
    counters.rejected = verdicts.rows_read - verdicts.rows_valid
    progress.phase("writing rejects")
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    rejects = RejectsFile(settings.out_dir, keep_api_rejects=keep_api_rejects)
    try:
        for chunk in source():
            rejects.write(reject_rows(chunk, verdicts, started))
        rejects.commit()
    except BaseException:
        rejects.close()
        raise
    counters.rejected = verdicts.rows_read - verdicts.rows_valid + rejects.api_rejected
    return Validated(source, verdicts, started, rejects)


def reject_rows(chunk: Chunk, verdicts: Verdicts, now: int) -> Iterator[RejectRow]:
    """The rejects.csv rows of one chunk, with a human detail each."""
    reasons = chunk_reasons(chunk, verdicts)
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
    started = time.time()
    counters = Counters()
    progress = Progress(counters, stream=progress_stream, enabled=settings.progress)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(settings.out_dir, command="validate"):
        try:
            validated = validate_input(settings, counters, progress, chunk_rows=chunk_rows)
            counters.phase = "validated"
        finally:
            progress.close()
        validated.rejects.close()
        summary = base_summary(settings, validated, started)
        earlier = read_json_dict(settings.out_dir / CHECKPOINT_FILE)
        if earlier is not None:
            # A dry run in a folder where a run already sent pairs must not report zero.
            summary["events_imported"] = int(earlier.get("events_imported", 0))
        valid = summary["rows_valid"]
        summary["batches_planned"] = math.ceil(valid / settings.batch_size)
        summary["rate_per_s"] = settings.rate_per_s
        summary["estimated_send_s"] = round(valid / settings.rate_per_s, 1)
        atomic_write_json(settings.out_dir / SUMMARY_FILE, summary)
    return summary


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")


# --- run -----------------------------------------------------------------------------------


def event_identity(settings: Settings, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """What the checkpoint is tied to: the input, the project and every event setting."""
    return {
        "input": dict(fingerprint),
        "project_id": settings.project_id,
        "format": settings.format,
        "anon_column": settings.columns.anon,
        "identified_column": settings.columns.identified,
        "time_column": settings.columns.time,
        "max_cluster_size": settings.max_cluster_size,
        "token": token_digest(settings.token),
    }


def run_command(
    settings: Settings,
    env: Mapping[str, str],
    *,
    progress_stream: Any = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict[str, Any]:
    """``backfill run``: validate, then send; resumable; returns the summary.

    Raises Aborted (exit 3) or Interrupted (exit 130) after writing the checkpoint and a
    summary with status ``aborted`` / ``interrupted``.
    """
    creds = credentials_from_env(env, settings.project_id)
    started = time.time()
    counters = Counters()
    progress = Progress(counters, stream=progress_stream, enabled=settings.progress)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(settings.out_dir, command="run"):
        fingerprint = file_fingerprint(settings.input_path)
        ckpt = Checkpoint.open(
            settings.out_dir,
            event_identity(settings, fingerprint),
            event_time_ms=settings.event_time_ms,
            start_ms=now_ms(),
            restart=settings.restart,
        )
        # Written at once: the event time is fixed from now on, and `status` sees the run.
        ckpt.write()
        try:
            validated = validate_input(
                settings,
                counters,
                progress,
                chunk_rows=chunk_rows,
                keep_api_rejects=not settings.restart,
            )
        except BaseException:
            progress.close()
            raise
        ckpt.rows_total = validated.verdicts.rows_read
        ckpt.events_total = validated.verdicts.rows_valid
        ckpt.rejected = validated.verdicts.counts()
        ckpt.write()
        run = Run(settings, creds, validated, ckpt, counters=counters, progress=progress)
        counters.rows_read = 0
        counters.events_total = validated.verdicts.rows_valid
        counters.events_imported = ckpt.events_imported
        counters.rejected_sent = ckpt.events_refused
        counters.send_started = time.monotonic()
        progress.phase("sending")
        status = "aborted"  # whatever stops the run early, unless it says otherwise below
        try:
            asyncio.run(run.send())
            status = "completed"
        except (Interrupted, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            with _signals_deferred():
                counters.phase = status
                progress.close()
                validated.rejects.close()
                summary = _run_summary(settings, validated, run, started, status)
                if status == "completed":
                    ckpt.state = "completed"
                    ckpt.write()
                atomic_write_json(settings.out_dir / SUMMARY_FILE, summary)
            error = sys.exc_info()[1]
            if isinstance(error, BackfillError):
                error.summary = summary
    return summary


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM off for the few milliseconds of the final writes."""
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in held}
    for sig in held:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_summary(
    settings: Settings,
    validated: Validated,
    run: Run,
    started: float,
    status: str,
) -> dict[str, Any]:
    ckpt = run.checkpoint
    summary = base_summary(settings, validated, started)
    summary["rejected"][Reason.API_REJECTED.code] = validated.rejects.api_rejected
    send_s = max(time.monotonic() - (run.counters.send_started or time.monotonic()), 1e-9)
    summary.update(
        {
            "status": status,
            "events_imported": ckpt.events_imported,
            "events_total": validated.verdicts.rows_valid,
            "events_settled": ckpt.events_imported + ckpt.events_refused,
            "api_rejected": ckpt.events_refused,
            "requests": ckpt.requests,
            "retries": dict(ckpt.retries),
            "splits": run.stats.splits,
            "event_time": None if settings.columns.time else iso_utc(ckpt.event_time_ms),
            "project_id": settings.project_id,
            "api_url": settings.import_url,
            "runs": ckpt.runs,
            "this_run": {
                "requests": run.stats.requests,
                "retries": dict(run.stats.retries),
                "events_imported": run.stats.events_imported,
                "events_refused": run.stats.events_refused,
                "send_s": round(send_s, 3),
            },
            "elapsed_s": round(time.time() - started, 3),
            "events_per_s": round(run.stats.events_imported / send_s, 1),
        }
    )
    return summary
