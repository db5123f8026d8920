"""Helpers for interrupting ``backfill run`` at chosen instants, then resuming it (imported
explicitly by ``tests/test_ctrl_c_at_any_instant.py`` and ``benchmarks/interrupts.py``; not a
conftest).

A *trial*: a fresh stand-in and run folder, ``python -m backfill run`` started, SIGINT sent
``delay_s`` after it made its run folder, how and how fast it ended, then the same command
again (the resume) and what that one sent. Three rows in four are invalid, so that validation
(which reads every row) takes about as long as sending the valid pairs, spread through the
file, to a stand-in that answers 50 ms late: a random instant lands in validation, the
canary, the sending or the final writes alike.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from runkit import STANDIN_CREDENTIALS, clean_env

from backfill.folder.intervals import RowIntervals
from backfill.send.events import insert_ids
from backfill.standin import FaultRates, StandinConfig, StandinState, running_standin

#: The issue's bound: a signal at any instant ends the command within this many seconds.
STOP_BOUND_S = 5.0
#: What must never reach the terminal, whatever the instant.
NEVER = ("Traceback", "internal error", "terminate called", "Exception ignored")


@dataclass(frozen=True)
class Mappings:
    """A mapping CSV: which rows are valid, and the ``$insert_id`` of each valid pair."""

    path: Path
    valid: frozenset[int]
    row_of: dict[str, int]


def write_mappings(folder: Path, rows: int = 120_000, every: int = 4, seed: int = 7) -> Mappings:
    """``rows`` rows, one in ``every`` a valid pair, the others an anon id that is no UUID."""
    rng = random.Random(seed)
    path = folder / "mappings.csv"
    valid: dict[int, tuple[str, str]] = {}
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["anon_id", "identified_id"])
        for row in range(1, rows + 1):
            if row % every == 0:
                anon = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                valid[row] = (anon, f"user-{row}")
                writer.writerow(valid[row])
            else:
                writer.writerow([f"cookie-{row}", f"user-{row}"])
    order = sorted(valid)
    ids = insert_ids(
        pa.array([valid[r][0] for r in order], pa.string()),
        pa.array([valid[r][1] for r in order], pa.string()),
    ).to_pylist()
    return Mappings(path, frozenset(valid), dict(zip(ids, order, strict=True)))


def run_args(data: Mappings, out: Path, url: str, *extra: str) -> list[str]:
    """``run`` with small batches and a fixed concurrency, so that sending takes a while."""
    return [
        "run",
        str(data.path),
        "--out",
        str(out),
        "--api-url",
        url,
        "--batch-size",
        "500",
        "--concurrency",
        "4",
        "--retry-base-s",
        "0.05",
        "--no-progress",
        *extra,
    ]


@dataclass
class Trial:
    """How one interrupted run ended, and what its resume sent."""

    delay_s: float
    code: int | None = None
    stop_s: float | None = None
    stderr: str = ""
    status: str | None = None
    resume_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every promise held."""
        return not self.problems


