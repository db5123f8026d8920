"""Pacing: the bucket's rate under 429s, the gate of requests in flight, and both against the
real stand-in on 127.0.0.1.

The first tests drive a ``Pacer`` with a hand-held clock (what it decides from what answers, at
what times); the limiter and gate tests use the real event loop; the rest send real requests.
Timing assertions are lower bounds or generous invariants (a busy machine only slows things).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from runkit import (
    STANDIN_CREDENTIALS,
    clean_env,
    encode,
    make_pairs,
    run_cli,
    send_batches,
    uuid4s,
    write_pairs,
)

from backfill.send.pacing import InFlight, PacedLimiter, Pacer, PacingRules
from backfill.send.sender import Sender
from backfill.standin import (
    FaultRates,
    StandinConfig,
    running_standin,
)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pacer(clock: Clock, rate: float = 10_000.0, **rules: Any) -> Pacer:
    """An adaptive Pacer for batches of 1000 events, on ``clock``."""
    return Pacer(rate, 1000, None, PacingRules(**rules), clock=clock)


# --- the rate under 429s ------------------------------------------------------------------------


async def test_a_wave_of_429s_sent_before_a_decrease_counts_once() -> None:
    """Requests sent at the old rate that all answer 429 lower the rate once, by 0.7."""
    clock = Clock()
    p = pacer(clock)
    sent = [clock.now + i * 0.01 for i in range(8)]
    clock.now += 1.0
    for t in sent:
        p.answered(t, 1000, 429)
        clock.now += 0.2  # the wave's answers spread over 1.6 s, past the minimum interval
    assert p.lowered == 1
    assert p.rate_per_s == pytest.approx(7_000.0)
    assert p.limiter.rate_per_s == pytest.approx(7_000.0)


async def test_a_429_to_a_request_paced_at_the_new_rate_lowers_it_again() -> None:
    """Once the interval has passed, a 429 to a request sent after the decrease lowers again."""
    clock = Clock()
    p = pacer(clock)
    p.answered(clock.now - 0.1, 1000, 429)
    first = clock.now
    clock.now += 0.1
    p.answered(first + 0.05, 1000, 429)  # sent after the decrease, but within 0.5 s of it
    assert p.lowered == 1
    clock.now = first + 0.6
    p.answered(first + 0.3, 1000, 429)
    assert p.lowered == 2
    assert p.rate_per_s == pytest.approx(10_000.0 * 0.7 * 0.7)


async def test_recovery_adds_five_percent_of_rate_per_calm_step_never_above_rate() -> None:
    """Each 2 s without a 429 adds 5% of --rate; a 429 restarts the count; --rate is the cap."""
    clock = Clock()
    p = pacer(clock)
    p.answered(clock.now, 1000, 429)
    assert p.rate_per_s == pytest.approx(7_000.0)
    clock.now += 1.9
    p.answered(clock.now - 0.5, 1000, 200)
    assert p.rate_per_s == pytest.approx(7_000.0), "not a whole step yet"
    clock.now += 0.2
    p.answered(clock.now - 0.5, 1000, 200)
    assert p.rate_per_s == pytest.approx(7_500.0)
    p.answered(99.9, 1000, 429)  # sent before the decrease at 100: no new decrease
    clock.now += 3.9
    p.answered(clock.now - 0.5, 1000, 200)
    assert p.rate_per_s == pytest.approx(7_500.0 + 500.0), "the 429 restarted the calm count"
    clock.now += 600.0
    p.answered(clock.now - 0.5, 1000, 200)
    assert p.rate_per_s == 10_000.0
    assert all(rate <= 10_000.0 for _, rate in p.changes)


async def test_the_rate_never_falls_below_its_floor() -> None:
    """However many 429s, the rate stays at or above 2% of --rate, so the run moves on."""
    clock = Clock()
    p = pacer(clock)
    for _ in range(40):
        p.answered(clock.now, 1000, 429)
        clock.now += 1.0
    assert p.rate_per_s == pytest.approx(200.0)
    assert p.lowest_per_s == pytest.approx(200.0)
    assert p.lowered == 11  # 10,000 * 0.7**11 < 200 < 10,000 * 0.7**10


async def test_a_decrease_factor_of_one_keeps_the_rate_as_before() -> None:
    """decrease_factor=1.0 is the old behaviour: a 429 slows only its own batch."""
    clock = Clock()
    p = pacer(clock, decrease_factor=1.0)
    for _ in range(5):
        p.answered(clock.now, 1000, 429)
        clock.now += 1.0
    assert p.rate_per_s == 10_000.0
    assert p.lowered == 0


# --- requests in flight -------------------------------------------------------------------------


async def test_adaptive_gate_follows_littles_law_within_ten_and_twenty() -> None:
    """In flight = clamp(ceil(rate x latency / events per request) + 1, 10, 20)."""
    clock = Clock()
    p = pacer(clock, ewma_weight=1.0)  # the latest request is the estimate, to check the formula
    assert p.gate.limit == 10
    for latency, expected in ((0.05, 10), (1.23, 14), (1.47, 16), (5.0, 20)):
        clock.now += latency
        p.answered(clock.now - latency, 1000, 200)
        assert p.gate.limit == expected, latency


async def test_fixed_concurrency_never_adapts() -> None:
    """An explicit concurrency is the gate's limit and the number of workers, whatever latency."""
    clock = Clock()
    p = Pacer(10_000.0, 1000, 12, clock=clock)
    clock.now += 5.0
    p.answered(clock.now - 5.0, 1000, 200)
    assert p.gate.limit == 12
    assert p.workers == 12


