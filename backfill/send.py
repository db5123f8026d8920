"""Send batches to ``/import?strict=1``: a worker pool on one aiohttp session, paced and retried.

* One ``aiohttp.ClientSession``; ``concurrency`` workers take batches from a bounded queue,
  so the reader never runs more than a few batches ahead of the senders.
* An ``aiolimiter`` leaky bucket meters events, not requests, at ``rate_per_s``; every
  attempt pays, retries included, because Mixpanel counts them. The bucket holds a tenth of a
  second of events (at least one batch) so a run starts without a burst.
* ``tenacity`` retries 429, 5xx, timeouts and dropped connections with Mixpanel's backoff:
  ``base`` (2 s) doubling to 30x base (60 s), plus 0.5x-2.5x base of jitter (1-5 s); a
  ``Retry-After`` header wins. ``max_attempts`` tries, then the run aborts (exit 3).
* 413 splits the batch in two and sends each half; 400 with ``failed_records`` maps each
  refused record back to its source row and counts the rest as imported (never resent);
  400 without it refuses the whole batch; 401/403 stops every worker at once.

This module and ``standin`` are the only ones that know aiohttp; ``_classify`` is the one place
where its exceptions become ours.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from backfill.errors import (
    Aborted,
    AuthRefused,
    RetriesExhausted,
    RetryableSendError,
)
from backfill.events import Batch, Encoder
from backfill.settings import Credentials

MAX_RETRY_AFTER_S = 900.0
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class SendConfig:
    """How to reach ``/import`` and how hard to push; fixed for the whole run."""

    import_url: str
    credentials: Credentials
    project_id: str | None
    concurrency: int = 10
    rate_per_s: float = 25_000.0
    max_attempts: int = 8
    timeout_s: float = 30.0
    retry_base_s: float = 2.0
    batch_size: int = 2000

    def __repr__(self) -> str:
        return (
            f"SendConfig(url={self.import_url!r}, {self.credentials!r}, "
            f"project_id={self.project_id!r}, concurrency={self.concurrency}, "
            f"rate_per_s={self.rate_per_s})"
        )


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


@dataclass
class SendStats:
    """Counters for the summary; retries are keyed by cause (429, 5xx, timeout, connection)."""

    requests: int = 0
    events_sent: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    splits: int = 0
    events_imported: int = 0
    events_refused: int = 0


class _TooLarge(Exception):
    """413: the batch must be split."""


#: Called on the event loop for each settled batch. Synchronous on purpose: nothing can cancel
#: it halfway, so the checkpoint and rejects.csv never see half a batch.
OnSettled = Callable[[Settled], None]


class Sender:
    """The worker pool. ``run`` sends every batch from ``queue`` until it gets a None per worker."""

    def __init__(
        self,
        config: SendConfig,
        encoder: Encoder,
        on_settled: OnSettled,
        *,
        stats: SendStats | None = None,
        rng: random.Random | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.on_settled = on_settled
        self.stats = stats if stats is not None else SendStats()
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        capacity = max(float(config.batch_size), config.rate_per_s / 10)
        self.limiter = AsyncLimiter(capacity, capacity / config.rate_per_s)
        user, password = config.credentials.basic_auth
        self._headers = {
            "Authorization": aiohttp.encode_basic_auth(user, password),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
        }
        self._params = {"strict": "1"}
        if not config.credentials.legacy and config.project_id:
            self._params["project_id"] = config.project_id
        self._stopped = False

    async def run(self, queue: asyncio.Queue[Batch | None]) -> None:
        """Drain ``queue`` with ``concurrency`` workers; the first fatal error stops them all."""
        connector = aiohttp.TCPConnector(limit=self.config.concurrency, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, raise_for_status=False
        ) as session:
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(self.config.concurrency):
                        group.create_task(self._worker(session, queue))
            except BaseExceptionGroup as eg:
                # Surface the first of our own errors (auth, retries) rather than the group.
                for exc in _leaves(eg):
                    if isinstance(exc, Aborted):
                        raise exc from None
                raise

    def stop(self) -> None:
        """Take no new batch; the ones in flight carry on to their end."""
        self._stopped = True

    async def _worker(
        self, session: aiohttp.ClientSession, queue: asyncio.Queue[Batch | None]
    ) -> None:
        while not self._stopped:
            batch = await queue.get()
            if batch is None:
                return
            await self._send(session, batch)

    async def _send(self, session: aiohttp.ClientSession, batch: Batch) -> None:
        try:
            settled = await self._send_with_retries(session, batch)
        except _TooLarge:
            if len(batch) == 1:
                refusal = Refusal(
                    int(batch.pairs.rows[0]),
                    str(batch.pairs.anon[0].as_py()),
                    str(batch.pairs.identified[0].as_py()),
                    "request too large (413) even as a single event",
                )
                self._settle(Settled(batch, 0, (refusal,)))
                return
            self.stats.splits += 1
            first, second = self.encoder.split(batch)
            await self._send(session, first)
            await self._send(session, second)
            return
        self._settle(settled)

    def _settle(self, settled: Settled) -> None:
        self.stats.events_imported += settled.imported
        self.stats.events_refused += len(settled.refused)
        self.on_settled(settled)

    async def _send_with_retries(self, session: aiohttp.ClientSession, batch: Batch) -> Settled:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableSendError),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(session, batch)
        except RetryableSendError as e:
            raise RetriesExhausted(
                f"a batch of {len(batch)} events (rows {batch.first_row}-{batch.last_row}) "
                f"failed {self.config.max_attempts} times, last with {e}; the checkpoint is "
                "kept: run the same command again to resume"
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _wait(self, state: RetryCallState) -> float:
        """Mixpanel's backoff, or the server's Retry-After when it gives one."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableSendError) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, MAX_RETRY_AFTER_S)
        base = self.config.retry_base_s
        backoff: float = min(base * 2.0 ** (state.attempt_number - 1), base * 30.0)
        return backoff + self._rng.uniform(0.5 * base, 2.5 * base)

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.cause if isinstance(exc, RetryableSendError) else "other"
        self.stats.retries[cause] += 1
        if self._on_retry is not None:
            self._on_retry()

    async def _post(self, session: aiohttp.ClientSession, batch: Batch) -> Settled:
        await self.limiter.acquire(len(batch))
        self.stats.requests += 1
        self.stats.events_sent += len(batch)
        try:
            async with session.post(
                self.config.import_url, params=self._params, data=batch.body, headers=self._headers
            ) as response:
                status = response.status
                body = await response.read()
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _classify(e) from None
        return self._interpret(batch, status, body, retry_after)

    def _interpret(
        self, batch: Batch, status: int, body: bytes, retry_after: str | None
    ) -> Settled:
        if status == 200:
            return Settled(batch, len(batch))
        answer = _json_object(body)
        message = str(answer.get("error") or body[:200].decode("utf-8", "replace")).strip()
        if status == 400:
            failed = answer.get("failed_records")
            if isinstance(failed, list) and failed:
                refused = _map_failed(batch, failed)
                return Settled(batch, len(batch) - len(refused), refused)
            refusal = message or "the request failed validation"
            return Settled(batch, 0, tuple(_refuse_all(batch, refusal)))
        if status in (401, 403):
            self._stopped = True
            raise AuthRefused(
                f"Mixpanel refused the credentials (HTTP {status}: {message or 'no detail'}): "
                "check MIXPANEL_SERVICE_ACCOUNT_USERNAME/SECRET (or MIXPANEL_API_SECRET), that "
                "the service account has access to the project, and the project id; "
                "then rerun the same command to resume"
            )
        if status == 413:
            raise _TooLarge
        if status in _RETRYABLE_STATUS or status >= 500:
            cause = "429" if status == 429 else "5xx"
            raise RetryableSendError(
                f"HTTP {status}: {message}",
                cause=cause,
                status=status,
                retry_after_s=_retry_after(retry_after),
            )
        raise Aborted(
            f"unexpected HTTP {status} from {self.config.import_url}: {message[:200]} "
            "(check --api-url / --region); the checkpoint is kept"
        )


