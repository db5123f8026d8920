"""Why each refused row was refused: the ``rejects.csv`` line of every row a verdict refused.

The verdicts say which rule refused a row (one reason byte each); a person needs the sentence:
which id, which placeholder, which earlier row it repeats or conflicts with (named as the
person finds it: "147", or "147 of part-0002.parquet" across files), why its time is refused.
Details are built one reason at a time, since most are one sentence or one with a row number.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from backfill.errors import InputChanged
from backfill.folder.rejects import RejectRow
from backfill.read import Chunk, Dataset
from backfill.validation.judge import Verdicts
from backfill.validation.reasons import Reason
from backfill.validation.rules import Rules, describe
from backfill.validation.times import TimeStatus, to_epoch_ms
from backfill.validation.times import describe as describe_time


def reject_rows(
    chunk: Chunk, verdicts: Verdicts, now: int, dataset: Dataset, rules: Rules
) -> Iterator[RejectRow]:
    """The rejects.csv rows of one chunk, with a human detail each; rows count within the file."""
    reasons = chunk_reasons(chunk, verdicts)
    bad = np.flatnonzero(reasons)
    if len(bad) == 0:
        return
    take = pa.array(bad)
    anons = [a or "" for a in chunk.anon.take(take).to_pylist()]
    idents = [i or "" for i in chunk.identified.take(take).to_pylist()]
    values = reasons[bad]
    details = [""] * len(bad)
    # One reason at a time: most details are the same sentence, or one with a row number.
    for value in np.unique(values).tolist():
        at = np.flatnonzero(values == value)
        reason = Reason(value)
        if reason in (Reason.DUPLICATE_PAIR, Reason.CONFLICTING_ANON_ID):
            refs = row_references(dataset, verdicts.first_rows(bad[at] + chunk.first_row))
            texts = [describe(reason, None, None, first_row=ref) for ref in refs]
        elif reason is Reason.INVALID_TIME:
            texts = _time_details(chunk, at, bad, now)
        elif reason in _ID_REASONS:
            texts = [describe(reason, anons[k], idents[k], rules=rules) for k in at.tolist()]
        else:
            same = describe(reason, None, None, max_cluster_size=verdicts.max_cluster_size)
            texts = [same] * len(at)
        for k, text in zip(at.tolist(), texts, strict=True):
            details[k] = text
    name = dataset.files[chunk.file_index].name
    rows = (bad + chunk.file_row).tolist()
    codes = [_CODES[v] for v in values.tolist()]
    for line in zip(rows, anons, idents, codes, details, itertools.repeat(name), strict=False):
        yield RejectRow(*line)


_CODES = {int(r): r.code for r in Reason}
#: Reasons whose detail depends on the row's ids.
_ID_REASONS = (Reason.MISSING_ANON_ID, Reason.INVALID_ANON_ID, Reason.INVALID_IDENTIFIED_ID)


def _time_details(
    chunk: Chunk, at: npt.NDArray[np.intp], bad: npt.NDArray[np.intp], now: int
) -> list[str]:
    """Why each of these rows' times is refused (``at`` indexes ``bad``)."""
    assert chunk.time is not None
    raw = chunk.time.take(pa.array(bad[at]))
    _, status = to_epoch_ms(raw, now)
    return [
        describe_time(TimeStatus(s), "" if t is None else str(t))
        for s, t in zip(status.tolist(), raw.to_pylist(), strict=True)
    ]


def row_references(dataset: Dataset, rows: npt.NDArray[np.int64]) -> list[str]:
    """Dataset rows as a person finds them: "147", or "147 of part-0002.parquet" across files."""
    if len(dataset.files) == 1:
        return [str(r) for r in rows.tolist()]
    files, within = dataset.locate(np.maximum(rows, 1))
    names = [f.name for f in dataset.files]
    return [f"{r} of {names[i]}" for i, r in zip(files.tolist(), within.tolist(), strict=True)]


def chunk_reasons(chunk: Chunk, verdicts: Verdicts) -> npt.NDArray[np.uint8]:
    """The verdicts of a chunk's rows, re-read after judging; a grown file is refused."""
    if chunk.end_row - 1 > verdicts.rows_read:
        raise InputChanged(
            "the input file grew while backfill was reading it: let the export finish, "
            "then run the same command again"
        )
    return verdicts.reasons[chunk.first_row - 1 : chunk.end_row - 1]
