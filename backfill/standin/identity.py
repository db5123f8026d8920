"""Identity as Mixpanel builds it from the events ``/import`` accepted, for each ID merge system.

Both systems accept an identity record that does not merge without a word: ``/import`` counts it
in ``num_records_imported`` and strict mode lists nothing (live probes, 2026-08: a non-UUID
``$anon_id`` and a 510-id cluster, all accepted). So the only way to see what a run really
merged is to ask the graph: ``merged_pairs()``, ``not_merged()`` (why not), ``cluster_of()``,
``devices_of()`` and ``summary()``.

Original ID Merge (``OriginalIdentity``): identity clusters, built by two events.
    * ``$identify`` merges ``$anon_id`` into ``$identified_id``'s cluster only if the anon id
      is a UUID v4, or ``$device:`` followed by one (Mixpanel's JS SDK writes it so); is not
      already in a cluster of two or more ids ("merged before", whichever way); and the
      identified id's cluster holds fewer than 500 ids (the identified id counts), so that the
      merged cluster holds at most 500.
    * ``$merge`` (``$distinct_ids: [A, B]``) merges A's whole cluster with B's: no UUID rule and
      no "merged before" rule. Decision: the 500 cap holds for the merged cluster, as
      Mixpanel's reference says ("as long as it does not exceed 500 total IDs"): two clusters
      whose sizes add up to more than 500 are not merged (``cluster_full``).
    * Ids are compared exactly as written: ``$device:X`` and ``X`` are two ids. Events that
      carry ``$device_id`` and ``$user_id`` merge nothing here (probes: stored inertly), and
      ``$create_alias`` is stored without merging (not imitated).

Simplified ID Merge (``SimplifiedIdentity``): devices paired with users.
    * Any accepted event carrying both ``$device_id`` and ``$user_id`` (non-empty strings) pairs
      that device with that user. Ingest strips one leading ``$device:`` from ``$device_id``
      (``$device:$device:X`` is device ``$device:X``). The first pairing of a device wins; a
      later pairing of it with another user is stored as an event and moves nothing. No cap.
    * A user's cluster is the user and its devices, named ``$device:<device>`` as Mixpanel
      names them in a cluster.

Reasons an accepted identity record did not merge (``NotMerged``): ``not_uuid4`` (Original
``$identify`` only), ``already_merged`` (the anon id is already in another cluster; in
Simplified, the device is already paired with another user), ``same_cluster`` (nothing to do:
the two ids are already one cluster, or the device is already this user's), ``cluster_full``
(Original only).

An event is observed once, at the first arrival of its deduplication key: a resend of the same
key (a retry after a lost answer) is a duplicate Mixpanel counts once, and is not a second
attempt to merge.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from enum import StrEnum
from typing import Any, Final

from backfill.mixpanel import DEVICE_PREFIX, IDENTIFY_ANON_PATTERN, MAX_CLUSTER_SIZE, IdMerge

_IDENTIFY_ANON_RE: Final = re.compile(IDENTIFY_ANON_PATTERN)


class NotMerged(StrEnum):
    """Why an accepted identity record merged nothing."""

    NOT_UUID4 = "not_uuid4"
    ALREADY_MERGED = "already_merged"
    SAME_CLUSTER = "same_cluster"
    CLUSTER_FULL = "cluster_full"


def is_mergeable_anon_id(anon: str) -> bool:
    """Whether ``$identify`` merges this ``$anon_id``: a UUID v4, or ``$device:`` + a UUID v4."""
    return _IDENTIFY_ANON_RE.fullmatch(anon) is not None


class Identity(ABC):
    """What merged and what did not, common to both systems; a subclass says how ids join."""

    #: The ``id_merge`` value of the system.
    system: IdMerge
    #: The reasons this system can give, in the order ``summary()`` lists them.
    reasons: tuple[NotMerged, ...] = ()

    def __init__(self) -> None:
        self._merged: set[tuple[str, str]] = set()
        self._not_merged: dict[tuple[str, str], NotMerged] = {}
        self._refusals: Counter[NotMerged] = Counter()

    @abstractmethod
    def observe(self, event: dict[str, Any]) -> NotMerged | None:
        """Apply one accepted, unique event (it passed the strict checks); why it did not
        merge, if it is an identity record that merged nothing."""
        raise NotImplementedError

    @abstractmethod
    def cluster_of(self, distinct_id: str) -> frozenset[str]:
        """The ids of the cluster ``distinct_id`` belongs to (itself alone if merged with none)."""
        raise NotImplementedError

    @abstractmethod
    def devices_of(self, user: str) -> frozenset[str]:
        """The ids merged with ``user``: its paired devices, or its cluster but itself."""
        raise NotImplementedError

    @abstractmethod
    def clusters(self) -> list[int]:
        """The size of every cluster of two or more ids."""
        raise NotImplementedError

    def merged_pairs(self) -> set[tuple[str, str]]:
        """The pairs whose event merged: ``(anon, identified)``, or ``(device, user)``."""
        return set(self._merged)

    def not_merged(self) -> dict[tuple[str, str], NotMerged]:
        """Pairs whose events never merged, with the reason given the first time."""
        return {pair: why for pair, why in self._not_merged.items() if pair not in self._merged}

    def summary(self) -> dict[str, Any]:
        """Merges made, merges not made by reason (every record counted), cluster sizes."""
        sizes = self.clusters()
        return {
            "system": self.system,
            "merged": len(self._merged),
            "not_merged": {reason.value: self._refusals[reason] for reason in self.reasons},
            "clusters": len(sizes),
            "largest_cluster": max(sizes, default=0),
        }

    def _outcome(self, pair: tuple[str, str], reason: NotMerged | None) -> NotMerged | None:
        if reason is None:
            self._merged.add(pair)
            return None
        self._refusals[reason] += 1
        self._not_merged.setdefault(pair, reason)
        return reason


class OriginalIdentity(Identity):
    """Original ID Merge: ``$identify`` and ``$merge`` build clusters of at most 500 ids."""

    system = IdMerge.ORIGINAL
    reasons = (
        NotMerged.NOT_UUID4,
        NotMerged.ALREADY_MERGED,
        NotMerged.SAME_CLUSTER,
        NotMerged.CLUSTER_FULL,
    )

    def __init__(self, max_cluster_size: int = MAX_CLUSTER_SIZE) -> None:
        super().__init__()
        self.max_cluster_size = max_cluster_size
        # Each id of a cluster of two or more points to the one set of its members; an id in
        # no such cluster is absent. Merging moves the smaller set into the larger.
        self._clusters: dict[str, set[str]] = {}

    def observe(self, event: dict[str, Any]) -> NotMerged | None:
        """``$identify`` and ``$merge`` may merge; every other event leaves the graph alone."""
        props = event["properties"]
        if event["event"] == "$identify":
            anon, identified = props["$anon_id"], props["$identified_id"]
            return self._outcome((anon, identified), self._identify(anon, identified))
        if event["event"] == "$merge":
            first, second = props["$distinct_ids"]
            # backfill sends [identified, anon]: the pair reads (anon, identified) as above.
            return self._outcome((second, first), self._merge(first, second))
        return None

    def _identify(self, anon: str, identified: str) -> NotMerged | None:
        if not is_mergeable_anon_id(anon):
            return NotMerged.NOT_UUID4
        if self._together(anon, identified):
            return NotMerged.SAME_CLUSTER
        if anon in self._clusters:
            return NotMerged.ALREADY_MERGED
        if self._size(identified) >= self.max_cluster_size:
            return NotMerged.CLUSTER_FULL
        self._join(anon, identified)
        return None

    def _merge(self, first: str, second: str) -> NotMerged | None:
        if self._together(first, second):
            return NotMerged.SAME_CLUSTER
        if self._size(first) + self._size(second) > self.max_cluster_size:
            return NotMerged.CLUSTER_FULL
        self._join(first, second)
        return None

    def _together(self, a: str, b: str) -> bool:
        cluster = self._clusters.get(a)
        return a == b or (cluster is not None and b in cluster)

    def _size(self, distinct_id: str) -> int:
        cluster = self._clusters.get(distinct_id)
        return 1 if cluster is None else len(cluster)

    def _join(self, a: str, b: str) -> None:
        big, small = self._members(a), self._members(b)
        if len(big) < len(small):
            big, small = small, big
        big |= small
        for member in small:
            self._clusters[member] = big

    def _members(self, distinct_id: str) -> set[str]:
        # Only _join calls this: an id it adds alone is in a cluster of two at once.
        cluster = self._clusters.get(distinct_id)
        if cluster is None:
            cluster = self._clusters[distinct_id] = {distinct_id}
        return cluster

    def cluster_of(self, distinct_id: str) -> frozenset[str]:
        """The ids of ``distinct_id``'s cluster, itself included."""
        return frozenset(self._clusters.get(distinct_id, {distinct_id}))

    def devices_of(self, user: str) -> frozenset[str]:
        """The other ids of ``user``'s cluster (its anon ids, and any id ``$merge`` joined)."""
        return self.cluster_of(user) - {user}

    def clusters(self) -> list[int]:
        """The size of every cluster of two or more ids."""
        unique = {id(members): len(members) for members in self._clusters.values()}
        return list(unique.values())


