"""Datasets of many files: resolution, one row order, per-file rows, fingerprints, digests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backfill.errors import ConfigError, InputError
from backfill.read import Columns, Dataset, InputChanged, open_dataset
from backfill.read.chunk import Chunk
from backfill.read.source import glob_regex
from backfill.validation.judge import judge
from backfill.validation.reasons import Reason

NOW_MS = 1_760_000_000_000
U1 = "8e8afc84-9b31-46ab-a745-e5279afad5ab"
U2 = "a92d9e0f-e310-4aee-9817-a1320b6451b0"
U3 = "bf44e1ec-1d71-43de-9cf8-1d93982ed19d"
U4 = "945b3a5a-89ca-43eb-a0c1-7c7337ef1c35"

Rows = list[tuple[str, str]]


def records(source: Dataset) -> list[tuple[int, int, int, Any, Any]]:
    """(dataset row, file index, file row, anon, identified) of every row, in order."""
    out = []
    for chunk in source():
        for k, (a, u) in enumerate(
            zip(chunk.anon.to_pylist(), chunk.identified.to_pylist(), strict=True)
        ):
            out.append((chunk.first_row + k, chunk.file_index, chunk.file_row + k, a, u))
    return out


def verdicts(source: Dataset) -> tuple[list[int], list[int]]:
    """The reason of every row, and the row each repeat refers back to."""
    v = judge(source, now_ms=NOW_MS)
    rows = np.arange(1, v.rows_read + 1, dtype=np.int64)
    return v.reasons.tolist(), v.first_rows(rows).tolist()


#: Four parts whose rows conflict and repeat across part boundaries.
PARTS: list[Rows] = [
    [(U1, "alice"), (U2, "bob")],
    [(U1, "alice"), (U3, "carol")],  # duplicate of part 0's first row
    [],  # an empty part (header only), as Spark writes for an empty partition
    [(U3, "dave"), (U4, "erin")],  # U3 conflicts with part 1
]


def write_parts(folder: Path, fmt: str = "parquet") -> list[Path]:
    """PARTS as part-0000.* … part-0003.* in ``folder``, plus writer markers to skip."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, rows in enumerate(PARTS):
        path = folder / f"part-{k:04d}.{fmt}"
        if fmt == "parquet":
            table = pa.table(
                {
                    "anon_id": pa.array([a for a, _ in rows], pa.string()),
                    "identified_id": pa.array([u for _, u in rows], pa.string()),
                }
            )
            pq.write_table(table, path)
        else:
            lines = ["anon_id,identified_id", *(f"{a},{u}" for a, u in rows)]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / f".part-0000.{fmt}.crc").write_bytes(b"\x00crc")
    (folder / "_common_metadata").write_bytes(b"PAR1")
    return paths


