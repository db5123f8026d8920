"""``backfill run`` end to end against answers that must stop it, and the one-event canary.

Each test runs ``python -m backfill run`` as a subprocess against a stand-in served on this
test's event loop on 127.0.0.1, and reads the run folder afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
from aiohttp import web
from runkit import (
    STANDIN_CREDENTIALS,
    CliResult,
    clean_env,
    rejects_by_row,
    run_cli,
    serving,
    uuid4s,
    write_pairs,
)

from backfill.folder.intervals import RowIntervals
from backfill.mixpanel import IdMerge
from backfill.standin import (
    FaultRates,
    StandinConfig,
    running_standin,
)

ENV = clean_env(STANDIN_CREDENTIALS)


def valid_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` valid pairs, each identified id distinct."""
    return [(a, f"user-{seed}-{i}") for i, a in enumerate(uuid4s(n, seed))]


async def run(source: Path, out: Path, url: str, *extra: str) -> CliResult:
    """``backfill run SOURCE --out OUT --api-url URL`` with fast retries and no progress."""
    args = ["run", str(source), "--out", str(out), "--api-url", url, "--no-progress"]
    return await run_cli([*args, "--retry-base-s", "0.01", *extra], ENV, cwd=out.parent)


def summary(out: Path) -> dict[str, Any]:
    """The run folder's summary.json."""
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def rejects(out: Path) -> dict[int, tuple[str, ...]]:
    """rejects.csv as row -> (anon, identified, reason, detail); each row once."""
    return rejects_by_row(out, "anon_id", "identified_id", "reason", "detail")


def no_traceback(result: CliResult) -> None:
    """No Python traceback reached the user."""
    assert "Traceback" not in result.stderr, result.stderr


async def test_simplified_project_stops_after_the_canary_and_again_on_rerun(
    tmp_path: Path,
) -> None:
    """A Simplified project: exit 3 after the canary, 0 imported, no api_rejected, rerun same."""
    source = write_pairs(tmp_path / "m.csv", valid_pairs(5000, 40))
    out = tmp_path / "out"
    async with running_standin(StandinConfig(id_merge=IdMerge.SIMPLIFIED)) as standin:
        first = await run(source, out, standin.url)
        after_first = standin.state.requests_count
        second = await run(source, out, standin.url)
        state = standin.state
    for result in (first, second):
        assert result.code == 3, result.stderr
        no_traceback(result)
        assert "Simplified ID Merge" in result.stderr
        assert "--id-merge simplified" in result.stderr
    assert 1 <= after_first <= 2
    assert state.requests_count - after_first <= 2, "nothing was marked done: the rerun stops too"
    assert state.requests[0].events == 1, "the canary carries one event"
    assert not state.store
    data = summary(out)
    assert data["status"] == "aborted"
    assert data["events_imported"] == 0
    assert data["rejected"]["api_rejected"] == 0
    assert not any(r[2] == "api_rejected" for r in rejects(out).values())


async def test_index_only_refusals_and_real_429s_import_every_other_pair_once(
    tmp_path: Path,
) -> None:
    """6,000 pairs, 3 refused by index only, 10% real 429s: exact rejects and imported count."""
    pairs = valid_pairs(6000, 41)
    refused_rows = {17, 2999, 6000}
    refused_ids = frozenset(pairs[r - 1][1] for r in refused_rows)
    source = write_pairs(tmp_path / "m.csv", pairs)
    out = tmp_path / "out"
    config = StandinConfig(
        failed_records_key=None,
        refuse_distinct_ids=refused_ids,
        faults=FaultRates(p_429=0.1, seed=3),
    )
    async with running_standin(config) as standin:
        result = await run(source, out, standin.url, "--batch-size", "200")
        state = standin.state
    assert result.code == 0, result.stderr
    no_traceback(result)
    found = rejects(out)
    assert set(found) == refused_rows
    assert all(v[2] == "api_rejected" for v in found.values())
    assert all("properties.distinct_id" in v[3] for v in found.values())
    expected = {p for i, p in enumerate(pairs, start=1) if i not in refused_rows}
    assert state.identify_pairs() == expected
    data = summary(out)
    assert data["events_imported"] == 6000 - 3
    assert data["rejected"]["api_rejected"] == 3
    assert state.statuses()[429] > 0, "some requests met the real 429 body"
    assert state.requests[0].events == 1, "the canary carries one event"
    assert all(r.query.get("ip") == "0" for r in state.requests)


async def test_whole_request_400_stops_within_three_requests_then_resumes(
    tmp_path: Path,
) -> None:
    """400 naming no record on every request: exit 3, nothing done; healthy again: all imported."""
    pairs = valid_pairs(3000, 42)
    source = write_pairs(tmp_path / "m.csv", pairs)
    out = tmp_path / "out"
    async with running_standin() as standin:
        standin.state.always = "400_whole"
        refused = await run(source, out, standin.url)
        requests = standin.state.requests_count
        standin.state.always = None
        healed = await run(source, out, standin.url)
        state = standin.state
    assert refused.code == 3, refused.stderr
    no_traceback(refused)
    assert "some data points in the request failed validation" in refused.stderr
    assert 1 <= requests <= 3
    assert healed.code == 0, healed.stderr
    assert state.identify_pairs() == set(pairs)
    assert summary(out)["events_imported"] == 3000
    assert rejects(out) == {}


