"""The checkpoint: what makes "run the same command again" the answer to every crash.

What ``checkpoint.json`` records
    * ``done``: the source rows whose sending is settled, as sorted, merged, inclusive row
      intervals. Each batch carries a *span* of rows; the producer makes spans tile the file
      (each starts right after the previous one ends, rejected rows included), and a span is
      added only when its batch is settled: imported, or refused by Mixpanel and written to
      ``rejects.csv``. Batches that finish out of order leave holes that close as the stragglers
      land, so the list stays a handful of intervals. Rows, not batch numbers, are recorded, so
      a different ``--batch-size`` on the rerun changes nothing.
    * ``identity``: the input's fingerprint (size and SHA-256 of its bytes), the project id and
      every setting that changes which events are sent or what they contain (columns, time
      column, event time, cluster limit, a digest of the project token). Not the API URL, the
      rate or the batch size: a rerun may reach Mixpanel another way, faster or slower.
    * ``event_time_ms``: fixed by the first run (``--event-time``, else that run's start), so
      every resend of a pair is the identical event and Mixpanel deduplicates it.
    * ``started_ms``: the migration's start, the "now" that ``invalid_time`` measures "in the
      future" from, fixed by the first run: a resumed run judges every row as the first run
      did. A row refused as future-dated lies inside a done span; judged valid by a later
      clock it would be neither sent nor listed in ``rejects.csv``: lost.
    * ``verdicts``: a digest of which rows are to be sent. Every done span was settled for
      that set of rows: a rerun whose rows judge otherwise (another backfill version, a
      checkpoint edited by hand) is refused, naming ``--restart``, since rows in its done
      spans could be ones it never sent nor listed. So no span is done unless each of its
      rows was imported or written to ``rejects.csv``.
    * Cumulative counts (imported, refused, requests, retries) that move with ``done``.

How it is written
    The state lives in memory; a background task writes it at most every
    ``CHECKPOINT_INTERVAL_S`` (coalescing many batches into one write, so a fast run is not
    slowed), and once more when the run ends for any reason. A write first fsyncs
    ``rejects.csv`` (so a refusal counted in ``done`` is on disk), then writes a temp file,
    fsyncs it, renames it over ``checkpoint.json`` and fsyncs the folder: a reader, or a rerun
    after ``kill -9`` at any instant, sees the old checkpoint or the new one, never a torn one.

Guarantees
    * Never skips a pair: a row enters ``done`` only after its batch settled.
    * Resends at most what was in flight or settled since the last write; resends are the
      identical events (same ``$insert_id``, same time), which Mixpanel counts once.
    * A changed input or event setting is refused (exit 2, naming each difference and
      ``--restart``) rather than mixed into an old run; ``--restart`` discards the checkpoint
      and starts over. A checkpoint that settled nothing is not a run to keep: a rerun with
      other settings replaces it, saying so (see ``mismatch``).

The lock on a run folder is in ``lock``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from backfill.errors import CheckpointMismatch
from backfill.folder.files import atomic_write_bytes, read_json
from backfill.folder.intervals import RowIntervals, count_of
from backfill.folder.mismatch import differences, fresh_note, refusal
from backfill.mixpanel import MIN_TIME_MS

CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_INTERVAL_S = 1.0
FORMAT_VERSION = 1


# --- done rows ---------------------------------------------------------------------------


# --- identity ------------------------------------------------------------------------------


def token_digest(token: str | None) -> str | None:
    """A digest of the project token: enough to notice a change, never the token itself."""
    return None if token is None else hashlib.sha256(token.encode()).hexdigest()[:16]


# --- the checkpoint ------------------------------------------------------------------------


class SendState(StrEnum):
    """Where a run folder's sending stands (``checkpoint.json``'s ``state``)."""

    #: Sending began and has not ended (or was stopped: the same command resumes it).
    RUNNING = "running"
    #: Every valid pair was settled: the same command sends nothing more.
    COMPLETED = "completed"


@dataclass(frozen=True)
class CheckpointImage:
    """The checkpoint's bytes at one instant, and the order in which that instant came."""

    number: int
    data: bytes


