"""Stream the mapping file as chunks of (row, anon id, identified id, time), never whole.

CSV (plain or gzip) goes through pyarrow's streaming CSV reader with every chosen column
declared as a string, so nothing is inferred: ``00042``, ``1e5``, ``TRUE``, ``NULL`` and ``NaN``
arrive as written. Parquet is read a record batch at a time; integer id columns become their
decimal strings. Values are trimmed of surrounding whitespace, and a value that is empty after
trimming (CSV) or null (Parquet) becomes null: the one meaning of "missing" downstream.

Rows are numbered from 1, the first record after the header being row 1; a quoted value may
span lines, so row numbers count records, not lines.
"""

from __future__ import annotations

import codecs
import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from backfill.errors import InputError

FORMATS = ("csv", "parquet")
DEFAULT_CHUNK_ROWS = 65_536
_CSV_BLOCK_BYTES = 1 << 20
_SNIFF_BYTES = 64 << 10


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
    """Consecutive rows of the input. Ids are trimmed strings, null where missing.

    ``time`` is the raw time column (strings for CSV; whatever Parquet type it has) or None.
    """

    first_row: int
    anon: pa.Array
    identified: pa.Array
    time: pa.Array | None

    def __len__(self) -> int:
        return len(self.anon)

    @property
    def end_row(self) -> int:
        """One past the last row number of the chunk."""
        return self.first_row + len(self.anon)


ChunkSource = Callable[[], Iterator[Chunk]]


def detect_format(path: Path, fmt: str | None) -> str:
    """The format to read ``path`` as: ``fmt`` when given, else from the file extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"unknown --format {fmt!r}: use --format csv or --format parquet")
        return fmt
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    raise InputError(
        f"cannot tell the format of {path.name} from its extension: "
        "name it .csv, .csv.gz or .parquet, or pass --format csv or --format parquet"
    )


def open_chunks(
    path: Path, fmt: str, columns: Columns, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> ChunkSource:
    """A callable that streams the file from the start each time it is called.

    The file's header (or schema) is checked here, once, so that a missing column or an
    unreadable file is reported before any work starts.
    """
    if not path.exists():
        raise InputError(f"input file not found: {path} (check the path)")
    if path.is_dir():
        raise InputError(f"input is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"input file is empty: {path} (export the mappings with a header row)")
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if fmt == "csv":
        _sniff_text(path)
        _check_columns(path, _csv_header(path), columns)

        def batches() -> Iterator[pa.RecordBatch]:
            return _csv_batches(path, columns)

    else:
        schema = _parquet_file(path).schema_arrow
        _check_columns(path, list(schema.names), columns)
        for name in columns.names():
            _check_parquet_type(path, name, schema.field(name).type, name == columns.time)

        def batches() -> Iterator[pa.RecordBatch]:
            return _parquet_batches(path, columns, chunk_rows)

    def source() -> Iterator[Chunk]:
        return _chunks(path, batches(), columns, chunk_rows)

    return source


def _chunks(
    path: Path, batches: Iterator[pa.RecordBatch], columns: Columns, chunk_rows: int
) -> Iterator[Chunk]:
    row = 1
    with _arrow_errors(path):
        for batch in batches:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                anon = _clean_id(part.column(0))
                identified = _clean_id(part.column(1))
                time = _clean_time(part.column(2)) if columns.time else None
                yield Chunk(row, anon, identified, time)
                row += part.num_rows
    if row == 1:
        raise InputError(f"input file has no data rows: {path} (is it the right export?)")


def _clean_id(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.string())
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = pc.cast(values, pa.string())
    return _blank_to_null(pc.utf8_trim_whitespace(values))


def _clean_time(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = pc.cast(values, pa.string())
    if pa.types.is_string(values.type):
        return _blank_to_null(pc.utf8_trim_whitespace(values))
    return values


def _blank_to_null(values: pa.Array) -> pa.Array:
    blank = pc.equal(pc.binary_length(values), 0)
    return pc.if_else(blank, pa.scalar(None, pa.string()), values)


# --- CSV ---------------------------------------------------------------------------------


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _sniff_text(path: Path) -> None:
    """Refuse binary data early, with a message better than a parser's."""
    try:
        with _open_binary(path) as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read {path}: {e} (is it a valid .gz file?)") from None
    if not head.strip():
        raise InputError(f"input file is empty: {path} (export the mappings with a header row)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        binary = b"\x00" in head
    except UnicodeDecodeError:
        binary = True
    if binary:
        raise InputError(
            f"{path} is not CSV text (binary data or not UTF-8): export the mappings as "
            "UTF-8 CSV, or pass --format parquet if it is a Parquet file"
        )


def _csv_header(path: Path) -> list[str]:
    with _arrow_errors(path):
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=_SNIFF_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
        )
        names = list(reader.schema.names)
        reader.close()
    return names


def _csv_batches(path: Path, columns: Columns) -> Iterator[pa.RecordBatch]:
    names = columns.names()
    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
        # A quoted id may hold a line break; supporting it keeps row numbers honest.
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=names,
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    try:
        yield from reader
    finally:
        reader.close()


# --- Parquet -----------------------------------------------------------------------------


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as e:
        raise InputError(
            f"{path} is not a readable Parquet file ({_first_line(e)}): re-export it, "
            "or pass --format csv if it is a CSV file"
        ) from None


def _check_parquet_type(path: Path, name: str, typ: pa.DataType, is_time: bool) -> None:
    value_type = typ.value_type if pa.types.is_dictionary(typ) else typ
    text = (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_string_view(value_type)
    )
    if text or pa.types.is_integer(value_type):
        return
    if is_time and (
        pa.types.is_timestamp(value_type)
        or pa.types.is_date(value_type)
        or pa.types.is_floating(value_type)
    ):
        return
    wanted = "text, integers, timestamps or dates" if is_time else "text or integers"
    raise InputError(
        f"column {name!r} in {path.name} has type {typ}; it must hold {wanted}: "
        "cast it in the export"
    )


def _parquet_batches(path: Path, columns: Columns, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    pf = _parquet_file(path)
    try:
        yield from pf.iter_batches(batch_size=chunk_rows, columns=columns.names())
    finally:
        pf.close()


# --- shared ------------------------------------------------------------------------------


def _check_columns(path: Path, found: list[str], columns: Columns) -> None:
    options = (
        ("--anon-column", columns.anon),
        ("--identified-column", columns.identified),
        ("--time-column", columns.time),
    )
    for option, name in options:
        if name is not None and name not in found:
            shown = ", ".join(repr(c) for c in found[:20]) + (" …" if len(found) > 20 else "")
            raise InputError(
                f"column {name!r} not found in {path.name}; columns found: {shown}. "
                f"Pass {option} NAME to choose another"
            )


class _arrow_errors:
    """Turn pyarrow's read errors into one-line InputErrors naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> Literal[False]:
        if exc is None or not isinstance(exc, pa.ArrowException | OSError | EOFError):
            return False
        text = _first_line(exc)
        if "Empty CSV file" in text:
            hint = "input file is empty (export the mappings with a header row)"
        elif "UTF8" in text or "UTF-8" in text:
            hint = "input is not valid UTF-8 text (re-export it as UTF-8)"
        elif "parse error" in text.lower():
            # pyarrow counts the header as row 1; rows here count from the first record.
            text = re.sub(r"Row #(\d+)", lambda m: f"row {int(m.group(1)) - 1}", text)
            hint = f"malformed CSV: {text} (fix that record or re-export the file)"
        else:
            hint = f"cannot read the input: {text} (re-export the file)"
        raise InputError(f"{self.path}: {hint}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
