"""The reader: values exactly as written, trimmed, missing only when empty; rows count records."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backfill.errors import InputError
from backfill.read import Columns, detect_format, open_chunks, open_dataset
from backfill.validation.judge import judge
from backfill.validation.reasons import Reason
from backfill.validation.times import TimeStatus, to_epoch_ms
from backfill.validation.times import describe as describe_time

NOW_MS = 1_760_000_000_000  # 2025-10-09
U1 = "8e8afc84-9b31-46ab-a745-e5279afad5ab"
U2 = "a92d9e0f-e310-4aee-9817-a1320b6451b0"
U3 = "bf44e1ec-1d71-43de-9cf8-1d93982ed19d"
U4 = "945b3a5a-89ca-43eb-a0c1-7c7337ef1c35"

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
    with pytest.raises(InputError, match="column 'anon_id' not found") as err:
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


# --- TSV, JSON Lines and delimiters -----------------------------------------------------------

SAMPLE_CSV = Path(__file__).resolve().parent.parent / "sample_data" / "mappings.csv"
SAMPLE_COLUMNS = Columns(time="merged_at")


def _sample_rows() -> list[list[str]]:
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _write_sample(directory: Path, name: str) -> Path:
    """The sample data in the format ``name`` says; ``-numbers`` writes digit times as JSON
    numbers (so the exact JSON reader takes over from pyarrow's mid-file)."""
    header, *rows = _sample_rows()
    path = directory / name.replace("-numbers", "")
    if ".tsv" in name:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter="\t", lineterminator="\n").writerows([header, *rows])
        data = buffer.getvalue().encode()
    else:
        lines = []
        for row in rows:
            obj: dict[str, Any] = dict(zip(header, row, strict=True))
            if "-numbers" in name and obj["merged_at"].isdigit():
                obj["merged_at"] = int(obj["merged_at"])
            lines.append(json.dumps(obj, ensure_ascii=False))
        data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize(
    "name", ["s.tsv", "s.tsv.gz", "s.jsonl", "s.jsonl.gz", "s.ndjson", "s-numbers.jsonl"]
)
def test_sample_data_in_every_text_format_validates_like_the_csv(tmp_path: Path, name: str) -> None:
    """TSV, JSON Lines (plain, gzip, numbers) give the CSV's rows and verdicts exactly."""
    expected_rows = read_all(SAMPLE_CSV, columns=SAMPLE_COLUMNS)
    path = _write_sample(tmp_path, name)
    dataset = open_dataset([path], columns=SAMPLE_COLUMNS, chunk_rows=100)
    assert dataset.format == ("tsv" if ".tsv" in name else "jsonl")
    got = [
        (c.first_row + k, a, u, t)
        for c in dataset()
        for k, (a, u, t) in enumerate(
            # SAMPLE_COLUMNS names a time column, so every chunk has one (typed as optional).
            zip(c.anon.to_pylist(), c.identified.to_pylist(), c.time.to_pylist(), strict=True)  # type: ignore[union-attr]
        )
    ]
    assert got == expected_rows
    want = judge(open_chunks(SAMPLE_CSV, "csv", SAMPLE_COLUMNS), now_ms=NOW_MS).reasons
    assert judge(dataset, now_ms=NOW_MS).reasons.tolist() == want.tolist()


