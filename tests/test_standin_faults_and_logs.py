"""The local /import stand-in's faults, rate limit, store file, summary and request log, over
real HTTP on 127.0.0.1, and ``backfill serve`` as a user starts and stops it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standinkit import PARAMS, SA_HEADER, FakeClock, identify, post

from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    FAULT_NAMES,
    FaultRates,
    Standin,
    StandinConfig,
    StandinState,
    request_line,
    running_standin,
)


class TestFaults:
    async def test_scripted_503_and_429_answer_without_importing(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """Scripted 503 and 429 are answered in order with Mixpanel's bodies, storing nothing.

        The 429 is the body live probes of Mixpanel saw: no ``code``, ``status`` 0.
        """
        standin.state.script(["503", "429"])
        first = await post(session, standin, [identify(1)])
        second = await post(session, standin, [identify(1)])
        third = await post(session, standin, [identify(1)])
        assert (first.status, second.status, third.status) == (503, 429, 200)
        assert second.body == {
            "error": (
                "Project exceeded rate limits. Please retry the request with exponential backoff."
            ),
            "status": 0,
        }
        assert first.body["status"] == "Service Unavailable"
        assert "Retry-After" not in first.headers
        assert [r.fault for r in standin.state.requests] == ["503", "429", "ok"]
        assert standin.state.events_imported == 1
        assert standin.state.requests[0].insert_ids == ["ins-1"]

    async def test_drop_closes_the_connection_without_an_answer(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A scripted drop shows up as a server disconnect and imports nothing."""
        standin.state.script(["drop"])
        with pytest.raises(aiohttp.ServerDisconnectedError, match="Server disconnected"):
            await post(session, standin, [identify(1)])
        assert standin.state.events_imported == 0
        assert standin.state.requests[0].status is None
        assert (await post(session, standin, [identify(1)])).status == 200

    async def test_slow_answers_normally_after_slow_s(self, session: aiohttp.ClientSession) -> None:
        """A scripted slow request is answered normally, no sooner than ``slow_s``."""
        async with running_standin(StandinConfig(faults=FaultRates(slow_s=0.2))) as standin:
            standin.state.script(["slow"])
            started = time.monotonic()
            reply = await post(session, standin, [identify(1)])
            elapsed = time.monotonic() - started
        assert reply.status == 200
        assert elapsed >= 0.2
        assert standin.state.requests[0].fault == "slow"

    async def test_500_after_import_stores_the_events(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A 500_after_import answers 500 although the events were stored."""
        standin.state.script(["500_after_import"])
        reply = await post(session, standin, [identify(1), identify(2)])
        assert reply.status == 500
        assert standin.state.events_imported == 2
        await post(session, standin, [identify(1), identify(2)])
        assert standin.state.duplicates == 2

    async def test_drop_after_import_stores_the_events(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A drop_after_import disconnects although the events were stored."""
        standin.state.script(["drop_after_import"])
        with pytest.raises(aiohttp.ServerDisconnectedError, match="Server disconnected"):
            await post(session, standin, [identify(1)])
        assert standin.state.events_imported == 1

    async def test_retry_after_header_on_429_and_503(self, session: aiohttp.ClientSession) -> None:
        """``retry_after_s`` adds Retry-After: whole seconds as an integer, else a decimal."""
        for value, header in ((2.0, "2"), (0.25, "0.25")):
            faults = FaultRates(retry_after_s=value)
            async with running_standin(StandinConfig(faults=faults)) as standin:
                standin.state.script(["429", "503"])
                replies = [await post(session, standin, [identify(1)]) for _ in range(2)]
            assert [r.headers.get("Retry-After") for r in replies] == [header, header]

    async def test_random_faults_follow_the_seed(self, session: aiohttp.ClientSession) -> None:
        """With a seed, the n-th request gets the fault the seeded draw gives, run after run."""
        rates = FaultRates(p_503=0.3, p_429=0.2, p_drop=0.1, p_500_after_import=0.1, seed=7)
        rng = random.Random(7)
        expected = [rates.draw(rng) for _ in range(25)]
        assert len(set(expected)) >= 4  # the seed exercises several faults

        async def one_run() -> list[Any]:
            async with running_standin(StandinConfig(faults=rates)) as standin:
                for n in range(25):
                    with contextlib.suppress(aiohttp.ServerDisconnectedError):
                        await post(session, standin, [identify(n)])
                return [(r.fault, r.status) for r in standin.state.requests]

        first, second = await one_run(), await one_run()
        assert first == second
        assert [fault for fault, _ in first] == expected
        status_of = {"ok": 200, "503": 503, "429": 429, "drop": None, "500_after_import": 500}
        assert [status for _, status in first] == [status_of[f] for f in expected]

    async def test_faults_can_be_switched_off_to_recover(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Assigning ``state.faults`` at run time changes what the next requests get."""
        async with running_standin(StandinConfig(faults=FaultRates(p_503=1.0))) as standin:
            failing = await post(session, standin, [identify(1)])
            standin.state.faults = FaultRates()
            recovered = await post(session, standin, [identify(1)])
        assert (failing.status, recovered.status) == (503, 200)

    async def test_scripted_ok_suppresses_a_random_fault(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A scripted ``ok`` takes its request's turn, so a random fault cannot hit it."""
        async with running_standin(StandinConfig(faults=FaultRates(p_429=1.0))) as standin:
            standin.state.script(["ok"])
            first = await post(session, standin, [identify(1)])
            second = await post(session, standin, [identify(1)])
        assert (first.status, second.status) == (200, 429)

    def test_bad_fault_settings_are_refused(self) -> None:
        """Unknown scripted faults and probabilities summing over 1 raise ValueError."""
        with pytest.raises(ValueError, match="unknown fault"):
            StandinState().script(["504"])
        with pytest.raises(ValueError, match="sum to at most 1"):
            FaultRates(p_503=0.6, p_429=0.6)
        assert "500_after_import" in FAULT_NAMES


class TestRateLimit:
    async def test_over_budget_gets_429_then_recovers(self, session: aiohttp.ClientSession) -> None:
        """Past the events-per-second budget a request gets 429, and passes once time refills."""
        clock = FakeClock()
        config = StandinConfig(rate_limit_events_per_s=10)
        state = StandinState(config, clock=clock)
        async with running_standin(config, state=state) as standin:
            full = await post(session, standin, [identify(n) for n in range(10)])
            limited = await post(session, standin, [identify(10)])
            clock.now += 0.5
            half = await post(session, standin, [identify(n) for n in range(11, 16)])
            still = await post(session, standin, [identify(16)])
            clock.now += 1.0
            recovered = await post(session, standin, [identify(17)])
        assert [r.status for r in (full, limited, half, still, recovered)] == [
            200,
            429,
            200,
            429,
            200,
        ]
        assert limited.body["status"] == 0
        assert [r.rate_limited for r in state.requests] == [False, True, False, True, False]
        assert state.events_imported == 10 + 5 + 1

    async def test_request_larger_than_the_burst_borrows_and_must_repay(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A request bigger than one second's budget passes when full, then the debt holds."""
        clock = FakeClock()
        config = StandinConfig(rate_limit_events_per_s=10)
        state = StandinState(config, clock=clock)
        async with running_standin(config, state=state) as standin:
            big = await post(session, standin, [identify(n) for n in range(30)])
            clock.now += 2.0
            owed = await post(session, standin, [identify(30)])
            clock.now += 1.1
            repaid = await post(session, standin, [identify(31)])
        assert (big.status, owed.status, repaid.status) == (200, 429, 200)

    async def test_rate_limit_can_be_lifted_at_run_time(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Setting ``rate_limit_events_per_s`` to None lifts the limit at once."""
        clock = FakeClock()
        config = StandinConfig(rate_limit_events_per_s=1)
        state = StandinState(config, clock=clock)
        async with running_standin(config, state=state) as standin:
            await post(session, standin, [identify(1)])
            limited = await post(session, standin, [identify(2)])
            state.rate_limit_events_per_s = None
            lifted = await post(session, standin, [identify(2)])
        assert (limited.status, lifted.status) == (429, 200)


class TestStoreFile:
    async def test_accepted_events_are_appended_as_ndjson(
        self, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Each unique accepted event is one NDJSON line; a duplicate or a refusal adds none."""
        store = tmp_path / "imported.ndjson"
        async with running_standin(StandinConfig(store_path=store)) as standin:
            await post(session, standin, [identify(0), identify(1, time=5)])
            assert [json.loads(line) for line in store.read_text().splitlines()] == [identify(0)]
            await post(session, standin, [identify(0), identify(2)])
        lines = [json.loads(line) for line in store.read_text().splitlines()]
        assert lines == [identify(0), identify(2)]


class TestSummary:
    async def test_summary_counts_requests_statuses_and_events(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """``summary()`` adds up requests by status, faults, events and duplicates."""
        standin.state.script(["503"])
        for events in ([identify(1)], [identify(1), identify(2)], [identify(3, time=1)]):
            await post(session, standin, events)
        summary = standin.state.summary()
        assert summary["requests"] == 3
        assert summary["by_status"] == {"200": 1, "400": 1, "503": 1}
        assert summary["faults"] == {"503": 1}
        assert (summary["events_received"], summary["events_imported"]) == (3, 2)
        assert (summary["events_rejected"], summary["duplicates"]) == (1, 0)
        arrivals = [r.arrived_s for r in standin.state.requests]
        assert arrivals == sorted(arrivals)


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
async def test_serve_prints_url_and_credentials_and_stops_on_ctrl_c(
    session: aiohttp.ClientSession,
) -> None:
    """``serve`` prints one line with the URL and credentials, serves, and exits 0 on Ctrl-C."""
    code = "from backfill.standin import serve, StandinConfig\nserve(StandinConfig(), port=0)\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert "MIXPANEL_SERVICE_ACCOUNT_USERNAME=backfill-rehearsal" in line
        assert f"MIXPANEL_SERVICE_ACCOUNT_SECRET={DEFAULT_SERVICE_ACCOUNT[1]}" in line
        url = line.split("listening on ")[1].split()[0]
        async with session.post(
            url, json=[identify(1)], params=PARAMS, headers=SA_HEADER
        ) as response:
            assert response.status == 200
        child.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(child.communicate, timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "  events imported   1 unique" in out
    assert "Traceback" not in err


class TestRequestLog:
    async def test_each_request_is_one_line_with_status_counts_fault_and_credential_kind(
        self, session: aiohttp.ClientSession
    ) -> None:
        """``on_request`` sees each request once answered or dropped; its line says what came,
        how it was answered, the fault if any and the credential kind, never a secret."""
        at = datetime(2026, 11, 29, 14, 3, 7, 412000)
        lines: list[str] = []
        config = StandinConfig(api_secrets=frozenset({"legacy-secret-456"}))
        async with running_standin(
            config, on_request=lambda r: lines.append(request_line(r, at))
        ) as standin:
            standin.state.script(["503", "drop"])
            await post(session, standin, [identify(1)])
            with pytest.raises(aiohttp.ServerDisconnectedError, match="Server disconnected"):
                await post(session, standin, [identify(1)])
            await post(session, standin, [identify(1), identify(2, time=5)])
            await post(session, standin, [identify(3)], auth=("legacy-secret-456", ""))
            await post(session, standin, [identify(4)], auth=(DEFAULT_SERVICE_ACCOUNT[0], "guess"))
        account = f'auth="service-account {DEFAULT_SERVICE_ACCOUNT[0]}"'
        prefix = "2026-11-29T14:03:07.412 POST /import"
        expected = [
            f"{prefix} status=503 events=1 imported=0 refused=0 fault=503 {account}",
            f"{prefix} status=dropped events=1 imported=0 refused=0 fault=drop {account}",
            f"{prefix} status=400 events=2 imported=1 refused=1 {account}",
            f'{prefix} status=200 events=1 imported=1 refused=0 auth="api-secret"',
            f"{prefix} status=401 events=1 imported=0 refused=0 {account}",
        ]
        assert [line.rsplit(" ms=", 1)[0] for line in lines] == expected
        assert all(re.search(r" ms=\d+$", line) for line in lines)
        for secret in ("legacy-secret-456", "guess", DEFAULT_SERVICE_ACCOUNT[1]):
            assert secret not in "\n".join(lines)

    async def test_a_rate_limited_request_says_so(self, session: aiohttp.ClientSession) -> None:
        """A 429 from the rate limit (not an injected fault) is marked ``rate_limited=true``."""
        lines: list[str] = []
        config = StandinConfig(rate_limit_events_per_s=1)
        state = StandinState(config, clock=FakeClock())
        async with running_standin(
            config, state=state, on_request=lambda r: lines.append(request_line(r, datetime.now()))
        ) as standin:
            await post(session, standin, [identify(1)])
            await post(session, standin, [identify(2)])
        assert "rate_limited" not in lines[0]
        assert " status=429 " in lines[1]
        assert " rate_limited=true " in lines[1]


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
async def test_backfill_serve_logs_one_line_per_request_and_what_merged(
    session: aiohttp.ClientSession,
) -> None:
    """``backfill serve`` prints the banner, one line per request (no secret), and at Ctrl-C
    the summary with what merged and what did not."""
    child = subprocess.Popen(
        [sys.executable, "-m", "backfill", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MIXPANEL_")},
            "PYTHONUNBUFFERED": "1",
        },
    )
    try:
        assert child.stdout is not None
        banner_line = await asyncio.to_thread(child.stdout.readline)
        url = banner_line.split("listening on ")[1].split()[0]
        not_uuid = identify(2, **{"$anon_id": "not-a-uuid"})
        for events, auth in (
            ([identify(1), not_uuid], SA_HEADER),
            ([identify(3)], {"Authorization": aiohttp.encode_basic_auth("x", "guess-789")}),
        ):
            async with session.post(url, json=events, params=PARAMS, headers=auth) as response:
                await response.read()
        child.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(child.communicate, timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    lines = out.splitlines()
    at = lines.index("backfill stand-in stopped:")
    requests, stopped = lines[:at], lines[at + 1 :]  # the banner was read above
    assert len(requests) == 2, out
    assert " status=200 events=2 imported=2 refused=0 " in requests[0]
    assert f'auth="service-account {DEFAULT_SERVICE_ACCOUNT[0]}"' in requests[0]
    assert ' status=401 events=1 imported=0 refused=0 auth="unknown"' in requests[1]
    assert DEFAULT_SERVICE_ACCOUNT[1] not in out
    assert "guess-789" not in out
    assert "  requests          2 (200 1, 401 1)" in stopped
    assert "  merged            1 (original ID merge)" in stopped
    assert "  not merged        1 (not uuid4)" in stopped
    assert not any(line.lstrip().startswith("{") for line in stopped)
