"""Wiring for the CLI and the Python API: read → validate → report (→ run, with the checkpoint).

``validate`` and ``run`` take checked ``Settings`` and return a ``Summary``; they print
nothing (a ``Progress`` draws on stderr when the caller asks for one) and raise only
``BackfillError``s. Validation always runs in full before anything is sent, so
``rejects.csv`` is complete and on disk before the first request; the send pass then re-reads
the input and streams the valid pairs to the sender, never holding them all.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from backfill.commands.validated import Validated
from backfill.config.settings import Credentials, Settings
from backfill.errors import BackfillError, InputChanged, InputChangedWhileSending, Interrupted
from backfill.folder import location
from backfill.folder.checkpoint import CHECKPOINT_FILE, Checkpoint, SendState, token_digest
from backfill.folder.files import atomic_write_json, read_json_dict
from backfill.folder.lock import FolderLock
from backfill.folder.rejects import RejectsFile
from backfill.read import DEFAULT_CHUNK_ROWS, Chunk, ChunkSource, Dataset, open_dataset
from backfill.read.verified import Verified
from backfill.report.page import write_report
from backfill.report.page.aggregates import Collector
from backfill.report.progress import Progress, Snapshot
from backfill.report.summary import (
    SUMMARY_FILE,
    FileRows,
    RowRef,
    RunStatus,
    Summary,
    TrimmedIds,
)
from backfill.send.events import merge_mask
from backfill.validation.details import chunk_reasons, reject_rows
from backfill.validation.judge import Verdicts, judge
from backfill.validation.reasons import Reason, zero_counts
from backfill.validation.rules import Rules, devices
from backfill.validation.times import iso_utc, now_ms

if TYPE_CHECKING:
    # The send path (aiohttp and all) is imported by a run only: a dry run starts faster.
    from backfill.commands.send_phase import SendPhase


def validate(
    settings: Settings, *, progress: Progress | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Summary:
    """The dry run: judge every row, write ``rejects.csv`` and ``summary.json``, send nothing."""
    started = time.time()
    progress = progress or Progress(enabled=False)
    dataset = open_source(settings, chunk_rows)
    out_dir = location.prepare(
        settings,
        dataset,
        command="validate",
        check=lambda out: location.refuse_another_input(
            out, lambda: event_identity(settings, dataset)["input"]
        ),
    )
    with FolderLock(out_dir, command="validate"):
        # In the folder of a run of this input, rows are judged as that run judges them.
        ckpt = Checkpoint.read(out_dir)
        same = ckpt is not None and ckpt.identity.get("input") == dataset.fingerprint()
        now = ckpt.started_ms if ckpt is not None and same else None
        try:
            validated = judge_and_report(settings, dataset, dataset, out_dir, progress, now=now)
        finally:
            progress.close()
        validated.rejects.close()
        earlier = read_json_dict(out_dir / CHECKPOINT_FILE)
        valid = validated.verdicts.rows_valid
        summary = replace(
            _judged(RunStatus.VALIDATED, settings, validated, out_dir, started),
            # A dry run in a folder where a run already sent pairs must not report zero.
            events_imported=_count_of((earlier or {}).get("events_imported")),
            batches_planned=math.ceil(valid / settings.batch_size),
            rate_per_s=settings.rate_per_s,
            estimated_send_s=round(valid / settings.rate_per_s, 1),
        )
        if earlier is None:
            # In a run's folder, summary.json and report.html stay the run's: a dry run must
            # not turn a finished run's status into "validated".
            summary = write_report(summary, validated, settings)
            atomic_write_json(out_dir / SUMMARY_FILE, summary.to_json())
    return summary


def _count_of(value: object) -> int:
    """A count read from a checkpoint that may be damaged: 0 unless a non-negative int."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def run(
    settings: Settings,
    credentials: Credentials,
    *,
    progress: Progress | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    record_folder: bool = True,
    notify: Callable[[str], None] | None = None,
) -> Summary:
    """Validate, then send every valid pair not yet done; resumable; returns the summary.

    Raises Aborted (exit 3) or Interrupted (exit 130) after writing the checkpoint and a
    summary with status ``aborted`` / ``interrupted`` (also on the error's ``summary``).
    ``record_folder=False`` (a rehearsal) keeps the folder out of the registry. ``notify``
    receives the line to show when the run replaces a checkpoint that settled nothing.
    """
    started = time.time()
    progress = progress or Progress(enabled=False)
    dataset = open_source(settings, chunk_rows)
    out_dir = location.prepare(settings, dataset, command="run", record=record_folder)
    with FolderLock(out_dir, command="run"):
        ckpt = _open_checkpoint(settings, dataset, out_dir, notify)
        try:
            # Later passes must read the bytes this one judges: only those are ever sent.
            validated = judge_and_report(
                settings,
                dataset,
                Verified(dataset),
                out_dir,
                progress,
                keep_api_rejects=not settings.restart,
                # "In the future" means after the migration's start, in every run of it.
                now=ckpt.started_ms,
                accept=lambda verdicts: _resumable(ckpt, verdicts),
            )
        except BaseException:
            progress.close()
            raise
        v = validated.verdicts
        ckpt.judged(rows_read=v.rows_read, rows_valid=v.rows_valid, rejected=v.counts())
        return _send(settings, credentials, validated, ckpt, progress, started)


