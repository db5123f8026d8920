"""Inputs as warehouses export them, end to end through ``python -m backfill``: many parts as one
dataset (a folder, a quoted glob, several arguments, an S3 prefix), TSV and JSON Lines, and an
input changed under a running send.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Bucket
from runkit import REPO, STANDIN_CREDENTIALS, CliResult, backfill_cli, clean_env, run_cli, uuid4s
from runkit import rejects_dicts as rejects

from backfill.commands.rehearse import standin_thread
from backfill.standin import (
    Standin,
    StandinConfig,
    running_standin,
)

SAMPLE = REPO / "sample_data" / "mappings.csv"
A, B, C, D, E, F = uuid4s(6, 60)
#: Four parts whose conflicts and duplicates cross part boundaries (one part has no rows).
PARTS = [
    [(A, "alice"), (B, "bob"), (E, "kim")],
    [(A, "alice"), (C, "carol")],  # row 1 repeats part 0's row 1
    [],
    [(C, "dave"), (D, "erin"), (F, "kim")],  # row 1 conflicts with part 1's row 2
]


def backfill(*args: str | Path, cwd: Path) -> CliResult:
    """``python -m backfill ARGS --no-progress`` in ``cwd``, with the stand-in's credentials."""
    return backfill_cli(*args, "--no-progress", cwd=cwd)


def parquet_part(path: Path, rows: list[tuple[str, str]]) -> Path:
    """One Parquet part of string columns anon_id, identified_id."""
    columns = {"anon_id": [a for a, _ in rows], "identified_id": [u for _, u in rows]}
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), path)
    return path


