"""A dataset: every file the inputs name, read in sorted order as one stream of chunks.

Rows are numbered twice: across the whole dataset (``Chunk.first_row``, what the validator's
whole-dataset rules and the checkpoint count) and within each file (``Chunk.file_row``, what a
person finds in the file). A chunk never spans two files. Every file's header (or schema) is
checked when the dataset is opened, so a missing column in the last part is reported before
any work starts.

A dataset is read from the start each time it is called, as validation and sending both do.
The first pass to reach the end of a file records its row count; a later pass that finds more
or fewer rows there raises ``InputChanged`` before handing out a row past the recorded end (or
before the next file), so a file that grew or shrank between two passes never shifts the rows
of the files after it unnoticed. Changes of the same length are for ``Chunk.digest`` to catch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.fs as pafs

from backfill import interrupts
from backfill.errors import InputChanged, InputError
from backfill.read import delimited, jsonl, memory, parquet
from backfill.read.chunk import (
    DEFAULT_CHUNK_ROWS,
    Chunk,
    Columns,
    clean_id_trimmed,
    clean_time,
    first_line_break,
)
from backfill.read.fingerprint import file_fingerprint
from backfill.read.formats import format_of_name, normalize_format, resolve_delimiter
from backfill.read.source import DataFile, Found, find_files

I64 = npt.NDArray[np.int64]
#: Files whose headers are checked at once when the dataset is in an object store.
_CHECK_THREADS = 8


class Dataset:
    """One or more files read as one sequence of rows; call it to stream its chunks."""

    def __init__(
        self,
        files: Sequence[DataFile],
        fmt: str,
        columns: Columns,
        *,
        delimiter: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        empty: frozenset[int] = frozenset(),
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.files = tuple(files)
        self.format = fmt
        self.columns = columns
        self.delimiter = delimiter
        self.chunk_rows = chunk_rows
        self._empty = empty
        self._fingerprint: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, format={self.format!r}, files={len(self.files)})"

    @property
    def name(self) -> str:
        """The dataset as a person would name it: its file, or its first file and a count."""
        if len(self.files) == 1:
            return self.files[0].name
        return f"{self.files[0].name} and {len(self.files) - 1} more files"

    @property
    def rows(self) -> int | None:
        """Data rows in the whole dataset, once a pass has read every file; else None."""
        counts = [f.rows for f in self.files]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def __call__(self) -> Iterator[Chunk]:
        """Stream every row from the first file's first row, in chunks."""
        row = 1
        for index, file in enumerate(self.files):
            interrupts.check()
            _check_unchanged(file)
            seen = 0
            if index not in self._empty:
                # Closed here, not whenever the garbage collector gets to it: an open reader
                # keeps Arrow's I/O thread reading ahead (see ``delimited._QuoteCounter``).
                with contextlib.closing(self._file_chunks(index, file, row)) as chunks:
                    for chunk in chunks:
                        # Between chunks, a Ctrl-C ends the read with every reader closed.
                        interrupts.check()
                        seen += len(chunk)
                        row += len(chunk)
                        yield chunk
            if file.rows is None:
                file.rows = seen
            elif seen != file.rows:
                raise _changed(file, seen)
        if row == 1:
            raise InputError(f"input has no data rows: {self.name} (is it the right export?)")

    def _file_chunks(self, index: int, file: DataFile, first_row: int) -> Generator[Chunk]:
        file_row = 1
        time_at = 2 if self.columns.time else None
        text = self.format in ("csv", "tsv")
        for arrays in self._batches(file):
            size = len(arrays[0])
            for start in range(0, size, self.chunk_rows):
                n = min(self.chunk_rows, size - start)
                anon, anon_trimmed = clean_id_trimmed(arrays[0].slice(start, n))
                identified, identified_trimmed = clean_id_trimmed(arrays[1].slice(start, n))
                time = None if time_at is None else clean_time(arrays[time_at].slice(start, n))
                if text:
                    self._check_line_breaks(file, file_row, anon, identified)
                if file.rows is not None and file_row + n - 1 > file.rows:
                    raise _changed(file, file_row + n - 1)
                trimmed = (anon_trimmed, identified_trimmed)
                yield Chunk(first_row, anon, identified, time, index, file_row, trimmed)
                first_row += n
                file_row += n

    def _batches(self, file: DataFile) -> Iterator[list[pa.Array]]:
        try:
            if self.format in ("csv", "tsv"):
                assert self.delimiter is not None
                yield from delimited.batches(file, self.columns, self.delimiter)
            elif self.format == "parquet":
                yield from parquet.batches(file, self.columns, self.chunk_rows)
            elif self.format == "jsonl":
                yield from jsonl.batches(file, self.columns, self.chunk_rows)
            else:
                assert file.table is not None
                # Slices, not the table's own chunks: those may be any size, even one row.
                table, names = file.table, self.columns.names()
                for start in range(0, table.num_rows, self.chunk_rows):
                    part = table.slice(start, self.chunk_rows)
                    yield [part.column(n).combine_chunks() for n in names]
        except InputError:
            raise
        except (pa.ArrowException, OSError, EOFError) as e:
            if self.format in ("csv", "tsv"):
                assert self.delimiter is not None
                raise delimited.explain(file, self.delimiter, e) from None
            text = (str(e).strip() or type(e).__name__).splitlines()[0][:300]
            raise InputError(
                f"{file.name}: cannot read the input: {text} (re-export the file)"
            ) from None

    def _check_line_breaks(
        self, file: DataFile, file_row: int, anon: pa.Array, identified: pa.Array
    ) -> None:
        for column, values in ((self.columns.anon, anon), (self.columns.identified, identified)):
            at = first_line_break(values)
            if at is not None:
                assert self.delimiter is not None
                raise delimited.broken_quote(file, self.delimiter, file_row + at, column)

    # --- where rows are ------------------------------------------------------------------------

    def file_starts(self) -> I64:
        """The dataset row of each file's first row (needs a full pass to have been made)."""
        counts = [f.rows for f in self.files]
        if any(c is None for c in counts):
            raise RuntimeError("the dataset has not been read to its end yet")
        sizes = np.asarray(counts, dtype=np.int64)
        return np.concatenate([[1], 1 + np.cumsum(sizes)[:-1]]).astype(np.int64)

    def locate(self, rows: I64) -> tuple[I64, I64]:
        """For dataset rows (1-based), each one's file index and row within that file."""
        starts = self.file_starts()
        rows = np.asarray(rows, dtype=np.int64)
        # Empty files share their start with the next file: side="right" picks the last one.
        index = np.searchsorted(starts, rows, side="right").astype(np.int64) - 1
        return index, rows - starts[index] + 1

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this dataset's content, for a checkpoint: per file, its name, size and
        content fingerprint (local: SHA-256 of its bytes; object stores: the version they
        report; in memory: a digest of the values). Computed once, then kept."""
        if self._fingerprint is None:
            self._fingerprint = {
                "format": self.format,
                "files": [file_fingerprint(f) for f in self.files],
            }
        return self._fingerprint


def _check_unchanged(file: DataFile) -> None:
    """A file's size as when the dataset was opened: one stat (or HEAD) per file and pass."""
    if file.table is not None:
        return
    try:
        info = file.fs.get_file_info(file.path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {file.name}: {e}") from None
    if info.type != pafs.FileType.File or info.size != file.size:
        now = "is gone" if info.type != pafs.FileType.File else f"has {info.size:,} bytes"
        raise InputChanged(
            f"{file.name} changed while backfill was reading it (it had {file.size:,} bytes, "
            f"now {now}): let the export finish, then run the same command again"
        )


def _changed(file: DataFile, now: int) -> InputChanged:
    before = file.rows or 0
    how = f"grew (it had {before:,} rows" if now > before else f"shrank (from {before:,} rows"
    return InputChanged(
        f"{file.name} {how} when first read, now {now:,}) while backfill was reading it: let "
        "the export finish, then run the same command again"
    )


# --- opening ---------------------------------------------------------------------------------


def open_dataset(
    inputs: Any,
    fmt: str | None = None,
    columns: Columns | None = None,
    *,
    delimiter: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Dataset:
    """Resolve ``inputs`` into one dataset and check every file's columns.

    ``inputs``: a path or URL, or a sequence of them (files, folders, glob patterns,
    ``s3://``/``gs://`` URLs), or a ``pandas.DataFrame`` / ``pyarrow.Table``. ``fmt`` is one of
    FORMATS (any case), else each file's extension decides (and they must agree).
    """
    columns = columns or Columns()
    if memory.is_in_memory(inputs):
        if fmt is not None or delimiter is not None:
            raise InputError("--format and --delimiter apply to files, not to a DataFrame")
        file = memory.memory_file(inputs, columns)
        return Dataset([file], file.format, columns, chunk_rows=chunk_rows)
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    given = normalize_format(fmt)
    if given is not None:
        resolve_delimiter(given, delimiter)  # a bad option is reported before any file access
    found = find_files(list(inputs))
    fmt = _one_format(found, given)
    sep = resolve_delimiter(fmt, delimiter)
    files = [DataFile(f.name, fmt, f.size, fs=f.fs, path=f.path) for f in found]
    empty = _check_all(files, fmt, columns, sep)
    if len(files) == 1 and empty:
        raise InputError(
            f"input file is empty: {files[0].name} (export the mappings with a header row)"
        )
    return Dataset(files, fmt, columns, delimiter=sep, chunk_rows=chunk_rows, empty=empty)


def open_chunks(
    path: Path | str, fmt: str, columns: Columns, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Dataset:
    """One regular file as a dataset (the single-file API of before; folders refused)."""
    if Path(path).is_dir():
        raise InputError(f"input is a folder, not a file: {path}")
    return open_dataset([path], fmt, columns, chunk_rows=chunk_rows)


def _one_format(found: list[Found], fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    by_format: dict[str | None, list[str]] = {}
    for f in found:
        by_format.setdefault(format_of_name(f.name), []).append(f.name)
    unknown = by_format.pop(None, [])
    if unknown:
        raise InputError(
            f"cannot tell the format of {_some(unknown)} from the extension: name data files "
            ".csv, .tsv, .parquet, .jsonl or .ndjson (text may end in .gz), move other files "
            "away, or pass --format csv|tsv|parquet|jsonl"
        )
    if len(by_format) > 1:
        listed = "; ".join(f"{k}: {_some(v)}" for k, v in sorted(by_format.items()))
        raise InputError(
            f"the input mixes formats ({listed}): read one format at a time, or pass a pattern "
            "that matches one kind of file"
        )
    return next(iter(by_format))  # type: ignore[return-value]


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _check_all(
    files: list[DataFile], fmt: str, columns: Columns, delimiter: str | None
) -> frozenset[int]:
    """Check each file's columns (in parallel for object stores); the empty files' indices."""

    def check(file: DataFile) -> bool:
        if fmt in ("csv", "tsv"):
            assert delimiter is not None
            return delimited.check(file, columns, delimiter)
        if fmt == "parquet":
            return parquet.check(file, columns)
        return jsonl.check(file, columns)

    if len(files) > 1 and any(f.remote for f in files):
        with ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
            content = list(pool.map(check, files))
    else:
        content = [check(f) for f in files]
    return frozenset(i for i, has in enumerate(content) if not has)
