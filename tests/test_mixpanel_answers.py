"""The sender against the real stand-in on 127.0.0.1: every answer path, retries that really wait.

Timing assertions are lower bounds only (a busy machine can only make things slower).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace
from typing import Any

import pytest
from runkit import GOOD, T_MS, encode, make_pairs, pairs, send_batches, uuid4s

from backfill.config.settings import Credentials
from backfill.errors import (
    AuthRefused,
    IdentityEventsRefused,
    RequestRefused,
    RetriesExhausted,
    UnexpectedAnswer,
)
from backfill.mixpanel import IdMerge
from backfill.send import sender as send_module
from backfill.send.answers import Settled
from backfill.send.events import Batch, Encoder, gzip_bytes
from backfill.send.sender import SendConfig, Sender, SendStats
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
async def test_400_failed_records_map_to_source_rows(key: str) -> None:
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
async def test_refusals_named_by_index_alone_map_to_their_rows(key: str | None) -> None:
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
        with pytest.raises(IdentityEventsRefused) as info:
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
        with pytest.raises(AuthRefused) as info:
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
    cfg = SendConfig(import_url="https://api.mixpanel.com/import", credentials=GOOD, project_id="1")
    assert cfg.retry_base_s == 2.0
    assert cfg.max_attempts == 8


def test_default_concurrency_adapts_from_ten_up_to_twenty() -> None:
    """Unset, concurrency adapts: the gate starts at SPEC's 10 and may open up to 20."""
    cfg = SendConfig(import_url="https://api.mixpanel.com/import", credentials=GOOD, project_id="1")
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
