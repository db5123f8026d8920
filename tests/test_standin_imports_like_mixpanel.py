"""The local /import stand-in, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest

from backfill.mixpanel import IdMerge
from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    FAULT_NAMES,
    FaultRates,
    Standin,
    StandinConfig,
    StandinState,
    request_line,
    running_standin,
)

T_MS = 1_700_000_000_000  # 2023-11-14, well inside Mixpanel's accepted range
SA_HEADER = {"Authorization": aiohttp.encode_basic_auth(*DEFAULT_SERVICE_ACCOUNT)}
PARAMS = {"strict": "1", "project_id": "1"}
UNSET: Any = object()


def identify(n: int, **props: Any) -> dict[str, Any]:
    """A valid ``$identify`` event for pair number ``n``, with ``props`` overriding."""
    identified = f"user-{n}"
    properties: dict[str, Any] = {
        "$anon_id": str(uuid.UUID(int=n + 1, version=4)),
        "$identified_id": identified,
        "distinct_id": identified,
        "time": T_MS,
        "$insert_id": f"ins-{n}",
    }
    properties.update(props)
    return {"event": "$identify", "properties": properties}


class Reply(NamedTuple):
    status: int
    body: Any
    headers: Any


async def post(
    session: aiohttp.ClientSession,
    standin: Standin,
    body: list[Any] | bytes,
    *,
    auth: tuple[str, str] | None = UNSET,
    params: dict[str, str] | None = None,
    gzipped: bool = False,
    content_type: str = "application/json",
    path: str = "/import",
) -> Reply:
    """POST ``body`` (events or raw bytes) the way the sender does, and decode the answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    credentials = DEFAULT_SERVICE_ACCOUNT if auth is UNSET else auth
    if credentials is not None:
        headers["Authorization"] = aiohttp.encode_basic_auth(*credentials)
    if gzipped:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    async with session.post(
        standin.url + path,
        data=io.BytesIO(data),  # aiohttp warns about large raw bytes bodies
        headers=headers,
        params=PARAMS if params is None else params,
    ) as response:
        return Reply(response.status, await response.json(content_type=None), response.headers)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def standin() -> AsyncIterator[Standin]:
    """A stand-in with the default config on a free port of 127.0.0.1."""
    async with running_standin() as s:
        yield s


