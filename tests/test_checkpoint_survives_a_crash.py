"""The checkpoint keeps a run's progress through any crash: done rows, atomic writes never torn,
and a resume under changed settings refused, naming --restart.

The end-to-end behaviour (kill, interrupt, resume through the real CLI) is in
``test_resume_after_a_crash.py``; the folder's lock in ``test_one_run_per_folder.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backfill.errors import EXIT_USAGE, CheckpointMismatch, UsageError
from backfill.folder.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    SendState,
    token_digest,
)
from backfill.folder.files import atomic_write_bytes
from backfill.folder.intervals import RowIntervals
from backfill.read import open_dataset

REPO = Path(__file__).resolve().parent.parent
START_MS = 1_700_000_000_000
IDENTITY: dict[str, Any] = {
    "input": {"size": 123, "sha256": "ab" * 32},
    "project_id": "1",
    "format": "csv",
    "anon_column": "anon_id",
    "identified_column": "identified_id",
    "time_column": None,
    "max_cluster_size": 500,
    "token": None,
}


# --- RowIntervals --------------------------------------------------------------------------


def intervals(*spans: tuple[int, int]) -> RowIntervals:
    """A RowIntervals built by adding ``spans`` in the given order."""
    out = RowIntervals()
    for first, last in spans:
        out.add(first, last)
    return out


def members(ri: RowIntervals) -> set[int]:
    """Every row of ``ri``, expanded."""
    return {row for first, last in ri.to_json() for row in range(first, last + 1)}


def assert_canonical(ri: RowIntervals) -> None:
    """Sorted, disjoint, non-adjacent, each interval non-empty, both lists in step."""
    assert len(ri.starts) == len(ri.ends)
    for first, last in zip(ri.starts, ri.ends, strict=True):
        assert first <= last
    for i in range(len(ri.starts) - 1):
        assert ri.ends[i] + 1 < ri.starts[i + 1], ri.to_json()


def test_adding_adjacent_spans_in_order_keeps_one_interval() -> None:
    """Spans that tile the file in order merge into a single interval."""
    ri = intervals((1, 100), (101, 200), (201, 350))
    assert ri.to_json() == [[1, 350]]
    assert ri.count() == 350


def test_out_of_order_spans_leave_holes_that_close_when_stragglers_land() -> None:
    """Batches settling out of order leave holes, and the stragglers close them."""
    ri = intervals((201, 300), (1, 100), (401, 500))
    assert ri.to_json() == [[1, 100], [201, 300], [401, 500]]
    ri.add(301, 400)
    assert ri.to_json() == [[1, 100], [201, 500]]
    ri.add(101, 200)
    assert ri.to_json() == [[1, 500]]
    assert_canonical(ri)


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([(5, 10), (7, 8)], [[5, 10]]),  # inside an existing interval
        ([(5, 10), (1, 20)], [[1, 20]]),  # swallows an interval
        ([(1, 2), (5, 6), (9, 10), (3, 8)], [[1, 10]]),  # bridges several
        ([(1, 2), (5, 6), (9, 10), (4, 4)], [[1, 2], [4, 6], [9, 10]]),  # touches one side
        ([(10, 20), (1, 9)], [[1, 20]]),  # adjacent before
        ([(10, 20), (21, 30)], [[10, 30]]),  # adjacent after
        ([(10, 20), (1, 8)], [[1, 8], [10, 20]]),  # a gap of one row stays a gap
        ([(10, 20), (22, 30)], [[10, 20], [22, 30]]),
        ([(3, 3), (1, 1), (2, 2)], [[1, 3]]),  # single rows
        ([(10, 20), (15, 25), (5, 12)], [[5, 25]]),  # overlaps on both sides
        ([(10, 20), (9, 5)], [[10, 20]]),  # an empty span adds nothing
    ],
)
def test_add_merges_overlapping_and_adjacent_spans(
    spans: list[tuple[int, int]], expected: list[list[int]]
) -> None:
    """``add`` merges overlaps and neighbours, keeps real gaps, ignores empty spans."""
    ri = intervals(*spans)
    assert ri.to_json() == expected
    assert_canonical(ri)


def test_contains_and_covers_on_a_set_with_holes() -> None:
    """``contains`` answers row by row and ``covers`` only for a span wholly inside."""
    ri = intervals((3, 5), (10, 12))
    rows = np.arange(0, 15, dtype=np.int64)
    assert ri.contains(rows).tolist() == [r in {3, 4, 5, 10, 11, 12} for r in range(15)]
    assert ri.covers(3, 5)
    assert ri.covers(4, 4)
    assert ri.covers(10, 12)
    assert not ri.covers(2, 5)
    assert not ri.covers(3, 6)
    assert not ri.covers(5, 10)  # spans a hole
    assert not ri.covers(13, 13)
    assert not RowIntervals().covers(1, 1)
    assert RowIntervals().contains(rows).tolist() == [False] * 15
    assert RowIntervals().count() == 0


def test_json_round_trip_and_defensive_merge_of_a_hand_edited_list() -> None:
    """``from_json`` rebuilds ``to_json`` output and merges unsorted or overlapping input."""
    ri = intervals((1, 4), (8, 9), (20, 30))
    assert RowIntervals.from_json(ri.to_json()) == ri
    messy = RowIntervals.from_json([[20, 30], [1, 4], [3, 9], [31, 31], [40, 41]])
    assert messy.to_json() == [[1, 9], [20, 31], [40, 41]]
    assert RowIntervals.from_json([]).to_json() == []


@pytest.mark.parametrize(
    "done",
    [
        None,
        [["40", "41"]],
        [[1, 1e30]],
        [[1, 10**30]],
        [[5, 2]],
        [[0, 3]],
        [[1, 2, 3]],
        [[True, 2]],
    ],
)
def test_malformed_done_rows_are_refused(done: object) -> None:
    """Strings, floats, huge, reversed or zero rows in ``done`` are a damaged file (ValueError)."""
    with pytest.raises(ValueError, match="done"):
        RowIntervals.from_json(done)


@pytest.mark.parametrize("seed", range(8))
def test_random_adds_agree_with_a_python_set(seed: int) -> None:
    """Random spans added in random order give exactly a Python set's members, always merged."""
    rng = random.Random(seed)
    ri = RowIntervals()
    model: set[int] = set()
    universe = 400
    probe = np.arange(0, universe + 3, dtype=np.int64)
    for _ in range(150):
        first = rng.randint(1, universe)
        last = first + rng.choice([-1, 0, 0, 1, 2, 5, 17, 60])
        ri.add(first, last)
        model.update(range(first, last + 1))
        assert_canonical(ri)
        assert members(ri) == model
        assert ri.count() == len(model)
        assert ri.contains(probe).tolist() == [int(r) in model for r in probe]
        a = rng.randint(0, universe)
        b = a + rng.randint(0, 30)
        assert ri.covers(a, b) == all(r in model for r in range(a, b + 1))
    assert RowIntervals.from_json(json.loads(json.dumps(ri.to_json()))) == ri


