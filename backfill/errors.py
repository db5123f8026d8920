"""The exception tree, arranged by what the caller does next.

::

    BackfillError                  anything the CLI turns into a one-line message
    ├── UsageError                 exit 2: fix the command, the config, the input or the
    │   │                          environment; nothing was sent
    │   ├── InputError             the input file cannot be read as asked
    │   │   └── InputChanged       it changed between two reads, before anything was sent
    │   ├── ConfigError            a flag, a TOML key or an environment variable is wrong
    │   ├── CheckpointMismatch     --out holds a run of another input or other settings
    │   ├── RunLocked              another run is active on the same --out
    │   └── TempSpaceError         no room (or no right) to write validation's temporary files
    ├── Aborted                    exit 3: the run stopped; the checkpoint is kept and the
    │   │                          same command resumes; the stopped request's rows are not done
    │   ├── AuthRefused            Mixpanel refused the credentials (401/403)
    │   ├── RequestRefused         a 400 that names no record: the request itself was refused
    │   │   └── IdentityEventsRefused  a Simplified ID Merge project refuses $identify
    │   ├── UnexpectedAnswer       not Mixpanel's answer: a redirect, a body that is not its
    │   │                          JSON, numbers that do not add up, a 413 for one event
    │   ├── Unreachable            no retry can help: certificate refused, name not resolved
    │   │                          or nobody listening at the canary
    │   ├── RetriesExhausted       a batch failed --max-attempts times
    │   ├── InputChangedWhileSending  the input changed after sending began: only what was
    │   │                          validated was sent; the rerun refuses it naming --restart
    │   └── OutOfSpace             the disk filled up while writing the run folder
    └── Interrupted                exit 130: SIGINT/SIGTERM, checkpoint written

    SendError                      raised inside the sender, never reaches the CLI
    └── RetryableSendError         429, 408, 5xx, timeout, dropped connection: back off, retry

Answers that settle records (200, a 400 naming its refused records) and 413 (split the batch)
are not errors; every other answer stops the run with an ``Aborted`` raised where it arrives.

Row rejects are not exceptions: they are data, and go to ``rejects.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backfill.report.summary import Summary

#: Flags to set on the user's command: ``(flag, value)``, value None for a flag alone.
Fix = tuple[tuple[str, str | None], ...]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_ABORTED = 3
#: ``verify`` only: some pairs the run sent are not merged, or not in the export yet.
EXIT_UNVERIFIED = 4
EXIT_INTERRUPTED = 130


class BackfillError(Exception):
    """Base of every error the CLI reports as one line; ``exit_code`` says how it exits.

    ``summary`` is set when a run stopped after writing ``summary.json``, so the CLI can print
    the same table a finished run prints (and the Python API's caller can read it).
    """

    exit_code = 1
    summary: Summary | None = None
    #: The flags that fix it, for the command the CLI prints to copy: ``("--restart", None)``
    #: adds a flag, ``("--id-merge", "simplified")`` sets one. Empty: the fix is not a flag.
    fix: Fix = ()
    #: Whether the same command, run again, resumes (the CLI then prints it to copy).
    resumes = False


class UsageError(BackfillError):
    """Bad usage, config, input or credentials setup: nothing was sent."""

    exit_code = EXIT_USAGE


class InputError(UsageError):
    """The input file is missing, empty, unreadable or lacks a column."""


class InputChanged(InputError):
    """A file of the dataset changed (grew, shrank, was overwritten) between two reads of it."""


class ConfigError(UsageError):
    """A flag, config key or environment variable has a wrong or missing value."""


class CheckpointMismatch(UsageError):
    """The checkpoint in --out describes another input or other event settings."""

    fix: Fix = (("--restart", None),)


class AlreadySent(UsageError):
    """A finished run elsewhere already sent this input to this project (``--out`` chooses)."""


class RunLocked(UsageError):
    """Another backfill process holds the lock on the same --out folder."""


class TempSpaceError(UsageError):
    """Validation's temporary files cannot be written: the disk is full or the folder refuses."""


class Aborted(BackfillError):
    """The run stopped early; the checkpoint is kept so the same command resumes."""

    exit_code = EXIT_ABORTED
    resumes = True


class AuthRefused(Aborted):
    """Mixpanel answered 401 or 403: the credentials or the project id were refused."""


class RequestRefused(Aborted):
    """Mixpanel refused a whole request (a 400 naming no record): its rows are not done."""


class IdentityEventsRefused(RequestRefused):
    """The project uses Simplified ID Merge, which refuses every identity event."""

    fix: Fix = (("--id-merge", "simplified"),)
    resumes = False


class UnexpectedAnswer(Aborted):
    """An answer that is not Mixpanel's, or whose numbers do not add up: nothing settled."""


class Unreachable(Aborted):
    """``/import`` cannot be reached in a way no retry fixes (certificate, name, refused)."""


class RetriesExhausted(Aborted):
    """A batch still failed after --max-attempts tries."""


class InputChangedWhileSending(Aborted):
    """The input changed (grew, or was overwritten) while its validated pairs were being sent."""

    fix: Fix = (("--restart", None),)
    resumes = False


class OutOfSpace(Aborted):
    """No space left while writing the checkpoint or the reports (written parts stay valid)."""


class Interrupted(BackfillError):
    """SIGINT or SIGTERM stopped the command (a run: its requests in flight settled or were
    abandoned as not done, and the checkpoint is written)."""

    exit_code = EXIT_INTERRUPTED
    resumes = True


class SendError(Exception):
    """A failed request, classified for the retry policy; ``cause`` names it in the summary."""

    def __init__(self, message: str, *, cause: str, status: int | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.status = status


class RetryableSendError(SendError):
    """429, 5xx, a timeout or a dropped connection: worth another try after a pause."""

    def __init__(
        self,
        message: str,
        *,
        cause: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        unreachable: str | None = None,
    ) -> None:
        super().__init__(message, cause=cause, status=status)
        self.retry_after_s = retry_after_s
        #: Why no connection could be opened, if so: ``"unresolved"`` (the name) or
        #: ``"refused"``. Nothing reached the server; at the canary this ends the run (at once
        #: for a name, after a short while for a refusal).
        self.unreachable = unreachable
