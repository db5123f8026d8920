"""The local /import stand-in answers like Mixpanel, over real HTTP on 127.0.0.1: what it
imports, deduplicates, refuses record by record or as a whole request, and whom it lets in."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import aiohttp
import pytest
from standinkit import PARAMS, SA_HEADER, T_MS, identify, post

from backfill.mixpanel import IdMerge
from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    Standin,
    StandinConfig,
    running_standin,
)


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
    # A $anon_id that is not a UUID v4 is accepted and not merged
    # (test_standin_merges_like_mixpanel.py); an $identify without a usable $anon_id is
    # malformed and refused.
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
