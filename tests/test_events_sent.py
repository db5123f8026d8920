"""The bytes of every event sent: exact JSON per SPEC for each ID merge mode ($identify, $merge
for rescued legacy anon ids, pairing events for Simplified ID Merge), stable $insert_ids (a
function of the pair and the event kind alone), batches under both request limits."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pyarrow as pa
import pytest
from runkit import T_MS, body_json, decode, pairs, uuid4s

from backfill.config.options import DEFAULTS
from backfill.mixpanel import IdMerge
from backfill.send.events import MAX_BATCH_BYTES, Batch, Encoder, Pairs, insert_ids
from backfill.validation.rules import Rules

SIMPLIFIED = Rules(IdMerge.SIMPLIFIED, "refuse")
#: The pairing event's name when --pairing-event is not given.
PAIRING = DEFAULTS["pairing_event"]

A1 = "6f1c1b0e-2a4d-4c3b-9d8e-7f6a5b4c3d2e"
A2 = "0b8f9c2d-1e3a-4b5c-8d6e-9f0a1b2c3d4e"
A3 = "A3C4E5F6-7081-4293-A4B5-C6D7E8F90A1B"

#: Pinned once (2025, this version) and never to be recomputed: a pair's $insert_id must be the
#: same in every version of the tool, or a rerun after an upgrade would import duplicates.
GOLDEN = (
    (A1, "user-1", "f8e7651b9c5775ef1ae47a22f35857ed"),
    (A2, "山田 José <x@y.z>", "4d06a6ca69eb12b99abf8fe1f03c28fd"),
    (A3, 'quo"te\\back\x01', "66099a64bf3f3dfd30b4bb5ba952c2b2"),
)

HASH_BUG = (
    "BUG: backfill/validation.py hash_strings (now hash_strings_seeds; formerly _hash_rows) mixes "
    "every string for as many 8-byte words as the LONGEST string hashed in the same call: a "
    "shorter string gets extra _fmix rounds on zero words, so its hash, and the $insert_id that "
    "events.insert_ids derives from it, depends on what else is encoded with the pair"
)

INSERT_ID_RE = re.compile(r"[0-9a-f]{32}")


def expected_event(
    anon: str, ident: str, time_ms: int, insert_id: str, token: str | None = None
) -> dict[str, object]:
    """The SPEC's event, keys in the SPEC's order."""
    props: dict[str, object] = {
        "$anon_id": anon,
        "$identified_id": ident,
        "distinct_id": ident,
        "time": time_ms,
        "$insert_id": insert_id,
    }
    if token is not None:
        props["token"] = token
    return {"event": "$identify", "properties": props}


def compact(events: Sequence[Mapping[str, object]]) -> bytes:
    """The events as compact JSON text, non-ASCII kept as UTF-8."""
    return json.dumps(events, separators=(",", ":"), ensure_ascii=False).encode()


def only_batch(encoder: Encoder, p: Pairs) -> Batch:
    """The single batch ``p`` encodes to."""
    batches = list(encoder.batches(p))
    assert len(batches) == 1
    return batches[0]


def id_map(batches: list[Batch]) -> dict[tuple[str, str], str]:
    """(anon, identified) -> $insert_id, read from the encoded bodies."""
    out: dict[tuple[str, str], str] = {}
    for b in batches:
        for e in decode(b):
            p = e["properties"]
            out[(p["$anon_id"], p["$identified_id"])] = p["$insert_id"]
    return out


# --- the event's JSON ----------------------------------------------------------------------


def test_event_json_is_exactly_the_spec_shape_without_token() -> None:
    """Without a token the body is the SPEC event, byte for byte, keys in SPEC order."""
    b = only_batch(Encoder(token=None, batch_size=2000), pairs([A1, A2], ["user-1", "u2"]))
    ids = b.insert_ids.to_pylist()
    want = [
        expected_event(A1, "user-1", T_MS, ids[0]),
        expected_event(A2, "u2", T_MS, ids[1]),
    ]
    assert body_json(b) == compact(want)
    events = decode(b)
    assert list(events[0]) == ["event", "properties"]
    assert list(events[0]["properties"]) == [
        "$anon_id",
        "$identified_id",
        "distinct_id",
        "time",
        "$insert_id",
    ]
    assert b.json_bytes == len(body_json(b))


def test_token_is_the_last_property_when_given() -> None:
    """With a token, every event carries it as the last property, JSON-escaped."""
    token = 'tok"en\\1'
    b = only_batch(Encoder(token=token, batch_size=2000), pairs([A1, A2], ["a", "b"]))
    ids = b.insert_ids.to_pylist()
    want = [
        expected_event(A1, "a", T_MS, ids[0], token),
        expected_event(A2, "b", T_MS, ids[1], token),
    ]
    assert body_json(b) == compact(want)
    assert [list(e["properties"])[-1] for e in decode(b)] == ["token", "token"]


def test_time_is_an_integer_in_milliseconds_per_event() -> None:
    """``time`` is a JSON integer (ms), each event keeping its own pair's time."""
    p = pairs([A1, A2], ["a", "b"])
    p = Pairs(p.rows, p.anon, p.identified, p.times_ms.copy())
    p.times_ms[:] = [1_600_000_000_123, 1_700_000_000_456]
    events = decode(only_batch(Encoder(token=None, batch_size=2000), p))
    times = [e["properties"]["time"] for e in events]
    assert times == [1_600_000_000_123, 1_700_000_000_456]
    assert all(type(t) is int for t in times)
    assert b'"time":1600000000123,' in body_json(only_batch(Encoder(token=None, batch_size=9), p))