class TestOneDataset:
    def test_folder_glob_and_arguments_give_the_concatenated_verdicts(
        self, tmp_path: Path, write_parquet: Any
    ) -> None:
        """A folder, a quoted pattern and the files as arguments judge like one joined file."""
        paths = write_parts(tmp_path / "export")
        rows = [r for part in PARTS for r in part]
        joined = write_parquet(
            tmp_path,
            {"anon_id": [a for a, _ in rows], "identified_id": [u for _, u in rows]},
            name="joined.parquet",
        )
        expected = verdicts(open_dataset([joined]))
        for inputs in (
            [tmp_path / "export"],
            [str(tmp_path / "export" / "part-*.parquet")],
            [str(p) for p in reversed(paths)],  # sorted, whatever the argument order
        ):
            assert verdicts(open_dataset(inputs)) == expected

    def test_cross_file_conflict_and_duplicate_are_found(self, tmp_path: Path) -> None:
        """Rules 6-7 see every file: a repeat and a conflict that span parts are rejected."""
        write_parts(tmp_path / "export")
        reasons, firsts = verdicts(open_dataset([tmp_path / "export"]))
        # Rows: 1 U1-alice, 2 U2-bob, 3 U1-alice (dup of 1), 4 U3-carol, 5 U3-dave, 6 U4-erin
        dup, conflict = Reason.DUPLICATE_PAIR, Reason.CONFLICTING_ANON_ID
        assert reasons == [0, 0, dup, conflict, conflict, 0]
        assert firsts[2] == 1
        assert firsts[3] == 5
        assert firsts[4] == 4

    def test_rows_are_numbered_across_files_and_within_each(self, tmp_path: Path) -> None:
        """Dataset rows run 1..N; each chunk names its file and the row within that file."""
        write_parts(tmp_path / "export", "csv")
        got = records(open_dataset([tmp_path / "export"], chunk_rows=1))
        assert [(r, f, fr) for r, f, fr, _, _ in got] == [
            (1, 0, 1),
            (2, 0, 2),
            (3, 1, 1),
            (4, 1, 2),
            (5, 3, 1),
            (6, 3, 2),
        ]

    def test_a_chunk_never_spans_two_files(self, tmp_path: Path) -> None:
        """With a chunk size larger than every file, each file still gets chunks of its own."""
        write_parts(tmp_path / "export", "csv")
        chunks = list(open_dataset([tmp_path / "export"], chunk_rows=1000)())
        assert [(c.first_row, len(c), c.file_index, c.file_row) for c in chunks] == [
            (1, 2, 0, 1),
            (3, 2, 1, 1),
            (5, 2, 3, 1),
        ]

    def test_files_list_names_formats_sizes_and_rows_after_a_pass(self, tmp_path: Path) -> None:
        """Dataset.files lists each file as the user named it; rows are known after a pass."""
        paths = write_parts(tmp_path / "export", "csv")
        ds = open_dataset([str(tmp_path / "export")])
        assert [f.name for f in ds.files] == [str(p) for p in paths]
        assert {f.format for f in ds.files} == {"csv"}
        assert [f.size for f in ds.files] == [p.stat().st_size for p in paths]
        assert ds.rows is None
        assert all(f.rows is None for f in ds.files)
        list(ds())
        assert [f.rows for f in ds.files] == [2, 2, 0, 2]
        assert ds.rows == 6

    def test_locate_maps_dataset_rows_to_file_and_row(self, tmp_path: Path) -> None:
        """Dataset rows map to (file index, row in file), skipping the empty part."""
        write_parts(tmp_path / "export", "csv")
        ds = open_dataset([tmp_path / "export"])
        with pytest.raises(RuntimeError, match="has not been read to its end yet"):
            ds.locate(np.array([1], dtype=np.int64))
        list(ds())
        index, row = ds.locate(np.array([1, 2, 3, 4, 5, 6], dtype=np.int64))
        assert index.tolist() == [0, 0, 1, 1, 3, 3]
        assert row.tolist() == [1, 2, 1, 2, 1, 2]

    def test_source_restarts_from_the_first_file(self, tmp_path: Path) -> None:
        """Each call streams the whole dataset again from row 1 of the first file."""
        write_parts(tmp_path / "export", "csv")
        ds = open_dataset([tmp_path / "export"], chunk_rows=1)
        assert records(ds) == records(ds)

    def test_no_data_rows_in_any_file_is_refused(self, tmp_path: Path) -> None:
        """Header-only files, and 0-byte ones, are fine among others; all of them is refused."""
        (tmp_path / "a.csv").write_text("anon_id,identified_id\n", encoding="utf-8")
        (tmp_path / "b.csv").write_bytes(b"")
        ds = open_dataset([tmp_path / "a.csv", tmp_path / "b.csv"])
        with pytest.raises(InputError, match="no data rows"):
            list(ds())
        (tmp_path / "c.csv").write_text(f"anon_id,identified_id\n{U1},u\n", encoding="utf-8")
        ds = open_dataset([str(tmp_path / "*.csv")])
        assert [r[1:] for r in records(ds)] == [(2, 1, U1, "u")]

    def test_single_empty_file_is_refused_as_empty(self, tmp_path: Path) -> None:
        """One 0-byte file alone is refused up front as empty."""
        (tmp_path / "a.csv").write_bytes(b"")
        with pytest.raises(InputError, match="input file is empty"):
            open_dataset([tmp_path / "a.csv"])

    def test_a_column_missing_in_a_later_file_is_refused_up_front(self, tmp_path: Path) -> None:
        """Every file's header is checked when the dataset opens, naming the file."""
        write_parts(tmp_path / "export", "csv")
        (tmp_path / "export" / "part-0009.csv").write_text("anon_id,user\nx,y\n", "utf-8")
        with pytest.raises(InputError, match=r"'identified_id' not found in .*part-0009\.csv"):
            open_dataset([tmp_path / "export"])


