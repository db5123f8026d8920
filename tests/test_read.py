"""The reader: values exactly as written, trimmed, missing only when empty; rows count records."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from backfill.errors import InputError
from backfill.read import Columns, detect_format, open_chunks
from backfill.times import TimeStatus, to_epoch_ms

NOW_MS = 1_760_000_000_000  # 2025-10-09
U1 = "8e8afc84-9b31-46ab-a745-e5279afad5ab"
U2 = "a92d9e0f-e310-4aee-9817-a1320b6451b0"

Record = tuple[int, Any, Any, Any]


def read_all(
    path: Path, fmt: str = "csv", columns: Columns | None = None, chunk_rows: int = 10_000
) -> list[Record]:
    """Every row as (row number, anon, identified, time), checking chunks are contiguous."""
    out: list[Record] = []
    expected_first = 1
    for chunk in open_chunks(path, fmt, columns or Columns(), chunk_rows)():
        assert chunk.first_row == expected_first
        assert 1 <= len(chunk) <= chunk_rows
        assert chunk.end_row == chunk.first_row + len(chunk)
        times = [None] * len(chunk) if chunk.time is None else chunk.time.to_pylist()
        rows = zip(chunk.anon.to_pylist(), chunk.identified.to_pylist(), times, strict=True)
        out.extend((chunk.first_row + k, a, u, t) for k, (a, u, t) in enumerate(rows))
        expected_first = chunk.end_row
    return out


def ids(records: list[Record]) -> list[tuple[Any, Any]]:
    """Just the (anon, identified) values of ``records``."""
    return [(a, u) for _, a, u, _ in records]


# --- CSV values -----------------------------------------------------------------------------

LOOKALIKES = ["00042", "1e5", "TRUE", "NULL", "NaN", "false", "0x1F", "-0", "1.50", "null"]


def test_csv_values_stay_strings_exactly_as_written(tmp_path: Path, write_csv: Any) -> None:
    """CSV values that look like numbers, booleans or nulls arrive as the very same strings."""
    rows = [(v, v) for v in LOOKALIKES]
    path = write_csv(tmp_path, rows)
    assert ids(read_all(path)) == rows


def test_csv_surrounding_whitespace_is_trimmed(tmp_path: Path) -> None:
    """Spaces and tabs around a value (quoted or not) go; spaces inside a value stay."""
    path = tmp_path / "m.csv"
    path.write_text(
        f'anon_id,identified_id\n  {U1}  ,\tuser 1\t\n" {U2} ","  Ana Souza  "\n',
        encoding="utf-8",
    )
    assert ids(read_all(path)) == [(U1, "user 1"), (U2, "Ana Souza")]


def test_csv_empty_after_trim_is_missing(tmp_path: Path) -> None:
    """Empty, blank and quoted-blank fields are null; anything else, even `NULL`, is not."""
    path = tmp_path / "m.csv"
    path.write_text(
        'anon_id,identified_id\n,\n   ,\t\n"","  "\nNULL,"."\n',
        encoding="utf-8",
    )
    assert ids(read_all(path)) == [(None, None), (None, None), (None, None), ("NULL", ".")]


def test_csv_utf8_bom_does_not_hide_the_first_column(tmp_path: Path, write_csv: Any) -> None:
    """A UTF-8 byte-order mark before the header still lets `anon_id` be found and read."""
    path = write_csv(tmp_path, [(U1, "Jörg")], bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbfanon_id")
    assert ids(read_all(path)) == [(U1, "Jörg")]


def test_csv_crlf_line_ends(tmp_path: Path, write_csv: Any) -> None:
    """Windows line ends leave no stray carriage return in the last column."""
    path = write_csv(tmp_path, [(U1, "u1"), (U2, "u2")], newline="\r\n")
    assert b"\r\n" in path.read_bytes()
    assert ids(read_all(path)) == [(U1, "u1"), (U2, "u2")]


def test_csv_quoted_commas_and_line_breaks_count_as_one_record(tmp_path: Path) -> None:
    """Quoted commas stay in the value; a note spanning lines is one record for row numbers."""
    path = tmp_path / "m.csv"
    path.write_text(
        "anon_id,identified_id,note\n"
        f'{U1},"Souza, Ana",\n'
        f'{U2},u2,"line one\nline two\nline three"\n'
        f"{U1},last,\n",
        encoding="utf-8",
    )
    assert read_all(path) == [
        (1, U1, "Souza, Ana", None),
        (2, U2, "u2", None),
        (3, U1, "last", None),
    ]


def test_csv_gz_is_read_like_plain_csv(tmp_path: Path, write_csv: Any) -> None:
    """A gzipped CSV gives the same rows as the plain file."""
    rows = [(U1, "00042"), (U2, " padded "), ("", "x")]
    plain = write_csv(tmp_path, rows)
    packed = write_csv(tmp_path, rows, name="mappings.csv.gz")
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert (
        read_all(packed)
        == read_all(plain)
        == [
            (1, U1, "00042", None),
            (2, U2, "padded", None),
            (3, None, "x", None),
        ]
    )


def test_csv_columns_are_chosen_by_name(tmp_path: Path, write_csv: Any) -> None:
    """Only the named columns are read, whatever their position; other columns are ignored."""
    header = ("note", "identified_id", "extra", "anon_id", "merged_at")
    rows = [("a, b", "u1", "1e5", U1, "yesterday"), ("", "u2", "", U2, "")]
    path = write_csv(tmp_path, rows, header=header)
    assert read_all(path) == [(1, U1, "u1", None), (2, U2, "u2", None)]


def test_csv_custom_column_names(tmp_path: Path, write_csv: Any) -> None:
    """--anon-column / --identified-column / --time-column pick other columns by name."""
    header = ("device_id", "user_id", "anon_id", "ts")
    path = write_csv(tmp_path, [(U1, "u1", "not this", " 1704067200 ")], header=header)
    columns = Columns(anon="device_id", identified="user_id", time="ts")
    assert read_all(path, columns=columns) == [(1, U1, "u1", "1704067200")]


def test_csv_time_column_trimmed_and_blank_is_null(tmp_path: Path, write_csv: Any) -> None:
    """Time values arrive as trimmed strings, a blank one as null, nothing parsed yet."""
    rows = [(U1, "u", " 2024-01-01T00:00:00Z "), (U1, "u", "   "), (U1, "u", "1e5")]
    path = write_csv(tmp_path, rows, header=("anon_id", "identified_id", "t"))
    times = [t for *_, t in read_all(path, columns=Columns(time="t"))]
    assert times == ["2024-01-01T00:00:00Z", None, "1e5"]


# --- Parquet --------------------------------------------------------------------------------


def test_parquet_string_columns_with_nulls(tmp_path: Path, write_parquet: Any) -> None:
    """Parquet strings are trimmed; nulls and blank strings are missing; lookalikes stay."""
    path = write_parquet(
        tmp_path,
        {
            "anon_id": [U1, None, f"  {U2} ", "NaN", ""],
            "identified_id": ["00042", "u", None, "TRUE", "   "],
        },
    )
    assert read_all(path, "parquet") == [
        (1, U1, "00042", None),
        (2, None, "u", None),
        (3, U2, None, None),
        (4, "NaN", "TRUE", None),
        (5, None, None, None),
    ]


@pytest.mark.parametrize("int_type", [pa.int64(), pa.int32(), pa.uint64(), pa.int8()])
def test_parquet_integer_columns_become_decimal_strings(
    tmp_path: Path, write_parquet: Any, int_type: pa.DataType
) -> None:
    """Integer id columns become their decimal string (42 -> "42"); a null stays missing."""
    values = [42, 0, None, 7, 100]
    if pa.types.is_signed_integer(int_type):
        values[1] = -1
    path = write_parquet(
        tmp_path,
        {"anon_id": [U1] * 5, "identified_id": pa.array(values, int_type)},
    )
    expected = [None if v is None else str(v) for v in values]
    assert [u for _, u in ids(read_all(path, "parquet"))] == expected


def test_parquet_big_unsigned_integer_is_exact(tmp_path: Path, write_parquet: Any) -> None:
    """A 64-bit id is written out digit for digit, not through a float."""
    big = 2**64 - 1
    path = write_parquet(tmp_path, {"anon_id": [U1], "identified_id": pa.array([big], pa.uint64())})
    assert ids(read_all(path, "parquet")) == [(U1, "18446744073709551615")]


def test_parquet_dictionary_and_large_strings(tmp_path: Path, write_parquet: Any) -> None:
    """Dictionary-encoded and large_string columns read like plain strings, trimmed."""
    anon = pa.array([U1, U2, f" {U1} ", None]).dictionary_encode()
    ident = pa.array(["u1", "  ", "u1", "u3"], pa.large_string())
    path = write_parquet(tmp_path, {"anon_id": anon, "identified_id": ident})
    assert ids(read_all(path, "parquet")) == [(U1, "u1"), (U2, None), (U1, "u1"), (None, "u3")]


def test_parquet_columns_chosen_by_name(tmp_path: Path, write_parquet: Any) -> None:
    """Parquet columns are found by name in any order; other columns of any type are ignored."""
    path = write_parquet(
        tmp_path,
        {
            "score": pa.array([1.5, None]),
            "identified_id": ["u1", "u2"],
            "tags": pa.array([["a"], []], pa.list_(pa.string())),
            "anon_id": [U1, U2],
        },
    )
    assert ids(read_all(path, "parquet")) == [(U1, "u1"), (U2, "u2")]


def test_parquet_timestamp_time_column(tmp_path: Path, write_parquet: Any) -> None:
    """A Parquet timestamp time column arrives as a timestamp and converts to epoch ms."""
    stamps = pa.array(
        [dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None, dt.datetime(2024, 1, 1, 0, 0, 1)],
        pa.timestamp("ms", tz="UTC"),
    )
    path = write_parquet(
        tmp_path, {"anon_id": [U1] * 3, "identified_id": ["u"] * 3, "merged_at": stamps}
    )
    chunks = list(open_chunks(path, "parquet", Columns(time="merged_at"))())
    assert len(chunks) == 1
    assert chunks[0].time is not None
    assert pa.types.is_timestamp(chunks[0].time.type)
    ms, status = to_epoch_ms(chunks[0].time, NOW_MS)
    assert ms.tolist() == [1_704_067_200_000, 0, 1_704_067_201_000]
    assert status.tolist() == [TimeStatus.OK, TimeStatus.MISSING, TimeStatus.OK]


# --- chunking -------------------------------------------------------------------------------

N_ROWS = 23


def _rows(n: int) -> list[tuple[str, str, str]]:
    return [(f"anon-{i:03d}", f"user-{i % 5}", str(1_704_067_200 + i)) for i in range(n)]


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_row_numbers_continuous_across_chunks(
    tmp_path: Path, write_csv: Any, write_parquet: Any, fmt: str, chunk_rows: int
) -> None:
    """Chunks of at most chunk_rows rows number rows 1..N without gaps, in file order."""
    rows = _rows(N_ROWS)
    if fmt == "csv":
        path = write_csv(tmp_path, rows, header=("anon_id", "identified_id", "t"))
    else:
        path = write_parquet(
            tmp_path,
            {
                "anon_id": [r[0] for r in rows],
                "identified_id": [r[1] for r in rows],
                "t": [r[2] for r in rows],
            },
            row_group_size=5,  # row groups that straddle chunk boundaries
        )
    records = read_all(path, fmt, Columns(time="t"), chunk_rows)
    assert records == [(i + 1, *r) for i, r in enumerate(rows)]


def test_chunk_sizes_are_bounded(tmp_path: Path, write_csv: Any) -> None:
    """With chunk_rows 7, 23 rows come as chunks of 7, 7, 7 and 2."""
    path = write_csv(tmp_path, [r[:2] for r in _rows(N_ROWS)])
    sizes = [len(c) for c in open_chunks(path, "csv", Columns(), 7)()]
    assert sizes == [7, 7, 7, 2]


def test_source_restarts_from_the_first_row(tmp_path: Path, write_csv: Any) -> None:
    """Each call of the source streams the whole file again from row 1."""
    path = write_csv(tmp_path, [r[:2] for r in _rows(9)])
    source = open_chunks(path, "csv", Columns(), 4)
    first = [(c.first_row, c.anon.to_pylist()) for c in source()]
    second = [(c.first_row, c.anon.to_pylist()) for c in source()]
    assert first == second
    assert [row for row, _ in first] == [1, 5, 9]


# --- refusals -------------------------------------------------------------------------------


def test_absent_column_message_lists_columns_found(tmp_path: Path, write_csv: Any) -> None:
    """A missing column is refused up front, naming it, the columns found and the option."""
    path = write_csv(tmp_path, [("x", "y")], header=("device", "user"))
    with pytest.raises(InputError) as err:
        open_chunks(path, "csv", Columns())
    text = str(err.value)
    assert "'anon_id'" in text
    assert "'device', 'user'" in text
    assert "--anon-column" in text


def test_header_only_file_has_no_data_rows(tmp_path: Path, write_csv: Any) -> None:
    """A header without records is refused when read, not treated as an empty success."""
    path = write_csv(tmp_path, [])
    with pytest.raises(InputError, match="no data rows"):
        list(open_chunks(path, "csv", Columns())())


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("a.csv", None, "csv"),
        ("a.CSV", None, "csv"),
        ("a.csv.gz", None, "csv"),
        ("a.parquet", None, "parquet"),
        ("a.pq", None, "parquet"),
        ("a.xlsx", "csv", "csv"),
        ("a.csv", "parquet", "parquet"),
    ],
)
def test_format_from_extension_or_flag(name: str, fmt: str | None, expected: str) -> None:
    """The format comes from --format when given, else from the extension."""
    assert detect_format(Path(name), fmt) == expected


@pytest.mark.parametrize("name", ["a.xlsx", "a.json", "mappings", "a.txt"])
def test_unknown_extension_is_refused(name: str) -> None:
    """An extension that names no known format is refused with the --format fix."""
    with pytest.raises(InputError, match="--format"):
        detect_format(Path(name), None)
