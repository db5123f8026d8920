"""`backfill validate` end to end: the real CLI in a subprocess, its files, its refusals.

The sample runs, the config runs and SPEC's list of bad inputs go through a real subprocess
(`python -m backfill validate ...`). Further refusals and the known bugs call the same entry
point, ``backfill.cli.main``, in this process: the same code, without a Python start-up each.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runkit import rejects_lines as read_rejects

from backfill.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV = ROOT / "sample_data" / "mappings.csv"
SAMPLE_PARQUET = ROOT / "sample_data" / "mappings.parquet"
REJECTS_HEADER = ["row", "anon_id", "identified_id", "reason", "detail", "file"]
VALIDATION_CODES = [
    "missing_anon_id",
    "invalid_anon_id",
    "missing_identified_id",
    "invalid_identified_id",
    "self_merge",
    "invalid_time",
    "conflicting_anon_id",
    "duplicate_pair",
    "cluster_limit",
]
U = "8e8afc84-9b31-46ab-a745-e5279afad5ab"


def run_cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m backfill validate ARGS`` in ``cwd``; never raises on the exit code."""
    return run_module(cwd, "validate", *args)


def run_module(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m backfill ARGS`` in ``cwd`` with a clean, debug-free environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXPANEL_", "BACKFILL_"))}
    return subprocess.run(
        [sys.executable, "-m", "backfill", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args)``: ``backfill validate ARGS`` via ``main`` in ``tmp_path``, as a process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BACKFILL_DEBUG", raising=False)

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        argv = ["validate", *map(str, args)]
        code = main(argv)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    return run


def sample_rows() -> list[list[str]]:
    """The sample CSV's records, header dropped."""
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))[1:]


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    """Neither stream shows a Python traceback."""
    assert "Traceback" not in proc.stdout
    assert "Traceback" not in proc.stderr


# --- the sample, as CSV and as Parquet --------------------------------------------------------


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Validate both samples once: CSV with the default --out, Parquet with --out given."""
    cwd = tmp_path_factory.mktemp("cli")
    csv_run = run_cli(cwd, SAMPLE_CSV, "--time-column", "merged_at", "--no-progress")
    parquet_run = run_cli(
        cwd, SAMPLE_PARQUET, "--time-column", "merged_at", "--out", "custom/pq", "--no-progress"
    )
    return {
        "cwd": cwd,
        "csv": (csv_run, cwd / "runs" / "mappings-csv"),
        "parquet": (parquet_run, cwd / "custom" / "pq"),
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_sample_exits_0_and_prints_the_summary(sample_runs: dict[str, Any], fmt: str) -> None:
    """The sample validates with exit 0 and a summary naming every count and the reports."""
    proc, out = sample_runs[fmt]
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    assert "dry run: nothing sent" in proc.stdout
    assert "rows read" in proc.stdout
    assert "649" in proc.stdout
    for code in VALIDATION_CODES:
        assert code in proc.stdout
    assert "rejects.csv" in proc.stdout
    assert (out / "rejects.csv").is_file()
    assert (out / "summary.json").is_file()


def test_default_out_is_runs_name_under_cwd(sample_runs: dict[str, Any]) -> None:
    """Without --out, reports go to runs/<input name>/ (its format kept) in the working dir."""
    _, out = sample_runs["csv"]
    assert out == sample_runs["cwd"] / "runs" / "mappings-csv"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "rejects.csv",
        "report.html",
        "summary.json",
    ]


def test_out_is_honoured(sample_runs: dict[str, Any]) -> None:
    """With --out, reports go there (folders created) and not to runs/<stem>/."""
    _, out = sample_runs["parquet"]
    assert (out / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["format"] == "parquet"


def rejects_but_file(folder: Path) -> list[list[str]]:
    """rejects.csv's lines without their ``file`` column (the one thing a copy changes)."""
    lines = read_rejects(folder)
    at = lines[0].index("file")
    return [line[:at] + line[at + 1 :] for line in lines]