class TestResolution:
    def test_markers_hidden_files_and_subfolders_are_skipped(self, tmp_path: Path) -> None:
        """_SUCCESS, .crc, _metadata-like and hidden files, and subfolders, are not read."""
        write_parts(tmp_path / "export", "csv")
        (tmp_path / "export" / "nested").mkdir()
        (tmp_path / "export" / "nested" / "part-9.csv").write_text("junk\n", encoding="utf-8")
        ds = open_dataset([tmp_path / "export"])
        assert [Path(f.name).name for f in ds.files] == [f"part-{k:04d}.csv" for k in range(4)]

    def test_folder_of_subfolders_suggests_a_pattern(self, tmp_path: Path) -> None:
        """A folder holding only subfolders (Hive partitions) is refused with a pattern hint."""
        write_parts(tmp_path / "export" / "date=2024-01-01", "parquet")
        with pytest.raises(InputError, match=r"subfolder.*'.*export/\*/\*\.parquet'"):
            open_dataset([tmp_path / "export"])
        ds = open_dataset([str(tmp_path / "export" / "*" / "*.parquet")])
        assert len(ds.files) == 4

    def test_recursive_pattern_crosses_folders(self, tmp_path: Path) -> None:
        """'**' in a pattern matches files in nested folders."""
        write_parts(tmp_path / "export" / "a" / "b", "csv")
        assert len(open_dataset([str(tmp_path / "export" / "**" / "*.csv")]).files) == 4

    def test_pattern_matching_nothing_is_refused(self, tmp_path: Path) -> None:
        """A pattern with no match names the pattern and says to quote it."""
        with pytest.raises(InputError, match=r"no files match .*part-\*\.csv.*quote"):
            open_dataset([str(tmp_path / "part-*.csv")])

    def test_a_file_named_twice_is_read_once(self, tmp_path: Path) -> None:
        """A file reached through a folder and by its own path counts once."""
        paths = write_parts(tmp_path / "export", "csv")
        ds = open_dataset([tmp_path / "export", paths[0]])
        assert len(ds.files) == 4

    def test_mixed_formats_are_refused_naming_the_files(self, tmp_path: Path) -> None:
        """A .csv and a .parquet in one dataset are refused, each kind listed."""
        write_parts(tmp_path / "export", "csv")
        write_parts(tmp_path / "export", "parquet")
        with pytest.raises(InputError, match=r"mixes formats \(csv: .*part-0000\.csv.*parquet:"):
            open_dataset([tmp_path / "export"])

    def test_unknown_file_in_a_folder_is_refused_naming_it(self, tmp_path: Path) -> None:
        """A file of no known extension among the parts is named, with the ways out."""
        write_parts(tmp_path / "export", "csv")
        (tmp_path / "export" / "manifest.txt").write_text("x", encoding="utf-8")
        with pytest.raises(InputError, match=r"manifest\.txt.*--format"):
            open_dataset([tmp_path / "export"])

    def test_missing_path_is_refused(self, tmp_path: Path) -> None:
        """A path that does not exist is refused naming it."""
        with pytest.raises(InputError, match=r"input file not found: .*nope\.csv"):
            open_dataset([tmp_path / "nope.csv"])

    @pytest.mark.parametrize(
        ("pattern", "path", "hit"),
        [
            ("b/export/part-*.parquet", "b/export/part-1.parquet", True),
            ("b/export/part-*.parquet", "b/export/sub/part-1.parquet", False),
            ("b/export/*/*.csv", "b/export/d=1/x.csv", True),
            ("b/**/x.csv", "b/x.csv", True),
            ("b/**/x.csv", "b/1/2/x.csv", True),
            ("b/part-[01].csv", "b/part-1.csv", True),
            ("b/part-[!01].csv", "b/part-1.csv", False),
            ("b/part-?.csv", "b/part-10.csv", False),
        ],
    )
    def test_object_store_patterns(self, pattern: str, path: str, hit: bool) -> None:
        """Patterns over object keys: * and ? stay in one segment, ** crosses them."""
        assert bool(glob_regex(pattern).fullmatch(path)) is hit


