"""What a command did, as one typed value: ``summary.json``, the terminal table, ``status``,
``--json`` and the Python API all come from a ``Summary``. ``str(summary)`` is the terminal
table the CLI prints; ``summary.rejects()`` reads ``rejects.csv`` as a DataFrame of text.

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
from typing import TYPE_CHECKING, Any, TypeVar

from backfill.mixpanel import IdMerge

if TYPE_CHECKING:
    import pandas as pd


_D = TypeVar("_D")


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
class RowRef:
    """One id's place in the input: its file, its row within that file, its column."""

    file: str
    row: int
    column: str


@dataclass(frozen=True)
class TrimmedIds:
    """Ids whose surrounding whitespace was trimmed before judging and sending (an anon id and
    an identified id of one row count as two), and the first of them."""

    count: int = 0
    sample: RowRef | None = None


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
    #: Summaries written before Simplified ID Merge was supported hold none: Original.
    id_merge: IdMerge = IdMerge.ORIGINAL
    hash_collisions_resolved: int = 0
    trimmed_ids: TrimmedIds = field(default_factory=TrimmedIds)
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
    #: A DataFrame source's index, so ``rejects()`` can name each row by its label (set by
    #: the Python API; never written to ``summary.json``).
    index_labels: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        """The terminal table, as the CLI prints it."""
        from backfill.report.table import render_table

        return render_table(self)

    def __repr__(self) -> str:
        rejected = f"{self.rows_rejected:,}"
        return (
            f"<Summary {self.status.value}: {self.rows_read:,} rows read, {self.rows_valid:,} "
            f"valid, {rejected} rejected, {self.events_imported:,} events imported; "
            f"out={str(self.out)!r}>"
        )

    def rejects(self) -> pd.DataFrame:
        """``rejects.csv`` as a DataFrame of text (``409`` stays ``"409"``, empty stays ``""``;
        ``row`` an integer); for a DataFrame source, an ``index`` column first holding each
        row's label in that DataFrame."""
        from backfill.folder.rejects import REJECTS_FILE, read_rejects

        return read_rejects(self.out / REJECTS_FILE, self.index_labels)
    #: Where ``report.html`` was written (None with ``--no-report``).
    report: str | None = None

    @property
    def rows_rejected(self) -> int:
        """Every rejected row, Mixpanel's refusals included."""
        return sum(self.rejected.values())

    @property
    def report_path(self) -> Path | None:
        """The run folder's ``report.html``, if this command wrote one."""
        return None if self.report is None else Path(self.report)

    def _repr_html_(self) -> str:
        """The report in a notebook: the written page's content, else the counts alone."""
        from backfill.report.page import fragment_of, render

        if self.report_path is not None:
            try:
                fragment = fragment_of(self.report_path.read_text(encoding="utf-8"))
            except OSError:
                fragment = None
            if fragment is not None:
                return fragment
        return render(self, None)

    @property
    def sent(self) -> bool:
        """Whether this summary is of a run (``run``/``rehearse``), not a dry run."""
        return self.this_run is not None

    def to_json(self) -> dict[str, Any]:
        """The summary as ``summary.json`` and ``--json`` hold it (unset fields left out)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "index_labels":
                continue
            if isinstance(value, RunStatus):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, ThisRun):
                value = asdict(value) | {"retries": dict(value.retries)}
            elif isinstance(value, TrimmedIds):
                value = {k: v for k, v in asdict(value).items() if v is not None}
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
        values["trimmed_ids"] = _trimmed_ids(data.get("trimmed_ids"))
        if isinstance(data.get("this_run"), Mapping):
            values["this_run"] = _known_fields(ThisRun, data["this_run"])
        return _known_fields(cls, values)


def _trimmed_ids(data: Any) -> TrimmedIds:
    """``trimmed_ids`` as written (absent from summaries of earlier versions: zero)."""
    if not isinstance(data, Mapping):
        return TrimmedIds()
    sample = data.get("sample")
    ref = (
        RowRef(str(sample["file"]), int(sample["row"]), str(sample["column"]))
        if isinstance(sample, Mapping)
        else None
    )
    return TrimmedIds(int(data.get("count", 0)), ref)
#: The file every command writes its summary to (``status`` reads it too).
SUMMARY_FILE = "summary.json"


def duration(seconds: float) -> str:
    """A duration for people: "under 1 s", "42 s", "17 min", "3.5 h"."""
    s = float(seconds)
    if s < 1:
        return "under 1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _known_fields(kind: type[_D], data: Mapping[str, Any]) -> _D:
    """A dataclass read back from JSON: the fields it knows, those of a newer version left out."""
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]  # kind is a dataclass
    return kind(**{k: v for k, v in data.items() if k in known})
