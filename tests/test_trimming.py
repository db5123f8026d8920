"""Ids are trimmed of surrounding whitespace (SPEC), and every trimmed id is counted: in
summary.json, in the table, with the first one's file, row and column."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from runkit import backfill_cli, uuid4s, write_pairs

U = uuid4s(8, seed=11)

#: Seven ids with surrounding whitespace on six rows (row 3 has two), a blank id (missing, not
#: trimmed) and two clean rows.
PAIRS = [
    (U[0], "user_clean"),
    (U[1], "user_trailing_space "),
    (f" {U[2]}\t", " both "),
    (f"\t{U[3]}", "u3"),
    (U[4], "   "),
    (U[5], "\tu5"),
    (f"{U[6]} ", "u6"),
    (U[7], " u7 "),
]


def test_seven_trimmed_ids_are_counted_in_summary_json(tmp_path: Path) -> None:
    """Seven ids with surrounding whitespace give trimmed_ids.count 7, first at row 2."""
    path = write_pairs(tmp_path / "m.csv", PAIRS)
    result = backfill_cli("validate", path, "--out", tmp_path / "o", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["trimmed_ids"] == {
        "count": 7,
        "sample": {"file": str(path), "row": 2, "column": "identified_id"},
    }
    assert summary["rejected"]["missing_identified_id"] == 1  # the blank: missing, not trimmed
    assert re.search(r"\n  ids trimmed +7  \(first: identified_id of row 2\)\n", result.stderr)


def test_no_whitespace_counts_zero(tmp_path: Path) -> None:
    """An input without surrounding whitespace has trimmed_ids.count 0 and no table line."""
    path = write_pairs(tmp_path / "m.csv", [(U[0], "a"), (U[1], "b")])
    result = backfill_cli("validate", path, "--out", tmp_path / "o", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["trimmed_ids"] == {"count": 0}
    assert "trimmed" not in result.stderr


def test_trimmed_across_parquet_parts_name_the_part(tmp_path: Path) -> None:
    """Across a folder of parts the count covers all of them; the sample names its part."""
    parts = tmp_path / "export"
    parts.mkdir()
    pq.write_table(pa.table({"anon_id": U[:2], "identified_id": ["a", "b"]}), parts / "p0.parquet")
    pq.write_table(
        pa.table({"anon_id": U[2:4], "identified_id": ["c", " d"]}), parts / "p1.parquet"
    )
    pq.write_table(
        pa.table({"anon_id": [U[4] + " "], "identified_id": ["e"]}), parts / "p2.parquet"
    )
    result = backfill_cli("validate", parts, "--out", tmp_path / "o", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    trimmed = json.loads(result.stdout)["trimmed_ids"]
    assert trimmed["count"] == 2
    assert trimmed["sample"]["row"] == 2
    assert trimmed["sample"]["column"] == "identified_id"
    assert trimmed["sample"]["file"].endswith("p1.parquet")


def test_a_rehearsal_sends_the_trimmed_id(tmp_path: Path) -> None:
    """What is sent is the id without its surrounding whitespace."""
    path = write_pairs(tmp_path / "m.csv", PAIRS[:2])
    result = backfill_cli("rehearse", path, "--out", tmp_path / "r", cwd=tmp_path)
    assert result.code == 0, result.stderr
    received = (tmp_path / "r" / "received.ndjson").read_text(encoding="utf-8").splitlines()
    sent = sorted(json.loads(line)["properties"]["$identified_id"] for line in received)
    assert sent == ["user_clean", "user_trailing_space"]
