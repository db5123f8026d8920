"""The validator: every reason code with rows that trigger it and near-misses that must not."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from backfill.read import Columns, open_chunks
from backfill.validation.judge import Hasher, Verdicts, describe, hash_strings, judge
from backfill.validation.reasons import REJECT_REASONS, Reason
from backfill.validation.times import TimeStatus, to_epoch_ms
from backfill.validation.verdicts import References

NOW_MS = 1_760_000_000_000  # 2025-10-09T08:53:20Z: "now" for every test
GOOD_TIME = "1704067200"  # 2024-01-01T00:00:00Z in epoch seconds
U = "8e8afc84-9b31-46ab-a745-e5279afad5ab"
V_ = "a92d9e0f-e310-4aee-9817-a1320b6451b0"

VALID = Reason.VALID
MISSING_ANON = Reason.MISSING_ANON_ID
INVALID_ANON = Reason.INVALID_ANON_ID
MISSING_IDENT = Reason.MISSING_IDENTIFIED_ID
INVALID_IDENT = Reason.INVALID_IDENTIFIED_ID
SELF = Reason.SELF_MERGE
BAD_TIME = Reason.INVALID_TIME
CONFLICT = Reason.CONFLICTING_ANON_ID
DUP = Reason.DUPLICATE_PAIR
CLUSTER = Reason.CLUSTER_LIMIT

_files = itertools.count()


def terrible_hasher(values: pa.Array) -> np.ndarray:
    """Four hash values in all: nearly every pair of strings collides."""
    return hash_strings(values) & np.uint64(3)


def constant_hasher(values: pa.Array) -> np.ndarray:
    """One hash value for every string: every pair collides."""
    return np.zeros(len(values), dtype=np.uint64)


def judge_rows(
    directory: Path,
    write_csv: Any,
    rows: Sequence[Sequence[str | None]],
    *,
    chunk_rows: int = 10_000,
    max_cluster_size: int | None = 500,
    hasher: Hasher = hash_strings,
    **options: Any,
) -> Verdicts:
    """Write ``rows`` to a CSV (a third field is the time column) and judge it."""
    timed = len(rows[0]) == 3
    header = ("anon_id", "identified_id", "t") if timed else ("anon_id", "identified_id")
    path = write_csv(directory, rows, header=header, name=f"v{next(_files)}.csv")
    source = open_chunks(path, "csv", Columns(time="t" if timed else None), chunk_rows)
    return judge(source, now_ms=NOW_MS, max_cluster_size=max_cluster_size, hasher=hasher, **options)


def reasons_of(
    directory: Path, write_csv: Any, rows: Sequence[Sequence[str | None]], **kw: Any
) -> list[Reason]:
    """The reason of each row, as a list of Reason."""
    return [Reason(int(r)) for r in judge_rows(directory, write_csv, rows, **kw).reasons]


@pytest.fixture
def check(tmp_path: Path, write_csv: Any) -> Any:
    """``check(rows, **judge_options)`` -> the list of reasons."""

    def run(rows: Sequence[Sequence[str | None]], **kw: Any) -> list[Reason]:
        return reasons_of(tmp_path, write_csv, rows, **kw)

    return run


# --- 1-2: anon id -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["8", "9", "a", "b", "A", "B"])
def test_uuid_v4_of_every_variant_is_valid(check: Any, variant: str) -> None:
    """A UUID v4 with variant 8, 9, a or b (either case) is a valid anon id."""
    anon = f"8e8afc84-9b31-46ab-{variant}745-e5279afad5ab"
    assert check([(anon, "user")]) == [VALID]


def test_uppercase_and_mixed_case_uuid_v4_are_valid(check: Any, new_uuid: Any) -> None:
    """Upper-case and mixed-case UUID v4s are as valid as lower-case ones."""
    a, b = new_uuid(), new_uuid()
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(b))
    assert check([(a, "u"), (a.upper(), "u"), (mixed, "u")]) == [VALID] * 3


@pytest.mark.parametrize(
    "anon",
    [
        pytest.param("6fa459ea-ee8a-11ca-b6e1-0800200c9a66", id="v1"),
        pytest.param("6fa459ea-ee8a-31ca-b6e1-0800200c9a66", id="v3"),
        pytest.param("6fa459ea-ee8a-51ca-b6e1-0800200c9a66", id="v5"),
        pytest.param("00000000-0000-0000-0000-000000000000", id="nil"),
        pytest.param("{8e8afc84-9b31-46ab-a745-e5279afad5ab}", id="braced"),
        pytest.param("urn:uuid:8e8afc84-9b31-46ab-a745-e5279afad5ab", id="urn"),
        pytest.param("8e8afc849b3146aba745e5279afad5ab", id="undashed"),
        pytest.param("8e8afc84-9b31-46ab-c745-e5279afad5ab", id="variant-c"),
        pytest.param("8e8afc84-9b31-46ab-7745-e5279afad5ab", id="variant-7"),
        pytest.param("8e8afc84-9b31-46ab-0745-e5279afad5ab", id="variant-0"),
        pytest.param("8e8afc84-9b31-46ab-f745-e5279afad5ab", id="variant-f"),
        pytest.param("8e8afc84-9b31-46ab-a745-e5279afad5a", id="too-short"),
        pytest.param("8e8afc84-9b31-46ab-a745-e5279afad5abc", id="too-long"),
        pytest.param("8e8afc84-9b31-46ab-a745-e5279afad5ag", id="non-hex"),
        pytest.param("8e8afc84-9b31-46ab-a745-e5279afad5a\u0661", id="arabic-digit"),
        pytest.param("8e8afc849-b31-46ab-a745-e5279afad5ab", id="dashes-moved"),
        pytest.param("8e8afc84 9b31 46ab a745 e5279afad5ab", id="spaces"),
        pytest.param("00042", id="number"),
        pytest.param("NULL", id="placeholder"),
    ],
)
def test_anything_but_uuid_v4_is_invalid_anon_id(check: Any, anon: str) -> None:
    """Other UUID versions, nil, braced, undashed, wrong variant, wrong length, non-hex fail."""
    assert check([(anon, "user")]) == [INVALID_ANON]


@pytest.mark.parametrize("anon", ["", "   ", "\t", None])
def test_empty_anon_id_is_missing(check: Any, anon: str | None) -> None:
    """An anon id that is empty after trimming is missing_anon_id."""
    assert check([(anon, "user"), (U, "user")]) == [MISSING_ANON, VALID]


def test_anon_id_whitespace_is_trimmed_before_checking(check: Any) -> None:
    """A UUID v4 with surrounding spaces is valid, and equal to the unpadded id."""
    assert check([(f"  {U} ", "user"), (U, "user")]) == [VALID, DUP]


def test_case_variants_of_an_anon_id_are_different_ids(check: Any) -> None:
    """a/A anon ids neither conflict nor duplicate: Mixpanel compares them exactly."""
    assert check([(U, "alice"), (U.upper(), "bob")]) == [VALID, VALID]
    assert check([(U, "alice"), (U.upper(), "alice")]) == [VALID, VALID]


# --- 3-4: identified id -----------------------------------------------------------------------


@pytest.mark.parametrize("ident", ["", "  ", "\t", None])
def test_empty_identified_id_is_missing(check: Any, ident: str | None) -> None:
    """An identified id that is empty after trimming is missing_identified_id."""
    assert check([(U, ident)]) == [MISSING_IDENT]


PLACEHOLDERS = [
    "00000000-0000-0000-0000-000000000000",
    "anon",
    "ANON",
    "anonymous",
    "Anonymous",
    "nil",
    "NIL",
    "none",
    "None",
    "null",
    "NULL",
    "Null",
    "n/a",
    "N/A",
    "na",
    "NA",
    "undefined",
    "Undefined",
    "unknown",
    "UNKNOWN",
    "<nil>",
    "<NIL>",
    "0",
    "-1",
    "true",
    "TRUE",
    "false",
    "False",
    "[]",
    "{}",
    "nan",
    "NaN",
    "NAN",
    " null ",
]


@pytest.mark.parametrize("ident", PLACEHOLDERS)
def test_placeholders_are_invalid_in_any_case(check: Any, ident: str) -> None:
    """Every placeholder Mixpanel refuses, and `nan`, is invalid_identified_id in any case."""
    assert check([(U, ident)]) == [INVALID_IDENT]


@pytest.mark.parametrize(
    "ident",
    ["00", "null1", "nulll", "-2", "0.0", "-0", "1", "[ ]", "{ }", "<null>", "n-a", "nan1",
     "undefined_user", "anon_42", "truee", "00000000-0000-0000-0000-000000000001", "none none"],
)  # fmt: skip
def test_placeholder_near_misses_are_valid(check: Any, ident: str) -> None:
    """Values that merely resemble a placeholder are valid identified ids."""
    assert check([(U, ident)]) == [VALID]


@pytest.mark.parametrize(
    ("ident", "expected"),
    [
        pytest.param("x" * 255, VALID, id="255-ascii"),
        pytest.param("x" * 256, INVALID_IDENT, id="256-ascii"),
        pytest.param("é" * 127 + "x", VALID, id="255-bytes-128-chars"),
        pytest.param("é" * 128, INVALID_IDENT, id="256-bytes-128-chars"),
        pytest.param("€" * 85, VALID, id="255-bytes-85-chars"),
        pytest.param("€" * 85 + "x", INVALID_IDENT, id="256-bytes-86-chars"),
        pytest.param("😀" * 63 + "xyz", VALID, id="255-bytes-66-chars"),
        pytest.param("😀" * 64, INVALID_IDENT, id="256-bytes-64-chars"),
        pytest.param("  " + "x" * 255 + "  ", VALID, id="255-after-trim"),
    ],
)
def test_identified_id_limit_is_255_utf8_bytes(check: Any, ident: str, expected: Reason) -> None:
    """Length is counted in UTF-8 bytes after trimming: 255 pass, 256 fail."""
    assert check([(U, ident)]) == [expected]


# --- 5: self merge ----------------------------------------------------------------------------


def test_self_merge_is_exact(check: Any, new_uuid: Any) -> None:
    """Identified id equal to the anon id is self_merge; a case variant of it is not."""
    a, b = new_uuid(), new_uuid()
    rows = [(U, U), (U, f" {U} "), (a, a.upper()), (b, b + "x"), (U.upper(), U.upper())]
    assert check(rows) == [SELF, SELF, VALID, VALID, SELF]


# --- rule order -------------------------------------------------------------------------------

BAD_ANON = "not-a-uuid"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(("", "", "junk"), MISSING_ANON, id="missing-anon-first"),
        pytest.param(("", "null", "junk"), MISSING_ANON, id="missing-anon-over-placeholder"),
        pytest.param((BAD_ANON, "", "junk"), INVALID_ANON, id="invalid-anon-over-missing-ident"),
        pytest.param((BAD_ANON, "null", ""), INVALID_ANON, id="invalid-anon-over-placeholder"),
        pytest.param((BAD_ANON, BAD_ANON, ""), INVALID_ANON, id="invalid-anon-over-self"),
        pytest.param(
            ("00000000-0000-0000-0000-000000000000",) * 2 + ("",),
            INVALID_ANON,
            id="nil-anon-and-ident",
        ),
        pytest.param((U, "", "junk"), MISSING_IDENT, id="missing-ident-over-time"),
        pytest.param((U, "x" * 300, "junk"), INVALID_IDENT, id="long-ident-over-time"),
        pytest.param((U, "null", "junk"), INVALID_IDENT, id="placeholder-over-time"),
        pytest.param((U, U, "junk"), SELF, id="self-merge-over-time"),
        pytest.param((U, "u", "junk"), BAD_TIME, id="time-alone"),
    ],
)
def test_a_row_failing_several_rules_gets_the_first(
    check: Any, row: tuple[str, str, str], expected: Reason
) -> None:
    """Rules apply in SPEC order: a row gets exactly the first rule it fails."""
    assert check([row]) == [expected]


# --- 6: conflicting anon id -------------------------------------------------------------------


def test_every_row_of_a_conflicting_anon_id_is_rejected(check: Any, new_uuid: Any) -> None:
    """All rows of an anon id with two identified ids are conflicts, repeats included."""
    other = new_uuid()
    rows = [(U, "alice"), (other, "carol"), (U, "alice"), (U, "bob"), (U, "alice")]
    assert check(rows) == [CONFLICT, VALID, CONFLICT, CONFLICT, CONFLICT]


def test_identified_ids_are_compared_exactly(check: Any) -> None:
    """`Bob` and `bob` are different identified ids (conflict); ` bob ` is `bob` (duplicate)."""
    assert check([(U, "Bob"), (U, "bob")]) == [CONFLICT, CONFLICT]
    assert check([(U, "bob"), (U, " bob ")]) == [VALID, DUP]


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        pytest.param((U, "null", GOOD_TIME), INVALID_IDENT, id="placeholder"),
        pytest.param((U, "", GOOD_TIME), MISSING_IDENT, id="missing"),
        pytest.param((U, "y" * 256, GOOD_TIME), INVALID_IDENT, id="too-long"),
        pytest.param((U, U, GOOD_TIME), SELF, id="self-merge"),
        pytest.param((U, "bob", "not a time"), BAD_TIME, id="bad-time"),
        pytest.param((U, "bob", "2099-01-01T00:00:00Z"), BAD_TIME, id="future-time"),
        pytest.param((U.upper(), "bob", GOOD_TIME), VALID, id="case-variant"),
    ],
)
def test_rows_that_failed_a_row_rule_cause_no_conflict(
    check: Any, second: tuple[str, str, str], reason: Reason
) -> None:
    """A conflict among rows that already failed another rule is no conflict: row 1 stays."""
    assert check([(U, "alice", GOOD_TIME), second]) == [VALID, reason]


def test_conflict_detail_points_at_the_other_identified_id(tmp_path: Path, write_csv: Any) -> None:
    """The first conflicting row refers to the first row with another id; the rest to it."""
    v = judge_rows(tmp_path, write_csv, [(U, "a"), (U, "a"), (U, "b"), (V_, "c"), (U, "d")])
    assert [Reason(int(r)) for r in v.reasons] == [CONFLICT] * 3 + [VALID, CONFLICT]
    assert v.first_rows(np.array([1, 2, 3, 5])).tolist() == [3, 1, 1, 1]


# --- 7: duplicate pair ------------------------------------------------------------------------


def test_duplicate_pair_keeps_the_first(tmp_path: Path, write_csv: Any, new_uuid: Any) -> None:
    """Exact repeats of an earlier pair are duplicate_pair; the first one stays valid."""
    other = new_uuid()
    rows = [(U, "alice"), (other, "alice"), (U, "alice"), (U, "alice")]
    v = judge_rows(tmp_path, write_csv, rows)
    assert [Reason(int(r)) for r in v.reasons] == [VALID, VALID, DUP, DUP]
    assert v.first_rows(np.array([3, 4])).tolist() == [1, 1]


def test_first_rows_is_safe_without_conflicts_or_duplicates(tmp_path: Path, write_csv: Any) -> None:
    """first_rows can be asked about any row, even with no repeat in the file: 0 for none."""
    v = judge_rows(tmp_path, write_csv, [(U, "alice"), ("", "bob")])
    assert v.first_rows(np.array([1, 2, 3])).tolist() == [0, 0, 0]


def test_repeats_of_invalid_rows_keep_their_own_reason(check: Any) -> None:
    """Repeated rows that fail a row rule are reported for that rule, not as duplicates."""
    rows = [(BAD_ANON, "alice"), (BAD_ANON, "alice"), (U, "null"), (U, "null")]
    assert check(rows) == [INVALID_ANON, INVALID_ANON, INVALID_IDENT, INVALID_IDENT]


# --- 8: cluster limit -------------------------------------------------------------------------


def test_cluster_limit_rejects_rows_past_the_limit_in_file_order(check: Any, new_uuid: Any) -> None:
    """With max N, the (N-1) first distinct anon ids of an identified id stay, later ones go."""
    a = [new_uuid() for _ in range(6)]
    rows = [(a[0], "k"), (a[1], "other"), (a[2], "k"), (a[3], "k"), (a[4], "other"), (a[5], "k")]
    assert check(rows, max_cluster_size=3) == [VALID, VALID, VALID, CLUSTER, VALID, CLUSTER]
    assert check(rows, max_cluster_size=4) == [VALID] * 5 + [CLUSTER]
    assert check(rows, max_cluster_size=5) == [VALID] * 6


def test_cluster_limit_ignores_duplicates_and_conflicts(check: Any, new_uuid: Any) -> None:
    """Duplicates and conflicting rows do not use up places in a cluster."""
    a1, a2, c = new_uuid(), new_uuid(), new_uuid()
    rows = [(c, "k"), (a1, "k"), (a1, "k"), (c, "elsewhere"), (a1, "k"), (a2, "k")]
    assert check(rows, max_cluster_size=3) == [CONFLICT, VALID, DUP, CONFLICT, DUP, VALID]


def test_cluster_limit_ignores_rows_failing_row_rules(check: Any, new_uuid: Any) -> None:
    """Rows rejected by a per-row rule (time included) take no place in the cluster."""
    a1, a2, a3 = new_uuid(), new_uuid(), new_uuid()
    rows = [
        (BAD_ANON, "k", GOOD_TIME),
        (a1, "k", "junk"),
        (a2, "k", GOOD_TIME),
        (a3, "k", GOOD_TIME),
        (a1, "k", GOOD_TIME),
    ]
    assert check(rows, max_cluster_size=3) == [INVALID_ANON, BAD_TIME, VALID, VALID, CLUSTER]


def test_repeat_of_a_cluster_rejected_pair_is_a_duplicate(check: Any, new_uuid: Any) -> None:
    """Duplicate comes before cluster_limit: repeating a refused pair is a duplicate."""
    a1, a2, a3 = new_uuid(), new_uuid(), new_uuid()
    rows = [(a1, "k"), (a2, "k"), (a3, "k"), (a3, "k")]
    assert check(rows, max_cluster_size=3) == [VALID, VALID, CLUSTER, DUP]


def test_case_variants_are_distinct_cluster_members(check: Any) -> None:
    """`u` and `U` anon ids are two members of a cluster; `K` and `k` two clusters."""
    assert check([(U, "k"), (U.upper(), "k")], max_cluster_size=2) == [VALID, CLUSTER]
    assert check([(U, "k"), (V_, "K")], max_cluster_size=2) == [VALID, VALID]


def test_default_cluster_limit_is_500_ids(tmp_path: Path, write_csv: Any, new_uuid: Any) -> None:
    """By default 499 anon ids join one identified id; the 500th and later are refused."""
    rows = [(new_uuid(), "kiosk") for _ in range(502)]
    v = judge(
        open_chunks(write_csv(tmp_path, rows), "csv", Columns()),
        now_ms=NOW_MS,
    )
    assert np.flatnonzero(v.reasons).tolist() == [499, 500, 501]
    assert v.counts()["cluster_limit"] == 3


@pytest.mark.parametrize("index_memory_bytes", [256 << 20, 0], ids=["in-memory", "on-disk"])
def test_no_cluster_rule_when_max_cluster_size_is_none(
    tmp_path: Path, write_csv: Any, new_uuid: Any, index_memory_bytes: int
) -> None:
    """max_cluster_size=None: any number of anon ids join one identified id; 6-7 still apply."""
    a, b = new_uuid(), new_uuid()
    rows = [(new_uuid(), "kiosk") for _ in range(600)]
    rows += [(a, "alice"), (a, "alice"), (b, "x"), (b, "y"), (new_uuid(), "null")]
    v = judge_rows(
        tmp_path,
        write_csv,
        rows,
        max_cluster_size=None,
        index_memory_bytes=index_memory_bytes,
        spill_dir=tmp_path,
    )
    expected = [VALID] * 601 + [DUP, CONFLICT, CONFLICT, INVALID_IDENT]
    assert [Reason(int(r)) for r in v.reasons] == expected
    assert v.max_cluster_size is None
    assert v.first_rows(np.array([602, 603, 604])).tolist() == [601, 604, 603]


def test_max_cluster_size_below_two_is_refused(tmp_path: Path, write_csv: Any) -> None:
    """A cluster must hold at least the identified id and one anon id."""
    source = open_chunks(write_csv(tmp_path, [(U, "k")]), "csv", Columns())
    with pytest.raises(ValueError, match="max_cluster_size"):
        judge(source, now_ms=NOW_MS, max_cluster_size=1)


# --- invalid_time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        pytest.param("last tuesday", BAD_TIME, id="unparseable"),
        pytest.param("2024-13-01T00:00:00Z", BAD_TIME, id="month-13"),
        pytest.param("2024-02-30", BAD_TIME, id="feb-30"),
        pytest.param("1e9", BAD_TIME, id="scientific"),
        pytest.param("", BAD_TIME, id="empty"),
        pytest.param("   ", BAD_TIME, id="blank"),
        pytest.param("0", BAD_TIME, id="epoch-zero"),
        pytest.param("31535999", BAD_TIME, id="1970-12-31T23:59:59-seconds"),
        pytest.param("31535999999", BAD_TIME, id="1970-12-31T23:59:59.999-ms"),
        pytest.param("1970-12-31T23:59:59.999Z", BAD_TIME, id="1970-iso"),
        pytest.param("1969-07-20T20:17:00Z", BAD_TIME, id="1969-iso"),
        pytest.param("31536000", VALID, id="1971-01-01-seconds"),
        pytest.param("1971-01-01T00:00:00Z", VALID, id="1971-01-01-iso"),
        pytest.param("1971-01-01T01:00:00+01:00", VALID, id="1971-01-01-offset"),
        pytest.param(str(NOW_MS), VALID, id="now-ms"),
        pytest.param(str(NOW_MS // 1000), VALID, id="now-seconds"),
        pytest.param(str(NOW_MS + 1), BAD_TIME, id="1ms-in-future"),
        pytest.param(str(NOW_MS // 1000 + 1), BAD_TIME, id="1s-in-future"),
        pytest.param("2099-01-01T00:00:00Z", BAD_TIME, id="future-iso"),
        pytest.param("99999999999", BAD_TIME, id="seconds-in-year-5138"),
        pytest.param(" 2024-06-01T12:00:00Z ", VALID, id="iso-padded"),
        pytest.param("2024-06-01 12:00:00", VALID, id="iso-space"),
    ],
)
def test_invalid_time(check: Any, when: str, expected: Reason) -> None:
    """Unparseable, empty, pre-1971 and future times are invalid_time; the bounds are valid."""
    assert check([(U, "user", when)]) == [expected]


def test_invalid_time_comes_after_self_merge_and_before_conflict(check: Any) -> None:
    """A self merge with a bad time is self_merge; a bad-time row cannot make a conflict."""
    rows = [(U, U, "junk"), (V_, "alice", GOOD_TIME), (V_, "bob", "junk"), (V_, "alice", "")]
    assert check(rows) == [SELF, VALID, BAD_TIME, BAD_TIME]


def test_time_column_is_ignored_without_the_option(tmp_path: Path, write_csv: Any) -> None:
    """Without --time-column, a junk time column has no effect on any verdict."""
    path = write_csv(tmp_path, [(U, "alice", "junk")], header=("anon_id", "identified_id", "t"))
    v = judge(open_chunks(path, "csv", Columns()), now_ms=NOW_MS)
    assert v.reasons.tolist() == [VALID]


# --- epoch seconds / milliseconds / ISO -------------------------------------------------------

JAN_1_2024 = 1_704_067_200_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        pytest.param("1704067200", JAN_1_2024, id="seconds"),
        pytest.param("1704067200000", JAN_1_2024, id="milliseconds"),
        pytest.param("1704067200123", JAN_1_2024 + 123, id="milliseconds-exact"),
        pytest.param("1704067200.5", JAN_1_2024 + 500, id="fractional-seconds"),
        pytest.param("01704067200", JAN_1_2024, id="leading-zero"),
        pytest.param("100000000000", 100_000_000_000, id="1e11-is-ms-1973"),
        pytest.param("2024-01-01T00:00:00Z", JAN_1_2024, id="iso-z"),
        pytest.param("2024-01-01T00:00:00", JAN_1_2024, id="iso-zoneless-is-utc"),
        pytest.param("2024-01-01", JAN_1_2024, id="iso-date"),
        pytest.param("2024-01-01T02:00:00+02:00", JAN_1_2024, id="iso-plus-offset"),
        pytest.param("2023-12-31T19:00:00-05:00", JAN_1_2024, id="iso-minus-offset"),
        pytest.param("2024-01-01T05:30:00+05:30", JAN_1_2024, id="iso-half-hour-offset"),
        pytest.param("2024-01-01T00:00:00.123Z", JAN_1_2024 + 123, id="iso-ms"),
        pytest.param("2024-01-01T00:00:00.123456Z", JAN_1_2024 + 123, id="iso-us"),
    ],
)
def test_to_epoch_ms_parses_seconds_ms_and_iso(text: str, ms: int) -> None:
    """Epoch seconds, epoch ms and ISO 8601 (zone-less = UTC, offsets honoured) give the ms."""
    got, status = to_epoch_ms(pa.array([text]), NOW_MS)
    assert (int(got[0]), TimeStatus(int(status[0]))) == (ms, TimeStatus.OK)


@pytest.mark.parametrize(
    ("text", "status"),
    [
        (None, TimeStatus.MISSING),
        ("yesterday", TimeStatus.UNPARSEABLE),
        ("31535999", TimeStatus.TOO_EARLY),
        ("1970-06-01T00:00:00Z", TimeStatus.TOO_EARLY),
        ("99999999999", TimeStatus.FUTURE),
        ("2099-01-01T00:00:00Z", TimeStatus.FUTURE),
    ],
)
def test_to_epoch_ms_statuses(text: str | None, status: TimeStatus) -> None:
    """Each unusable time gets its own status, and ms 0."""
    got, st = to_epoch_ms(pa.array([text], pa.string()), NOW_MS)
    assert (int(got[0]), TimeStatus(int(st[0]))) == (0, status)


def test_to_epoch_ms_typed_columns() -> None:
    """Integer, float, timestamp (any unit or zone) and date columns convert to epoch ms."""
    cases = [
        pa.array([1_704_067_200, 1_704_067_200_000], pa.int64()),
        pa.array([1_704_067_200.0, 1_704_067_200_000.0], pa.float64()),
        pa.array([JAN_1_2024 // 1000] * 2, pa.timestamp("s")),
        pa.array([JAN_1_2024] * 2, pa.timestamp("ms", tz="UTC")),
        pa.array([dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))] * 2,
                 pa.timestamp("ms", tz="+01:00")),
        pa.array([dt.date(2024, 1, 1)] * 2, pa.date32()),
    ]  # fmt: skip
    for values in cases:
        ms, status = to_epoch_ms(values, NOW_MS)
        assert ms.tolist() == [JAN_1_2024, JAN_1_2024], values.type
        assert status.tolist() == [TimeStatus.OK] * 2, values.type


def test_to_epoch_ms_float_nan_is_unparseable() -> None:
    """A NaN float time is unusable, not a number of seconds."""
    _, status = to_epoch_ms(pa.array([float("nan"), None], pa.float64()), NOW_MS)
    assert status.tolist() == [TimeStatus.UNPARSEABLE, TimeStatus.MISSING]


def test_fractional_epoch_seconds_give_the_exact_ms() -> None:
    """Epoch seconds with three decimals give exactly that many milliseconds."""
    ms, _ = to_epoch_ms(pa.array(["135038998.943", "1704067200.001"]), NOW_MS)
    assert ms.tolist() == [135_038_998_943, 1_704_067_200_001]


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("2300-01-01T00:00:00Z", TimeStatus.FUTURE),
        ("9999-12-31T00:00:00Z", TimeStatus.FUTURE),
        ("1500-01-01T00:00:00Z", TimeStatus.TOO_EARLY),
        ("-1", TimeStatus.TOO_EARLY),  # epoch -1 s is 1969-12-31T23:59:59Z
    ],
)
def test_out_of_range_iso_times_are_invalid_not_a_crash(text: str, status: TimeStatus) -> None:
    """A far-future or far-past ISO time (or a negative epoch) is an invalid time, not a crash."""
    _, st = to_epoch_ms(pa.array([text]), NOW_MS)
    assert TimeStatus(int(st[0])) == status


@pytest.mark.parametrize("unit", ["us", "ns"])
def test_parquet_sub_millisecond_timestamps_are_valid(
    tmp_path: Path, write_parquet: Any, unit: str
) -> None:
    """A Parquet timestamp[us]/[ns] time column with sub-ms digits is read, floored to ms."""
    stamp = dt.datetime(2024, 1, 1, 0, 0, 0, 123456)
    path = write_parquet(
        tmp_path,
        {
            "anon_id": [U],
            "identified_id": ["alice"],
            "t": pa.array([stamp], pa.timestamp(unit)),
        },
    )
    v = judge(open_chunks(path, "parquet", Columns(time="t")), now_ms=NOW_MS)
    assert v.reasons.tolist() == [VALID]


@pytest.mark.parametrize("kind", ["dictionary", "large_string"])
def test_padded_time_in_any_parquet_string_column_is_valid(
    tmp_path: Path, write_parquet: Any, kind: str
) -> None:
    """A time with surrounding spaces is trimmed whatever the Parquet string encoding."""
    times = pa.array([" 1704067200 ", "1704067200"])
    times = times.dictionary_encode() if kind == "dictionary" else times.cast(pa.large_string())
    path = write_parquet(
        tmp_path, {"anon_id": [U, V_], "identified_id": ["alice", "bob"], "t": times}
    )
    v = judge(open_chunks(path, "parquet", Columns(time="t")), now_ms=NOW_MS)
    assert v.reasons.tolist() == [VALID, VALID]


def test_padded_time_in_plain_parquet_string_column_is_valid(
    tmp_path: Path, write_parquet: Any
) -> None:
    """A time with surrounding spaces in a plain Parquet string column is trimmed and valid."""
    path = write_parquet(
        tmp_path, {"anon_id": [U], "identified_id": ["alice"], "t": [" 1704067200 "]}
    )
    v = judge(open_chunks(path, "parquet", Columns(time="t")), now_ms=NOW_MS)
    assert v.reasons.tolist() == [VALID]


# --- hashing and collisions -------------------------------------------------------------------


def _busy_rows(new_uuid: Any) -> list[tuple[str, str]]:
    """Rows with duplicates, conflicts, case variants and two overfull clusters."""
    a = [new_uuid() for _ in range(12)]
    return [
        (a[0], "k1"), (a[1], "k1"), (a[0], "k1"), (a[2], "k2"), (a[2], "k3"),
        (a[3], "k1"), (a[4], "k1"), (a[0].upper(), "k1"), (a[5], "k2"), (a[6], "k2"),
        (a[7], "K2"), (a[8], "k2"), (a[5], "k2"), (a[9], "null"), (a[10], a[10]),
        (a[11], "k4"), (a[11], "k4"), (a[2], "k2"), (a[6], "K2"), (a[1], "k1"),
    ]  # fmt: skip


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
@pytest.mark.parametrize("hasher", [terrible_hasher, constant_hasher])
def test_colliding_hashes_give_the_same_verdicts(
    tmp_path: Path, write_csv: Any, new_uuid: Any, chunk_rows: int, hasher: Hasher
) -> None:
    """A hash that collides all the time changes no verdict, and the collisions are counted."""
    rows = _busy_rows(new_uuid)
    exact = judge_rows(tmp_path, write_csv, rows, max_cluster_size=3)
    rough = judge_rows(
        tmp_path, write_csv, rows, max_cluster_size=3, chunk_rows=chunk_rows, hasher=hasher
    )
    assert rough.reasons.tolist() == exact.reasons.tolist()
    assert set(exact.reasons.tolist()) >= {VALID, CONFLICT, DUP, CLUSTER, INVALID_IDENT, SELF}
    bad = np.flatnonzero(exact.reasons) + 1
    assert rough.first_rows(bad).tolist() == exact.first_rows(bad).tolist()
    assert exact.collisions == 0
    assert rough.collisions > 0


@pytest.mark.parametrize(
    ("index_memory_bytes", "partitions"),
    [(0, 1), (0, 3), (300, 2), (400, 64)],
    ids=["no-memory-1-partition", "no-memory-3", "300-bytes-2", "400-bytes-64"],
)
@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
@pytest.mark.parametrize("hasher", [hash_strings, terrible_hasher, constant_hasher])
def test_index_on_disk_gives_the_same_verdicts(
    tmp_path: Path,
    write_csv: Any,
    new_uuid: Any,
    index_memory_bytes: int,
    partitions: int,
    chunk_rows: int,
    hasher: Hasher,
) -> None:
    """Index on disk, any partitions and budget, colliding or not: the same verdicts and refs."""
    rows = _busy_rows(new_uuid)
    exact = judge_rows(tmp_path, write_csv, rows, max_cluster_size=3)
    spilled = judge_rows(
        tmp_path,
        write_csv,
        rows,
        max_cluster_size=3,
        chunk_rows=chunk_rows,
        hasher=hasher,
        index_memory_bytes=index_memory_bytes,
        partitions=partitions,
        spill_dir=tmp_path,
    )
    assert exact.spilled_bytes == 0
    assert spilled.spilled_bytes > 0
    assert spilled.reasons.tolist() == exact.reasons.tolist()
    every = np.arange(1, len(rows) + 1)
    assert spilled.first_rows(every).tolist() == exact.first_rows(every).tolist()
    assert (spilled.collisions > 0) == (hasher is not hash_strings)


def test_hash_strings_distinguishes_strings() -> None:
    """Different strings (NULs, order, multibyte) hash differently; equal ones equally."""
    values = pa.array(["", "a", "a\x00", "\x00a", "b", "ab", "ba", "é", "x" * 300, "a"])
    h = hash_strings(values)
    assert h[1] == h[9]
    assert len(set(h[:9].tolist())) == 9
    assert (
        hash_strings(values.slice(3, 5)).tolist()
        == hash_strings(pa.array(values.slice(3, 5).to_pylist())).tolist()
    )


def test_hash_of_a_string_does_not_depend_on_its_neighbours() -> None:
    """A string hashes the same alone and next to a longer string."""
    alone = hash_strings(pa.array(["alice"]))
    beside_long = hash_strings(pa.array(["alice", "a-much-longer-identified-id"]))
    assert alone[0] == beside_long[0]


@pytest.mark.parametrize("chunk_rows", [2, 3, 6])
def test_same_pair_in_chunks_of_different_widths_is_a_duplicate(
    tmp_path: Path, write_csv: Any, chunk_rows: int, new_uuid: Any
) -> None:
    """A repeat of a pair in a later chunk is a duplicate, whatever else the chunks hold."""
    rows = [(U, "alice")] + [(new_uuid(), f"user-with-a-long-name-{i}") for i in range(5)]
    rows += [(U, "alice")]  # row 7: alone in the last chunk
    v = judge_rows(tmp_path, write_csv, rows, chunk_rows=chunk_rows)
    assert [Reason(int(r)) for r in v.reasons] == [VALID] * 6 + [DUP]


# --- counts, row numbers, details -------------------------------------------------------------


def test_counts_cover_every_code_and_sum_to_the_rejects(
    tmp_path: Path, write_csv: Any, new_uuid: Any
) -> None:
    """counts() has every validation code, and they sum to rows_read - rows_valid."""
    rows = [(r[0], r[1], GOOD_TIME) for r in _busy_rows(new_uuid)]
    rows += [("", "u", GOOD_TIME), (BAD_ANON, "u", GOOD_TIME), (new_uuid(), "", "x")]
    rows += [(new_uuid(), "u", "junk")]
    v = judge_rows(tmp_path, write_csv, rows, max_cluster_size=3)
    counts = v.counts()
    assert list(counts) == [r.code for r in REJECT_REASONS if r is not Reason.API_REJECTED]
    assert all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) == v.rows_read - v.rows_valid
    assert v.rows_read == len(rows)


def test_counts_of_many_rows_add_up_across_blocks(tmp_path: Path) -> None:
    """counts() and rows_valid of millions of rows (counted block by block) are exact."""
    reasons = np.random.default_rng(1).integers(0, 10, size=3_000_007, dtype=np.uint8)
    refs = References(len(reasons), limit_bytes=0, spill_dir=tmp_path)
    v = Verdicts(reasons=reasons, max_cluster_size=500, references=refs)
    tally = np.bincount(reasons, minlength=len(Reason))
    assert v.rows_valid == tally[Reason.VALID]
    assert v.counts() == {r.code: int(tally[r]) for r in Reason if 0 < r < Reason.API_REJECTED}


def test_verdicts_are_indexed_by_record_not_by_line(tmp_path: Path) -> None:
    """A quoted note spanning lines is one row: the verdict after it is for row 2."""
    path = tmp_path / "m.csv"
    path.write_text(
        f'anon_id,identified_id,note\n{U},u,"two\nlines"\n{BAD_ANON},x,\n{V_},null,\n',
        encoding="utf-8",
    )
    v = judge(open_chunks(path, "csv", Columns()), now_ms=NOW_MS)
    assert v.reasons.tolist() == [VALID, INVALID_ANON, INVALID_IDENT]


@pytest.mark.parametrize(
    ("reason", "anon", "ident", "words"),
    [
        (INVALID_ANON, "6fa459ea-ee8a-11ca-b6e1-0800200c9a66", "u", "version 1"),
        (INVALID_ANON, "00000000-0000-0000-0000-000000000000", "u", "nil"),
        (INVALID_ANON, "8e8afc84-9b31-46ab-c745-e5279afad5ab", "u", "variant 'c'"),
        (INVALID_ANON, "{x}", "u", "not a UUID"),
        (INVALID_IDENT, U, "Undefined", "'Undefined' is a placeholder"),
        (INVALID_IDENT, U, "é" * 128, "256 bytes"),
        (SELF, U, U, "equals"),
    ],
)
def test_describe_says_what_is_wrong(reason: Reason, anon: str, ident: str, words: str) -> None:
    """The rejects detail names the specific problem."""
    assert words in describe(reason, anon, ident)
