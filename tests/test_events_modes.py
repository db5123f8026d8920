"""The events of each ID merge mode: $merge for rescued legacy anon ids, pairing events for
Simplified ID Merge, and their $insert_ids (a function of the pair and the event kind alone)."""

from __future__ import annotations

import json

import pyarrow as pa
from runkit import T_MS, body_json, decode, pairs

from backfill.config.options import DEFAULTS
from backfill.mixpanel import IdMerge
from backfill.send.events import Encoder, insert_ids
from backfill.validation.rules import Rules

SIMPLIFIED = Rules(IdMerge.SIMPLIFIED, "refuse")
#: The pairing event's name when --pairing-event is not given.
PAIRING = DEFAULTS["pairing_event"]

A1 = "6f1c1b0e-2a4d-4c3b-9d8e-7f6a5b4c3d2e"
LEGACY = "13bbf7943e584-0885c2531-5c793977-3e8000-13bbf7943e64cf"  # mixpanel-js before v2.62
QUOTED = 'dev"ice\\7'


def compact(events: list[dict[str, object]]) -> bytes:
    """The events as compact JSON text, non-ASCII kept as UTF-8."""
    return json.dumps(events, separators=(",", ":"), ensure_ascii=False).encode()


def only(encoder: Encoder, anon: list[str], ident: list[str]) -> tuple[bytes, list[str]]:
    """The one batch's JSON body and insert ids."""
    (batch,) = list(encoder.batches(pairs(anon, ident)))
    return body_json(batch), batch.insert_ids.to_pylist()


def test_merge_mode_sends_identify_for_uuids_and_merge_of_two_ids_for_the_rest() -> None:
    """--non-uuid-anon merge: a UUID v4 (bare or $device:) is $identify, a legacy id $merge."""
    encoder = Encoder(token="t", batch_size=10, rules=Rules(IdMerge.ORIGINAL, "merge"))
    anon = [A1, LEGACY, "$device:" + A1, QUOTED]
    ident = ["u1", "u2", "u3", "u4"]
    body, ids = only(encoder, anon, ident)
    want = [
        {"event": "$identify", "properties": {"$anon_id": A1, "$identified_id": "u1",
                                              "distinct_id": "u1", "time": T_MS,
                                              "$insert_id": ids[0], "token": "t"}},
        {"event": "$merge", "properties": {"$distinct_ids": ["u2", LEGACY], "distinct_id": "u2",
                                           "time": T_MS, "$insert_id": ids[1], "token": "t"}},
        {"event": "$identify", "properties": {"$anon_id": "$device:" + A1,
                                              "$identified_id": "u3", "distinct_id": "u3",
                                              "time": T_MS, "$insert_id": ids[2], "token": "t"}},
        {"event": "$merge", "properties": {"$distinct_ids": ["u4", QUOTED], "distinct_id": "u4",
                                           "time": T_MS, "$insert_id": ids[3], "token": "t"}},
    ]  # fmt: skip
    assert body == compact(want)
    assert ids[0] == insert_ids(pa.array([A1]), pa.array(["u1"])).to_pylist()[0]
    assert ids[1] != insert_ids(pa.array([LEGACY]), pa.array(["u2"])).to_pylist()[0]


def test_refuse_mode_never_builds_a_merge() -> None:
    """By default every event is $identify (legacy ids never reach the encoder)."""
    body, _ = only(Encoder(token=None, batch_size=10), [A1, "$device:" + A1], ["a", "b"])
    assert [e["event"] for e in json.loads(body)] == ["$identify", "$identify"]


def test_simplified_mode_sends_pairing_events_with_one_prefix_stripped() -> None:
    """Simplified: the pairing event carries $device_id (one $device: stripped) and $user_id."""
    encoder = Encoder(
        token=None, batch_size=10, rules=SIMPLIFIED, pairing_event="Paired"
    )
    anon = ["$device:" + A1, LEGACY, "$device:$device:x", QUOTED]
    ident = ["u1", "u2", "u3", "u4"]
    body, ids = only(encoder, anon, ident)
    devices = [A1, LEGACY, "$device:x", QUOTED]
    want = [
        {"event": "Paired", "properties": {"$device_id": d, "$user_id": u, "distinct_id": u,
                                           "time": T_MS, "$insert_id": i}}
        for d, u, i in zip(devices, ident, ids, strict=True)
    ]  # fmt: skip
    assert body == compact(want)


def test_insert_ids_depend_on_the_kind_and_a_pairing_on_its_device() -> None:
    """The same pair has another id as $identify, $merge and pairing; $device:X pairs as X."""
    identify = only(Encoder(token=None, batch_size=5), [A1], ["u"])[1][0]
    merge = insert_ids(pa.array([A1]), pa.array(["u"]), kind="$merge").to_pylist()[0]
    simplified = Encoder(token=None, batch_size=5, rules=SIMPLIFIED, pairing_event=PAIRING)
    pairing = only(simplified, [A1], ["u"])[1][0]
    prefixed = only(simplified, ["$device:" + A1], ["u"])[1][0]
    assert len({identify, merge, pairing}) == 3
    assert prefixed == pairing, "the device, not its spelling, names the pairing"


def test_pairing_event_name_is_json_escaped() -> None:
    """A pairing event name with a quote stays valid JSON."""
    encoder = Encoder(token=None, batch_size=5, rules=SIMPLIFIED, pairing_event='Ba"ck')
    (event,) = decode(next(encoder.batches(pairs([A1], ["u"]))))
    assert event["event"] == 'Ba"ck'
