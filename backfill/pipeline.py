"""One run, wired: read → validate → report (→ events → send, with the checkpoint).

Validation always runs in full before anything is sent, so ``rejects.csv`` is complete and on
disk before the first request; the send pass then re-reads the input and streams the valid
pairs to the sender, never holding them all.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from backfill.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_INTERVAL_S,
    Checkpoint,
    RowIntervals,
    RunLock,
    file_fingerprint,
    token_digest,
)
from backfill.errors import BackfillError, InputError, Interrupted
from backfill.events import Batch, Encoder, Pairs
from backfill.files import atomic_write_json, read_json_dict
from backfill.progress import Counters, Progress
from backfill.read import DEFAULT_CHUNK_ROWS, Chunk, ChunkSource, open_chunks
from backfill.reasons import Reason
from backfill.report import SUMMARY_FILE, RejectRow, RejectsFile, zero_counts
from backfill.send import SendConfig, Sender, SendStats, Settled
from backfill.settings import Credentials, Settings, credentials_from_env
from backfill.times import TimeStatus, iso_utc, now_ms, to_epoch_ms
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
    keep_api_rejects: bool = True,
) -> Validated:
    """Judge every row and write ``rejects.csv`` (validation part, earlier refusals kept)."""
    source = open_chunks(settings.input_path, settings.format, settings.columns, chunk_rows)
    started = now_ms()

    def on_rows(n: int) -> None:
        counters.rows_read += n
        progress.tick()

    progress.phase("validating")
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    # Temp files of a big input go next to the reports: a disk the user chose for this run,
    # where the system's temp folder may be a small RAM disk.
    verdicts = judge(
        source,
        now_ms=started,
        max_cluster_size=settings.max_cluster_size,
        on_rows=on_rows,
        spill_dir=settings.out_dir,
    )
    counters.rows_total = verdicts.rows_read
    counters.rejected = verdicts.rows_read - verdicts.rows_valid
    progress.phase("writing rejects")
    rejects = RejectsFile(settings.out_dir, keep_api_rejects=keep_api_rejects)
    try:
        for chunk in source():
            rejects.write(reject_rows(chunk, verdicts, started))
        rejects.commit()
    except BaseException:
        rejects.close()
        raise
    finally:
        verdicts.close()  # the references were for the report; sending needs the reasons only
    counters.rejected = verdicts.rows_read - verdicts.rows_valid + rejects.api_rejected
    return Validated(source, verdicts, started, rejects)


def chunk_reasons(chunk: Chunk, verdicts: Verdicts) -> npt.NDArray[np.uint8]:
    """The verdicts of a chunk's rows, re-read after judging; a grown file is refused."""
    if chunk.end_row - 1 > verdicts.rows_read:
        raise InputError(
            "the input file grew while backfill was reading it: let the export finish, "
            "then run the same command again"
        )
    return verdicts.reasons[chunk.first_row - 1 : chunk.end_row - 1]


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


def produce_batches(
    validated: Validated,
    done: RowIntervals,
    encoder: Encoder,
    *,
    event_time_ms: int,
    time_column: bool,
    counters: Counters,
) -> Iterator[Batch]:
    """Re-read the input and yield batches of the valid rows not yet done, spans tiling the file.

    Runs in a worker thread, one ``next()`` at a time; the queue it feeds bounds how far ahead
    of the senders it gets.
    """
    verdicts = validated.verdicts
    rows_total = verdicts.rows_read

    def pairs_of(chunk: Chunk) -> Pairs | None:
        counters.rows_read = chunk.end_row - 1
        rows = np.arange(chunk.first_row, chunk.end_row, dtype=np.int64)
        ok = chunk_reasons(chunk, verdicts) == Reason.VALID
        ok &= ~done.contains(rows)
        if not ok.any():
            return None
        idx = np.flatnonzero(ok)
        take = pa.array(idx)
        if time_column:
            assert chunk.time is not None
            times = to_epoch_ms(chunk.time.take(take), validated.now_ms)[0]
        else:
            times = np.full(len(idx), event_time_ms, dtype=np.int64)
        return Pairs(rows[idx], chunk.anon.take(take), chunk.identified.take(take), times)

    def batches() -> Iterator[Batch]:
        carry: list[Pairs] = []
        carried = 0
        size = encoder.batch_size
        for chunk in validated.source():
            pairs = pairs_of(chunk)
            if pairs is None:
                continue
            carry.append(pairs)
            carried += len(pairs)
            if carried < size:
                continue
            whole = Pairs.concat(carry)
            full = carried - carried % size
            yield from encoder.batches(whole.slice(0, full))
            carry = [whole.slice(full, carried)] if full < carried else []
            carried -= full
        if carried:
            yield from encoder.batches(Pairs.concat(carry))

    # Hold one batch back so that the last one's span can reach the end of the file.
    start = 1
    previous: Batch | None = None
    for batch in batches():
        if previous is not None:
            yield replace(previous, span=(start, previous.last_row))
            start = previous.last_row + 1
        previous = batch
    if previous is not None:
        yield replace(previous, span=(start, rows_total))


