"""A local stand-in for Mixpanel's ``POST /import?strict=1``, for tests and rehearsals.

What it imitates
    * HTTP Basic auth with a service account (``username:secret`` plus a ``project_id`` query
      parameter that must name the configured project) or the legacy project API secret
      (username = secret, empty password, no ``project_id`` needed). 401 otherwise; an optional
      "forbidden" mode answers 403 to valid credentials, as for an account without access.
    * Strict mode only: ``strict=1`` is required, so a sender that drops it is caught. The
      query string of every request is logged (``ip=0`` is checked by the tests).
    * Bodies as a JSON array or NDJSON, optionally ``Content-Encoding: gzip``; Mixpanel's 413 when
      the uncompressed body exceeds ``max_bytes`` or the request holds more than ``max_events``.
    * Per-record strict validation (event name, properties, ``time``, ``distinct_id`` and its
      refused placeholders, ``$insert_id``, and for ``$identify`` the ``$anon_id`` UUID v4 and
      ``$identified_id == distinct_id``). As Mixpanel does, a 400 with ``failed_records`` still
      imports the valid records of the same request; every 200 and 400 carries
      ``num_records_imported``; refusals name their record by ``index`` and, unless
      ``failed_records_key`` is None, by insert id too.
    * A project on Simplified ID Merge (``id_merge="simplified"``): a request holding any
      identity event is refused whole, with ``failed_records`` one plain string, as live probes
      of Mixpanel saw (2026-08).
    * Deduplication by ``(event, time, distinct_id, $insert_id)``, the latest arrival winning.
    * Mixpanel's response bodies for 200, 400, 401, 413 and 429 (the 429 as live probes saw
      it: no ``code``, ``status`` 0).

What it does not imitate
    * Identity merging: ``$identify`` events are stored, not merged; no cluster limit, no
      "already merged" refusals. ``refuse_distinct_ids`` lets a test simulate refusals that
      only Mixpanel makes.
    * Mixpanel's exact wording for every message, its 10 MB limit (this keeps the documented
      2 MB), ``strict=0``, ``/track`` and profiles. Mixpanel rewrites a future ``time`` to the
      present; this refuses it (beyond ``max_future_s``), as the project's contract does.
    * Persistence: the store lives in memory (about 1-2 KB per unique event); ``store_path`` only
      appends an NDJSON copy of each unique event accepted, for a person to read.

Order in which a request to ``/import`` is answered (the first that applies wins):

    1. method and path: other paths 404, other methods 405;
    2. credentials: 401, then the forbidden mode: 403 (a 401 is always a 401: no fault is
       drawn and no scripted fault is used up by a request that fails here);
    3. ``strict=1``: 400;
    4. the fault for this request: ``always`` if set, else the next scripted one, else one
       drawn at random (``503``, ``429``, ``408``, ``drop``, the redirects ``302``/``307``,
       ``400_whole`` (a 400 naming no record) and ``200_not_json`` answer now; ``slow``
       waits ``slow_s`` and goes on);
    5. the body: encoding and content type 400, bad gzip 400, too many bytes 413, invalid
       JSON or no events 400, too many events 413;
    6. the rate limit (``rate_limit_events_per_s``): 429, nothing imported; then a Simplified
       project's refusal of identity events: 400, nothing imported;
    7. per-record validation and import of the valid records;
    8. ``500_after_import`` / ``drop_after_import``: the records are stored, then the answer
       is a 500 or a dropped connection (as when Mixpanel stores a batch but the reply is lost);
    9. 200, or 400 with ``failed_records``.

Every body is read to its end and parsed before step 2, only so that the request log can show
its size and ``$insert_id``s whatever the answer; nothing is stored before step 7. A request
whose client gives up (timeout) is still carried to the end, as on a real server.

The state is mutated only between awaits, so concurrent requests on the one event loop never
see a half-imported batch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import random
import re
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, NoReturn, TextIO, cast, get_args

from aiohttp import web

from backfill.mixpanel import (
    INSERT_ID_PATTERN,
    MAX_EVENTS_PER_REQUEST,
    MAX_ID_BYTES,
    MAX_REQUEST_BYTES,
    MIN_TIME_MS,
    MS_THRESHOLD,
    PLACEHOLDER_DISTINCT_IDS,
    UUID4_PATTERN,
)

__all__ = [
    "DEFAULT_PROJECT_ID",
    "DEFAULT_SERVICE_ACCOUNT",
    "FAULT_NAMES",
    "REFUSED_DISTINCT_IDS",
    "EventKey",
    "Fault",
    "FaultRates",
    "RequestRecord",
    "Standin",
    "StandinConfig",
    "StandinState",
    "banner",
    "make_app",
    "running_standin",
    "serve",
]

#: The throwaway service account every default config accepts. Not a secret: it only opens
#: this stand-in, and ``serve`` prints it so that a rehearsal can be set up by copy and paste.
DEFAULT_SERVICE_ACCOUNT: Final = ("backfill-rehearsal", "rehearsal-only-not-a-mixpanel-secret")
DEFAULT_PROJECT_ID: Final = "1"

#: Placeholder distinct_ids Mixpanel refuses (SPEC), compared case-insensitively after strip.
REFUSED_DISTINCT_IDS: Final = PLACEHOLDER_DISTINCT_IDS

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
]
#: Names accepted by ``StandinState.script``; ``ok`` uses up a script slot with no fault.
FAULT_NAMES: Final[tuple[Fault, ...]] = get_args(Fault)

_MIN_TIME_MS: Final = MIN_TIME_MS
_MS_THRESHOLD: Final = MS_THRESHOLD  # below: seconds; at or above: milliseconds
_MAX_DISTINCT_ID_BYTES: Final = MAX_ID_BYTES
_INSERT_ID_RE: Final = re.compile(INSERT_ID_PATTERN)
_UUID4_RE: Final = re.compile(UUID4_PATTERN)
_GZIP_MAGIC: Final = b"\x1f\x8b"
_READ_CHUNK: Final = 64 * 1024
_RATE_LIMIT_MESSAGE: Final = (
    "Project exceeded rate limits. Please retry the request with exponential backoff."
)
_SIMPLIFIED_REFUSAL: Final = (
    "identity events are not allowed when project is using simplified identity management"
)
#: Mixpanel's identity events: a Simplified ID Merge project refuses each of them.
IDENTITY_EVENTS: Final = frozenset({"$identify", "$create_alias", "$merge"})


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


@dataclass(frozen=True)
class StandinConfig:
    """Settings of one stand-in; the run-time knobs are copied into ``StandinState``.

    ``service_accounts`` maps username to secret. ``api_secrets`` are legacy project secrets.
    ``refuse_distinct_ids`` (exact strings) are refused per record, to simulate refusals only
    Mixpanel makes. ``failed_records_key`` is ``"$insert_id"`` or ``"insert_id"`` (Mixpanel
    uses both), or None for refusals that carry only ``index``, ``field`` and ``message`` (as
    Mixpanel also answers). ``id_merge`` is the project's identity system: ``"simplified"``
    refuses every request holding an identity event as Mixpanel does (a 400 whose
    ``failed_records`` is one plain string, nothing imported). ``redirect_to`` is the Location
    of the ``302``/``307`` faults. ``max_future_s`` is how far ahead of this machine's clock a
    ``time`` may be. ``store_path``, if set, receives one NDJSON line per unique accepted
    record, deduplicated as Mixpanel counts them (appended, never truncated).
    """

    service_accounts: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(dict([DEFAULT_SERVICE_ACCOUNT])), hash=False
    )
    project_id: str = DEFAULT_PROJECT_ID
    api_secrets: frozenset[str] = frozenset()
    max_events: int = MAX_EVENTS_PER_REQUEST
    max_bytes: int = MAX_REQUEST_BYTES
    refuse_distinct_ids: frozenset[str] = frozenset()
    failed_records_key: Literal["$insert_id", "insert_id"] | None = "$insert_id"
    faults: FaultRates = FaultRates()
    rate_limit_events_per_s: float | None = None
    store_path: Path | None = None
    forbidden: bool = False
    max_future_s: float = 60.0
    id_merge: Literal["original", "simplified"] = "original"
    redirect_to: str = "http://127.0.0.1:9/import"

    def __post_init__(self) -> None:
        if self.failed_records_key not in ("$insert_id", "insert_id", None):
            raise ValueError(
                f"failed_records_key must be '$insert_id', 'insert_id' or None, "
                f"not {self.failed_records_key!r}"
            )
        if self.id_merge not in ("original", "simplified"):
            raise ValueError(f"id_merge must be 'original' or 'simplified', not {self.id_merge!r}")
        if self.max_events < 1 or self.max_bytes < 1:
            raise ValueError("max_events and max_bytes must be at least 1")
        if self.rate_limit_events_per_s is not None and self.rate_limit_events_per_s <= 0:
            raise ValueError("rate_limit_events_per_s must be > 0, or None for no limit")
        # A plain dict argument would stay mutable behind a frozen config.
        object.__setattr__(self, "service_accounts", MappingProxyType(dict(self.service_accounts)))

    def __repr__(self) -> str:
        # Secrets are masked so that a config can be logged or shown in a test failure.
        accounts = {user: "***" for user in self.service_accounts}
        return (
            f"StandinConfig(service_accounts={accounts!r}, project_id={self.project_id!r}, "
            f"api_secrets=<{len(self.api_secrets)} masked>, max_events={self.max_events}, "
            f"max_bytes={self.max_bytes}, refuse_distinct_ids={set(self.refuse_distinct_ids)!r}, "
            f"failed_records_key={self.failed_records_key!r}, faults={self.faults!r}, "
            f"rate_limit_events_per_s={self.rate_limit_events_per_s!r}, "
            f"store_path={self.store_path!r}, forbidden={self.forbidden!r}, "
            f"max_future_s={self.max_future_s!r}, id_merge={self.id_merge!r})"
        )


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


class _TokenBucket:
    """Events per second with one second of burst; a large request may borrow (go negative).

    Borrowing keeps a request larger than the burst admissible (once the bucket is full) while
    the long-run rate still holds, which is how a rolling per-minute budget behaves.
    """

    def __init__(self, rate_per_s: float, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = rate_per_s
        self.tokens = rate_per_s
        self.updated_s = now_s

    def admit(self, events: int, now_s: float) -> bool:
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens < min(events, self.capacity):
            return False
        self.tokens -= events
        return True


class StandinState:
    """Everything a stand-in saw and stored, plus the knobs a test may turn while it runs.

    Knobs (seeded from the config): ``faults`` (assigning reseeds the random faults),
    ``forbidden``, ``rate_limit_events_per_s`` (assigning resets the budget),
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
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: list[Fault] = []
        #: A fault every request gets while set (before the script and the random draw).
        self.always: Fault | None = None
        self._faults = config.faults
        self._rng = random.Random(config.faults.seed)
        self._bucket: _TokenBucket | None = None
        self._rate: float | None = None
        self.rate_limit_events_per_s = config.rate_limit_events_per_s

    @property
    def faults(self) -> FaultRates:
        """The random fault rates in force; assigning new rates reseeds from their ``seed``."""
        return self._faults

    @faults.setter
    def faults(self, rates: FaultRates) -> None:
        self._faults = rates
        self._rng = random.Random(rates.seed)

    @property
    def rate_limit_events_per_s(self) -> float | None:
        """The event budget per second, or None for no limit."""
        return self._rate

    @rate_limit_events_per_s.setter
    def rate_limit_events_per_s(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate_limit_events_per_s must be > 0, or None for no limit")
        self._rate = rate
        self._bucket = None if rate is None else _TokenBucket(rate, self.clock())

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests that pass auth, one each, before random ones."""
        names = list(faults)
        unknown = [n for n in names if n not in FAULT_NAMES]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown!r}; choose from {list(FAULT_NAMES)!r}")
        self._script.extend(cast(list[Fault], names))

    @property
    def pending_script(self) -> tuple[Fault, ...]:
        """Scripted faults not yet used."""
        return tuple(self._script)

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
        """The ``($anon_id, $identified_id)`` pairs of the stored ``$identify`` events."""
        return {
            (e["properties"]["$anon_id"], e["properties"]["$identified_id"])
            for key, e in self.store.items()
            if key.event == "$identify"
        }

    def summary(self) -> dict[str, Any]:
        """Counters for printing: requests by status, faults, events and duplicates."""
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
        }

    def _next_fault(self) -> Fault:
        if self.always is not None:
            return self.always
        if self._script:
            return self._script.pop(0)
        return self._faults.draw(self._rng)

    def _admit(self, events: int) -> bool:
        return self._bucket is None or self._bucket.admit(events, self.clock())


# --- answers ---------------------------------------------------------------------------------

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    408: "Request Timeout",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _answer(
    code: int, error: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    body: dict[str, Any] = {"code": code}
    if error is not None:
        body["error"] = error
    body.update(extra)
    body["status"] = _REASONS[code]
    return web.json_response(body, status=code, headers=headers)


def _rate_limited(rates: FaultRates) -> web.Response:
    """Mixpanel's 429 as live probes saw it: no ``code``, ``status`` 0, no Retry-After."""
    body = {"error": _RATE_LIMIT_MESSAGE, "status": 0}
    return web.json_response(body, status=429, headers=_retry_after(rates))


def _is_identity_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("event") in IDENTITY_EVENTS


def _retry_after(rates: FaultRates) -> dict[str, str] | None:
    if rates.retry_after_s is None:
        return None
    value = rates.retry_after_s
    return {"Retry-After": str(int(value)) if value == int(value) else f"{value:g}"}


# --- body --------------------------------------------------------------------------------------


class _BodyError(Exception):
    """The body cannot be imported as a whole; carries the status (400 or 413)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Inflate every gzip member, stopping just past ``max_bytes`` to resist gzip bombs."""
    if not data.startswith(_GZIP_MAGIC):
        raise _BodyError(400, "body is not valid gzip (Content-Encoding: gzip was sent)")
    out = bytearray()
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise _BodyError(413, f"request exceeds max limit of {max_bytes} bytes")
            if not inflater.eof:
                raise _BodyError(400, "body is not valid gzip: the stream is truncated")
            rest = inflater.unused_data
            if rest and not rest.startswith(_GZIP_MAGIC):
                raise _BodyError(400, "body is not valid gzip: trailing bytes after the stream")
    except zlib.error as exc:
        raise _BodyError(400, f"body is not valid gzip: {exc}") from None
    return bytes(out)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _parse_events(text: str, ndjson: bool) -> list[Any]:
    try:
        if ndjson:
            events = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        events.append(json.loads(line, parse_constant=_reject_constant))
                    except ValueError as exc:
                        raise _BodyError(
                            400, f"invalid JSON on NDJSON line {number}: {exc}"
                        ) from None
            return events
        parsed = json.loads(text, parse_constant=_reject_constant)
    except _BodyError:
        raise
    except ValueError as exc:
        raise _BodyError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(parsed, list):
        raise _BodyError(400, "body must be a JSON array of events")
    return parsed


# --- per-record validation ---------------------------------------------------------------------


class _Invalid(NamedTuple):
    field: str
    message: str


def _check_event(event: Any, now_ms: int, max_future_ms: int, refused: set[str]) -> _Invalid | None:
    """The first reason Mixpanel's strict mode would refuse this record, or None."""
    if not isinstance(event, dict):
        return _Invalid("event", "each record must be a JSON object")
    name = event.get("event")
    if not isinstance(name, str) or not name:
        return _Invalid("event", "'event' must be a non-empty string")
    props = event.get("properties")
    if not isinstance(props, dict):
        return _Invalid("properties", "'properties' must be a JSON object")

    t = props.get("time")
    if t is None:
        return _Invalid("properties.time", "'properties.time' is required")
    if not isinstance(t, int) or isinstance(t, bool):
        return _Invalid(
            "properties.time",
            "'properties.time' is invalid: must be an integer of seconds or milliseconds "
            "since epoch",
        )
    t_ms = t if t >= _MS_THRESHOLD else t * 1000
    if t_ms < _MIN_TIME_MS:
        return _Invalid("properties.time", "'properties.time' is invalid: before 1971-01-01")
    if t_ms > now_ms + max_future_ms:
        return _Invalid("properties.time", "'properties.time' is invalid: in the future")

    did = props.get("distinct_id")
    if did is None:
        return _Invalid("properties.distinct_id", "'properties.distinct_id' is required")
    if not isinstance(did, str):
        return _Invalid("properties.distinct_id", "'properties.distinct_id' must be a string")
    stripped = did.strip()
    if not stripped:
        return _Invalid("properties.distinct_id", "'properties.distinct_id' must not be empty")
    if stripped.lower() in REFUSED_DISTINCT_IDS:
        return _Invalid(
            "properties.distinct_id",
            f"'properties.distinct_id' is invalid: {did!r} is a placeholder value",
        )
    if len(did.encode("utf-8")) > _MAX_DISTINCT_ID_BYTES:
        return _Invalid(
            "properties.distinct_id",
            f"'properties.distinct_id' is invalid: longer than {_MAX_DISTINCT_ID_BYTES} bytes",
        )

    insert_id = props.get("$insert_id")
    if insert_id is None:
        return _Invalid("properties.$insert_id", "'properties.$insert_id' is required")
    if not isinstance(insert_id, str) or not _INSERT_ID_RE.fullmatch(insert_id):
        return _Invalid(
            "properties.$insert_id",
            "'properties.$insert_id' is invalid: must be 1 to 36 characters of [A-Za-z0-9-]",
        )

    if name == "$identify":
        anon = props.get("$anon_id")
        if not isinstance(anon, str) or not _UUID4_RE.fullmatch(anon):
            return _Invalid("properties.$anon_id", "'properties.$anon_id' must be a UUID v4")
        identified = props.get("$identified_id")
        if not isinstance(identified, str) or not identified.strip():
            return _Invalid(
                "properties.$identified_id",
                "'properties.$identified_id' must be a non-empty string",
            )
        if identified != did:
            return _Invalid(
                "properties.$identified_id",
                "'properties.$identified_id' must equal 'properties.distinct_id'",
            )

    if did in refused:
        return _Invalid("properties.distinct_id", "distinct_id refused by stand-in configuration")
    return None


def _canonical(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- the handler -------------------------------------------------------------------------------


async def _read_body(request: web.Request, cap: int) -> tuple[bytes | None, int]:
    """The whole body if it fits ``cap`` (else None) and its size on the wire.

    The body is always read to its end so that the connection stays usable for keep-alive.
    """
    kept = bytearray()
    total = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total <= cap:
            kept += chunk
    return (bytes(kept) if total <= cap else None), total


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """``(username, password)`` from a Basic Authorization header, or None if malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def _authenticate(request: web.Request, config: StandinConfig) -> tuple[str, web.Response | None]:
    """Name of the credential kind, and the 401 to send if the credentials do not pass."""
    header = request.headers.get("Authorization", "")
    invalid = _answer(401, "Invalid credentials")
    credentials = _basic_credentials(header)
    if credentials is None:
        return "none" if not header else "malformed", invalid
    login, password = credentials

    secret = config.service_accounts.get(login)
    if secret is not None and password:
        # compare_digest: no timing hint about how much of a guessed secret was right.
        if not hmac.compare_digest(password.encode(), secret.encode()):
            return f"service-account {login}", invalid
        project_id = request.query.get("project_id")
        if project_id is None:
            return f"service-account {login}", _answer(
                401, "project_id query parameter is required with service account credentials"
            )
        if project_id != config.project_id:
            return f"service-account {login}", _answer(
                401, f"service account has no access to project_id {project_id!r}"
            )
        return f"service-account {login}", None

    if not password and any(
        hmac.compare_digest(login.encode(), s.encode()) for s in config.api_secrets
    ):
        return "api-secret", None
    return "unknown", invalid


STATE_KEY: Final = web.AppKey("standin_state", StandinState)
CONFIG_KEY: Final = web.AppKey("standin_config", StandinConfig)


def make_app(config: StandinConfig, state: StandinState | None = None) -> web.Application:
    """The stand-in as an aiohttp application; ``app[STATE_KEY]`` is its ``StandinState``.

    The application asks its server not to inflate request bodies itself (``handler_args``),
    so that it can measure the compressed size and stop a gzip bomb at ``max_bytes``.
    """
    state = state if state is not None else StandinState(config)
    max_future_ms = int(config.max_future_s * 1000)
    # A gzip body may legitimately be a little larger than its content; past this it cannot
    # inflate to less than max_bytes unless it is built to waste space.
    wire_cap = config.max_bytes * 2 + 1024 * 1024

    async def handle(request: web.Request) -> web.StreamResponse:
        record = RequestRecord(state.clock(), request.method, request.path, dict(request.query))
        state.requests.append(record)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response = await _handle_import(request, record)
        finally:
            state.in_flight -= 1
            record.finished_s = state.clock()
        if response is None:
            transport = request.transport
            if transport is not None:
                transport.close()
            # The transport is closed: aiohttp discards this reply and the client sees a
            # disconnect, which is what a dropped connection looks like from the client.
            return web.Response(status=204)
        record.status = response.status
        return response

    async def _handle_import(
        request: web.Request, record: RequestRecord
    ) -> web.StreamResponse | None:
        if request.path.rstrip("/") != "/import":
            return _answer(404, f"no such endpoint {request.path!r}: this stand-in has /import")
        if request.method != "POST":
            return _answer(405, "use POST /import")

        raw, record.bytes_compressed = await _read_body(request, wire_cap)
        events: list[Any] | None = None
        body_error: _BodyError | None = None
        try:
            events = _decode(request, raw, record)
        except _BodyError as exc:
            body_error = exc
        if events is not None:
            record.events = len(events)
            record.insert_ids = [_insert_id_of(e) for e in events]

        record.auth, refusal = _authenticate(request, config)
        if refusal is not None:
            return refusal
        if state.forbidden:
            return _answer(403, "service account does not have access to this project")
        if request.query.get("strict") != "1":
            return _answer(400, "strict=1 is required: this stand-in imitates strict mode only")

        fault = state._next_fault()
        record.fault = fault
        if fault == "503":
            return _answer(503, "Service Unavailable", headers=_retry_after(state.faults))
        if fault == "429":
            return _rate_limited(state.faults)
        if fault == "408":
            return _answer(408, "Request Timeout")
        if fault in ("302", "307"):
            return web.Response(
                status=int(fault), headers={"Location": config.redirect_to}, text="Moved"
            )
        if fault == "200_not_json":
            return web.Response(
                status=200, content_type="text/html", text="<html><body>Welcome</body></html>"
            )
        if fault == "400_whole":
            return _answer(
                400, "some data points in the request failed validation", num_records_imported=0
            )
        if fault == "drop":
            return None
        if fault == "slow":
            await asyncio.sleep(state.faults.slow_s)

        if body_error is not None:
            if body_error.code == 400:
                return _answer(400, body_error.message, num_records_imported=0)
            return _answer(body_error.code, body_error.message)
        assert events is not None  # _decode either returns events or raises _BodyError
        if len(events) > config.max_events:
            return _answer(413, f"request exceeds max limit of {config.max_events} events")

        if not state._admit(len(events)):
            record.rate_limited = True
            return _rate_limited(state.faults)
        if config.id_merge == "simplified" and any(_is_identity_event(e) for e in events):
            # As Mixpanel answers a Simplified project: the whole request, one plain string.
            return _answer(
                400,
                "some data points in the request failed validation",
                failed_records=[_SIMPLIFIED_REFUSAL],
                num_records_imported=0,
            )

        failed = _import(events, record)
        if fault == "500_after_import":
            return _answer(500, "Internal server error")
        if fault == "drop_after_import":
            return None
        if failed:
            return _answer(
                400,
                "some data points in the request failed validation",
                failed_records=failed,
                num_records_imported=record.imported,
            )
        return _answer(200, num_records_imported=record.imported)

    def _decode(request: web.Request, raw: bytes | None, record: RequestRecord) -> list[Any]:
        if raw is None:
            record.bytes_uncompressed = record.bytes_compressed
            raise _BodyError(413, f"request exceeds max limit of {config.max_bytes} bytes")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = _gunzip(raw, config.max_bytes)
            except _BodyError as exc:
                if exc.code == 413:
                    record.bytes_uncompressed = config.max_bytes + 1
                raise
            record.bytes_uncompressed = len(body)
        elif encoding == "identity":
            body = raw
            record.bytes_uncompressed = len(body)
            if len(body) > config.max_bytes:
                raise _BodyError(413, f"request exceeds max limit of {config.max_bytes} bytes")
        else:
            raise _BodyError(400, f"unsupported Content-Encoding {encoding!r}: use gzip or none")

        content_type = request.content_type
        if content_type not in ("application/json", "application/x-ndjson"):
            raise _BodyError(
                400,
                f"unsupported Content-Type {content_type!r}: "
                "use application/json or application/x-ndjson",
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _BodyError(400, "body is not valid UTF-8") from None
        events = _parse_events(text, ndjson=content_type == "application/x-ndjson")
        if not events:
            raise _BodyError(400, "body holds no events")
        return events

    def _import(events: list[Any], record: RequestRecord) -> list[dict[str, Any]]:
        """Store the valid records (no await inside: atomic w.r.t. other requests)."""
        now_ms = int(time.time() * 1000)
        failed: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        unique: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            problem = _check_event(event, now_ms, max_future_ms, state.refuse_distinct_ids)
            if problem is not None:
                entry: dict[str, Any] = {"index": index}
                if config.failed_records_key is not None:
                    entry[config.failed_records_key] = _insert_id_of(event)
                entry.update(field=problem.field, message=problem.message)
                failed.append(entry)
                continue
            props = event["properties"]
            key = EventKey(event["event"], props["time"], props["distinct_id"], props["$insert_id"])
            if key in state.store:
                state.duplicates += 1
            else:
                unique.append(event)
            state.store[key] = event
            form = _canonical(event)
            forms = state.forms.setdefault(key, [])
            if form not in forms:
                forms.append(form)
            accepted.append(event)
        state.events_received += len(events)
        state.events_rejected += len(failed)
        record.imported = len(accepted)
        record.failed = len(failed)
        if config.store_path is not None and unique:
            # One line per event as Mixpanel would count it: a resent duplicate adds nothing.
            with config.store_path.open("a", encoding="utf-8") as out:
                out.writelines(
                    json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in unique
                )
        return failed

    app = web.Application(handler_args={"auto_decompress": False})
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _insert_id_of(event: Any) -> str:
    if isinstance(event, dict):
        props = event.get("properties")
        if isinstance(props, dict):
            insert_id = props.get("$insert_id")
            if isinstance(insert_id, str):
                return insert_id
    return ""


# --- running it --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standin:
    """A running stand-in: ``url`` is the base URL (append ``/import``)."""

    url: str
    host: str
    port: int
    state: StandinState
    config: StandinConfig

    @property
    def import_url(self) -> str:
        """The full URL of the ``/import`` endpoint."""
        return f"{self.url}/import"


@asynccontextmanager
async def running_standin(
    config: StandinConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state: StandinState | None = None,
    shutdown_timeout_s: float = 2.0,
) -> AsyncIterator[Standin]:
    """Serve a stand-in on ``host:port`` (0 picks a free port) for the ``async with`` block.

    On exit, requests still in flight get ``shutdown_timeout_s`` to finish before being cut.
    """
    config = config if config is not None else StandinConfig()
    state = state if state is not None else StandinState(config)
    runner = web.AppRunner(
        make_app(config, state), access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); choose another port"
            ) from exc
        bound_port = int(runner.addresses[0][1])
        shown_host = f"[{host}]" if ":" in host else host
        yield Standin(f"http://{shown_host}:{bound_port}", host, bound_port, state, config)
    finally:
        await runner.cleanup()


def banner(standin: Standin) -> str:
    """One line: where the stand-in listens and the throwaway credentials that open it."""
    config = standin.config
    if config.service_accounts:
        user, secret = next(iter(config.service_accounts.items()))
        credentials = (
            f"MIXPANEL_SERVICE_ACCOUNT_USERNAME={user} MIXPANEL_SERVICE_ACCOUNT_SECRET={secret} "
            f"MIXPANEL_PROJECT_ID={config.project_id}"
        )
    elif config.api_secrets:
        credentials = f"MIXPANEL_API_SECRET={min(config.api_secrets)}"
    else:
        credentials = "(no credentials configured: every request gets 401)"
    return (
        f"backfill stand-in listening on {standin.import_url} — rehearse with: "
        f"{credentials} backfill run INPUT --api-url {standin.url}"
    )


def serve(
    config: StandinConfig,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    out: TextIO | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM, print the banner, then a summary line when stopped.

    The printed credentials are the stand-in's own throwaway ones, never a Mixpanel secret.
    """
    stream = out if out is not None else sys.stdout

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows or off the main thread: Ctrl-C then arrives as
            # KeyboardInterrupt, which serve() absorbs below.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        async with running_standin(config, host, port) as standin:
            print(banner(standin), file=stream, flush=True)
            try:
                await stop.wait()
            finally:
                summary = json.dumps(standin.state.summary(), separators=(", ", ": "))
                print(f"backfill stand-in stopped: {summary}", file=stream, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
