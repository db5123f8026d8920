"""The stand-in's HTTP face: ``POST /import`` answered in the order Mixpanel answers.

Order in which a request to ``/import`` is answered (the first that applies wins):

    1. method and path: other paths 404, other methods 405;
    2. credentials: 401, then the forbidden mode: 403 (a 401 is always a 401: no fault is
       drawn and no scripted fault is used up by a request that fails here);
    3. ``strict=1``: 400;
    4. the fault for this request: ``always`` if set, else the next scripted one, else one
       drawn at random (``503``, ``429``, ``408``, ``drop``, the redirects ``302``/``307``,
       ``400_whole`` (a 400 naming no record) and ``200_not_json`` answer now, as do the
       hostile servers' faults of ``hostile`` (``*_deep``, ``*_echo``, ``200_brotli``);
       ``slow`` waits ``slow_s`` and goes on);
    5. the body: encoding and content type 400, bad gzip 400, too many bytes 413, invalid
       JSON or no events 400, too many events 413;
    6. the rate limit (``rate_limit_events_per_s``): 429, nothing imported; then a Simplified
       project's refusal of identity events: 400, nothing imported;
    7. per-record validation and import of the valid records;
    8. ``500_after_import`` / ``drop_after_import``: the records are stored, then the answer
       is a 500 or a dropped connection (as when Mixpanel stores a batch but the reply is lost);
    9. 200, or 400 with ``failed_records``; with the fault ``200_refused`` the same refusals
       come on a 200 (``num_records_imported`` still true), with ``200_refused_all_imported``
       on a 200 that also counts them imported (a self-contradictory answer). Mixpanel is
       not known to answer so; a server in front of it might, and backfill must not count
       refused records as imported.

Every body is read to its end and parsed before step 2, only so that the request log can show
its size and ``$insert_id``s whatever the answer; nothing is stored before step 7. A request
whose client gives up (timeout) is still carried to the end, as on a real server.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web

from backfill.mixpanel import EXPORT_PATH, IdMerge
from backfill.standin.auth import refused_access
from backfill.standin.config import StandinConfig
from backfill.standin.export import ExportEndpoint
from backfill.standin.faults import Fault, FaultRates
from backfill.standin.state import RequestRecord, StandinState
from backfill.standin.strict import (
    SIMPLIFIED_REFUSAL,
    VALIDATION_FAILED,
    Body,
    check_event,
    decode_body,
    insert_id_of,
    is_identity_event,
)

STATE_KEY: Final = web.AppKey("standin_state", StandinState)
CONFIG_KEY: Final = web.AppKey("standin_config", StandinConfig)

_READ_CHUNK: Final = 64 * 1024
_RATE_LIMIT_MESSAGE: Final = (
    "Project exceeded rate limits. Please retry the request with exponential backoff."
)
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


def answer(
    code: int, error: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """A JSON answer shaped as Mixpanel's: ``code``, ``error`` if any, extras, ``status``."""
    body: dict[str, Any] = {"code": code}
    if error is not None:
        body["error"] = error
    body.update(extra)
    body["status"] = _REASONS[code]
    return web.json_response(body, status=code, headers=headers)


def rate_limited(rates: FaultRates) -> web.Response:
    """Mixpanel's 429 as live probes saw it: no ``code``, ``status`` 0, no Retry-After."""
    body = {"error": _RATE_LIMIT_MESSAGE, "status": 0}
    return web.json_response(body, status=429, headers=rates.retry_after())


_JSON = "application/json"


