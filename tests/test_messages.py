"""Messages that name the actual problem (issue 19, item 13), and DataFrames' column labels.

Each test pins the exact text a user reads for one case that used to be misnamed: a JSONL
number called a string, a ``$device:`` placeholder called invisible, an empty DataFrame's
column type, a Series taken for a file name, a numpy integer refused as no integer, and the
terminal table whose valid and rejected shares added up to more than the rows read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backfill
from backfill.errors import ConfigError, InputError
from backfill.report.summary import RunStatus, Summary, ThisRun
from backfill.report.table import render_table

ANON = "3f0c2a4e-8b1d-4c6a-9e2f-1a2b3c4d5e6f"


def test_jsonl_line_holding_a_number_says_number(tmp_path: Path) -> None:
    """A JSONL line holding 42 is "a JSON number, not an object", not a string."""
    source = tmp_path / "m.jsonl"
    source.write_text('{"anon_id": "a", "identified_id": "u"}\n42\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2 holds a JSON number, not an object: JSON"):
        backfill.validate(source, out=tmp_path / "out")


def test_device_placeholder_in_simplified_is_called_a_placeholder(tmp_path: Path) -> None:
    """``$device:null`` in Simplified: the id after the prefix is named a placeholder."""
    df = pd.DataFrame({"anon_id": ["$device:null"], "identified_id": ["u1"]})
    summary = backfill.validate(df, out=tmp_path / "out", id_merge="simplified")
    with (summary.out / "rejects.csv").open(encoding="utf-8", newline="") as f:
        row = list(csv.reader(f))[1]
    assert row[3] == "invalid_anon_id"
    assert row[4] == "anon id after $device: 'null' is a placeholder Mixpanel refuses"


def test_empty_dataframe_has_no_data_rows(tmp_path: Path) -> None:
    """An empty DataFrame (float64 columns) has no data rows, rather than "type double"."""
    df = pd.DataFrame({"anon_id": [], "identified_id": []})
    with pytest.raises(InputError, match=r"^input has no data rows: <DataFrame> \(is it the"):
        backfill.validate(df, out=tmp_path / "out")


def test_series_is_refused_as_a_series_not_as_a_missing_file(tmp_path: Path) -> None:
    """A pd.Series as the source: named a Series, with the DataFrame to build instead."""
    with pytest.raises(ConfigError, match=r"^source is a pandas\.Series, not a path, URL, list"):
        backfill.validate(pd.Series([ANON]), out=tmp_path / "out")


def test_numpy_integer_in_an_object_column_is_an_integer(tmp_path: Path) -> None:
    """An np.int64 in an object column is read as its decimal string, like Python's int."""
    ids = pd.Series([np.int64(12345), 678], dtype=object)
    df = pd.DataFrame({"anon_id": [ANON, ANON.replace("3f", "4f")], "identified_id": ids})
    summary = backfill.validate(df, out=tmp_path / "out")
    assert (summary.rows_read, summary.rows_valid) == (2, 2)


def test_integer_column_labels_are_chosen_by_their_string_form(tmp_path: Path) -> None:
    """``anon_column="0"`` chooses the integer label 0; labels 0 and "0" together are refused."""
    df = pd.DataFrame([[ANON, "u1"]])
    summary = backfill.validate(df, out=tmp_path / "a", anon_column="0", identified_column="1")
    assert summary.rows_valid == 1
    both = pd.DataFrame([[ANON, ANON, "u1"]], columns=[0, "0", 1])
    with pytest.raises(InputError, match=r"^<DataFrame> has more than one column named '0'"):
        backfill.validate(both, out=tmp_path / "b", anon_column="0", identified_column="1")
    missing = r"^column 'anon' not found in <DataFrame>; columns found: '0', '1'"
    with pytest.raises(InputError, match=missing):
        backfill.validate(df, out=tmp_path / "c", anon_column="anon", identified_column="1")


def test_table_shows_mixpanels_refusals_as_part_of_the_valid_rows(tmp_path: Path) -> None:
    """1,000 valid rows, 501 refused by Mixpanel: valid 100.0%, rejected 0.0%, refusals 50.1%."""
    rejected = {"invalid_anon_id": 0, "api_rejected": 501}
    summary = Summary(
        status=RunStatus.COMPLETED,
        out=tmp_path,
        input="m.csv",
        format="csv",
        rows_read=1000,
        rows_valid=1000,
        rejected=rejected,
        events_imported=499,
        this_run=ThisRun(events_imported=499, events_refused=501),
    )
    lines = [" ".join(line.split()) for line in render_table(summary, title="t").splitlines()]
    assert "rows valid 1,000 100.0%" in lines
    assert "refused by Mixpanel 501 50.1% (api_rejected)" in lines
    assert "rows rejected 0 0.0%" in lines
