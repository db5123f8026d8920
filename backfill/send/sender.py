"""Send batches to ``/import?strict=1&ip=0``: a worker pool on one aiohttp session, paced, retried.

* One ``aiohttp.ClientSession``; workers take batches from a bounded queue, so the reader
  never runs more than a few batches ahead of the senders.
* ``pacing.Pacer`` paces them: an ``aiolimiter`` leaky bucket meters events, not requests, at
  the run's rate (``rate_per_s`` at most, lowered for the whole run by 429s); every attempt
  pays, retries included, because Mixpanel counts them. A gate bounds the requests on the
  wire: fixed at ``concurrency``, or (None) adapting from 10 to 20 to the measured latency so
  that the bucket, not the pool, sets the pace.
* ``tenacity`` retries 429, 408, 5xx, timeouts and dropped connections with Mixpanel's
  backoff: ``base`` (2 s) doubling to 30x base (60 s), plus 0.5x-2.5x base of jitter (1-5 s);
  a ``Retry-After`` header (seconds or an HTTP date, capped) wins. ``max_attempts`` tries,
  then the run aborts (exit 3).
* ``answers.interpret`` says what each answer means: the batch settled (imported, refused by
  name), a retry, a split (413), or a stop. The first answer that stops the run stops every
  worker from taking another batch; requests in flight settle, retries waiting for their turn
  give up (their rows are not done either).
* ``canary`` sends one request on its own before the pool starts, so a wrong project, wrong
  credentials or an unreachable host cost one event; there a name that does not resolve ends
  the run at once and a refused connection after about ``CANARY_CONNECT_BUDGET_S``.

This module and ``standin`` are the only ones that know aiohttp; ``_classify`` is the one place
where its exceptions become ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from backfill.config.settings import Credentials
from backfill.errors import (
    Aborted,
    RetriesExhausted,
    RetryableSendError,
    UnexpectedAnswer,
    Unreachable,
)
from backfill.send.answers import Answer, Settled, TooLarge, interpret
from backfill.send.events import Batch, Encoder
from backfill.send.pacing import Abandoned as _Abandoned
from backfill.send.pacing import Pacer, PacingRules, unless_stopping
from backfill.untrusted.masking import shown

#: A ``Retry-After`` longer than this is not waited out in full (documented in the README).
MAX_RETRY_AFTER_S = 300.0
#: A retry pause this long or longer is shown on the progress line (a Retry-After, mostly).
LONG_WAIT_S = 5.0
#: At the canary, a host that refuses connections is retried for about this long, then the
#: run stops naming the URL: a wrong --api-url should not take the whole backoff ladder.
CANARY_CONNECT_BUDGET_S = 25.0
#: Mixpanel's answers are small JSON objects (a 400 listing 2000 refusals is about 300 KB);
#: anything longer is not its answer, and is not read further.
MAX_ANSWER_BYTES = 8 << 20


@dataclass(frozen=True)
class SendConfig:
    """How to reach ``/import`` and how hard to push; fixed for the whole run.

    ``concurrency`` None adapts the requests in flight (10 to 20, see ``pacing``); a number
    fixes it. ``rate_per_s`` is the most the run sends; 429s lower it for a while.
    """

    import_url: str
    credentials: Credentials
    project_id: str | None
    concurrency: int | None
    rate_per_s: float
    max_attempts: int
    timeout_s: float
    retry_base_s: float
    batch_size: int
    pacing: PacingRules = field(default_factory=PacingRules)

    def __repr__(self) -> str:
        return (
            f"SendConfig(url={self.import_url!r}, {self.credentials!r}, "
            f"project_id={self.project_id!r}, concurrency={self.concurrency}, "
            f"rate_per_s={self.rate_per_s})"
        )


@dataclass
class SendStats:
    """Counters for the summary; retries are keyed by cause (429, 5xx, timeout, connection).

    ``rate_limited`` counts every 429 answer, also one that ends a batch's last attempt.
    """

    requests: int = 0
    rate_limited: int = 0
    events_sent: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    splits: int = 0
    events_imported: int = 0
    events_refused: int = 0


#: Called on the event loop for each settled batch. Synchronous on purpose: nothing can cancel
#: it halfway, so the checkpoint and rejects.csv never see half a batch.
OnSettled = Callable[[Settled], None]


class Sender:
    """The worker pool. ``run`` sends every batch from ``queue`` until it gets a None per worker.

    ``async with sender:`` keeps one session open across ``canary`` and ``run``; either also
    works on its own, opening a session for the call.
    """

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
        #: This run's pacing: the bucket of events/s and the gate of requests in flight.
        self.pacer = Pacer(config.rate_per_s, config.batch_size, config.concurrency, config.pacing)
        user, password = config.credentials.basic_auth
        #: What a server could echo of the credential: masked in every message quoting it.
        self._echoes = config.credentials.echoes
        self._headers = {
            "Authorization": aiohttp.encode_basic_auth(user, password),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
        }
        # ip=0: without it Mixpanel geolocates every event from this machine's address.
        self._params = {"strict": "1", "ip": "0"}
        if not config.credentials.legacy and config.project_id:
            self._params["project_id"] = config.project_id
        self._stopping = asyncio.Event()
        self._error: Aborted | None = None
        self._long_waits: list[float] = []
        self._session: aiohttp.ClientSession | None = None
        #: Requests on the wire now (sent, answer not read yet).
        self.on_wire = 0

    async def __aenter__(self) -> Sender:
        self._session = self._new_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def workers(self) -> int:
        """How many workers ``run`` starts (each needs a ``None`` from the queue to stop)."""
        return self.pacer.workers

    def _new_session(self) -> aiohttp.ClientSession:
        # The pacer's gate bounds the requests in flight; the pool of connections only has to
        # be as wide as the widest the gate may open.
        connector = aiohttp.TCPConnector(limit=self.workers, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)

    @contextlib.asynccontextmanager
    async def _session_scope(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
            return
        session = self._session = self._new_session()
        try:
            yield session
        finally:
            self._session = None
            await session.close()

    @property
    def stopping(self) -> bool:
        """Whether the run is stopping: no new batch is taken, waiting retries give up."""
        return self._stopping.is_set()

    @property
    def error(self) -> Aborted | None:
        """The answer that stopped the pool, if one did."""
        return self._error

    def stop(self) -> None:
        """Take no new batch; the requests in flight carry on to their answer."""
        self._stopping.set()

    async def wait_stopping(self) -> None:
        """Return once the run is stopping (``stop()``, or an answer that stops the pool)."""
        await self._stopping.wait()

    async def canary(self, batch: Batch) -> None:
        """Send ``batch`` (one event) alone; raises the run's Aborted if it does not settle."""
        async with self._session_scope() as session:
            try:
                await self._send(session, batch, canary=True)
            except _Abandoned:
                return

    async def run(self, queue: asyncio.Queue[Batch | None]) -> None:
        """Drain ``queue`` with ``workers`` workers; the first fatal answer stops them all.

        Workers stop taking batches at once; requests in flight settle; then that error is
        raised here.
        """
        async with self._session_scope() as session, asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._worker(session, queue))
        if self._error is not None:
            raise self._error

    async def _worker(
        self, session: aiohttp.ClientSession, queue: asyncio.Queue[Batch | None]
    ) -> None:
        while (batch := await self._take(queue)) is not None:
            try:
                await self._send(session, batch, canary=False)
            except _Abandoned:
                return
            except Aborted as e:
                if self._error is None:
                    self._error = e
                self.stop()
                return

    async def _take(self, queue: asyncio.Queue[Batch | None]) -> Batch | None:
        """The next batch, or None when the queue says so or the run is stopping."""
        if self.stopping:
            return None
        get = asyncio.ensure_future(queue.get())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({get, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not get.done():
            get.cancel()
            return None
        # A batch taken just as the run stops is dropped here: it was never sent, so not done.
        return None if self.stopping else get.result()

    async def _send(self, session: aiohttp.ClientSession, batch: Batch, *, canary: bool) -> None:
        try:
            settled = await self._send_with_retries(session, batch, canary=canary)
        except TooLarge:
            self.stats.splits += 1
            first, second = self.encoder.split(batch)
            await self._send(session, first, canary=canary)
            await self._send(session, second, canary=canary)
            return
        self.stats.events_imported += settled.imported
        self.stats.events_refused += len(settled.refused)
        self.on_settled(settled)

    async def _send_with_retries(
        self, session: aiohttp.ClientSession, batch: Batch, *, canary: bool
    ) -> Settled:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableSendError),
            stop=lambda state: self._give_up(state, canary),
            wait=lambda state: self._wait(state, canary),
            sleep=self._sleep,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(session, batch, canary=canary)
        except RetryableSendError as e:
            if self.stopping:
                raise _Abandoned from None
            if canary and e.unreachable:
                raise Unreachable(
                    f"cannot reach {self.config.import_url} ({e}): check --api-url or "
                    "--region (us, eu, in) and this machine's network, then rerun"
                ) from None
            raise RetriesExhausted(
                f"a batch of {len(batch)} events (rows {batch.first_row}-{batch.last_row}) "
                f"failed {self.config.max_attempts} times, last with {e}; the checkpoint is "
                "kept: run the same command again to resume"
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _give_up(self, state: RetryCallState, canary: bool) -> bool:
        if self.stopping or state.attempt_number >= self.config.max_attempts:
            return True
        exc = state.outcome.exception() if state.outcome else None
        if not canary or not isinstance(exc, RetryableSendError) or not exc.unreachable:
            return False
        # A name that does not resolve will not resolve in a few seconds either.
        return exc.unreachable == "unresolved" or (
            (state.seconds_since_start or 0.0) >= CANARY_CONNECT_BUDGET_S
        )

    def _wait(self, state: RetryCallState, canary: bool) -> float:
        """Mixpanel's backoff, or the server's Retry-After when it gives one."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableSendError) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, MAX_RETRY_AFTER_S)
        base = self.config.retry_base_s
        backoff: float = min(base * 2.0 ** (state.attempt_number - 1), base * 30.0)
        wait = backoff + self._rng.uniform(0.5 * base, 2.5 * base)
        if canary and isinstance(exc, RetryableSendError) and exc.unreachable:
            left = CANARY_CONNECT_BUDGET_S - (state.seconds_since_start or 0.0)
            wait = max(0.0, min(wait, left))
        return wait

    async def _sleep(self, seconds: float) -> None:
        # A stopping run does not wait out a backoff: the next check gives the batch up.
        until = time.monotonic() + seconds
        long = seconds >= LONG_WAIT_S
        if long:
            self._long_waits.append(until)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
        finally:
            if long:
                self._long_waits.remove(until)

    @property
    def waiting_s(self) -> float | None:
        """Seconds left of the longest retry pause under way, if one is long enough to show."""
        if not self._long_waits:
            return None
        return max(0.0, max(self._long_waits) - time.monotonic())

    def abort(self, error: Aborted) -> None:
        """Stop the run with ``error`` (a failure outside the requests: a full disk)."""
        if self._error is None:
            self._error = error
        self.stop()

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.cause if isinstance(exc, RetryableSendError) else "other"
        self.stats.retries[cause] += 1
        if self._on_retry is not None:
            self._on_retry()

    async def _post(
        self, session: aiohttp.ClientSession, batch: Batch, *, canary: bool = False
    ) -> Settled:
        # A place on the wire first, then the events' turn in the bucket: the bucket sets the
        # pace, and a request that has paid goes out at once.
        # Both waits give up as soon as the run stops: at a low --rate a batch may wait its
        # turn for many seconds, and a stopping run must not sit them out.
        gate = self.pacer.slot()
        await unless_stopping(gate.__aenter__(), self._stopping)
        try:
            sent_at = await unless_stopping(self.pacer.pay(len(batch)), self._stopping)
            if self.stopping:
                raise _Abandoned
            self.stats.requests += 1
            self.stats.events_sent += len(batch)
            self.on_wire += 1
            try:
                async with session.post(
                    self.config.import_url,
                    params=self._params,
                    data=batch.body,
                    headers=self._headers,
                    allow_redirects=False,
                ) as response:
                    answer = Answer(
                        response.status,
                        await _read_capped(response, MAX_ANSWER_BYTES),
                        response.headers.get("Retry-After"),
                        response.headers.get("Location"),
                        self._echoes,
                    )
            except (aiohttp.ClientError, TimeoutError) as e:
                raise _classify(e, self.config.import_url) from None
            finally:
                self.on_wire -= 1
        finally:
            await gate.__aexit__(None, None, None)
        if answer.status == 429:
            self.stats.rate_limited += 1
        self.pacer.answered(sent_at, len(batch), answer.status, canary=canary)
        return interpret(batch, answer, self.config.import_url)


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body, or None once it grows past ``cap`` bytes (the rest is not read)."""
    kept = bytearray()
    async for chunk in response.content.iter_chunked(64 << 10):
        kept += chunk
        if len(kept) > cap:
            return None
    return bytes(kept)


def _classify(e: BaseException, url: str) -> RetryableSendError | Aborted:
    """The one place aiohttp's failures become ours: retry them, or stop the run."""
    host = urlsplit(url).hostname or url
    if isinstance(e, aiohttp.ClientSSLError):
        return Unreachable(
            f"the TLS certificate of {host} was refused ({e}): check --api-url; behind a "
            "TLS-inspecting proxy, point SSL_CERT_FILE at its CA bundle; then rerun"
        )
    if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
        return RetryableSendError("request timed out", cause="timeout")
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        return RetryableSendError(
            f"cannot resolve the name {host}", cause="connection", unreachable="unresolved"
        )
    if isinstance(e, aiohttp.ClientConnectorError):
        return RetryableSendError(
            f"cannot connect to {host}: {e.os_error}", cause="connection", unreachable="refused"
        )
    if isinstance(
        e,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientConnectionError,
    ):
        return RetryableSendError(f"connection dropped ({type(e).__name__})", cause="connection")
    if isinstance(e, aiohttp.ClientResponseError):
        # aiohttp's parser refused the answer; ``e.status`` is the parser's 400, not the server's.
        said = shown(str(e.message).split(". ")[0])[:200]
        if "content-encoding" in said.lower():
            return UnexpectedAnswer(
                f"{host} answered in an encoding backfill cannot read ({said}; it asks for "
                "gzip, and Mixpanel answers plain JSON): a proxy in front of --api-url may "
                "recompress answers; check --api-url, then rerun to resume (nothing was "
                "counted as imported)"
            )
        return RetryableSendError(f"an answer that is not valid HTTP ({said})", cause="connection")
    return RetryableSendError(f"{type(e).__name__}", cause="connection")
