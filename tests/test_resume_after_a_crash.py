"""Resumable runs end to end: the real CLI as a subprocess, killed, interrupted and rerun.

Each test serves the stand-in on its own event loop and starts ``python -m backfill run``
through ``asyncio.create_subprocess_exec``, so the stand-in keeps answering while the command
works. Runs that must be caught mid-way use ``slow`` faults on every request; the tests poll
the stand-in (events imported) and the run folder (checkpoint.json) to decide when to send a
signal, never a blind sleep.

Bookkeeping: every valid pair's ``$insert_id`` is computed up front, so the stand-in's request
log says which source rows each run sent. "Resent" means sent by both the interrupted run and
the rerun. The stand-in's clock is ``time.time`` so its arrival times compare with the
checkpoint's ``updated_at``.

The resend bound after SIGKILL: a pair resent by the rerun is not in the killed run's last
checkpoint, whose snapshot was taken at ``updated_at``. Its batch had not settled by then, so
it was either held by one of the ``--concurrency`` workers at that instant (at most
``concurrency * batch_size`` pairs) or sent in a request that reached the stand-in after
``updated_at``. Hence resends <= concurrency * batch_size + the events of the killed run's
requests that arrived after ``updated_at``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from backfill.folder.checkpoint import RowIntervals
from backfill.folder.rejects import RejectRow, RejectsFile
from backfill.read import open_dataset
from backfill.send.events import insert_ids
from backfill.standin import (
    DEFAULT_PROJECT_ID,
    DEFAULT_SERVICE_ACCOUNT,
    FaultRates,
    Standin,
    StandinConfig,
    StandinState,
    running_standin,
)

USER, SECRET = DEFAULT_SERVICE_ACCOUNT
BATCH = 100
CONCURRENCY = 4
TIMEOUT_S = 2  # per request; a graceful stop waits at most this + 5 s for in-flight requests
SLOW = FaultRates(p_slow=1.0, slow_s=0.05)  # at most 8,000 events/s: 2.5 s for 20,000 pairs
LEISURELY = FaultRates(p_slow=1.0, slow_s=0.2)  # for tests that run other commands meanwhile
WAIT_S = 60.0  # generous limit for every poll and every command


# --- input ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A generated mappings CSV and everything the tests need to know about its rows."""

    path: Path
    rows_total: int
    valid: dict[int, tuple[str, str]]  # row -> (anon, identified)
    invalid: dict[int, str]  # row -> validation reason
    row_of: dict[str, int]  # $insert_id -> row

    def copy_to(self, folder: Path) -> Path:
        """A private copy of the input (tests edit theirs)."""
        target = folder / self.path.name
        shutil.copyfile(self.path, target)
        return target

    def rows_of(self, ids: Iterable[str]) -> set[int]:
        """The source rows of these ``$insert_id``s."""
        return {self.row_of[i] for i in ids}

    def pairs(self, rows: Iterable[int]) -> set[tuple[str, str]]:
        """The (anon, identified) pairs of these rows."""
        return {self.valid[r] for r in rows}