def write_parts(folder: Path) -> list[Path]:
    """PARTS as part-0000..0003.parquet in ``folder``, with the markers writers leave."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [parquet_part(folder / f"part-{k:04d}.parquet", r) for k, r in enumerate(PARTS)]
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-0000.parquet.crc").write_bytes(b"crc")
    return paths


def verdicts(out: Path) -> list[tuple[str, str, str, str]]:
    """(file, row, reason, detail) of every reject, file paths reduced to their names (a file
    is named as the command was given it: relative, absolute or a URL)."""
    return [
        (Path(r["file"]).name, r["row"], r["reason"], re.sub(r"\S*/", "", r["detail"]))
        for r in rejects(out)
    ]


# --- many parts, one dataset ---------------------------------------------------------------


def test_folder_glob_and_arguments_judge_like_one_concatenated_file(tmp_path: Path) -> None:
    """A folder, a quoted glob and four arguments give the same verdicts, naming file and row."""
    parts = write_parts(tmp_path / "export")
    runs = {
        "folder": backfill("validate", "export", "--out", "o1", cwd=tmp_path),
        "glob": backfill("validate", "export/part-*.parquet", "--out", "o2", cwd=tmp_path),
        "args": backfill("validate", *reversed(parts), "--out", "o3", cwd=tmp_path),
    }
    for name, result in runs.items():
        assert result.code == 0, (name, result.stderr)
    found = [verdicts(tmp_path / o) for o in ("o1", "o2", "o3")]
    assert found[0] == found[1] == found[2]
    assert [(f, row, reason) for f, row, reason, _ in found[0]] == [
        ("part-0001.parquet", "1", "duplicate_pair"),
        ("part-0001.parquet", "2", "conflicting_anon_id"),
        ("part-0003.parquet", "1", "conflicting_anon_id"),
    ]
    details = [d for *_, d in found[0]]
    assert details[0] == "repeats the pair of row 1 of part-0000.parquet"
    assert details[1].endswith("at row 1 of part-0003.parquet")
    with (tmp_path / "o2" / "rejects.csv").open(encoding="utf-8", newline="") as f:
        assert next(csv.DictReader(f))["detail"].endswith("of export/part-0000.parquet")
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text())
    assert [(Path(f["name"]).name, f["rows"]) for f in summary["files"]] == [
        ("part-0000.parquet", 3),
        ("part-0001.parquet", 2),
        ("part-0002.parquet", 0),
        ("part-0003.parquet", 3),
    ]
    # The same rows as one file: the same reasons, at the concatenated rows.
    whole = [r for rows in PARTS for r in rows]
    parquet_part(tmp_path / "whole.parquet", whole)
    assert backfill("validate", "whole.parquet", "--out", "o4", cwd=tmp_path).code == 0
    assert [(r["row"], r["reason"]) for r in rejects(tmp_path / "o4")] == [
        ("4", "duplicate_pair"),
        ("5", "conflicting_anon_id"),
        ("6", "conflicting_anon_id"),
    ]


@pytest.mark.parametrize("variant", ["tsv", "jsonl", "jsonl.gz", "semicolon"])
def test_tsv_and_json_lines_versions_of_the_sample_validate_like_the_csv(
    tmp_path: Path, variant: str
) -> None:
    """The sample as .tsv, .jsonl, .jsonl.gz (or ;-separated CSV) gives the CSV's rejects."""
    with SAMPLE.open(encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    header, rows = table[0], table[1:]
    extra: list[str] = []
    if variant == "tsv":
        path = tmp_path / "m.tsv"
        path.write_text("\n".join("\t".join(r) for r in table) + "\n", encoding="utf-8")
    elif variant == "semicolon":
        path = tmp_path / "m.csv"
        with path.open("w", encoding="utf-8", newline="") as out:
            csv.writer(out, delimiter=";", lineterminator="\n").writerows(table)
        extra = ["--delimiter", ";"]
    else:
        text = "".join(json.dumps(dict(zip(header, r, strict=True))) + "\n" for r in rows)
        path = tmp_path / f"m.{variant}"
        data = text.encode()
        path.write_bytes(gzip.compress(data) if variant.endswith(".gz") else data)
    expected = backfill("validate", SAMPLE, "--time-column", "merged_at", "--out", "csv",
                        cwd=tmp_path)  # fmt: skip
    got = backfill("validate", path, "--time-column", "merged_at", "--out", "v", *extra,
                   cwd=tmp_path)  # fmt: skip
    assert got.code == expected.code == 0, got.stderr
    strip = [{k: v for k, v in r.items() if k != "file"} for r in rejects(tmp_path / "csv")]
    assert [{k: v for k, v in r.items() if k != "file"} for r in rejects(tmp_path / "v")] == strip


def test_a_semicolon_file_read_as_csv_names_the_delimiter(tmp_path: Path) -> None:
    """A ;-separated file without --delimiter: exit 2, the message suggests --delimiter ';'."""
    path = tmp_path / "m.csv"
    path.write_text(f"anon_id;identified_id\n{A};alice\n", encoding="utf-8")
    result = backfill("validate", path, cwd=tmp_path)
    assert result.code == 2
    assert "--delimiter" in result.stderr


# --- an S3 prefix ----------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Standin]:
    """The stand-in, serving from a background thread."""
    with standin_thread(StandinConfig()) as standin:
        yield standin


def test_an_s3_prefix_validates_and_runs_like_the_local_folder_then_refuses_a_changed_part(
    tmp_path: Path, bucket: Bucket, served: Standin
) -> None:
    """s3://bucket/export/ (AWS_ENDPOINT_URL): the local verdicts, every pair imported; a part
    changed after the run is refused naming --restart."""
    local = write_parts(tmp_path / "export")
    for path in local:
        bucket.put(f"export/{path.name}", path.read_bytes())
    bucket.put("export/_SUCCESS", b"")
    assert backfill("validate", tmp_path / "export", "--out", "local", cwd=tmp_path).code == 0
    url = bucket.url("export/")
    result = backfill("run", url, "--out", "s3", "--api-url", served.url, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert [r[1:] for r in verdicts(tmp_path / "s3")] == [
        r[1:] for r in verdicts(tmp_path / "local")
    ]
    assert {Path(r["file"]).name for r in rejects(tmp_path / "s3")} <= {
        "part-0001.parquet",
        "part-0003.parquet",
    }
    assert served.state.identify_pairs() == {(A, "alice"), (B, "bob"), (E, "kim"), (D, "erin"),
                                              (F, "kim")}  # fmt: skip
    bucket.put("export/part-0003.parquet", (tmp_path / "export" / "part-0000.parquet").read_bytes())
    again = backfill("run", url, "--out", "s3", "--api-url", served.url, cwd=tmp_path)
    assert again.code == 2
    assert "--restart" in again.stderr


# --- the input overwritten while its pairs are being sent -----------------------------------


async def test_input_overwritten_in_place_during_sending_sends_nothing_unvalidated(
    tmp_path: Path,
) -> None:
    """A part rewritten in place (same length) once sending began: the run stops (exit 3,
    naming it) before any changed pair is sent; the rerun refuses it naming --restart."""
    export = tmp_path / "export"
    export.mkdir()
    validated: set[tuple[str, str]] = set()
    for k, anons in enumerate(uuid4s(12_000, 61)[i : i + 3000] for i in range(0, 12_000, 3000)):
        rows = [(a, f"user-{k}-{i:05d}") for i, a in enumerate(anons)]
        validated |= set(rows)
        text = "anon_id,identified_id\n" + "".join(f"{a},{u}\n" for a, u in rows)
        (export / f"part-{k:04d}.csv").write_text(text, encoding="utf-8")
    last = export / "part-0003.csv"

    def rewrite_at_the_canary(record: object) -> None:
        # In place and the same length, as `dd conv=notrunc` would: ids no validation saw.
        if last.read_bytes().count(b",user-"):
            with last.open("r+b") as f:
                f.write(last.read_bytes().replace(b",user-", b",USER-"))

    args = ["run", str(export), "--out", str(tmp_path / "o"), "--no-progress"]
    async with running_standin(StandinConfig(), on_request=rewrite_at_the_canary) as standin:
        env = clean_env(STANDIN_CREDENTIALS)
        result = await run_cli([*args, "--api-url", standin.url], env, cwd=tmp_path)
        received = standin.state.identify_pairs()
        again = await run_cli([*args, "--api-url", standin.url], env, cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert "part-0003.csv changed since backfill validated it" in result.stderr
    assert received <= validated, "only validated pairs were sent"
    assert received, "pairs of the unchanged parts went out before the change was found"
    done = json.loads((tmp_path / "o" / "checkpoint.json").read_text())["events_imported"]
    assert done == len(received), "what was sent before is checkpointed"
    assert again.code == 2
    assert "--restart" in again.stderr
