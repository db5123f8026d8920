"""The run folder as a user meets it: private files, safe reports, one folder per input wherever
the command starts, clear refusals of a damaged checkpoint or an unusable --out, a full disk.

Each test runs ``python -m backfill`` as a subprocess, as a user would.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runkit import REPO, STANDIN_CREDENTIALS, CliResult, clean_env, uuid4s, write_pairs
from runkit import backfill_cli as backfill

from backfill.commands.rehearse import standin_thread
from backfill.standin import (
    FaultRates,
    Standin,
    StandinConfig,
)

SAMPLE = REPO / "sample_data" / "mappings.csv"


@pytest.fixture
def standin() -> Iterator[Standin]:
    """The stand-in serving from a background thread."""
    with standin_thread(StandinConfig()) as served:
        yield served


def one_error_line(result: CliResult, code: int) -> str:
    """Assert exit ``code`` and one ``backfill: error:`` line, no traceback; return it."""
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("backfill: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- privacy and safety of the files ------------------------------------------------------


def test_reports_and_checkpoint_are_readable_by_the_owner_only(
    tmp_path: Path, standin: Standin
) -> None:
    """rejects.csv, summary.json, checkpoint.json and .lock are 0600; the run folder 0700."""
    out = tmp_path / "run"
    result = backfill("run", SAMPLE, "--out", out, "--api-url", standin.url, "--no-progress",
                      cwd=tmp_path)  # fmt: skip
    assert result.code == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("rejects.csv", "summary.json", "checkpoint.json", ".lock"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name


def test_formula_like_ids_are_neutralised_in_rejects_csv(tmp_path: Path) -> None:
    """A cell a spreadsheet would run (=, +, -, @, tab, CR first) gets a leading quote."""
    anon = uuid4s(1, 5)[0]
    rows = [
        ('=HYPERLINK("http://x")', "user_1"),
        ("+1", "user_2"),
        (anon, "@SUM(A1)"),
        (anon, "@SUM(A1)"),  # a duplicate pair: rejected, so written
        (uuid4s(1, 6)[0], "-1"),
    ]
    source = write_pairs(tmp_path / "m.csv", rows)
    result = backfill("validate", source, "--out", tmp_path / "o", "--no-progress", cwd=tmp_path)
    assert result.code == 0, result.stderr
    with (tmp_path / "o" / "rejects.csv").open(encoding="utf-8", newline="") as f:
        found = {int(r["row"]): r for r in csv.DictReader(f)}
    assert found[1]["anon_id"] == '\'=HYPERLINK("http://x")'
    assert found[2]["anon_id"] == "'+1"
    assert found[4]["identified_id"] == "'@SUM(A1)"
    assert found[5]["identified_id"] == "'-1"
    assert all(not v.startswith(("=", "+", "-", "@")) for r in found.values() for v in r.values())


def test_a_symlinked_lock_leaves_its_target_untouched(tmp_path: Path) -> None:
    """A .lock planted as a symlink is refused (exit 2); the file it points at is unchanged."""
    out = tmp_path / "o"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n", encoding="utf-8")
    (out / ".lock").symlink_to(target)
    result = backfill("validate", SAMPLE, "--out", out, "--no-progress", cwd=tmp_path)
    assert "symlink" in one_error_line(result, 2)
    assert target.read_text(encoding="utf-8") == "keep me\n"


# --- refusals of the folder and the checkpoint ----------------------------------------------


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """--out naming a file: exit 2 with one line naming --out."""
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    result = backfill("validate", SAMPLE, "--out", tmp_path / "taken", cwd=tmp_path)
    assert "is a file, not a folder" in one_error_line(result, 2)


def test_out_on_a_read_only_disk_is_refused(tmp_path: Path) -> None:
    """--out on a read-only file system: exit 2 with one line naming --out."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        result = backfill("validate", SAMPLE, "--out", mount / "run", cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert "--out" in one_error_line(result, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("done", [[1, 1e30]]),
        ("done", [[1, 10**9]]),  # past the end of the input
        ("retries", [1, 2]),
        ("event_time_ms", 5),
        ("event_time_ms", 99_999_999_999_999),
        ("events_imported", -4),
    ],
)
def test_a_checkpoint_with_absurd_values_is_refused_naming_restart(
    tmp_path: Path, standin: Standin, field: str, value: Any
) -> None:
    """Absurd values in checkpoint.json: exit 2 naming --restart, nothing sent."""
    out = tmp_path / "o"
    args = ("run", SAMPLE, "--out", out, "--api-url", standin.url, "--no-progress")
    assert backfill(*args, cwd=tmp_path).code == 0
    path = out / "checkpoint.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data[field] = value
    path.write_text(json.dumps(data), encoding="utf-8")
    before = standin.state.requests_count
    assert "--restart" in one_error_line(backfill(*args, cwd=tmp_path), 2)
    assert standin.state.requests_count == before