def done_rows(out: Path, rows: frozenset[int]) -> set[int]:
    """Which of ``rows`` the run folder's checkpoint records as done (none without one)."""
    try:
        ckpt = json.loads((out / "checkpoint.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return set()
    ordered = np.array(sorted(rows), dtype=np.int64)
    inside = RowIntervals.from_json(ckpt["done"]).contains(ordered)
    return set(ordered[inside].tolist())


async def start(args: list[str], cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``python -m backfill ARGS`` started, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def begun(proc: asyncio.subprocess.Process, out: Path) -> None:
    """Return once the command has made its run folder (its checkpoint comes before validation).

    Instants are counted from there: before it, the interpreter is still starting, where a
    signal can only be Python's own KeyboardInterrupt (the shell sees 130 all the same).
    """
    while not out.exists() and proc.returncode is None:
        await asyncio.sleep(0.005)


async def ended(proc: asyncio.subprocess.Process, limit_s: float) -> tuple[int | None, str]:
    """The exit code and stderr; None (and the process killed) if it outlives ``limit_s``."""
    try:
        _, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
        return None, err.decode(errors="replace")
    return proc.returncode, err.decode(errors="replace")


async def trial(
    data: Mappings,
    folder: Path,
    delay_s: float,
    *,
    latency_s: float = 0.05,
    extra: tuple[str, ...] = (),
) -> Trial:
    """Interrupt a fresh run ``delay_s`` after its start, then resume it; check both."""
    result = Trial(delay_s)
    out = folder / "out"
    env = clean_env(STANDIN_CREDENTIALS)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=latency_s))
    state = StandinState(config, clock=time.time)
    async with running_standin(config, state=state, shutdown_timeout_s=0.2) as standin:
        args = run_args(data, out, standin.url, *extra)
        proc = await start(args, folder, env)
        await begun(proc, out)
        await asyncio.sleep(delay_s)
        signalled = time.monotonic()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        result.code, result.stderr = await ended(proc, 30.0)
        result.stop_s = time.monotonic() - signalled
        _judge_stop(result, out)
        done = done_rows(out, data.valid)
        stored = {data.row_of[key.insert_id] for key in state.store}
        if not done <= stored:
            result.problems.append(f"{len(done - stored)} rows done but never imported")
        before = len(state.requests)
        again = await start(args, folder, env)
        result.resume_code, resume_err = await ended(again, 120.0)
        if result.resume_code != 0:
            result.problems.append(f"resume ended {result.resume_code}: {resume_err[-300:]}")
        resent = {data.row_of[i] for r in state.requests[before:] for i in r.insert_ids}
        if resent != set(data.valid) - done:
            result.problems.append(
                f"the resume sent {len(resent):,} rows, not the {len(data.valid) - len(done):,} "
                f"left ({len(resent & done):,} of them done already)"
            )
        if {data.row_of[key.insert_id] for key in state.store} != set(data.valid):
            result.problems.append("the stand-in does not hold exactly the valid pairs")
        if len(state.store) != len(data.valid):
            result.problems.append(f"{len(state.store):,} distinct events stored")
    return result


def _judge_stop(result: Trial, out: Path) -> None:
    """The interrupted run's end: 130 within the bound, or 0 for a run already complete."""
    for bad in NEVER:
        if bad in result.stderr:
            result.problems.append(f"{bad!r} on stderr: {result.stderr[-500:]}")
    if result.code is None:
        result.problems.append("still running 30 s after SIGINT (killed)")
        return
    try:
        summary: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        result.status = summary.get("status")
    except (FileNotFoundError, ValueError):
        result.status = None
    if result.code == 130:
        if "error:" in result.stderr:
            result.problems.append(f"an interrupt reported as an error: {result.stderr[-300:]}")
    elif result.code != 0 or result.status != "completed":
        result.problems.append(f"exit {result.code}, status {result.status}: {result.stderr}")
    assert result.stop_s is not None
    if result.stop_s > STOP_BOUND_S:
        result.problems.append(f"ended {result.stop_s:.1f} s after SIGINT")


async def baseline_s(data: Mappings, folder: Path, latency_s: float = 0.05) -> float:
    """Seconds an uninterrupted run of ``data`` takes, from its run folder to its exit."""
    env = clean_env(STANDIN_CREDENTIALS)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=latency_s))
    async with running_standin(config, shutdown_timeout_s=0.2) as standin:
        out = folder / "baseline"
        proc = await start(run_args(data, out, standin.url), folder, env)
        await begun(proc, out)
        started = time.monotonic()
        code, err = await ended(proc, 120.0)
        if code != 0:
            raise RuntimeError(f"the uninterrupted run ended {code}: {err}")
        return time.monotonic() - started


def instants(n: int, span_s: float, seed: int) -> list[float]:
    """``n`` instants over ``(0, span_s)``, one at random in each of ``n`` equal slices."""
    rng = random.Random(seed)
    return [span_s * (i + rng.random()) / n for i in range(n)]
