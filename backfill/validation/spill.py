"""Records held in memory up to a limit, then in hash partitions of one anonymous temp file.

Judging rules 6-8 needs a fingerprint of every passing row at once, and a row count has no
upper bound. A ``Store`` keeps what it is given in memory while it stays under
``limit_bytes``; past that it moves everything to disk, partitioned by key, and reads it back
one unit at a time, so the memory a store needs is set by its limit, not by the row count.

A store holds records: numeric columns of fixed dtypes, optionally one string column, and a
64-bit key (one of the numeric columns) that decides where a record goes.

* **In memory.** Numeric columns go into arrays allocated once at the limit's size. Untouched
  pages of a fresh array cost nothing, so a small input uses little, and reading back is a view,
  never a copy.
* **On disk.** When the next batch would pass the limit, the store opens one temporary file and
  flushes: the buffered records are grouped by partition (a mix of the key, spread evenly over
  ``partitions``) and each partition's records are appended as one segment, whose place the
  store remembers. Later flushes append more segments; nothing is rewritten.
* **Reading.** ``units`` yields each partition's records in the order they were added (file
  order stays file order), about ``unit_bytes`` at a time: a bigger partition is read several
  times, keeping each time the records whose key mix falls in one sub-range. Records with equal
  keys always come out in the same unit, which is all a group-by needs. Only a single key with
  more records than a unit holds makes a unit bigger than ``unit_bytes``.
* **Cleaning up.** The temp file never has a name: ``tempfile.TemporaryFile`` opens it with
  ``O_TMPFILE`` on Linux (elsewhere it creates and unlinks it at once). The disk space comes
  back when the file is closed, when the process exits, even when it is killed with SIGKILL:
  there is nothing to clean up, on any exit path. ``close`` gives it back early.
* **A full disk** (or a folder that cannot hold files) raises ``TempSpaceError`` naming the
  folder and the fix, never a traceback.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.errors import TempSpaceError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_MIX_SALT = np.uint64(0xC4CEB9FE1A85EC53)


@dataclass(frozen=True)
class Records:
    """Columns of equal length: numeric arrays and, optionally, strings (no nulls)."""

    numbers: tuple[npt.NDArray[Any], ...]
    text: pa.Array | None = None

    def __len__(self) -> int:
        return len(self.numbers[0])


@dataclass(frozen=True)
class SpillAdvice:
    """How a store's errors name its data and the fix, which depend on who uses it."""

    purpose: str
    #: After "free some space there, or ": where else the data can go.
    elsewhere: str
    #: The fix for a folder that cannot hold files.
    writable: str


VALIDATION_ADVICE = SpillAdvice(
    "validation",
    "choose a folder on a bigger disk (the run folder --out for the command line, spill_dir "
    "for the library)",
    "choose a writable folder (the run folder --out for the command line, spill_dir for the "
    "library)",
)


def key_mix(keys: npt.NDArray[Any]) -> U64:
    """A bijective mix of 64-bit keys, so that partitions split any key set evenly.

    Keys are hashes already, but a caller's hasher may put its entropy anywhere (or have
    almost none, as the tests' deliberately colliding ones do).
    """
    with np.errstate(over="ignore"):
        h = keys.astype(np.uint64, copy=False) ^ _MIX_SALT
        h ^= h >> np.uint64(33)
        h *= _MIX
        h ^= h >> np.uint64(33)
    return h


