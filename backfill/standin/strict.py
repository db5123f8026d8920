"""What ``/import`` accepts: the body as a whole, then each record in strict mode.

Pure functions and constants, no state and no aiohttp: the application (``app.py``) calls them
in the order Mixpanel answers, and the state (``state.py``) stores what they let through.

* ``decode_body``: the encoding (gzip or none), the size limit on the inflated body, the content
  type (a JSON array or NDJSON), valid UTF-8 and JSON, at least one event. Any failure refuses
  the whole request (``BodyError``: 400 or 413) before a single record is looked at.
* ``check_event``: the first reason strict mode refuses one record, or None. A refused record
  fails alone; the others of its request are imported.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NoReturn

from backfill.mixpanel import (
    IDENTITY_EVENTS,
    INSERT_ID_PATTERN,
    MAX_ID_BYTES,
    MIN_TIME_MS,
    MS_THRESHOLD,
    PLACEHOLDER_DISTINCT_IDS,
)

#: Placeholder distinct_ids Mixpanel refuses (SPEC), compared case-insensitively after strip.
REFUSED_DISTINCT_IDS: Final = PLACEHOLDER_DISTINCT_IDS
#: The one plain string a Simplified project puts in ``failed_records`` (live probes, 2026-08).
SIMPLIFIED_REFUSAL: Final = (
    "identity events are not allowed when project is using simplified identity management"
)
#: The ``error`` of every strict-mode 400 that lists ``failed_records``.
VALIDATION_FAILED: Final = "some data points in the request failed validation"

_INSERT_ID_RE: Final = re.compile(INSERT_ID_PATTERN)
_GZIP_MAGIC: Final = b"\x1f\x8b"
_CONTENT_TYPES: Final = ("application/json", "application/x-ndjson")


# --- the body ----------------------------------------------------------------------------------


class BodyError(Exception):
    """The body cannot be imported as a whole; carries the status (400 or 413)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Body:
    """A request body as decoded: its events, or why it cannot be imported; and its size.

    ``bytes_uncompressed`` stops counting just past the limit, as the inflater stops there.
    """

    events: list[Any] | None
    error: BodyError | None
    bytes_uncompressed: int


def too_large(max_bytes: int) -> BodyError:
    """Mixpanel's 413 for a body over the byte limit."""
    return BodyError(413, f"request exceeds max limit of {max_bytes} bytes")


def decode_body(
    raw: bytes | None, *, wire_bytes: int, encoding: str, content_type: str, max_bytes: int
) -> Body:
    """The events of a body read off the wire (``raw`` is None when it was too large to keep).

    Checked in Mixpanel's order: encoding, size, content type, UTF-8, JSON, not empty.
    """
    if raw is None:
        return Body(None, too_large(max_bytes), wire_bytes)
    if encoding == "gzip":
        try:
            body = gunzip(raw, max_bytes)
        except BodyError as exc:
            return Body(None, exc, max_bytes + 1 if exc.code == 413 else 0)
    elif encoding == "identity":
        body = raw
        if len(body) > max_bytes:
            return Body(None, too_large(max_bytes), len(body))
    else:
        error = BodyError(400, f"unsupported Content-Encoding {encoding!r}: use gzip or none")
        return Body(None, error, 0)
    try:
        return Body(_events_of(body, content_type), None, len(body))
    except BodyError as exc:
        return Body(None, exc, len(body))


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Inflate every gzip member, stopping just past ``max_bytes`` to resist gzip bombs."""
    if not data.startswith(_GZIP_MAGIC):
        raise BodyError(400, "body is not valid gzip (Content-Encoding: gzip was sent)")
    out = bytearray()
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise too_large(max_bytes)
            if not inflater.eof:
                raise BodyError(400, "body is not valid gzip: the stream is truncated")
            rest = inflater.unused_data
            if rest and not rest.startswith(_GZIP_MAGIC):
                raise BodyError(400, "body is not valid gzip: trailing bytes after the stream")
    except zlib.error as exc:
        raise BodyError(400, f"body is not valid gzip: {exc}") from None
    return bytes(out)


def _events_of(body: bytes, content_type: str) -> list[Any]:
    if content_type not in _CONTENT_TYPES:
        raise BodyError(
            400,
            f"unsupported Content-Type {content_type!r}: "
            "use application/json or application/x-ndjson",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(400, "body is not valid UTF-8") from None
    events = parse_events(text, ndjson=content_type == "application/x-ndjson")
    if not events:
        raise BodyError(400, "body holds no events")
    return events


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_events(text: str, ndjson: bool) -> list[Any]:
    """The records of a JSON array, or of NDJSON (blank lines skipped); NaN is not JSON."""
    if ndjson:
        events = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    events.append(json.loads(line, parse_constant=_reject_constant))
                except ValueError as exc:
                    raise BodyError(400, f"invalid JSON on NDJSON line {number}: {exc}") from None
        return events
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BodyError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(parsed, list):
        raise BodyError(400, "body must be a JSON array of events")
    return parsed


# --- one record --------------------------------------------------------------------------------


class Invalid(NamedTuple):
    """Why strict mode refuses a record: the field (as Mixpanel names it) and a message."""

    field: str
    message: str


def check_event(
    event: Any, now_ms: int, max_future_ms: int, refused: set[str] | frozenset[str]
) -> Invalid | None:
    """The first reason Mixpanel's strict mode would refuse this record, or None."""
    if not isinstance(event, dict):
        return Invalid("event", "each record must be a JSON object")
    name = event.get("event")
    if not isinstance(name, str) or not name:
        return Invalid("event", "'event' must be a non-empty string")
    props = event.get("properties")
    if not isinstance(props, dict):
        return Invalid("properties", "'properties' must be a JSON object")
    problem = (
        _check_time(props.get("time"), now_ms, max_future_ms)
        or _check_distinct_id(props.get("distinct_id"))
        or _check_insert_id(props.get("$insert_id"))
        or _check_identity(name, props)
    )
    if problem is None and props["distinct_id"] in refused:
        return Invalid("properties.distinct_id", "distinct_id refused by stand-in configuration")
    return problem


