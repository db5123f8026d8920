"""Everything one stand-in saw and stored: the request log, the event store, the counters.

``StandinState`` is also where a test turns the knobs while the stand-in runs (faults, the
rate limit, refusals, the forbidden mode). The application mutates it only between awaits,
so concurrent requests on the one event loop never see a half-imported batch.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from backfill.standin.config import StandinConfig
from backfill.standin.faults import Fault, FaultPlan, FaultRates, TokenBucket
from backfill.standin.identity import Identity, NotMerged, OriginalIdentity, SimplifiedIdentity
from backfill.standin.strict import canonical


class EventKey(NamedTuple):
    """Mixpanel's deduplication key: events with equal keys count once."""

    event: str
    time: int
    distinct_id: str
    insert_id: str


@dataclass
class RequestRecord:
    """What one request looked like and how it was answered (filled in as it proceeds).

    ``status`` is None while the request is in flight and stays None when the connection was
    dropped without an answer. ``bytes_compressed`` is the body as sent on the wire (equal to
    ``bytes_uncompressed`` without gzip); ``bytes_uncompressed`` stops counting just past
    ``max_bytes``. ``insert_ids`` follows the request's order, ``""`` where a record had none.
    ``auth`` names the credential kind, never the secret; ``query`` is the query string.
    """

    arrived_s: float
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    auth: str = "none"
    status: int | None = None
    finished_s: float | None = None
    events: int = 0
    bytes_uncompressed: int = 0
    bytes_compressed: int = 0
    fault: Fault | None = None
    rate_limited: bool = False
    imported: int = 0
    failed: int = 0
    insert_ids: list[str] = field(default_factory=list)


