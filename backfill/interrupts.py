"""Ctrl-C and SIGTERM as a request to stop, answered where stopping is safe.

Python's own SIGINT handler raises ``KeyboardInterrupt`` at whatever bytecode runs next, and
for a command that streams a file through Arrow that can be anywhere: inside a generator's
finaliser (the exception is printed and dropped, and the run went on to send everything),
between Arrow handing a block to Python and taking it back, or so late that the interpreter
shuts down while Arrow's I/O thread is still inside a Python ``read`` (a hang in Arrow's thread
pool, or ``terminate called without an active exception``). So inside ``caught()`` a signal
only records itself, and each part of a command answers it at a point of its choosing:

* reading calls ``check()`` between chunks, which raises ``Interrupted`` there; the readers
  are closed on the way out (``read.dataset``);
* the send phase registers a listener (``listening(SendPhase.interrupt)``): the first signal stops
  taking batches, the second stops at once;
* the final writes of a run run to their end.

``caught(deadline_s=...)`` (the CLI) also arms a watchdog with the first signal: whatever the
command is doing ``deadline_s`` later, the process ends with exit 130 then. That is a kill -9
with a message, which the checkpoint is built to survive (atomic writes, refusals fsynced
before the spans that cover them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn

from backfill.errors import EXIT_INTERRUPTED, Interrupted

#: The CLI's bound on a stop, from the first signal to the end of the process (the issue asks
#: for 5 s; a graceful send phase stops within ``runner.STOP_GRACE_S`` plus the final writes).
DEADLINE_S = 4.5

Listener = Callable[[], None]
_HELD = (signal.SIGINT, signal.SIGTERM)


class _State:
    """What the signals of the command under way asked (one command per process at a time)."""

    def __init__(self) -> None:
        self.signals = 0
        self.requested = threading.Event()
        self.listener: Listener | None = None
        self.deadline_s: float | None = None
        self.watchdog: threading.Timer | None = None
        self.active = False


_state = _State()


def requested() -> bool:
    """Whether a SIGINT or SIGTERM asked the command under way to stop."""
    return _state.requested.is_set()


def check() -> None:
    """Raise ``Interrupted`` if a signal asked to stop (called between chunks)."""
    if _state.requested.is_set():
        raise Interrupted("interrupted; run the same command again to resume")


@contextlib.contextmanager
def caught(*, deadline_s: float | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM are recorded (see the module docstring) inside the block.

    Main thread only (elsewhere Python delivers no signals and cannot set handlers): in any
    other thread the block runs with the handlers as they are. Nested blocks share the outer
    one's record.
    """
    if threading.current_thread() is not threading.main_thread() or _state.active:
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in _HELD}
    if before[signal.SIGINT] is _on_signal:
        _state.deadline_s = deadline_s  # after ``catch_early``: its record stands
    else:
        _reset(deadline_s)
    _state.active = True
    for sig in _HELD:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        watchdog = _state.watchdog
        _reset(None)
        _state.active = False
        if watchdog is not None:
            watchdog.cancel()


def catch_early() -> None:
    """Record signals from the process's first lines on (``python -m backfill``, the console
    script), before the command is even parsed; ``caught`` takes the record over."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not _on_signal:
        _reset(DEADLINE_S)
        for sig in _HELD:
            signal.signal(sig, _on_signal)


def release() -> bool:
    """Give SIGINT/SIGTERM back to Python's defaults (for ``serve``, which handles them
    itself); True if a signal came before."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    came = requested()
    if _state.watchdog is not None:
        _state.watchdog.cancel()
    return came


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Hand each signal to ``listener`` inside the block (the send phase's ``interrupt``).

    A signal that came earlier in the command is handed over at once, so a Ctrl-C between
    validation and the first request is not lost.
    """
    before = _state.listener
    _state.listener = listener
    try:
        for _ in range(_state.signals):
            listener()
        yield
    finally:
        _state.listener = before


def _reset(deadline_s: float | None) -> None:
    _state.signals = 0
    _state.requested.clear()
    _state.listener = None
    _state.deadline_s = deadline_s
    _state.watchdog = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _state.signals += 1
    _state.requested.set()
    if _state.signals == 1 and _state.deadline_s is not None:
        _state.watchdog = threading.Timer(_state.deadline_s, _give_up)
        _state.watchdog.daemon = True
        _state.watchdog.start()
    listener = _state.listener
    if listener is not None:
        listener()


def _give_up() -> None:
    """The watchdog: the stop took longer than promised; end the process now."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.write(
            "backfill: interrupted; the stop took too long and was cut short: run the same "
            "command again to resume\n"
        )
        sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's shutdown (see ``cli.entry``);
    only the standard streams need flushing."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
