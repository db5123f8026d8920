"""The producer of a run: the input read again, as batches of the valid pairs not yet done.

``produce_batches`` re-reads the validated input and cuts the valid rows not yet done into
batches whose spans tile the file; ``Producer`` steps it one ``next()`` at a time from
worker threads and closes it (and the input's readers) whatever ends the run. A stop (a
signal, or the end of the send) is checked between chunks, so it costs at most one chunk's
work, and nothing is yielded after it: not even the batch held back, whose span would
reach rows never read.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from dataclasses import replace

import numpy as np
import pyarrow as pa

from backfill.commands.validated import Validated
from backfill.errors import Interrupted
from backfill.folder.intervals import RowIntervals
from backfill.read import Chunk
from backfill.send.events import Batch, Encoder, Pairs
from backfill.validation.details import chunk_reasons
from backfill.validation.reasons import Reason
from backfill.validation.times import to_epoch_ms


class _Stopped(Exception):
    """The producer was asked to stop: what it had not yielded is not sent (nor done)."""


class Producer:
    """The batches of ``produce_batches``, stepped one ``next()`` at a time in worker threads.

    ``next`` returns None at the end of the input, or once ``stop`` is set (checked between
    chunks, so a stop costs at most one chunk's work); ``exhausted`` tells the two apart.
    ``close`` (also from a worker thread) waits for a ``next`` under way, then closes the
    generator and with it the input's readers.
    """

    def __init__(self, batches: Generator[Batch, None, None], stop: threading.Event) -> None:
        self._batches = batches
        self._stop = stop
        self._lock = threading.Lock()
        self.exhausted = False

    def next(self) -> Batch | None:
        """The next batch; None at the end or once stopped."""
        with self._lock:
            if self._stop.is_set() or self.exhausted:
                return None
            try:
                return next(self._batches)
            except StopIteration:
                self.exhausted = True
            except (_Stopped, Interrupted):
                pass  # a stop, or a signal seen by the reader before the loop saw it
            return None

    def close(self) -> None:
        """Close the generator (its readers with it), once no ``next`` is under way."""
        with self._lock:
            self._batches.close()


def _until(chunks: Iterator[Chunk], stop: threading.Event | None) -> Iterator[Chunk]:
    """``chunks``, until ``stop`` is set; closed on the way out either way."""
    try:
        for chunk in chunks:
            if stop is not None and stop.is_set():
                raise _Stopped
            yield chunk
    finally:
        close = getattr(chunks, "close", None)  # a generator's: its readers with it
        if close is not None:
            close()


def produce_batches(
    validated: Validated,
    done: RowIntervals,
    encoder: Encoder,
    *,
    event_time_ms: int,
    time_column: bool,
    stop: threading.Event | None = None,
) -> Generator[Batch, None, None]:
    """Re-read the input and yield batches of the valid rows not yet done, spans tiling the file.

    Runs in a worker thread, one ``next()`` at a time; the queue it feeds bounds how far ahead
    of the senders it gets. Once ``stop`` is set it raises ``_Stopped`` at the next chunk,
    yielding nothing more (not even the batch it holds back, whose span would be too long).
    """
    pairs = (
        _pairs_to_send(chunk, validated, done, event_time_ms if not time_column else None)
        for chunk in _until(validated.source(), stop)
    )
    # Hold one batch back so that the last one's span can reach the end of the file.
    start = 1
    previous: Batch | None = None
    for batch in _full_batches(pairs, encoder):
        if previous is not None:
            yield replace(previous, span=(start, previous.last_row))
            start = previous.last_row + 1
        previous = batch
    if previous is not None:
        yield replace(previous, span=(start, validated.verdicts.rows_read))


def _pairs_to_send(
    chunk: Chunk, validated: Validated, done: RowIntervals, event_time_ms: int | None
) -> Pairs | None:
    """The valid rows of ``chunk`` not yet done, with their times (None if there are none)."""
    rows = np.arange(chunk.first_row, chunk.end_row, dtype=np.int64)
    ok = chunk_reasons(chunk, validated.verdicts) == Reason.VALID
    ok &= ~done.contains(rows)
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    take = pa.array(idx)
    if event_time_ms is None:
        assert chunk.time is not None
        times = to_epoch_ms(chunk.time.take(take), validated.now_ms)[0]
    else:
        times = np.full(len(idx), event_time_ms, dtype=np.int64)
    return Pairs(rows[idx], chunk.anon.take(take), chunk.identified.take(take), times)


def _full_batches(chunks: Iterator[Pairs | None], encoder: Encoder) -> Iterator[Batch]:
    """Batches of ``batch_size`` events across chunk ends; only the last may be smaller."""
    carry: list[Pairs] = []
    carried = 0
    size = encoder.batch_size
    for pairs in chunks:
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