class StandinState:
    """Everything a stand-in saw and stored, plus the knobs a test may turn while it runs.

    Knobs (seeded from the config): ``faults`` (assigning reseeds the random faults),
    ``always``, ``forbidden``, ``rate_limit_events_per_s`` (assigning resets the budget),
    ``refuse_distinct_ids``, and ``script()``. ``clock`` gives arrival times and drives the
    rate limit; tests may pass a fake one.
    """

    def __init__(
        self,
        config: StandinConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = config if config is not None else StandinConfig()
        self.config = config
        self.clock = clock
        self.forbidden: bool = config.forbidden
        self.refuse_distinct_ids: set[str] = set(config.refuse_distinct_ids)
        self.requests: list[RequestRecord] = []
        self.store: dict[EventKey, dict[str, Any]] = {}
        self.forms: dict[EventKey, list[str]] = {}
        self.events_received = 0
        self.events_rejected = 0
        self.duplicates = 0
        #: What the accepted events merged, by the rules of the project's ID merge system.
        self.identity: Identity = (
            SimplifiedIdentity() if config.id_merge == "simplified" else OriginalIdentity()
        )
        self.in_flight = 0
        self.max_in_flight = 0
        self._plan = FaultPlan(config.faults)
        self._bucket: TokenBucket | None = None
        self.rate_limit_events_per_s = config.rate_limit_events_per_s

    # --- knobs ---------------------------------------------------------------------------------

    @property
    def faults(self) -> FaultRates:
        """The random fault rates in force; assigning new rates reseeds from their ``seed``."""
        return self._plan.rates

    @faults.setter
    def faults(self, rates: FaultRates) -> None:
        self._plan.rates = rates

    @property
    def always(self) -> Fault | None:
        """A fault every request gets while set (before the script and the random draw)."""
        return self._plan.always

    @always.setter
    def always(self, fault: Fault | None) -> None:
        self._plan.always = fault

    @property
    def rate_limit_events_per_s(self) -> float | None:
        """The event budget per second, or None for no limit."""
        return None if self._bucket is None else self._bucket.rate_per_s

    @rate_limit_events_per_s.setter
    def rate_limit_events_per_s(self, rate: float | None) -> None:
        self._bucket = None if rate is None else TokenBucket(rate, self.clock())

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests that pass auth, one each, before random ones."""
        self._plan.script(faults)

    @property
    def pending_script(self) -> tuple[Fault, ...]:
        """Scripted faults not yet used."""
        return self._plan.pending

    # --- what the application calls ------------------------------------------------------------

    def next_fault(self) -> Fault:
        """The fault of the request now past auth and ``strict=1``."""
        return self._plan.next()

    def admit(self, events: int) -> bool:
        """Whether the rate limit lets a request of ``events`` events through now."""
        return self._bucket is None or self._bucket.admit(events, self.clock())

    def open_request(self, record: RequestRecord) -> None:
        """Log a request as it arrives and count it in flight."""
        self.requests.append(record)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def close_request(self, record: RequestRecord) -> None:
        """A request is answered (or dropped): no longer in flight."""
        self.in_flight -= 1
        record.finished_s = self.clock()

    def store_accepted(self, events: list[dict[str, Any]], *, refused: int) -> None:
        """Store the records of one request that passed the strict checks; count the others.

        No await inside: atomic with respect to other requests. The latest arrival of a key
        wins in the store; every distinct form of a key is kept to reveal conflicting resends.
        The first arrival of a key goes to the identity graph, in the request's order.
        """
        unique: list[dict[str, Any]] = []
        for event in events:
            props = event["properties"]
            key = EventKey(event["event"], props["time"], props["distinct_id"], props["$insert_id"])
            if key in self.store:
                self.duplicates += 1
            else:
                unique.append(event)
                self.identity.observe(event)
            self.store[key] = event
            form = canonical(event)
            forms = self.forms.setdefault(key, [])
            if form not in forms:
                forms.append(form)
        self.events_received += len(events) + refused
        self.events_rejected += refused
        if self.config.store_path is not None and unique:
            # One line per event as Mixpanel would count it: a resent duplicate adds nothing.
            with self.config.store_path.open("a", encoding="utf-8") as out:
                out.writelines(
                    json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in unique
                )

    # --- queries -------------------------------------------------------------------------------

    @property
    def requests_count(self) -> int:
        """Requests that reached the server, whatever their answer."""
        return len(self.requests)

    @property
    def events_imported(self) -> int:
        """Unique events stored (duplicates counted once)."""
        return len(self.store)

    def statuses(self) -> Counter[int | None]:
        """How many requests got each status (None: dropped without an answer)."""
        return Counter(r.status for r in self.requests)

    def conflicting_keys(self) -> dict[EventKey, list[str]]:
        """Keys that arrived in more than one form: the same key with different contents."""
        return {key: forms for key, forms in self.forms.items() if len(forms) > 1}

    def identify_pairs(self) -> set[tuple[str, str]]:
        """The ``($anon_id, $identified_id)`` pairs of the stored ``$identify`` events, merged
        or not (``merged_pairs()`` says which merged)."""
        return {
            (e["properties"]["$anon_id"], e["properties"]["$identified_id"])
            for key, e in self.store.items()
            if key.event == "$identify"
        }

    def cluster_of(self, distinct_id: str) -> frozenset[str]:
        """The ids of ``distinct_id``'s identity cluster, itself included (see ``identity``)."""
        return self.identity.cluster_of(distinct_id)

    def devices_of(self, user: str) -> frozenset[str]:
        """Simplified: the devices paired with ``user``; Original: its cluster but itself."""
        return self.identity.devices_of(user)

    def merged_pairs(self) -> set[tuple[str, str]]:
        """What really merged: ``(anon, identified)`` in Original, ``(device, user)`` in
        Simplified (the device without its ``$device:`` prefix)."""
        return self.identity.merged_pairs()

    def not_merged(self) -> dict[tuple[str, str], NotMerged]:
        """Accepted identity pairs that never merged, with the reason given the first time."""
        return self.identity.not_merged()

    def summary(self) -> dict[str, Any]:
        """Counters for printing: requests by status, faults, events, duplicates, and what
        merged (``identity``: merges made, not made by reason, clusters)."""
        statuses = self.statuses()
        return {
            "requests": self.requests_count,
            "by_status": {
                ("dropped" if s is None else str(s)): n
                for s, n in sorted(statuses.items(), key=lambda item: item[0] or 0)
            },
            "faults": dict(Counter(r.fault for r in self.requests if r.fault not in (None, "ok"))),
            "rate_limited": sum(r.rate_limited for r in self.requests),
            "events_received": self.events_received,
            "events_imported": self.events_imported,
            "events_rejected": self.events_rejected,
            "duplicates": self.duplicates,
            "conflicting_duplicates": len(self.conflicting_keys()),
            "max_in_flight": self.max_in_flight,
            "identity": self.identity.summary(),
        }
