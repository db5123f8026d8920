"""Every answer of ``/import`` and what it settles: only Mixpanel's own answer settles a request.

The sender runs against the real stand-in on 127.0.0.1 (every answer path Mixpanel gives,
retries that really wait); answers only a broken or hostile server gives come from a plain
aiohttp handler on 127.0.0.1, and every such answer stops the run, its rows not done.
Timing assertions are lower bounds only (a busy machine can only make things slower).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web
from runkit import (
    GOOD,
    T_MS,
    encode,
    make_pairs,
    pairs,
    send_batches,
    send_config,
    serving,
    uuid4s,
)

from backfill.config.settings import Credentials
from backfill.errors import (
    AuthRefused,
    IdentityEventsRefused,
    RequestRefused,
    RetriesExhausted,
    UnexpectedAnswer,
    Unreachable,
)
from backfill.mixpanel import IdMerge
from backfill.send import sender as send_module
from backfill.send.answers import Answer, Settled, interpret, retry_after_seconds
from backfill.send.events import Batch, Encoder, gzip_bytes
from backfill.send.sender import Sender, SendStats
from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    FaultRates,
    Standin,
    StandinConfig,
    running_standin,
)

CAUSE = {
    "429": "429",
    "503": "5xx",
    "408": "5xx",
    "500_after_import": "5xx",
    "drop": "connection",
    "drop_after_import": "connection",
}


async def send(
    standin: Standin,
    batches: list[Batch],
    *,
    credentials: Credentials = GOOD,
    encoder: Encoder | None = None,
    **config: Any,
) -> tuple[list[Settled], SendStats]:
    """Send ``batches`` with a Sender on the stand-in; what settled, and the stats."""
    return await send_batches(
        standin.import_url, batches, credentials=credentials, encoder=encoder, **config
    )


def pair_set(batches: list[Batch]) -> set[tuple[str, str]]:
    """The (anon, identified) pairs of some batches."""
    out: set[tuple[str, str]] = set()
    for b in batches:
        out |= set(zip(b.pairs.anon.to_pylist(), b.pairs.identified.to_pylist(), strict=True))
    return out


def arrivals(standin: Standin) -> list[float]:
    """Arrival times of every request, in arrival order."""
    return [r.arrived_s for r in standin.state.requests]


# --- 200 ---------------------------------------------------------------------------------------


async def test_200_imports_every_event_once() -> None:
    """Plain 200s: every batch is settled as imported, one request each, all pairs stored."""
    batches = encode(make_pairs(250), 100)
    async with running_standin() as standin:
        settled, stats = await send(standin, batches)
        state = standin.state
    assert sorted(len(s.batch) for s in settled) == [50, 100, 100]
    assert all(s.imported == len(s.batch) and not s.refused for s in settled)
    assert stats.events_imported == 250
    assert stats.events_refused == 0
    assert stats.requests == 3
    assert not stats.retries
    assert state.statuses() == {200: 3}
    assert state.identify_pairs() == pair_set(batches)
    assert all(r.auth == f"service-account {DEFAULT_SERVICE_ACCOUNT[0]}" for r in state.requests)
    assert not state.conflicting_keys()
    assert {k.time for k in state.store} == {T_MS}


async def test_workers_never_exceed_concurrency() -> None:
    """At most ``concurrency`` requests are in flight at once."""
    batches = encode(make_pairs(200), 10)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=0.02))
    async with running_standin(config) as standin:
        await send(standin, batches, concurrency=3)
        assert standin.state.requests_count == 20
        assert standin.state.max_in_flight <= 3


# --- 400 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["$insert_id", "insert_id"])
async def test_400_failed_records_map_to_source_rows(
    key: Literal["$insert_id", "insert_id"],
) -> None:
    """400 + failed_records: refusals map to their source rows, the rest count, nothing resent."""
    p = make_pairs(50, seed=3, first_row=101, step=3)  # rows 101, 104, ..., 248
    refused_at = [0, 17, 49]
    refused_ids = {p.identified[i].as_py() for i in refused_at}
    config = StandinConfig(refuse_distinct_ids=frozenset(refused_ids), failed_records_key=key)
    async with running_standin(config) as standin:
        settled, stats = await send(standin, encode(p, 2000))
        state = standin.state
    assert len(settled) == 1
    s = settled[0]
    assert s.imported == 47
    assert [r.row for r in s.refused] == [101 + 3 * i for i in refused_at]
    for r, i in zip(s.refused, refused_at, strict=True):
        assert (r.anon, r.identified) == (p.anon[i].as_py(), p.identified[i].as_py())
        assert "refused" in r.message
    assert stats.events_imported == 47
    assert stats.events_refused == 3
    assert state.requests_count == 1, "a 400 is never resent"
    assert state.statuses() == {400: 1}
    assert len(state.store) == 47
    assert not {u for _, u in state.identify_pairs()} & refused_ids


async def test_400_without_failed_records_refuses_the_request_and_stops() -> None:
    """A 400 naming no record is RequestRefused quoting Mixpanel: nothing settled, not resent."""
    good = encode(make_pairs(5, seed=4), 2000)[0]
    bad = replace(good, body=gzip_bytes(b"[{not json"), json_bytes=10)
    async with running_standin() as standin:
        settled: list[Settled] = []
        with pytest.raises(RequestRefused, match="invalid JSON") as info:
            settled, _ = await send(standin, [bad, good], concurrency=1)
        state = standin.state
    assert not isinstance(info.value, IdentityEventsRefused)
    assert settled == []
    assert state.requests_count == 1
    assert state.statuses() == {400: 1}
    assert not state.store


@pytest.mark.parametrize("key", ["$insert_id", "insert_id", None])
async def test_refusals_named_by_index_alone_map_to_their_rows(
    key: Literal["$insert_id", "insert_id"] | None,
) -> None:
    """failed_records naming a record by index only (no insert id key) still maps to its row."""
    p = make_pairs(30, seed=21, first_row=11)
    refused_ids = {p.identified[i].as_py() for i in (2, 29)}
    config = StandinConfig(refuse_distinct_ids=frozenset(refused_ids), failed_records_key=key)
    async with running_standin(config) as standin:
        settled, stats = await send(standin, encode(p, 2000))
    (s,) = settled
    assert [r.row for r in s.refused] == [13, 40]
    assert s.imported == 28 == stats.events_imported
    assert all("properties.distinct_id" in r.message for r in s.refused)


async def test_simplified_project_refusal_is_identity_events_refused() -> None:
    """A Simplified ID Merge project's plain-string refusal stops with its own message."""
    batches = encode(make_pairs(40, seed=22), 10)
    async with running_standin(StandinConfig(id_merge=IdMerge.SIMPLIFIED)) as standin:
        settled: list[Settled] = []
        with pytest.raises(IdentityEventsRefused, match="project uses Simplified ID Merge") as info:
            settled, _ = await send(standin, batches, concurrency=2)
        state = standin.state
    message = str(info.value)
    assert "Simplified ID Merge" in message
    assert "--id-merge simplified" in message
    assert "identity events are not allowed" in message
    assert settled == []
    assert 1 <= state.requests_count <= 2, "the first refusal stops every worker"
    assert not state.store


