"""``GET /api/2.0/export``: the stand-in's raw event export, in Mixpanel's shape.

As ``openapi/export.openapi.yaml`` (mixpanel/docs) describes it: HTTP Basic auth as for
``/import`` (a service account names its ``project_id``); ``from_date`` and ``to_date``
(``yyyy-mm-dd``, inclusive, UTC) required; ``event`` a JSON array of names; ``time_in_ms``;
the answer JSON Lines, one stored event per line with every property, gzip when the request
says ``Accept-Encoding: gzip``; at most 60 queries an hour and 3 a second, 429 beyond.

What it shows: every event the project holds (``preload``) or imported, with the failure
properties of an identity record that merged nothing (``failures``), repeated as often as it
arrived (a raw export is not deduplicated), except the ``export_lag`` share of imported events
that is "not exported yet". Scripted and random faults apply as to ``/import`` (``429``,
``503``, ``drop``, ``slow``). Not imitated: ``where`` (refused with a 400), ``limit``, time
zones of projects created before 2023.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, date, datetime
from typing import Any, Final

from aiohttp import web

from backfill.mixpanel import EXPORT_QUERIES_PER_HOUR, EXPORT_QUERIES_PER_S, MS_THRESHOLD
from backfill.standin.auth import refused_access
from backfill.standin.config import StandinConfig
from backfill.standin.state import RequestRecord, StandinState

_TOO_MANY: Final = (
    "Query rate limit exceeded: the export allows {limit} queries per {window}. Please retry later."
)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": "error"}, status=status, headers=headers)


class ExportEndpoint:
    """The handler of ``GET /api/2.0/export`` (None: drop the connection)."""

    def __init__(self, config: StandinConfig, state: StandinState) -> None:
        self.config = config
        self.state = state

    async def respond(
        self, request: web.Request, record: RequestRecord
    ) -> web.StreamResponse | None:
        """Auth, faults, the rate limits, the parameters, then the JSON Lines."""
        if request.method != "GET":
            return _error(405, "use GET /api/2.0/export")
        refused = refused_access(request, self.config, self.state, record)
        if refused is not None:
            return _error(*refused)
        fault = self.state.next_fault()
        record.fault = fault
        rates = self.state.faults
        if fault == "429":
            return _error(429, _TOO_MANY.format(limit=3, window="second"), rates.retry_after())
        if fault in ("503", "500_after_import"):
            return _error(503, "Service Unavailable", rates.retry_after())
        if fault in ("drop", "drop_after_import"):
            return None
        if fault == "slow":
            await asyncio.sleep(rates.slow_s)
        limited = self._over_limit()
        if limited is not None:
            record.rate_limited = True
            return limited
        try:
            query = _Query.parse(request.query)
        except ValueError as e:
            return _error(400, str(e))
        body = "".join(self._lines(query)).encode()
        record.events = body.count(b"\n")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def _over_limit(self) -> web.Response | None:
        now = self.state.clock()
        queries = self.state.export_queries
        if sum(1 for t in queries if now - t < 1.0) >= EXPORT_QUERIES_PER_S:
            return _error(429, _TOO_MANY.format(limit=EXPORT_QUERIES_PER_S, window="second"))
        if sum(1 for t in queries if now - t < 3600.0) >= EXPORT_QUERIES_PER_HOUR:
            return _error(429, _TOO_MANY.format(limit=EXPORT_QUERIES_PER_HOUR, window="hour"))
        queries.append(now)
        return None

    def _lines(self, query: _Query) -> list[str]:
        state = self.state
        found: list[tuple[int, str]] = []
        for key, event in list(state.store.items()):
            if query.events is not None and key.event not in query.events:
                continue
            time_ms = key.time if key.time >= MS_THRESHOLD else key.time * 1000
            day = datetime.fromtimestamp(time_ms / 1000, UTC).date()
            if not query.first <= day <= query.last or state.lagging(key):
                continue
            props: dict[str, Any] = dict(event["properties"])
            props.update(state.failures.get(key, {}))
            props["time"] = time_ms if query.time_in_ms else time_ms // 1000
            props["mp_processing_time_ms"] = time_ms
            line = json.dumps({"event": key.event, "properties": props}, ensure_ascii=False)
            found.extend([(time_ms, line + "\n")] * state.arrivals[key])
        found.sort(key=lambda item: item[0])
        return [line for _, line in found]


class _Query:
    """The export's parameters, checked as Mixpanel checks them."""

    def __init__(self, first: date, last: date, events: set[str] | None, time_in_ms: bool):
        self.first, self.last, self.events, self.time_in_ms = first, last, events, time_in_ms

    @classmethod
    def parse(cls, query: Any) -> _Query:
        dates = []
        for name in ("from_date", "to_date"):
            text = query.get(name)
            if text is None:
                raise ValueError(f"{name} is a required parameter")
            try:
                if len(text) != 10:
                    raise ValueError
                dates.append(date.fromisoformat(text))
            except ValueError:
                raise ValueError(f"{name} must be a date in yyyy-mm-dd format: {text!r}") from None
        if dates[0] > dates[1]:
            raise ValueError("from_date must be on or before to_date")
        if "where" in query:
            raise ValueError("where: this stand-in does not evaluate expressions")
        events = None
        if "event" in query:
            try:
                names = json.loads(query["event"])
            except ValueError:
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("event must be a JSON array of event names")
            events = set(names)
        in_ms = query.get("time_in_ms", "false").lower() == "true"
        return cls(dates[0], dates[1], events, in_ms)
