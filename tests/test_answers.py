"""Only Mixpanel's own answer settles a request: every other answer stops the run, rows not done.

Answers Mixpanel gives come from the stand-in (redirect, HTML, Simplified refusal faults);
answers only a broken or hostile server gives come from a plain aiohttp handler on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from runkit import encode, make_pairs, send_batches, serving

from backfill.errors import (
    RequestRefused,
    RetriesExhausted,
    UnexpectedAnswer,
    Unreachable,
)
from backfill.send import sender as send_module
from backfill.send.answers import retry_after_seconds
from backfill.send.events import Batch
from backfill.standin import FaultRates, StandinConfig, running_standin


def batches(n: int, size: int, seed: int = 30) -> list[Batch]:
    """``n`` valid pairs cut into batches of ``size``."""
    return encode(make_pairs(n, seed=seed), size)


def mixpanel_json(http_status: int, **body: Any) -> web.Response:
    """A JSON answer with the given HTTP status and fields."""
    return web.json_response(body, status=http_status)


# --- the stand-in's faults ------------------------------------------------------------------


@pytest.mark.parametrize("code", ["302", "307"])
async def test_redirect_is_never_followed_and_stops(code: str) -> None:
    """A 3xx stops the run naming its Location; the redirect target never sees a request."""

    async def target(request: web.Request) -> web.Response:
        return mixpanel_json(200, code=200, num_records_imported=10**6, status="OK")

    async with serving(target) as elsewhere:
        config = StandinConfig(redirect_to=elsewhere.import_url)
        async with running_standin(config) as standin:
            standin.state.always = code  # type: ignore[assignment]
            with pytest.raises(UnexpectedAnswer) as info:
                await send_batches(standin.import_url, batches(30, 10), concurrency=2)
            state = standin.state
        assert elsewhere.requests == [], "a redirect target must never be contacted"
    message = str(info.value)
    assert f"HTTP {code}" in message
    assert elsewhere.import_url in message
    assert "--api-url" in message
    assert 1 <= state.requests_count <= 2
    assert not state.store


async def test_200_that_is_not_mixpanels_json_settles_nothing() -> None:
    """A 200 HTML page (a captive portal, a wrong host) stops the run; nothing counts."""
    async with running_standin() as standin:
        standin.state.script(["200_not_json"])
        settled: list[Any] = []
        with pytest.raises(UnexpectedAnswer, match="num_records_imported") as info:
            settled, _ = await send_batches(standin.import_url, batches(10, 10), concurrency=1)
    assert "Welcome" in str(info.value), "the message quotes what came back"
    assert settled == []


async def test_every_request_carries_strict_and_ip_0() -> None:
    """Every request asks for strict mode and no geolocation (ip=0), retries included."""
    async with running_standin() as standin:
        standin.state.script(["429", "503"])
        await send_batches(standin.import_url, batches(50, 10))
        queries = [r.query for r in standin.state.requests]
    assert len(queries) == 7
    assert all(q.get("ip") == "0" and q.get("strict") == "1" for q in queries)


async def test_mixpanels_real_429_body_is_retried() -> None:
    """The 429 live probes saw (no code, status 0, no Retry-After) is retried like any 429."""
    async with running_standin() as standin:
        standin.state.script(["429"])
        settled, stats = await send_batches(standin.import_url, batches(5, 10))
        first = standin.state.requests[0]
    assert first.status == 429
    assert stats.retries == {"429": 1}
    assert settled[0].imported == 5


async def test_a_fatal_answer_stops_the_pool_and_lets_in_flight_requests_settle() -> None:
    """After a whole-request refusal no new batch is taken; requests in flight still settle."""
    async with running_standin(StandinConfig()) as standin:
        standin.state.script(["400_whole", "slow", "slow"])
        standin.state.faults = FaultRates(slow_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RequestRefused):
            await send_batches(standin.import_url, batches(200, 10), concurrency=3, rate_per_s=1e6)
        took = asyncio.get_running_loop().time() - started
        state = standin.state
    assert state.requests_count == 3, "one refused, two in flight, none taken after"
    assert len(state.store) == 20, "the two in flight were imported"
    assert took >= 0.3


# --- answers only a broken server gives -----------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [{"index": True}, {"index": "3"}, {"index": 99}, {"index": -1}, {"insert_id": 7}, None, []],
)
async def test_failed_record_of_odd_type_names_no_record_and_refuses_the_request(
    record: Any,
) -> None:
    """``{"index": true}`` and other odd entries name no record: stop, nothing refused."""

    async def answer(request: web.Request) -> web.Response:
        return mixpanel_json(
            400, code=400, error="bad", failed_records=[record], num_records_imported=4
        )

    async with serving(answer) as server:
        with pytest.raises(RequestRefused):
            await send_batches(server.import_url, batches(5, 10), concurrency=1)
        assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "imported", "failed"),
    [
        (200, 9, []),  # a 200 importing fewer than were sent
        (200, 11, []),  # or more
        (400, 10, [{"index": 0, "field": "properties.time", "message": "bad"}]),
        (400, 3, [{"index": 0, "message": "bad"}]),
    ],
)
async def test_answer_whose_numbers_do_not_add_up_settles_nothing(
    status: int, imported: int, failed: list[dict[str, Any]]
) -> None:
    """num_records_imported + records refused by name must equal the request: else stop."""

    async def answer(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"code": status, "num_records_imported": imported}
        if failed:
            body["failed_records"] = failed
        return mixpanel_json(status, **body)

    async with serving(answer) as server:
        settled: list[Any] = []
        with pytest.raises(UnexpectedAnswer, match="does not add up") as info:
            settled, _ = await send_batches(server.import_url, batches(10, 10), concurrency=1)
    assert f"num_records_imported {imported}" in str(info.value)
    assert "10 records sent" in str(info.value)
    assert settled == []


async def test_answer_without_num_records_imported_is_not_mixpanels() -> None:
    """A 200 JSON body without num_records_imported counts nothing and stops."""

    async def answer(request: web.Request) -> web.Response:
        return mixpanel_json(200, status="OK")

    async with serving(answer) as server:
        with pytest.raises(UnexpectedAnswer, match="not Mixpanel's"):
            await send_batches(server.import_url, batches(3, 10), concurrency=1)


async def test_huge_answer_is_not_read_to_its_end() -> None:
    """An answer over the cap is not Mixpanel's: the sender stops reading and stops the run."""
    sent = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        block = b" " * (1 << 20)
        try:
            for _ in range(200):  # 200 MiB, far past the cap
                await response.write(block)
                sent += len(block)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async with serving(answer) as server:
        with pytest.raises(UnexpectedAnswer):
            await send_batches(server.import_url, batches(3, 10), concurrency=1)
    assert sent < 100 << 20, "the client hung up long before the end"


