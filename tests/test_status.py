"""``backfill status`` as a user meets it: every run this user started, from any directory;
one input's run; a folder's; and light enough to answer at once (no pyarrow, no aiohttp)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from resumekit import (
    LEISURELY,
    Dataset,
    checkpoint_done,
    cli,
    finish,
    launched,
    run_args,
    serve,
    until,
)
from runkit import CliResult, backfill_cli, clean_env, uuid4s, write_pairs

from backfill.commands.rehearse import standin_thread
from backfill.standin import FaultRates, Standin, StandinConfig


@pytest.fixture
def standin() -> Iterator[Standin]:
    """The stand-in serving from a background thread."""
    with standin_thread(StandinConfig()) as served:
        yield served


def backfill(*args: str | Path, cwd: Path) -> CliResult:
    """``python -m backfill ARGS`` in ``cwd`` with the stand-in's credentials."""
    return backfill_cli(*args, cwd=cwd)


def three_runs(tmp_path: Path, url: str) -> tuple[Path, Path, Path]:
    """A finished run in a/runs/m-csv, one with --out elsewhere, a dry run of another input."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    source = write_pairs(tmp_path / "m.csv", [(x, f"u{i}") for i, x in enumerate(uuid4s(30, 1))])
    other = write_pairs(tmp_path / "n.csv", [(x, f"v{i}") for i, x in enumerate(uuid4s(4, 2))])
    assert backfill("run", source, "--api-url", url, "--no-progress", cwd=a).code == 0
    aside = tmp_path / "experiments" / "sig"
    assert backfill("run", source, "--out", aside, "--api-url", url, "--restart", cwd=b).code == 0
    assert backfill("validate", other, "--no-progress", cwd=c).code == 0
    return a / "runs" / "m-csv", aside, c / "runs" / "n-csv"


def test_status_from_an_unrelated_directory_names_every_recorded_run(
    tmp_path: Path, standin: Standin
) -> None:
    """No argument, from a directory with no runs/: one line per recorded run, naming its
    folder, state, imported of total and input."""
    folders = three_runs(tmp_path, standin.url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = backfill("status", cwd=elsewhere)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FOLDER", "STATE", "IMPORTED", "INPUT"]
    for folder in folders:
        (line,) = [x for x in lines if x.startswith(str(folder) + " ")]
        if folder.name == "n-csv":
            assert line.split()[1:] == ["validated", "0", "of", "4", str(tmp_path / "n.csv")]
        else:
            assert line.split()[1:] == ["finished", "30", "of", "30", str(tmp_path / "m.csv")]


def test_status_of_an_input_shows_its_runs_only(tmp_path: Path, standin: Standin) -> None:
    """``status INPUT`` from elsewhere shows that input's runs in full, not the others'."""
    finished, aside, dry = three_runs(tmp_path, standin.url)
    result = backfill("status", tmp_path / "n.csv", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"{dry}: not running (last: validated)")
    assert f"  input            {tmp_path / 'n.csv'}" in result.stdout
    assert str(finished) not in result.stdout
    as_json = json.loads(backfill("status", tmp_path / "m.csv", "--json", cwd=tmp_path).stdout)
    assert {r["out"] for r in as_json} == {str(finished), str(aside)}
    assert all(r["finished"] and r["events_imported"] == 30 for r in as_json)


def test_status_with_nothing_recorded_says_what_to_pass(tmp_path: Path) -> None:
    """No run recorded and no runs/ here: exit 2, one line naming INPUT and --out."""
    result = backfill("status", cwd=tmp_path)
    assert result.code == 2
    assert result.stderr == (
        "backfill: error: no runs recorded, and none under runs/ here: pass an INPUT or "
        "--out DIR (the folder a run wrote to)\n"
    )


def test_status_imports_neither_pyarrow_nor_aiohttp(tmp_path: Path, standin: Standin) -> None:
    """``python -X importtime -m backfill status`` with runs to show loads no pyarrow/aiohttp."""
    three_runs(tmp_path, standin.url)
    command = [sys.executable, "-X", "importtime", "-m", "backfill", "status"]
    proc = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "backfill.report.status" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("pyarrow", "aiohttp")}


# --- 8. backfill status --------------------------------------------------------------------


async def test_status_while_running_and_after(tmp_path: Path, big: Dataset) -> None:
    """`backfill status` shows a live run's progress, then the finished run; --json parses."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "runs" / "mappings-csv"  # the default --out, so status finds it alone
    async with serve(LEISURELY) as standin:
        args = run_args(input_path, None, standin.url)
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: checkpoint_done(out) > 0, "a first checkpoint", proc)
            text = await cli(["status", "--out", str(out)], cwd=tmp_path)
            as_json = await cli(["status", "--out", str(out), "--json"], cwd=tmp_path)
            listed = await cli(["status", "--json"], cwd=tmp_path)
            assert proc.returncode is None, "the run ended before status was read"
            standin.state.faults = FaultRates()
            assert (await finish(proc)).code == 0
        after = await cli(["status", "--out", str(out)], cwd=tmp_path)
        after_json = await cli(["status", "--out", str(out), "--json"], cwd=tmp_path)

    assert text.code == 0, text.stderr
    assert f"running (run, pid {proc.pid})" in text.stdout
    assert "pairs done" in text.stdout
    assert f"of {len(big.valid):,}" in text.stdout
    assert "imported" in text.stdout
    assert "last checkpoint" in text.stdout
    assert "events/s" in text.stdout
    live = json.loads(as_json.stdout)
    assert live["active"] is True
    assert live["pid"] == proc.pid
    assert live["pairs_total"] == len(big.valid)
    assert 0 < live["pairs_settled"] < len(big.valid)
    assert 0 < live["events_imported"] <= live["pairs_settled"]
    assert live["finished"] is False
    assert live["events_per_s"] > 0
    assert [s["out"] for s in json.loads(listed.stdout)] == [str(out.resolve())]

    assert after.code == 0, after.stderr
    assert "finished" in after.stdout
    assert f"pairs done       {len(big.valid):,} of {len(big.valid):,}" in after.stdout
    done = json.loads(after_json.stdout)
    assert done["active"] is False
    assert done["finished"] is True
    assert done["last_status"] == "completed"
    assert done["events_imported"] == len(big.valid)
    assert done["rejected"]["invalid_anon_id"] == 1


async def test_status_without_out_and_without_runs_exits_2(tmp_path: Path) -> None:
    """`backfill status` with no --out where there is no runs/ folder: exit 2, naming --out."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = await cli(["status"], cwd=empty)
    assert result.code == 2
    assert "--out" in result.stderr
    assert "Traceback" not in result.stderr
    missing = await cli(["status", "--out", str(tmp_path / "nope")], cwd=empty)
    assert missing.code == 2
    assert "--out" in missing.stderr


async def test_status_of_an_active_first_run_before_its_first_checkpoint(
    tmp_path: Path, small: Dataset
) -> None:
    """`backfill status` shows a first run as running before any of its batches settled."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    async with (
        serve(FaultRates(p_slow=1.0, slow_s=30.0)) as standin,  # nothing settles
        launched(run_args(input_path, out, standin.url), cwd=tmp_path) as proc,
    ):
        await until(lambda: standin.state.requests_count > 0, "the first request", proc)
        result = await cli(["status", "--out", str(out)], cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert f"running (run, pid {proc.pid})" in result.stdout