def _check_time(t: Any, now_ms: int, max_future_ms: int) -> Invalid | None:
    if t is None:
        return Invalid("properties.time", "'properties.time' is required")
    if not isinstance(t, int) or isinstance(t, bool):
        return Invalid(
            "properties.time",
            "'properties.time' is invalid: must be an integer of seconds or milliseconds "
            "since epoch",
        )
    t_ms = t if t >= MS_THRESHOLD else t * 1000  # below the threshold: seconds
    if t_ms < MIN_TIME_MS:
        return Invalid("properties.time", "'properties.time' is invalid: before 1971-01-01")
    if t_ms > now_ms + max_future_ms:
        return Invalid("properties.time", "'properties.time' is invalid: in the future")
    return None


def _check_distinct_id(did: Any) -> Invalid | None:
    field = "properties.distinct_id"
    if did is None:
        return Invalid(field, "'properties.distinct_id' is required")
    if not isinstance(did, str):
        return Invalid(field, "'properties.distinct_id' must be a string")
    stripped = did.strip()
    if not stripped:
        return Invalid(field, "'properties.distinct_id' must not be empty")
    if stripped.lower() in REFUSED_DISTINCT_IDS:
        return Invalid(
            field, f"'properties.distinct_id' is invalid: {did!r} is a placeholder value"
        )
    if len(did.encode("utf-8")) > MAX_ID_BYTES:
        return Invalid(
            field, f"'properties.distinct_id' is invalid: longer than {MAX_ID_BYTES} bytes"
        )
    return None


def _check_insert_id(insert_id: Any) -> Invalid | None:
    if insert_id is None:
        return Invalid("properties.$insert_id", "'properties.$insert_id' is required")
    if not isinstance(insert_id, str) or not _INSERT_ID_RE.fullmatch(insert_id):
        return Invalid(
            "properties.$insert_id",
            "'properties.$insert_id' is invalid: must be 1 to 36 characters of [A-Za-z0-9-]",
        )
    return None


def _check_identity(name: str, props: dict[str, Any]) -> Invalid | None:
    """A malformed identity event is refused; one that merely does not merge is accepted.

    Mixpanel's strict mode accepts a ``$identify`` whose ``$anon_id`` is not a UUID v4 and
    silently does not merge it (``identity.py`` keeps that account), so the format of the anon
    id is not checked here: only that the identity event has the ids it needs.
    """
    if name == "$identify":
        anon = props.get("$anon_id")
        if not isinstance(anon, str) or not anon:
            return Invalid(
                "properties.$anon_id", "'properties.$anon_id' must be a non-empty string"
            )
        identified = props.get("$identified_id")
        if not isinstance(identified, str) or not identified.strip():
            return Invalid(
                "properties.$identified_id",
                "'properties.$identified_id' must be a non-empty string",
            )
        if identified != props["distinct_id"]:
            return Invalid(
                "properties.$identified_id",
                "'properties.$identified_id' must equal 'properties.distinct_id'",
            )
    elif name == "$merge":
        ids = props.get("$distinct_ids")
        if not (
            isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) and i for i in ids)
        ):
            return Invalid(
                "properties.$distinct_ids",
                "'properties.$distinct_ids' must be an array of exactly two non-empty strings",
            )
    return None


def is_identity_event(event: Any) -> bool:
    """Whether a record is one of Mixpanel's identity events (by its name)."""
    return isinstance(event, dict) and event.get("event") in IDENTITY_EVENTS


def insert_id_of(event: Any) -> str:
    """The record's ``$insert_id`` if it is a string, else ``""`` (for logs and refusals)."""
    if isinstance(event, dict):
        props = event.get("properties")
        if isinstance(props, dict):
            insert_id = props.get("$insert_id")
            if isinstance(insert_id, str):
                return insert_id
    return ""


def canonical(event: dict[str, Any]) -> str:
    """One text per content, whatever the order of its keys: tells two forms of a key apart."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