class TestNotRegularFiles:
    def test_dash_is_refused(self) -> None:
        """'-' (standard input) is not a regular file: the fix is to write a file first."""
        with pytest.raises(InputError, match=r"not a regular file.*write the export to a file"):
            open_dataset(["-"])

    def test_fifo_is_refused(self, tmp_path: Path) -> None:
        """A named pipe is refused without being opened (opening it would block)."""
        fifo = tmp_path / "pipe.csv"
        os.mkfifo(fifo)
        with pytest.raises(InputError, match=r"not a regular file \(a FIFO"):
            open_dataset([fifo])

    def test_character_device_is_refused(self) -> None:
        """/dev/null is a character device, not an input."""
        with pytest.raises(InputError, match=r"not a regular file \(a character device"):
            open_dataset(["/dev/null"], "csv")


def padded(text: str, size: int) -> str:
    """``text`` (CSV ending in an empty last field and a newline) grown to ``size`` bytes by
    filling that last field."""
    return text[:-1] + "x" * (size - len(text.encode())) + "\n"


class TestChangesBetweenPasses:
    def test_a_file_that_grew_is_refused_on_the_next_pass(self, tmp_path: Path) -> None:
        """More rows in a file on the second pass raise InputChanged before the extra rows."""
        path = tmp_path / "a.csv"
        path.write_text(f"anon_id,identified_id\n{U1},u\n", encoding="utf-8")
        ds = open_dataset([path, tmp_path / "a.csv"])
        list(ds())
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{U2},v\n")
        with pytest.raises(InputChanged, match=r"a\.csv changed .* now has \d+ bytes"):
            list(ds())

    def test_a_grown_file_of_the_same_size_is_caught_by_its_rows(self, tmp_path: Path) -> None:
        """Rows added while as many bytes are cut from a note keep the size: rows tell."""
        path = tmp_path / "a.csv"
        path.write_text(f"anon_id,identified_id,n\n{U1},u,{'x' * 40}\n", encoding="utf-8")
        ds = open_dataset([path])
        list(ds())
        grown = f"anon_id,identified_id,n\n{U1},u,\n{U2},v,\n"
        path.write_text(padded(grown, ds.files[0].size), encoding="utf-8")
        assert path.stat().st_size == ds.files[0].size
        with pytest.raises(InputChanged, match=r"a\.csv grew"):
            list(ds())

    def test_an_empty_part_that_fills_up_is_refused(self, tmp_path: Path) -> None:
        """A part empty on the first pass and not on the second is a change, not skipped."""
        paths = write_parts(tmp_path / "export", "csv")
        ds = open_dataset([tmp_path / "export"])
        list(ds())
        paths[2].write_text(f"anon_id,identified_id\n{U1},zed\n", encoding="utf-8")
        with pytest.raises(InputChanged, match=r"part-0002\.csv changed"):
            list(ds())

    def test_a_file_that_shrank_is_refused_before_the_next_file(self, tmp_path: Path) -> None:
        """Fewer rows in a part (same size) stop the pass before the next part's rows."""
        first, second = tmp_path / "a.csv", tmp_path / "b.csv"
        first.write_text(f"anon_id,identified_id,n\n{U1},u,\n{U2},v,\n", encoding="utf-8")
        second.write_text(f"anon_id,identified_id\n{U3},w\n", encoding="utf-8")
        ds = open_dataset([first, second])
        list(ds())
        size = first.stat().st_size
        first.write_text(padded(f"anon_id,identified_id,n\n{U1},u,\n", size), encoding="utf-8")
        assert first.stat().st_size == size
        seen: list[Chunk] = []
        with pytest.raises(InputChanged, match=r"a\.csv shrank"):
            seen.extend(ds())
        assert all(c.file_index == 0 for c in seen)


