"""Helpers shared by the send-side tests (imported explicitly; not a conftest).

* ``pairs`` / ``uuid4s``: build ``events.Pairs`` the way the pipeline hands them to the encoder.
* ``decode``: a batch's gzip body back to its events, as Mixpanel would read it.
* ``recording_standin``: the real stand-in application, served on 127.0.0.1 with one extra
  ``on_response_prepare`` hook that records each request's query string (the stand-in's own
  request log does not keep it, and the legacy-secret test must see that no ``project_id`` went).
* ``run_cli``: ``python -m backfill ...`` as an asyncio subprocess, so that a stand-in served
  by the test's own event loop keeps answering while the command runs; ``backfill_cli`` the
  same, synchronously, for a stand-in served from a thread (or none).
* ``STANDIN_CREDENTIALS`` and ``write_pairs``: the stand-in's credentials as the CLI reads them,
  and a mapping CSV.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import random
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from aiohttp import web

from backfill.config.options import DEFAULTS
from backfill.config.settings import Credentials
from backfill.report.counts import Counts
from backfill.report.progress import Snapshot
from backfill.send.answers import Settled
from backfill.send.events import Batch, Encoder, Pairs
from backfill.send.sender import SendConfig, Sender, SendStats
from backfill.standin import (
    DEFAULT_PROJECT_ID,
    DEFAULT_SERVICE_ACCOUNT,
    Standin,
    StandinConfig,
    StandinState,
    make_app,
)

T_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z: inside Mixpanel's accepted range
GOOD = Credentials(*DEFAULT_SERVICE_ACCOUNT)
REPO = Path(__file__).resolve().parent.parent
#: The stand-in's default project and service account, as the CLI reads them.
STANDIN_CREDENTIALS = {
    "MIXPANEL_SERVICE_ACCOUNT_USERNAME": DEFAULT_SERVICE_ACCOUNT[0],
    "MIXPANEL_SERVICE_ACCOUNT_SECRET": DEFAULT_SERVICE_ACCOUNT[1],
    "MIXPANEL_PROJECT_ID": DEFAULT_PROJECT_ID,
}


def write_pairs(path: Path, pairs: Iterable[Sequence[str]]) -> Path:
    """A mapping CSV with the default header."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["anon_id", "identified_id"])
        writer.writerows(pairs)
    return path


def uuid4s(n: int, seed: int) -> list[str]:
    """``n`` distinct, reproducible lower-case UUID v4 strings."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def pairs(
    anon: Sequence[str],
    identified: Sequence[str],
    *,
    rows: Iterable[int] | None = None,
    time_ms: int = T_MS,
) -> Pairs:
    """``Pairs`` for the given ids; rows default to 1..n, every time to ``time_ms``."""
    n = len(anon)
    row_array = np.arange(1, n + 1, dtype=np.int64) if rows is None else np.array(list(rows))
    return Pairs(
        row_array.astype(np.int64),
        pa.array(list(anon), pa.string()),
        pa.array(list(identified), pa.string()),
        np.full(n, time_ms, dtype=np.int64),
    )


def make_pairs(n: int, seed: int = 0, *, first_row: int = 1, step: int = 1) -> Pairs:
    """``n`` valid pairs with rows first_row, first_row+step, ..."""
    return pairs(
        uuid4s(n, seed),
        [f"user-{seed}-{i}" for i in range(n)],
        rows=range(first_row, first_row + step * n, step),
    )


def encode(p: Pairs, batch_size: int) -> list[Batch]:
    """``p`` cut into batches by the real encoder."""
    return list(Encoder(token=None, batch_size=batch_size).batches(p))


async def send_batches(
    import_url: str,
    batches: list[Batch],
    *,
    credentials: Credentials = GOOD,
    encoder: Encoder | None = None,
    canary: Batch | None = None,
    on_sender: Callable[[Sender], None] | None = None,
    **config: Any,
) -> tuple[list[Settled], SendStats]:
    """Send ``batches`` (after ``canary``, if given) with a real Sender; what settled, stats.

    ``on_sender`` is handed the Sender before anything is sent (to watch its pacer).
    """
    settings: dict[str, Any] = {"concurrency": 4, "retry_base_s": 0.01, "max_attempts": 8}
    settings.update(config)
    cfg = send_config(import_url, credentials, **settings)
    settled: list[Settled] = []
    stats = SendStats()
    sender = Sender(
        cfg,
        encoder or Encoder(token=None, batch_size=cfg.batch_size),
        settled.append,
        stats=stats,
        rng=random.Random(1),
    )
    if on_sender is not None:
        on_sender(sender)
    queue: asyncio.Queue[Batch | None] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    for _ in range(sender.workers):
        queue.put_nowait(None)
    async with sender:
        if canary is not None:
            await sender.canary(canary)
        await sender.run(queue)
    return settled, stats


def body_json(batch: Batch) -> bytes:
    """The uncompressed JSON body of a batch."""
    return gzip.decompress(batch.body)


def decode(batch: Batch) -> list[dict[str, Any]]:
    """The events of a batch, parsed from its gzip body."""
    events = json.loads(body_json(batch))
    assert isinstance(events, list)
    return events


@dataclass
class Recorded:
    """A served stand-in plus the query string of every request it answered."""

    standin: Standin
    queries: list[dict[str, str]]

    @property
    def state(self) -> StandinState:
        """The stand-in's state (request log, store, forms)."""
        return self.standin.state


