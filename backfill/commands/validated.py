"""What validation hands to the rest of a command: the input judged and its rejects written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from backfill.folder.rejects import RejectsFile
from backfill.read import ChunkSource, Dataset
from backfill.report.page.aggregates import Collector
from backfill.validation.judge import Verdicts


@dataclass
class Validated:
    """The input judged and its rejects written: what a run sends from.

    ``source`` streams ``dataset`` (for a run, checked against what was judged).
    """

    source: ChunkSource
    dataset: Dataset
    verdicts: Verdicts
    now_ms: int
    rejects: RejectsFile
    #: The events the valid pairs make, by kind (``$identify``, ``$merge``, a pairing event).
    events_by_kind: Mapping[str, int] = field(default_factory=dict)
    #: The report's figures, gathered while judging (None with ``--no-report``).
    collector: Collector | None = None
