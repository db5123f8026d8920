"""Mixpanel's answers to ``/import?strict=1``: what settles a request, what stops the run.

* A record counts as imported only when the answer says so: a 200 or a 400 whose
  ``num_records_imported`` plus the records it refuses by name (``$insert_id``, ``insert_id``
  or ``index``) add up to the request. Refused records go to the report.
* A 400 that names no record (no ``failed_records``, plain strings, entries with neither a
  known insert id nor a valid index) refuses the request, not its rows: the run stops, those
  rows not done. A Simplified ID Merge project answers ``$identify`` this way.
* 401/403, redirects, answers that are not Mixpanel's JSON or do not add up, a 413 for a
  single event: the run stops (``Aborted``), nothing of that request counted.
* 408, 429, 5xx are worth a retry (``RetryableSendError``), honouring ``Retry-After`` given
  as seconds or as an HTTP date; 413 for several events splits the batch (``TooLarge``).

No aiohttp here: ``send`` reads the response into an ``Answer`` and asks ``interpret``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from backfill.errors import (
    AuthRefused,
    IdentityEventsRefused,
    RequestRefused,
    RetryableSendError,
    UnexpectedAnswer,
)
from backfill.send.events import Batch

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SIMPLIFIED_HINT = "simplified identity"


@dataclass(frozen=True)
class Refusal:
    """One record Mixpanel refused: its source row and Mixpanel's message."""

    row: int
    anon: str
    identified: str
    message: str


@dataclass(frozen=True)
class Settled:
    """A batch (or half of one) that is done: imported, refused, or partly both."""

    batch: Batch
    imported: int
    refused: tuple[Refusal, ...] = ()


class TooLarge(Exception):
    """413: the batch must be split."""


@dataclass(frozen=True)
class Answer:
    """What came back for one request: enough to settle it, retry it or stop."""

    status: int
    body: bytes | None  # None: longer than MAX_ANSWER_BYTES, so not Mixpanel's
    retry_after: str | None = None
    location: str | None = None

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None if it is not one."""
        if self.body is None:
            return None
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def message(self) -> str:
        """Mixpanel's ``error`` text, else the start of the body, on one line."""
        answer = self.json() or {}
        text = answer.get("error")
        if not isinstance(text, str) or not text:
            text = (self.body or b"")[:200].decode("utf-8", "replace")
        return " ".join(text.split())[:300]


def interpret(batch: Batch, answer: Answer, url: str) -> Settled:
    """What one answer means: the batch settled, or raise TooLarge, a retry, or an Aborted."""
    status = answer.status
    if status in (200, 400):
        return settle(batch, answer, url)
    if 300 <= status < 400:
        raise UnexpectedAnswer(
            f"{url} answered HTTP {status}, a redirect to "
            f"{answer.location or '(no Location)'}; backfill never follows redirects (the "
            "request would lose its body or carry your users' ids elsewhere): point "
            "--api-url at Mixpanel's /import (or choose --region), then rerun to resume"
        )
    if status in (401, 403):
        raise AuthRefused(
            f"Mixpanel refused the credentials (HTTP {status}: "
            f"{answer.message() or 'no detail'}): check MIXPANEL_SERVICE_ACCOUNT_USERNAME/"
            "SECRET (or MIXPANEL_API_SECRET), that the service account has access to the "
            "project, and the project id; then rerun the same command to resume"
        )
    if status == 413:
        if len(batch) > 1:
            raise TooLarge
        raise UnexpectedAnswer(
            f"{url} answered 413 (too large) to a single event of "
            f"{batch.json_bytes:,} bytes, far under Mixpanel's limit: a proxy in front of "
            "it may limit request sizes; check --api-url, then rerun to resume"
        )
    if status in _RETRYABLE_STATUS or status >= 500:
        raise RetryableSendError(
            f"HTTP {status}: {answer.message()}",
            cause="429" if status == 429 else "5xx",
            status=status,
            retry_after_s=retry_after_seconds(answer.retry_after),
        )
    raise UnexpectedAnswer(
        f"unexpected HTTP {status} from {url}: {answer.message()} "
        "(check --api-url / --region); the checkpoint is kept, rerun to resume"
    )