def _jsonl(tmp_path: Path, text: str, name: str = "m.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _read_jsonl(path: Path, columns: Columns | None = None) -> list[Record]:
    out: list[Record] = []
    for chunk in open_dataset([path], columns=columns)():
        times = [None] * len(chunk) if chunk.time is None else chunk.time.to_pylist()
        rows = zip(chunk.anon.to_pylist(), chunk.identified.to_pylist(), times, strict=True)
        out.extend((chunk.first_row + k, a, u, t) for k, (a, u, t) in enumerate(rows))
    return out


def test_jsonl_values_are_read_as_written(tmp_path: Path) -> None:
    """JSON numbers and booleans keep their literal text; null, absent and blank are missing."""
    path = _jsonl(
        tmp_path,
        '{"anon_id": " 00042 ", "identified_id": 42, "extra": {"a": [1]}}\n'
        '{"anon_id": "x", "identified_id": 1.50}\n'
        '{"anon_id": "x", "identified_id": 1e5, "t": -0}\n'
        '{"anon_id": "x", "identified_id": true, "t": null}\n'
        '{"anon_id": null, "identified_id": "   "}\n'
        "\n"
        '{"identified_id": "NULL", "t": "  1704067200 "}\n',
    )
    assert _read_jsonl(path, Columns(time="t")) == [
        (1, "00042", "42", None),
        (2, "x", "1.50", None),
        (3, "x", "1e5", "-0"),
        (4, "x", "true", None),
        (5, None, None, None),
        (6, None, "NULL", "1704067200"),
    ]


def test_jsonl_switches_readers_mid_file_without_losing_rows(tmp_path: Path) -> None:
    """Strings for a few MiB, then a number: every row once, in order, numbers as written."""
    n = 40_000
    lines = [
        f'{{"anon_id": "{U1}", "identified_id": "user-{i:08d}-padding-padding"}}' for i in range(n)
    ]
    lines.append(f'{{"anon_id": "{U2}", "identified_id": 12345678901234567890}}')
    path = _jsonl(tmp_path, "\n".join(lines) + "\n")
    got = _read_jsonl(path)
    assert len(got) == n + 1
    assert [r[0] for r in got] == list(range(1, n + 2))
    assert got[n - 1][2] == f"user-{n - 1:08d}-padding-padding"
    assert got[n] == (n + 1, U2, "12345678901234567890", None)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('{"anon_id": "a", "identified_id": "b"}\n{"anon_id": {"x": 1}, "identified_id": "b"}\n',
         ["line 2", "'anon_id' holds a JSON object", "choose the key"]),
        ('{"anon_id": "a", "identified_id": "b"}\n\n{"anon_id": "a", "identified_id": ["b"]}\n',
         ["line 3", "'identified_id' holds a JSON array"]),
        ('{"anon_id": "a", "identified_id": "b"}\n{"anon_id": "a", "identified_id": "b",}\n',
         ["line 2 is not valid JSON"]),
        ('{"anon_id": "a", "identified_id": "b"}\n"just a string"\n',
         ["line 2 holds a JSON string, not an object"]),
    ],
)  # fmt: skip
def test_jsonl_bad_records_refuse_the_file_naming_the_line(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    """A nested id, a broken line or a non-object is refused with its line number."""
    with pytest.raises(InputError, match=r"m\.jsonl: line [23]") as err:
        _read_jsonl(_jsonl(tmp_path, text))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_jsonl_missing_key_is_refused_up_front(tmp_path: Path) -> None:
    """A chosen key found in none of the first records is refused, listing the keys seen."""
    path = _jsonl(tmp_path, '{"device": "a", "identified_id": "b"}\n')
    with pytest.raises(InputError, match=r"'anon_id' not found .* keys found: 'device'"):
        open_dataset([path])


@pytest.mark.parametrize(
    ("name", "content", "fmt", "fragment"),
    [
        ("a.csv", '{"anon_id": "a", "identified_id": "b"}\n', None, "--format jsonl"),
        ("a.tsv", '{"anon_id": "a", "identified_id": "b"}\n', None, "looks like JSON, not TSV"),
        ("a.csv", "anon_id;identified_id\na;b\n", None, "--delimiter ';'"),
        ("a.csv", "anon_id|identified_id\na|b\n", None, "--delimiter '|'"),
        ("a.csv", "anon_id\tidentified_id\na\tb\n", None, "--format tsv"),
        ("a.tsv", "anon_id,identified_id\na,b\n", None, "--format csv"),
        ("a.jsonl", "anon_id,identified_id\na,b\n", None, "looks like CSV text: pass --format csv"),
        ("a.jsonl", '[{"anon_id": "a"}]\n', None, "JSON array"),
        ("a.parquet", "anon_id\tidentified_id\na\tb\n", None, "--format tsv"),
    ],
)  # fmt: skip
def test_wrong_format_messages_name_what_the_content_looks_like(
    tmp_path: Path, name: str, content: str, fmt: str | None, fragment: str
) -> None:
    """Read as the wrong format, the refusal names the format (or delimiter) that fits."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(fragment)) as err:
        open_dataset([path], fmt)
    assert fragment in str(err.value)


def test_semicolon_file_with_delimiter_option(tmp_path: Path) -> None:
    """--delimiter ';' reads a semicolon-separated file, quoting and all."""
    path = tmp_path / "a.csv"
    path.write_text(f'anon_id;identified_id\n{U1};"Souza; Ana"\n', encoding="utf-8")
    got = [
        (c.anon.to_pylist(), c.identified.to_pylist())
        for c in open_dataset([path], delimiter=";")()
    ]
    assert got == [([U1], ["Souza; Ana"])]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.tsv", "tsv"), ("a.TSV.gz", "tsv"), ("a.jsonl", "jsonl"), ("a.ndjson.gz", "jsonl"),
     ("part-0.snappy.parquet", "parquet")],
)  # fmt: skip
def test_new_extensions(name: str, fmt: str) -> None:
    """TSV, JSON Lines and their .gz forms are known by extension."""
    assert detect_format(Path(name), None) == fmt


# --- hostile input ----------------------------------------------------------------------------


def test_unclosed_quote_in_an_id_refuses_the_file_naming_the_line(tmp_path: Path) -> None:
    """`<uuid>,"user_4` on line 6 of 9: refused, naming line 6 and the unclosed quote."""
    lines = ["anon_id,identified_id"] + [f"{U1},user_{i}" for i in range(1, 9)]
    lines[5] = f'{U1},"user_5'
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="holds a line break: a quote is probably not") as err:
        read_all(path)
    text = str(err.value)
    assert "line 6" in text
    assert "quote is probably not closed" in text
    assert "\n" not in text


def test_quote_closed_lines_later_in_an_id_is_refused(tmp_path: Path) -> None:
    """A quote that opens in an id and closes two lines on swallows them: refused at line 3."""
    path = tmp_path / "m.csv"
    path.write_text(
        f'anon_id,identified_id\n{U1},a\n{U2},"b\n{U3},c\n{U4},d"\n{U1},e\n', encoding="utf-8"
    )
    with pytest.raises(
        InputError, match=r"'identified_id' value of the record at line 3 \(row 2\)"
    ):
        read_all(path)


def test_unclosed_quote_to_the_end_names_the_line(tmp_path: Path) -> None:
    """An id quote left open to the end of a three-column file: malformed, at its line."""
    path = tmp_path / "m.csv"
    path.write_text(f'anon_id,identified_id,n\n{U1},a,1\n{U2},"b,2\n{U3},c,3\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"line 3 \(row 2\).*quote is probably not closed"):
        read_all(path)


def test_rows_keep_counting_records_after_a_multiline_note(tmp_path: Path) -> None:
    """A quoted note spanning lines does not shift the row numbers of what follows."""
    path = tmp_path / "m.csv"
    path.write_text(f'anon_id,identified_id,note\n{U1},a,"one\ntwo"\n{U2},b,\n', encoding="utf-8")
    assert ids(read_all(path)) == [(U1, "a"), (U2, "b")]
    assert [r[0] for r in read_all(path)] == [1, 2]


@pytest.mark.parametrize(
    "header", ["anon_id,identified_id,anon_id", "anon_id,identified_id,identified_id"]
)
def test_duplicate_chosen_csv_column_is_refused(tmp_path: Path, header: str) -> None:
    """A chosen column named twice is ambiguous: refused naming it."""
    path = tmp_path / "m.csv"
    path.write_text(f"{header}\n{U1},a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"more than one column named '(anon|identified)_id'"):
        open_dataset([path])


def test_duplicate_other_columns_are_harmless(tmp_path: Path, write_parquet: Any) -> None:
    """Duplicates among the columns not chosen are read past, in CSV and Parquet."""
    path = tmp_path / "m.csv"
    path.write_text(f"x,anon_id,x,identified_id\n1,{U1},2,a\n", encoding="utf-8")
    assert ids(read_all(path)) == [(U1, "a")]
    table = pa.Table.from_arrays(
        [pa.array(["1"]), pa.array([U1]), pa.array(["2"]), pa.array(["a"])],
        names=["x", "anon_id", "x", "identified_id"],
    )
    pq.write_table(table, tmp_path / "m.parquet")
    assert ids(read_all(tmp_path / "m.parquet", "parquet")) == [(U1, "a")]


def test_duplicate_chosen_parquet_column_is_refused(tmp_path: Path) -> None:
    """pyarrow would hand back both columns of a duplicated name: refused instead."""
    table = pa.Table.from_arrays(
        [pa.array([U1]), pa.array(["a"]), pa.array(["b"])],
        names=["anon_id", "identified_id", "anon_id"],
    )
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(InputError, match="more than one column named 'anon_id'"):
        open_dataset([tmp_path / "m.parquet"])


@pytest.mark.parametrize("quoted", [False, True])
def test_huge_field_is_refused_as_far_too_large(tmp_path: Path, quoted: bool) -> None:
    """A 50 MB value: a message saying so and naming the line, not pyarrow's block error."""
    path = tmp_path / "m.csv"
    big = b"x" * (50 << 20)
    value = b'"' + big + b'"' if quoted else big
    with path.open("wb") as f:
        f.write(f"anon_id,identified_id\n{U1},a\n{U2},b\n{U3},".encode())
        f.write(value)
        f.write(f"\n{U4},d\n".encode())
    with pytest.raises(InputError, match="far too large to be an id") as err:
        read_all(path)
    text = str(err.value)
    assert "far too large to be an id" in text
    assert "line 4 (row 3)" in text
    assert "straddl" not in text


def test_nul_in_the_middle_of_a_big_csv_is_kept_in_the_value(tmp_path: Path) -> None:
    """A NUL byte past the sniffed head neither crashes nor truncates: it reaches the validator."""
    rows = [(U1, f"user_{i:06d}") for i in range(20_000)]
    rows[5_000] = (U1, "us\x00er")
    path = tmp_path / "m.csv"
    path.write_text(
        "anon_id,identified_id\n" + "".join(f"{a},{u}\n" for a, u in rows), encoding="utf-8"
    )
    got = read_all(path)
    assert len(got) == 20_000
    assert got[5_000] == (5_001, U1, "us\x00er", None)


def test_parquet_epoch_micro_and_nanoseconds_are_invalid_time_naming_the_unit(
    tmp_path: Path, write_parquet: Any
) -> None:
    """Plain int64 µs/ns times are invalid_time naming the unit; timestamp[us]/[ns] are read."""
    ms = 1_704_067_200_000
    ints = pa.array([ms, ms * 1000, ms * 1_000_000, ms // 1000], pa.int64())
    path = write_parquet(
        tmp_path, {"anon_id": [U1, U2, U3, U4], "identified_id": ["u"] * 4, "t": ints}
    )
    chunk = next(iter(open_chunks(path, "parquet", Columns(time="t"))()))
    assert chunk.time is not None
    values, status = to_epoch_ms(chunk.time, NOW_MS)
    assert values.tolist() == [ms, 0, 0, ms]
    assert [TimeStatus(s) for s in status] == [
        TimeStatus.OK, TimeStatus.MICROSECONDS, TimeStatus.NANOSECONDS, TimeStatus.OK,
    ]  # fmt: skip
    assert "epoch microseconds" in describe_time(TimeStatus.MICROSECONDS, str(ms * 1000))
    assert "divide by 1,000,000" in describe_time(TimeStatus.NANOSECONDS, str(ms * 10**6))
    v = judge(open_chunks(path, "parquet", Columns(time="t")), now_ms=NOW_MS)
    assert v.reasons.tolist() == [0, Reason.INVALID_TIME, Reason.INVALID_TIME, 0]
    for unit in ("us", "ns"):
        stamps = pa.array([ms * (1000 if unit == "us" else 1_000_000)], pa.timestamp(unit))
        path = write_parquet(
            tmp_path, {"anon_id": [U1], "identified_id": ["u"], "t": stamps}, name=f"{unit}.pq"
        )
        chunk = next(iter(open_chunks(path, "parquet", Columns(time="t"))()))
        assert chunk.time is not None
        assert to_epoch_ms(chunk.time, NOW_MS)[0].tolist() == [ms]


def test_text_epoch_nanoseconds_name_the_unit() -> None:
    """19-digit text times are nanoseconds by their size, 16-digit ones microseconds."""
    values = pa.array(["1704067200000000000", "1704067200000000", "2024-01-01"])
    _, status = to_epoch_ms(values, NOW_MS)
    assert [TimeStatus(s) for s in status] == [
        TimeStatus.NANOSECONDS, TimeStatus.MICROSECONDS, TimeStatus.OK,
    ]  # fmt: skip


def test_jsonl_repeated_chosen_key_is_refused_others_not(tmp_path: Path) -> None:
    """A chosen key twice in one object is refused naming the line; other repeats are not."""
    fine = _jsonl(tmp_path, '{"x": 1, "x": 2, "anon_id": "a", "identified_id": "b"}\n')
    assert _read_jsonl(fine) == [(1, "a", "b", None)]
    path = _jsonl(
        tmp_path,
        '{"anon_id": "a", "identified_id": "b"}\n{"anon_id": "a", "anon_id": "c", '
        '"identified_id": "b"}\n',
        name="twice.jsonl",
    )
    with pytest.raises(InputError, match=r"line 2 has the key 'anon_id' more than once"):
        _read_jsonl(path)


def test_unclosed_quote_in_another_column_to_the_end_is_refused(tmp_path: Path) -> None:
    """A note quote never closed would swallow the last rows silently: refused at its line."""
    path = tmp_path / "m.csv"
    path.write_text(
        f'anon_id,identified_id,note\n{U1},a,ok\n{U2},b,"oops\n{U3},c,x\n{U4},d,y\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"quote opened in the record at line 3 \(row 2\)"):
        read_all(path)


def test_stray_quote_inside_an_unquoted_value_is_read_as_a_character(tmp_path: Path) -> None:
    """An odd number of quotes from `5" pizza` is no open quote: the file reads as before."""
    path = tmp_path / "m.csv"
    path.write_text(f'anon_id,identified_id,note\n{U1},a,5" pizza\n{U2},b,\n', encoding="utf-8")
    assert ids(read_all(path)) == [(U1, "a"), (U2, "b")]