def test_batch_spans_tiling_a_file_in_any_order_end_as_one_interval() -> None:
    """Spans that tile rows 1..N, settled in a shuffled order, end as the single [1, N]."""
    rng = random.Random(7)
    bounds = sorted(rng.sample(range(2, 5000), 60))
    spans = list(zip([1, *bounds], [b - 1 for b in bounds] + [5000], strict=True))
    rng.shuffle(spans)
    ri = RowIntervals()
    for first, last in spans:
        ri.add(first, last)
        assert_canonical(ri)
        assert len(ri.starts) <= len(spans)
    assert ri.to_json() == [[1, 5000]]


# --- the checkpoint file ---------------------------------------------------------------


def open_checkpoint(
    out: Path,
    identity: dict[str, Any] | None = None,
    *,
    event_time_ms: int | None = None,
    start_ms: int = START_MS,
    restart: bool = False,
) -> Checkpoint:
    """``Checkpoint.open`` with this module's defaults."""
    return Checkpoint.open(
        out,
        IDENTITY if identity is None else identity,
        event_time_ms=event_time_ms,
        start_ms=start_ms,
        restart=restart,
    )


def saved_checkpoint(out: Path, **kwargs: Any) -> Checkpoint:
    """A checkpoint with some progress, written to ``out``."""
    ckpt = open_checkpoint(out, **kwargs)
    ckpt.settle(1, 100, imported=99, refused=1)
    ckpt.settle(201, 300, imported=100, refused=0)
    ckpt.requests = 7
    ckpt.retries = {"5xx": 2}
    ckpt.rows_total = 1000
    ckpt.events_total = 990
    ckpt.rejected = {"invalid_anon_id": 10}
    ckpt.write()
    return ckpt


