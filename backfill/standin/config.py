"""The settings of one stand-in (immutable) and the throwaway credentials it accepts by default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from backfill.mixpanel import MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES, IdMerge
from backfill.standin.faults import FaultRates

#: The throwaway service account every default config accepts. Not a secret: it only opens
#: this stand-in, and ``serve`` prints it so that a rehearsal can be set up by copy and paste.
DEFAULT_SERVICE_ACCOUNT: Final = ("backfill-rehearsal", "rehearsal-only-not-a-mixpanel-secret")
DEFAULT_PROJECT_ID: Final = "1"



@dataclass(frozen=True)
class StandinConfig:
    """Settings of one stand-in; the run-time knobs are copied into ``StandinState``.

    ``service_accounts`` maps username to secret. ``api_secrets`` are legacy project secrets.
    ``refuse_distinct_ids`` (exact strings) are refused per record, to simulate refusals only
    Mixpanel makes. ``failed_records_key`` is ``"$insert_id"`` or ``"insert_id"`` (Mixpanel
    uses both), or None for refusals that carry only ``index``, ``field`` and ``message`` (as
    Mixpanel also answers). ``id_merge`` is the project's identity system: ``"original"``
    merges ``$identify`` and ``$merge`` events into clusters of at most 500 ids;
    ``"simplified"`` refuses every request holding an identity event as Mixpanel does (a 400
    whose ``failed_records`` is one plain string, nothing imported) and pairs devices with
    users from the events that carry both ``$device_id`` and ``$user_id``. ``redirect_to`` is
    the Location of the ``302``/``307`` faults. ``max_future_s`` is how far ahead of this
    machine's clock a ``time`` may be. ``store_path``, if set, receives one NDJSON line per
    unique accepted record, deduplicated as Mixpanel counts them (appended, never truncated).
    """

    service_accounts: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(dict([DEFAULT_SERVICE_ACCOUNT])), hash=False
    )
    project_id: str = DEFAULT_PROJECT_ID
    api_secrets: frozenset[str] = frozenset()
    max_events: int = MAX_EVENTS_PER_REQUEST
    max_bytes: int = MAX_REQUEST_BYTES
    refuse_distinct_ids: frozenset[str] = frozenset()
    failed_records_key: Literal["$insert_id", "insert_id"] | None = "$insert_id"
    faults: FaultRates = field(default_factory=FaultRates)
    rate_limit_events_per_s: float | None = None
    store_path: Path | None = None
    forbidden: bool = False
    max_future_s: float = 60.0
    id_merge: IdMerge = IdMerge.ORIGINAL
    redirect_to: str = "http://127.0.0.1:9/import"
    #: NDJSON events the project holds before the stand-in starts (``--preload``).
    preload_path: Path | None = None
    #: Share of imported events ``GET /api/2.0/export`` does not show yet (``--export-lag``).
    export_lag: float = 0.0

    def __post_init__(self) -> None:
        if self.failed_records_key not in ("$insert_id", "insert_id", None):
            raise ValueError(
                f"failed_records_key must be '$insert_id', 'insert_id' or None, "
                f"not {self.failed_records_key!r}"
            )
        if self.id_merge not in tuple(IdMerge):
            raise ValueError(f"id_merge must be 'original' or 'simplified', not {self.id_merge!r}")
        if not 0.0 <= self.export_lag <= 1.0:
            raise ValueError(f"export_lag must be from 0 to 1, not {self.export_lag}")
        if self.max_events < 1 or self.max_bytes < 1:
            raise ValueError("max_events and max_bytes must be at least 1")
        if self.rate_limit_events_per_s is not None and self.rate_limit_events_per_s <= 0:
            raise ValueError("rate_limit_events_per_s must be > 0, or None for no limit")
        # A plain dict argument would stay mutable behind a frozen config.
        object.__setattr__(self, "service_accounts", MappingProxyType(dict(self.service_accounts)))

    def __repr__(self) -> str:
        # Secrets are masked so that a config can be logged or shown in a test failure.
        accounts = {user: "***" for user in self.service_accounts}
        return (
            f"StandinConfig(service_accounts={accounts!r}, project_id={self.project_id!r}, "
            f"api_secrets=<{len(self.api_secrets)} masked>, max_events={self.max_events}, "
            f"max_bytes={self.max_bytes}, refuse_distinct_ids={set(self.refuse_distinct_ids)!r}, "
            f"failed_records_key={self.failed_records_key!r}, faults={self.faults!r}, "
            f"rate_limit_events_per_s={self.rate_limit_events_per_s!r}, "
            f"store_path={self.store_path!r}, forbidden={self.forbidden!r}, "
            f"max_future_s={self.max_future_s!r}, id_merge={self.id_merge!r}, "
            f"redirect_to={self.redirect_to!r}, preload_path={self.preload_path!r}, "
            f"export_lag={self.export_lag!r})"
        )
