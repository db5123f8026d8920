"""Ctrl-C and SIGTERM at any instant: exit 130 soon, never swallowed, never an abort, and a
resume that sends exactly the rest (issue 19 item 5, issue 20 item 2).

The real CLI runs as a subprocess against a stand-in served by the test's own event loop
(``interrupting.trial``); the full hundred instants are ``benchmarks/interrupts.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest
from interrupting import (
    Mappings,
    baseline_s,
    begun,
    done_rows,
    ended,
    instants,
    start,
    trial,
    write_mappings,
)
from runkit import STANDIN_CREDENTIALS, clean_env, sending_snapshot, uuid4s, write_pairs

from backfill import interrupts
from backfill.errors import Interrupted
from backfill.report.progress import render
from backfill.send.events import insert_ids
from backfill.standin import FaultRates, StandinConfig, StandinState, running_standin

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

#: Instants per CI run, spread over validation, canary, sending and final writes.
CI_INSTANTS = 20


@pytest.fixture(scope="module")
def mappings(tmp_path_factory: pytest.TempPathFactory) -> Mappings:
    """120,000 rows, a quarter of them valid pairs spread through the file."""
    return write_mappings(tmp_path_factory.mktemp("mappings"))


async def test_sigint_at_random_instants_of_run_ends_130_and_a_resume_sends_the_rest(
    tmp_path: Path, mappings: Mappings
) -> None:
    """20 SIGINTs over a run's whole life: each ends it 130 within 5 s (0 once complete)."""
    span = await baseline_s(mappings, tmp_path)
    failed = []
    codes = []
    for i, delay in enumerate(instants(CI_INSTANTS, span, seed=19)):
        folder = tmp_path / f"trial-{i}"
        folder.mkdir()
        result = await trial(mappings, folder, delay)
        codes.append(result.code)
        if not result.ok:
            failed.append((round(delay, 2), result.problems))
    assert failed == []
    assert codes.count(130) >= CI_INSTANTS // 2, codes  # most instants land before the end


async def test_sigint_during_validate_ends_130_without_a_traceback(
    tmp_path: Path, mappings: Mappings
) -> None:
    """SIGINT while `validate` reads: exit 130 within 5 s, one calm line, no error."""
    env = clean_env()
    for i, delay in enumerate((0.0, 0.2, 0.4)):
        out = tmp_path / f"v{i}"
        proc = await start(["validate", str(mappings.path), "--out", str(out)], tmp_path, env)
        await begun(proc, out)
        await asyncio.sleep(delay)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, err = await ended(proc, 30.0)
        assert code == 130, err
        assert time.monotonic() - signalled < 5.0
        assert err.strip().splitlines()[-1].startswith("backfill: interrupted"), err
        assert "error" not in err
        assert "Traceback" not in err


# --- issue 20.2: a low --rate --------------------------------------------------------------


def _pairs_file(folder: Path, n: int) -> tuple[Path, dict[str, int]]:
    """``n`` valid pairs; the ``$insert_id`` of each, to its row."""
    anon = uuid4s(n, seed=20)
    ident = [f"user-{i}" for i in range(n)]
    path = write_pairs(folder / "pairs.csv", zip(anon, ident, strict=True))
    ids = insert_ids(pa.array(anon), pa.array(ident)).to_pylist()
    return path, {insert_id: row for row, insert_id in enumerate(ids, start=1)}


async def test_sigint_at_rate_1000_exits_130_within_3_s_and_the_resume_sends_the_rest(
    tmp_path: Path,
) -> None:
    """--rate 1000, 50 ms latency: the stopping line, exit 130 within 3 s, rate over send time."""
    path, row_of = _pairs_file(tmp_path, 20_000)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=0.05))
    state = StandinState(config, clock=time.time)
    env = clean_env(STANDIN_CREDENTIALS)
    out = tmp_path / "out"
    async with running_standin(config, state=state, shutdown_timeout_s=0.2) as standin:
        args = ["run", str(path), "--out", str(out), "--api-url", standin.url, "--rate", "1000",
                "--progress-interval-s", "0.5"]  # fmt: skip
        started = time.monotonic()
        proc = await start(args, tmp_path, env)
        while state.events_imported < 2001:  # the canary and the pool's first batch
            assert proc.returncode is None
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # the next batches wait their turn in the bucket
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, err = await ended(proc, 30.0)
        stop_s = time.monotonic() - signalled
        assert code == 130, err
        assert stop_s < 3.0, f"{stop_s:.1f} s from SIGINT to exit"
        assert "stopping: waiting for" in err, err
        assert "(Ctrl-C again to stop now)" in err, err
        assert "backfill: interrupted: " in err, err
        assert "error" not in err, err
        this_run = json.loads((out / "summary.json").read_text())["this_run"]
        # The rate counts the sending only: not the stop, which came after the signal.
        assert this_run["send_s"] <= signalled - started
        done = done_rows(out, frozenset(row_of.values()))
        before = len(state.requests)
        code, err = await ended(await start(args, tmp_path, env), 120.0)
        assert code == 0, err
    resent = {row_of[i] for r in state.requests[before:] for i in r.insert_ids}
    assert resent == set(row_of.values()) - done
    assert len(state.store) == len(row_of)


