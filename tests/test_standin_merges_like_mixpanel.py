"""The stand-in's identity graph: what Mixpanel merges, per ID merge system, over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from backfill.mixpanel import IdMerge
from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    Standin,
    StandinConfig,
    running_standin,
)

T_MS = 1_700_000_000_000  # 2023-11-14, well inside Mixpanel's accepted range
PARAMS = {"strict": "1", "project_id": "1"}
LEGACY_JS_ID = "13bbf7943e584-0885c2531-5c793977-3e8000-13bbf7943e64cf"  # mixpanel-js < 2.62


def uuid4(n: int) -> str:
    """A reproducible lower-case UUID v4 string, distinct for each ``n``."""
    return str(uuid.UUID(int=n + 1, version=4))


def insert_id(*parts: str) -> str:
    """A valid ``$insert_id`` derived from ``parts`` (36 characters of hex and dashes)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(parts)))


def identify(anon: str, user: str, *, tag: str = "") -> dict[str, Any]:
    """The ``$identify`` backfill sends for ``(anon, user)``; ``tag`` makes another insert id."""
    return {
        "event": "$identify",
        "properties": {
            "$anon_id": anon,
            "$identified_id": user,
            "distinct_id": user,
            "time": T_MS,
            "$insert_id": insert_id("identify", anon, user, tag),
        },
    }


def merge(first: Any, second: Any = None, *, ids: Any = None) -> dict[str, Any]:
    """A ``$merge`` of ``[first, second]`` (or of ``ids`` exactly as given, to malform it)."""
    distinct_ids = [first, second] if ids is None else ids
    props: dict[str, Any] = {
        "distinct_id": "merger",
        "time": T_MS,
        "$insert_id": insert_id("merge", repr(distinct_ids)),
    }
    if distinct_ids is not ...:
        props["$distinct_ids"] = distinct_ids
    return {"event": "$merge", "properties": props}


def pairing(device: str, user: str, *, name: str = "Identity Backfill") -> dict[str, Any]:
    """A Simplified pairing event carrying ``$device_id`` and ``$user_id``."""
    return {
        "event": name,
        "properties": {
            "$device_id": device,
            "$user_id": user,
            "distinct_id": user,
            "time": T_MS,
            "$insert_id": insert_id("pair", device, user),
        },
    }