# --- transport faults ---------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """Retry-After: delta-seconds or an HTTP date (seconds from now); junk is ignored."""
    now = time.time()
    later = datetime.fromtimestamp(now, UTC) + timedelta(seconds=90)
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(format_datetime(later, usegmt=True), now=now) == pytest.approx(
        90, abs=1
    )
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    for junk in (None, "soon", "-3", "nan", ""):
        assert retry_after_seconds(junk) is None


async def test_canary_to_a_name_that_does_not_resolve_stops_at_once() -> None:
    """At the canary, an unresolvable host ends the run after one try, naming the URL."""
    url = "http://backfill-test.invalid:8080/import"
    one = batches(1, 1)[0]
    started = time.monotonic()
    with pytest.raises(Unreachable) as info:
        await send_batches(url, [], canary=one, max_attempts=8, retry_base_s=1.0)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert url in message
    assert "--api-url" in message
    assert "--region" in message


async def test_unresolvable_name_after_the_canary_is_retried() -> None:
    """Past the canary a name failing to resolve is a blip worth retrying, then exhausted."""
    url = "http://backfill-test.invalid:8080/import"
    with pytest.raises(RetriesExhausted) as info:
        await send_batches(url, batches(2, 10), max_attempts=3, concurrency=1)
    assert "cannot resolve" in str(info.value)


async def test_canary_to_a_closed_port_stops_within_its_budget(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    """A refused connection at the canary is retried for a short budget, then Unreachable."""
    monkeypatch.setattr(send_module, "CANARY_CONNECT_BUDGET_S", 0.5)
    url = f"http://127.0.0.1:{closed_port}/import"
    started = time.monotonic()
    with pytest.raises(Unreachable) as info:
        await send_batches(url, [], canary=batches(1, 1)[0], max_attempts=100, retry_base_s=0.05)
    took = time.monotonic() - started
    assert 0.5 <= took < 3
    assert url in str(info.value)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (needs the openssl command)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        pytest.skip(f"openssl cannot make a test certificate: {e}")
    return cert, key


@asynccontextmanager
async def tls_server(cert: Path, key: Path) -> AsyncIterator[tuple[str, list[int]]]:
    """An https server on 127.0.0.1 with an untrusted certificate; counts requests it answers."""
    answered: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        answered.append(1)
        return web.json_response({"code": 200, "num_records_imported": 1, "status": "OK"})

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/import", answered
    finally:
        await runner.cleanup()


async def test_untrusted_certificate_stops_at_once(self_signed: tuple[Path, Path]) -> None:
    """A certificate that fails verification stops the run after one try; nothing is sent."""
    async with tls_server(*self_signed) as (url, answered):
        with pytest.raises(Unreachable, match="certificate") as info:
            await send_batches(url, batches(5, 10), max_attempts=8, retry_base_s=1.0)
    assert answered == []
    assert "SSL_CERT_FILE" in str(info.value)
