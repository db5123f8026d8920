"""One run per folder: while a run holds its folder, a second run, validate or a status probe is
refused or answered without harm, and a lock left by a killed process is taken over."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from resumekit import (
    LEISURELY,
    Dataset,
    assert_imported_once,
    cli,
    finish,
    launched,
    load,
    run_args,
    serve,
    until,
)

from backfill.errors import EXIT_USAGE, RunLocked
from backfill.folder.lock import LOCK_FILE, FolderLock, active_holder
from backfill.standin import FaultRates

REPO = Path(__file__).resolve().parent.parent


# --- the lock ------------------------------------------------------------------------------


def test_a_second_lock_on_the_same_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """While one FolderLock is held, another on the same folder raises RunLocked naming it."""
    with FolderLock(tmp_path, command="run"):
        with (
            pytest.raises(RunLocked, match=r"another backfill run \(pid ") as caught,
            FolderLock(tmp_path, command="validate"),
        ):
            pass
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message
        assert "run" in message
        assert str(tmp_path) in message
        assert "backfill status" in message
        assert caught.value.exit_code == EXIT_USAGE
    with FolderLock(tmp_path, command="validate"):  # released: free again
        pass


def test_locks_on_different_folders_do_not_interfere(tmp_path: Path) -> None:
    """Two run folders can each be locked at once."""
    with FolderLock(tmp_path / "a", command="run"), FolderLock(tmp_path / "b", command="run"):
        assert (tmp_path / "a" / LOCK_FILE).exists()
        assert (tmp_path / "b" / LOCK_FILE).exists()


def test_active_holder_reports_the_lock_only_while_it_is_held(tmp_path: Path) -> None:
    """``active_holder`` is None without a lock file, the holder while held, None after."""
    assert active_holder(tmp_path) is None
    with FolderLock(tmp_path, command="run"):
        holder = active_holder(tmp_path)
        assert holder is not None
        assert holder["pid"] == os.getpid()
        assert holder["command"] == "run"
        assert holder["host"]
        assert holder["since"] <= time.time()
    assert (tmp_path / LOCK_FILE).exists()  # the stale file stays, unlocked
    assert active_holder(tmp_path) is None


def _lock_holder_child(folder: Path) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from backfill.folder.lock import FolderLock
        with FolderLock(Path(sys.argv[1]), command="run"):
            print("locked", flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, cwd=REPO
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != b"locked":
        child.kill()
        child.wait()
        pytest.fail(f"the lock-holding child did not start: {line!r}")
    return child


def test_a_lock_left_by_a_sigkilled_process_is_taken_over(tmp_path: Path) -> None:
    """A lock held by a process killed with SIGKILL is free again: the next run takes it."""
    child = _lock_holder_child(tmp_path)
    try:
        holder = active_holder(tmp_path)
        assert holder is not None
        assert holder["pid"] == child.pid
        with (
            pytest.raises(RunLocked, match=f"pid {child.pid}"),
            FolderLock(tmp_path, command="run"),
        ):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert active_holder(tmp_path) is None
    with FolderLock(tmp_path, command="run"):
        holder = active_holder(tmp_path)
        assert holder is not None
        assert holder["pid"] == os.getpid()  # the stale holder's details were replaced


def test_a_status_probe_never_makes_a_starting_run_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run starting while ``active_holder`` probes (as `backfill status` does) gets the lock."""
    with FolderLock(tmp_path, command="run"):  # an earlier, finished run leaves a stale .lock
        pass
    real_flock = fcntl.flock
    outcomes: list[str] = []
    starter: list[threading.Thread] = []

    def start_a_run() -> None:
        try:
            with FolderLock(tmp_path, command="run"):
                outcomes.append("locked")
        except RunLocked as e:
            outcomes.append(f"refused: {e}")

    def flock(fd: int, operation: int) -> None:
        real_flock(fd, operation)
        if operation & fcntl.LOCK_SH and not starter:
            # The probe holds its shared lock right now: a run starts at this instant, in
            # another thread, as it would in another process; the probe lets go a moment later.
            starter.append(threading.Thread(target=start_a_run))
            starter[0].start()
            time.sleep(0.02)

    monkeypatch.setattr("backfill.folder.lock.fcntl.flock", flock)
    assert active_holder(tmp_path) is None
    monkeypatch.undo()
    starter[0].join(timeout=10)
    assert outcomes == ["locked"]


# --- 6. two runs on one folder -------------------------------------------------------------


async def test_a_second_run_on_the_same_folder_is_refused_while_the_first_completes(
    tmp_path: Path, big: Dataset
) -> None:
    """While a run is active a second run (or validate) on its --out exits 2 naming it."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(LEISURELY) as standin:
        args = run_args(input_path, out, standin.url)
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: standin.state.requests_count > 0, "the first requests", proc)
            second = await cli(args, cwd=tmp_path)
            validate = await cli(["validate", str(input_path), "--out", str(out)], cwd=tmp_path)
            assert proc.returncode is None, "the first run ended before the second was tried"
            standin.state.faults = FaultRates()
            first = await finish(proc)
        assert first.code == 0, first.stderr
    for refused in (second, validate):
        assert refused.code == 2, refused.stderr
        assert "another backfill run" in refused.stderr
        assert f"pid {proc.pid}" in refused.stderr
        assert "backfill status" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert_imported_once(standin, big)
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["requests"] == standin.state.requests_count  # all from the first run