def _open_checkpoint(
    settings: Settings, dataset: Dataset, out_dir: Path, notify: Callable[[str], None] | None
) -> Checkpoint:
    """The run's checkpoint, resumed or new, written at once: the event time is fixed from
    now on, and ``status`` sees the run."""
    ckpt = Checkpoint.open(
        out_dir,
        event_identity(settings, dataset),
        event_time_ms=settings.event_time_ms,
        start_ms=now_ms(),
        restart=settings.restart,
    )
    if ckpt.note and notify:
        notify(ckpt.note)
    ckpt.write()
    return ckpt


def _send(
    settings: Settings,
    credentials: Credentials,
    validated: Validated,
    ckpt: Checkpoint,
    progress: Progress,
    started: float,
) -> Summary:
    """The send phase and the final writes, whatever ends it."""
    from backfill.commands.send_phase import SendPhase, drive, signals_to

    already = ckpt.done.covers(1, validated.verdicts.rows_read)
    sending = SendPhase(settings, credentials, validated, ckpt, progress=progress)
    progress.follow(sending.snapshot)
    status = RunStatus.ABORTED  # whatever stops the run early, unless it says otherwise below
    try:
        try:
            drive(sending)
        except InputChanged as e:
            raise InputChangedWhileSending(str(e)) from None
        status = RunStatus.COMPLETED
    except (Interrupted, KeyboardInterrupt):
        status = RunStatus.INTERRUPTED
        raise
    finally:
        # The final writes take milliseconds: a Ctrl-C now would only leave them half done.
        with signals_to(None):
            final = replace(sending.counts(), in_flight=None)
            progress.follow(lambda: Snapshot(status.value, sending=final))
            progress.close()
            validated.rejects.close()
            summary = _run_summary(settings, validated, sending, started, status, already)
            summary = write_report(summary, validated, settings, trace=sending.trace)
            if status is RunStatus.COMPLETED:
                ckpt.state = SendState.COMPLETED
                ckpt.write()
            atomic_write_json(summary.out / SUMMARY_FILE, summary.to_json())
        error = sys.exc_info()[1]
        if isinstance(error, BackfillError):
            error.summary = summary
    return summary