def test_a_new_checkpoint_fixes_the_event_time_to_the_first_runs_start(tmp_path: Path) -> None:
    """Without --event-time the first run's start is kept, and a resume reuses it."""
    first = saved_checkpoint(tmp_path, start_ms=START_MS)
    assert first.event_time_ms == START_MS
    later = open_checkpoint(tmp_path, start_ms=START_MS + 3_600_000)
    assert later.event_time_ms == START_MS
    assert later.runs == 2


def test_the_first_runs_start_is_the_now_of_every_resume_and_restart_takes_a_new_one(
    tmp_path: Path,
) -> None:
    """started_ms (what "in the future" is measured from) is kept by resumes, even with
    --event-time, and renewed by --restart; an old checkpoint falls back to created_at."""
    saved_checkpoint(tmp_path, start_ms=START_MS, event_time_ms=1_600_000_000_000)
    later = open_checkpoint(
        tmp_path, start_ms=START_MS + 3_600_000, event_time_ms=1_600_000_000_000
    )
    assert later.started_ms == START_MS
    assert json.loads((tmp_path / CHECKPOINT_FILE).read_text())["started_ms"] == START_MS
    restarted = open_checkpoint(tmp_path, start_ms=START_MS + 7_200_000, restart=True)
    assert restarted.started_ms == START_MS + 7_200_000
    restarted.write()
    data = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    del data["started_ms"], data["verdicts"]
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps(data))
    legacy = open_checkpoint(tmp_path)
    assert legacy.started_ms == int(data["created_at"] * 1000)


def test_verdicts_that_differ_are_refused_only_once_a_span_is_done(tmp_path: Path) -> None:
    """check_verdicts: the first digest is recorded; another one with done rows is refused."""
    ckpt = open_checkpoint(tmp_path)
    ckpt.check_verdicts("a" * 64)
    ckpt.check_verdicts("b" * 64)  # nothing done yet: nothing judged otherwise is relied on
    ckpt.settle(1, 100, imported=100, refused=0)
    ckpt.check_verdicts("b" * 64)
    with pytest.raises(CheckpointMismatch, match=r"judged otherwise.*--restart"):
        ckpt.check_verdicts("a" * 64)
    ckpt.write()
    assert open_checkpoint(tmp_path).verdicts == "b" * 64


def test_an_explicit_event_time_wins_on_a_new_checkpoint(tmp_path: Path) -> None:
    """With --event-time the checkpoint's time is that value, not the start."""
    ckpt = open_checkpoint(tmp_path, event_time_ms=1_600_000_000_000)
    assert ckpt.event_time_ms == 1_600_000_000_000


def test_resume_restores_done_rows_and_cumulative_counts(tmp_path: Path) -> None:
    """A reopened checkpoint has the same done rows and counts, one more run, a running state."""
    saved = saved_checkpoint(tmp_path)
    saved.state = SendState.COMPLETED
    saved.write()
    again = open_checkpoint(tmp_path)
    assert again.done.to_json() == [[1, 100], [201, 300]]
    assert (again.events_imported, again.events_refused) == (199, 1)
    assert (again.requests, again.retries) == (7, {"5xx": 2})
    assert (again.rows_total, again.events_total) == (1000, 990)
    assert again.rejected == {"invalid_anon_id": 10}
    assert again.created_at == pytest.approx(saved.created_at)
    assert again.runs == 2
    assert again.state == "running"
    assert again.run_events == 0


