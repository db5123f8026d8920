"""Both of Mixpanel's ID merge systems, end to end through ``python -m backfill`` against a
stand-in project on the same system: what is refused, what is sent, what merges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from runkit import (
    CliResult,
    backfill_cli,
    printed_command,
    rejects_by_row,
    run_printed,
    uuid4s,
    write_pairs,
)

from backfill.commands.rehearse import standin_thread
from backfill.mixpanel import IdMerge
from backfill.standin import Standin, StandinConfig

P1, P2, P3, D1, D2, S1 = uuid4s(6, 90)
LEGACY = "13bbf7943e584-0885c2531-5c793977-3e8000-13bbf7943e64cf"
IOS = uuid4s(1, 91)[0].upper()
#: A web export: plain UUIDs, $device:-prefixed UUIDs, a legacy mixpanel-js id, an upper-case
#: iOS UUID; a device that maps to two users once its prefix is read as Simplified reads it;
#: placeholders on either side.
ROWS = [
    (P1, "alice"),  # 1
    ("$device:" + D1, "bob"),  # 2
    (LEGACY, "carol"),  # 3
    (IOS, "dave"),  # 4
    (P2, "erin"),  # 5
    ("$device:" + S1, "frank"),  # 6: the same device as row 7 under Simplified
    (S1, "grace"),  # 7
    ("undefined", "heidi"),  # 8: a placeholder anon id
    (P3, "null"),  # 9: a placeholder identified id
    ("$device:" + D2, "ivan"),  # 10
]


def backfill(*args: str | Path, cwd: Path) -> CliResult:
    """``python -m backfill ARGS --no-progress`` in ``cwd``, with the stand-in's credentials."""
    return backfill_cli(*args, "--no-progress", cwd=cwd)


def rejects(out: Path) -> dict[int, tuple[str, ...]]:
    """rejects.csv as row -> (reason, detail); each row once."""
    return rejects_by_row(out, "reason", "detail")


def events(standin: Standin) -> list[dict[str, Any]]:
    """Every event the stand-in stored."""
    return list(standin.state.store.values())


@pytest.fixture
def simplified() -> Iterator[Standin]:
    """A stand-in project on Simplified ID Merge."""
    with standin_thread(StandinConfig(id_merge=IdMerge.SIMPLIFIED)) as standin:
        yield standin


@pytest.fixture
def original() -> Iterator[Standin]:
    """A stand-in project on Original ID Merge."""
    with standin_thread(StandinConfig()) as standin:
        yield standin


