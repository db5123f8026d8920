"""Parquet, a record batch at a time (only the chosen columns; by ranges from object stores).

Id columns must hold text or integers (integers become their decimal strings); a time column
may also hold timestamps, dates or floats. Columns are found by name: a chosen name that occurs
twice in the schema is refused, as pyarrow would hand back both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from backfill.errors import InputError
from backfill.read.chunk import Columns
from backfill.read.delimited import check_columns
from backfill.read.formats import content_hint
from backfill.read.source import DataFile

_SNIFF_BYTES = 4096


def check(file: DataFile, columns: Columns) -> bool:
    """Refuse an unreadable file, a missing or ambiguous column, an unusable type.

    False for an empty (0-byte) file: a writer's empty part, read as no rows.
    """
    if file.size == 0:
        return False
    with _open(file) as pf:
        schema = pf.schema_arrow
    check_schema(file.name, schema, columns)
    return True


def check_schema(name: str, schema: pa.Schema, columns: Columns) -> None:
    """The chosen columns exist once each and have types that can be read as ids/times."""
    check_columns(name, list(schema.names), columns)
    for column in columns.names():
        typ = schema.field(column).type
        check_type(name, column, typ, is_time=column == columns.time)


def check_type(name: str, column: str, typ: pa.DataType, *, is_time: bool) -> None:
    """Refuse a column type that cannot be read as an id (or a time), naming the fix."""
    value_type = typ.value_type if pa.types.is_dictionary(typ) else typ
    text = (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_string_view(value_type)
        or pa.types.is_null(value_type)
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
        f"column {column!r} in {name} has type {typ}; it must hold {wanted}: {_cast(name, column)}"
    )


def _cast(name: str, column: str) -> str:
    """How to cast a column, said to whoever holds it: an export, a DataFrame or a Table."""
    if name == "<DataFrame>":
        # Whole numbers with gaps arrive as floats (409.0): Int64 gives back "409".
        return (
            f"cast the column, e.g. df[{column!r}] = df[{column!r}].astype('Int64') for whole "
            "numbers with gaps, or .astype('string')"
        )
    if name == "<pyarrow.Table>":
        return "cast the column to pa.string() or an integer type"
    return "cast it in the export"


def batches(file: DataFile, columns: Columns, chunk_rows: int) -> Iterator[list[pa.Array]]:
    """The chosen columns, ``chunk_rows`` rows at a time."""
    names = columns.names()
    unique = list(dict.fromkeys(names))
    with _open(file) as pf:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=unique):
            yield [batch.column(n) for n in names]


class _open:
    """A ParquetFile on a random-access handle, both closed on exit; unreadable = InputError."""

    def __init__(self, file: DataFile) -> None:
        self.file = file
        self.handle = file.open_random()
        try:
            self.pf = pq.ParquetFile(self.handle)
        except (pa.ArrowException, OSError) as e:
            self.handle.close()
            raise _unreadable(file, e) from None

    def __enter__(self) -> pq.ParquetFile:
        return self.pf

    def __exit__(self, *exc: object) -> None:
        self.pf.close()
        self.handle.close()


def _unreadable(file: DataFile, e: BaseException) -> InputError:
    try:
        hint = content_hint(file.head(_SNIFF_BYTES), "parquet")
    except InputError:
        hint = ""
    return InputError(
        f"{file.name} is not a readable Parquet file ({_first_line(e)}): re-export it"
        + (hint or ", or pass --format csv if it is a CSV file")
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