def test_distinct_id_is_the_identified_id() -> None:
    """``distinct_id`` equals ``$identified_id`` for every event."""
    ids = [f"user-{i}" for i in range(50)]
    events = decode(only_batch(Encoder(token=None, batch_size=2000), pairs(uuid4s(50, 1), ids)))
    assert [e["properties"]["distinct_id"] for e in events] == ids
    assert [e["properties"]["$identified_id"] for e in events] == ids


TRICKY_IDS = [
    'say "hi"',
    "back\\slash\\",
    '\\"',
    "tab\tnew\nline\rcr",
    "nul\x00and\x01\x1f",
    "".join(chr(c) for c in range(32)),
    "del\x7f",
    "José Ñúñez",
    "山田太郎",
    "emoji 🙂🚀",
    "line\u2028para\u2029sep",
    "</script>",
    "plain-ascii",
]


def test_identified_ids_needing_escapes_round_trip_exactly() -> None:
    """Quotes, backslashes, control chars and non-ASCII survive: json.loads gives them back."""
    n = len(TRICKY_IDS)
    anon = uuid4s(n, 2)
    b = only_batch(Encoder(token=None, batch_size=2000), pairs(anon, TRICKY_IDS))
    raw = body_json(b)
    events = json.loads(raw.decode("utf-8"))
    assert [e["properties"]["$identified_id"] for e in events] == TRICKY_IDS
    assert [e["properties"]["distinct_id"] for e in events] == TRICKY_IDS
    assert [e["properties"]["$anon_id"] for e in events] == anon
    assert raw == compact(
        [
            expected_event(a, u, T_MS, i)
            for a, u, i in zip(anon, TRICKY_IDS, b.insert_ids.to_pylist(), strict=True)
        ]
    )
    assert b.json_bytes == len(raw)


@pytest.mark.parametrize("ident", TRICKY_IDS)
def test_each_tricky_id_alone_is_valid_json(ident: str) -> None:
    """A batch of one tricky id (the escape path alone) is valid JSON with that exact value."""
    events = decode(only_batch(Encoder(token="t", batch_size=10), pairs([A1], [ident])))
    assert events[0]["properties"]["$identified_id"] == ident
    assert events[0]["properties"]["distinct_id"] == ident


# --- $insert_id ------------------------------------------------------------------------------


def test_insert_id_is_32_lowercase_hex() -> None:
    """Every $insert_id is 32 lowercase hex digits, inside Mixpanel's [A-Za-z0-9-]{1,36}."""
    ids = insert_ids(pa.array(uuid4s(500, 3)), pa.array(TRICKY_IDS * 38 + ["x"] * 6))
    assert len(ids) == 500
    for value in ids.to_pylist():
        assert INSERT_ID_RE.fullmatch(value), value


def test_insert_id_same_pair_same_id_across_calls() -> None:
    """The same input gives the same ids on every call."""
    anon = pa.array(uuid4s(100, 4))
    ident = pa.array([f"user-{i % 7}" * (1 + i % 5) for i in range(100)])
    assert insert_ids(anon, ident).to_pylist() == insert_ids(anon, ident).to_pylist()


@pytest.mark.parametrize(("anon", "ident", "expected"), GOLDEN)
def test_insert_id_golden_values(anon: str, ident: str, expected: str) -> None:
    """Pinned ids: a change to the hashing (which would break resend dedup) fails here."""
    assert insert_ids(pa.array([anon]), pa.array([ident])).to_pylist() == [expected]
    b = only_batch(Encoder(token=None, batch_size=1), pairs([anon], [ident]))
    assert decode(b)[0]["properties"]["$insert_id"] == expected


