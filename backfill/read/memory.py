"""In-memory sources for the Python API: a ``pandas.DataFrame`` or a ``pyarrow.Table``.

Read with Parquet's rules: text or integer id columns (integers become decimal strings),
trimmed, null = missing; a time column may also hold timestamps, dates or floats. A pandas
``object`` column is taken value by value: ``str`` as it is, an integer (Python's or numpy's)
as its decimal string, ``None``/``NaN``/``pd.NA`` as missing; anything else (a float id, a
dict) is refused, naming the first such row, since no string "as written" exists for it.

Columns are chosen by name as written: a DataFrame's labels are compared by their string
form, so integer labels (``pd.read_csv(header=None)``) are chosen with ``anon_column="0"``.
A frame with two labels of one string form (``0`` and ``"0"``) is refused as ambiguous.
A frame or table without rows is refused as having no data rows, before its column types
are judged (an empty column has no type worth naming).

The source is one pseudo-file named ``<DataFrame>`` or ``<pyarrow.Table>``. Its fingerprint is
a digest of the chosen columns' content, so the same rows give the same fingerprint in every
process and a run from a DataFrame resumes like a run from a file.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any

import pyarrow as pa

from backfill.errors import InputError
from backfill.read.chunk import Columns, feed_array
from backfill.read.delimited import check_columns
from backfill.read.parquet import check_schema
from backfill.read.source import DataFile

DATAFRAME = "<DataFrame>"
TABLE = "<pyarrow.Table>"


def is_in_memory(source: object) -> bool:
    """Whether ``source`` is a DataFrame or an Arrow table (without importing pandas)."""
    if isinstance(source, pa.Table | pa.RecordBatch):
        return True
    kind = type(source)
    return kind.__name__ == "DataFrame" and kind.__module__.startswith("pandas")


def memory_file(source: Any, columns: Columns) -> DataFile:
    """The one pseudo-file of an in-memory source, its chosen columns as an Arrow table."""
    if isinstance(source, pa.RecordBatch):
        source = pa.Table.from_batches([source])
    if isinstance(source, pa.Table):
        name, fmt = TABLE, "table"
        check_columns(name, source.column_names, columns)
        _check_rows(name, source.num_rows)
        check_schema(name, source.schema, columns)
        table = source.select(list(dict.fromkeys(columns.names())))
    else:
        name, fmt = DATAFRAME, "dataframe"
        table = _from_pandas(source, columns)
        check_schema(name, table.schema, columns)
    return DataFile(name=name, format=fmt, size=table.nbytes, table=table)


def _check_rows(name: str, rows: int) -> None:
    if rows == 0:
        raise InputError(f"input has no data rows: {name} (is it the right DataFrame?)")


def _from_pandas(df: Any, columns: Columns) -> pa.Table:
    # By position, not by label: a label may be the integer 0 where the option names "0".
    found = [str(c) for c in df.columns]
    check_columns(DATAFRAME, found, columns)
    _check_rows(DATAFRAME, len(df))
    arrays: dict[str, pa.Array] = {}
    for name in dict.fromkeys(columns.names()):
        series = df.iloc[:, found.index(name)]
        if str(series.dtype) == "object":
            arrays[name] = _object_column(name, series.tolist())
            continue
        try:
            arrays[name] = pa.Array.from_pandas(series)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise InputError(
                f"column {name!r} of the DataFrame cannot be read ({e}): cast it with "
                f"df[{name!r}].astype('string')"
            ) from None
    return pa.table(arrays)


def _object_column(name: str, values: list[Any]) -> pa.Array:
    out: list[str | None] = []
    for row, value in enumerate(values, start=1):
        if value is None or isinstance(value, str):
            out.append(value)
        elif not isinstance(value, bool) and isinstance(value, numbers.Integral):
            out.append(str(int(value)))  # numpy's integers too (not its bool_: not Integral)
        elif (isinstance(value, float) and math.isnan(value)) or _is_pd_na(value):
            out.append(None)
        else:
            raise InputError(
                f"column {name!r} of the DataFrame holds {type(value).__name__} {value!r} at "
                f"row {row}; ids must be strings or integers: cast it with "
                f"df[{name!r}].astype('string')"
            )
    return pa.array(out, pa.string())


def _is_pd_na(value: Any) -> bool:
    kind = type(value)
    return kind.__name__ in ("NAType", "NaTType") and kind.__module__.startswith("pandas")


def table_digest(table: pa.Table) -> str:
    """SHA-256 of the table's column names and values, independent of its chunk layout."""
    h = hashlib.sha256()
    h.update("\x1f".join(table.column_names).encode())
    for column in table.columns:
        feed_array(h, column.combine_chunks())
    return h.hexdigest()
