"""The stand-in's faults: what goes wrong with a request, and the rate limit.

* ``FaultRates``: probabilities of the faults drawn at random, and their timings (immutable).
* ``FaultPlan``: which fault the next request gets: ``always`` if set, else the next scripted
  one, else one drawn at random with the rates' seed. The plan is the run-time state; tests turn
  its knobs through ``StandinState``.
* ``TokenBucket``: the per-project event budget behind the rate limit's 429.

What each fault does to a request is the application's business (``app.py``); this module only
decides which one it gets.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

Fault = Literal[
    "ok",
    "503",
    "429",
    "408",
    "drop",
    "slow",
    "500_after_import",
    "drop_after_import",
    "400_whole",
    "200_not_json",
    "302",
    "307",
    # Hostile or broken servers' answers, scripted only (never drawn at random): a body of
    # 100,000 nested ``[`` on a 200, 400 or 503; a proxy's 403 or 502 page that echoes the
    # request's Authorization header among ANSI escape sequences; a 200 in brotli.
    "200_deep",
    "400_deep",
    "503_deep",
    "403_echo",
    "502_echo",
    "200_brotli",
    "200_refused",
    "200_refused_all_imported",
]
#: Names accepted by ``StandinState.script``; ``ok`` uses up a script slot with no fault.
FAULT_NAMES: Final[tuple[Fault, ...]] = get_args(Fault)


@dataclass(frozen=True)
class FaultRates:
    """Probabilities of the faults drawn at random for each request, and their timings.

    The probabilities are exclusive (one fault at most per request) and must sum to at most 1.
    With the same ``seed``, the n-th request that reaches the fault stage gets the same fault.
    ``retry_after_s`` adds a ``Retry-After`` header to every 429 and 503 (a float is written
    as such, for fast tests; Mixpanel itself documents no such header).
    """

    p_503: float = 0.0
    p_429: float = 0.0
    p_drop: float = 0.0
    p_slow: float = 0.0
    p_500_after_import: float = 0.0
    p_drop_after_import: float = 0.0
    slow_s: float = 1.0
    retry_after_s: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        probabilities = self._table()
        if any(not 0.0 <= p <= 1.0 for _, p in probabilities):
            raise ValueError(f"fault probabilities must lie in [0, 1]: {self!r}")
        if sum(p for _, p in probabilities) > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities must sum to at most 1: {self!r}")
        if self.slow_s < 0:
            raise ValueError(f"slow_s must be >= 0, not {self.slow_s}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, not {self.retry_after_s}")

    @classmethod
    def failing(
        cls, share: float, *, latency_s: float = 0.0, seed: int | None = None
    ) -> FaultRates:
        """``share`` of requests failed, evenly as 503, 429 and dropped connections; with
        ``latency_s``, every other request answers that much later (rehearse, serve)."""
        third = share / 3
        return cls(
            p_503=third,
            p_429=third,
            p_drop=third,
            p_slow=1.0 - share if latency_s else 0.0,
            slow_s=latency_s,
            seed=seed,
        )

    def _table(self) -> tuple[tuple[Fault, float], ...]:
        return (
            ("503", self.p_503),
            ("429", self.p_429),
            ("drop", self.p_drop),
            ("slow", self.p_slow),
            ("500_after_import", self.p_500_after_import),
            ("drop_after_import", self.p_drop_after_import),
        )

    def draw(self, rng: random.Random) -> Fault:
        """Pick this request's fault; always consumes exactly one number from ``rng``."""
        u = rng.random()
        for name, p in self._table():
            if u < p:
                return name
            u -= p
        return "ok"

    def retry_after(self) -> dict[str, str] | None:
        """The ``Retry-After`` header of a 429 or 503, or None when not configured."""
        if self.retry_after_s is None:
            return None
        value = self.retry_after_s
        return {"Retry-After": str(int(value)) if value == int(value) else f"{value:g}"}


class FaultPlan:
    """Which fault each request that passes auth gets, in this order of precedence:

    ``always`` (while set), else the next ``script``ed fault, else one drawn from ``rates``.
    Assigning ``rates`` reseeds the draw from the new rates' ``seed``.
    """

    def __init__(self, rates: FaultRates) -> None:
        self._rates = rates
        self._rng = random.Random(rates.seed)
        self._script: list[Fault] = []
        #: A fault every request gets while set (before the script and the random draw).
        self.always: Fault | None = None

    @property
    def rates(self) -> FaultRates:
        """The random fault rates in force."""
        return self._rates

    @rates.setter
    def rates(self, rates: FaultRates) -> None:
        self._rates = rates
        self._rng = random.Random(rates.seed)

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one each, before random ones."""
        names = list(faults)
        unknown = [n for n in names if n not in FAULT_NAMES]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown!r}; choose from {list(FAULT_NAMES)!r}")
        self._script.extend(cast(list[Fault], names))

    @property
    def pending(self) -> tuple[Fault, ...]:
        """Scripted faults not yet used."""
        return tuple(self._script)

    def next(self) -> Fault:
        """The fault of the request now at the fault stage (uses up a scripted one)."""
        if self.always is not None:
            return self.always
        if self._script:
            return self._script.pop(0)
        return self._rates.draw(self._rng)


class TokenBucket:
    """Events per second with one second of burst; a large request may borrow (go negative).

    Borrowing keeps a request larger than the burst admissible (once the bucket is full) while
    the long-run rate still holds, which is how a rolling per-minute budget behaves.
    """

    def __init__(self, rate_per_s: float, now_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_limit_events_per_s must be > 0, or None for no limit")
        self.rate_per_s = rate_per_s
        self.capacity = rate_per_s
        self.tokens = rate_per_s
        self.updated_s = now_s

    def admit(self, events: int, now_s: float) -> bool:
        """Take ``events`` tokens if the bucket holds enough (or is full); else take none."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens < min(events, self.capacity):
            return False
        self.tokens -= events
        return True