def test_a_colon_in_the_service_account_name_is_refused(tmp_path: Path) -> None:
    """A ':' in the user name (it would split the Basic credentials): exit 2, one line."""
    env = clean_env(STANDIN_CREDENTIALS | {"MIXPANEL_SERVICE_ACCOUNT_USERNAME": "svc:user"})
    result = backfill("run", SAMPLE, "--out", tmp_path / "o", cwd=tmp_path, env=env)
    assert "contains ':'" in one_error_line(result, 2)


# --- one run folder per input, wherever the command starts ----------------------------------


def test_the_same_command_from_another_directory_finds_the_same_run(
    tmp_path: Path, standin: Standin
) -> None:
    """Run from A, rerun (input by absolute path) from B: B resumes A's folder, sends nothing."""
    source = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuid4s(300, 7))])
    first_dir, other_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    other_dir.mkdir()
    args = ("run", source, "--api-url", standin.url, "--no-progress")
    first = backfill(*args, cwd=first_dir)
    assert first.code == 0, first.stderr
    sent = standin.state.requests_count
    again = backfill(*args, cwd=other_dir)
    assert again.code == 0, again.stderr
    assert standin.state.requests_count == sent, "nothing sent twice"
    assert str(first_dir / "runs" / "m-csv") in again.stderr, "the note names the folder used"
    assert not (other_dir / "runs").exists()
    assert "already complete" in again.stdout