def test_simplified_sends_one_pairing_event_per_pair_and_binds_every_device(
    tmp_path: Path, simplified: Standin
) -> None:
    """--id-merge simplified: one pairing event per valid pair, the prefix stripped, each device
    bound to its user, no identity event; conflicts and placeholders refused; a rerun sends
    nothing."""
    source = write_pairs(tmp_path / "m.csv", ROWS)
    args = ("run", source, "--out", "o", "--api-url", simplified.url, "--id-merge", "simplified")
    result = backfill(*args, cwd=tmp_path)
    assert result.code == 0, result.stderr
    found = rejects(tmp_path / "o")
    assert {row: reason for row, (reason, _) in found.items()} == {
        6: "conflicting_anon_id",
        7: "conflicting_anon_id",
        8: "invalid_anon_id",
        9: "invalid_identified_id",
    }
    stored = events(simplified)
    assert {e["event"] for e in stored} == {"Identity Backfill"}
    devices = {(e["properties"]["$device_id"], e["properties"]["$user_id"]) for e in stored}
    assert devices == {
        (P1, "alice"),
        (D1, "bob"),
        (LEGACY, "carol"),
        (IOS, "dave"),
        (P2, "erin"),
        (D2, "ivan"),
    }
    assert all(e["properties"]["distinct_id"] == e["properties"]["$user_id"] for e in stored)
    assert simplified.state.merged_pairs() == devices
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["events_by_kind"] == {"Identity Backfill": 6}
    assert summary["events_imported"] == 6
    sent = simplified.state.requests_count
    again = backfill(*args, cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert simplified.state.requests_count == sent, "a finished run sends nothing more"


@pytest.mark.parametrize("mode", [("--id-merge", "simplified"), ("--non-uuid-anon", "merge")])
def test_an_anon_id_of_only_the_device_prefix_is_missing_and_never_sent(
    tmp_path: Path, simplified: Standin, original: Standin, mode: tuple[str, str]
) -> None:
    """`$device:` alone is missing_anon_id (Simplified and Original): no empty id is sent."""
    rows = [("$device:", "alice"), (P1, "bob"), ("$device:", "alice"), ("$device:" + D1, "dave")]
    source = write_pairs(tmp_path / "m.csv", rows)
    standin = simplified if mode[1] == "simplified" else original
    result = backfill("run", source, "--out", "o", "--api-url", standin.url, *mode, cwd=tmp_path)
    assert result.code == 0, result.stderr
    found = rejects(tmp_path / "o")
    assert found == {1: ("missing_anon_id", ANY), 3: ("missing_anon_id", ANY)}
    assert "no id after it" in found[1][1]
    sent = [e["properties"] for e in events(standin)]
    ids = [p.get("$device_id", p.get("$anon_id", p.get("$distinct_ids"))) for p in sent]
    assert len(sent) == 2, sent
    assert all(i and "" not in (i if isinstance(i, list) else [i]) for i in ids), ids
    assert {r.events for r in standin.state.requests} <= {1, 2}
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["rejected"]["missing_anon_id"] == 2
    assert summary["events_imported"] == 2


def test_original_sends_device_prefixed_uuids_as_written_and_refuses_legacy_ids(
    tmp_path: Path, original: Standin
) -> None:
    """Original: $device:<uuid4> is sent as written and merges; a legacy id is invalid_anon_id,
    its detail naming the format and --non-uuid-anon merge."""
    source = write_pairs(tmp_path / "m.csv", ROWS)
    result = backfill("run", source, "--out", "o", "--api-url", original.url, cwd=tmp_path)
    assert result.code == 0, result.stderr
    found = rejects(tmp_path / "o")
    assert found[3][0] == "invalid_anon_id"
    assert "not a UUID" in found[3][1]
    assert "--non-uuid-anon merge" in found[3][1]
    assert found[8][0] == "invalid_anon_id"
    assert "--non-uuid-anon" not in found[8][1], "a placeholder cannot be rescued"
    assert 6 not in found, "$device:X and X are two ids for Original"
    anon_ids = {e["properties"]["$anon_id"] for e in events(original)}
    assert {"$device:" + D1, "$device:" + D2, "$device:" + S1, IOS} <= anon_ids
    assert original.state.merged_pairs() >= {("$device:" + D1, "bob"), (IOS, "dave")}


def test_merge_mode_sends_legacy_ids_as_merges_of_exactly_two_ids(
    tmp_path: Path, original: Standin
) -> None:
    """--non-uuid-anon merge: a legacy id arrives as $merge of [user, anon]; conflicts and
    placeholders are still refused; the summary counts the kinds apart."""
    other = LEGACY[::-1]
    rows = [(P1, "alice"), (LEGACY, "carol"), (other, "oscar"), (other, "mallory"), ("nil", "x")]
    source = write_pairs(tmp_path / "m.csv", rows)
    args = ("run", source, "--out", "o", "--api-url", original.url, "--non-uuid-anon", "merge")
    result = backfill(*args, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert {row: reason for row, (reason, _) in rejects(tmp_path / "o").items()} == {
        3: "conflicting_anon_id",
        4: "conflicting_anon_id",
        5: "invalid_anon_id",
    }
    (merge,) = [e for e in events(original) if e["event"] == "$merge"]
    assert merge["properties"]["$distinct_ids"] == ["carol", LEGACY]
    assert merge["properties"]["distinct_id"] == "carol"
    assert (LEGACY, "carol") in original.state.merged_pairs()
    assert {e["event"] for e in events(original)} == {"$identify", "$merge"}
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["events_by_kind"] == {"$identify": 1, "$merge": 1}
    assert summary["events_imported"] == 2


def test_validate_reports_what_each_mode_would_send(tmp_path: Path) -> None:
    """The dry run counts the events by kind for the chosen mode, in the table and the JSON."""
    source = write_pairs(tmp_path / "m.csv", ROWS)
    for extra, kinds in (
        ((), {"$identify": 7}),  # $device:S1 and S1: two ids for Original
        (("--non-uuid-anon", "merge"), {"$identify": 7, "$merge": 1}),
        (("--id-merge", "simplified", "--pairing-event", "Linked"), {"Linked": 6}),
    ):
        result = backfill("validate", source, "--out", "v", "--json", *extra, cwd=tmp_path)
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["events_by_kind"] == kinds
        assert "events" in result.stderr


def test_a_changed_id_merge_system_is_refused_naming_restart(
    tmp_path: Path, original: Standin
) -> None:
    """A run folder that imported under Original refuses a Simplified rerun: exit 2 naming only
    --id-merge (old → new) and printing the command with --restart, which, run, starts over."""
    source = write_pairs(tmp_path / "m.csv", ROWS)
    first = backfill("run", source, "--out", "o", "--api-url", original.url, cwd=tmp_path)
    assert first.code == 0, first.stderr
    sent = original.state.requests_count
    again = backfill("run", source, "--out", "o", "--api-url", original.url,
                     "--id-merge", "simplified", cwd=tmp_path)  # fmt: skip
    assert again.code == 2
    assert "(--id-merge: original → simplified) that already settled 7 pairs" in again.stderr
    assert "--non-uuid-anon" not in again.stderr
    assert "--pairing-event" not in again.stderr
    assert original.state.requests_count == sent
    command = printed_command(again)
    assert command[-1] == "--restart"
    restarted = run_printed(command, tmp_path)
    assert restarted.code == 0, restarted.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["id_merge"] == "simplified"


@pytest.mark.parametrize("name", ["$identify", "$merge", "$create_alias", " "])
def test_a_pairing_event_named_like_an_identity_event_is_refused(tmp_path: Path, name: str) -> None:
    """--pairing-event cannot be one of Mixpanel's identity events (or empty): exit 2."""
    source = write_pairs(tmp_path / "m.csv", ROWS)
    result = backfill("validate", source, "--id-merge", "simplified", "--pairing-event", name,
                      cwd=tmp_path)  # fmt: skip
    assert result.code == 2
    assert "--pairing-event" in result.stderr


def test_the_printed_fix_for_a_refused_canary_completes_the_run(
    tmp_path: Path, simplified: Standin
) -> None:
    """An Original run against a Simplified project stops after one event, printing the same
    command with --id-merge simplified added; that command, run as printed, pairs every valid
    pair (exit 0), replacing the refused run's checkpoint without --restart."""
    source = write_pairs(tmp_path / "m.csv", ROWS)
    args = ["run", str(source), "--api-url", simplified.url, "--no-progress"]
    refused = backfill_cli(*args, cwd=tmp_path)
    assert refused.code == 3, refused.stderr
    assert [len(r.insert_ids) for r in simplified.state.requests] == [1], "the canary only"
    command = printed_command(refused)
    assert command[3:] == [*args, "--id-merge", "simplified"]
    fixed = run_printed(command, tmp_path)
    assert fixed.code == 0, fixed.stderr
    assert "settled nothing" in fixed.stderr
    assert "starting afresh" in fixed.stderr
    assert "--id-merge: original → simplified" in fixed.stderr
    assert simplified.state.merged_pairs() == {
        (P1, "alice"), (D1, "bob"), (LEGACY, "carol"), (IOS, "dave"), (P2, "erin"), (D2, "ivan")
    }  # fmt: skip
    summary = json.loads((tmp_path / "runs" / "m-csv" / "summary.json").read_text())
    assert (summary["status"], summary["events_imported"]) == ("completed", 6)
