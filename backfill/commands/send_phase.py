"""One run's send phase, as an object: the canary, the worker pool, the stop sequence, checkpoints.

The life of a ``SendPhase.send()``:

1. The producer (``producer.py``) re-reads the input in a worker thread and yields batches
   of the valid pairs not yet done, their spans tiling the file.
2. **Canary**: the first pair not yet done goes alone, and the pool starts only once that
   request has settled. Wrong credentials, a wrong project, a Simplified project or an
   unreachable host then cost one event and a few seconds, not ``--concurrency`` batches.
3. **Pool**: a feeder task moves batches from the producer into a bounded queue, and the
   sender's workers drain it. Each settled batch is recorded synchronously (``_settled``): its
   refusals appended to ``rejects.csv``, its span added to the checkpoint.
4. **Checkpoints** are written at most every ``CHECKPOINT_INTERVAL_S`` by a background task
   (refusals fsynced first), and once more at the end whatever the end was.
5. **Stopping**: the first SIGINT/SIGTERM stops taking batches, cancels every paced wait (the
   bucket, the gate, retry backoffs) and the producer (at its next chunk); requests already on
   the wire get ``STOP_GRACE_S`` to settle, then are abandoned: their rows stay not done, to
   be sent again by the resume. A second signal abandons them at once. An answer that stops
   the run (``Aborted``) does the same from inside the sender. Either way the final
   checkpoint is written while signals are still caught, then the previous handlers come
   back. The send phase's time (hence its rate) ends at the first signal, not after the stop.

The checkpoint (all runs) and the sender's ``SendStats`` (this invocation) are the counts;
everything the display or the summary shows is read from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import numpy as np

from backfill import interrupts
from backfill.commands.producer import Producer, produce_batches
from backfill.commands.validated import Validated
from backfill.config.settings import Credentials, Settings
from backfill.errors import Aborted, BackfillError, Interrupted
from backfill.folder.checkpoint import CHECKPOINT_INTERVAL_S, Checkpoint
from backfill.folder.rejects import RejectRow
from backfill.report.counts import Counts
from backfill.report.page.figures import SendTrace
from backfill.report.progress import Progress, Snapshot
from backfill.report.summary import ThisRun
from backfill.send.answers import Settled
from backfill.send.events import Batch, Encoder
from backfill.send.sender import SendConfig, Sender, SendStats
from backfill.validation.reasons import Reason
from backfill.validation.rules import Rules

#: Seconds that requests on the wire get to settle after Ctrl-C before they are abandoned
#: (resendable): the whole stop then fits in the 3 s the issue asks for, at any --rate.
STOP_GRACE_S = 1.5


class SendPhase:
    """Sends the valid pairs of one validated input; ``send()`` is the whole send phase."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        validated: Validated,
        checkpoint: Checkpoint,
        *,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.validated = validated
        self.checkpoint = checkpoint
        self.out_dir = checkpoint.path.parent
        self.progress = progress
        self.stats = SendStats()
        #: Imported events over time and Mixpanel's refusals, for report.html.
        self.trace = SendTrace()
        self.encoder = Encoder(
            token=settings.token,
            batch_size=settings.batch_size,
            rules=Rules(settings.id_merge, settings.non_uuid_anon),
            pairing_event=settings.pairing_event,
        )
        config = SendConfig(
            import_url=settings.import_url,
            credentials=credentials,
            project_id=settings.project_id,
            concurrency=settings.concurrency,
            rate_per_s=settings.rate_per_s,
            max_attempts=settings.max_attempts,
            timeout_s=settings.timeout_s,
            retry_base_s=settings.retry_base_s,
            batch_size=settings.batch_size,
        )
        self.sender = Sender(
            config, self.encoder, self._settled, stats=self.stats, on_retry=self.progress.tick
        )
        self.signals = 0
        self._hard_stop = asyncio.Event()
        self._dirty = False
        self._started: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_signals = 0
        self._ended: float | None = None
        #: Set from any thread by the first signal (or a stop): the producer checks it per chunk.
        self._stop = threading.Event()
        #: Whether the producer read the input to its end (only then is every row done).
        self._produced_all = False

    def send_seconds(self) -> float:
        """How long the send phase has run (or ran), in seconds."""
        if self._started is None:
            return 0.0
        return (self._ended or time.monotonic()) - self._started

    def counts(self) -> Counts:
        """What sending has done: the checkpoint's counts (all runs), the stats' (this run)."""
        ckpt, stats, pacer = self.checkpoint, self.stats, self.sender.pacer
        seconds = self.send_seconds()
        stopping = self._stop.is_set() and self.signals > 0
        return Counts(
            pairs_total=self.validated.verdicts.rows_valid,
            imported=ckpt.events_imported,
            refused=ckpt.events_refused,
            sent_this_run=stats.events_sent,
            retries=sum(stats.retries.values()),
            rate_per_s=ckpt.run_events / seconds if seconds > 1.0 and ckpt.run_events else None,
            rate_limited=stats.rate_limited,
            # Shown only while 429s hold the run below --rate.
            paced_per_s=pacer.rate_per_s if pacer.rate_per_s < pacer.ceiling_per_s else None,
            waiting_s=self.sender.waiting_s,
            in_flight=self.sender.on_wire if stopping else None,
        )

    def this_run(self) -> ThisRun:
        """What this invocation did: requests, events, the rate held, the 429s and their effect."""
        stats, figures = self.stats, self.sender.pacer.figures()
        send_s = max(self.send_seconds(), 1e-9)
        held, latency = figures.rate_held_per_s, figures.mean_latency_s
        return ThisRun(
            requests=stats.requests,
            retries=dict(stats.retries),
            events_sent=stats.events_sent,
            events_imported=stats.events_imported,
            events_refused=stats.events_refused,
            send_s=round(send_s, 3),
            events_per_s=round(stats.events_imported / send_s, 1),
            rate_limited=stats.rate_limited,
            rate_held_per_s=None if held is None else round(held, 1),
            rate_lowered=figures.rate_lowered,
            lowest_rate_per_s=round(figures.lowest_rate_per_s, 1),
            max_in_flight=figures.max_in_flight,
            mean_latency_s=None if latency is None else round(latency, 3),
        )

    def snapshot(self) -> Snapshot:
        """What the progress display shows while sending (or stopping, after a signal)."""
        counts = self.counts()
        return Snapshot("sending" if counts.in_flight is None else "stopping", sending=counts)

    @property
    def interrupted(self) -> bool:
        """Whether SIGINT or SIGTERM stopped this run."""
        return self.signals > 0

    async def send(self) -> None:
        """Canary, then the pool; returns when every pair is settled.

        Raises Interrupted after a signal, or the Aborted that stopped the run; the final
        checkpoint is written in every case.
        """
        self._started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        if self._pending_signals:
            self._ended = self._started  # stopped before it started: no sending time
        for _ in range(self._pending_signals):
            self._on_signal()  # a Ctrl-C that came before the loop did
        saver = asyncio.create_task(self._save_periodically())
        try:
            await self._send_until_stopped()
        finally:
            self._ended = self._ended or time.monotonic()
            saver.cancel()
            self.checkpoint.requests += self.stats.requests
            for cause, n in self.stats.retries.items():
                self.checkpoint.retries[cause] = self.checkpoint.retries.get(cause, 0) + n
            self._dirty = True
            await self._save()
        if self.interrupted or not self._produced_all:
            # (A producer stopped by a signal the loop has not seen yet is an interruption too.)
            raise Interrupted(
                f"interrupted: {self.checkpoint.events_imported:,} events imported so far, the "
                "checkpoint is written; run the same command again to resume"
            )

    async def _send_until_stopped(self) -> None:
        work = asyncio.create_task(self._send_everything())
        stopping = asyncio.create_task(self.sender.wait_stopping())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # A signal or a fatal answer: no new batches; requests on the wire get a short
                # time to settle, then are abandoned (their rows stay not done).
                hard = asyncio.create_task(self._hard_stop.wait())
                await asyncio.wait(
                    {work, hard}, timeout=STOP_GRACE_S, return_when=asyncio.FIRST_COMPLETED
                )
                hard.cancel()
                work.cancel()
        finally:
            stopping.cancel()
        try:
            await work
        except asyncio.CancelledError:
            if self.sender.error is not None:
                raise self.sender.error from None
            if not self.interrupted:
                raise
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None
        if self._produced_all and not self.interrupted and self.validated.verdicts.rows_read:
            # Every batch was produced and settled, and spans tile the file: all of it is done
            # (this also covers a rerun that had nothing left to send).
            self.checkpoint.done.add(1, self.validated.verdicts.rows_read)
            self._dirty = True

    async def _send_everything(self) -> None:
        producer = Producer(
            produce_batches(
                self.validated,
                # A copy: the producer thread must not read what the event loop is changing.
                # Rows settled during this run are never produced twice anyway.
                self.checkpoint.done.copy(),
                self.encoder,
                event_time_ms=self.checkpoint.event_time_ms,
                time_column=self.settings.columns.time is not None,
                stop=self._stop,
            ),
            self._stop,
        )
        try:
            async with self.sender:
                first = await asyncio.to_thread(producer.next)
                if first is None:
                    return
                canary, rest = self.encoder.split(first, at=1) if len(first) > 1 else (first, None)
                await self.sender.canary(canary)
                if self.sender.stopping:
                    return
                await self._pool(rest, producer)
        finally:
            self._produced_all = producer.exhausted
            self._stop.set()  # a next() under way stops at its next chunk
            # The readers close now, not when the generator is collected: whatever ends the
            # send, no Arrow reader is left reading ahead.
            await asyncio.shield(asyncio.to_thread(producer.close))

    async def _pool(self, rest: Batch | None, batches: Producer) -> None:
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=self.sender.workers + 2)
        if rest is not None:
            queue.put_nowait(rest)
        feeder = asyncio.create_task(self._feed(queue, batches))
        try:
            await self.sender.run(queue)
        finally:
            if not feeder.done():
                feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder  # a producer failure (e.g. a grown input) surfaces here

    async def _feed(self, queue: asyncio.Queue[Batch | None], batches: Producer) -> None:
        try:
            while (batch := await asyncio.to_thread(batches.next)) is not None:
                await queue.put(batch)
            if not batches.exhausted:
                # Stopped (a signal, maybe seen by the reader first): the workers stop too.
                self.sender.stop()
                return
            for _ in range(self.sender.workers):
                await queue.put(None)
        except Exception:
            self.sender.stop()  # else the workers wait forever for batches that never come
            raise

    def _settled(self, settled: Settled) -> None:
        """Record a settled batch: refusals to rejects.csv, its span to the checkpoint."""
        lines = []
        if settled.refused:
            dataset = self.validated.dataset
            rows = np.array([r.row for r in settled.refused], dtype=np.int64)
            files, within = dataset.locate(rows)
            lines = [
                RejectRow(row, r.anon, r.identified, Reason.API_REJECTED.code, r.message, f.name)
                for r, row, f in zip(
                    settled.refused,
                    within.tolist(),
                    (dataset.files[i] for i in files.tolist()),
                    strict=True,
                )
            ]
            self.validated.rejects.add_api_rejects(lines)
        first, last = settled.batch.span
        self.checkpoint.settle(first, last, settled.imported, len(settled.refused))
        self.trace.settled(self.send_seconds(), self.checkpoint.events_imported, lines)
        self._dirty = True
        self.progress.tick()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                await self._save()
            except Aborted as e:
                # A checkpoint that cannot be written (a full disk) must stop the sending: a
                # run that carried on would send what it could never record as done.
                self.sender.abort(e)
                return
            self.progress.tick()

    async def _save(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        data = self.checkpoint.image()
        fd = self.validated.rejects.fileno()

        def write() -> None:
            # Refusals first: a span in ``done`` must never outlive its rejects.csv lines.
            if fd is not None:
                os.fsync(fd)
            self.checkpoint.write(data)

        await asyncio.shield(asyncio.to_thread(write))

    def interrupt(self) -> None:
        """SIGINT/SIGTERM, or Ctrl-C in a notebook: the first asks a graceful stop, the second
        an immediate one. Safe from any thread and at any moment of the run's life."""
        if not self._stop.is_set():
            self._ended = time.monotonic()  # the rate counts sending time, not the stop
        self._stop.set()  # at once, for the producer thread
        loop = self._loop
        if loop is None:
            self._pending_signals += 1
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the run is over, written
            loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            self.sender.stop()
            self.progress.show(self.snapshot)  # the stopping line, at once
        else:
            self._hard_stop.set()


def _first_error(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, BackfillError):
            return exc
    return eg.exceptions[0]


def drive(sending: SendPhase) -> None:
    """Run ``sending.send()`` to its end, from plain code or from inside a running event loop.

    In the main thread SIGINT and SIGTERM are caught for the whole of ``asyncio.run``, its
    teardown included, and handed to ``sending.interrupt`` (a signal that came earlier in the
    command, e.g. at the end of validation, at once): a second Ctrl-C while the loop shuts
    down must not tear it down halfway. A notebook (Jupyter) already runs an event loop
    in this thread, where ``asyncio.run`` refuses to start: the send then runs in a thread
    with a loop of its own, and a Ctrl-C (KeyboardInterrupt here) asks it to stop the same way.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with interrupts.caught(), interrupts.listening(sending.interrupt):
            asyncio.run(sending.send())
        return
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(sending.send())
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=target, name="backfill-send")
    thread.start()
    with interrupts.caught(), interrupts.listening(sending.interrupt):
        while thread.is_alive():
            try:
                thread.join(0.2)
            except KeyboardInterrupt:
                sending.interrupt()
    if outcome:
        raise outcome[0]


@contextlib.contextmanager
def signals_to(handler: Callable[[], None] | None) -> Iterator[None]:
    """SIGINT/SIGTERM call ``handler`` (None: ignored) inside the block; the old handlers return.

    Main thread only: elsewhere Python delivers no signals, and cannot set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in held}

    def call(signum: int, frame: FrameType | None) -> None:
        if handler is not None:
            handler()

    for sig in held:
        signal.signal(sig, signal.SIG_IGN if handler is None else call)
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