@asynccontextmanager
async def recording_standin(config: StandinConfig) -> AsyncIterator[Recorded]:
    """The stand-in app on 127.0.0.1 (free port), recording each answered request's query."""
    state = StandinState(config)
    app = make_app(config, state)
    queries: list[dict[str, str]] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        queries.append(dict(request.query))

    app.on_response_prepare.append(record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        standin = Standin(f"http://127.0.0.1:{port}", "127.0.0.1", port, state, config)
        yield Recorded(standin, queries)
    finally:
        await runner.cleanup()


def rejects_lines(where: Path) -> list[list[str]]:
    """rejects.csv as rows of strings, the header first; ``where`` is the file or its run folder.

    The one place the tests open rejects.csv (the views below are built on it)."""
    path = where if where.name == "rejects.csv" else where / "rejects.csv"
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def rejects_dicts(where: Path) -> list[dict[str, str]]:
    """rejects.csv as one dict per line, keyed by its header (a line of an older, shorter
    header lacks the newer columns, as ``csv.DictReader`` would give them)."""
    header, *lines = rejects_lines(where)
    return [dict(zip(header, line, strict=False)) for line in lines if line]


def rejects_by_row(where: Path, *columns: str) -> dict[int, tuple[str, ...]]:
    """rejects.csv as source row -> the values of ``columns``; a row listed twice fails."""
    found: dict[int, tuple[str, ...]] = {}
    for line in rejects_dicts(where):
        row = int(line["row"])
        assert row not in found, f"row {row} appears twice in rejects.csv"
        found[row] = tuple(line[c] for c in columns)
    return found


@dataclass
class CliResult:
    """Exit code and decoded output of one ``python -m backfill`` run."""

    code: int
    stdout: str
    stderr: str


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any MIXPANEL_* or BACKFILL_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXPANEL_", "BACKFILL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def backfill_cli(*args: str | Path, cwd: Path, env: Mapping[str, str] | None = None) -> CliResult:
    """``python -m backfill ARGS`` in ``cwd``, synchronously; the stand-in's credentials unless
    ``env`` (the whole environment) is given."""
    proc = subprocess.run(
        [sys.executable, "-m", "backfill", *map(str, args)],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(STANDIN_CREDENTIALS),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


async def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path,
    timeout_s: float = 120.0,
) -> CliResult:
    """``python -m backfill ARGS`` in ``cwd`` with exactly ``env``; the event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        *args,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


@dataclass
class Served:
    """A plain aiohttp handler served on 127.0.0.1, with the requests it saw."""

    url: str
    requests: list[web.Request]

    @property
    def import_url(self) -> str:
        """``url`` + ``/import``."""
        return f"{self.url}/import"


@asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[Served]:
    """Serve ``handler`` for every path on a free loopback port for the ``async with`` block.

    For answers the stand-in does not give because Mixpanel never does: a hostile or broken
    server's, which the sender must survive all the same.
    """
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        yield Served(f"http://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()


def printed_command(result: CliResult, prefix: str = "backfill: run next: ") -> list[str]:
    """The command a message printed to copy, split as a shell would split it."""
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    return shlex.split(lines[0].removeprefix(prefix))


def run_printed(command: list[str], cwd: Path) -> CliResult:
    """``command`` run exactly as printed (it starts with the interpreter and ``-m backfill``)."""
    assert command[1:3] == ["-m", "backfill"], command
    proc = subprocess.run(command, cwd=cwd, env=clean_env(STANDIN_CREDENTIALS),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def sending_snapshot(
    phase: str,
    *,
    pairs_total: int,
    pairs_done: int = 0,
    refused: int = 0,
    held_per_s: float | None = None,
    **this_run: Any,
) -> Snapshot:
    """A progress ``Snapshot`` of sending: ``pairs_done`` settled, ``refused`` of them refused,
    the rest of ``Counts`` (this run's figures) as given."""
    this_run.pop("imported", None)  # implied: the settled pairs not refused
    counts = Counts(pairs_total, pairs_done - refused, refused, **this_run)
    return Snapshot(phase, sending=counts, held_per_s=held_per_s)


def send_config(import_url: str, credentials: Credentials, **given: Any) -> SendConfig:
    """A SendConfig with the options table's defaults, as a run builds it, less ``given``."""
    table = {
        "concurrency": DEFAULTS["concurrency"],
        "rate_per_s": DEFAULTS["rate"],
        "max_attempts": DEFAULTS["max_attempts"],
        "timeout_s": DEFAULTS["timeout"],
        "retry_base_s": DEFAULTS["retry_base_s"],
        "batch_size": DEFAULTS["batch_size"],
    }
    return SendConfig(
        import_url=import_url,
        credentials=credentials,
        project_id=DEFAULT_PROJECT_ID,
        **(table | given),
    )