def test_a_dry_run_in_a_finished_runs_folder_keeps_its_summary(
    tmp_path: Path, standin: Standin
) -> None:
    """validate into a finished run's folder leaves summary.json saying completed."""
    out = tmp_path / "o"
    assert backfill("run", SAMPLE, "--out", out, "--api-url", standin.url, cwd=tmp_path).code == 0
    result = backfill("validate", SAMPLE, "--out", out, "--no-progress", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert "already imported" in result.stdout


@pytest.mark.parametrize("command", ["run", "rehearse", "validate"])
def test_a_missing_input_exits_2_in_one_line_and_creates_no_folder(
    tmp_path: Path, command: str
) -> None:
    """A missing input: exit 2, one line naming it, and no runs/ folder left behind."""
    result = backfill(command, "missing.csv", cwd=tmp_path)
    assert "missing.csv" in one_error_line(result, 2)
    assert list(tmp_path.iterdir()) == []


# --- machine-readable output -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "run", "rehearse"])
def test_json_prints_one_object_on_stdout_and_the_rest_on_stderr(
    tmp_path: Path, standin: Standin, command: str
) -> None:
    """--json: stdout is one JSON object (rows, valid, rejects, imported); the table on stderr."""
    extra = ["--api-url", standin.url] if command == "run" else []
    result = backfill(command, SAMPLE, "--time-column", "merged_at", "--json", *extra,
                      cwd=tmp_path)  # fmt: skip
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert (data["rows_read"], data["rows_valid"]) == (649, 631)
    assert data["rejected"]["invalid_anon_id"] == 4
    if command != "validate":
        assert data["events_imported"] == 631
    assert "rows read" in result.stderr


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 KiB tmpfs mounted for the test (root only; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_run_exits_3_and_the_copied_folder_resumes_exactly(
    tmp_path: Path, small_disk: Path, standin: Standin
) -> None:
    """The disk fills mid-run (api refusals grow rejects.csv): exit 3 in one line; the folder
    copied to a healthy disk resumes and imports exactly the remaining pairs."""
    pairs = [(a, f"user-{i}") for i, a in enumerate(uuid4s(6000, 8))]
    refused = frozenset(f"user-{i}" for i in range(0, 6000, 2))  # long refusals fill the disk
    standin.state.refuse_distinct_ids.update(refused)
    source = write_pairs(tmp_path / "m.csv", pairs)
    out = small_disk / "run"
    args = ("run", source, "--api-url", standin.url, "--no-progress", "--batch-size", "100")
    full = backfill(*args, "--out", out, cwd=tmp_path)
    line = one_error_line(full, 3)
    assert "no space left" in line
    assert "run the same command again" in line
    healthy = tmp_path / "moved"
    shutil.copytree(out, healthy)
    stored_before = set(standin.state.store)
    resumed = backfill(*args, "--out", healthy, cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    done = json.loads((healthy / "summary.json").read_text())
    assert done["events_imported"] == 3000
    assert done["rejected"]["api_rejected"] == 3000
    new = set(standin.state.store) - stored_before
    assert len(new) + len(stored_before) == 3000, "every accepted pair imported exactly once"
    with (healthy / "rejects.csv").open(encoding="utf-8", newline="") as f:
        rows = [r["row"] for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows)) == 3000, "each refused row once"


def test_a_disk_filled_by_something_else_stops_the_run_at_the_next_checkpoint(
    tmp_path: Path, small_disk: Path
) -> None:
    """The run folder's disk fills up mid-run (another program): the next checkpoint write
    fails, the run stops (exit 3, one line), and a copy of the folder resumes to the end."""
    pairs = [(a, f"user-{i}") for i, a in enumerate(uuid4s(6000, 9))]
    source = write_pairs(tmp_path / "m.csv", pairs)
    out = small_disk / "run"
    filled: list[int] = []

    def fill_the_disk(record: object) -> None:
        if not filled:
            filled.append(1)
            with contextlib.suppress(OSError), (small_disk / "hog").open("wb") as hog:
                while True:
                    hog.write(b"\0" * 4096)

    slow = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=0.3))
    with standin_thread(slow, on_request=fill_the_disk) as standin:
        args = ("run", source, "--api-url", standin.url, "--batch-size", "200",
                "--concurrency", "2", "--no-progress")  # fmt: skip
        full = backfill(*args, "--out", out, cwd=tmp_path)
        assert "no space left" in one_error_line(full, 3)
        healthy = tmp_path / "moved"
        shutil.copytree(out, healthy)
        standin.state.faults = FaultRates()  # answers at once again
        resumed = backfill(*args, "--out", healthy, cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert json.loads((healthy / "summary.json").read_text())["events_imported"] == 6000
    assert standin.state.identify_pairs() == set(pairs)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--api-url", "http://127.0.0.1:99999"), "invalid port"),
        (("--region", "EUR"), "--region 'EUR' is not one of us, eu, in"),
        (("--concurrency", "many"), "--concurrency must be a whole number"),
    ],
)
def test_bad_send_options_are_one_line_and_send_nothing(
    tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    """An invalid port, an unknown region or a bad number: exit 2, one line, no folder."""
    result = backfill("run", SAMPLE, *args, cwd=tmp_path)
    assert fragment in one_error_line(result, 2)
    assert not (tmp_path / "runs").exists()