class Store:
    """Records added in batches, read back in units grouped by key; see the module docstring.

    ``bucket_rows`` makes the partition ``key // bucket_rows`` instead of a hash partition:
    then ``read(p)`` returns the records whose key is in that range.
    """

    def __init__(
        self,
        dtypes: Sequence[npt.DTypeLike],
        *,
        key: int,
        text: bool = False,
        partitions: int,
        limit_bytes: int,
        spill_dir: Path | None,
        bucket_rows: int | None = None,
        advice: SpillAdvice | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._dtypes = tuple(np.dtype(d) for d in dtypes)
        self._key = key
        self._has_text = text
        self.partitions = partitions
        self._limit = max(limit_bytes, 0)
        self._dir = spill_dir
        self._bucket_rows = bucket_rows
        self._advice = advice or VALIDATION_ADVICE
        self._record_bytes = sum(d.itemsize for d in self._dtypes)
        self._capacity = self._limit // self._record_bytes
        self._columns: list[npt.NDArray[Any]] | None = None
        self._count = 0
        self._texts: list[pa.Array] = []
        self._text_bytes = 0
        self._file: IO[bytes] | None = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._end = 0
        #: Per partition: (file offset, records, string bytes) of each segment, in order.
        self._segments: list[list[tuple[int, int, int]]] = [[] for _ in range(partitions)]

    # --- writing ---------------------------------------------------------------------------

    def add(self, records: Records) -> None:
        """Append records (in the order they should be read back)."""
        n = len(records)
        if n == 0:
            return
        text = records.text
        if self._has_text:
            assert text is not None
            assert text.null_count == 0
            if not pa.types.is_large_string(text.type):
                text = pc.cast(text, pa.large_string())
        extra = 0 if text is None else int(text.nbytes)
        batch = n * self._record_bytes + extra
        held = self._count * self._record_bytes + self._text_bytes
        if held + batch > self._limit:
            self._flush()
            if batch > self._limit:
                self._write(Records(records.numbers, text))
                return
        if self._columns is None:
            self._columns = [np.empty(self._capacity, dtype=d) for d in self._dtypes]
        for column, values in zip(self._columns, records.numbers, strict=True):
            column[self._count : self._count + n] = values
        self._count += n
        if text is not None:
            self._texts.append(text)
            self._text_bytes += extra

    @property
    def spilled(self) -> bool:
        """Whether any record went to disk."""
        return self._file is not None

    @property
    def disk_bytes(self) -> int:
        """Bytes written to the temp file so far."""
        return self._end

    def _buffered(self) -> Records:
        if self._columns is None:
            numbers = tuple(np.empty(0, dtype=d) for d in self._dtypes)
        else:
            numbers = tuple(column[: self._count] for column in self._columns)
        text = None
        if self._has_text:
            text = pa.concat_arrays(self._texts) if self._texts else pa.array([], pa.large_string())
            # One array from now on: concatenating again for each reader would copy each time.
            self._texts = [text] if len(text) else []
        return Records(numbers, text)

    def _flush(self) -> None:
        if self._count == 0:
            return
        records = self._buffered()
        self._write(records)
        self._count = 0
        self._texts = []
        self._text_bytes = 0

    def _write(self, records: Records) -> None:
        parts = self._partition_of(records.numbers[self._key])
        # A stable sort keeps file order within a partition; on 16-bit integers numpy's stable
        # sort is a radix sort, linear in the records.
        order = np.argsort(parts, kind="stable")
        bounds = np.searchsorted(parts[order], np.arange(self.partitions + 1))
        file = self._open()
        for p in range(self.partitions):
            lo, hi = int(bounds[p]), int(bounds[p + 1])
            if lo == hi:
                continue
            index = order[lo:hi]
            pieces = [column[index] for column in records.numbers]
            text_bytes = 0
            if records.text is not None:
                text = records.text.take(pa.array(index))
                offsets, data = _text_buffers(text)
                pieces += [offsets, data]
                text_bytes = len(data)
            start = self._end
            try:
                for piece in pieces:
                    file.write(piece.data.cast("B"))
            except OSError as e:
                raise self._error(e) from None
            self._end += sum(piece.nbytes for piece in pieces)
            self._segments[p].append((start, hi - lo, text_bytes))

    def _open(self) -> IO[bytes]:
        if self._file is None:
            try:
                self._file = _temp_file(self._dir)
            except OSError as e:
                raise self._error(e) from None
            self._closer = weakref.finalize(self, self._file.close)
        return self._file

    def _error(self, e: OSError) -> TempSpaceError:
        where = self._dir if self._dir is not None else Path(tempfile.gettempdir())
        advice = self._advice
        if e.errno in _DISK_FULL:
            return TempSpaceError(
                f"no space left for temporary {advice.purpose} data in {where} "
                f"({self._end / 2**20:,.0f} MiB written by this store when it ran out): "
                f"free some space there, or {advice.elsewhere}"
            )
        return TempSpaceError(
            f"cannot write temporary {advice.purpose} data in {where}: {e.strerror or e}: "
            f"{advice.writable}"
        )

    def _partition_of(self, keys: npt.NDArray[Any]) -> npt.NDArray[Any]:
        small = np.uint16 if self.partitions <= 1 << 16 else np.int64
        if self._bucket_rows is not None:
            return (keys // self._bucket_rows).astype(small)
        return _scale(key_mix(keys) >> np.uint64(32), self.partitions).astype(small)

    # --- reading ---------------------------------------------------------------------------

    def units(self, unit_bytes: int) -> Iterator[Records]:
        """Every record once, in units of about ``unit_bytes`` that never split a key."""
        if self._file is None:
            if self._count:
                yield self._buffered()
            return
        self._flush()
        self._release_buffer()
        for p in range(self.partitions):
            segments = self._segments[p]
            if not segments:
                continue
            size = sum(self._segment_bytes(n, t) for _, n, t in segments)
            records = sum(n for _, n, _ in segments)
            ways = max(1, min(math.ceil(size / max(unit_bytes, 1)), records))
            for way in range(ways):
                parts = [self._read_segment(*s) for s in segments]
                if ways > 1:
                    parts = [_filter(r, self._sub_of(r, ways) == way) for r in parts]
                unit = self._concat(parts)
                if len(unit):
                    yield unit

    def read(self, partition: int) -> Records:
        """All records of one partition, in the order they were added."""
        if self._file is None:
            records = self._buffered()
            return _filter(records, self._partition_of(records.numbers[self._key]) == partition)
        self._flush()
        self._release_buffer()
        return self._concat([self._read_segment(*s) for s in self._segments[partition]])

    def _sub_of(self, records: Records, ways: int) -> U64:
        # The partition took the mix's high half; the low half is independent of it.
        return _scale(key_mix(records.numbers[self._key]) & np.uint64(0xFFFFFFFF), ways)

    def _segment_bytes(self, n: int, text_bytes: int) -> int:
        size = n * self._record_bytes
        return size + ((n + 1) * 8 + text_bytes if self._has_text else 0)

    def _read_segment(self, offset: int, n: int, text_bytes: int) -> Records:
        assert self._file is not None
        buffer = np.empty(self._segment_bytes(n, text_bytes), dtype=np.uint8)
        view = buffer.data
        got = 0
        try:
            self._file.flush()
            while got < len(buffer):
                read = os.preadv(self._file.fileno(), [view[got:]], offset + got)
                if read == 0:
                    break
                got += read
        except OSError as e:
            raise self._error(e) from None
        if got != len(buffer):
            raise TempSpaceError(
                f"temporary {self._advice.purpose} data in {self._dir} was cut short (read "
                f"{got} of {len(buffer)} bytes): run the command again"
            )
        numbers: list[npt.NDArray[Any]] = []
        at = 0
        for dtype in self._dtypes:
            numbers.append(np.frombuffer(buffer, dtype=dtype, count=n, offset=at))
            at += n * dtype.itemsize
        text = None
        if self._has_text:
            offsets = pa.py_buffer(buffer[at : at + (n + 1) * 8])
            data = pa.py_buffer(buffer[at + (n + 1) * 8 :])
            text = pa.Array.from_buffers(pa.large_string(), n, [None, offsets, data])
        return Records(tuple(numbers), text)

    def _concat(self, parts: list[Records]) -> Records:
        if len(parts) == 1:
            return parts[0]
        numbers = tuple(
            np.concatenate([p.numbers[i] for p in parts]) if parts else np.empty(0, dtype=d)
            for i, d in enumerate(self._dtypes)
        )
        text = None
        if self._has_text:
            texts = [p.text for p in parts if p.text is not None]
            text = pa.concat_arrays(texts) if texts else pa.array([], pa.large_string())
        return Records(numbers, text)

    def _release_buffer(self) -> None:
        # Once everything is on disk the write buffer is dead weight while units are read.
        self._columns = None
        self._texts = []

    # --- life ------------------------------------------------------------------------------

    def close(self) -> None:
        """Give back the memory and the temp file (its disk space returns at once)."""
        self._columns = None
        self._texts = []
        self._count = 0
        if self._closer is not None:
            self._closer()
        self._file = None
        self._closer = None
        self._segments = [[] for _ in range(self.partitions)]
        self._end = 0

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _scale(values: U64, n: int) -> U64:
    """32-bit ``values`` mapped evenly onto ``0..n-1`` by a multiply and a shift (no division)."""
    return (values * np.uint64(n)) >> np.uint64(32)


def _temp_file(folder: Path | None) -> IO[bytes]:
    """A new temp file without a name in ``folder`` (None: the system's temp folder)."""
    # The store owns the file past this call; its close() and a finalizer close it.
    return tempfile.TemporaryFile(dir=None if folder is None else str(folder), prefix="backfill-")


def _filter(records: Records, mask: npt.NDArray[np.bool_]) -> Records:
    text = None if records.text is None else records.text.filter(pa.array(mask))
    return Records(tuple(column[mask] for column in records.numbers), text)


def _text_buffers(text: pa.Array) -> tuple[I64, npt.NDArray[np.uint8]]:
    """Offsets (from 0) and characters of a large_string array, as numpy arrays."""
    n = len(text)
    buffers = text.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=text.offset * 8)
    first, last = int(offsets[0]), int(offsets[-1])
    if buffers[2] is None or last == first:
        data = np.zeros(0, dtype=np.uint8)
    else:
        data = np.frombuffer(buffers[2], dtype=np.uint8, count=last - first, offset=first)
    return offsets - first, data
