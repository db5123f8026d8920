"""The pairs a run sent, re-derived from its input and its checkpoint, never held as strings.

A run sends, for each valid row its checkpoint records as done and Mixpanel did not refuse by
name (``api_rejected`` in ``rejects.csv``), one event whose ``$insert_id`` is a function of the
pair and the event kind alone (``events.insert_ids``). So the run's events can be named again
from the input: validation is deterministic, the done rows and the event time are in the
checkpoint. Each pair is named by a 64-bit key, the first 16 hex digits of its
``$insert_id`` read as a number, with the UTC day of its event time: a chunk at a time, for
the key index (``index``), which keeps them on disk past its budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from backfill.commands.pipeline import judge_as_run
from backfill.config.settings import Settings
from backfill.folder.checkpoint import Checkpoint
from backfill.folder.files import formula_unsafe
from backfill.folder.rejects import REJECTS_FILE, file_ids, recorded_refusals
from backfill.read import Chunk, Dataset
from backfill.send.events import insert_ids, merge_mask
from backfill.validation.details import chunk_reasons
from backfill.validation.judge import Verdicts
from backfill.validation.reasons import Reason
from backfill.validation.rules import device_ids
from backfill.validation.times import to_epoch_ms

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_DAY_MS = 86_400_000
_NIBBLE = np.full(256, 0, dtype=np.uint64)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint64)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)


@dataclass(frozen=True)
class SentChunk:
    """The sent pairs of one chunk: where they are, their ids, keys and event days."""

    file: str
    file_rows: I64
    anon: pa.Array
    identified: pa.Array
    keys: U64
    days: I64


def hex_keys(ids: pa.Array) -> U64:
    """The first 16 hex digits of each ``$insert_id`` (32 hex digits each) as a uint64."""
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=n + 1, offset=ids.offset * 4)
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64)
    keys = np.zeros(n, dtype=np.uint64)
    for i in range(16):
        keys = (keys << np.uint64(4)) | _NIBBLE[data[starts + i]]
    return keys


def key_of(insert_id: str) -> int | None:
    """The key of one exported ``$insert_id``, or None when it cannot be one of ours."""
    if len(insert_id) != 32:
        return None
    try:
        return int(insert_id[:16], 16)
    except ValueError:
        return None


def event_names(settings: Settings) -> list[str]:
    """The names of the events a run of these settings sends."""
    if settings.simplified:
        return [settings.pairing_event]
    return ["$identify", "$merge"] if settings.non_uuid_anon == "merge" else ["$identify"]


def judge_again(settings: Settings, dataset: Dataset, out_dir: Path, started_ms: int) -> Verdicts:
    """Every row's verdict, exactly as the run judged it (``pipeline.judge_and_report``):
    "in the future" measured from the run's fixed start, never from today (a row refused as
    future-dated then is valid now, and was never sent)."""
    return judge_as_run(settings, dataset, now_ms=started_ms, spill_dir=out_dir)


def refused_rows(out_dir: Path) -> set[tuple[str, int]]:
    """(file, row) of each pair Mixpanel refused by name: those stay in rejects.csv only.

    A file is known by its fingerprint, as the run knows it (``rejects.file_ids``), so another
    spelling of its path still matches; a line of an older version, by its file's name.
    """
    return {
        (line[6] or formula_unsafe(line[5]), int(line[0]))
        for line in recorded_refusals(out_dir / REJECTS_FILE)
    }


def sent_chunks(
    settings: Settings, dataset: Dataset, verdicts: Verdicts, ckpt: Checkpoint, out_dir: Path
) -> Iterator[SentChunk]:
    """The pairs the run sent, chunk by chunk, in row order."""
    refused = refused_rows(out_dir)
    ids = file_ids(dataset) if refused else {}
    started = ckpt.started_ms  # as the run parsed its times
    for chunk in dataset():
        rows = np.arange(chunk.first_row, chunk.end_row, dtype=np.int64)
        ok = chunk_reasons(chunk, verdicts) == Reason.VALID
        ok &= ckpt.done.contains(rows)
        name = dataset.files[chunk.file_index].name
        if refused:
            within = rows - chunk.first_row + chunk.file_row
            fid = ids.get(name, "")
            gone = [(fid, r) in refused or (name, r) in refused for r in within.tolist()]
            ok &= ~np.array(gone, dtype=bool)
        if ok.any():
            yield _sent(settings, chunk, np.flatnonzero(ok), name, ckpt.event_time_ms, started)


def _sent(
    settings: Settings, chunk: Chunk, idx: npt.NDArray[np.intp], name: str, event_ms: int, now: int
) -> SentChunk:
    take = pa.array(idx)
    anon, ident = chunk.anon.take(take), chunk.identified.take(take)
    if settings.columns.time:
        assert chunk.time is not None
        times = to_epoch_ms(chunk.time.take(take), now)[0]
    else:
        times = np.full(len(idx), event_ms, dtype=np.int64)
    if settings.simplified:
        ids = insert_ids(device_ids(anon), ident, kind="pair")
    elif settings.non_uuid_anon == "merge" and (merge := merge_mask(anon)).any():
        plain, merged = insert_ids(anon, ident), insert_ids(anon, ident, kind="$merge")
        ids = pa.array(np.where(merge, merged.to_numpy(False), plain.to_numpy(False)), pa.string())
    else:
        ids = insert_ids(anon, ident)
    return SentChunk(name, idx + chunk.file_row, anon, ident, hex_keys(ids), times // _DAY_MS)
