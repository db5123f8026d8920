"""The Python API: ``backfill.validate`` / ``backfill.run`` as a notebook or a job would use them.

The stand-in serves from a thread of its own (``rehearse.standin_thread``), so the API's own
event loop runs exactly as it would in a user's process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from runkit import REPO
from runkit import rejects_lines as rejects

import backfill
from backfill.commands.rehearse import standin_thread
from backfill.mixpanel import IdMerge
from backfill.standin import DEFAULT_PROJECT_ID, DEFAULT_SERVICE_ACCOUNT, Standin, StandinConfig

SAMPLE = REPO / "sample_data" / "mappings.csv"
CREDS_ENV = (
    "MIXPANEL_SERVICE_ACCOUNT_USERNAME",
    "MIXPANEL_SERVICE_ACCOUNT_SECRET",
    "MIXPANEL_API_SECRET",
)


@pytest.fixture
def standin() -> Iterator[Standin]:
    """The stand-in, serving from a background thread."""
    with standin_thread(StandinConfig()) as served:
        yield served


@pytest.fixture
def creds() -> backfill.Credentials:
    """The stand-in's throwaway service account, as an explicit Credentials value."""
    return backfill.Credentials(*DEFAULT_SERVICE_ACCOUNT)


@pytest.fixture(autouse=True)
def _no_mixpanel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MIXPANEL_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("MIXPANEL_", "BACKFILL_")):
            monkeypatch.delenv(name)