async def test_held_rate_counts_accepted_events_between_first_and_last_departure() -> None:
    """The rate held: events of every accepted request but the last, over their departures."""
    clock = Clock()
    p = pacer(clock)
    start = clock.now
    clock.now += 5.0
    p.answered(start - 1.0, 1, 200, canary=True)  # the canary is not part of it
    for i in range(11):
        p.answered(start + 0.1 * i, 1000, 200)
    p.answered(start + 0.55, 1000, 429)  # refused: not accepted
    assert p.held_per_s() == pytest.approx(10 * 1000 / 1.0)


# --- the limiter and the gate on the event loop ------------------------------------------------


async def test_lowering_the_limiters_rate_slows_the_next_acquires() -> None:
    """After set_rate(r/4), 1000 more events take at least (1000 - burst) / (r/4) seconds."""
    limiter = PacedLimiter(4000.0, burst_events=400.0)
    await limiter.acquire(400)
    limiter.set_rate(1000.0)
    started = time.monotonic()
    for _ in range(10):
        await limiter.acquire(100)
    # At the old rate these would take 0.25 s.
    assert time.monotonic() - started >= (1000 - 400) / 1000.0 - 0.01
    assert limiter.rate_per_s == pytest.approx(1000.0)


async def test_raising_the_limiters_rate_wakes_a_task_already_waiting() -> None:
    """A task waiting at 1 event/s is re-timed when the rate rises (done long before 100 s)."""
    limiter = PacedLimiter(1.0, burst_events=100.0)
    await limiter.acquire(100)
    waiter = asyncio.ensure_future(limiter.acquire(100))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    limiter.set_rate(10_000.0)
    await asyncio.wait_for(waiter, timeout=10.0)


async def test_the_gate_admits_at_most_its_limit_and_widens_at_once() -> None:
    """Holders never exceed the limit in force; raising it lets waiters in, first come first."""
    gate = InFlight(2)
    order: list[int] = []
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with gate:
            assert gate.count <= gate.limit
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(5)]
    await asyncio.sleep(0.02)
    assert order == [0, 1]
    gate.limit = 4
    await asyncio.sleep(0.02)
    assert order == [0, 1, 2, 3]
    assert gate.count == 4
    release.set()
    await asyncio.gather(*tasks)
    assert gate.most == 4
    assert gate.count == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    """A task cancelled while waiting for the gate leaves no place taken."""
    gate = InFlight(1)
    async with gate:
        waiter = asyncio.create_task(gate.__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    assert gate.count == 0
    async with gate:
        assert gate.count == 1


# --- against the stand-in -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def spying(
    sender_of: Callable[[], Sender | None], check: Callable[[Sender], None]
) -> AsyncIterator[None]:
    """Run ``check`` on the sender every 5 ms while the block runs (once it exists)."""

    async def spy() -> None:
        while True:
            sender = sender_of()
            if sender is not None:
                check(sender)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(spy())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_adaptive_pool_grows_past_ten_when_requests_are_slow_and_stays_within_20() -> None:
    """Slow answers (0.5 s) at 4000 events/s in batches of 100 need 21 in flight: it opens to 20."""
    batches = encode(make_pairs(8000, seed=31), 100)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=0.5))
    async with running_standin(config) as standin:
        settled, _ = await send_batches(
            standin.import_url, batches, concurrency=None, rate_per_s=4000.0, batch_size=100
        )
        state = standin.state
    assert sum(s.imported for s in settled) == 8000
    assert 10 < state.max_in_flight <= 20


