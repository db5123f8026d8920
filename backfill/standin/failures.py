"""What the stand-in writes on a stored identity record that merged nothing, and the events a
project may hold before it starts (``--preload``).

Mixpanel documents where it says that an identity record was not merged: on the stored event,
as the reserved properties ``$failure_reason`` and ``$failure_description`` (Original ID Merge)
or ``$identity_failure_reason`` (Simplified ID Merge), which the raw export shows. It documents
one value, ``errAnonDistinctIdNonGUIDForm`` (an ``$anon_id`` that is not a UUID); the other
values below are **the stand-in's own names**, not Mixpanel's wording, chosen in its style:

==================  ==================================  ==========================================
system              reason (``NotMerged``)              property value
==================  ==================================  ==========================================
original            ``not_uuid4``                       ``errAnonDistinctIdNonGUIDForm`` (Mixpanel)
original            ``already_merged``                  ``errAnonDistinctIdAlreadyMerged``
original            ``cluster_full``                    ``errIdentityClusterSizeLimit``
simplified          ``already_merged``                  ``errDeviceAlreadyPairedWithAnotherUser``
==================  ==================================  ==========================================

``same_cluster`` writes nothing: the two ids are already one identity, which is what the
record asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from backfill.mixpanel import (
    ANON_NOT_UUID_REASON,
    FAILURE_DESCRIPTION,
    FAILURE_REASON,
    IDENTITY_FAILURE_REASON,
    MAX_CLUSTER_SIZE,
    IdMerge,
)
from backfill.standin.identity import NotMerged

#: The stand-in's values of the failure properties, by system and reason (see above).
FAILURE_NAMES: Final = {
    (IdMerge.ORIGINAL, NotMerged.NOT_UUID4): ANON_NOT_UUID_REASON,
    (IdMerge.ORIGINAL, NotMerged.ALREADY_MERGED): "errAnonDistinctIdAlreadyMerged",
    (IdMerge.ORIGINAL, NotMerged.CLUSTER_FULL): "errIdentityClusterSizeLimit",
    (IdMerge.SIMPLIFIED, NotMerged.ALREADY_MERGED): "errDeviceAlreadyPairedWithAnotherUser",
}


def failure_properties(system: IdMerge, reason: NotMerged, event: dict[str, Any]) -> dict[str, str]:
    """The properties written on ``event`` (accepted, merged nothing for ``reason``)."""
    name = FAILURE_NAMES.get((system, reason))
    if name is None:
        return {}
    props = event.get("properties") or {}
    if system == IdMerge.SIMPLIFIED:
        return {IDENTITY_FAILURE_REASON: name}
    anon = props.get("$anon_id")
    if event.get("event") == "$merge":
        anon = (props.get("$distinct_ids") or [None, None])[-1]
    descriptions = {
        NotMerged.NOT_UUID4: f"$anon_id {anon!r} is not a UUID: identity merging needs one",
        NotMerged.ALREADY_MERGED: f"$anon_id {anon!r} is already merged with another identity",
        NotMerged.CLUSTER_FULL: f"the identity cluster already holds {MAX_CLUSTER_SIZE} ids",
    }
    return {FAILURE_REASON: name, FAILURE_DESCRIPTION: descriptions[reason]}


def read_preload(path: Path) -> list[dict[str, Any]]:
    """The events of a ``--preload`` file: JSON Lines of ``{"event":…,"properties":{…}}``,
    each with ``time`` (ms), ``distinct_id`` and ``$insert_id``; a bad line is a ValueError
    naming it."""
    events: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path} line {number} is not JSON ({e})") from None
            props = event.get("properties") if isinstance(event, dict) else None
            if not isinstance(event.get("event"), str) or not isinstance(props, dict):
                raise ValueError(f"{path} line {number} is not {{'event':…,'properties':{{…}}}}")
            missing = {"time", "distinct_id", "$insert_id"} - set(props)
            if missing:
                raise ValueError(f"{path} line {number} lacks {', '.join(sorted(missing))}")
            events.append(event)
    return events