def test_validate_matches_the_cli_and_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """backfill.validate gives the CLI's verdicts and reports, and prints nothing."""
    summary = backfill.validate(SAMPLE, out=tmp_path / "api", time_column="merged_at")
    printed = capfd.readouterr()
    assert (printed.out, printed.err) == ("", "")
    cli = subprocess.run(
        [
            *(sys.executable, "-m", "backfill", "validate", str(SAMPLE)),
            *("--out", str(tmp_path / "cli"), "--time-column", "merged_at", "--no-progress"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    from_cli = json.loads(cli.stdout)
    assert isinstance(summary, backfill.Summary)
    assert summary.status is backfill.RunStatus.VALIDATED
    assert summary.out == tmp_path / "api"
    assert (summary.rows_read, summary.rows_valid) == (649, 631)
    assert dict(summary.rejected) == from_cli["rejected"]
    assert rejects(tmp_path / "api") == rejects(tmp_path / "cli")


def sample_frame() -> pd.DataFrame:
    """The sample mappings as a DataFrame of strings, as a warehouse query returns them."""
    return pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)


def test_dataframe_and_table_get_the_verdicts_of_the_same_rows_as_csv(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """validate(DataFrame) and validate(Table) judge every row as the CLI judges the CSV."""
    frame = sample_frame()
    by_frame = backfill.validate(frame, out=tmp_path / "df", time_column="merged_at")
    by_table = backfill.validate(
        pa.Table.from_pandas(frame, preserve_index=False),
        out=tmp_path / "table",
        time_column="merged_at",
    )
    assert capfd.readouterr() == ("", "")
    frame.to_csv(tmp_path / "same.csv", index=False)
    cli = subprocess.run(
        [
            *(sys.executable, "-m", "backfill", "validate", str(tmp_path / "same.csv")),
            *("--out", str(tmp_path / "cli"), "--time-column", "merged_at", "--no-progress"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.returncode == 0

    def lines(folder: Path) -> list[list[str]]:
        return [line[:5] for line in rejects(folder)]  # all but the file name

    assert lines(tmp_path / "df") == lines(tmp_path / "table") == lines(tmp_path / "cli")
    assert dict(by_frame.rejected) == dict(by_table.rejected)
    assert (by_frame.rows_read, by_frame.rows_valid) == (649, 631)


def test_run_of_a_table_imports_every_valid_pair_and_a_rerun_resumes_it(
    tmp_path: Path,
    standin: Standin,
    creds: backfill.Credentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run(Table) stopped at its canary (a refused secret) is resumed from elsewhere by the same
    rows (their content names the run): every valid pair imported, in the first folder."""
    table = pa.Table.from_pandas(sample_frame(), preserve_index=False)
    monkeypatch.chdir(tmp_path)
    options = {"api_url": standin.url, "project_id": DEFAULT_PROJECT_ID}
    refused = backfill.Credentials("backfill-rehearsal", "wrong")
    with pytest.raises(backfill.BackfillError, match="refused"):
        backfill.run(table, time_column="merged_at", credentials=refused, **options)  # type: ignore[arg-type]
    folder = (tmp_path / "runs").resolve()
    (stopped,) = folder.iterdir()
    assert stopped.name.startswith("table-")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    again = backfill.run(table, time_column="merged_at", credentials=creds, **options)  # type: ignore[arg-type]
    assert again.out.resolve() == stopped, "its content names its run folder"
    assert again.events_imported == 631 == standin.state.events_imported
    assert not (other / "runs").exists()


def test_run_imports_every_valid_pair_and_resumes(
    tmp_path: Path, standin: Standin, creds: backfill.Credentials
) -> None:
    """backfill.run sends every valid pair once; calling it again sends nothing more."""
    out = tmp_path / "out"
    first = backfill.run(
        SAMPLE,
        out=out,
        credentials=creds,
        api_url=standin.url,
        project_id=DEFAULT_PROJECT_ID,
        time_column="merged_at",
    )
    requests = standin.state.requests_count
    again = backfill.run(
        SAMPLE,
        out=out,
        credentials=creds,
        api_url=standin.url,
        project_id=DEFAULT_PROJECT_ID,
        time_column="merged_at",
    )
    assert first.status is backfill.RunStatus.COMPLETED
    assert first.events_imported == 631 == standin.state.events_imported
    assert first.this_run is not None
    assert first.this_run.events_imported == 631
    assert again.events_imported == 631
    assert again.already_complete
    assert standin.state.requests_count == requests, "a finished run sends nothing more"


def test_run_from_inside_a_running_event_loop(
    tmp_path: Path, standin: Standin, creds: backfill.Credentials
) -> None:
    """In a notebook an event loop is already running: run() still works, from a thread."""

    async def notebook_cell() -> backfill.Summary:
        return backfill.run(
            SAMPLE,
            out=tmp_path / "out",
            credentials=creds,
            api_url=standin.url,
            project_id=DEFAULT_PROJECT_ID,
        )

    summary = asyncio.run(notebook_cell())
    assert summary.events_imported == 634, "no --time-column: the 3 bad times refuse nothing"


def test_run_takes_credentials_from_the_environment(
    tmp_path: Path, standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without credentials=, run() reads them (and the project id) from the environment."""
    user, secret = DEFAULT_SERVICE_ACCOUNT
    monkeypatch.setenv("MIXPANEL_SERVICE_ACCOUNT_USERNAME", user)
    monkeypatch.setenv("MIXPANEL_SERVICE_ACCOUNT_SECRET", secret)
    monkeypatch.setenv("MIXPANEL_PROJECT_ID", DEFAULT_PROJECT_ID)
    summary = backfill.run(SAMPLE, out=tmp_path / "out", api_url=standin.url)
    assert summary.events_imported == 634


def test_a_refused_run_raises_with_its_summary(tmp_path: Path, creds: backfill.Credentials) -> None:
    """An aborted run raises an Aborted subclass carrying the Summary (status aborted)."""
    with (
        standin_thread(StandinConfig(id_merge=IdMerge.SIMPLIFIED)) as simplified,
        pytest.raises(backfill.IdentityEventsRefused, match="with id_merge='simplified'") as info,
    ):
        backfill.run(
            SAMPLE,
            out=tmp_path / "out",
            credentials=creds,
            api_url=simplified.url,
            project_id=DEFAULT_PROJECT_ID,
        )
    assert isinstance(info.value, backfill.Aborted)
    assert info.value.summary is not None
    assert info.value.summary.status is backfill.RunStatus.ABORTED
    assert info.value.summary.events_imported == 0


def test_missing_file_raises_an_input_error_and_creates_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A missing input raises InputError (a BackfillError), never SystemExit; no folder made."""
    with pytest.raises(backfill.InputError, match=r"input file not found: .*nope\.csv") as info:
        backfill.validate(tmp_path / "nope.csv", out=tmp_path / "out")
    assert isinstance(info.value, backfill.BackfillError)
    assert "not found" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"anon_colum": "x"}, "did you mean 'anon_column'"),
        ({"rate": "fast"}, "rate= must be a number above 0"),
        ({"region": "mars"}, "region= 'mars' is not one of us, eu, in"),
        ({"dry_run": True}, "'dry_run' cannot be set here: pass `--dry-run` on the command line"),
        ({"fault_rate": 0.1}, "'fault_rate' is a setting of rehearse/serve, not of run"),
        ({"secret": "x"}, "credentials come from the environment only"),
    ],
)
def test_bad_keywords_raise_config_errors_naming_the_fix(
    tmp_path: Path, options: dict[str, object], fragment: str
) -> None:
    """Keywords are checked like flags; unknown ones get a 'did you mean'."""
    with pytest.raises(backfill.ConfigError, match=re.escape(fragment)) as info:
        backfill.run(SAMPLE, out=tmp_path / "o", **options)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_restart_is_a_keyword_of_run(
    tmp_path: Path, standin: Standin, creds: backfill.Credentials
) -> None:
    """restart=True (a flag elsewhere) starts a finished run over from Python."""
    options = {"out": tmp_path / "o", "credentials": creds, "api_url": standin.url}
    backfill.run(SAMPLE, project_id=DEFAULT_PROJECT_ID, **options)  # type: ignore[arg-type]
    before = standin.state.requests_count
    again = backfill.run(SAMPLE, project_id=DEFAULT_PROJECT_ID, restart=True, **options)  # type: ignore[arg-type]
    assert again.this_run is not None
    assert again.this_run.events_imported == 634
    assert standin.state.requests_count > before


def test_region_is_case_insensitive_in_toml_flags_and_keywords(tmp_path: Path) -> None:
    """TOML region = "EU", --region EU and region="EU" all reach api-eu."""
    from backfill.config.settings import settings_for

    config = tmp_path / "c.toml"
    config.write_text('region = "EU"\n', encoding="utf-8")

    def url(explicit: dict[str, str], config_path: Path | None, origin: str) -> str:
        settings = settings_for(
            "run", ("m.csv",), explicit=explicit, config_path=config_path, origin=origin, env={}
        )
        return settings.import_url

    urls = {
        url({}, config, "flag"),
        url({"region": "EU"}, None, "flag"),
        url({"region": "EU"}, None, "keyword"),
    }
    assert urls == {"https://api-eu.mixpanel.com/import"}


def test_credentials_repr_masks_the_secret() -> None:
    """An explicit Credentials never shows its secret, in repr or str."""
    creds = backfill.Credentials("svc.user", "s3cr3t-value-9f")
    assert "s3cr3t-value-9f" not in repr(creds) + str(creds)
    assert "svc.user" in repr(creds)


def test_import_backfill_is_light_and_lists_its_api() -> None:
    """``import backfill`` loads no pyarrow or aiohttp; dir() shows the public API."""
    code = (
        "import sys, backfill\n"
        "print(sorted(m for m in ('pyarrow', 'aiohttp') if m in sys.modules))\n"
        "print(all(n in dir(backfill) for n in ('validate', 'run', 'Summary', 'BackfillError')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]