class TestAccepted:
    async def test_valid_batch_is_imported_stored_and_logged(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A valid batch gets Mixpanel's 200 body, is stored by key and logged per request."""
        events = [identify(n) for n in range(3)]
        reply = await post(session, standin, events)
        assert reply.status == 200
        assert reply.body == {"code": 200, "num_records_imported": 3, "status": "OK"}
        state = standin.state
        assert state.events_imported == 3
        assert state.events_received == 3
        assert state.identify_pairs() == {
            (e["properties"]["$anon_id"], e["properties"]["$identified_id"]) for e in events
        }
        [record] = state.requests
        assert (record.status, record.events, record.fault) == (200, 3, "ok")
        assert record.insert_ids == ["ins-0", "ins-1", "ins-2"]
        assert record.bytes_compressed == record.bytes_uncompressed == len(json.dumps(events))
        assert record.auth == f"service-account {DEFAULT_SERVICE_ACCOUNT[0]}"
        assert record.finished_s is not None
        assert record.finished_s >= record.arrived_s

    async def test_gzip_body_is_inflated_and_both_sizes_logged(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A gzip body is accepted; the log shows its wire size and its inflated size."""
        events = [identify(n) for n in range(50)]
        reply = await post(session, standin, events, gzipped=True)
        assert reply.status == 200
        record = standin.state.requests[0]
        assert record.bytes_uncompressed == len(json.dumps(events).encode())
        assert record.bytes_compressed == len(gzip.compress(json.dumps(events).encode()))
        assert record.bytes_compressed < record.bytes_uncompressed

    async def test_ndjson_body_is_accepted(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """An application/x-ndjson body of one event per line is imported like an array."""
        body = "\n".join(json.dumps(identify(n)) for n in range(4)).encode() + b"\n"
        reply = await post(session, standin, body, content_type="application/x-ndjson")
        assert reply.body["num_records_imported"] == 4
        assert standin.state.events_imported == 4

    async def test_trailing_slash_and_seconds_time_are_accepted(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """``/import/`` works as ``/import``, and ``time`` in seconds is as good as in ms."""
        reply = await post(session, standin, [identify(1, time=T_MS // 1000)], path="/import/")
        assert reply.status == 200

    async def test_other_paths_and_methods_answer_json(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """Other paths give a JSON 404 and ``GET /import`` a JSON 405."""
        reply = await post(session, standin, [identify(1)], path="/track")
        assert (reply.status, reply.body["code"]) == (404, 404)
        async with session.get(standin.import_url) as response:
            assert response.status == 405
            assert (await response.json())["status"] == "Method Not Allowed"

    async def test_port_zero_picks_a_free_port_shown_in_url(self, standin: Standin) -> None:
        """Port 0 binds a real free port, and ``url`` shows that port."""
        assert standin.port > 0
        assert standin.url == f"http://127.0.0.1:{standin.port}"
        assert standin.import_url == standin.url + "/import"


class TestDedup:
    async def test_same_key_twice_is_stored_once_and_counted_as_duplicate(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """Resending a batch adds no events: duplicates are counted and the forms stay one."""
        events = [identify(n) for n in range(3)]
        await post(session, standin, events)
        reply = await post(session, standin, events)
        assert reply.body["num_records_imported"] == 3  # Mixpanel counts them, then dedups
        state = standin.state
        assert (state.events_imported, state.duplicates, state.events_received) == (3, 3, 6)
        assert state.conflicting_keys() == {}
        assert all(len(forms) == 1 for forms in state.forms.values())

    async def test_same_key_with_other_content_keeps_both_forms_latest_wins(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """Two different events under one key keep both forms; the store holds the latest."""
        first = identify(1)
        second = identify(1, **{"$anon_id": str(uuid.UUID(int=99, version=4))})
        await post(session, standin, [first])
        await post(session, standin, [second])
        state = standin.state
        assert state.events_imported == 1
        assert state.duplicates == 1
        [(key, forms)] = state.conflicting_keys().items()
        assert key.insert_id == "ins-1"
        assert len(forms) == 2
        assert state.store[key] == second

    async def test_key_order_does_not_make_a_new_form(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """The same event with its properties in another order is the same form."""
        event = identify(1)
        reordered = {
            "properties": dict(reversed(list(event["properties"].items()))),
            "event": "$identify",
        }
        await post(session, standin, [event, reordered])
        assert standin.state.duplicates == 1
        assert standin.state.conflicting_keys() == {}


BAD_RECORDS: list[tuple[str, dict[str, Any], str]] = [
    ("time before 1971", identify(9, time=31_535_999), "properties.time"),
    (
        "time in the future",
        identify(9, time=int(time.time() * 1000) + 86_400_000),
        "properties.time",
    ),
    ("time as a string", identify(9, time=str(T_MS)), "properties.time"),
    ("time as a float", identify(9, time=T_MS + 0.5), "properties.time"),
    ("time missing", identify(9, time=None), "properties.time"),
    (
        "distinct_id placeholder",
        identify(9, distinct_id=" NULL ", **{"$identified_id": " NULL "}),
        "properties.distinct_id",
    ),
    ("distinct_id empty", identify(9, distinct_id="  "), "properties.distinct_id"),
    ("distinct_id not a string", identify(9, distinct_id=42), "properties.distinct_id"),
    (
        "distinct_id over 255 bytes",
        identify(9, distinct_id="é" * 128, **{"$identified_id": "é" * 128}),
        "properties.distinct_id",
    ),
    ("insert_id too long", identify(9, **{"$insert_id": "a" * 37}), "properties.$insert_id"),
    ("insert_id bad chars", identify(9, **{"$insert_id": "ins_9"}), "properties.$insert_id"),
    ("insert_id missing", identify(9, **{"$insert_id": None}), "properties.$insert_id"),
    # A $anon_id that is not a UUID v4 is accepted and not merged (test_standin_identity.py);
    # an $identify without a usable $anon_id is malformed and refused.
    ("anon_id missing", identify(9, **{"$anon_id": None}), "properties.$anon_id"),
    ("anon_id not a string", identify(9, **{"$anon_id": 42}), "properties.$anon_id"),
    ("anon_id empty", identify(9, **{"$anon_id": ""}), "properties.$anon_id"),
    (
        "identified_id differs from distinct_id",
        identify(9, **{"$identified_id": "someone-else"}),
        "properties.$identified_id",
    ),
    ("event name missing", {"properties": identify(9)["properties"]}, "event"),
    ("properties not an object", {"event": "$identify", "properties": []}, "properties"),
]


class TestValidation:
    @pytest.mark.parametrize(
        ("bad", "field"),
        [pytest.param(bad, field, id=name) for name, bad, field in BAD_RECORDS],
    )
    async def test_invalid_record_fails_alone_and_the_rest_is_imported(
        self, session: aiohttp.ClientSession, standin: Standin, bad: dict[str, Any], field: str
    ) -> None:
        """A record Mixpanel would refuse is listed in failed_records; the others import."""
        bad = json.loads(json.dumps(bad))
        props = bad.get("properties")
        if isinstance(props, dict):  # None in the table means "leave the property out"
            bad["properties"] = {k: v for k, v in props.items() if v is not None}
        events = [identify(0), bad, identify(2)]
        reply = await post(session, standin, events)
        assert reply.status == 400
        assert reply.body["code"] == 400
        assert reply.body["status"] == "Bad Request"
        assert reply.body["error"] == "some data points in the request failed validation"
        assert reply.body["num_records_imported"] == 2
        [failure] = reply.body["failed_records"]
        assert failure["index"] == 1
        assert failure["field"] == field
        assert failure["message"]
        expected_id = bad.get("properties", {})
        expected_id = expected_id.get("$insert_id", "") if isinstance(expected_id, dict) else ""
        assert failure["$insert_id"] == expected_id
        state = standin.state
        assert {key.insert_id for key in state.store} == {"ins-0", "ins-2"}
        assert (state.events_received, state.events_rejected) == (3, 1)

    async def test_refuse_set_rejects_that_distinct_id_with_a_clear_message(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A distinct_id in ``refuse_distinct_ids`` is refused per record, the rest imported."""
        config = StandinConfig(refuse_distinct_ids=frozenset({"user-1"}))
        async with running_standin(config) as standin:
            reply = await post(session, standin, [identify(n) for n in range(3)])
        assert reply.status == 400
        assert reply.body["failed_records"] == [
            {
                "index": 1,
                "$insert_id": "ins-1",
                "field": "properties.distinct_id",
                "message": "distinct_id refused by stand-in configuration",
            }
        ]
        assert reply.body["num_records_imported"] == 2
        assert standin.state.identify_pairs() == {
            (identify(n)["properties"]["$anon_id"], f"user-{n}") for n in (0, 2)
        }

    async def test_refuse_set_can_change_while_running(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """``state.refuse_distinct_ids`` is a live knob: a refusal can start mid-run."""
        assert (await post(session, standin, [identify(1)])).status == 200
        standin.state.refuse_distinct_ids.add("user-2")
        assert (await post(session, standin, [identify(2)])).status == 400

    async def test_insert_id_key_variant(self, session: aiohttp.ClientSession) -> None:
        """With ``failed_records_key="insert_id"`` the failures use Mixpanel's other key."""
        config = StandinConfig(failed_records_key="insert_id")
        async with running_standin(config) as standin:
            reply = await post(session, standin, [identify(1, time=5)])
        [failure] = reply.body["failed_records"]
        assert failure["insert_id"] == "ins-1"
        assert "$insert_id" not in failure

    async def test_uppercase_uuid_and_non_identify_events_pass(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """An upper-case UUID v4 is valid, and other events need no $anon_id."""
        upper = identify(1, **{"$anon_id": str(uuid.UUID(int=7, version=4)).upper()})
        other = {
            "event": "Signed Up",
            "properties": {"time": T_MS, "distinct_id": "u", "$insert_id": "x"},
        }
        reply = await post(session, standin, [upper, other])
        assert reply.status == 200
        assert reply.body["num_records_imported"] == 2

    async def test_non_object_record_is_a_failed_record(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A record that is not a JSON object fails alone with an empty insert id."""
        reply = await post(session, standin, [identify(0), "oops"])
        assert reply.status == 400
        assert reply.body["failed_records"][0]["index"] == 1
        assert reply.body["failed_records"][0]["$insert_id"] == ""
        assert reply.body["num_records_imported"] == 1


class TestMixpanelShapes:
    async def test_refusals_can_name_their_record_by_index_alone(
        self, session: aiohttp.ClientSession
    ) -> None:
        """With ``failed_records_key=None`` a refusal has index, field and message only."""
        async with running_standin(StandinConfig(failed_records_key=None)) as standin:
            reply = await post(session, standin, [identify(1), identify(2, time=5)])
        assert reply.status == 400
        assert reply.body["num_records_imported"] == 1
        [failure] = reply.body["failed_records"]
        assert set(failure) == {"index", "field", "message"}
        assert failure["index"] == 1

    @pytest.mark.parametrize("verb", ["$identify", "$create_alias", "$merge"])
    async def test_simplified_project_refuses_a_request_with_any_identity_event(
        self, session: aiohttp.ClientSession, verb: str
    ) -> None:
        """Simplified ID Merge: one identity event refuses the whole request with one string."""
        event = identify(1)
        event["event"] = verb
        pairing = {
            "event": "Identity Backfill",
            "properties": {"time": T_MS, "distinct_id": "u", "$insert_id": "p1"},
        }
        async with running_standin(StandinConfig(id_merge=IdMerge.SIMPLIFIED)) as standin:
            reply = await post(session, standin, [pairing, event])
            ok = await post(session, standin, [pairing])
            stored = standin.state.events_imported
        assert reply.status == 400
        assert reply.body["failed_records"] == [
            "identity events are not allowed when project is using simplified identity management"
        ]
        assert reply.body["num_records_imported"] == 0
        assert ok.status == 200
        assert stored == 1, "only the request without identity events imported"

    @pytest.mark.parametrize("code", ["302", "307"])
    async def test_redirect_faults_name_their_location(
        self, session: aiohttp.ClientSession, code: str
    ) -> None:
        """The 302/307 faults answer with ``redirect_to`` as Location and store nothing."""
        config = StandinConfig(redirect_to="http://127.0.0.1:9/elsewhere")
        async with running_standin(config) as standin:
            standin.state.script([code])
            async with session.post(
                standin.import_url,
                params=PARAMS,
                json=[identify(1)],
                headers=SA_HEADER,
                allow_redirects=False,
            ) as response:
                status, location = response.status, response.headers.get("Location")
            assert not standin.state.store
        assert (status, location) == (int(code), "http://127.0.0.1:9/elsewhere")

    async def test_whole_400_html_200_and_408_faults(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """``400_whole`` names no record, ``200_not_json`` is a page, ``408`` a timeout."""
        standin.state.script(["400_whole", "200_not_json", "408"])
        whole = await post(session, standin, [identify(1)])
        async with session.post(
            standin.import_url, params=PARAMS, json=[identify(1)], headers=SA_HEADER
        ) as response:
            page = (response.status, response.content_type, await response.text())
        timeout = await post(session, standin, [identify(1)])
        assert whole.status == 400
        assert "failed_records" not in whole.body
        assert whole.body["num_records_imported"] == 0
        assert page[:2] == (200, "text/html")
        assert "<html>" in page[2]
        assert timeout.status == 408
        assert not standin.state.store

    async def test_always_answers_every_request_with_one_fault_until_cleared(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """``state.always`` gives every request the same fault; None lets them through again."""
        standin.state.always = "400_whole"
        statuses = [(await post(session, standin, [identify(n)])).status for n in range(3)]
        standin.state.always = None
        statuses.append((await post(session, standin, [identify(9)])).status)
        assert statuses == [400, 400, 400, 200]
        assert standin.state.events_imported == 1

    async def test_request_log_keeps_the_query_string(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """Each logged request keeps its query (so tests can check ``ip=0``)."""
        await post(session, standin, [identify(1)], params={**PARAMS, "ip": "0"})
        assert standin.state.requests[0].query == {**PARAMS, "ip": "0"}


class TestWholeRequestErrors:
    @pytest.mark.parametrize(
        ("body", "content_type", "gzipped", "fragment"),
        [
            pytest.param(b"[{", "application/json", False, "invalid JSON", id="invalid-json"),
            pytest.param(b"[NaN]", "application/json", False, "invalid JSON", id="nan"),
            pytest.param(b"{}", "application/json", False, "JSON array", id="not-an-array"),
            pytest.param(b"[]", "application/json", False, "no events", id="empty-array"),
            pytest.param(b"\n\n", "application/x-ndjson", False, "no events", id="empty-ndjson"),
            pytest.param(b"{}\n{", "application/x-ndjson", False, "line 2", id="bad-ndjson"),
            pytest.param(b"[1]", "text/plain", False, "Content-Type", id="content-type"),
            pytest.param(b"\xff[]", "application/json", False, "UTF-8", id="not-utf8"),
        ],
    )
    async def test_unusable_body_is_400_without_failed_records(
        self,
        session: aiohttp.ClientSession,
        standin: Standin,
        body: bytes,
        content_type: str,
        gzipped: bool,
        fragment: str,
    ) -> None:
        """A body that is not a non-empty list of events gets a plain 400 and imports nothing."""
        reply = await post(session, standin, body, content_type=content_type, gzipped=gzipped)
        assert reply.status == 400
        assert fragment in reply.body["error"]
        assert set(reply.body) == {"code", "error", "num_records_imported", "status"}
        assert reply.body["num_records_imported"] == 0
        assert standin.state.events_imported == 0

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"[not gzip at all]", id="no-magic"),
            pytest.param(gzip.compress(b"[]" * 100)[:-10], id="truncated"),
            pytest.param(b"\x1f\x8b\x08\x00garbage-garbage", id="corrupt"),
        ],
    )
    async def test_bad_gzip_is_400(
        self, session: aiohttp.ClientSession, standin: Standin, data: bytes
    ) -> None:
        """A body sent as gzip that does not inflate gets a 400 naming gzip."""
        async with session.post(
            standin.import_url,
            data=data,
            params=PARAMS,
            headers={**SA_HEADER, "Content-Type": "application/json", "Content-Encoding": "gzip"},
        ) as response:
            assert response.status == 400
            assert "gzip" in (await response.json())["error"]

    @pytest.mark.parametrize(
        "params",
        [{"project_id": "1"}, {"project_id": "1", "strict": "0"}],
        ids=["missing", "zero"],
    )
    async def test_strict_other_than_1_is_refused(
        self, session: aiohttp.ClientSession, standin: Standin, params: dict[str, str]
    ) -> None:
        """Without ``strict=1`` the request is a 400 that says strict=1 is required."""
        reply = await post(session, standin, [identify(1)], params=params)
        assert reply.status == 400
        assert "strict=1" in reply.body["error"]
        assert standin.state.events_imported == 0

    async def test_more_events_than_max_events_is_413(self, session: aiohttp.ClientSession) -> None:
        """A request with more than ``max_events`` events is a 413 naming the event limit."""
        async with running_standin(StandinConfig(max_events=3)) as standin:
            ok = await post(session, standin, [identify(n) for n in range(3)])
            reply = await post(session, standin, [identify(n) for n in range(4)])
        assert ok.status == 200
        assert reply.status == 413
        assert reply.body == {
            "code": 413,
            "error": "request exceeds max limit of 3 events",
            "status": "Request Entity Too Large",
        }
        assert standin.state.events_imported == 3

    async def test_body_over_default_2_mib_gets_mixpanels_413(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """An uncompressed body over 2 MiB gets exactly Mixpanel's 413 body."""
        body = b"[" + b" " * (2 * 1024 * 1024) + b"]"
        reply = await post(session, standin, body)
        assert reply.status == 413
        assert reply.body == {
            "code": 413,
            "error": "request exceeds max limit of 2097152 bytes",
            "status": "Request Entity Too Large",
        }

    async def test_size_limit_applies_to_the_inflated_body(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A small gzip body that inflates past ``max_bytes`` is a 413, one that fits is not."""
        events = [identify(n) for n in range(40)]
        size = len(json.dumps(events).encode())
        async with running_standin(StandinConfig(max_bytes=size - 1)) as standin:
            over = await post(session, standin, events, gzipped=True)
        async with running_standin(StandinConfig(max_bytes=size)) as standin:
            fits = await post(session, standin, events, gzipped=True)
        assert over.status == 413
        assert over.body["error"] == f"request exceeds max limit of {size - 1} bytes"
        assert fits.status == 200


class TestAuth:
    @pytest.mark.parametrize(
        "auth",
        [
            pytest.param((DEFAULT_SERVICE_ACCOUNT[0], "wrong"), id="secret"),
            pytest.param(("stranger", DEFAULT_SERVICE_ACCOUNT[1]), id="user"),
            pytest.param(None, id="none"),
        ],
    )
    async def test_bad_credentials_get_mixpanels_401(
        self, session: aiohttp.ClientSession, standin: Standin, auth: tuple[str, str] | None
    ) -> None:
        """Wrong, unknown or absent credentials get exactly Mixpanel's 401 body."""
        reply = await post(session, standin, [identify(1)], auth=auth)
        assert reply.status == 401
        assert reply.body == {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
        assert standin.state.events_imported == 0

    @pytest.mark.parametrize(
        ("params", "fragment"),
        [({"strict": "1"}, "required"), ({"strict": "1", "project_id": "2"}, "'2'")],
        ids=["missing", "wrong"],
    )
    async def test_service_account_needs_the_right_project_id(
        self,
        session: aiohttp.ClientSession,
        standin: Standin,
        params: dict[str, str],
        fragment: str,
    ) -> None:
        """A service account without the configured project_id gets a 401 saying so."""
        reply = await post(session, standin, [identify(1)], params=params)
        assert reply.status == 401
        assert "project_id" in reply.body["error"]
        assert fragment in reply.body["error"]

    async def test_legacy_api_secret_works_without_project_id(
        self, session: aiohttp.ClientSession
    ) -> None:
        """The legacy secret as username with an empty password needs no project_id."""
        config = StandinConfig(api_secrets=frozenset({"legacy-secret"}))
        async with running_standin(config) as standin:
            ok = await post(
                session,
                standin,
                [identify(1)],
                auth=("legacy-secret", ""),
                params={"strict": "1"},
            )
            with_password = await post(session, standin, [identify(2)], auth=("legacy-secret", "x"))
        assert ok.status == 200
        assert standin.state.requests[0].auth == "api-secret"
        assert with_password.status == 401

    async def test_401_comes_before_faults_and_uses_none_up(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A request with bad credentials is a 401 even with a fault scripted, which stays."""
        standin.state.script(["503"])
        reply = await post(session, standin, [identify(1)], auth=("x", "y"))
        assert reply.status == 401
        assert standin.state.pending_script == ("503",)
        assert (await post(session, standin, [identify(1)])).status == 503

    async def test_forbidden_mode_gives_403_and_can_be_switched_off(
        self, session: aiohttp.ClientSession
    ) -> None:
        """In forbidden mode valid credentials get a 403; clearing the knob lets them in."""
        async with running_standin(StandinConfig(forbidden=True)) as standin:
            denied = await post(session, standin, [identify(1)])
            standin.state.forbidden = False
            allowed = await post(session, standin, [identify(1)])
        assert (denied.status, denied.body["status"]) == (403, "Forbidden")
        assert allowed.status == 200
        assert standin.state.events_imported == 1

    async def test_secrets_are_neither_shown_nor_logged(
        self, session: aiohttp.ClientSession
    ) -> None:
        """The config's repr masks secrets and the request log holds no secret sent to it."""
        config = StandinConfig(
            service_accounts={"sa": "sa-secret-123"}, api_secrets=frozenset({"legacy-456"})
        )
        async with running_standin(config) as standin:
            await post(session, standin, [identify(1)], auth=("sa", "sa-secret-123"))
            await post(session, standin, [identify(2)], auth=("legacy-456", ""))
            await post(session, standin, [identify(3)], auth=("sa", "guess-789"))
        shown = repr(config) + repr(standin.state.requests) + repr(standin.state.summary())
        for secret in ("sa-secret-123", "legacy-456", "guess-789"):
            assert secret not in shown
        assert [r.status for r in standin.state.requests] == [200, 200, 401]


class TestFaults:
    async def test_scripted_503_and_429_answer_without_importing(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """Scripted 503 and 429 are answered in order with Mixpanel's bodies, storing nothing.

        The 429 is the body live probes of Mixpanel saw: no ``code``, ``status`` 0.
        """
        standin.state.script(["503", "429"])
        first = await post(session, standin, [identify(1)])
        second = await post(session, standin, [identify(1)])
        third = await post(session, standin, [identify(1)])
        assert (first.status, second.status, third.status) == (503, 429, 200)
        assert second.body == {
            "error": (
                "Project exceeded rate limits. Please retry the request with exponential backoff."
            ),
            "status": 0,
        }
        assert first.body["status"] == "Service Unavailable"
        assert "Retry-After" not in first.headers
        assert [r.fault for r in standin.state.requests] == ["503", "429", "ok"]
        assert standin.state.events_imported == 1
        assert standin.state.requests[0].insert_ids == ["ins-1"]

    async def test_drop_closes_the_connection_without_an_answer(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A scripted drop shows up as a server disconnect and imports nothing."""
        standin.state.script(["drop"])
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, standin, [identify(1)])
        assert standin.state.events_imported == 0
        assert standin.state.requests[0].status is None
        assert (await post(session, standin, [identify(1)])).status == 200

    async def test_slow_answers_normally_after_slow_s(self, session: aiohttp.ClientSession) -> None:
        """A scripted slow request is answered normally, no sooner than ``slow_s``."""
        async with running_standin(StandinConfig(faults=FaultRates(slow_s=0.2))) as standin:
            standin.state.script(["slow"])
            started = time.monotonic()
            reply = await post(session, standin, [identify(1)])
            elapsed = time.monotonic() - started
        assert reply.status == 200
        assert elapsed >= 0.2
        assert standin.state.requests[0].fault == "slow"

    async def test_500_after_import_stores_the_events(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A 500_after_import answers 500 although the events were stored."""
        standin.state.script(["500_after_import"])
        reply = await post(session, standin, [identify(1), identify(2)])
        assert reply.status == 500
        assert standin.state.events_imported == 2
        await post(session, standin, [identify(1), identify(2)])
        assert standin.state.duplicates == 2

    async def test_drop_after_import_stores_the_events(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """A drop_after_import disconnects although the events were stored."""
        standin.state.script(["drop_after_import"])
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, standin, [identify(1)])
        assert standin.state.events_imported == 1

    async def test_retry_after_header_on_429_and_503(self, session: aiohttp.ClientSession) -> None:
        """``retry_after_s`` adds Retry-After: whole seconds as an integer, else a decimal."""
        for value, header in ((2.0, "2"), (0.25, "0.25")):
            faults = FaultRates(retry_after_s=value)
            async with running_standin(StandinConfig(faults=faults)) as standin:
                standin.state.script(["429", "503"])
                replies = [await post(session, standin, [identify(1)]) for _ in range(2)]
            assert [r.headers.get("Retry-After") for r in replies] == [header, header]

    async def test_random_faults_follow_the_seed(self, session: aiohttp.ClientSession) -> None:
        """With a seed, the n-th request gets the fault the seeded draw gives, run after run."""
        rates = FaultRates(p_503=0.3, p_429=0.2, p_drop=0.1, p_500_after_import=0.1, seed=7)
        rng = random.Random(7)
        expected = [rates.draw(rng) for _ in range(25)]
        assert len(set(expected)) >= 4  # the seed exercises several faults

        async def one_run() -> list[Any]:
            async with running_standin(StandinConfig(faults=rates)) as standin:
                for n in range(25):
                    with contextlib.suppress(aiohttp.ServerDisconnectedError):
                        await post(session, standin, [identify(n)])
                return [(r.fault, r.status) for r in standin.state.requests]

        first, second = await one_run(), await one_run()
        assert first == second
        assert [fault for fault, _ in first] == expected
        status_of = {"ok": 200, "503": 503, "429": 429, "drop": None, "500_after_import": 500}
        assert [status for _, status in first] == [status_of[f] for f in expected]

    async def test_faults_can_be_switched_off_to_recover(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Assigning ``state.faults`` at run time changes what the next requests get."""
        async with running_standin(StandinConfig(faults=FaultRates(p_503=1.0))) as standin:
            failing = await post(session, standin, [identify(1)])
            standin.state.faults = FaultRates()
            recovered = await post(session, standin, [identify(1)])
        assert (failing.status, recovered.status) == (503, 200)

    async def test_scripted_ok_suppresses_a_random_fault(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A scripted ``ok`` takes its request's turn, so a random fault cannot hit it."""
        async with running_standin(StandinConfig(faults=FaultRates(p_429=1.0))) as standin:
            standin.state.script(["ok"])
            first = await post(session, standin, [identify(1)])
            second = await post(session, standin, [identify(1)])
        assert (first.status, second.status) == (200, 429)

    def test_bad_fault_settings_are_refused(self) -> None:
        """Unknown scripted faults and probabilities summing over 1 raise ValueError."""
        with pytest.raises(ValueError, match="unknown fault"):
            StandinState().script(["504"])
        with pytest.raises(ValueError, match="sum to at most 1"):
            FaultRates(p_503=0.6, p_429=0.6)
        assert "500_after_import" in FAULT_NAMES


class TestRateLimit:
    async def test_over_budget_gets_429_then_recovers(self, session: aiohttp.ClientSession) -> None:
        """Past the events-per-second budget a request gets 429, and passes once time refills."""
        clock = FakeClock()
        config = StandinConfig(rate_limit_events_per_s=10)
        state = StandinState(config, clock=clock)
        async with running_standin(config, state=state) as standin:
            full = await post(session, standin, [identify(n) for n in range(10)])
            limited = await post(session, standin, [identify(10)])
            clock.now += 0.5
            half = await post(session, standin, [identify(n) for n in range(11, 16)])
            still = await post(session, standin, [identify(16)])
            clock.now += 1.0
            recovered = await post(session, standin, [identify(17)])
        assert [r.status for r in (full, limited, half, still, recovered)] == [
            200,
            429,
            200,
            429,
            200,
        ]
        assert limited.body["status"] == 0
        assert [r.rate_limited for r in state.requests] == [False, True, False, True, False]
        assert state.events_imported == 10 + 5 + 1

    async def test_request_larger_than_the_burst_borrows_and_must_repay(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A request bigger than one second's budget passes when full, then the debt holds."""
        clock = FakeClock()
        config = StandinConfig(rate_limit_events_per_s=10)
        state = StandinState(config, clock=clock)
        async with running_standin(config, state=state) as standin:
            big = await post(session, standin, [identify(n) for n in range(30)])
            clock.now += 2.0
            owed = await post(session, standin, [identify(30)])
            clock.now += 1.1
            repaid = await post(session, standin, [identify(31)])
        assert (big.status, owed.status, repaid.status) == (200, 429, 200)

    async def test_rate_limit_can_be_lifted_at_run_time(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Setting ``rate_limit_events_per_s`` to None lifts the limit at once."""
        clock = FakeClock()
        config = StandinConfig(rate_limit_events_per_s=1)
        state = StandinState(config, clock=clock)
        async with running_standin(config, state=state) as standin:
            await post(session, standin, [identify(1)])
            limited = await post(session, standin, [identify(2)])
            state.rate_limit_events_per_s = None
            lifted = await post(session, standin, [identify(2)])
        assert (limited.status, lifted.status) == (429, 200)


class TestStoreFile:
    async def test_accepted_events_are_appended_as_ndjson(
        self, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Each unique accepted event is one NDJSON line; a duplicate or a refusal adds none."""
        store = tmp_path / "imported.ndjson"
        async with running_standin(StandinConfig(store_path=store)) as standin:
            await post(session, standin, [identify(0), identify(1, time=5)])
            assert [json.loads(line) for line in store.read_text().splitlines()] == [identify(0)]
            await post(session, standin, [identify(0), identify(2)])
        lines = [json.loads(line) for line in store.read_text().splitlines()]
        assert lines == [identify(0), identify(2)]


class TestSummary:
    async def test_summary_counts_requests_statuses_and_events(
        self, session: aiohttp.ClientSession, standin: Standin
    ) -> None:
        """``summary()`` adds up requests by status, faults, events and duplicates."""
        standin.state.script(["503"])
        for events in ([identify(1)], [identify(1), identify(2)], [identify(3, time=1)]):
            await post(session, standin, events)
        summary = standin.state.summary()
        assert summary["requests"] == 3
        assert summary["by_status"] == {"200": 1, "400": 1, "503": 1}
        assert summary["faults"] == {"503": 1}
        assert (summary["events_received"], summary["events_imported"]) == (3, 2)
        assert (summary["events_rejected"], summary["duplicates"]) == (1, 0)
        arrivals = [r.arrived_s for r in standin.state.requests]
        assert arrivals == sorted(arrivals)


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
async def test_serve_prints_url_and_credentials_and_stops_on_ctrl_c(
    session: aiohttp.ClientSession,
) -> None:
    """``serve`` prints one line with the URL and credentials, serves, and exits 0 on Ctrl-C."""
    code = "from backfill.standin import serve, StandinConfig\nserve(StandinConfig(), port=0)\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert "MIXPANEL_SERVICE_ACCOUNT_USERNAME=backfill-rehearsal" in line
        assert f"MIXPANEL_SERVICE_ACCOUNT_SECRET={DEFAULT_SERVICE_ACCOUNT[1]}" in line
        url = line.split("listening on ")[1].split()[0]
        async with session.post(
            url, json=[identify(1)], params=PARAMS, headers=SA_HEADER
        ) as response:
            assert response.status == 200
        child.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(child.communicate, timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "  events imported   1 unique" in out
    assert "Traceback" not in err


class TestRequestLog:
    async def test_each_request_is_one_line_with_status_counts_fault_and_credential_kind(
        self, session: aiohttp.ClientSession
    ) -> None:
        """``on_request`` sees each request once answered or dropped; its line says what came,
        how it was answered, the fault if any and the credential kind, never a secret."""
        at = datetime(2026, 11, 29, 14, 3, 7, 412000)
        lines: list[str] = []
        config = StandinConfig(api_secrets=frozenset({"legacy-secret-456"}))
        async with running_standin(
            config, on_request=lambda r: lines.append(request_line(r, at))
        ) as standin:
            standin.state.script(["503", "drop"])
            await post(session, standin, [identify(1)])
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await post(session, standin, [identify(1)])
            await post(session, standin, [identify(1), identify(2, time=5)])
            await post(session, standin, [identify(3)], auth=("legacy-secret-456", ""))
            await post(session, standin, [identify(4)], auth=(DEFAULT_SERVICE_ACCOUNT[0], "guess"))
        account = f'auth="service-account {DEFAULT_SERVICE_ACCOUNT[0]}"'
        prefix = "2026-11-29T14:03:07.412 POST /import"
        expected = [
            f"{prefix} status=503 events=1 imported=0 refused=0 fault=503 {account}",
            f"{prefix} status=dropped events=1 imported=0 refused=0 fault=drop {account}",
            f"{prefix} status=400 events=2 imported=1 refused=1 {account}",
            f'{prefix} status=200 events=1 imported=1 refused=0 auth="api-secret"',
            f"{prefix} status=401 events=1 imported=0 refused=0 {account}",
        ]
        assert [line.rsplit(" ms=", 1)[0] for line in lines] == expected
        assert all(re.search(r" ms=\d+$", line) for line in lines)
        for secret in ("legacy-secret-456", "guess", DEFAULT_SERVICE_ACCOUNT[1]):
            assert secret not in "\n".join(lines)

    async def test_a_rate_limited_request_says_so(self, session: aiohttp.ClientSession) -> None:
        """A 429 from the rate limit (not an injected fault) is marked ``rate_limited=true``."""
        lines: list[str] = []
        config = StandinConfig(rate_limit_events_per_s=1)
        state = StandinState(config, clock=FakeClock())
        async with running_standin(
            config, state=state, on_request=lambda r: lines.append(request_line(r, datetime.now()))
        ) as standin:
            await post(session, standin, [identify(1)])
            await post(session, standin, [identify(2)])
        assert "rate_limited" not in lines[0]
        assert " status=429 " in lines[1]
        assert " rate_limited=true " in lines[1]


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
async def test_backfill_serve_logs_one_line_per_request_and_what_merged(
    session: aiohttp.ClientSession,
) -> None:
    """``backfill serve`` prints the banner, one line per request (no secret), and at Ctrl-C
    the summary with what merged and what did not."""
    child = subprocess.Popen(
        [sys.executable, "-m", "backfill", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MIXPANEL_")},
            "PYTHONUNBUFFERED": "1",
        },
    )
    try:
        assert child.stdout is not None
        banner_line = await asyncio.to_thread(child.stdout.readline)
        url = banner_line.split("listening on ")[1].split()[0]
        not_uuid = identify(2, **{"$anon_id": "not-a-uuid"})
        for events, auth in (
            ([identify(1), not_uuid], SA_HEADER),
            ([identify(3)], {"Authorization": aiohttp.encode_basic_auth("x", "guess-789")}),
        ):
            async with session.post(url, json=events, params=PARAMS, headers=auth) as response:
                await response.read()
        child.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(child.communicate, timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    lines = out.splitlines()
    at = lines.index("backfill stand-in stopped:")
    requests, stopped = lines[:at], lines[at + 1 :]  # the banner was read above
    assert len(requests) == 2, out
    assert " status=200 events=2 imported=2 refused=0 " in requests[0]
    assert f'auth="service-account {DEFAULT_SERVICE_ACCOUNT[0]}"' in requests[0]
    assert ' status=401 events=1 imported=0 refused=0 auth="unknown"' in requests[1]
    assert DEFAULT_SERVICE_ACCOUNT[1] not in out
    assert "guess-789" not in out
    assert "  requests          2 (200 1, 401 1)" in stopped
    assert "  merged            1 (original ID merge)" in stopped
    assert "  not merged        1 (not uuid4)" in stopped
    assert not any(line.lstrip().startswith("{") for line in stopped)