def hostile(fault: Fault, authorization: str) -> web.Response | None:
    """The answer of a hostile or broken server's fault, or None for every other fault.

    Mixpanel never answers these; a proxy or an impostor at ``--api-url`` may, and backfill
    must end each with one line and its exit code, quoting nothing it should not.
    """
    if fault in ("200_deep", "400_deep", "503_deep"):
        return web.Response(status=int(fault[:3]), body=b"[" * 100_000, content_type=_JSON)
    if fault in ("403_echo", "502_echo"):
        token = authorization.partition(" ")[2]
        try:
            decoded = base64.b64decode(token).decode("utf-8", "replace")
        except ValueError:
            decoded = ""
        page = (
            f"\x1b[31mProxy\x1b[0m\x1b]0;owned\x07 X-Token: {token}\r\nX-User: {decoded}\r\n"
            f"Authorization: {authorization}\r\nX-Echo: {authorization}\r\n"
        )
        return web.Response(status=int(fault[:3]), text=page, content_type="text/plain")
    if fault == "200_brotli":
        # A valid brotli stream of b'{"code":200}' would need a brotli library; any bytes do,
        # since a client without one cannot read it either way.
        body = b'\x8b\x05\x80{"code":200,"num_records_imported":1}\x03'
        headers = {"Content-Encoding": "br"}
        return web.Response(status=200, body=body, headers=headers, content_type=_JSON)
    return None


class _Drop(Exception):
    """Close the connection without an answer, as a dropped connection looks to the client."""


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


#: Called with each request's record once it is answered or dropped (``serve`` prints it).
OnRequest = Callable[[RequestRecord], None]