async def test_requests_that_outlast_the_grace_are_abandoned_as_resendable(
    tmp_path: Path,
) -> None:
    """Requests answered 10 s late: exit 130 within 3 s, their rows not done, resent later."""
    path, row_of = _pairs_file(tmp_path, 400)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=10.0))
    state = StandinState(config, clock=time.time)
    env = clean_env(STANDIN_CREDENTIALS)
    out = tmp_path / "out"
    async with running_standin(config, state=state, shutdown_timeout_s=0.2) as standin:
        args = ["run", str(path), "--out", str(out), "--api-url", standin.url, "--no-progress"]
        args += ["--batch-size", "100", "--concurrency", "2", "--timeout", "30"]
        proc = await start(args, tmp_path, env)
        while len(state.requests) < 1:  # the canary, on the wire for 10 s
            await asyncio.sleep(0.01)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, err = await ended(proc, 30.0)
        assert code == 130, err
        assert time.monotonic() - signalled < 3.0
        assert done_rows(out, frozenset(row_of.values())) == set()
        state.faults = FaultRates()
        code, err = await ended(await start(args, tmp_path, env), 120.0)
        assert code == 0, err
    assert {key.insert_id for key in state.store} == set(row_of)


async def test_a_second_sigint_stops_at_once_and_leaves_in_flight_rows_not_done(
    tmp_path: Path,
) -> None:
    """Two SIGINTs with requests 5 s late: exit within 1.5 s of the second, nothing done."""
    path, row_of = _pairs_file(tmp_path, 400)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=5.0))
    state = StandinState(config, clock=time.time)
    out = tmp_path / "out"
    env = clean_env(STANDIN_CREDENTIALS)
    async with running_standin(config, state=state, shutdown_timeout_s=0.2) as standin:
        args = ["run", str(path), "--out", str(out), "--api-url", standin.url, "--no-progress"]
        proc = await start(args, tmp_path, env)
        while len(state.requests) < 1:
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, err = await ended(proc, 30.0)
        assert code == 130, err
        assert time.monotonic() - second < 1.5
        assert done_rows(out, frozenset(row_of.values())) == set()
        assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_the_stopping_line_names_the_requests_in_flight_and_the_way_out() -> None:
    """While stopping, the line says what it waits for and that Ctrl-C again stops now."""
    snap = sending_snapshot(
        "stopping", pairs_total=20_000, pairs_done=4_001, in_flight=3, rate_per_s=9.0
    )
    line = render(snap, 200, bar=True)
    assert line.startswith("stopping: waiting for 3 requests in flight")
    assert "(Ctrl-C again to stop now)" in line
    assert "left" not in line  # no time left while stopping
    assert render(snap, 80, bar=True).startswith("stopping: waiting for 3 requests")


def test_a_signal_inside_caught_is_recorded_and_answered_at_check() -> None:
    """Inside caught(), SIGINT raises nothing where it lands; check() raises Interrupted."""
    before = signal.getsignal(signal.SIGINT)
    with interrupts.caught():
        interrupts.check()  # nothing asked yet
        signal.raise_signal(signal.SIGINT)
        assert interrupts.requested()
        heard: list[int] = []
        with interrupts.listening(lambda: heard.append(1)):
            assert heard == [1]  # the earlier signal, handed over at once
            signal.raise_signal(signal.SIGTERM)
            assert heard == [1, 1]
        with pytest.raises(Interrupted, match="run the same command again to resume"):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is before
    assert not interrupts.requested()