def test_settle_adds_the_span_and_moves_the_counts(tmp_path: Path) -> None:
    """``settle`` records the span as done and adds to imported, refused and this run's events."""
    ckpt = open_checkpoint(tmp_path)
    ckpt.settle(101, 200, imported=97, refused=3)
    ckpt.settle(1, 100, imported=100, refused=0)
    assert ckpt.done.to_json() == [[1, 200]]
    assert (ckpt.events_imported, ckpt.events_refused, ckpt.run_events) == (197, 3, 200)


def test_written_file_is_json_with_the_documented_fields(tmp_path: Path) -> None:
    """checkpoint.json holds done, identity, event time, counts and timestamps."""
    saved_checkpoint(tmp_path)
    data = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert data["done"] == [[1, 100], [201, 300]]
    assert data["identity"] == IDENTITY
    assert data["event_time_ms"] == START_MS
    assert data["events_imported"] == 199
    assert data["state"] == "running"
    assert data["updated_at"] >= data["created_at"]
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_a_failed_rename_leaves_the_old_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before the rename (simulated) leaves the previous checkpoint, readable."""
    ckpt = saved_checkpoint(tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    ckpt.settle(101, 200, imported=100, refused=0)

    def crash(*args: Any) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        ckpt.write()
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert open_checkpoint(tmp_path).done.to_json() == [[1, 100], [201, 300]]
    ckpt.write()
    assert open_checkpoint(tmp_path).done.to_json() == [[1, 300]]


def test_a_failed_fsync_of_the_temp_file_leaves_the_old_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails before it is durable never replaces the previous checkpoint."""
    ckpt = saved_checkpoint(tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    ckpt.settle(101, 200, imported=100, refused=0)

    def fail(fd: int) -> None:
        raise OSError("simulated fsync failure")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="simulated"):
        ckpt.write()
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_a_concurrent_reader_sees_the_old_or_the_new_file_never_a_torn_one(
    tmp_path: Path,
) -> None:
    """While one thread rewrites the checkpoint, every read is one whole written version."""
    path = tmp_path / CHECKPOINT_FILE
    versions = [
        (json.dumps({"version": i, "done": [[1, i * 7 + 1]] * (1 + i % 50)}) + "\n").encode()
        for i in range(200)
    ]
    atomic_write_bytes(path, versions[0])
    written = set(versions)
    stop = threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(path.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for data in versions:
            atomic_write_bytes(path, data)
    finally:
        stop.set()
        thread.join()
    assert seen
    assert all(data in written for data in seen)
    assert path.read_bytes() == versions[-1]


def test_sigkill_during_repeated_writes_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """A writer killed with SIGKILL at an arbitrary instant leaves a complete, parseable file."""
    path = tmp_path / CHECKPOINT_FILE
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from backfill.folder.files import atomic_write_bytes
        path = Path(sys.argv[1])
        i = 0
        while True:
            done = [[k * 10 + 1, k * 10 + 5] for k in range(1 + i % 3000)]
            atomic_write_bytes(path, json.dumps({"i": i, "done": done}).encode())
            if i == 0:
                print("ready", flush=True)
            i += 1
        """
    )
    for delay in (0.05, 0.13, 0.29):
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, cwd=REPO
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"ready"
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        data = json.loads(path.read_text())
        assert len(data["done"]) == 1 + data["i"] % 3000


# --- identity ------------------------------------------------------------------------------


def test_file_fingerprint_changes_with_any_byte(tmp_path: Path) -> None:
    """Appending a row or editing one byte changes the fingerprint; an identical copy does not."""

    def file_fingerprint(path: Path) -> dict[str, Any]:
        entry: dict[str, Any] = open_dataset(str(path)).fingerprint()["files"][0]
        return {k: v for k, v in entry.items() if k != "name"}

    path = tmp_path / "in.csv"
    path.write_bytes(b"anon_id,identified_id\na,b\n")
    base = file_fingerprint(path)
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    assert file_fingerprint(copy) == base
    path.write_bytes(b"anon_id,identified_id\na,c\n")
    assert file_fingerprint(path) != base
    assert file_fingerprint(path)["size"] == base["size"]
    path.write_bytes(b"anon_id,identified_id\na,b\nc,d\n")
    assert file_fingerprint(path)["size"] != base["size"]


def test_token_digest_is_stable_and_never_the_token() -> None:
    """The token digest notices a change without holding the token."""
    token = "0123456789abcdef0123456789abcdef"
    assert token_digest(token) == token_digest(token)
    assert token_digest(token) != token_digest(token + "x")
    assert token not in str(token_digest(token))
    assert token_digest(None) is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"input": {"size": 124, "sha256": "cd" * 32}},
            "input files: one was added, removed or changed",
        ),
        ({"project_id": "2"}, "project id: 1 → 2"),
        ({"time_column": "merged_at"}, "--time-column: none → merged_at"),
        ({"anon_column": "device_id"}, "--anon-column: anon_id → device_id"),
        ({"identified_column": "user_id"}, "--identified-column: identified_id → user_id"),
        ({"max_cluster_size": 100}, "--max-cluster-size: 500 → 100"),
        ({"format": "parquet"}, "--format: csv → parquet"),
        ({"token": token_digest("a-token")}, "MIXPANEL_PROJECT_TOKEN: set"),
    ],
)
def test_a_changed_identity_is_refused_naming_what_changed_and_restart(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    """A changed input or event setting is refused, the message naming it and --restart."""
    saved_checkpoint(tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointMismatch, match="holds a run made with other settings") as caught:
        open_checkpoint(tmp_path, {**IDENTITY, **change})
    message = str(caught.value)
    assert named in message
    assert "--restart" in message
    assert str(tmp_path) in message
    assert "a-token" not in message
    assert isinstance(caught.value, UsageError)
    assert caught.value.exit_code == EXIT_USAGE
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before  # refused: nothing rewritten


def test_a_changed_event_time_is_refused(tmp_path: Path) -> None:
    """An --event-time other than the checkpoint's is refused; the same one, or none, resumes."""
    saved_checkpoint(tmp_path, event_time_ms=1_600_000_000_000)
    changed = r"--event-time: 2020-09-13T12:26:40\+00:00 → .*--restart"
    with pytest.raises(CheckpointMismatch, match=changed):
        open_checkpoint(tmp_path, event_time_ms=1_600_000_000_001)
    assert open_checkpoint(tmp_path, event_time_ms=1_600_000_000_000).runs == 2
    assert open_checkpoint(tmp_path).event_time_ms == 1_600_000_000_000


def test_an_event_time_given_only_on_the_rerun_is_refused(tmp_path: Path) -> None:
    """A first run on its start time, resumed with an explicit --event-time, is refused."""
    saved_checkpoint(tmp_path, start_ms=START_MS)
    with pytest.raises(CheckpointMismatch, match="--restart"):
        open_checkpoint(tmp_path, event_time_ms=START_MS + 1)


def test_several_changes_are_all_named(tmp_path: Path) -> None:
    """When the input and the project both changed, the message names both."""
    saved_checkpoint(tmp_path)
    changed = {**IDENTITY, "input": {"size": 1, "sha256": "00" * 32}, "project_id": "9"}
    with pytest.raises(CheckpointMismatch, match="holds a run made with other settings") as caught:
        open_checkpoint(tmp_path, changed)
    assert "input files" in str(caught.value)
    assert "project id" in str(caught.value)


def test_a_checkpoint_that_settled_nothing_gives_way_to_other_settings(tmp_path: Path) -> None:
    """A run whose canary was refused (nothing settled) is replaced by a rerun with another ID
    merge system, without --restart: the new checkpoint says why, keeps the event time."""
    original = {**IDENTITY, "id_merge": "original", "non_uuid_anon": "refuse"}
    first = open_checkpoint(tmp_path, original)
    first.requests = 1  # the refused canary
    first.write()
    simplified = {**IDENTITY, "id_merge": "simplified", "pairing_event": "Identity Backfill"}
    fresh = open_checkpoint(tmp_path, simplified, start_ms=START_MS + 5000)
    assert fresh.identity == simplified
    assert (fresh.runs, fresh.requests, fresh.event_time_ms) == (1, 0, START_MS)
    assert fresh.note is not None
    assert "settled nothing" in fresh.note
    assert "--id-merge: original → simplified" in fresh.note
    assert "--non-uuid-anon" not in fresh.note
    assert "--pairing-event" not in fresh.note


def test_a_mismatch_names_only_the_setting_that_changed(tmp_path: Path) -> None:
    """A run that imported pairs under Original, rerun as Simplified: refused, the message
    names --id-merge with both values and not the two settings that belong to each system."""
    saved_checkpoint(tmp_path, identity={**IDENTITY, "id_merge": "original",
                                         "non_uuid_anon": "refuse"})  # fmt: skip
    simplified = {**IDENTITY, "id_merge": "simplified", "pairing_event": "Identity Backfill"}
    with pytest.raises(CheckpointMismatch, match=r"\(--id-merge: original → simplified\) that "
                       r"already settled 200 pairs \(199 imported\): pass --restart") as caught:
        open_checkpoint(tmp_path, simplified)
    assert "--non-uuid-anon" not in str(caught.value)
    assert "--pairing-event" not in str(caught.value)
    assert caught.value.fix == (("--restart", None),)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "unreadable"),
        (json.dumps({"version": 999}).encode(), "another version"),
        (json.dumps({"version": 1, "identity": {}}).encode(), "damaged"),
        (json.dumps([1, 2, 3]).encode(), "another version"),
    ],
)
def test_an_unreadable_or_foreign_checkpoint_is_refused_naming_restart(
    tmp_path: Path, content: bytes, words: str
) -> None:
    """A torn, foreign or damaged checkpoint.json is refused (exit 2) with --restart named."""
    (tmp_path / CHECKPOINT_FILE).write_bytes(content)
    with pytest.raises(CheckpointMismatch, match="pass --restart to start over") as caught:
        open_checkpoint(tmp_path)
    assert words in str(caught.value)
    assert "--restart" in str(caught.value)
    fresh = open_checkpoint(tmp_path, restart=True)
    assert fresh.done.to_json() == []


def test_restart_discards_the_old_checkpoint_and_starts_over(tmp_path: Path) -> None:
    """With --restart a mismatched checkpoint is replaced by a fresh one for the new identity."""
    saved_checkpoint(tmp_path)
    changed = {**IDENTITY, "input": {"size": 124, "sha256": "cd" * 32}}
    fresh = open_checkpoint(tmp_path, changed, restart=True, start_ms=START_MS + 1000)
    assert fresh.identity == changed
    assert fresh.done.to_json() == []
    assert (fresh.events_imported, fresh.events_refused, fresh.requests) == (0, 0, 0)
    assert fresh.runs == 1
    # The old event time is kept, so pairs sent again are the identical events.
    assert fresh.event_time_ms == START_MS
    fresh.write()
    again = open_checkpoint(tmp_path, changed)
    assert again.done.to_json() == []
    assert again.runs == 2


def test_restart_on_an_unchanged_identity_also_starts_over(tmp_path: Path) -> None:
    """--restart discards progress even when nothing changed."""
    saved_checkpoint(tmp_path)
    fresh = open_checkpoint(tmp_path, restart=True)
    assert fresh.done.to_json() == []
    assert fresh.events_imported == 0