@dataclass
class _RunState:
    checkpoint: Checkpoint
    rejects: RejectsFile
    counters: Counters
    progress: Progress
    stats: SendStats
    dirty: bool = False


class _Stop:
    """SIGINT/SIGTERM: the first asks for a graceful stop, the second for an immediate one."""

    def __init__(self) -> None:
        self.signals = 0
        self.graceful = asyncio.Event()
        self.hard = asyncio.Event()

    def __call__(self) -> None:
        self.signals += 1
        (self.graceful if self.signals == 1 else self.hard).set()


async def _send_all(
    settings: Settings,
    creds: Credentials,
    validated: Validated,
    state: _RunState,
    *,
    stop: _Stop,
) -> None:
    ckpt = state.checkpoint
    encoder = Encoder(token=settings.token, batch_size=settings.batch_size)
    config = SendConfig(
        import_url=settings.import_url,
        credentials=creds,
        project_id=settings.project_id,
        concurrency=settings.concurrency,
        rate_per_s=settings.rate_per_s,
        max_attempts=settings.max_attempts,
        timeout_s=settings.timeout_s,
        retry_base_s=settings.retry_base_s,
        batch_size=settings.batch_size,
    )
    counters = state.counters
    validation_rejects = validated.verdicts.rows_read - validated.verdicts.rows_valid

    def on_settled(settled: Settled) -> None:
        refused = [
            (r.row, r.anon, r.identified, Reason.API_REJECTED.code, r.message)
            for r in settled.refused
        ]
        state.rejects.add_api_rejects(refused)
        first, last = settled.batch.span
        ckpt.settle(first, last, settled.imported, len(settled.refused))
        counters.events_imported = ckpt.events_imported
        counters.events_imported_this_run = state.stats.events_imported
        counters.rejected_sent = ckpt.events_refused
        counters.events_sent = state.stats.events_sent
        counters.rejected = validation_rejects + len(state.rejects.api_rows)
        state.dirty = True
        state.progress.tick()

    def on_retry() -> None:
        counters.retries += 1

    sender = Sender(config, encoder, on_settled, stats=state.stats, on_retry=on_retry)
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=settings.concurrency + 2)
    batches = produce_batches(
        validated,
        # A copy: the producer thread must not read what the event loop is changing. Rows
        # settled during this run are never produced twice anyway.
        ckpt.done.copy(),
        encoder,
        event_time_ms=ckpt.event_time_ms,
        time_column=settings.columns.time is not None,
        counters=counters,
    )

    async def feed() -> None:
        while True:
            batch = await asyncio.to_thread(next, batches, None)
            if batch is None:
                break
            await queue.put(batch)
        for _ in range(settings.concurrency):
            await queue.put(None)

    async def save_periodically() -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            await _save(state)
            counters.events_sent = state.stats.events_sent
            state.progress.tick()

    feeder: asyncio.Task[None] | None = None

    async def pump() -> None:
        nonlocal feeder
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(feed())
            group.create_task(sender.run(queue))

    loop = asyncio.get_running_loop()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        loop.add_signal_handler(sig, stop)
    work = asyncio.create_task(pump())
    saver = asyncio.create_task(save_periodically())
    try:
        graceful = asyncio.create_task(stop.graceful.wait())
        await asyncio.wait({work, graceful}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            # Stop taking batches; let the ones in flight settle, for a bounded time.
            sender.stop()
            if feeder is not None:
                feeder.cancel()  # else it waits forever for room in a queue nobody empties
            _drain(queue, settings.concurrency)
            hard = asyncio.create_task(stop.hard.wait())
            grace = settings.timeout_s + 5.0
            await asyncio.wait({work, hard}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            hard.cancel()
            if not work.done():
                work.cancel()
        graceful.cancel()
        try:
            await work
        except asyncio.CancelledError:
            if not stop.signals:
                raise
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None
        if not stop.signals and validated.verdicts.rows_read:
            # Every batch was produced and settled, and spans tile the file: all of it is done
            # (this also covers a rerun that had nothing left to send).
            ckpt.done.add(1, validated.verdicts.rows_read)
            state.dirty = True
    finally:
        saver.cancel()
        ckpt.requests += state.stats.requests
        for cause, n in state.stats.retries.items():
            ckpt.retries[cause] = ckpt.retries.get(cause, 0) + n
        state.dirty = True
        await _save(state)
        # Only now: a further Ctrl-C must not cut the last checkpoint write short. Then the
        # handlers from before come back (asyncio would leave SIGTERM at its default: death).
        for sig, handler in before.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
    if stop.signals:
        raise Interrupted(
            f"interrupted: {ckpt.events_imported:,} events imported so far; the checkpoint is "
            "written: run the same command again to resume"
        )


def _drain(queue: asyncio.Queue[Batch | None], workers: int) -> None:
    while not queue.empty():
        queue.get_nowait()
    for _ in range(workers):
        queue.put_nowait(None)


def _first_error(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, BackfillError):
            return exc
    return eg.exceptions[0]


async def _save(state: _RunState) -> None:
    if not state.dirty:
        return
    state.dirty = False
    data = state.checkpoint.snapshot()
    fd = state.rejects.fileno()

    def write() -> None:
        # Refusals first: a span in ``done`` must never outlive its rejects.csv lines.
        if fd is not None:
            os.fsync(fd)
        state.checkpoint.write(data)

    await asyncio.shield(asyncio.to_thread(write))


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
        stats = SendStats()
        state = _RunState(ckpt, validated.rejects, counters, progress, stats)
        counters.rows_read = 0
        counters.events_total = validated.verdicts.rows_valid
        counters.events_imported = ckpt.events_imported
        counters.rejected_sent = ckpt.events_refused
        counters.send_started = time.monotonic()
        progress.phase("sending")
        status = "aborted"  # whatever stops the run early, unless it says otherwise below
        try:
            asyncio.run(_send_all(settings, creds, validated, state, stop=_Stop()))
            status = "completed"
        except (Interrupted, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            with _signals_deferred():
                counters.phase = status
                progress.close()
                validated.rejects.close()
                summary = _run_summary(settings, validated, state, started, status)
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
    state: _RunState,
    started: float,
    status: str,
) -> dict[str, Any]:
    ckpt = state.checkpoint
    summary = base_summary(settings, validated, started)
    summary["rejected"][Reason.API_REJECTED.code] = validated.rejects.api_rejected
    send_s = max(time.monotonic() - (state.counters.send_started or time.monotonic()), 1e-9)
    summary.update(
        {
            "status": status,
            "events_imported": ckpt.events_imported,
            "events_total": validated.verdicts.rows_valid,
            "events_settled": ckpt.events_imported + ckpt.events_refused,
            "api_rejected": ckpt.events_refused,
            "requests": ckpt.requests,
            "retries": dict(ckpt.retries),
            "splits": state.stats.splits,
            "event_time": None if settings.columns.time else iso_utc(ckpt.event_time_ms),
            "project_id": settings.project_id,
            "api_url": settings.import_url,
            "runs": ckpt.runs,
            "this_run": {
                "requests": state.stats.requests,
                "retries": dict(state.stats.retries),
                "events_imported": state.stats.events_imported,
                "events_refused": state.stats.events_refused,
                "send_s": round(send_s, 3),
            },
            "elapsed_s": round(time.time() - started, 3),
            "events_per_s": round(state.stats.events_imported / send_s, 1),
        }
    )
    return summary
