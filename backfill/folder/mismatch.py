"""A run folder's checkpoint made for other settings: what differs, and what a rerun does then.

A run that settled nothing (no pair imported, none refused by Mixpanel: its canary was
refused, say) holds no progress worth keeping, so a rerun with other settings starts afresh
and says so in one line. A run that settled even one pair is refused instead, the message
naming each setting that differs, with its old and new value, and ``--restart``.

Settings of one ID merge system (``--non-uuid-anon`` for Original, ``--pairing-event`` for
Simplified) are named only when the system itself is unchanged: a change of ``--id-merge``
swaps one for the other, and naming all three would suggest three changes where one was made.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backfill.errors import CheckpointMismatch

_FLAGS = {
    "project_id": "project id",
    "format": "--format",
    "anon_column": "--anon-column",
    "identified_column": "--identified-column",
    "time_column": "--time-column",
    "max_cluster_size": "--max-cluster-size",
    "id_merge": "--id-merge",
    "non_uuid_anon": "--non-uuid-anon",
    "pairing_event": "--pairing-event",
}
_MODE_SETTINGS = ("non_uuid_anon", "pairing_event")


def differences(
    recorded: Mapping[str, Any],
    wanted: Mapping[str, Any],
    recorded_time_ms: int,
    wanted_time_ms: int | None,
) -> list[str]:
    """Each setting that differs, as ``label: old → new``; empty when the run is the same."""
    keys = sorted(set(recorded) | set(wanted))
    if recorded.get("id_merge") != wanted.get("id_merge"):
        keys = [k for k in keys if k not in _MODE_SETTINGS]
    found = [
        _describe(k, recorded.get(k), wanted.get(k))
        for k in keys
        if recorded.get(k) != wanted.get(k)
    ]
    if wanted_time_ms is not None and wanted_time_ms != recorded_time_ms:
        found.append(f"--event-time: {_iso(recorded_time_ms)} → {_iso(wanted_time_ms)}")
    return found


def refusal(folder: Path, found: list[str], imported: int, refused: int) -> CheckpointMismatch:
    """The refusal of a run that settled pairs under other settings."""
    return CheckpointMismatch(
        f"{folder} holds a run made with other settings ({'; '.join(found)}) that already "
        f"settled {imported + refused:,} pairs ({imported:,} imported): pass --restart to "
        "discard its checkpoint and start over with these settings (pairs sent again as "
        "unchanged events are deduplicated by Mixpanel), or --out DIR to start this run in "
        "another folder"
    )


def fresh_note(folder: Path, found: list[str]) -> str:
    """The one line a rerun prints when it replaces a run that settled nothing."""
    return (
        f"{folder} held a run that settled nothing (no pair imported or refused) under other "
        f"settings ({'; '.join(found)}): starting afresh with these"
    )


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "input":
        return f"input files: {_files_changed(old, new)}"
    if key == "token":
        how = "set" if old is None else "unset" if new is None else "another token"
        return f"MIXPANEL_PROJECT_TOKEN: {how}"
    return f"{_FLAGS.get(key, key)}: {_value(old)} → {_value(new)}"


def _files_changed(old: Any, new: Any) -> str:
    """Which files were added, removed or changed, by name; a generic phrase if unknown."""
    before, after = _by_name(old), _by_name(new)
    if before is None or after is None:
        return "one was added, removed or changed"
    parts = [
        f"{verb}: {', '.join(names)}"
        for verb, names in (
            ("added", [n for n in after if n not in before]),
            ("removed", [n for n in before if n not in after]),
            ("changed", [n for n in after if n in before and after[n] != before[n]]),
        )
        if names
    ]
    return "; ".join(parts) or "their order changed"


def _by_name(fingerprint: Any) -> dict[str, Any] | None:
    files = fingerprint.get("files") if isinstance(fingerprint, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return None
    named = {str(f.get("name")): f for f in files}
    return named if len(named) == len(files) else None


def _value(value: Any) -> str:
    """A value as typed; quoted when a space (or nothing) would make it unreadable."""
    if value is None:
        return "none"
    text = str(value)
    return repr(text) if not text or text != "".join(text.split()) else text


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