# --- 413 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_events", "max_bytes"])
async def test_413_splits_until_every_event_arrives(limit: str) -> None:
    """413 (too many events, or too many bytes) halves the batch until each part fits."""
    p = make_pairs(100, seed=5)
    batch = replace(encode(p, 2000)[0], span=(1, 100))
    config = (
        StandinConfig(max_events=30)
        if limit == "max_events"
        else StandinConfig(max_bytes=batch.json_bytes // 3)
    )
    async with running_standin(config) as standin:
        settled, stats = await send(standin, [batch])
        state = standin.state
    assert state.identify_pairs() == pair_set([batch])
    assert not state.conflicting_keys()
    assert 413 in state.statuses()
    assert stats.splits >= 2
    assert sum(s.imported for s in settled) == 100 == stats.events_imported
    assert all(not s.refused for s in settled)
    ok = [r for r in state.requests if r.status == 200]
    assert sum(r.events for r in ok) == 100
    assert all(
        r.events <= config.max_events and r.bytes_uncompressed <= config.max_bytes for r in ok
    )
    # The settled parts' spans tile the original span.
    spans = sorted(s.batch.span for s in settled)
    assert spans[0][0] == 1
    assert spans[-1][1] == 100
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))


async def test_413_on_a_single_event_stops_without_settling() -> None:
    """A 413 for one small event is not Mixpanel's limit: stop, that event not settled."""
    p = pairs(uuid4s(2, 6), ["a", "b" * 200])
    batch = encode(p, 2000)[0]
    async with running_standin(StandinConfig(max_bytes=250)) as standin:
        with pytest.raises(UnexpectedAnswer, match="413") as info:
            await send(standin, [batch], concurrency=1)
    assert "single event" in str(info.value)
    assert standin.state.identify_pairs() == {(p.anon[0].as_py(), "a")}, "the half that fit"


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault", ["429", "503", "408", "drop", "500_after_import", "drop_after_import"]
)
async def test_retryable_fault_is_retried_as_the_identical_event(fault: str) -> None:
    """429/503/408/drop/500-after-import are retried; the pairs arrive once, identical."""
    batch = encode(make_pairs(20, seed=7), 2000)[0]
    async with running_standin() as standin:
        standin.state.script([fault])
        settled, stats = await send(standin, [batch])
        state = standin.state
    first, second = state.requests
    assert first.fault == fault
    assert second.status == 200
    assert first.insert_ids == second.insert_ids == batch.insert_ids.to_pylist()
    assert first.bytes_uncompressed == second.bytes_uncompressed == batch.json_bytes
    assert state.identify_pairs() == pair_set([batch])
    assert len(state.store) == 20
    assert all(len(forms) == 1 for forms in state.forms.values()), state.conflicting_keys()
    assert dict(stats.retries) == {CAUSE[fault]: 1}
    assert stats.events_imported == 20
    assert len(settled) == 1