@dataclass
class Checkpoint:
    """The resumable state of one run folder (see the module docstring)."""

    path: Path
    identity: dict[str, Any]
    event_time_ms: int
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    verdicts: str | None = None
    done: RowIntervals = field(default_factory=RowIntervals)
    events_imported: int = 0
    events_refused: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    run_started_at: float = field(default_factory=time.time)
    run_events: int = 0
    events_total: int | None = None
    rows_total: int | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    state: SendState = SendState.RUNNING
    #: Set when this run replaced a checkpoint that settled nothing: the line to say so.
    note: str | None = field(default=None, compare=False)
    _taken: int = field(default=0, repr=False, compare=False)
    _written: int = field(default=0, repr=False, compare=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def open(
        cls,
        out_dir: Path,
        identity: Mapping[str, Any],
        *,
        event_time_ms: int | None,
        start_ms: int,
        restart: bool,
    ) -> Checkpoint:
        """Resume the checkpoint in ``out_dir``, or start one; refuse one made for other input."""
        path = out_dir / CHECKPOINT_FILE
        try:
            data = read_json(path)
        except (OSError, ValueError) as e:
            if not restart:
                raise CheckpointMismatch(
                    f"{path} is unreadable ({_reason(e)}): pass --restart to start over, or "
                    "choose another --out to keep it"
                ) from None
            data = None
        note = None
        if data is not None and not restart:
            old = cls._load(path, data)
            found = differences(old.identity, identity, old.event_time_ms, event_time_ms)
            if not found:
                return old._resumed()
            if old.settled:
                raise refusal(out_dir, found, old.events_imported, old.events_refused)
            # A run that settled nothing (its canary refused, say) is no progress to keep.
            note = fresh_note(out_dir, found)
        # A fresh start keeps the old event time (unless --event-time says otherwise), so the
        # pairs it sends again are the identical events and Mixpanel counts them once.
        kept = data.get("event_time_ms") if isinstance(data, dict) else None
        fixed = (
            event_time_ms
            if event_time_ms is not None
            else kept
            if isinstance(kept, int) and not isinstance(kept, bool)
            else start_ms
        )
        # A fresh start is a new migration: its rows are judged against a new "now" (done is
        # empty, so nothing judged by the old one is relied on).
        ckpt = cls(path, dict(identity), fixed, started_ms=start_ms, note=note)
        return ckpt._resumed()

    def _resumed(self) -> Checkpoint:
        """This checkpoint, counting one more run that starts now."""
        self.runs += 1
        self.run_started_at = time.time()
        self.run_events = 0
        self.state = SendState.RUNNING
        return self

    @classmethod
    def _load(cls, path: Path, data: Any) -> Checkpoint:
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise CheckpointMismatch(
                f"{path} was written by another version of backfill (or is not a checkpoint): "
                "pass --restart to start over, or choose another --out to keep it"
            )
        try:
            if not isinstance(data["identity"], dict):
                raise ValueError("identity is not an object")
            created_at = _seconds(data.get("created_at"))
            return cls(
                path=path,
                identity=dict(data["identity"]),
                event_time_ms=_event_time(data["event_time_ms"]),
                # Checkpoints of before ``started_ms``: the first run's start, near enough.
                started_ms=_event_time(
                    data.get("started_ms", int(created_at * 1000)), "started_ms"
                ),
                verdicts=_optional_digest(data.get("verdicts")),
                done=RowIntervals.from_json(data["done"]),
                events_imported=count_of(data["events_imported"], "events_imported"),
                events_refused=count_of(data["events_refused"], "events_refused"),
                requests=count_of(data.get("requests", 0), "requests"),
                retries=_counts(data.get("retries", {}), "retries"),
                runs=count_of(data.get("runs", 0), "runs"),
                created_at=created_at,
                events_total=_optional_count(data.get("events_total"), "events_total"),
                rows_total=_optional_count(data.get("rows_total"), "rows_total"),
                rejected=_counts(data.get("rejected", {}), "rejected"),
                updated_at=_seconds(data.get("updated_at")),
                run_started_at=_seconds(data.get("run_started_at")),
                run_events=count_of(data.get("run_events", 0), "run_events"),
                state=_send_state(data.get("state", SendState.RUNNING)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointMismatch(
                f"{path} is damaged ({type(e).__name__}: {_reason(e)}): pass --restart to start "
                "over, or choose another --out to keep it"
            ) from None

    @classmethod
    def read(cls, out_dir: Path) -> Checkpoint | None:
        """The checkpoint in ``out_dir`` for a reader that only reports (``status``).

        None when there is none or it cannot be read: a report skips it, where a run that
        must resume from it refuses (``open``).
        """
        path = out_dir / CHECKPOINT_FILE
        try:
            data = read_json(path)
            return None if data is None else cls._load(path, data)
        except (OSError, ValueError, CheckpointMismatch):
            return None

    def check_rows(self, rows: int) -> None:
        """Refuse a checkpoint whose done rows reach past the input's ``rows``."""
        if self.done.last > rows:
            raise CheckpointMismatch(
                f"{self.path} records row {self.done.last:,} as done but the input has "
                f"{rows:,} rows: the checkpoint is damaged; pass --restart to start over"
            )

    def check_verdicts(self, digest: str) -> None:
        """Refuse to resume done spans settled for other verdicts; else record ``digest``.

        ``digest`` names which rows are to be sent (``pipeline.verdicts_digest``).
        """
        if self.verdicts not in (None, digest) and self.done.starts:
            raise CheckpointMismatch(
                f"{self.path.parent} holds a run whose rows were judged otherwise than they "
                "are now (by another version of backfill, or its checkpoint.json was edited): "
                "rows it records as done may be ones it neither sent nor listed in "
                "rejects.csv. Pass --restart to judge and send everything again (pairs "
                "already sent are deduplicated by Mixpanel), or choose another --out"
            )
        self.verdicts = digest

    @property
    def settled(self) -> int:
        """Pairs settled so far, all runs: imported or refused by Mixpanel."""
        return self.events_imported + self.events_refused

    def judged(self, *, rows_read: int, rows_valid: int, rejected: Mapping[str, int]) -> None:
        """Record what validation found (rows, pairs to send, rejects by reason), and write."""
        self.rows_total = rows_read
        self.events_total = rows_valid
        self.rejected = dict(rejected)
        self.write()

    def settle(self, first_row: int, last_row: int, imported: int, refused: int) -> None:
        """Record a settled batch span (called only after its refusals are in rejects.csv)."""
        self.done.add(first_row, last_row)
        self.events_imported += imported
        self.events_refused += refused
        self.run_events += imported + refused

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as written to disk."""
        self.updated_at = time.time()
        return {
            "version": FORMAT_VERSION,
            "state": self.state.value,
            "identity": self.identity,
            "event_time_ms": self.event_time_ms,
            "started_ms": self.started_ms,
            "verdicts": self.verdicts,
            "done": self.done.to_json(),
            "rows_total": self.rows_total,
            "events_total": self.events_total,
            "rejected": self.rejected,
            "events_imported": self.events_imported,
            "events_refused": self.events_refused,
            "requests": self.requests,
            "retries": self.retries,
            "runs": self.runs,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "run_started_at": self.run_started_at,
            "run_events": self.run_events,
        }

    def image(self) -> CheckpointImage:
        """The state to write, taken at one instant on the event loop, numbered in order."""
        self._taken += 1
        return CheckpointImage(self._taken, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    def write(self, image: CheckpointImage | None = None) -> None:
        """Write atomically and durably (see the module docstring).

        Writes may come from two threads at once (a periodic write still running when the
        final one starts): they take turns, and a image older than the one on disk is
        dropped, so the file never goes back in time.
        """
        image = image if image is not None else self.image()
        with self._write_lock:
            if image.number <= self._written:
                return
            atomic_write_bytes(self.path, image.data)
            self._written = image.number




def _reason(e: Exception) -> str:
    """Why a checkpoint could not be read, on one line (an OSError names the path already)."""
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return " ".join(str(e).split())[:160]


def _optional_count(value: Any, name: str) -> int | None:
    return None if value is None else count_of(value, name)


def _counts(value: Any, name: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} is {type(value).__name__}, not an object of counts")
    return {str(k): count_of(v, f"{name}.{k}") for k, v in value.items()}


def _seconds(value: Any) -> float:
    if value is None:
        return time.time()
    # Up to the year 9999: past it (or not finite) no date can show it, and ``status`` must.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2.5e11:
        raise ValueError(f"a time stamp is {value!r}")
    return float(value)


def _event_time(value: Any, name: str = "event_time_ms") -> int:
    """A fixed time: epoch ms from 1971 to now (a little clock skew allowed)."""
    ms = count_of(value, name)
    if not MIN_TIME_MS <= ms <= time.time() * 1000 + 86_400_000:
        raise ValueError(f"{name} {ms} is not between 1971 and now")
    return ms


def _optional_digest(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and len(value) == 64):
        return value
    raise ValueError(f"verdicts is {value!r}, not a SHA-256 digest")


def _send_state(value: Any) -> SendState:
    try:
        return SendState(value)
    except ValueError:
        raise ValueError(f"state is {value!r}, not one of {', '.join(SendState)}") from None