def settle(batch: Batch, answer: Answer, url: str) -> Settled:
    """A 200 or 400 as Mixpanel's strict mode answers: what was imported, what refused."""
    data = answer.json()
    refused: tuple[Refusal, ...] = ()
    if answer.status == 400:
        # A 400 that names no record refuses the request, whatever else its body holds.
        failed = (data or {}).get("failed_records")
        refused, unnamed = _map_failed(batch, failed if isinstance(failed, list) else [])
        if unnamed or not refused:
            raise _request_refused(answer, unnamed)
    imported = None if data is None else data.get("num_records_imported")
    if data is None or not isinstance(imported, int) or isinstance(imported, bool):
        shown = " ".join((answer.body or b"(over 8 MiB)")[:120].decode("utf-8", "replace").split())
        raise UnexpectedAnswer(
            f"{url} answered HTTP {answer.status} without Mixpanel's num_records_imported "
            f"({shown!r}): it is not Mixpanel's /import (check --api-url / --region); nothing "
            "was counted as imported, rerun to resume"
        )
    if imported + len(refused) != len(batch):
        raise UnexpectedAnswer(
            f"Mixpanel's answer does not add up: {len(batch)} records sent, "
            f"num_records_imported {imported}, {len(refused)} refused by name (HTTP "
            f"{answer.status}); the request is not counted as settled: rerun to resume (its "
            "records are resent as identical events, which Mixpanel counts once)"
        )
    return Settled(batch, imported, refused)


def _request_refused(answer: Answer, unnamed: list[str]) -> RequestRefused:
    said = "; ".join(dict.fromkeys(unnamed)) or answer.message() or "no detail"
    if _SIMPLIFIED_HINT in said.lower():
        return IdentityEventsRefused(
            f"Mixpanel refused the request: {said!r}. This project uses Simplified ID Merge, "
            "where $identify does nothing: rerun with --id-merge simplified to send pairing "
            "events instead (Project Settings → Identity Merge shows the system); nothing "
            "was imported from that request"
        )
    return RequestRefused(
        f"Mixpanel refused the whole request (HTTP 400: {said}); none of its rows is counted "
        "as done: fix the cause (the project id? the region?), then run the same command "
        "again to resume"
    )


def _map_failed(batch: Batch, failed: list[Any]) -> tuple[tuple[Refusal, ...], list[str]]:
    """Each failed record to its source row, by ``$insert_id`` (either key) or by index.

    Returns the refusals, and the entries that name no record of this batch (a plain string,
    an object with neither a known insert id nor a valid index): those refuse the request.
    """
    ids = batch.insert_ids.to_pylist()
    position = {insert_id: i for i, insert_id in enumerate(ids)}
    found: dict[int, str] = {}
    unnamed: list[str] = []
    for record in failed:
        i = _record_position(record, position, len(batch))
        if i is None:
            unnamed.append(_entry_text(record))
            continue
        field_name = record.get("field")
        text = str(record.get("message") or "refused")
        found.setdefault(i, f"{field_name}: {text}" if field_name else text)
    anon = batch.pairs.anon
    ident = batch.pairs.identified
    refused = tuple(
        Refusal(int(batch.pairs.rows[i]), anon[i].as_py(), ident[i].as_py(), message)
        for i, message in sorted(found.items())
    )
    return refused, unnamed


def _record_position(record: Any, position: dict[str, int], size: int) -> int | None:
    if not isinstance(record, dict):
        return None
    for key in ("$insert_id", "insert_id"):
        value = record.get(key)
        if isinstance(value, str) and value in position:
            return position[value]
    index = record.get("index")
    # bool is an int in Python: {"index": true} names no record.
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < size:
        return index
    return None


def _entry_text(record: Any) -> str:
    if isinstance(record, str):
        return " ".join(record.split())[:300]
    return " ".join(json.dumps(record, ensure_ascii=False, default=str).split())[:300]


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date; else None."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(seconds, 0.0)
    return seconds if seconds >= 0 and seconds == seconds else None