async def test_timeout_is_retried_as_the_identical_event() -> None:
    """A request slower than --timeout is retried (cause ``timeout``); the pair stays identical."""
    batch = encode(make_pairs(5, seed=8), 2000)[0]
    config = StandinConfig(faults=FaultRates(slow_s=0.6))
    async with running_standin(config) as standin:
        standin.state.script(["slow"])
        settled, stats = await send(standin, [batch], timeout_s=0.2)
        await asyncio.sleep(0.6)  # let the abandoned slow request finish server-side
        state = standin.state
    assert dict(stats.retries) == {"timeout": 1}
    assert settled[0].imported == 5
    assert state.identify_pairs() == pair_set([batch])
    assert all(len(forms) == 1 for forms in state.forms.values())


async def test_max_attempts_exhausted_raises_retries_exhausted() -> None:
    """A batch failing max_attempts times aborts with RetriesExhausted, nothing settled."""
    batch = encode(make_pairs(5, seed=9, first_row=7), 2000)[0]
    async with running_standin() as standin:
        standin.state.script(["503", "429", "503", "ok"])
        settled: list[Settled] = []
        with pytest.raises(RetriesExhausted, match="rows 7-11"):
            settled, _ = await send(standin, [batch], max_attempts=3)
        assert standin.state.requests_count == 3
        assert standin.state.pending_script == ("ok",)
    assert settled == []


@pytest.mark.parametrize("mode", ["wrong_secret", "forbidden"])
async def test_auth_refused_stops_after_one_request_per_worker(mode: str) -> None:
    """401 (or 403) raises AuthRefused; at most one request per worker reaches the server."""
    batches = encode(make_pairs(300, seed=10), 10)
    wrong = Credentials(DEFAULT_SERVICE_ACCOUNT[0], "not-the-secret-4b1d")
    config = StandinConfig(forbidden=mode == "forbidden")
    credentials = wrong if mode == "wrong_secret" else GOOD
    async with running_standin(config) as standin:
        with pytest.raises(AuthRefused, match="Mixpanel refused the credentials") as info:
            await send(standin, batches, credentials=credentials, concurrency=3)
        state = standin.state
        assert 1 <= state.requests_count <= 3
        assert set(state.statuses()) == {401 if mode == "wrong_secret" else 403}
        assert not state.store
    assert "refused the credentials" in str(info.value)
    assert "not-the-secret-4b1d" not in str(info.value)