class TestFingerprint:
    def test_local_files_by_name_size_and_sha256(self, tmp_path: Path) -> None:
        """Each file: base name, size and SHA-256 of its bytes, in dataset order."""
        import hashlib

        paths = write_parts(tmp_path / "export", "csv")
        fp = open_dataset([tmp_path / "export"]).fingerprint()
        assert fp["format"] == "csv"
        assert fp["files"] == [
            {
                "name": p.name,
                "size": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            for p in paths
        ]

    def test_changes_when_a_part_changes_and_not_with_the_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Editing one part changes the fingerprint; running from elsewhere does not."""
        paths = write_parts(tmp_path / "export", "csv")
        before = open_dataset([tmp_path / "export"]).fingerprint()
        monkeypatch.chdir(tmp_path / "export")
        assert open_dataset(["."]).fingerprint() == before
        paths[1].write_text(f"anon_id,identified_id\n{U1},alicf\n{U3},carol\n", "utf-8")
        assert open_dataset(["."]).fingerprint() != before


class TestChunkDigest:
    def test_same_bytes_same_digest_in_another_process(self, tmp_path: Path) -> None:
        """The digest depends on the values only: another process computes the same one."""
        paths = write_parts(tmp_path / "export", "csv")
        here = [c.digest().hex() for c in open_dataset([tmp_path / "export"], chunk_rows=1)()]
        code = (
            "import sys; from backfill.read import open_dataset; "
            "print(' '.join(c.digest().hex() for c in open_dataset([sys.argv[1]], "
            "chunk_rows=1)()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(paths[0].parent)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.split() == here
        assert len(set(here)) == len(here)  # place and values differ in every chunk

    def test_a_same_length_overwrite_in_place_changes_the_digest(self, tmp_path: Path) -> None:
        """One character overwritten in place (same size) changes that chunk's digest only."""
        path = tmp_path / "a.csv"
        path.write_text(f"anon_id,identified_id\n{U1},alice\n{U2},bobby\n", encoding="utf-8")
        ds = open_dataset([path], chunk_rows=1)
        before = [c.digest() for c in ds()]
        data = bytearray(path.read_bytes())
        at = data.index(b"bobby")
        data[at : at + 5] = b"kiosk"
        with path.open("r+b") as f:  # in place, like dd conv=notrunc
            f.write(data)
        after = [c.digest() for c in ds()]
        assert before[0] == after[0]
        assert before[1] != after[1]

    def test_digest_covers_the_time_column(self, write_parquet: Any, tmp_path: Path) -> None:
        """A changed time (any type) changes the digest; nulls and empty values differ."""
        base = {"anon_id": [U1, U2], "identified_id": ["a", None]}
        one = write_parquet(tmp_path, {**base, "t": pa.array([1, 2], pa.int64())}, name="1.pq")
        two = write_parquet(tmp_path, {**base, "t": pa.array([1, 3], pa.int64())}, name="2.pq")
        digests = [
            next(iter(open_dataset([p], columns=Columns(time="t"))())).digest() for p in (one, two)
        ]
        assert digests[0] != digests[1]


class TestFormatsOption:
    @pytest.mark.parametrize("fmt", ["CSV", "Csv", "csv"])
    def test_format_is_case_insensitive(self, tmp_path: Path, fmt: str) -> None:
        """--format CSV reads like --format csv."""
        path = tmp_path / "export.txt"
        path.write_text(f"anon_id,identified_id\n{U1},u\n", encoding="utf-8")
        assert records(open_dataset([path], fmt)) == [(1, 0, 1, U1, "u")]

    def test_unknown_format_is_refused(self, tmp_path: Path) -> None:
        """--format xlsx names the formats there are."""
        with pytest.raises(ConfigError, match=r"csv, tsv, parquet, jsonl"):
            open_dataset([tmp_path], "xlsx")

    @pytest.mark.parametrize("bad", ["", ";;", '"', "\n"])
    def test_delimiter_must_be_one_plain_character(self, tmp_path: Path, bad: str) -> None:
        """An empty, long, quote or newline delimiter is refused with an example."""
        path = tmp_path / "a.csv"
        path.write_text("anon_id,identified_id\nx,y\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="--delimiter"):
            open_dataset([path], delimiter=bad)

    def test_delimiter_is_for_csv_only(self, tmp_path: Path, write_parquet: Any) -> None:
        """--delimiter with Parquet is refused rather than ignored."""
        path = write_parquet(tmp_path, {"anon_id": [U1], "identified_id": ["u"]})
        with pytest.raises(ConfigError, match="CSV only"):
            open_dataset([path], delimiter=";")


class TestInMemory:
    def test_dataframe_values_follow_the_parquet_rules(self) -> None:
        """Strings trimmed, ints as decimal strings, None/NaN/NA and blanks missing."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "anon_id": [f" {U1} ", None, float("nan"), 42, U2],
                "identified_id": pd.array([7, None, 9, 10, 2**62], dtype="Int64"),
                "other": [1.5, 2.5, 3.5, 4.5, 5.5],
            }
        )
        ds = open_dataset(df)
        assert [f.name for f in ds.files] == ["<DataFrame>"]
        assert [r[3:] for r in records(ds)] == [
            (U1, "7"),
            (None, None),
            (None, "9"),
            ("42", "10"),
            (U2, str(2**62)),
        ]

    def test_arrow_table_in_chunks_reads_like_a_file(self) -> None:
        """A multi-chunk pyarrow Table streams its rows in order, chunked as asked."""
        part = pa.table({"anon_id": [U1, U2], "identified_id": ["a", "  "]})
        table = pa.concat_tables([part, part, part])
        ds = open_dataset(table, chunk_rows=4)
        assert [len(c) for c in ds()] == [4, 2]
        assert [r[3:] for r in records(ds)] == [(U1, "a"), (U2, None)] * 3
        assert ds.files[0].name == "<pyarrow.Table>"

    def test_fingerprint_is_the_same_for_the_same_rows_in_another_process(self) -> None:
        """The digest of a DataFrame's chosen columns is reproducible and layout-free."""
        import pandas as pd

        code = (
            "import pandas as pd; from backfill.read import open_dataset; "
            f"df = pd.DataFrame({{'anon_id': ['{U1}', None], 'identified_id': [1, 2], "
            "'x': [0, 1]}); "
            "print(open_dataset(df).fingerprint()['files'][0]['sha256'])"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        df = pd.DataFrame({"anon_id": [U1, None], "identified_id": [1, 2], "x": [5, 6]})
        here = open_dataset(df).fingerprint()["files"][0]
        assert here["sha256"] == out.stdout.strip()  # other columns do not count
        assert here["rows"] == 2
        df.loc[1, "identified_id"] = 3
        assert open_dataset(df).fingerprint()["files"][0]["sha256"] != here["sha256"]
        halves = pa.concat_tables(
            [
                pa.table({"anon_id": [U1], "identified_id": ["a"]}),
                pa.table({"anon_id": [U2], "identified_id": ["b"]}),
            ]
        )
        whole = pa.table({"anon_id": [U1, U2], "identified_id": ["a", "b"]})
        assert open_dataset(halves).fingerprint() == open_dataset(whole).fingerprint()

    def test_float_ids_are_refused_naming_the_fix(self) -> None:
        """A float id column, or a float among objects, is refused with the cast to use."""
        import pandas as pd

        with pytest.raises(InputError, match=r"'identified_id'.*double.*cast the column"):
            open_dataset(pd.DataFrame({"anon_id": [U1], "identified_id": [1.5]}))
        with pytest.raises(InputError, match=r"holds float 2\.5 at row 2.*astype\('string'\)"):
            open_dataset(pd.DataFrame({"anon_id": [U1, U2], "identified_id": ["a", 2.5]}))

    def test_missing_column_and_format_option_are_refused(self) -> None:
        """A DataFrame without the column names what it has; --format does not apply."""
        import pandas as pd

        df = pd.DataFrame({"device": [U1], "identified_id": ["a"]})
        with pytest.raises(InputError, match=r"'anon_id' not found in <DataFrame>.*'device'"):
            open_dataset(df)
        with pytest.raises(InputError, match="not to a DataFrame"):
            open_dataset(pd.DataFrame({"anon_id": [U1], "identified_id": ["a"]}), "csv")

    def test_dataframe_time_column_of_datetimes(self) -> None:
        """A datetime64 time column is read as timestamps, and judged."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "anon_id": [U1, U2],
                "identified_id": ["a", "b"],
                "t": pd.to_datetime(["2024-01-01", "2999-01-01"]),
            }
        )
        v = judge(open_dataset(df, columns=Columns(time="t")), now_ms=NOW_MS)
        assert v.reasons.tolist() == [0, Reason.INVALID_TIME]