def test_csv_and_parquet_samples_give_identical_rejects(sample_runs: dict[str, Any]) -> None:
    """The same rows as CSV or Parquet give identical rejects.csv lines, bar the file name."""
    csv_rejects = rejects_but_file(sample_runs["csv"][1])
    assert csv_rejects == rejects_but_file(sample_runs["parquet"][1])
    with (sample_runs["csv"][1] / "rejects.csv").open(encoding="utf-8", newline="") as f:
        assert {row["file"] for row in csv.DictReader(f)} == {str(SAMPLE_CSV)}, "as given"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_sample_summary_json_matches_rejects(sample_runs: dict[str, Any], fmt: str) -> None:
    """summary.json: status validated, every code counted as in rejects.csv, sums add up."""
    _, out = sample_runs[fmt]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rejects = read_rejects(out / "rejects.csv")
    tally = Counter(r[3] for r in rejects[1:])
    assert summary["status"] == "validated"
    assert summary["rows_read"] == 649
    assert summary["events_imported"] == 0
    assert set(summary["rejected"]) == {*VALIDATION_CODES, "api_rejected"}
    assert summary["rejected"]["api_rejected"] == 0
    for code in VALIDATION_CODES:
        assert summary["rejected"][code] == tally[code] > 0, code
    assert sum(summary["rejected"].values()) == summary["rows_read"] - summary["rows_valid"]
    assert summary["rows_valid"] == 649 - (len(rejects) - 1)


def test_sample_rejects_rows_are_1_based_records(sample_runs: dict[str, Any]) -> None:
    """rejects.csv has SPEC's header (then file_fingerprint, for Mixpanel's refusals), and
    row N is the Nth record after the header."""
    rejects = read_rejects(sample_runs["csv"][1] / "rejects.csv")
    assert rejects[0] == [*REJECTS_HEADER, "file_fingerprint"]
    records = sample_rows()
    rows = [int(r[0]) for r in rejects[1:]]
    assert rows == sorted(set(rows)), "each row once, in row order"
    for row, anon, ident, reason, detail, name, fingerprint in rejects[1:]:
        assert (name, fingerprint) == (str(SAMPLE_CSV), "")
        source = records[int(row) - 1]
        assert (anon, ident) == (source[0].strip(), source[1].strip()), row
        assert detail, row
        if reason == "duplicate_pair":
            first = int(detail.rsplit(" ", 1)[1])
            assert first < int(row)
            assert records[first - 1][:2] == source[:2]
    by_reason = {r[3]: int(r[0]) for r in rejects[1:]}
    assert records[by_reason["missing_anon_id"] - 1][0] == ""
    assert records[by_reason["self_merge"] - 1][0] == records[by_reason["self_merge"] - 1][1]
    assert by_reason["cluster_limit"] == len(records)  # the kiosk rows come last