# --- waiting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "503"])
async def test_retry_after_is_honoured(fault: str) -> None:
    """With Retry-After, the retry arrives at least that long after the refused request."""
    retry_after = 0.4  # well above the backoff at base 0.01 s (at most 0.035 s)
    batch = encode(make_pairs(3, seed=11), 2000)[0]
    config = StandinConfig(faults=FaultRates(retry_after_s=retry_after))
    async with running_standin(config) as standin:
        standin.state.script([fault])
        await send(standin, [batch], retry_base_s=0.01)
        first, second = standin.state.requests
    assert first.status == int(fault)
    assert second.status == 200
    assert second.arrived_s - first.arrived_s >= retry_after


async def test_backoff_without_retry_after_waits_at_least_its_lower_bound() -> None:
    """Without Retry-After, retry n waits at least base*2**(n-1) + 0.5*base (jitter floor)."""
    base = 0.05
    batch = encode(make_pairs(3, seed=12), 2000)[0]
    async with running_standin() as standin:
        standin.state.script(["503", "429", "drop", "500_after_import"])
        _, stats = await send(standin, [batch], retry_base_s=base)
        times = arrivals(standin)
        assert [r.fault for r in standin.state.requests][:4] == [
            "503",
            "429",
            "drop",
            "500_after_import",
        ]
    assert len(times) == 5
    for n, (a, b) in enumerate(itertools.pairwise(times), start=1):
        assert b - a >= base * 2 ** (n - 1) + 0.5 * base, f"retry {n} came too soon"
    assert dict(stats.retries) == {"5xx": 2, "429": 1, "connection": 1}


def test_default_backoff_base_is_mixpanels_two_seconds() -> None:
    """The default first pause is Mixpanel's 2 s (SPEC: from 2 s doubling to 60 s)."""
    cfg = send_config("https://api.mixpanel.com/import", GOOD)
    assert cfg.retry_base_s == 2.0
    assert cfg.max_attempts == 8


def test_default_concurrency_adapts_from_ten_up_to_twenty() -> None:
    """Unset, concurrency adapts: the gate starts at SPEC's 10 and may open up to 20."""
    cfg = send_config("https://api.mixpanel.com/import", GOOD)
    assert cfg.concurrency is None
    sender = Sender(cfg, Encoder(token=None, batch_size=cfg.batch_size), lambda settled: None)
    assert sender.pacer.adaptive
    assert sender.pacer.gate.limit == 10
    assert sender.workers == 20


async def test_rate_limiter_holds_the_event_rate() -> None:
    """At 2000 events/s, 20 batches of 100 cannot all arrive sooner than (events - bucket)/rate."""
    rate, batch_size, n = 2000.0, 100, 2000
    batches = encode(make_pairs(n, seed=13), batch_size)
    async with running_standin() as standin:
        t0 = time.monotonic()  # the stand-in's clock is time.monotonic too
        await send(standin, batches, rate_per_s=rate, batch_size=batch_size, concurrency=10)
        times = arrivals(standin)
        assert standin.state.events_imported == n
    bucket = max(batch_size, rate / 10)  # the sender's burst: a tenth of a second, >= one batch
    assert max(times) - t0 >= (n - bucket) / rate - 1e-3