def make_dataset(folder: Path, n_valid: int, seed: int) -> Dataset:
    """``n_valid`` distinct valid pairs plus five invalid rows spread through the file.

    Identified ids vary in length so that a batch's make-up could not leak into a pair's
    ``$insert_id`` unnoticed. Every row has a ``merged_at`` time column (used only when a
    test passes ``--time-column``).
    """
    rng = random.Random(seed)

    def new_uuid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    total = n_valid + 5
    self_merge = new_uuid()
    invalid_at = {
        1: ("not-a-uuid", "user-x", "invalid_anon_id"),
        total // 40: ("", "user-y", "missing_anon_id"),
        total // 2: (new_uuid(), "null", "invalid_identified_id"),
        total * 3 // 4: (self_merge, self_merge, "self_merge"),
        total: (new_uuid(), "", "missing_identified_id"),
    }
    rows: list[tuple[str, str]] = []
    valid: dict[int, tuple[str, str]] = {}
    invalid: dict[int, str] = {}
    k = 0
    for row in range(1, total + 1):
        if row in invalid_at:
            anon, ident, reason = invalid_at[row]
            invalid[row] = reason
        else:
            anon, ident = new_uuid(), f"user-{k}" + "-long" * (k % 5)
            valid[row] = (anon, ident)
            k += 1
        rows.append((anon, ident))
    path = folder / "mappings.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["anon_id", "identified_id", "merged_at"])
        for anon, ident in rows:
            writer.writerow([anon, ident, "2024-03-01T12:00:00Z"])
    order = sorted(valid)
    ids = insert_ids(
        pa.array([valid[r][0] for r in order], pa.string()),
        pa.array([valid[r][1] for r in order], pa.string()),
    ).to_pylist()
    return Dataset(path, total, valid, invalid, dict(zip(ids, order, strict=True)))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """20,000 valid pairs and 5 invalid rows: long enough to interrupt."""
    return make_dataset(tmp_path_factory.mktemp("big"), 20_000, seed=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """2,000 valid pairs and 5 invalid rows: for runs that need not be caught mid-way."""
    return make_dataset(tmp_path_factory.mktemp("small"), 2_000, seed=5)


# --- the stand-in and the command ----------------------------------------------------------


@asynccontextmanager
async def serve(faults: FaultRates = SLOW, **config: Any) -> AsyncIterator[Standin]:
    """A stand-in on 127.0.0.1 whose request log uses wall-clock times."""
    cfg = StandinConfig(faults=faults, **config)
    state = StandinState(cfg, clock=time.time)
    async with running_standin(cfg, state=state, shutdown_timeout_s=0.2) as standin:
        yield standin


def environment(*, secret: str = SECRET, project_id: str = DEFAULT_PROJECT_ID) -> dict[str, str]:
    """This process's environment without MIXPANEL_*/BACKFILL_*, plus the stand-in's account."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXPANEL_", "BACKFILL_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        MIXPANEL_SERVICE_ACCOUNT_USERNAME=USER,
        MIXPANEL_SERVICE_ACCOUNT_SECRET=secret,
        MIXPANEL_PROJECT_ID=project_id,
    )
    return env


def run_args(input_path: Path, out: Path | None, url: str, *extra: str) -> list[str]:
    """``run INPUT`` with this file's sending options (``--out`` omitted when None)."""
    args = ["run", str(input_path)]
    if out is not None:
        args += ["--out", str(out)]
    return [
        *args,
        "--api-url",
        url,
        "--batch-size",
        str(BATCH),
        "--concurrency",
        str(CONCURRENCY),
        "--timeout",
        str(TIMEOUT_S),
        "--retry-base-s",
        "0.05",
        "--no-progress",
        *extra,
    ]


@dataclass
class Result:
    """How a command ended."""

    code: int
    stdout: str
    stderr: str


@asynccontextmanager
async def launched(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m backfill ARGS`` running; killed on the way out if it still runs."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        *args,
        cwd=cwd,
        env=dict(env if env is not None else environment()),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def finish(proc: asyncio.subprocess.Process, timeout_s: float = WAIT_S) -> Result:
    """Wait for the command to end (generous limit) and collect its output."""
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def cli(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> Result:
    """Run a command to its end."""
    async with launched(args, cwd=cwd, env=env) as proc:
        return await finish(proc)


async def until(
    condition: Callable[[], bool],
    what: str,
    proc: asyncio.subprocess.Process | None = None,
    timeout_s: float = WAIT_S,
) -> None:
    """Poll ``condition``; fail if ``proc`` ends first or after a generous timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.returncode is not None:
            out, err = await proc.communicate()
            pytest.fail(
                f"the command ended ({proc.returncode}) before {what}:\n"
                f"{out.decode()}\n{err.decode()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# --- reading the results -------------------------------------------------------------------


def load(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoint_done(out: Path) -> int:
    """How many rows the checkpoint on disk has settled (0 if there is none yet)."""
    try:
        data = load(out / "checkpoint.json")
    except (FileNotFoundError, ValueError):
        return 0
    return RowIntervals.from_json(data["done"]).count()


def done_rows(ckpt: Mapping[str, Any], rows: Iterable[int]) -> set[int]:
    """Which of ``rows`` the checkpoint records as done."""
    ordered = np.array(sorted(rows), dtype=np.int64)
    inside = RowIntervals.from_json(ckpt["done"]).contains(ordered)
    return set(ordered[inside].tolist())


def sent_ids(standin: Standin, start: int = 0, stop: int | None = None) -> set[str]:
    """The ``$insert_id``s of the requests ``start:stop`` in the stand-in's log."""
    return {i for r in standin.state.requests[start:stop] for i in r.insert_ids}


def stored_rows(standin: Standin, data: Dataset) -> set[int]:
    """The source rows of the events the stand-in holds."""
    return data.rows_of(key.insert_id for key in standin.state.store)


def rejects(out: Path) -> list[dict[str, str]]:
    """rejects.csv as dicts."""
    with (out / "rejects.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def assert_rejects_once(out: Path) -> None:
    """Each row of rejects.csv appears once."""
    counts = Counter(r["row"] for r in rejects(out))
    assert [row for row, n in counts.items() if n > 1] == []


def assert_imported_once(standin: Standin, data: Dataset, refused: Iterable[int] = ()) -> None:
    """Every valid pair (but the refused) is stored, as one event, every resend identical."""
    expected = data.pairs(set(data.valid) - set(refused))
    state = standin.state
    assert state.identify_pairs() == expected
    assert len(state.store) == len(expected)  # one (event, time, distinct_id, $insert_id) each
    assert state.conflicting_keys() == {}
    assert len({key.time for key in state.store}) == 1


# --- 1. SIGKILL ----------------------------------------------------------------------------


async def test_sigkill_mid_run_then_rerun_imports_every_pair_with_bounded_resends(
    tmp_path: Path, big: Dataset
) -> None:
    """After SIGKILL a rerun sends exactly the rows the last checkpoint lacks; resends bounded."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(FaultRates(p_slow=1.0, slow_s=0.1)) as standin:
        args = run_args(input_path, out, standin.url)
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: checkpoint_done(out) > 0, "a first checkpoint", proc)
            seen = standin.state.events_imported
            await until(
                lambda: standin.state.events_imported >= seen + 4 * BATCH, "more imports", proc
            )
            proc.kill()
            await proc.wait()
        killed = load(out / "checkpoint.json")  # the last one written before the kill
        run1 = list(standin.state.requests)
        assert standin.state.events_imported < len(big.valid), "killed too late to test much"
        assert not (out / "summary.json").exists()

        done = done_rows(killed, big.valid)
        assert killed["events_imported"] == len(done)  # counts move with `done`
        assert done <= stored_rows(standin, big)  # never marked done before it was imported

        standin.state.faults = FaultRates()
        result = await cli(args, cwd=tmp_path)
        assert result.code == 0, result.stderr

    first = big.rows_of(sent_ids(standin, 0, len(run1)))
    second = big.rows_of(sent_ids(standin, len(run1)))
    assert second == set(big.valid) - done  # nothing skipped, nothing done sent again
    resent = first & second
    assert resent <= set(big.valid) - done
    late = sum(r.events for r in run1 if r.arrived_s >= killed["updated_at"])
    assert len(resent) <= CONCURRENCY * BATCH + late
    assert_imported_once(standin, big)
    assert {key.time for key in standin.state.store} == {killed["event_time_ms"]}
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["events_imported"] == len(big.valid)
    assert summary["runs"] == 2
    assert_rejects_once(out)
    assert {int(r["row"]) for r in rejects(out)} == set(big.invalid)


# --- 2. SIGINT / SIGTERM -------------------------------------------------------------------


async def test_sigint_mid_run_exits_130_consistent_then_rerun_resends_nothing(
    tmp_path: Path, big: Dataset
) -> None:
    """SIGINT: exit 130, summary interrupted, done = what was imported; the rerun resends none."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve() as standin:
        args = run_args(input_path, out, standin.url)
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: standin.state.events_imported >= 3000, "3,000 imports", proc)
            proc.send_signal(signal.SIGINT)
            result = await finish(proc)
        assert result.code == 130, result.stderr
        assert "interrupted" in result.stderr
        assert "run the same command again" in result.stderr
        assert "Traceback" not in result.stderr
        summary = load(out / "summary.json")
        assert summary["status"] == "interrupted"
        ckpt = load(out / "checkpoint.json")
        stored = stored_rows(standin, big)
        assert len(stored) < len(big.valid), "interrupted too late to test much"
        # A graceful stop lets the batches in flight settle: done is exactly what was imported.
        assert done_rows(ckpt, big.valid) == stored
        assert ckpt["events_imported"] == summary["events_imported"] == len(stored)
        n1 = len(standin.state.requests)

        standin.state.faults = FaultRates()
        again = await cli(args, cwd=tmp_path)
        assert again.code == 0, again.stderr

    first = big.rows_of(sent_ids(standin, 0, n1))
    second = big.rows_of(sent_ids(standin, n1))
    assert first & second == set()  # zero resends
    assert second == set(big.valid) - stored
    assert_imported_once(standin, big)
    assert load(out / "summary.json")["events_imported"] == len(big.valid)


async def test_double_sigint_stops_at_once_and_leaves_a_consistent_checkpoint(
    tmp_path: Path, big: Dataset
) -> None:
    """Two SIGINTs 50 ms apart: exit 130, done only holds imported rows, the rerun completes."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve() as standin:
        args = run_args(input_path, out, standin.url)
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: standin.state.events_imported >= 3000, "3,000 imports", proc)
            proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            result = await finish(proc)
        assert "Traceback" not in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert load(out / "summary.json")["status"] == "interrupted"
        ckpt = load(out / "checkpoint.json")
        done = done_rows(ckpt, big.valid)
        assert done <= stored_rows(standin, big)
        assert ckpt["events_imported"] == len(done)
        n1 = len(standin.state.requests)

        standin.state.faults = FaultRates()
        again = await cli(args, cwd=tmp_path)
        assert again.code == 0, again.stderr

    second = big.rows_of(sent_ids(standin, n1))
    assert second == set(big.valid) - done
    # Only the batches cut off in flight by the second signal are sent again.
    assert len(big.rows_of(sent_ids(standin, 0, n1)) & second) <= CONCURRENCY * BATCH
    assert_imported_once(standin, big)
    assert load(out / "summary.json")["events_imported"] == len(big.valid)


async def test_sigterm_stops_like_sigint_and_resumes_with_another_batch_size_and_url(
    tmp_path: Path, big: Dataset
) -> None:
    """SIGTERM acts as SIGINT; a resume with another --batch-size and --api-url skips nothing."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve() as first, serve(FaultRates()) as second:
        async with launched(run_args(input_path, out, first.url), cwd=tmp_path) as proc:
            await until(lambda: first.state.events_imported >= 3000, "3,000 imports", proc)
            proc.send_signal(signal.SIGTERM)
            result = await finish(proc)
        assert result.code == 130, result.stderr
        assert load(out / "summary.json")["status"] == "interrupted"
        ckpt = load(out / "checkpoint.json")
        stored = stored_rows(first, big)
        assert done_rows(ckpt, big.valid) == stored
        assert len(stored) < len(big.valid)

        resumed = run_args(input_path, out, second.url, "--batch-size", "37")
        again = await cli(resumed, cwd=tmp_path)
        assert again.code == 0, again.stderr

    assert big.rows_of(sent_ids(second)) == set(big.valid) - stored
    assert max(r.events for r in second.state.requests) <= 37
    assert first.state.identify_pairs() | second.state.identify_pairs() == big.pairs(big.valid)
    times = {key.time for key in first.state.store} | {key.time for key in second.state.store}
    assert times == {ckpt["event_time_ms"]}  # the resumed events carry the first run's time
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["events_imported"] == len(big.valid)


async def test_sigint_exits_once_in_flight_requests_settle(tmp_path: Path, big: Dataset) -> None:
    """A graceful stop exits soon after its in-flight requests settle, not after --timeout + 5 s."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve() as standin:
        # Grace period 15 s; in-flight requests take 0.05 s each; the bound below is 6 s.
        args = run_args(input_path, out, standin.url, "--timeout", "10")
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: standin.state.events_imported >= 3000, "3,000 imports", proc)
            proc.send_signal(signal.SIGINT)
            try:
                result = await finish(proc, timeout_s=6.0)
            except TimeoutError:
                pytest.fail("still running 6 s after SIGINT with nothing left in flight")
        assert result.code == 130


# --- 3. the server refuses every request -----------------------------------------------------


async def test_retries_exhausted_aborts_with_exit_3_then_completes_once_the_server_recovers(
    tmp_path: Path, small: Dataset
) -> None:
    """Every request 503: exit 3, summary aborted, message says rerun; after recovery: exit 0."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(FaultRates(p_503=1.0)) as standin:
        args = run_args(
            input_path, out, standin.url, "--max-attempts", "2", "--retry-base-s", "0.01"
        )
        result = await cli(args, cwd=tmp_path)
        assert result.code == 3, result.stderr
        assert "failed 2 times" in result.stderr
        assert "503" in result.stderr
        assert "run the same command again" in result.stderr
        assert "Traceback" not in result.stderr
        summary = load(out / "summary.json")
        assert summary["status"] == "aborted"
        assert summary["events_imported"] == 0
        assert (out / "checkpoint.json").exists()  # kept for the rerun
        assert standin.state.events_imported == 0

        standin.state.faults = FaultRates()  # the server recovers
        again = await cli(args, cwd=tmp_path)
        assert again.code == 0, again.stderr

    assert_imported_once(standin, small)
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["events_imported"] == len(small.valid)
    assert summary["retries"].get("5xx", 0) >= 1  # the first run's retries are kept
    assert_rejects_once(out)


async def test_refused_credentials_abort_with_exit_3_then_the_right_secret_completes(
    tmp_path: Path, small: Dataset
) -> None:
    """A wrong secret: 401, exit 3, summary aborted, no secret shown; the right one: exit 0."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    wrong = "wrong-secret-for-the-test-0123456789"
    async with serve(FaultRates()) as standin:
        args = run_args(input_path, out, standin.url)
        result = await cli(args, cwd=tmp_path, env=environment(secret=wrong))
        assert result.code == 3, result.stderr
        assert "refused the credentials" in result.stderr
        assert "rerun" in result.stderr
        assert "Traceback" not in result.stderr
        assert load(out / "summary.json")["status"] == "aborted"
        assert standin.state.statuses()[401] >= 1
        assert standin.state.events_imported == 0

        again = await cli(args, cwd=tmp_path)
        assert again.code == 0, again.stderr

    assert_imported_once(standin, small)
    assert load(out / "summary.json")["status"] == "completed"
    outputs = result.stdout + result.stderr + again.stdout + again.stderr
    files = "".join(p.read_text(encoding="utf-8") for p in out.iterdir() if p.is_file())
    for secret in (wrong, SECRET):
        assert secret not in outputs
        assert secret not in files


# --- 4. a finished run ---------------------------------------------------------------------


async def test_a_finished_run_rerun_sends_nothing_even_with_another_batch_size_or_url(
    tmp_path: Path, small: Dataset
) -> None:
    """Rerunning a finished run, as is or with another --batch-size/--api-url, sends nothing."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(FaultRates()) as standin:
        args = run_args(input_path, out, standin.url)
        assert (await cli(args, cwd=tmp_path)).code == 0
        sent = standin.state.requests_count
        assert_imported_once(standin, small)

        for rerun in (
            args,
            run_args(input_path, out, standin.url, "--batch-size", "250"),
            run_args(input_path, out, f"http://localhost:{standin.port}"),
        ):
            result = await cli(rerun, cwd=tmp_path)
            assert result.code == 0, result.stderr
            assert standin.state.requests_count == sent
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["events_imported"] == len(small.valid)
    assert summary["runs"] == 4
    assert summary["this_run"]["requests"] == 0
    assert_rejects_once(out)


# --- 5. a changed input or event setting -----------------------------------------------------


async def test_a_changed_input_is_refused_and_restart_starts_over(
    tmp_path: Path, small: Dataset
) -> None:
    """An appended row or an edited byte: exit 2 naming --restart, nothing sent; --restart works."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    original = input_path.read_bytes()
    async with serve(FaultRates()) as standin:
        args = run_args(input_path, out, standin.url)
        assert (await cli(args, cwd=tmp_path)).code == 0
        sent = standin.state.requests_count
        ckpt_bytes = (out / "checkpoint.json").read_bytes()

        appended = original + f"{uuid.UUID(int=7, version=4)},late-user,2024-03-01\n".encode()
        row = next(r for r in small.valid if r > 10)
        anon, ident = small.valid[row]
        edited_ident = ident[:-1] + ("x" if ident[-1] != "x" else "y")
        edited = original.replace(f"{anon},{ident},".encode(), f"{anon},{edited_ident},".encode())
        assert len(edited) == len(original)
        assert edited != original
        for content in (appended, edited):
            input_path.write_bytes(content)
            result = await cli(args, cwd=tmp_path)
            assert result.code == 2, result.stderr
            assert "--restart" in result.stderr
            assert "input file" in result.stderr
            assert "Traceback" not in result.stderr
            assert standin.state.requests_count == sent
            assert (out / "checkpoint.json").read_bytes() == ckpt_bytes

        restarted = await cli([*args, "--restart"], cwd=tmp_path)
        assert restarted.code == 0, restarted.stderr
    expected = small.pairs(set(small.valid) - {row}) | {(anon, edited_ident)}
    assert expected <= standin.state.identify_pairs()
    assert standin.state.conflicting_keys() == {}
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["events_imported"] == len(small.valid)
    assert summary["runs"] == 1
    assert load(out / "checkpoint.json")["identity"]["input"]["files"][0]["size"] == len(edited)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--event-time", "2024-01-01T00:00:00Z"], "--event-time: "),
        (["--time-column", "merged_at"], "--time-column: none → merged_at"),
        (["--project-id", "2"], "project id"),
    ],
)
async def test_a_changed_event_setting_or_project_is_refused(
    tmp_path: Path, small: Dataset, change: list[str], named: str
) -> None:
    """A changed --event-time, --time-column or project id: exit 2 naming it and --restart."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(FaultRates()) as standin:
        args = run_args(input_path, out, standin.url)
        assert (await cli(args, cwd=tmp_path)).code == 0
        sent = standin.state.requests_count
        ckpt_bytes = (out / "checkpoint.json").read_bytes()
        result = await cli([*args, *change], cwd=tmp_path)
        assert result.code == 2, result.stderr
        assert named in result.stderr
        assert "--restart" in result.stderr
        assert standin.state.requests_count == sent
        assert (out / "checkpoint.json").read_bytes() == ckpt_bytes


async def test_a_project_id_changed_in_the_environment_is_refused(
    tmp_path: Path, small: Dataset
) -> None:
    """A rerun whose MIXPANEL_PROJECT_ID changed is refused (exit 2) before any request."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(FaultRates()) as standin:
        args = run_args(input_path, out, standin.url)
        assert (await cli(args, cwd=tmp_path)).code == 0
        sent = standin.state.requests_count
        result = await cli(args, cwd=tmp_path, env=environment(project_id="2"))
        assert result.code == 2, result.stderr
        assert "project id" in result.stderr
        assert "--restart" in result.stderr
        assert standin.state.requests_count == sent


async def test_restart_resends_already_sent_pairs_as_identical_events(
    tmp_path: Path, small: Dataset
) -> None:
    """After --restart the pairs sent before are resent as the same events (deduplicated)."""
    input_path = small.copy_to(tmp_path)
    out = tmp_path / "out"
    async with serve(FaultRates()) as standin:
        args = run_args(input_path, out, standin.url)
        assert (await cli(args, cwd=tmp_path)).code == 0
        with input_path.open("a", encoding="utf-8") as f:
            f.write(f"{uuid.UUID(int=11, version=4)},late-user,2024-03-01\n")
        refused = await cli(args, cwd=tmp_path)
        assert "deduplicated" in refused.stderr
        assert (await cli([*args, "--restart"], cwd=tmp_path)).code == 0
    events = len(standin.state.store)
    assert events == len(small.valid) + 1, (
        f"{events} events stored for {len(small.valid) + 1} pairs"
    )


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


# --- 7. rejects.csv across resumed runs ----------------------------------------------------


async def test_rejects_csv_holds_each_row_once_across_interrupted_and_killed_runs(
    tmp_path: Path, big: Dataset
) -> None:
    """Validation and API refusals from several runs: each row once; summary counts cumulative."""
    input_path = big.copy_to(tmp_path)
    out = tmp_path / "out"
    refused = {r for r in sorted(big.valid)[::97]}
    refused_ids = frozenset(big.valid[r][1] for r in refused)
    async with serve(refuse_distinct_ids=refused_ids) as standin:
        args = run_args(input_path, out, standin.url)
        # Run 1: SIGINT.
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: standin.state.events_imported >= 3000, "3,000 imports", proc)
            proc.send_signal(signal.SIGINT)
            assert (await finish(proc)).code == 130
        ckpt = load(out / "checkpoint.json")
        done = done_rows(ckpt, big.valid)
        api_rows = {int(r["row"]) for r in rejects(out) if r["reason"] == "api_rejected"}
        assert api_rows == refused & done
        assert load(out / "summary.json")["rejected"]["api_rejected"] == len(api_rows)
        assert_rejects_once(out)

        # Run 2: SIGKILL after a checkpoint of its own and some more refusals.
        async with launched(args, cwd=tmp_path) as proc:
            await until(lambda: checkpoint_done(out) > len(done) + 1000, "run 2's checkpoint", proc)
            seen = standin.state.events_imported
            await until(
                lambda: standin.state.events_imported >= seen + 4 * BATCH, "more imports", proc
            )
            proc.kill()
            await proc.wait()
        assert_rejects_once(out)
        assert standin.state.events_imported < len(big.valid) - len(refused)

        # Run 3: to the end.
        standin.state.faults = FaultRates()
        result = await cli(args, cwd=tmp_path)
        assert result.code == 0, result.stderr

    assert_imported_once(standin, big, refused=refused)
    assert_rejects_once(out)
    rows = rejects(out)
    assert {int(r["row"]): r["reason"] for r in rows} == {
        **big.invalid,
        **dict.fromkeys(refused, "api_rejected"),
    }
    api = [r for r in rows if r["reason"] == "api_rejected"]
    assert all("refused by stand-in" in r["detail"] for r in api)
    assert all((r["anon_id"], r["identified_id"]) == big.valid[int(r["row"])] for r in api)
    summary = load(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["events_imported"] == len(big.valid) - len(refused)
    assert summary["rejected"]["api_rejected"] == len(refused)
    assert sum(summary["rejected"].values()) == len(big.invalid) + len(refused)
    assert summary["runs"] == 3


async def test_a_resume_spelling_the_file_another_way_lists_each_refusal_once(
    tmp_path: Path, big: Dataset
) -> None:
    """kill -9 while Mixpanel refuses half the rows, then resume with the file spelled
    x/../x/… instead of x/…: each refusal listed once, api_rejected counted once."""
    (tmp_path / "x").mkdir()
    big.copy_to(tmp_path / "x")
    out = tmp_path / "out"
    refused = set(sorted(big.valid)[1::2])
    refused_ids = frozenset(big.valid[r][1] for r in refused)
    async with serve(refuse_distinct_ids=refused_ids) as standin:
        first = run_args(Path("x/mappings.csv"), out, standin.url)
        async with launched(first, cwd=tmp_path) as proc:
            await until(lambda: checkpoint_done(out) > 4000, "a checkpoint with refusals", proc)
            seen = standin.state.events_imported
            await until(lambda: standin.state.events_imported >= seen + 4 * BATCH, "more", proc)
            proc.kill()
            await proc.wait()
        listed = {int(r["row"]) for r in rejects(out) if r["reason"] == "api_rejected"}
        assert 1000 < len(listed) < len(refused), "killed mid-way, with refusals listed"
        standin.state.faults = FaultRates()
        spelled = Path("x/../x/mappings.csv")
        again = run_args(spelled, out, standin.url)
        result = await cli(again, cwd=tmp_path)
        assert result.code == 0, result.stderr
    assert_rejects_once(out)
    rows = rejects(out)
    assert {int(r["row"]) for r in rows if r["reason"] == "api_rejected"} == refused
    assert {r["file"] for r in rows} == {str(spelled)}, "as this run spells it"
    assert len({r["file_fingerprint"] for r in rows if r["reason"] == "api_rejected"}) == 1
    summary = load(out / "summary.json")
    assert summary["rejected"]["api_rejected"] == len(refused)
    assert summary["events_imported"] == len(big.valid) - len(refused)
    assert standin.state.identify_pairs() == big.pairs(set(big.valid) - refused)


def test_refusals_of_an_older_rejects_csv_are_matched_by_name_and_kept_once(
    tmp_path: Path,
) -> None:
    """A 6-column api_rejected line (before file_fingerprint) is carried with the file's
    fingerprint; the same refusal met again is not listed twice."""
    (tmp_path / "x").mkdir()
    source = tmp_path / "x" / "m.csv"
    source.write_text("anon_id,identified_id\na,b\nc,d\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "rejects.csv").write_text(
        f"row,anon_id,identified_id,reason,detail,file\n2,c,d,api_rejected,bad,{source}\n",
        encoding="utf-8",
    )
    rejects_file = RejectsFile(out, open_dataset(str(source)), keep_api_rejects=True)
    rejects_file.commit()
    refusal = RejectRow(2, "c", "d", "api_rejected", "bad", str(source))
    assert rejects_file.add_api_rejects([refusal]) == 0
    rejects_file.close()
    (line,) = rejects(out)
    assert (line["row"], line["file"]) == ("2", str(source))
    assert len(line["file_fingerprint"]) == 16
    spelled = str(tmp_path / "x" / ".." / "x" / "m.csv")
    again = RejectsFile(out, open_dataset(spelled), keep_api_rejects=True)
    again.commit()
    assert again.add_api_rejects([RejectRow(2, "c", "d", "api_rejected", "bad", spelled)]) == 0
    again.close()
    assert [(r["row"], r["file"]) for r in rejects(out)] == [("2", spelled)]


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