def test_insert_id_golden_values_hold_inside_one_batch() -> None:
    """The pinned pairs keep their pinned ids when encoded together in one batch."""
    anon = [a for a, _, _ in GOLDEN]
    ident = [u for _, u, _ in GOLDEN]
    assert insert_ids(pa.array(anon), pa.array(ident)).to_pylist() == [g for _, _, g in GOLDEN]


def test_insert_id_differs_when_either_id_differs() -> None:
    """Another identified id (or another anon id, even by case) gives another $insert_id."""
    anon = [A1, A1, A1, A1.upper(), A2]
    ident = ["user-1", "user-2", "user-1 ", "user-1", "user-1"]
    ids = insert_ids(pa.array(anon), pa.array(ident)).to_pylist()
    assert len(set(ids)) == len(ids)
    many = insert_ids(pa.array([A1] * 1000), pa.array([f"u{i}" for i in range(1000)]))
    assert len(set(many.to_pylist())) == 1000


def _varied() -> tuple[list[str], list[str]]:
    """Pairs whose identified ids differ a lot in length (short and long mixed)."""
    anon = uuid4s(60, 5)
    ident = [
        f"u{i}" if i % 4 else f"user-with-a-long-identified-id-{i}-" + "x" * ((60 - i) * 3)
        for i in range(60)
    ]
    return anon, ident


@pytest.mark.parametrize("composition", ["batch_size_7", "reversed", "one_per_batch"])
def test_insert_id_same_when_the_same_pairs_are_rebatched(composition: str) -> None:
    """Cutting the same pairs into other batches, or reordering them, keeps every pair's id."""
    anon, ident = _varied()
    reference = id_map(list(Encoder(token=None, batch_size=2000).batches(pairs(anon, ident))))
    if composition == "batch_size_7":
        other = list(Encoder(token=None, batch_size=7).batches(pairs(anon, ident)))
    elif composition == "reversed":
        other = list(Encoder(token=None, batch_size=2000).batches(pairs(anon[::-1], ident[::-1])))
    else:
        other = list(Encoder(token=None, batch_size=1).batches(pairs(anon, ident)))
    assert id_map(other) == reference


@pytest.mark.parametrize("composition", ["each_pair_alone", "second_half_alone", "split"])
def test_insert_id_independent_of_what_else_is_encoded(composition: str) -> None:
    """A pair's $insert_id is the same whatever else is encoded with it (resume, 413 split)."""
    anon, ident = _varied()
    enc = Encoder(token=None, batch_size=2000)
    reference = id_map(list(enc.batches(pairs(anon, ident))))
    if composition == "each_pair_alone":
        other = [only_batch(enc, pairs([a], [u])) for a, u in zip(anon, ident, strict=True)]
        mine = reference
    elif composition == "second_half_alone":
        # What a resumed run encodes: only the pairs not yet done.
        other = list(enc.batches(pairs(anon[30:], ident[30:])))
        mine = {
            k: v for k, v in reference.items() if k in set(zip(anon[30:], ident[30:], strict=True))
        }
    else:
        other = list(enc.split(only_batch(enc, pairs(anon, ident))))
        mine = reference
    assert id_map(other) == mine


def test_insert_id_is_independent_of_time_and_token() -> None:
    """Time and token do not enter $insert_id: it is a function of the pair."""
    a = only_batch(Encoder(token=None, batch_size=10), pairs([A1], ["u"], time_ms=T_MS))
    b = only_batch(Encoder(token="tok", batch_size=10), pairs([A1], ["u"], time_ms=T_MS + 5))
    assert a.insert_ids.to_pylist() == b.insert_ids.to_pylist()


# --- batches -----------------------------------------------------------------------------------


def test_batches_hold_at_most_batch_size_events_in_order() -> None:
    """4,500 pairs at batch_size 2000 -> 2000, 2000, 500, in order, rows matching events."""
    n = 4500
    anon = uuid4s(n, 6)
    ident = [f"user-{i}" for i in range(n)]
    rows = range(10, 10 + 3 * n, 3)
    batches = list(Encoder(token=None, batch_size=2000).batches(pairs(anon, ident, rows=rows)))
    assert [len(b) for b in batches] == [2000, 2000, 500]
    seen_rows: list[int] = []
    seen_anon: list[str] = []
    for b in batches:
        events = decode(b)
        assert len(events) == len(b)
        assert [e["properties"]["$anon_id"] for e in events] == b.pairs.anon.to_pylist()
        assert [e["properties"]["$insert_id"] for e in events] == b.insert_ids.to_pylist()
        seen_rows += b.pairs.rows.tolist()
        seen_anon += [e["properties"]["$anon_id"] for e in events]
    assert seen_rows == list(rows)
    assert seen_anon == anon


