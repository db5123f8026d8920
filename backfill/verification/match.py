"""Reading the export's lines: the key of each event shaped like ours, and what it says.

Each line is one stored event. Its ``$insert_id`` gives a key (``pairs.key_of``) when it has
the shape of the run's; other events are the project's own and are skipped here. An event
carrying a failure property (``$failure_reason`` on Original ID Merge,
``$identity_failure_reason`` on Simplified) says its merge was not done: its code is the
index of (reason, description) in ``reasons``; an event without one has code 0. Keys and
codes go on in batches to a sink (``index.KeyIndex.add_exported``), which joins them to the
run's pairs: the outcomes are ``NOT_FOUND``, ``MERGED`` and ``NOT_MERGED``.
"""

from __future__ import annotations

from collections.abc import Callable
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
#: Lines' keys passed on together.
_BATCH = 1 << 16
#: Distinct (reason, description) pairs kept; past this only the reason is kept.
_MAX_REASONS = 60_000
#: Codes are 16-bit; past this many distinct reasons the rest share one.
_MAX_CODES = 65_000
_TOO_MANY = ("other", "one of more distinct failure reasons than verify keeps apart")

Sink = Callable[[U64, npt.NDArray[np.int32]], None]


class Matcher:
    """Reads exported lines and passes their keys and codes to ``sink``; see the docstring."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.reasons: list[tuple[str, str]] = [("", "")]
        self._reason_index: dict[tuple[str, str], int] = {}
        self._keys: list[int] = []
        self._codes: list[int] = []
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
        self._keys.append(key)
        self._codes.append(
            self._reason_of(str(reason), str(props.get(FAILURE_DESCRIPTION, ""))) if reason else 0
        )
        if len(self._keys) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Pass on the keys read since the last flush."""
        if not self._keys:
            return
        keys = np.array(self._keys, dtype=np.uint64)
        codes = np.array(self._codes, dtype=np.int32)
        self._keys, self._codes = [], []
        self._sink(keys, codes)

    def _reason_of(self, reason: str, description: str) -> int:
        if len(self.reasons) >= _MAX_CODES:
            reason, description = _TOO_MANY
        pair = (reason, description if len(self.reasons) < _MAX_REASONS else "")
        index = self._reason_index.get(pair)
        if index is None:
            index = self._reason_index[pair] = len(self.reasons)
            self.reasons.append(pair)
        return index
