"""The per-row rules of each ID merge system, and ids no export should ever hold."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from runkit import backfill_cli, uuid4s, write_pairs

from backfill.mixpanel import IdMerge
from backfill.read import Chunk
from backfill.read.chunk import unusual_rows
from backfill.validation import rules as rule_module
from backfill.validation.reasons import Reason
from backfill.validation.rules import ORIGINAL, Rules, bool_mask, describe, device_ids, row_reasons

NOW_MS = 1_760_000_000_000
U = uuid4s(1, 80)[0]
LEGACY = "13bbf7943e584-0885c2531-5c793977-3e8000-13bbf7943e64cf"
MERGE, SIMPLIFIED = Rules(IdMerge.ORIGINAL, "merge"), Rules(IdMerge.SIMPLIFIED, "refuse")


def reasons(rules: Rules, anon: list[str | None], ident: list[str | None]) -> list[Reason]:
    """The per-row verdicts of one chunk."""
    chunk = Chunk(1, pa.array(anon, pa.string()), pa.array(ident, pa.string()), None)
    return [Reason(r) for r in row_reasons(chunk, NOW_MS, rules)]


@pytest.mark.parametrize(
    ("anon", "original", "merge", "simplified"),
    [
        (U, "valid", "valid", "valid"),
        (U.upper(), "valid", "valid", "valid"),
        ("$device:" + U, "valid", "valid", "valid"),
        ("$device:" + LEGACY, "invalid", "valid", "valid"),
        ("$device:$device:" + U, "invalid", "valid", "valid"),
        (LEGACY, "invalid", "valid", "valid"),
        ("undefined", "invalid", "invalid", "invalid"),
        ("NULL", "invalid", "invalid", "invalid"),
        ("x" * 256, "invalid", "invalid", "invalid"),
        ("a\u200bb", "invalid", "valid", "valid"),  # a ZWSP inside a real id is kept
        ("\u200b", "invalid", "invalid", "invalid"),
        ("\ufeff\u200b", "invalid", "invalid", "invalid"),
        ("\x1b", "invalid", "invalid", "invalid"),
        ("ab\x00cd", "invalid", "invalid", "invalid"),
        ("ab\ncd", "invalid", "invalid", "invalid"),
    ],
)
def test_anon_id_rule_by_system(anon: str, original: str, merge: str, simplified: str) -> None:
    """Rule 2 per system: UUID v4 (or $device:+UUID v4) for Original, any usable id otherwise."""
    want = {"valid": Reason.VALID, "invalid": Reason.INVALID_ANON_ID}
    for rules, expected in ((ORIGINAL, original), (MERGE, merge), (SIMPLIFIED, simplified)):
        assert reasons(rules, [anon], ["user"]) == [want[expected]], (rules, anon)


@pytest.mark.parametrize("ident", ["\u200b\u200b", "\x1b\x07", "ab\x00", "a\nb", "\ufeff"])
def test_identified_ids_of_control_or_invisible_characters_are_refused(ident: str) -> None:
    """An identified id with a NUL or a line break, or only invisible characters, is invalid."""
    for rules in (ORIGINAL, SIMPLIFIED):
        assert reasons(rules, [U], [ident]) == [Reason.INVALID_IDENTIFIED_ID]


def test_simplified_compares_devices_with_one_prefix_stripped() -> None:
    """device_ids strips one leading $device:, so "$device:X" and "X" are one device."""
    stripped = device_ids(pa.array(["$device:a", "a", "$device:$device:a", "b$device:"]))
    assert stripped.to_pylist() == ["a", "a", "$device:a", "b$device:"]
    # After stripping, a device equal to its user is a self merge, a placeholder refused.
    chunk = Chunk(
        1, device_ids(pa.array(["$device:u", "$device:null"])), pa.array(["u", "v"]), None
    )
    assert [Reason(r) for r in row_reasons(chunk, NOW_MS, SIMPLIFIED)] == [
        Reason.SELF_MERGE,
        Reason.INVALID_ANON_ID,
    ]


def test_an_anon_id_of_only_the_device_prefix_is_missing_in_every_system() -> None:
    """`$device:` alone is missing_anon_id in all three modes; `$device:$device:` is not empty."""
    for rules in (ORIGINAL, MERGE):
        assert reasons(rules, ["$device:"], ["u"]) == [Reason.MISSING_ANON_ID], rules
    stripped = device_ids(pa.array(["$device:", "$device:$device:"]))
    assert reasons(SIMPLIFIED, stripped.to_pylist(), ["u", "v"]) == [
        Reason.MISSING_ANON_ID,
        Reason.VALID,
    ]
    assert "no id after it" in describe(Reason.MISSING_ANON_ID, "$device:", "u")


@pytest.mark.parametrize(
    ("anon", "rules", "words"),
    [
        ("$device:" + LEGACY, ORIGINAL, "after $device:"),
        ("$device:" + LEGACY, ORIGINAL, "not a UUID"),
        (LEGACY, ORIGINAL, "--non-uuid-anon merge"),
        ("undefined", ORIGINAL, "not a UUID"),
        ("undefined", SIMPLIFIED, "placeholder"),
        ("\u200b", SIMPLIFIED, "invisible"),
        ("a\x00b", MERGE, "NUL"),
        ("a\nb", SIMPLIFIED, "line break"),
    ],
)
def test_anon_details_name_the_problem(anon: str, rules: Rules, words: str) -> None:
    """The rejects detail of an invalid anon id says what is wrong with it, per system."""
    assert words in describe(Reason.INVALID_ANON_ID, anon, "u", rules=rules)


def test_a_nul_at_row_5000_of_a_csv_is_a_rejected_row(tmp_path: Path) -> None:
    """A NUL deep inside a big CSV (past the sniffed head) rejects its row, with a reason."""
    anons = uuid4s(6000, 81)
    rows = [(a, f"user-{i}") for i, a in enumerate(anons)]
    rows[4999] = (anons[4999], "us\x00er")
    path = write_pairs(tmp_path / "m.csv", rows)
    result = backfill_cli("validate", path, "--out", tmp_path / "o", "--no-progress", cwd=tmp_path)
    assert result.code == 0, result.stderr
    with (tmp_path / "o" / "rejects.csv").open(encoding="utf-8", newline="") as f:
        (reject,) = list(csv.DictReader(f))
    assert (reject["row"], reject["reason"]) == ("5000", "invalid_identified_id")
    assert "NUL" in reject["detail"]


_AWKWARD = st.text(
    alphabet=st.sampled_from("ab-~! \t\n\r\x00\x1b\x7f\u200b\u00a0\ufeffé\U0001f600")
)


@given(
    st.lists(st.one_of(st.none(), _AWKWARD, st.text()), max_size=40),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_broken_ids_found_by_the_byte_scan_are_those_the_regex_finds(
    values: list[str | None], start: int, length: int
) -> None:
    """The byte pre-scan flags exactly the ids the broken-or-invisible regex flags, in any slice."""
    ids = pa.array(values, pa.string()).slice(start, length)
    expected = bool_mask(pc.match_substring_regex(ids, rule_module._BROKEN_OR_INVISIBLE))
    assert rule_module._broken(ids).tolist() == expected.tolist()
    plain = [v is None or all("!" <= c <= "~" for c in v) for v in ids.to_pylist()]
    assert sorted(unusual_rows(ids).tolist()) == [i for i, p in enumerate(plain) if not p]
