"""Reject reason codes, in the order SPEC applies them; each rejected row gets exactly one."""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """A row's verdict; ``VALID`` (0) means it will be sent. Stored as one byte per row."""

    VALID = 0
    MISSING_ANON_ID = 1
    INVALID_ANON_ID = 2
    MISSING_IDENTIFIED_ID = 3
    INVALID_IDENTIFIED_ID = 4
    SELF_MERGE = 5
    INVALID_TIME = 6
    CONFLICTING_ANON_ID = 7
    DUPLICATE_PAIR = 8
    CLUSTER_LIMIT = 9
    API_REJECTED = 10

    @property
    def code(self) -> str:
        """The reason as written in ``rejects.csv`` and ``summary.json``."""
        return self.name.lower()


#: Every reject code in report order (validation order, then Mixpanel's own refusals).
REJECT_REASONS: tuple[Reason, ...] = tuple(r for r in Reason if r is not Reason.VALID)
