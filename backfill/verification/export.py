"""Mixpanel's raw event export as a stream of lines: one aiohttp session, few queries, retried.

Like ``send``, this module knows aiohttp (the export is a second endpoint of Mixpanel's, with
its own host and limits: ``mixpanel.EXPORT_*``). One query asks for the run's event names over
a range of days; its answer (JSON Lines, gzip on the wire, inflated by aiohttp) is cut into
lines as it arrives and handed to ``on_line``, so memory holds one network chunk at a time.

Retries: 429, 5xx, timeouts and dropped connections, with the sending's backoff (``base``
doubling to 30x base, plus 0.5x-2.5x base of jitter; a ``Retry-After`` wins, capped). A query
that breaks halfway is asked again from its start: matching is idempotent, so lines read twice
change nothing. The export allows 60 queries an hour: one verify makes at most
``MAX_REQUESTS`` requests, retries included, and when they run out the message says how long
to wait.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import aiohttp

from backfill.config.settings import Credentials
from backfill.errors import (
    AuthRefused,
    RequestRefused,
    RetriesExhausted,
    UnexpectedAnswer,
    Unreachable,
)
from backfill.mixpanel import EXPORT_PATH, EXPORT_QUERIES_PER_HOUR
from backfill.read.lines import Lines
from backfill.untrusted.boundedjson import loads
from backfill.untrusted.masking import shown
from backfill.verification.match import MAX_LINE_BYTES

#: Requests one verify may make, retries included (the export allows 60 an hour).
MAX_REQUESTS = 8
#: A ``Retry-After`` longer than this is not waited out in full (as ``send`` caps it).
MAX_RETRY_AFTER_S = 300.0
_CHUNK = 1 << 16

OnLine = Callable[[bytes], None]


@dataclass(frozen=True)
class ExportConfig:
    """Where the export is and how to ask it; the repr masks the credentials."""

    base_url: str
    credentials: Credentials = field(repr=False)
    project_id: str | None
    timeout_s: float
    max_attempts: int
    retry_base_s: float

    @property
    def url(self) -> str:
        """The full endpoint: ``--export-url`` may name the host or the endpoint itself."""
        base = self.base_url.rstrip("/")
        return base if base.endswith(EXPORT_PATH) else base + EXPORT_PATH


class _Retry(Exception):
    def __init__(self, why: str, retry_after_s: float | None = None, *, limited: bool = False):
        super().__init__(why)
        self.retry_after_s = retry_after_s
        self.limited = limited


@dataclass
class ExportClient:
    """Queries the export; ``requests`` counts every request made, retries included."""

    config: ExportConfig
    rng: random.Random = field(default_factory=random.Random)
    requests: int = 0
    rate_limited: int = 0

    async def query(self, first: date, last: date, events: list[str], on_line: OnLine) -> None:
        """Every stored event of ``events`` from ``first`` to ``last`` (UTC days, inclusive)."""
        params = {
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
            "event": json.dumps(events),
            "time_in_ms": "true",
        }
        if not self.config.credentials.legacy and self.config.project_id:
            params["project_id"] = self.config.project_id
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            attempt = 0
            while True:
                attempt += 1
                try:
                    return await self._once(session, params, on_line)
                except _Retry as e:
                    self._give_up_or_wait(e, attempt)
                    await asyncio.sleep(self._wait_s(e, attempt))

    def _give_up_or_wait(self, e: _Retry, attempt: int) -> None:
        if attempt < self.config.max_attempts and self.requests < MAX_REQUESTS:
            return
        if e.limited:
            again = datetime.now(UTC) + timedelta(hours=1)
            raise RetriesExhausted(
                f"Mixpanel's export answered 429 {self.rate_limited} times: it allows "
                f"{EXPORT_QUERIES_PER_HOUR} queries an hour per project. Wait an hour (until "
                f"{again:%H:%M} UTC), then run the same backfill verify again; pairs already "
                "found merged are not asked for again"
            )
        raise RetriesExhausted(
            f"Mixpanel's export failed {attempt} times, last with {e}: run the same backfill "
            "verify again later"
        )

    def _wait_s(self, e: _Retry, attempt: int) -> float:
        if e.retry_after_s is not None:
            return min(e.retry_after_s, MAX_RETRY_AFTER_S)
        base = self.config.retry_base_s
        backoff = min(base * 2.0 ** (attempt - 1), base * 30.0)
        return backoff + self.rng.uniform(0.5 * base, 2.5 * base)

    async def _once(
        self, session: aiohttp.ClientSession, params: dict[str, str], on_line: OnLine
    ) -> None:
        user, password = self.config.credentials.basic_auth
        headers = {
            "Authorization": aiohttp.encode_basic_auth(user, password),
            "Accept-Encoding": "gzip",
            "Accept": "application/json, text/plain",
        }
        self.requests += 1
        try:
            async with session.get(
                self.config.url, params=params, headers=headers, allow_redirects=False
            ) as response:
                if response.status != 200:
                    await self._refused(response)
                # An exported event is a few KiB: a longer line is no event of ours, and
                # one without an end must not fill the memory.
                lines = Lines(max_line_bytes=MAX_LINE_BYTES)
                async for chunk in response.content.iter_chunked(_CHUNK):
                    for line in lines.feed(chunk):
                        if line.strip():
                            on_line(line)
                if (last := lines.end()) is not None and last.strip():
                    on_line(last)
        except aiohttp.ClientConnectorError as e:
            if isinstance(e, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
                raise Unreachable(
                    f"cannot reach {self.config.url}: its certificate was refused ({e})"
                ) from None
            raise _Retry(f"cannot connect ({e.os_error})") from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
            raise _Retry(f"the answer broke off ({type(e).__name__})") from None
        except aiohttp.ClientError as e:
            raise _Retry(f"{type(e).__name__}: {e}") from None
        except TimeoutError:
            raise _Retry(f"no data for {self.config.timeout_s:g} s") from None

    async def _refused(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        text = (await response.content.read(4096)).decode("utf-8", "replace")
        try:
            said = str(loads(text, max_bytes=4096).get("error") or text)
        except (ValueError, AttributeError):
            said = text.strip()[:200]
        # Server text reaches the terminal: a proxy may echo the Authorization header, or
        # send escape sequences.
        said = shown(said, self.config.credentials.echoes)
        if status == 429 or status == 408 or status >= 500:
            if status == 429:
                self.rate_limited += 1
            raise _Retry(f"{status} {said}", _retry_after(response), limited=status == 429)
        if status in (401, 403):
            raise AuthRefused(
                f"Mixpanel's export refused the credentials ({status}: {said}): check "
                "MIXPANEL_SERVICE_ACCOUNT_USERNAME/SECRET and MIXPANEL_PROJECT_ID (the service "
                "account needs access to the project), then run backfill verify again"
            )
        if status == 400:
            raise RequestRefused(f"Mixpanel's export refused the query (400: {said})")
        raise UnexpectedAnswer(
            f"{self.config.url} answered {status} ({said[:120]}): not Mixpanel's export; check "
            "--export-url or --region"
        )


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None