async def post(
    session: aiohttp.ClientSession, standin: Standin, events: list[dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    """POST ``events`` to the stand-in's ``/import`` and return the status and JSON body."""
    async with session.post(
        standin.import_url,
        json=events,
        params=PARAMS,
        headers={"Authorization": aiohttp.encode_basic_auth(*DEFAULT_SERVICE_ACCOUNT)},
    ) as response:
        return response.status, await response.json()


@pytest.fixture
async def original() -> AsyncIterator[Standin]:
    """A stand-in whose project is on Original ID Merge (the default)."""
    async with running_standin() as s:
        yield s


@pytest.fixture
async def simplified() -> AsyncIterator[Standin]:
    """A stand-in whose project is on Simplified ID Merge."""
    async with running_standin(StandinConfig(id_merge=IdMerge.SIMPLIFIED)) as s:
        yield s


class TestOriginalIdentify:
    @pytest.mark.parametrize(
        "anon",
        [
            pytest.param(LEGACY_JS_ID, id="legacy-js-id"),
            pytest.param("6ba7b810-9dad-11d1-80b4-00c04fd430c8", id="uuid-v1"),
            pytest.param("6ba7b810-9dad-41d1-c0b4-00c04fd430c8", id="bad-variant"),
            pytest.param("$device:" + LEGACY_JS_ID, id="device-prefix-not-uuid"),
            pytest.param("$device:$device:" + uuid4(1), id="two-device-prefixes"),
        ],
    )
    async def test_non_uuid4_anon_is_imported_and_silently_not_merged(
        self, session: aiohttp.ClientSession, original: Standin, anon: str
    ) -> None:
        """A non-UUID-v4 ``$anon_id`` gets a 200 and counts as imported, yet merges nothing."""
        status, body = await post(session, original, [identify(anon, "u1")])
        assert (status, body) == (200, {"code": 200, "num_records_imported": 1, "status": "OK"})
        state = original.state
        assert state.identify_pairs() == {(anon, "u1")}, "stored as an event"
        assert state.merged_pairs() == set()
        assert state.not_merged() == {(anon, "u1"): "not_uuid4"}
        assert state.cluster_of("u1") == {"u1"}
        assert state.cluster_of(anon) == {anon}
        assert state.summary()["identity"]["not_merged"]["not_uuid4"] == 1

    async def test_uuid4_and_device_prefixed_uuid4_are_merged_as_written(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """``<uuid4>`` (either case) and ``$device:<uuid4>`` merge; ``$device:X`` and ``X`` are
        two ids, so each can merge into a different user."""
        plain, upper, device = uuid4(1), uuid4(2).upper(), "$device:" + uuid4(3)
        events = [identify(plain, "u1"), identify(upper, "u1"), identify(device, "u1")]
        events.append(identify(uuid4(3), "u2"))  # the same UUID without the prefix
        status, body = await post(session, original, events)
        assert (status, body["num_records_imported"]) == (200, 4)
        state = original.state
        assert state.cluster_of("u1") == {"u1", plain, upper, device}
        assert state.cluster_of(device) == state.cluster_of("u1")
        assert state.cluster_of("u2") == {"u2", uuid4(3)}
        assert state.devices_of("u1") == {plain, upper, device}
        assert state.merged_pairs() == {
            (plain, "u1"),
            (upper, "u1"),
            (device, "u1"),
            (uuid4(3), "u2"),
        }
        assert state.not_merged() == {}

    async def test_an_anon_merged_before_is_not_merged_again(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """An anon id already merged stays where it is: into another user ``already_merged``,
        into its own cluster again ``same_cluster``; both records are still imported."""
        anon = uuid4(1)
        await post(session, original, [identify(anon, "u1")])
        status, body = await post(
            session, original, [identify(anon, "u2"), identify(anon, "u1", tag="again")]
        )
        assert (status, body["num_records_imported"]) == (200, 2)
        state = original.state
        assert state.cluster_of(anon) == {anon, "u1"}
        assert state.cluster_of("u2") == {"u2"}
        assert state.merged_pairs() == {(anon, "u1")}
        assert state.not_merged() == {(anon, "u2"): "already_merged"}, "(anon, u1) did merge"
        counts = state.summary()["identity"]["not_merged"]
        assert (counts["already_merged"], counts["same_cluster"]) == (1, 1)

    async def test_a_resent_duplicate_is_not_a_second_merge_attempt(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """Resending the same event (same key) is a duplicate: no outcome is counted twice."""
        events = [identify(uuid4(n), "u1") for n in range(3)]
        await post(session, original, events)
        await post(session, original, events)
        identity = original.state.summary()["identity"]
        assert original.state.duplicates == 3
        assert identity["merged"] == 3
        assert sum(identity["not_merged"].values()) == 0

    async def test_a_cluster_holds_at_most_500_ids_the_identified_id_included(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """499 anon ids merge into a user (500 ids); the 500th is imported and ``cluster_full``."""
        anons = [uuid4(n) for n in range(500)]
        status, body = await post(session, original, [identify(a, "u1") for a in anons])
        assert (status, body["num_records_imported"]) == (200, 500)
        state = original.state
        assert len(state.cluster_of("u1")) == 500
        assert anons[-1] not in state.cluster_of("u1")
        assert state.not_merged() == {(anons[-1], "u1"): "cluster_full"}
        identity = state.summary()["identity"]
        assert identity["merged"] == 499
        assert (identity["clusters"], identity["largest_cluster"]) == (1, 500)

    async def test_events_carrying_device_and_user_ids_merge_nothing(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """In Original, a ``$device_id`` + ``$user_id`` event is stored inertly (live probes)."""
        status, _ = await post(session, original, [pairing(uuid4(1), "u1")])
        assert status == 200
        assert original.state.cluster_of("u1") == {"u1"}
        assert original.state.merged_pairs() == set()


class TestOriginalMerge:
    async def test_merge_joins_two_whole_clusters_without_the_uuid_or_merged_before_rules(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """``$merge`` joins a non-UUID id, then two whole clusters, then an already-merged id."""
        a1, a2 = uuid4(1), uuid4(2)
        await post(session, original, [identify(a1, "u1"), identify(a2, "u2")])
        status, body = await post(
            session,
            original,
            [merge("u1", LEGACY_JS_ID), merge("u1", "u2"), merge("u3", a1), merge("u2", a1)],
        )
        assert (status, body["num_records_imported"]) == (200, 4)
        state = original.state
        everyone = {"u1", a1, LEGACY_JS_ID, "u2", a2, "u3"}
        assert state.cluster_of(a2) == everyone
        assert state.cluster_of("u3") == everyone
        # backfill sends $distinct_ids as [identified, anon]: pairs read (anon, identified).
        assert {(LEGACY_JS_ID, "u1"), ("u2", "u1"), (a1, "u3")} <= state.merged_pairs()
        assert state.not_merged() == {(a1, "u2"): "same_cluster"}

    async def test_merge_past_500_ids_is_imported_and_not_merged(
        self, session: aiohttp.ClientSession, original: Standin
    ) -> None:
        """Two clusters of 499 and 2 ids (501) stay apart; 499 and 1 (500) merge."""
        big = [identify(uuid4(n), "big") for n in range(498)]
        await post(session, original, [*big, identify(uuid4(1000), "pair")])
        status, body = await post(session, original, [merge("big", "pair"), merge("big", "one")])
        assert (status, body["num_records_imported"]) == (200, 2)
        state = original.state
        assert state.not_merged() == {("pair", "big"): "cluster_full"}
        assert len(state.cluster_of("big")) == 500
        assert "one" in state.cluster_of("big")
        assert state.cluster_of("pair") == {"pair", uuid4(1000)}

    @pytest.mark.parametrize(
        "ids",
        [
            pytest.param(..., id="missing"),
            pytest.param(["u1"], id="one-id"),
            pytest.param(["u1", "u2", "u3"], id="three-ids"),
            pytest.param(["u1", 2], id="not-a-string"),
            pytest.param(["u1", ""], id="empty-string"),
            pytest.param("u1,u2", id="not-an-array"),
        ],
    )
    async def test_malformed_merge_is_a_failed_record(
        self, session: aiohttp.ClientSession, original: Standin, ids: Any
    ) -> None:
        """A ``$merge`` without exactly two string ids fails alone; the rest is imported."""
        status, body = await post(session, original, [merge("u1", "u2"), merge(None, ids=ids)])
        assert status == 400
        assert body["num_records_imported"] == 1
        [failure] = body["failed_records"]
        assert (failure["index"], failure["field"]) == (1, "properties.$distinct_ids")
        assert original.state.cluster_of("u1") == {"u1", "u2"}


class TestSimplifiedPairing:
    async def test_pairing_strips_one_device_prefix_and_joins_device_to_user(
        self, session: aiohttp.ClientSession, simplified: Standin
    ) -> None:
        """``$device:`` is stripped once; any device id format pairs; the cluster names the
        device ``$device:<id>`` as Mixpanel does."""
        d1 = uuid4(1)
        events = [
            pairing("$device:" + d1, "u1"),
            pairing(LEGACY_JS_ID, "u2", name="Signed In"),
            pairing("$device:$device:abc", "u3"),
        ]
        status, body = await post(session, simplified, events)
        assert (status, body["num_records_imported"]) == (200, 3)
        state = simplified.state
        assert state.merged_pairs() == {(d1, "u1"), (LEGACY_JS_ID, "u2"), ("$device:abc", "u3")}
        assert state.devices_of("u1") == {d1}
        assert state.devices_of("u3") == {"$device:abc"}
        assert state.cluster_of("u1") == {"u1", "$device:" + d1}
        assert state.cluster_of("$device:" + d1) == {"u1", "$device:" + d1}
        assert state.summary()["identity"]["system"] == "simplified"

    async def test_first_pairing_of_a_device_wins(
        self, session: aiohttp.ClientSession, simplified: Standin
    ) -> None:
        """A later pairing of the device with another user is stored and moves nothing."""
        device = uuid4(1)
        await post(session, simplified, [pairing(device, "u1")])
        status, body = await post(
            session, simplified, [pairing("$device:" + device, "u2"), pairing(device, "u3")]
        )
        assert (status, body["num_records_imported"]) == (200, 2)
        state = simplified.state
        assert state.events_imported == 3
        assert state.devices_of("u1") == {device}
        assert state.devices_of("u2") == state.devices_of("u3") == frozenset()
        assert state.not_merged() == {
            (device, "u2"): "already_merged",
            (device, "u3"): "already_merged",
        }
        assert state.summary()["identity"]["not_merged"] == {"already_merged": 2, "same_cluster": 0}

    async def test_no_cluster_cap(
        self, session: aiohttp.ClientSession, simplified: Standin
    ) -> None:
        """A user takes 600 devices: Simplified has no 500-id cap."""
        status, _ = await post(session, simplified, [pairing(uuid4(n), "u1") for n in range(600)])
        assert status == 200
        assert len(simplified.state.devices_of("u1")) == 600
        assert simplified.state.summary()["identity"]["largest_cluster"] == 601

    async def test_an_event_without_both_ids_pairs_nothing(
        self, session: aiohttp.ClientSession, simplified: Standin
    ) -> None:
        """Only ``$device_id``, only ``$user_id``, or a bare ``$device:`` pair nothing."""
        only_device = pairing(uuid4(1), "u1")
        del only_device["properties"]["$user_id"]
        only_user = pairing(uuid4(2), "u2")
        del only_user["properties"]["$device_id"]
        status, _ = await post(
            session, simplified, [only_device, only_user, pairing("$device:", "u3")]
        )
        assert status == 200
        assert simplified.state.merged_pairs() == set()
        assert simplified.state.events_imported == 3

    async def test_distinct_id_is_still_required(
        self, session: aiohttp.ClientSession, simplified: Standin
    ) -> None:
        """A pairing event without ``distinct_id`` fails alone, and pairs nothing."""
        bad = pairing(uuid4(1), "u1")
        del bad["properties"]["distinct_id"]
        status, body = await post(session, simplified, [bad, pairing(uuid4(2), "u2")])
        assert (status, body["num_records_imported"]) == (400, 1)
        assert body["failed_records"][0]["field"] == "properties.distinct_id"
        assert simplified.state.merged_pairs() == {(uuid4(2), "u2")}