async def test_a_200_naming_refused_records_lists_them_and_a_contradictory_one_stops(
    tmp_path: Path,
) -> None:
    """A 200 whose failed_records names records: api_rejected; one also counting them
    imported: exit 3, their rows not done; healthy again: each refusal listed once."""
    pairs = valid_pairs(3000, 43)
    refused_rows = {17, 1500, 3000}
    config = StandinConfig(refuse_distinct_ids=frozenset(pairs[r - 1][1] for r in refused_rows))
    source = write_pairs(tmp_path / "m.csv", pairs)
    honest, liar = tmp_path / "honest", tmp_path / "liar"
    async with running_standin(config) as standin:
        standin.state.always = "200_refused"
        first = await run(source, honest, standin.url, "--batch-size", "200")
        assert {r.status for r in standin.state.requests} == {200}
        standin.state.always = "200_refused_all_imported"
        stopped = await run(source, liar, standin.url, "--batch-size", "200")
        assert stopped.code == 3, stopped.stderr
        no_traceback(stopped)
        assert "does not add up" in stopped.stderr
        ckpt = json.loads((liar / "checkpoint.json").read_text())
        assert not RowIntervals.from_json(ckpt["done"]).contains(np.array([17, 1500, 3000])).any()
        assert summary(liar)["status"] == "aborted"
        assert summary(liar)["rejected"]["api_rejected"] == 0
        assert summary(liar)["events_imported"] <= 3000 - 3
        standin.state.always = None
        healed = await run(source, liar, standin.url, "--batch-size", "200")
    assert first.code == 0, first.stderr
    assert rejects(honest) == {
        r: (*pairs[r - 1], "api_rejected", ANY) for r in sorted(refused_rows)
    }
    assert summary(honest)["events_imported"] == 3000 - 3
    assert summary(honest)["rejected"]["api_rejected"] == 3
    assert healed.code == 0, healed.stderr
    assert set(rejects(liar)) == refused_rows
    assert summary(liar)["events_imported"] == 3000 - 3
    assert summary(liar)["rejected"]["api_rejected"] == 3


async def test_wrong_credentials_cost_exactly_one_request(tmp_path: Path) -> None:
    """401 at the canary: exit 3 after exactly one request of one event."""
    source = write_pairs(tmp_path / "m.csv", valid_pairs(4000, 43))
    out = tmp_path / "out"
    env = ENV | {"MIXPANEL_SERVICE_ACCOUNT_SECRET": "wrong-secret-e3b1"}
    async with running_standin() as standin:
        result = await run_cli(
            ["run", str(source), "--out", str(out), "--api-url", standin.url, "--no-progress"],
            env,
            cwd=tmp_path,
        )
        state = standin.state
    assert result.code == 3, result.stderr
    assert state.requests_count == 1
    assert state.requests[0].events == 1
    assert "wrong-secret-e3b1" not in result.stderr + result.stdout


async def test_redirect_stops_the_run_and_its_target_hears_nothing(tmp_path: Path) -> None:
    """A 307 from /import: exit 3, nothing counted imported, the target never contacted."""

    async def target(request: web.Request) -> web.Response:
        return web.json_response({"code": 200, "num_records_imported": 2000, "status": "OK"})

    source = write_pairs(tmp_path / "m.csv", valid_pairs(500, 44))
    out = tmp_path / "out"
    async with serving(target) as elsewhere:
        config = StandinConfig(redirect_to=elsewhere.import_url)
        async with running_standin(config) as standin:
            standin.state.always = "307"
            result = await run(source, out, standin.url)
        assert elsewhere.requests == []
    assert result.code == 3, result.stderr
    assert "307" in result.stderr
    assert elsewhere.import_url in result.stderr
    assert summary(out)["events_imported"] == 0


async def test_unreachable_api_url_stops_at_the_canary_naming_the_fix(
    tmp_path: Path, closed_port: int
) -> None:
    """Nobody listening at --api-url: exit 3 with the URL and --api-url/--region named."""
    source = write_pairs(tmp_path / "m.csv", valid_pairs(50, 45))
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{closed_port}"
    result = await run(source, out, url, "--max-attempts", "3")
    assert result.code == 3, result.stderr
    no_traceback(result)
    assert f"{url}/import" in result.stderr
    assert "--api-url" in result.stderr
    assert summary(out)["events_imported"] == 0


async def test_first_request_of_a_resumed_run_is_a_one_event_canary(tmp_path: Path) -> None:
    """Every invocation starts with a canary: the rerun's first request also holds one event."""
    pairs = valid_pairs(1000, 46)
    source = write_pairs(tmp_path / "m.csv", pairs)
    out = tmp_path / "out"
    async with running_standin() as standin:
        standin.state.always = "400_whole"
        await run(source, out, standin.url)
        standin.state.always = None
        before = standin.state.requests_count
        result = await run(source, out, standin.url, "--batch-size", "100")
        state = standin.state
    assert result.code == 0, result.stderr
    assert state.requests[before].events == 1
    assert [r.events for r in state.requests[before + 1 : before + 3]] == [99, 100]
    assert state.identify_pairs() == set(pairs)
