"""What every reader yields: chunks of cleaned values, and the cleaning rules they share.

A value is a string exactly as written (no type inference), trimmed of surrounding whitespace;
a value that is empty after trimming, or null, is missing (null): the one meaning of
"missing" downstream. Integer columns (Parquet, JSON numbers, DataFrames) become their decimal
strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.arrays.buffers import string_bytes, string_offsets

DEFAULT_CHUNK_ROWS = 65_536
#: Bytes of a chunk's digest (SHA-256, truncated): plenty to notice any change of a chunk.
DIGEST_BYTES = 16


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the anon id, the identified id and (optionally) the time."""

    anon: str = "anon_id"
    identified: str = "identified_id"
    time: str | None = None

    def names(self) -> list[str]:
        """The column names to read, in a fixed order."""
        return [self.anon, self.identified] + ([self.time] if self.time else [])


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of one file of the input. Ids are trimmed strings, null where missing.

    ``first_row`` numbers rows across the whole dataset (1-based); ``file_index`` is the file's
    place in ``Dataset.files`` and ``file_row`` the row of ``first_row`` within that file
    (1-based). A chunk never spans two files. ``time`` is the raw time column (strings for
    text formats; whatever type Parquet or a DataFrame has) or None.
    """

    first_row: int
    anon: pa.Array
    identified: pa.Array
    time: pa.Array | None
    file_index: int = 0
    file_row: int = 1

    def __len__(self) -> int:
        return len(self.anon)

    @property
    def end_row(self) -> int:
        """One past the last row number of the chunk (dataset-wide)."""
        return self.first_row + len(self.anon)

    def digest(self) -> bytes:
        """A digest of the chunk's place and values, the same in every process.

        Any change of a value, even one of the same length written in place, changes it; so
        does a shift of the rows. SHA-256 (hardware-accelerated on current CPUs) over each
        column's type, validity, value lengths and value bytes, truncated to 16 bytes.
        """
        h = hashlib.sha256()
        h.update(np.array([self.first_row, self.file_index, self.file_row], "<i8").tobytes())
        for values in (self.anon, self.identified, self.time):
            if values is None:
                h.update(b"\x00none")
            else:
                feed_array(h, values)
        return h.digest()[:DIGEST_BYTES]


ChunkSource = Callable[[], Iterator[Chunk]]


def feed_array(h: hashlib._Hash, values: pa.Array) -> None:
    """Feed an array's logical content (not its memory layout) to a hash object.

    Two arrays with the same type and values feed the same bytes, whatever their offsets or
    the chunk they were sliced from. Strings: lengths and bytes; fixed-width types: the value
    bytes; validity as one byte per value when there are nulls.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    h.update(f"{values.type}|{n}|{values.null_count}|".encode())
    if values.null_count:
        h.update(np.asarray(values.is_valid(), dtype=np.bool_).tobytes())
    typ = values.type
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        h.update(np.diff(string_offsets(values)).astype("<i4").tobytes())
        h.update(string_bytes(values).data)
    elif pa.types.is_primitive(typ) and not pa.types.is_boolean(typ):
        width = typ.bit_width // 8
        data = values.buffers()[1]
        if data is not None and n:
            start = values.offset * width
            h.update(memoryview(data)[start : start + n * width])
    else:
        # Rare types (large strings are cast before this is reached): their text form.
        h.update("\x1f".join("" if v is None else str(v) for v in values.to_pylist()).encode())


# --- cleaning --------------------------------------------------------------------------------


def clean_id(values: pa.Array) -> pa.Array:
    """An id column as trimmed strings, null where missing; integers as decimal strings."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.string())
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return blank_to_null(pc.utf8_trim_whitespace(values))


def clean_time(values: pa.Array) -> pa.Array:
    """A time column: text trimmed (blank = null); timestamps, dates and numbers as they are."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = pc.cast(values, pa.string())
    if pa.types.is_string(values.type):
        return blank_to_null(pc.utf8_trim_whitespace(values))
    return values


def blank_to_null(values: pa.Array) -> pa.Array:
    """Empty strings become null."""
    blank = pc.equal(pc.binary_length(values), 0)
    return pc.if_else(blank, pa.scalar(None, pa.string()), values)


def unusual_rows(values: pa.Array) -> npt.NDArray[np.intp]:
    """The rows of a string array holding a byte other than ASCII ``!`` to ``~``.

    Whitespace to trim, line breaks, control and invisible characters all lie outside that
    range, so a chunk without such rows skips those checks; one pass over the bytes finds them.
    """
    raw = string_bytes(values)
    # Two SIMD reductions, no temporary: what nearly every chunk of ids needs.
    if len(raw) == 0 or (int(raw.min()) >= 0x21 and int(raw.max()) <= 0x7E):
        return np.zeros(0, dtype=np.intp)
    # Bytes below "!" wrap around to the top of the unsigned range: one comparison.
    offsets = string_offsets(values)
    where = np.flatnonzero((raw - np.uint8(0x21)) > np.uint8(0x7E - 0x21)) + offsets[0]
    return np.unique(np.searchsorted(offsets, where, side="right") - 1)


def first_line_break(values: pa.Array) -> int | None:
    """The index of the first value holding a line break (CR or LF), or None.

    A byte scan of the values' buffer rules out almost every chunk at memory speed; only a
    chunk with some control byte in it gets the exact (slower) per-value check.
    """
    if len(values) == 0 or values.null_count == len(values):
        return None
    raw = string_bytes(values)
    # One SIMD reduction, no temporary: \n is 0x0A and \r is 0x0D, so a smallest byte of 0x0E
    # or more rules both out.
    if len(raw) == 0 or int(raw.min()) >= 0x0E:
        return None
    hits = pc.match_substring_regex(values, "[\r\n]").fill_null(False)
    found = np.flatnonzero(np.asarray(hits, dtype=np.bool_))
    return int(found[0]) if len(found) else None
