"""Helpers for the end-to-end resume tests: a generated input whose every row is known, the
stand-in on wall-clock time, the command as a subprocess, and readers of what a run left.

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
import random
import shutil
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
from runkit import CliResult, clean_env, rejects_dicts

from backfill.folder.intervals import RowIntervals
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
    return clean_env(
        {
            "MIXPANEL_SERVICE_ACCOUNT_USERNAME": USER,
            "MIXPANEL_SERVICE_ACCOUNT_SECRET": secret,
            "MIXPANEL_PROJECT_ID": project_id,
        }
    )


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


async def finish(proc: asyncio.subprocess.Process, timeout_s: float = WAIT_S) -> CliResult:
    """Wait for the command to end (generous limit) and collect its output."""
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def cli(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> CliResult:
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


def assert_rejects_once(out: Path) -> None:
    """Each row of rejects.csv appears once."""
    counts = Counter(r["row"] for r in rejects_dicts(out))
    assert [row for row, n in counts.items() if n > 1] == []


def assert_imported_once(standin: Standin, data: Dataset, refused: Iterable[int] = ()) -> None:
    """Every valid pair (but the refused) is stored, as one event, every resend identical."""
    expected = data.pairs(set(data.valid) - set(refused))
    state = standin.state
    assert state.identify_pairs() == expected
    assert len(state.store) == len(expected)  # one (event, time, distinct_id, $insert_id) each
    assert state.conflicting_keys() == {}
    assert len({key.time for key in state.store}) == 1
