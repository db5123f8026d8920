"""What a command did, as one typed value: ``summary.json``, the terminal table, ``status``,
``--json`` and the Python API all come from a ``Summary``.

A dry run fills the counts and the send plan; a run adds what was sent, for all runs on the
folder (``events_imported``, ``requests``, ``retries``) and for this invocation alone
(``this_run``). ``to_json`` writes only the fields that are set, so a dry run's summary has no
send counters; ``from_json`` reads back what any version wrote, tolerating missing fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any


class RunStatus(StrEnum):
    """How a command ended."""

    VALIDATED = "validated"
    COMPLETED = "completed"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class FileRows:
    """One input file of the dataset and how many data rows it held."""

    name: str
    rows: int


@dataclass(frozen=True)
class ThisRun:
    """What this invocation of ``run`` did (the rest of a Summary counts all runs)."""

    requests: int = 0
    retries: Mapping[str, int] = field(default_factory=dict)
    events_sent: int = 0
    events_imported: int = 0
    events_refused: int = 0
    send_s: float = 0.0
    #: Imported events per second of the whole send phase (the canary's round trip and the
    #: last answers' included).
    events_per_s: float = 0.0
    #: 429 answers (each one, retried or not).
    rate_limited: int = 0
    #: Events Mixpanel accepted per second between the first and the last accepted request's
    #: departure, the canary aside: the rate the run held, whatever the latency at its ends.
    rate_held_per_s: float | None = None
    #: How many times 429s lowered the run's rate, and the lowest it went, events/s.
    rate_lowered: int = 0
    lowest_rate_per_s: float | None = None
    #: The most requests in flight at once, and their mean round trip in seconds.
    max_in_flight: int = 0
    mean_latency_s: float | None = None


@dataclass(frozen=True)
class Summary:
    """The outcome of ``validate`` or ``run`` (see the module docstring)."""

    status: RunStatus
    out: Path
    input: str
    format: str
    rows_read: int
    rows_valid: int
    #: Rejected rows per reason code, every code present, ``api_rejected`` included.
    rejected: Mapping[str, int]
    events_imported: int = 0
    files: tuple[FileRows, ...] = ()
    #: Events of each kind the valid pairs make (``$identify``, ``$merge``, a pairing event).
    events_by_kind: Mapping[str, int] = field(default_factory=dict)
    id_merge: str = "original"
    hash_collisions_resolved: int = 0
    started_at: str = ""
    finished_at: str = ""
    elapsed_s: float = 0.0
    # A dry run's plan.
    batches_planned: int | None = None
    rate_per_s: float | None = None
    estimated_send_s: float | None = None
    # What sending did, all runs on this folder.
    events_total: int | None = None
    events_settled: int | None = None
    requests: int | None = None
    retries: Mapping[str, int] | None = None
    splits: int | None = None
    event_time: str | None = None
    project_id: str | None = None
    api_url: str | None = None
    runs: int | None = None
    this_run: ThisRun | None = None
    #: This run's imported events per second of sending (also in ``this_run``).
    events_per_s: float | None = None
    #: True when a rerun found every pair already settled and sent nothing.
    already_complete: bool = False

    @property
    def rows_rejected(self) -> int:
        """Every rejected row, Mixpanel's refusals included."""
        return sum(self.rejected.values())

    @property
    def sent(self) -> bool:
        """Whether this summary is of a run (``run``/``rehearse``), not a dry run."""
        return self.this_run is not None

    def to_json(self) -> dict[str, Any]:
        """The summary as ``summary.json`` and ``--json`` hold it (unset fields left out)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, RunStatus):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, ThisRun):
                value = asdict(value) | {"retries": dict(value.retries)}
            elif f.name == "files":
                value = [asdict(v) for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            data[f.name] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], out: Path) -> Summary:
        """Read back a ``summary.json`` (of this or an earlier version); KeyError if unusable."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = RunStatus(str(data["status"]))
        values["out"] = out
        values.setdefault("input", "")
        values.setdefault("format", "")
        values["rows_read"] = int(data.get("rows_read", 0))
        values["rows_valid"] = int(data.get("rows_valid", 0))
        values["rejected"] = {str(k): int(v) for k, v in dict(data.get("rejected", {})).items()}
        values["files"] = tuple(
            FileRows(str(f["name"]), int(f["rows"])) for f in data.get("files", [])
        )
        if isinstance(data.get("this_run"), Mapping):
            this = dict(data["this_run"])
            allowed = {f.name for f in fields(ThisRun)}
            values["this_run"] = ThisRun(**{k: v for k, v in this.items() if k in allowed})
        return cls(**values)