class SimplifiedIdentity(Identity):
    """Simplified ID Merge: each device is paired with at most one user, first pairing wins."""

    system = IdMerge.SIMPLIFIED
    reasons = (NotMerged.ALREADY_MERGED, NotMerged.SAME_CLUSTER)

    def __init__(self) -> None:
        super().__init__()
        self._user_of: dict[str, str] = {}
        self._devices: dict[str, set[str]] = {}

    def observe(self, event: dict[str, Any]) -> NotMerged | None:
        """An event with both ``$device_id`` and ``$user_id`` pairs them, unless already paired."""
        props = event["properties"]
        device, user = props.get("$device_id"), props.get("$user_id")
        if not (isinstance(device, str) and isinstance(user, str) and user):
            return None
        device = device.removeprefix(DEVICE_PREFIX)  # one prefix only, as ingest strips it
        if not device:
            return None
        owner = self._user_of.get(device)
        if owner is None:
            self._user_of[device] = user
            self._devices.setdefault(user, set()).add(device)
            reason = None
        else:
            reason = NotMerged.SAME_CLUSTER if owner == user else NotMerged.ALREADY_MERGED
        return self._outcome((device, user), reason)

    def owner_of_event(self, event: dict[str, Any]) -> str:
        """Whose event this is, as a Simplified project reads it (probes p06/p07 of the real
        service): ``$user_id`` if set; else the user its device is paired with, the device
        taken from ``$device_id`` or from a ``$device:D`` distinct_id; an unpaired device
        stays ``$device:D``. A bare distinct_id D is a user D: it is never joined to device D.
        """
        props = event.get("properties") or {}
        user = props.get("$user_id")
        if isinstance(user, str) and user:
            return user
        device = props.get("$device_id")
        distinct = str(props.get("distinct_id", ""))
        if not (isinstance(device, str) and device):
            if not distinct.startswith(DEVICE_PREFIX):
                return distinct
            device = distinct
        device = device.removeprefix(DEVICE_PREFIX)
        return self._user_of.get(device, DEVICE_PREFIX + device)

    def cluster_of(self, distinct_id: str) -> frozenset[str]:
        """A user and its devices as ``$device:<device>``; ``$device:<d>`` finds its user's."""
        user = distinct_id
        if distinct_id.startswith(DEVICE_PREFIX):
            device = distinct_id.removeprefix(DEVICE_PREFIX)
            user = self._user_of.get(device, distinct_id)
        devices = self._devices.get(user)
        if devices is None:
            return frozenset({distinct_id})
        return frozenset({user, *(DEVICE_PREFIX + d for d in devices)})

    def devices_of(self, user: str) -> frozenset[str]:
        """The devices paired with ``user``, as ``$device_id`` names them (no prefix)."""
        return frozenset(self._devices.get(user, ()))

    def clusters(self) -> list[int]:
        """The size of every user's cluster (the user and its devices)."""
        return [1 + len(devices) for devices in self._devices.values()]