def _classify(e: BaseException) -> RetryableSendError:
    """The one place aiohttp's failures become ours."""
    if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
        return RetryableSendError("request timed out", cause="timeout")
    if isinstance(e, aiohttp.ClientConnectorError):
        return RetryableSendError(f"cannot connect: {e.os_error}", cause="connection")
    if isinstance(
        e,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientConnectionError,
    ):
        return RetryableSendError(f"connection dropped ({type(e).__name__})", cause="connection")
    if isinstance(e, aiohttp.ClientResponseError):
        return RetryableSendError(f"bad response ({e.status})", cause="connection")
    return RetryableSendError(f"{type(e).__name__}", cause="connection")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to the backoff
    return seconds if seconds >= 0 else None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _map_failed(batch: Batch, failed: list[Any]) -> tuple[Refusal, ...]:
    """Each failed record to its source row, by ``$insert_id`` (either key) or by index."""
    ids = batch.insert_ids.to_pylist()
    position = {insert_id: i for i, insert_id in enumerate(ids)}
    found: dict[int, str] = {}
    for record in failed:
        if not isinstance(record, dict):
            continue
        key = record.get("$insert_id", record.get("insert_id"))
        i = position.get(key) if isinstance(key, str) else None
        index = record.get("index")
        if i is None and isinstance(index, int) and 0 <= index < len(batch):
            i = index
        if i is None:
            continue
        field_name = record.get("field")
        text = str(record.get("message") or "refused")
        found.setdefault(i, f"{field_name}: {text}" if field_name else text)
    anon = batch.pairs.anon
    ident = batch.pairs.identified
    return tuple(
        Refusal(int(batch.pairs.rows[i]), anon[i].as_py(), ident[i].as_py(), message)
        for i, message in sorted(found.items())
    )


def _refuse_all(batch: Batch, message: str) -> list[Refusal]:
    rows = batch.pairs.rows.tolist()
    anon = batch.pairs.anon.to_pylist()
    ident = batch.pairs.identified.to_pylist()
    return [Refusal(r, a, u, message) for r, a, u in zip(rows, anon, ident, strict=True)]


def _leaves(eg: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