def test_batches_stay_under_2mb_of_json() -> None:
    """~250-byte ids (escapes doubling them) at batch_size 2000: cut by bytes, never over 2 MB."""
    n = 5000
    rng = random.Random(7)
    anon = uuid4s(n, 7)
    ident = []
    for i in range(n):
        head = f"{i:06d}-"
        body = "".join(rng.choice('"\\\x01a') for _ in range(250 - len(head)))
        ident.append(head + body)
    assert all(len(u.encode()) == 250 for u in ident)
    enc = Encoder(token="0123456789abcdef0123456789abcdef", batch_size=2000)
    batches = list(enc.batches(pairs(anon, ident)))
    assert MAX_BATCH_BYTES == 2_000_000
    assert sum(len(b) for b in batches) == n
    assert any(len(b) < 2000 for b in batches[:-1]), "the byte limit should cut these batches"
    for k, b in enumerate(batches):
        raw = body_json(b)
        assert len(raw) == b.json_bytes <= 2_000_000
        assert len(b) <= 2000
        events = json.loads(raw)
        assert [e["properties"]["$identified_id"] for e in events] == b.pairs.identified.to_pylist()
        if k + 1 < len(batches) and len(b) < 2000:
            # Cut by bytes, greedily: the next event would not have fitted.
            nxt = decode(batches[k + 1])[0]
            assert len(raw) + 1 + len(compact([nxt])) - 2 > 2_000_000


def test_byte_limit_boundary_is_inclusive() -> None:
    """A body of exactly max_bytes is one batch; one byte less splits it."""
    p = pairs(uuid4s(3, 8), ["a", "bb", "ccc"])
    whole = only_batch(Encoder(token=None, batch_size=2000), p)
    exact = list(Encoder(token=None, batch_size=2000, max_bytes=whole.json_bytes).batches(p))
    assert [len(b) for b in exact] == [3]
    under = list(Encoder(token=None, batch_size=2000, max_bytes=whole.json_bytes - 1).batches(p))
    assert [len(b) for b in under] == [2, 1]
    assert all(b.json_bytes <= whole.json_bytes - 1 for b in under)


def test_an_event_larger_than_max_bytes_travels_alone() -> None:
    """An event bigger than max_bytes gets a batch of its own (the server then decides)."""
    p = pairs(uuid4s(4, 9), ["a", "b", "c", "d"])
    batches = list(Encoder(token=None, batch_size=2000, max_bytes=50).batches(p))
    assert [len(b) for b in batches] == [1, 1, 1, 1]


def test_empty_pairs_give_no_batch() -> None:
    """No pairs, no batch."""
    assert list(Encoder(token=None, batch_size=10).batches(pairs([], []))) == []


@pytest.mark.parametrize("n", [2, 3, 101, 2000])
def test_split_halves_cover_the_batch_exactly(n: int) -> None:
    """split() gives two halves that, in order, are exactly the batch's pairs; spans tile it."""
    anon, ident = uuid4s(n, 10), [f"user-{i}-" + "y" * (i % 40) for i in range(n)]
    rows = list(range(5, 5 + 2 * n, 2))
    enc = Encoder(token="tok", batch_size=2000)
    batch = replace(only_batch(enc, pairs(anon, ident, rows=rows)), span=(1, rows[-1] + 7))
    first, second = enc.split(batch)
    assert (len(first), len(second)) == (n // 2, n - n // 2)
    assert first.pairs.rows.tolist() + second.pairs.rows.tolist() == rows
    assert first.pairs.anon.to_pylist() + second.pairs.anon.to_pylist() == anon
    assert first.pairs.identified.to_pylist() + second.pairs.identified.to_pylist() == ident
    assert first.span == (1, first.last_row)
    assert second.span == (first.last_row + 1, rows[-1] + 7)
    events = decode(first) + decode(second)
    assert [
        (e["properties"]["$anon_id"], e["properties"]["$identified_id"]) for e in events
    ] == list(zip(anon, ident, strict=True))
    assert all(
        e["properties"]["time"] == T_MS and e["properties"]["token"] == "tok" for e in events
    )
    for half in (first, second):
        assert len(body_json(half)) == half.json_bytes
        assert [e["properties"]["$insert_id"] for e in decode(half)] == half.insert_ids.to_pylist()


LEGACY = "13bbf7943e584-0885c2531-5c793977-3e8000-13bbf7943e64cf"  # mixpanel-js before v2.62
QUOTED = 'dev"ice\\7'


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
