"""The Summary in a notebook: printed as the CLI's table, its rejects as a DataFrame of text
named by the source DataFrame's own index, and errors that speak in keywords."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from runkit import backfill_cli, uuid4s

import backfill
from backfill.config.options import in_keywords


@pytest.fixture(autouse=True)
def _no_mixpanel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MIXPANEL_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("MIXPANEL_", "BACKFILL_")):
            monkeypatch.delenv(name)


def frame() -> pd.DataFrame:
    """Five pairs labelled 10, 20, …: two refused (a bad anon id, a missing one)."""
    u = uuid4s(5, seed=3)
    return pd.DataFrame(
        {
            "anon_id": [u[0], "not-a-uuid", u[2], "", u[4]],
            "identified_id": ["409", "409", "00042", "u4", "-1+1"],
        },
        index=[10, 20, 30, 40, 50],
    )


def test_print_summary_is_the_cli_table(tmp_path: Path) -> None:
    """str(summary) is the table the CLI prints for the same input; repr is one short line."""
    df = frame()
    summary = backfill.validate(df, out=tmp_path / "api")
    df.to_csv(tmp_path / "same.csv", index=False)
    cli = backfill_cli("validate", tmp_path / "same.csv", "--out", tmp_path / "cli", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    table = str(summary)
    title = "backfill validate <DataFrame> (dry run: nothing sent; validated)"
    assert table.splitlines()[0] == title
    # Every line but the title and the elapsed time is the CLI's.
    assert table.splitlines()[1:-1] == cli.stdout.splitlines()[1:-2]
    assert "invalid_anon_id" in table
    assert repr(summary).startswith("<Summary validated: 5 rows read, 3 valid, 2 rejected")
    assert len(repr(summary)) < 200


def test_rejects_keep_the_dataframe_labels_and_text(tmp_path: Path) -> None:
    """summary.rejects() names rows by the DataFrame's index labels; ids stay text as written."""
    df = frame()
    df.loc[20, "identified_id"] = "409"
    df.loc[40, "identified_id"] = "=1+2"  # written to rejects.csv as '=1+2
    summary = backfill.validate(df, out=tmp_path / "o")
    rejects = summary.rejects()
    assert list(rejects.columns) == [
        "index", "row", "anon_id", "identified_id", "reason", "detail", "file",
        "file_fingerprint",
    ]  # fmt: skip
    assert rejects["index"].tolist() == [20, 40]
    assert rejects["row"].tolist() == [2, 4]
    assert rejects["identified_id"].tolist() == ["409", "=1+2"]
    assert rejects["anon_id"].tolist() == ["not-a-uuid", ""]
    for column in ("anon_id", "identified_id", "reason", "detail", "file"):
        assert not pd.api.types.is_numeric_dtype(rejects[column]), column
    assert rejects["reason"].tolist() == ["invalid_anon_id", "missing_anon_id"]


def test_rejects_of_a_file_have_no_index_column(tmp_path: Path) -> None:
    """For a file source rejects() is rejects.csv as text, with no index column."""
    u = uuid4s(2, seed=4)
    path = tmp_path / "m.csv"
    path.write_text(f"anon_id,identified_id\n{u[0]},0409\nbad,409\n{u[1]},\n", encoding="utf-8")
    rejects = backfill.validate(path, out=tmp_path / "o").rejects()
    assert "index" not in rejects.columns
    assert rejects["identified_id"].tolist() == ["409", ""]
    assert rejects["row"].tolist() == [2, 3]


def test_missing_column_error_names_the_keyword(tmp_path: Path) -> None:
    """A missing column is told as anon_column='NAME', not as the CLI's --anon-column NAME."""
    with pytest.raises(backfill.InputError, match=r"Pass anon_column='NAME' to choose another"):
        backfill.validate(frame(), out=tmp_path / "o", anon_column="device_id")


def test_float_column_error_says_how_to_cast_the_dataframe(tmp_path: Path) -> None:
    """A float id column is refused with a pandas cast, not 'cast it in the export'."""
    df = pd.DataFrame({"anon_id": uuid4s(2, seed=5), "identified_id": [409.0, None]})
    with pytest.raises(backfill.InputError, match=r"astype\('Int64'\)") as info:
        backfill.validate(df, out=tmp_path / "o")
    assert "export" not in str(info.value)


@pytest.mark.parametrize(
    ("cli", "api"),
    [
        ("Pass --anon-column NAME to choose", "Pass anon_column='NAME' to choose"),
        ("pass --restart to discard", "pass restart=True to discard"),
        ("rerun with --id-merge simplified", "rerun with id_merge='simplified'"),
        ("another --id-merge: choose another --out", "another id_merge: choose another out"),
        ("e.g. --delimiter ';'", "e.g. delimiter=';'"),
        ("run the same command again to resume", "make the same call again to resume"),
        ("pass `--dry-run` on the command line", "pass `--dry-run` on the command line"),
    ],
)
def test_flags_in_messages_become_keywords(cli: str, api: str) -> None:
    """in_keywords turns each flag of a message into the keyword a Python caller passes."""
    assert in_keywords(cli) == api


def test_a_trimmed_summary_reads_back_from_json(tmp_path: Path) -> None:
    """summary.json's trimmed_ids reads back into the same Summary value."""
    df = frame()
    df.loc[10, "anon_id"] = " " + df.loc[10, "anon_id"]
    summary = backfill.validate(df, out=tmp_path / "o")
    data = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    again = backfill.Summary.from_json(data, tmp_path / "o")
    assert again.trimmed_ids == summary.trimmed_ids
    assert again.trimmed_ids.count == 1
