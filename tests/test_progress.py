"""Progress display: a live bar through a pseudo-terminal, plain log lines when piped."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import sys
import time
from pathlib import Path

from backfill.progress import Counters, Progress
from backfill.standin import DEFAULT_SERVICE_ACCOUNT, FaultRates, StandinConfig, running_standin
from tests.runkit import uuid4s

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    user, secret = DEFAULT_SERVICE_ACCOUNT
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXPANEL_", "BACKFILL_"))}
    env.update(
        MIXPANEL_SERVICE_ACCOUNT_USERNAME=user,
        MIXPANEL_SERVICE_ACCOUNT_SECRET=secret,
        MIXPANEL_PROJECT_ID="1",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _slow_standin() -> StandinConfig:
    # Slow answers stretch a small run over a couple of seconds, so the display redraws.
    return StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=0.1, seed=1))


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    lines = [f"{a},user_{i % 1000}" for i, a in enumerate(uuid4s(3000, seed=5))]
    path.write_text("anon_id,identified_id\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_args(path: Path, url: str, out: Path) -> list[str]:
    return [
        "-m",
        "backfill",
        "run",
        str(path),
        "--api-url",
        url,
        "--out",
        str(out),
        "--batch-size",
        "100",
        "--concurrency",
        "2",
    ]


async def test_live_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a TTY the bar redraws in place with rows, sent, imported, rejected, retries, rate."""
    path = _input(tmp_path)
    async with running_standin(_slow_standin()) as standin:
        master, slave = pty.openpty()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *_run_args(path, standin.url, tmp_path / "out"),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=_env(),
            cwd=tmp_path,
        )
        os.close(slave)
        chunks: list[bytes] = []
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.run_in_executor(None, os.read, master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert await proc.wait() == 0
        os.close(master)
    text = b"".join(chunks).decode()
    frames = [f for f in text.split("\r\x1b[2K") if f.strip()]
    sending = [f for f in frames if f.startswith("sending")]
    assert len(sending) >= 3, frames
    assert any(re.search(r"\[[#.]{20}\] +\d+%", f) for f in sending)
    last = sending[-1]
    for part in ("rows ", "sent ", "imported ", "rejected ", "retries ", " ev/s"):
        assert part in last
    assert any("left " in f for f in sending)
    assert re.search(r"completed .*imported 3,000", text)
    assert "events imported" in text  # the final summary table follows the bar


async def test_plain_lines_when_piped(tmp_path: Path) -> None:
    """Piped, progress is plain 'backfill: ...' lines at the interval, never carriage returns."""
    path = _input(tmp_path)
    async with running_standin(_slow_standin()) as standin:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *_run_args(path, standin.url, tmp_path / "out"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(BACKFILL_PROGRESS_INTERVAL_S="0.3"),
            cwd=tmp_path,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = err.decode().splitlines()
    assert "\r" not in err.decode()
    sending = [line for line in lines if line.startswith("backfill: sending")]
    assert len(sending) >= 2, lines
    assert all(re.search(r"imported [\d,]+ .* ev/s", line) for line in sending)
    assert lines[-1].startswith("backfill: completed")
    assert "events imported" in out.decode()


async def test_no_progress_prints_no_progress(tmp_path: Path) -> None:
    """--no-progress silences the display; the summary table still prints."""
    path = _input(tmp_path)
    async with running_standin(StandinConfig()) as standin:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *_run_args(path, standin.url, tmp_path / "out"),
            "--no-progress",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(BACKFILL_PROGRESS_INTERVAL_S="0.01"),
            cwd=tmp_path,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0
    assert err.decode() == ""
    assert "events imported" in out.decode()


def test_render_shows_bar_rate_and_time_left() -> None:
    """The sending line has a bar on a TTY, the imported rate and an estimate of time left."""
    counters = Counters(rows_read=10, rows_total=100, events_total=1000)
    counters.phase = "sending"
    counters.send_started = time.monotonic() - 10.0
    counters.events_imported = counters.events_imported_this_run = 500
    line = Progress(counters, stream=io.StringIO(), interactive=True).render()
    assert "[##########..........]  50%" in line
    assert re.search(r"\b5\d ev/s", line)
    assert re.search(r"left (9|10) s", line)


def test_validating_line_counts_rows_and_rejects() -> None:
    """Before sending, the line shows the phase, rows read and rejects only."""
    counters = Counters(rows_read=1234, rejected=5)
    counters.phase = "validating"
    assert Progress(counters, stream=io.StringIO()).render() == "validating  rows 1,234  rejected 5"


def test_piped_ticks_respect_the_interval() -> None:
    """A log gets at most one line per interval however often the pipeline ticks."""
    stream = io.StringIO()
    progress = Progress(Counters(), stream=stream, interactive=False, interval_s=3600)
    for _ in range(1000):
        progress.tick()
    assert stream.getvalue() == ""
    progress.close()
    assert stream.getvalue() == ""  # nothing drawn, nothing to finish
