"""Progress display: a live bar through a pseudo-terminal, plain log lines when piped."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pty
import re
import struct
import sys
import termios
import time
from dataclasses import replace
from pathlib import Path

import pytest
from runkit import sending_snapshot, uuid4s

from backfill.report.progress import HeldRate, Progress, Snapshot, render
from backfill.standin import DEFAULT_SERVICE_ACCOUNT, FaultRates, StandinConfig, running_standin

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


@pytest.mark.parametrize("columns", [80, 60])
async def test_live_line_on_a_terminal_fits_its_width(tmp_path: Path, columns: int) -> None:
    """On a TTY of 80 (or 60) columns the line redraws in place and never exceeds the width."""
    path = _input(tmp_path)
    async with running_standin(_slow_standin()) as standin:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
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
    frames = [f.split("\r\n")[0] for f in text.split("\r\x1b[2K") if f.strip()]
    sending = [f for f in frames if f.startswith("sending")]
    assert len(sending) >= 3, frames
    assert all(len(f) < columns for f in frames), [f for f in frames if len(f) >= columns]
    assert all(re.search(r"\d+%  [\d,]+/3,000 pairs done", f) for f in sending)
    assert any(f.endswith(" left") for f in sending), sending
    if columns >= 80:
        assert any(re.search(r"[\d,]+/s  .* left", f) for f in sending), sending
    assert re.search(r"completed .*100%.*3,000/3,000 pairs done", text)
    assert "events imported" in text  # the final summary table follows the line


async def test_plain_lines_when_piped(tmp_path: Path) -> None:
    """Piped, progress is plain 'backfill: ...' lines at the interval, never carriage returns."""
    path = _input(tmp_path)
    async with running_standin(_slow_standin()) as standin:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *_run_args(path, standin.url, tmp_path / "out"), "--progress-interval-s", "0.3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
            cwd=tmp_path,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = err.decode().splitlines()
    assert "\r" not in err.decode()
    sending = [line for line in lines if line.startswith("backfill: sending")]
    assert len(sending) >= 2, lines
    assert all(re.search(r"\d+%  [\d,]+/3,000 pairs done", line) for line in sending)
    assert lines[-1].startswith("backfill: completed")
    assert "events imported" in out.decode()


async def test_no_progress_prints_no_progress(tmp_path: Path) -> None:
    """--no-progress silences the display; the summary table still prints."""
    path = _input(tmp_path)
    async with running_standin(StandinConfig()) as standin:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *_run_args(path, standin.url, tmp_path / "out"), "--progress-interval-s", "0.01",
            "--no-progress",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
            cwd=tmp_path,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0
    assert err.decode() == ""
    assert "events imported" in out.decode()


def test_render_shows_bar_rate_and_time_left() -> None:
    """The sending line has a bar on a TTY, pairs done of all, the rate held and time left."""
    snap = sending_snapshot(
        "sending", pairs_total=1000, pairs_done=500, imported=500, rate_per_s=50.0
    )
    line = render(snap, 200, bar=True)
    assert "[########........]" in line
    assert "50%" in line
    assert "500/1,000 pairs done" in line
    assert "50/s" in line
    assert "10 s left" in line


def test_render_shows_the_paced_rate_and_429s_while_they_slow_the_run() -> None:
    """After 429s the line says how many and the rate the run is paced at now."""
    snap = sending_snapshot(
        "sending",
        pairs_total=1000,
        pairs_done=500,
        rate_per_s=50.0,
        rate_limited=7,
        paced_per_s=8575.0,
    )
    line = render(snap, 200, bar=True)
    assert "paced 8,575/s" in line
    assert "429s: 7" in line
    assert "paced" not in render(
        sending_snapshot("sending", pairs_total=10, rate_per_s=5.0), 200, bar=True
    )


def test_validating_line_counts_rows() -> None:
    """Before sending, the line shows the phase and the rows read."""
    assert render(Snapshot("validating", rows_read=1234), 200, bar=True) == (
        "validating  1,234 rows read"
    )


def test_line_fits_every_width_and_keeps_the_essentials() -> None:
    """At any width from 20 to 200 the line fits; at 80 it keeps phase, share and pairs done."""
    snap = sending_snapshot(
        "sending",
        pairs_total=123_456_789,
        pairs_done=98_765_432,
        imported=98_000_000,
        refused=765_432,
        sent_this_run=50_000_000,
        retries=12_345,
        rate_per_s=24_987.6,
    )
    for width in range(20, 201):
        assert len(render(snap, width, bar=True)) <= width
    line = render(snap, 79, bar=True)
    assert line.startswith("sending")
    assert "80%" in line
    assert "98,765,432/123,456,789 pairs done" in line
    assert "retries" not in render(snap, 60, bar=True), "the least useful part goes first"


def test_piped_ticks_respect_the_interval() -> None:
    """A log gets at most one line per interval however often the pipeline ticks."""
    stream = io.StringIO()
    progress = Progress(stream=stream, interactive=False, interval_s=3600)
    for _ in range(1000):
        progress.tick()
    assert stream.getvalue() == ""
    progress.close()
    assert stream.getvalue() == ""  # nothing drawn, nothing to finish


def test_a_long_retry_pause_is_on_the_line() -> None:
    """While a retry pause of several seconds runs, the line says when the retry goes out."""
    snap = sending_snapshot("sending", pairs_total=10, pairs_done=4, waiting_s=42.0)
    assert "retry in 42 s" in render(snap, 80, bar=True)


def test_time_left_adds_the_retry_pause_under_way() -> None:
    """While a retry waits, time left is the wait plus the rest at the rate: never less."""
    snap = sending_snapshot(
        "sending", pairs_total=1000, pairs_done=500, rate_per_s=50.0, waiting_s=6.0
    )
    line = render(snap, 200, bar=True)
    assert "retry in 6 s" in line
    assert "16 s left" in line
    assert snap.sending is not None
    fast = replace(snap, sending=replace(snap.sending, rate_per_s=1000.0))
    assert "6 s left" in render(fast, 200, bar=True)


def test_time_left_follows_the_rate_held_lately_not_the_average() -> None:
    """After 429s slow the run, time left comes from the last 20 s, not the run's average."""
    held = HeldRate(window_s=20.0)
    assert held.see(0.0, 0) is None
    assert held.see(10.0, 1000) == 100.0
    held.see(20.0, 1100)
    rate = held.see(30.0, 1200)  # 10/s since t=10; the run's average is 40/s
    assert rate == 10.0
    snap = sending_snapshot(
        "sending", pairs_total=2000, pairs_done=1200, rate_per_s=40.0, held_per_s=rate
    )
    line = render(snap, 200, bar=True)
    assert "10/s" in line
    assert "80 s left" in line


def test_the_progress_line_draws_the_held_rate() -> None:
    """Progress itself measures the held rate between its drawings and shows it."""
    done = [0]
    stream = io.StringIO()
    progress = Progress(
        lambda: sending_snapshot("sending", pairs_total=10_000, pairs_done=done[0], rate_per_s=1e6),
        stream=stream,
        interactive=False,
        interval_s=0.0,
    )
    progress.tick()
    time.sleep(1.1)
    done[0] = 100
    progress.tick()
    last = stream.getvalue().splitlines()[-1]
    # About 90/s over about 1.1 s (fewer on a busy machine), never the view's 1,000,000/s.
    assert "1,000,000/s" not in last
    assert re.search(r"  \d{1,3}/s  ", last), last