def test_csv_gz_default_out_and_same_rejects(
    tmp_path: Path, cli: Any, sample_runs: dict[str, Any]
) -> None:
    """A gzipped copy validates the same, its reports in runs/export-csv-gz/."""
    packed = tmp_path / "export.csv.gz"
    packed.write_bytes(gzip.compress(SAMPLE_CSV.read_bytes()))
    proc = cli(packed.name, "--time-column", "merged_at", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "export-csv-gz"
    assert rejects_but_file(out) == rejects_but_file(sample_runs["csv"][1])


# --- config -----------------------------------------------------------------------------------


def test_config_file_is_used_and_flags_override_it(tmp_path: Path) -> None:
    """Keys from --config apply; a flag given on the command line wins over its key."""
    config = tmp_path / "migration.toml"
    config.write_text(
        'time_column = "merged_at"\n'
        "max_cluster_size = 3\n"
        'out = "from-config"\n'
        'anon_column = "no_such_column"\n'
        "no_progress = true\n",
        encoding="utf-8",
    )
    proc = run_cli(
        tmp_path, SAMPLE_CSV, "--config", config, "--anon-column", "anon_id", "--out", "from-flag"
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "from-config").exists()
    summary = json.loads((tmp_path / "from-flag" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rejected"]["invalid_time"] == 3  # the config's time column was read
    assert summary["rejected"]["cluster_limit"] > 2  # and its cluster size of 3 applied


def test_flag_overrides_config_max_cluster_size(tmp_path: Path) -> None:
    """--max-cluster-size on the command line beats the config's value."""
    config = tmp_path / "c.toml"
    config.write_text("max_cluster_size = 3\n", encoding="utf-8")
    proc = run_cli(
        tmp_path, SAMPLE_CSV, "--config", config, "--max-cluster-size", "500", "--out", "o"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rejected"]["cluster_limit"] == 2
    assert summary["rejected"]["invalid_time"] == 0  # no time column: none in the config


def test_unknown_config_key_exits_2(tmp_path: Path, write_csv: Any) -> None:
    """A config key that is no option is refused: exit 2, the key and the known keys named."""
    config = tmp_path / "c.toml"
    config.write_text('anon_column = "anon_id"\nnonsense = 1\n', encoding="utf-8")
    path = write_csv(tmp_path, [(U, "alice")])
    proc = run_cli(tmp_path, path.name, "--config", config, "--out", "o")
    assert_refused(proc, "unknown key 'nonsense'", "known keys: anon_column")
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "batch_size = 'ten'\n", "c.toml: batch_size must be a whole number", id="wrong-type"
        ),
        pytest.param("api_secret = 'x'\n", "'api_secret' is not allowed", id="secret"),
        pytest.param("time_column = \n", "is not valid TOML", id="bad-toml"),
        pytest.param(
            "max_cluster_size = 501\n",
            "max_cluster_size must be a whole number from 2 to 500",
            id="range",
        ),
    ],
)
def test_bad_config_exits_2(
    tmp_path: Path, write_csv: Any, cli: Any, text: str, message: str
) -> None:
    """A config with a wrong type, a secret, bad TOML or a bad value is refused (exit 2)."""
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    path = write_csv(tmp_path, [(U, "alice")])
    assert_refused(cli(path.name, "--config", "c.toml"), message)


# --- bad inputs -------------------------------------------------------------------------------


def assert_refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, one error line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert_no_traceback(proc)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("backfill: error: ")]
    # One error line, the last thing said (progress lines may come before it).
    assert len(errors) == 1, proc.stderr
    assert lines[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06"


def _latin1_late() -> bytes:
    lines = [b"anon_id,identified_id"] + [f"{U},user{i}".encode() for i in range(4000)]
    return b"\n".join([*lines, U.encode() + b",J\xf6rg M\xfcller", b""])


#: SPEC's and the issue's bad inputs: each through a real subprocess.
BAD_INPUTS = [
    pytest.param("missing.csv", None, [], ["input file not found", "missing.csv"], id="missing"),
    pytest.param("empty.csv", b"", [], ["input file is empty"], id="empty"),
    pytest.param("blank.csv", b"  \n\t\n\n", [], ["input file is empty"], id="whitespace-only"),
    pytest.param("header.csv", b"anon_id,identified_id\n", [], ["no data rows"], id="header-only"),
    pytest.param(
        "noise.csv",
        random.Random(7).randbytes(5000) + b"\x00\x00",
        [],
        ["is not CSV text", "--format parquet"],
        id="random-bytes",
    ),
    pytest.param("image.csv", _png(), [], ["is not CSV text"], id="png-as-csv"),
    pytest.param(
        "broken.parquet",
        b"PAR1" + random.Random(8).randbytes(3000) + b"PAR1",
        [],
        ["is not a readable Parquet file", "re-export"],
        id="corrupt-parquet",
    ),
    pytest.param(
        "cols.csv",
        b"device,user\nx,y\n",
        [],
        ["'anon_id' not found", "columns found: 'device', 'user'", "--anon-column"],
        id="absent-anon-column",
    ),
    pytest.param(
        "mappings.xlsx", b"PK\x03\x04", [], ["cannot tell the format", "--format"], id="xlsx"
    ),
    pytest.param(
        "latin1.csv",
        b"anon_id,identified_id\n" + U.encode() + b",J\xf6rg\n",
        [],
        ["UTF-8"],
        id="latin1",
    ),
    pytest.param(
        "wide.csv",
        b"anon_id,identified_id\n" + U.encode() + b",alice\n" + U.encode() + b",bob,extra\n",
        [],
        ["malformed CSV", "Expected 2 columns, got 3"],
        id="too-many-fields",
    ),
    pytest.param(
        "ok.csv",
        b"anon_id,identified_id\n" + U.encode() + b",alice\n",
        ["--batch-size", "0"],
        ["--batch-size must be a whole number from 1 to 2000, got 0"],
        id="batch-size-0",
    ),
]  # fmt: skip

#: More refusals, through ``main`` in this process.
MORE_BAD_INPUTS = [
    pytest.param(
        "nul.csv", b"anon_id,identified_id\n" + U.encode() + b",a\x00b\n", [],
        ["is not CSV text"], id="nul-byte",
    ),
    pytest.param(
        "image.parquet", _png(), [], ["is not a readable Parquet file"], id="png-as-parquet"
    ),
    pytest.param(
        "text.parquet", b"anon_id,identified_id\nx,y\n", [],
        ["is not a readable Parquet file", "--format csv"], id="csv-named-parquet",
    ),
    pytest.param(
        "cols.csv",
        b"anon_id,user\nx,y\n",
        [],
        ["'identified_id' not found", "columns found: 'anon_id', 'user'", "--identified-column"],
        id="absent-identified-column",
    ),
    pytest.param(
        "cols.csv",
        b"anon_id,identified_id\nx,y\n",
        ["--time-column", "merged_at"],
        ["'merged_at' not found", "columns found: 'anon_id', 'identified_id'", "--time-column"],
        id="absent-time-column",
    ),
    pytest.param("latin1-late.csv", _latin1_late(), [], ["not valid UTF-8"], id="latin1-late"),
    pytest.param("fake.csv.gz", b"not gzip at all", [], ["valid .gz"], id="bad-gzip"),
    pytest.param(
        "ok.csv",
        b"anon_id,identified_id\n" + U.encode() + b",alice\n",
        ["--max-cluster-size", "1"],
        ["--max-cluster-size must be a whole number from 2"],
        id="max-cluster-size-1",
    ),
    pytest.param(
        "ok.csv",
        b"anon_id,identified_id\n" + U.encode() + b",alice\n",
        ["--config", "missing.toml"],
        ["config file not found"],
        id="missing-config",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "extra", "fragments"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, name: str, content: bytes | None, extra: list[str], fragments: list[str]
) -> None:
    """Each bad input or option: exit 2, the key message on one stderr line, no traceback."""
    if content is not None:
        (tmp_path / name).write_bytes(content)
    proc = run_cli(tmp_path, name, "--out", "out", *extra)
    assert_refused(proc, *fragments)
    assert not (tmp_path / "out" / "rejects.csv").exists()
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize(("name", "content", "extra", "fragments"), MORE_BAD_INPUTS)
def test_more_bad_inputs_exit_2_with_one_line(
    tmp_path: Path,
    cli: Any,
    name: str,
    content: bytes | None,
    extra: list[str],
    fragments: list[str],
) -> None:
    """More bad inputs and options: exit 2, the key message on one stderr line, no reports."""
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert_refused(cli(name, "--out", "out", *extra), *fragments)
    assert not (tmp_path / "out" / "rejects.csv").exists()


def test_folder_as_input_exits_2(tmp_path: Path, cli: Any) -> None:
    """A folder named like an input is refused, not read."""
    (tmp_path / "dir.csv").mkdir()
    assert_refused(cli("dir.csv"), "is a folder")


def test_parquet_column_of_unusable_type_exits_2(tmp_path: Path, cli: Any) -> None:
    """A Parquet id column of floats is refused naming its type and the fix."""
    pq.write_table(
        pa.table({"anon_id": [U], "identified_id": pa.array([1.5], pa.float64())}),
        tmp_path / "f.parquet",
    )
    assert_refused(cli("f.parquet"), "'identified_id'", "double", "cast it")


def test_unknown_format_flag_is_a_usage_error(tmp_path: Path, write_csv: Any) -> None:
    """--format other than the known ones is refused in one line naming them: exit 2."""
    path = write_csv(tmp_path, [(U, "alice")])
    proc = run_cli(tmp_path, path.name, "--format", "xlsx")  # argparse exits: a subprocess
    assert proc.returncode == 2
    assert_no_traceback(proc)
    assert proc.stderr.strip() == (
        "backfill: error: --format 'xlsx' is not one of csv, tsv, parquet, jsonl"
    )


def test_format_flag_reads_a_file_with_another_extension(
    tmp_path: Path, write_csv: Any, cli: Any
) -> None:
    """--format csv reads a CSV whatever its extension."""
    path = write_csv(tmp_path, [(U, "alice"), (U, "alice"), (U, "bob  ")], name="export.txt")
    proc = cli(path.name, "--format", "csv", "--out", "o", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert (summary["rows_read"], summary["rows_valid"]) == (3, 0)
    assert summary["rejected"]["conflicting_anon_id"] == 3


# --- help and entry point ---------------------------------------------------------------------


def test_validate_help_shows_examples(tmp_path: Path) -> None:
    """`backfill validate --help` exits 0 and shows usage examples."""
    proc = run_cli(tmp_path, "--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    assert "backfill validate mappings.csv" in proc.stdout
    assert "--time-column" in proc.stdout


def test_python_m_backfill_works(tmp_path: Path) -> None:
    """`python -m backfill` is the CLI: without a command it lists the commands and exits 2."""
    bare = run_module(tmp_path)
    assert bare.returncode == 2
    assert_no_traceback(bare)
    for command in ("validate", "rehearse", "run", "status", "serve"):
        assert f"  {command} " in bare.stderr
    assert "start here:" in bare.stderr


# --- bugs seen from the command line ----------------------------------------------------------


def test_out_of_range_times_are_rejected_not_fatal(
    tmp_path: Path, write_csv: Any, cli: Any
) -> None:
    """A `-1` or year-2300 time is an invalid_time reject; the run still exits 0."""
    rows = [(U, "alice", "-1"), (U, "alice", "2300-01-01T00:00:00Z"), (U, "alice", "1704067200")]
    rows += [(U, "alice", "1704067200")]  # a duplicate too, so that the run does not trip on
    # the first_rows bug (see test_rejects_without_conflicts_or_duplicates_are_reported)
    path = write_csv(tmp_path, rows, header=("anon_id", "identified_id", "t"))
    proc = cli(path.name, "--time-column", "t", "--out", "o", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rejected"]["invalid_time"] == 2


def test_parquet_microsecond_timestamps_validate(tmp_path: Path, cli: Any) -> None:
    """A Parquet timestamp[us] time column with microseconds validates (exit 0)."""
    stamp = dt.datetime(2024, 5, 1, 12, 30, 15, 123456)
    pq.write_table(
        pa.table(
            {
                "anon_id": [U],
                "identified_id": ["alice"],
                "merged_at": pa.array([stamp], pa.timestamp("us")),
            }
        ),
        tmp_path / "m.parquet",
    )
    proc = cli("m.parquet", "--time-column", "merged_at", "--out", "o", "--no-progress")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "bad_row",
    [("", "alice"), ("not-a-uuid", "alice"), (U, "null"), (U, U)],
    ids=["missing-anon", "invalid-anon", "placeholder", "self-merge"],
)
def test_rejects_without_conflicts_or_duplicates_are_reported(
    tmp_path: Path, write_csv: Any, cli: Any, bad_row: tuple[str, str]
) -> None:
    """A file whose only reject is a per-row one validates: exit 0, the reject reported."""
    path = write_csv(tmp_path, [("a92d9e0f-e310-4aee-9817-a1320b6451b0", "bob"), bad_row])
    proc = cli(path.name, "--out", "o", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rejects = read_rejects(tmp_path / "o" / "rejects.csv")
    assert [r[0] for r in rejects[1:]] == ["2"]


def test_duplicate_across_default_chunks(tmp_path: Path, cli: Any) -> None:
    """A pair repeated 120,000 rows later, past the default chunk size, is one duplicate."""
    rng = random.Random(5)
    lines = ["anon_id,identified_id", f"{U},alice"]
    lines.append(f"{uuid.UUID(int=rng.getrandbits(128), version=4)},a-long-identified-id")
    # Several CSV blocks and 65,536-row chunks: the last holds none of the rows above.
    for i in range(120_000):
        lines.append(f"{uuid.UUID(int=rng.getrandbits(128), version=4)},u{i}")
    lines.append(f"{U},alice")
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = cli("big.csv", "--out", "o", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rejected"]["conflicting_anon_id"] == 0
    assert summary["rejected"]["duplicate_pair"] == 1
