"""A run killed, interrupted or refused mid-way resumes: the rerun sends exactly the rest, every
pair imported once, rejects.csv listing each row once; a changed input or setting is refused.

The real CLI runs as a subprocess against the stand-in; helpers and the bookkeeping of which
rows each run sent are in ``resumekit.py``.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest
from resumekit import (
    BATCH,
    CONCURRENCY,
    SECRET,
    Dataset,
    assert_imported_once,
    assert_rejects_once,
    checkpoint_done,
    cli,
    done_rows,
    environment,
    finish,
    launched,
    load,
    run_args,
    sent_ids,
    serve,
    stored_rows,
    until,
)
from runkit import rejects_dicts as rejects

from backfill.folder.rejects import RejectRow, RejectsFile
from backfill.read import open_dataset
from backfill.standin import (
    FaultRates,
)

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