async def test_a_long_retry_pause_is_visible_while_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Retry-After pause of at least LONG_WAIT_S shows in ``waiting_s``, counting down."""
    monkeypatch.setattr(send_module, "LONG_WAIT_S", 0.3)
    batch = encode(make_pairs(3, seed=40), 2000)[0]
    seen: list[float | None] = []
    senders: list[Any] = []

    async def watch() -> None:
        while not senders:
            await asyncio.sleep(0.01)
        for _ in range(40):
            seen.append(senders[0].waiting_s)
            await asyncio.sleep(0.025)

    config = StandinConfig(faults=FaultRates(retry_after_s=0.8))
    async with running_standin(config) as standin:
        standin.state.script(["429"])
        watcher = asyncio.create_task(watch())
        await send(standin, [batch], on_sender=senders.append)
        await watcher
    waits = [w for w in seen if w is not None]
    assert waits, "the pause was shown"
    assert max(waits) <= 0.8
    assert waits == sorted(waits, reverse=True), "it counts down"
    assert seen[-1] is None, "and is gone once the retry went out"


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
            with pytest.raises(UnexpectedAnswer, match="backfill never follows redirects") as info:
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
        with pytest.raises(RequestRefused, match=r"Mixpanel refused the whole request \(HTTP 400"):
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
        with pytest.raises(RequestRefused, match=r"Mixpanel refused the whole request \(HTTP 400"):
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


def answered(batch: Batch, status: int, **body: Any) -> Settled:
    """What ``interpret`` makes of this JSON answer to ``batch``."""
    return interpret(batch, Answer(status, json.dumps(body).encode()), "http://mp/import")


def test_a_200_naming_refused_records_settles_them_as_refusals() -> None:
    """A 200 whose failed_records names records: those are refused, the rest imported."""
    (batch,) = batches(10, 10)
    first_id = batch.insert_ids[3].as_py()
    failed = [{"$insert_id": first_id, "message": "m1"}, {"index": 7, "message": "m2"}]
    settled = answered(batch, 200, code=200, num_records_imported=8, failed_records=failed)
    assert settled.imported == 8
    assert [r.row for r in settled.refused] == [int(batch.pairs.rows[3]), int(batch.pairs.rows[7])]
    assert [r.message for r in settled.refused] == ["m1", "m2"]


@pytest.mark.parametrize(
    "failed",
    [
        [{"index": 0, "message": "bad"}],  # named, yet counted imported too: 10 + 1 != 10
        ["some records were refused"],  # a refusal that names no record
        [{"$insert_id": "not-of-this-batch", "index": 0}],  # another request's record
    ],
)
def test_a_200_that_refuses_without_adding_up_stops(failed: list[Any]) -> None:
    """A self-contradictory 200 (refusals beside all-imported, or unnamed ones) settles nothing."""
    (batch,) = batches(10, 10)
    with pytest.raises(UnexpectedAnswer, match=r"does not add up|does not name"):
        answered(batch, 200, code=200, num_records_imported=10, failed_records=failed)


@pytest.mark.parametrize("key", ["$insert_id", "insert_id"])
def test_a_refusal_naming_an_insert_id_not_in_the_batch_does_not_trust_its_index(
    key: str,
) -> None:
    """An unknown insert id beside a valid index names no record: the 400 refuses the request."""
    (batch,) = batches(10, 10)
    failed = [{key: "0" * 32, "index": 2, "message": "bad"}]
    with pytest.raises(RequestRefused, match="refused the whole request"):
        answered(batch, 400, code=400, num_records_imported=9, failed_records=failed)
    # A known insert id wins over a wrong index.
    known = [{key: batch.insert_ids[5].as_py(), "index": 2, "message": "bad"}]
    settled = answered(batch, 400, code=400, num_records_imported=9, failed_records=known)
    assert [r.row for r in settled.refused] == [int(batch.pairs.rows[5])]


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
        with pytest.raises(UnexpectedAnswer, match="without Mixpanel's num_records_imported"):
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
    with pytest.raises(Unreachable, match=r"reach http://backfill-test\.invalid:8080") as info:
        await send_batches(url, [], canary=one, max_attempts=8, retry_base_s=1.0)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert url in message
    assert "--api-url" in message
    assert "--region" in message


async def test_unresolvable_name_after_the_canary_is_retried() -> None:
    """Past the canary a name failing to resolve is a blip worth retrying, then exhausted."""
    url = "http://backfill-test.invalid:8080/import"
    with pytest.raises(RetriesExhausted, match="failed 3 times, last with cannot resolve") as info:
        await send_batches(url, batches(2, 10), max_attempts=3, concurrency=1)
    assert "cannot resolve" in str(info.value)


async def test_canary_to_a_closed_port_stops_within_its_budget(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    """A refused connection at the canary is retried for a short budget, then Unreachable."""
    monkeypatch.setattr(send_module, "CANARY_CONNECT_BUDGET_S", 0.5)
    url = f"http://127.0.0.1:{closed_port}/import"
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"cannot connect to 127\.0\.0\.1") as info:
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