class ImportEndpoint:
    """The handler of every request: logs it, answers ``/import``, imports what passes."""

    def __init__(
        self, config: StandinConfig, state: StandinState, on_request: OnRequest | None = None
    ) -> None:
        self.config = config
        self.state = state
        self.on_request = on_request
        self.export = ExportEndpoint(config, state)
        self._max_future_ms = int(config.max_future_s * 1000)
        # A gzip body may legitimately be a little larger than its content; past this it cannot
        # inflate to less than max_bytes unless it is built to waste space.
        self._wire_cap = config.max_bytes * 2 + 1024 * 1024

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Log the request, answer it, and count it in flight meanwhile."""
        state = self.state
        record = RequestRecord(state.clock(), request.method, request.path, dict(request.query))
        state.open_request(record)
        response: web.StreamResponse | None = None
        try:
            response = await self._respond(request, record)
            record.status = response.status
        except _Drop:
            transport = request.transport
            if transport is not None:
                transport.close()
        finally:
            state.close_request(record)
        if self.on_request is not None:
            self.on_request(record)
        # A dropped request's transport is closed: aiohttp discards this reply and the client
        # sees a disconnect; the record's status stays None.
        return response if response is not None else web.Response(status=204)

    async def _respond(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        if request.path.rstrip("/") == EXPORT_PATH:
            exported = await self.export.respond(request, record)
            if exported is None:
                raise _Drop
            return exported
        if request.path.rstrip("/") != "/import":
            where = f"this stand-in has /import and {EXPORT_PATH}"
            return answer(404, f"no such endpoint {request.path!r}: {where}")
        if request.method != "POST":
            return answer(405, "use POST /import")
        body = await self._read(request, record)
        refusal = self._check_access(request, record)
        if refusal is not None:
            return refusal
        fault = self.state.next_fault()
        record.fault = fault
        early: web.StreamResponse | None = hostile(fault, request.headers.get("Authorization", ""))
        if early is None:
            early = await self._apply_fault(fault)
        if early is not None:
            return early
        refusal = self._refuse_whole(body, record)
        if refusal is not None:
            return refusal
        assert body.events is not None  # _refuse_whole refuses every body without events
        failed = self._import(body.events, record)
        if fault == "500_after_import":
            return answer(500, "Internal server error")
        if fault == "drop_after_import":
            raise _Drop
        if failed and fault in ("200_refused", "200_refused_all_imported"):
            claimed = record.imported + (len(failed) if fault == "200_refused_all_imported" else 0)
            return answer(200, failed_records=failed, num_records_imported=claimed)
        if failed:
            return answer(
                400, VALIDATION_FAILED, failed_records=failed, num_records_imported=record.imported
            )
        return answer(200, num_records_imported=record.imported)

    async def _read(self, request: web.Request, record: RequestRecord) -> Body:
        """Read and decode the whole body, noting its sizes and insert ids in the log."""
        raw, record.bytes_compressed = await _read_body(request, self._wire_cap)
        body = decode_body(
            raw,
            wire_bytes=record.bytes_compressed,
            encoding=request.headers.get("Content-Encoding", "identity").strip().lower(),
            content_type=request.content_type,
            max_bytes=self.config.max_bytes,
        )
        record.bytes_uncompressed = body.bytes_uncompressed
        if body.events is not None:
            record.events = len(body.events)
            record.insert_ids = [insert_id_of(e) for e in body.events]
        return body

    def _check_access(self, request: web.Request, record: RequestRecord) -> web.Response | None:
        """Steps 2 and 3: credentials, the forbidden mode, ``strict=1``."""
        refused = refused_access(request, self.config, self.state, record)
        if refused is not None:
            return answer(*refused)
        if request.query.get("strict") != "1":
            return answer(400, "strict=1 is required: this stand-in imitates strict mode only")
        return None

    async def _apply_fault(self, fault: Fault) -> web.StreamResponse | None:
        """Step 4: the fault's answer now, or None to go on (after waiting, if ``slow``)."""
        rates = self.state.faults
        if fault == "503":
            return answer(503, "Service Unavailable", headers=rates.retry_after())
        if fault == "429":
            return rate_limited(rates)
        if fault == "408":
            return answer(408, "Request Timeout")
        if fault in ("302", "307"):
            location = {"Location": self.config.redirect_to}
            return web.Response(status=int(fault), headers=location, text="Moved")
        if fault == "200_not_json":
            page = "<html><body>Welcome</body></html>"
            return web.Response(status=200, content_type="text/html", text=page)
        if fault == "400_whole":
            return answer(400, VALIDATION_FAILED, num_records_imported=0)
        if fault == "drop":
            raise _Drop
        if fault == "slow":
            await asyncio.sleep(rates.slow_s)
        return None

    def _refuse_whole(self, body: Body, record: RequestRecord) -> web.Response | None:
        """Steps 5 and 6: a body that cannot be imported, the rate limit, Simplified's refusal."""
        if body.error is not None:
            if body.error.code == 400:
                return answer(400, body.error.message, num_records_imported=0)
            return answer(body.error.code, body.error.message)
        assert body.events is not None  # decode_body gives events or an error
        events = body.events
        if len(events) > self.config.max_events:
            return answer(413, f"request exceeds max limit of {self.config.max_events} events")
        if not self.state.admit(len(events)):
            record.rate_limited = True
            return rate_limited(self.state.faults)
        if self.config.id_merge == IdMerge.SIMPLIFIED and any(is_identity_event(e) for e in events):
            # As Mixpanel answers a Simplified project: the whole request, one plain string.
            return answer(
                400, VALIDATION_FAILED, failed_records=[SIMPLIFIED_REFUSAL], num_records_imported=0
            )
        return None

    def _import(self, events: list[Any], record: RequestRecord) -> list[dict[str, Any]]:
        """Step 7: check each record, store the valid ones; the refusals, as Mixpanel lists them.

        No await inside: atomic with respect to other requests.
        """
        now_ms = int(time.time() * 1000)
        key = self.config.failed_records_key
        failed: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            problem = check_event(
                event, now_ms, self._max_future_ms, self.state.refuse_distinct_ids
            )
            if problem is None:
                accepted.append(event)
                continue
            entry: dict[str, Any] = {"index": index}
            if key is not None:
                entry[key] = insert_id_of(event)
            entry.update(field=problem.field, message=problem.message)
            failed.append(entry)
        self.state.store_accepted(accepted, refused=len(failed))
        record.imported = len(accepted)
        record.failed = len(failed)
        return failed


def make_app(
    config: StandinConfig,
    state: StandinState | None = None,
    *,
    on_request: OnRequest | None = None,
) -> web.Application:
    """The stand-in as an aiohttp application; ``app[STATE_KEY]`` is its ``StandinState``.

    ``on_request`` is called with each request's record when it is answered or dropped. The
    application asks its server not to inflate request bodies itself (``handler_args``), so
    that it can measure the compressed size and stop a gzip bomb at ``max_bytes``.
    """
    state = state if state is not None else StandinState(config)
    endpoint = ImportEndpoint(config, state, on_request)
    app = web.Application(handler_args={"auto_decompress": False})
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_route("*", "/{tail:.*}", endpoint.handle)
    return app