@pytest.mark.parametrize("concurrency", [12, 24])
async def test_a_fixed_concurrency_is_never_exceeded(concurrency: int) -> None:
    """An explicit --concurrency is held whatever the latency, also above 20 (allowed more)."""
    batches = encode(make_pairs(6000, seed=32), 100)
    config = StandinConfig(faults=FaultRates(p_slow=1.0, slow_s=0.5))
    async with running_standin(config) as standin:
        await send_batches(
            standin.import_url,
            batches,
            concurrency=concurrency,
            rate_per_s=20_000.0,
            batch_size=100,
        )
        state = standin.state
    assert state.events_imported == 6000
    assert state.max_in_flight <= concurrency
    assert state.max_in_flight > 10, "slow answers keep every place busy"


async def test_a_burst_of_429s_lowers_the_limiters_rate_and_it_recovers() -> None:
    """Scripted 429s lower the shared rate (never above --rate meanwhile); calm brings it back."""
    rate = 2000.0
    rules = PacingRules(recovery_every_s=0.2)
    batches = encode(make_pairs(6000, seed=33), 100)
    seen: list[float] = []

    def check(sender: Sender) -> None:
        seen.append(sender.pacer.limiter.rate_per_s)
        assert sender.pacer.limiter.rate_per_s <= rate + 1e-9
        assert sender.pacer.rate_per_s == pytest.approx(sender.pacer.limiter.rate_per_s)

    holder: list[Sender] = []
    async with running_standin() as standin:
        standin.state.script(["429"] * 4)
        async with spying(lambda: holder[0] if holder else None, check):
            settled, _ = await send_batches(
                standin.import_url,
                batches,
                concurrency=None,
                rate_per_s=rate,
                batch_size=100,
                pacing=rules,
                on_sender=holder.append,
            )
        statuses = standin.state.statuses()
    pacer = holder[0].pacer
    assert statuses[429] == 4
    assert sum(s.imported for s in settled) == 6000
    assert pacer.lowered >= 1
    assert pacer.lowest_per_s <= rate * 0.7 + 1e-9
    assert pacer.rate_per_s == rate, "3 s of calm after the burst brings the rate back"
    assert min(seen) < rate
    assert all(r <= rate for _, r in pacer.changes)


async def overload_429s(rules: PacingRules, concurrency: int | None) -> int:
    """429s a stand-in limited to 4000 events/s answers to 16,000 events sent at 10,000/s."""
    batches = encode(make_pairs(16_000, seed=34), 200)
    config = StandinConfig(rate_limit_events_per_s=4000.0)
    async with running_standin(config) as standin:
        await send_batches(
            standin.import_url,
            batches,
            concurrency=concurrency,
            rate_per_s=10_000.0,
            batch_size=200,
            retry_base_s=0.5,
            max_attempts=100,
            pacing=rules,
        )
        assert standin.state.events_imported == 16_000
        return standin.state.statuses()[429]


async def test_shared_backoff_earns_fewer_429s_than_per_batch_backoff() -> None:
    """At 2.5x a stand-in's limit, the shared rate gets under half the 429s of the old pool.

    The old behaviour: ten fixed workers, a 429 delaying only its own batch (decrease 1.0).
    """
    old = await overload_429s(PacingRules(decrease_factor=1.0), concurrency=10)
    new = await overload_429s(PacingRules(), concurrency=None)
    assert new < old / 2, (old, new)


async def test_a_run_against_a_rate_limited_project_imports_every_pair(tmp_path: Path) -> None:
    """Default pacing at 3x a stand-in's limit: every pair imported, exit 0, 429s reported."""
    pairs = [(a, f"user-35-{i}") for i, a in enumerate(uuid4s(6000, 35))]
    source = write_pairs(tmp_path / "m.csv", pairs)
    out = tmp_path / "out"
    env = clean_env(STANDIN_CREDENTIALS)
    config = StandinConfig(rate_limit_events_per_s=2000.0)
    async with running_standin(config) as standin:
        result = await run_cli(
            ["run", str(source), "--out", str(out), "--api-url", standin.url, "--no-progress",
             "--rate", "6000", "--batch-size", "200", "--retry-base-s", "0.5", "--json"],
            env,
            cwd=tmp_path,
        )  # fmt: skip
        state = standin.state
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert state.events_imported == 6000
    assert state.identify_pairs() == set(pairs)
    summary = json.loads(result.stdout)
    this = summary["this_run"]
    assert summary["status"] == "completed"
    assert summary["events_imported"] == 6000
    assert this["rate_limited"] == state.statuses()[429] > 0
    assert this["rate_lowered"] >= 1
    assert this["lowest_rate_per_s"] < 6000
    assert this["rate_held_per_s"] > 0
    assert "429 answers" in result.stderr or "429 answers" in result.stdout
