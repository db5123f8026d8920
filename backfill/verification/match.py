"""Matching exported events to the run's pairs by ``$insert_id``, and what each line says.

The run's pairs are a sorted array of 64-bit keys (``pairs``); each gets an outcome byte:
``NOT_FOUND`` until an exported event with its key is read, then ``MERGED``, or ``NOT_MERGED``
when the event carries a failure property (``$failure_reason`` on Original ID Merge,
``$identity_failure_reason`` on Simplified). A raw export is not deduplicated and a broken
query is read again, so a key may be read many times: ``NOT_MERGED`` wins over ``MERGED``
(any stored copy that says it did not merge is believed), and nothing else changes. Events
whose key is not one of the run's are the project's own and are ignored.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from backfill.mixpanel import FAILURE_DESCRIPTION, FAILURE_REASON, IDENTITY_FAILURE_REASON
from backfill.untrusted.boundedjson import MiB, loads
from backfill.verification.pairs import U64, key_of

#: One exported event is a few KiB; a line past this is no event of ours (and is not parsed).
MAX_LINE_BYTES: Final = 8 * MiB

NOT_FOUND: Final = 0
MERGED: Final = 1
NOT_MERGED: Final = 2
OUTCOMES: Final = ("not_found", "merged", "not_merged")
#: Keys of events without a failure property, looked up together every this many lines.
_BATCH = 1 << 16
#: Distinct (reason, description) pairs kept; past this only the reason is kept.
_MAX_REASONS = 60_000


class Matcher:
    """Outcomes of the pairs whose keys are ``keys`` (sorted, unique)."""

    def __init__(self, keys: U64) -> None:
        self.keys = keys
        self.outcome = np.zeros(len(keys), dtype=np.uint8)
        self.reason = np.zeros(len(keys), dtype=np.uint16)
        self.reasons: list[tuple[str, str]] = [("", "")]
        self._reason_index: dict[tuple[str, str], int] = {}
        self._pending: list[int] = []
        self.lines = 0

    def line(self, raw: bytes) -> None:
        """One exported event (a JSON Lines line)."""
        self.lines += 1
        try:
            event = loads(raw, max_bytes=MAX_LINE_BYTES)
            props: dict[str, Any] = event["properties"]
            key = key_of(str(props.get("$insert_id", "")))
        except (ValueError, TypeError, KeyError):
            return  # not an event of ours, whatever it is
        if key is None:
            return
        reason = props.get(FAILURE_REASON) or props.get(IDENTITY_FAILURE_REASON)
        if not reason:
            self._pending.append(key)
            if len(self._pending) >= _BATCH:
                self.flush()
            return
        at = self._find(np.array([key], dtype=np.uint64))
        if len(at):
            self.outcome[at] = NOT_MERGED
            self.reason[at] = self._reason_of(str(reason), str(props.get(FAILURE_DESCRIPTION, "")))

    def flush(self) -> None:
        """Look up the keys read since the last flush."""
        if not self._pending:
            return
        at = self._find(np.array(self._pending, dtype=np.uint64))
        self._pending = []
        self.outcome[at] = np.maximum(self.outcome[at], MERGED)

    def _find(self, keys: U64) -> npt.NDArray[np.intp]:
        pos = np.searchsorted(self.keys, keys)
        inside = pos < len(self.keys)
        pos, keys = pos[inside], keys[inside]
        found: npt.NDArray[np.intp] = pos[self.keys[pos] == keys]
        return found

    def _reason_of(self, reason: str, description: str) -> int:
        pair = (reason, description if len(self.reasons) < _MAX_REASONS else "")
        index = self._reason_index.get(pair)
        if index is None:
            index = self._reason_index[pair] = len(self.reasons)
            self.reasons.append(pair)
        return index
