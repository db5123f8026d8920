"""Verdicts are stable across resumes: a migration judges every row against one "now", the
first run's start kept in the checkpoint, and no done span hides a row that was neither sent
nor listed in ``rejects.csv``.

The clock moves between runs: each test sets the clock the pipeline reads
(``backfill.commands.pipeline.now_ms``, the one source of "now" for the checkpoint and for judging)
before each call of the Python API. The stand-in serves from a thread with the real clock;
every time here lies days in the past, so it accepts them all.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runkit import rejects_by_row, uuid4s

import backfill
from backfill.commands import pipeline
from backfill.commands.rehearse import standin_thread
from backfill.standin import DEFAULT_PROJECT_ID, DEFAULT_SERVICE_ACCOUNT, Standin, StandinConfig

#: The migration's first run: two days before the real clock.
T0 = int(time.time() * 1000) - 2 * 86_400_000
FUTURE_ROW = 10
ROWS = 5000
HOUR_MS = 3_600_000


@pytest.fixture
def standin() -> Iterator[Standin]:
    """The stand-in, serving from a background thread."""
    with standin_thread(StandinConfig()) as served:
        yield served


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """5,000 valid pairs; row 10's time is one minute after T0, the others long past."""
    path = tmp_path / "m.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["anon_id", "identified_id", "merged_at"])
        for i, anon in enumerate(uuid4s(ROWS, 19), start=1):
            when = str(T0 + 60_000) if i == FUTURE_ROW else "2024-03-01T12:00:00Z"
            writer.writerow([anon, f"user-{i}", when])
    return path


def clock_at(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """Set the clock the pipeline reads to ``ms``."""
    monkeypatch.setattr(pipeline, "now_ms", lambda: ms)


def run(source: Path, out: Path, standin: Standin, **options: Any) -> backfill.Summary:
    """``backfill.run`` against the stand-in, one request at a time, batches of 500."""
    return backfill.run(
        source,
        out=out,
        credentials=backfill.Credentials(*DEFAULT_SERVICE_ACCOUNT),
        api_url=standin.url,
        project_id=DEFAULT_PROJECT_ID,
        time_column="merged_at",
        batch_size=500,
        concurrency=1,
        **options,
    )


def rejects(out: Path) -> dict[int, tuple[str, ...]]:
    """rejects.csv as row -> (reason, detail); each row once."""
    return rejects_by_row(out, "reason", "detail")


def test_a_row_refused_as_future_dated_stays_refused_when_its_time_has_passed(
    tmp_path: Path, source: Path, standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1 refuses a future-dated row and stops; run 2, an hour later, judges it as run 1
    did: listed in rejects.csv and counted, never silently skipped."""
    out = tmp_path / "out"
    clock_at(monkeypatch, T0)
    # The canary and the first batch (rows 1-501, the future-dated row among them) settle;
    # then a 400 naming no record stops the run.
    standin.state.script(["ok", "ok", "400_whole"])
    with pytest.raises(backfill.RequestRefused, match="refused the whole request") as info:
        run(source=source, out=out, standin=standin)
    first = info.value.summary
    assert first is not None
    assert first.rejected["invalid_time"] == 1
    assert 0 < first.events_imported < ROWS - 1
    assert rejects(out)[FUTURE_ROW][0] == "invalid_time"

    clock_at(monkeypatch, T0 + HOUR_MS)
    second = run(source=source, out=out, standin=standin)
    assert second.status is backfill.RunStatus.COMPLETED
    assert second.rejected["invalid_time"] == 1
    assert second.events_imported == ROWS - 1 == standin.state.events_imported
    assert second.rows_valid + sum(second.rejected.values()) == ROWS, "every row accounted for"
    reason, detail = rejects(out)[FUTURE_ROW]
    assert (reason, "in the future") == ("invalid_time", detail[-13:])
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["started_ms"] == T0

    # A dry run in the run's folder judges as the run does.
    assert backfill.validate(source, out=out, time_column="merged_at").rejected["invalid_time"] == 1


def test_a_resume_whose_rows_judge_otherwise_is_refused_and_restart_sends_the_row(
    tmp_path: Path, source: Path, standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Done spans settled for other verdicts (an edited "now") are refused naming --restart,
    nothing sent; --restart judges against a new now and sends the row that became valid."""
    out = tmp_path / "out"
    clock_at(monkeypatch, T0)
    first = run(source=source, out=out, standin=standin)
    assert first.events_imported == ROWS - 1
    path = out / "checkpoint.json"
    checkpoint = json.loads(path.read_text())
    checkpoint["started_ms"] = T0 + HOUR_MS  # as another version's or another clock's judging
    path.write_text(json.dumps(checkpoint))
    sent = standin.state.requests_count

    clock_at(monkeypatch, T0 + HOUR_MS)
    with pytest.raises(backfill.CheckpointMismatch, match=r"judged otherwise.*restart=True"):
        run(source=source, out=out, standin=standin)
    assert standin.state.requests_count == sent, "nothing sent"
    assert rejects(out)[FUTURE_ROW][0] == "invalid_time", "the listing is not lost meanwhile"

    again = run(source=source, out=out, standin=standin, restart=True)
    assert again.status is backfill.RunStatus.COMPLETED
    assert again.rejected["invalid_time"] == 0
    assert again.events_imported == ROWS == standin.state.events_imported
    assert FUTURE_ROW not in rejects(out)