def open_source(settings: Settings, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Dataset:
    """The input as a dataset: files resolved, every header checked, before any work."""
    return open_dataset(
        settings.source,
        settings.format,
        settings.columns,
        delimiter=settings.delimiter,
        chunk_rows=chunk_rows,
    )


def judge_and_report(
    settings: Settings,
    dataset: Dataset,
    source: ChunkSource,
    out_dir: Path,
    progress: Progress,
    *,
    keep_api_rejects: bool = True,
    now: int | None = None,
    accept: Callable[[Verdicts], None] | None = None,
) -> Validated:
    """Judge every row and write ``rejects.csv`` (validation part, earlier refusals kept).

    ``now`` (epoch ms) is what ``invalid_time`` calls the future from: a run's fixed start.
    ``accept`` sees the verdicts before ``rejects.csv`` is rewritten, and may refuse them (a
    resume whose rows judge otherwise), leaving the report of the earlier runs as it was.
    """
    started = now_ms() if now is None else now
    rows = [0]

    def on_rows(n: int) -> None:
        rows[0] += n
        progress.tick()

    collector = (
        Collector(
            dataset, max_cluster_size=_cluster_limit(settings), time_column=settings.columns.time
        )
        if settings.report
        else None
    )
    progress.follow(lambda: Snapshot("validating", rows_read=rows[0]))
    verdicts = judge_as_run(
        settings, source, now_ms=started, spill_dir=out_dir, on_rows=on_rows, observe=collector
    )
    try:
        if accept is not None:
            accept(verdicts)
        progress.follow(lambda: Snapshot("writing rejects", rows_read=rows[0]))
        rejects = RejectsFile(out_dir, dataset, keep_api_rejects=keep_api_rejects)
        try:
            kinds = _write_rejects(settings, dataset, source, verdicts, started, rejects, collector)
        except BaseException:
            rejects.close()
            raise
    finally:
        verdicts.close()  # the references were for the report; sending needs the reasons only
    return Validated(source, dataset, verdicts, started, rejects, kinds.counts, collector)


def judge_as_run(
    settings: Settings,
    source: ChunkSource,
    *,
    now_ms: int,
    spill_dir: Path,
    on_rows: Callable[[int], None] | None = None,
    observe: Collector | None = None,
) -> Verdicts:
    """Every row's verdict under ``settings``, "the future" measured from ``now_ms``: the one
    way a run, a dry run and ``verify`` judge, so all three judge each row alike.

    ``spill_dir``: temp files of a big input go next to the reports, a disk the user chose for
    this run, where the system's temp folder may be a small RAM disk.
    """
    return judge(
        devices(source) if settings.simplified else source,
        now_ms=now_ms,
        max_cluster_size=_cluster_limit(settings),
        on_rows=on_rows,
        rules=Rules(settings.id_merge, settings.non_uuid_anon),
        spill_dir=spill_dir,
        observe=observe,
    )


def _cluster_limit(settings: Settings) -> int | None:
    """``--max-cluster-size``; None for Simplified ID Merge, which has no 500-id cluster."""
    return None if settings.simplified else settings.max_cluster_size


def _write_rejects(
    settings: Settings,
    dataset: Dataset,
    source: ChunkSource,
    verdicts: Verdicts,
    now: int,
    rejects: RejectsFile,
    collector: Collector | None,
) -> EventKinds:
    """The validation part of ``rejects.csv``, committed; the events the valid pairs make."""
    rules = Rules(settings.id_merge, settings.non_uuid_anon)
    kinds = EventKinds(settings)
    for chunk in source():
        lines = reject_rows(chunk, verdicts, now, dataset, rules)
        rejects.write(lines if collector is None else collector.see(chunk, lines, dataset))
        kinds.count(chunk, verdicts)
    rejects.commit()
    return kinds


class EventKinds:
    """How many events of each kind the valid pairs make (``$identify``, ``$merge``, pairing)."""

    def __init__(self, settings: Settings) -> None:
        self.merges = not settings.simplified and settings.non_uuid_anon == "merge"
        self.main = settings.pairing_event if settings.simplified else "$identify"
        self.counts: dict[str, int] = {self.main: 0}
        if self.merges:
            self.counts["$merge"] = 0

    def count(self, chunk: Chunk, verdicts: Verdicts) -> None:
        """Add the valid rows of ``chunk``."""
        valid = chunk_reasons(chunk, verdicts) == Reason.VALID
        merges = 0
        if self.merges and valid.any():
            merges = int(merge_mask(chunk.anon.filter(pa.array(valid))).sum())
            self.counts["$merge"] += merges
        self.counts[self.main] += int(valid.sum()) - merges


def _resumable(ckpt: Checkpoint, verdicts: Verdicts) -> None:
    """Refuse a checkpoint whose done rows do not fit these verdicts (CheckpointMismatch)."""
    ckpt.check_rows(verdicts.rows_read)
    ckpt.check_verdicts(verdicts_digest(verdicts))


def verdicts_digest(verdicts: Verdicts) -> str:
    """SHA-256 of which rows are to be sent (one bit a row), in blocks: memory stays small."""
    digest = hashlib.sha256(str(verdicts.rows_read).encode())
    block = 1 << 24
    for start in range(0, verdicts.rows_read, block):
        valid = verdicts.reasons[start : start + block] == Reason.VALID
        digest.update(np.packbits(valid).tobytes())
    return digest.hexdigest()


def event_identity(settings: Settings, dataset: Dataset) -> dict[str, Any]:
    """What the checkpoint is tied to: the input, the project and every event setting."""
    return {
        "input": dataset.fingerprint(),
        "project_id": settings.project_id,
        "format": dataset.format,
        "anon_column": settings.columns.anon,
        "identified_column": settings.columns.identified,
        "time_column": settings.columns.time,
        "max_cluster_size": settings.max_cluster_size,
        "token": token_digest(settings.token),
        "id_merge": settings.id_merge,
        # Each mode's own setting, so changing the other mode's does not refuse the run.
        **(
            {"pairing_event": settings.pairing_event}
            if settings.simplified
            else {"non_uuid_anon": settings.non_uuid_anon}
        ),
    }


def _judged(
    status: RunStatus, settings: Settings, validated: Validated, out_dir: Path, started: float
) -> Summary:
    """The summary of what validation found: the part every command shares."""
    v = validated.verdicts
    rejected = zero_counts()
    rejected.update(v.counts())
    rejected[Reason.API_REJECTED.code] = validated.rejects.api_rejected
    return Summary(
        status=status,
        out=out_dir,
        input=validated.dataset.name,
        format=validated.dataset.format,
        files=tuple(FileRows(f.name, f.rows or 0) for f in validated.dataset.files),
        rows_read=v.rows_read,
        rows_valid=v.rows_valid,
        rejected=rejected,
        id_merge=settings.id_merge,
        events_by_kind=dict(validated.events_by_kind),
        hash_collisions_resolved=v.collisions,
        trimmed_ids=_trimmed_ids(settings, validated),
        started_at=_iso(started),
        finished_at=_iso(time.time()),
        elapsed_s=round(time.time() - started, 3),
    )


def _trimmed_ids(settings: Settings, validated: Validated) -> TrimmedIds:
    """The trimmed ids' count, and the first one by its file, row and column name."""
    trimmed = validated.verdicts.trimmed
    if trimmed.first is None:
        return TrimmedIds(trimmed.count)
    file_index, row, role = trimmed.first
    column = settings.columns.anon if role == "anon" else settings.columns.identified
    name = validated.dataset.files[file_index].name
    return TrimmedIds(trimmed.count, RowRef(name, row, column))


def _run_summary(
    settings: Settings,
    validated: Validated,
    sending: SendPhase,
    started: float,
    status: RunStatus,
    already_complete: bool,
) -> Summary:
    ckpt = sending.checkpoint
    counts = sending.counts()
    this_run = sending.this_run()
    return replace(
        _judged(status, settings, validated, sending.out_dir, started),
        events_imported=counts.imported,
        events_total=counts.pairs_total,
        events_settled=counts.settled,
        requests=ckpt.requests,
        retries=dict(ckpt.retries),
        splits=sending.stats.splits,
        event_time=None if settings.columns.time else iso_utc(ckpt.event_time_ms),
        project_id=settings.project_id,
        api_url=settings.import_url,
        runs=ckpt.runs,
        this_run=this_run,
        events_per_s=this_run.events_per_s,
        already_complete=already_complete and this_run.requests == 0,
    )


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
