"""The vectorised validator against a tiny, obviously correct reference, on random files.

The reference below is SPEC's rules written out with strings, dicts, sets and one loop; it
shares no code with ``backfill.validation.judge``. Random files are drawn from a small alphabet
so that duplicates, conflicts, placeholders, case variants, self merges, bad times and full
clusters happen in most of them, and each file is judged at several chunk sizes.
"""

from __future__ import annotations

import csv
import random
import re
import string
import tempfile
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backfill.errors import InputError
from backfill.read import Columns, open_chunks
from backfill.validation.judge import Hasher, hash_strings, judge
from backfill.validation.reasons import Reason

NOW_MS = 1_760_000_000_000  # 2025-10-09
SAMPLE_CSV = Path(__file__).resolve().parent.parent / "sample_data" / "mappings.csv"

# --- the reference ----------------------------------------------------------------------------

REF_PLACEHOLDERS = {
    "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a",
    "na", "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}", "nan",
}  # fmt: skip
MIN_MS = int(datetime(1971, 1, 1, tzinfo=UTC).timestamp() * 1000)


def ref_clean(value: str | None) -> str | None:
    """Trimmed value, or None when nothing is left."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def ref_is_uuid4(value: str) -> bool:
    """8-4-4-4-12 hex digits, version 4, variant 8/9/a/b."""
    groups = value.split("-")
    return (
        [len(g) for g in groups] == [8, 4, 4, 4, 12]
        and all(c in string.hexdigits for c in "".join(groups))
        and groups[2][0] == "4"
        and groups[3][0] in "89abAB"
    )


def ref_broken(value: str) -> bool:
    """A line break or NUL anywhere, or nothing but control/format/separator characters."""
    if any(c in value for c in "\n\r\x00"):
        return True
    return all(unicodedata.category(c)[0] in "CZ" for c in value)


def ref_time_ok(value: str | None, now_ms: int) -> bool:
    """Epoch seconds (< 1e11), epoch ms or ISO 8601 (zone-less = UTC), from 1971 up to now."""
    if value is None:
        return False
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        number = Decimal(value)
        ms = int(number if number >= 100_000_000_000 else number * 1000)
    else:
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return False
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        ms = int(stamp.timestamp() * 1000)
    return MIN_MS <= ms <= now_ms


def reference(
    rows: Sequence[tuple[str | None, str | None, str | None]],
    *,
    max_cluster_size: int,
    timed: bool,
    now_ms: int = NOW_MS,
) -> list[str]:
    """SPEC's validation rules, one row at a time: the reason code of each row."""
    verdicts: list[str] = []
    pairs: list[tuple[str, str] | None] = []
    for raw_anon, raw_ident, raw_time in rows:
        anon, ident, when = ref_clean(raw_anon), ref_clean(raw_ident), ref_clean(raw_time)
        pairs.append(None)
        if anon is None:
            verdicts.append("missing_anon_id")
        elif not ref_is_uuid4(anon):
            verdicts.append("invalid_anon_id")
        elif ident is None:
            verdicts.append("missing_identified_id")
        elif (
            ident.lower() in REF_PLACEHOLDERS
            or len(ident.encode("utf-8")) > 255
            or ref_broken(ident)
        ):
            verdicts.append("invalid_identified_id")
        elif ident == anon:
            verdicts.append("self_merge")
        elif timed and not ref_time_ok(when, now_ms):
            verdicts.append("invalid_time")
        else:
            verdicts.append("valid")
            pairs[-1] = (anon, ident)

    identified_of: dict[str, set[str]] = {}
    for pair in pairs:
        if pair is not None:
            identified_of.setdefault(pair[0], set()).add(pair[1])
    conflicting = {a for a, ids in identified_of.items() if len(ids) > 1}

    seen: set[tuple[str, str]] = set()
    members: dict[str, set[str]] = {}
    for i, pair in enumerate(pairs):
        if pair is None:
            continue
        anon, ident = pair
        if anon in conflicting:
            verdicts[i] = "conflicting_anon_id"
        elif pair in seen:
            verdicts[i] = "duplicate_pair"
        else:
            seen.add(pair)
            cluster = members.setdefault(ident, set())
            if len(cluster) >= max_cluster_size - 1:  # the identified id is one of the ids
                verdicts[i] = "cluster_limit"
            else:
                cluster.add(anon)
    return verdicts


# --- the reference's own sanity ---------------------------------------------------------------

A = "8e8afc84-9b31-46ab-a745-e5279afad5ab"
B = "a92d9e0f-e310-4aee-9817-a1320b6451b0"
C = "945b3a5a-89ca-43eb-a0c1-7c7337ef1c35"


def test_reference_follows_spec_examples() -> None:
    """The reference itself gives SPEC's answer on a hand-checked table."""
    rows = [
        ("", "u", ""),  # 1 missing anon
        ("{" + A + "}", "u", ""),  # 2 invalid anon
        (A, " ", ""),  # 3 missing identified
        (A, "NaN", ""),  # 4 placeholder
        (A, A, ""),  # 5 self merge
        (A, "k", "junk"),  # 6 bad time: takes no part in the conflict
        (A, "u", "1704067200"),  # 7 valid
        (A, "u", "2024-01-01T00:00:00"),  # 8 duplicate
        (B, "v", "1704067200"),  # 9 conflict
        (B, "w", "1704067200"),  # 10 conflict
        (A.upper(), "u", "1704067200"),  # 11 another id, joins u's cluster: 2 of 2
        (C, "u", "1704067200"),  # 12 past the limit of 3 ids
    ]
    assert reference(rows, max_cluster_size=3, timed=True) == [
        "missing_anon_id", "invalid_anon_id", "missing_identified_id", "invalid_identified_id",
        "self_merge", "invalid_time", "valid", "duplicate_pair", "conflicting_anon_id",
        "conflicting_anon_id", "valid", "cluster_limit",
    ]  # fmt: skip


# --- random files -----------------------------------------------------------------------------

_rng = random.Random(2)
UUIDS = [str(uuid.UUID(int=_rng.getrandbits(128), version=4)) for _ in range(6)]
SELF = object()  # stands for "the identified id is this row's anon id"

# Valid values are repeated so that most rows reach the whole-file rules.
ANONS = [
    *UUIDS * 3,
    UUIDS[0].upper(),
    f"  {UUIDS[1]} ",
    "6fa459ea-ee8a-11ca-b6e1-0800200c9a66",  # v1
    "8e8afc84-9b31-46ab-c745-e5279afad5ab",  # variant c
    "00000000-0000-0000-0000-000000000000",
    UUIDS[2].replace("-", ""),
    "",
    "   ",
]  # fmt: skip
#: Identified ids of at most 8 bytes (one hash word) once trimmed, when valid; the first
#: three are the "home" ids that most rows of an anon id use.
SHORT_IDENTS = [
    "k", "u", "k", *["k"] * 5, *["u"] * 3, "K", "Bob", "bob", " bob ", "a,b", "00042", "1e5",
    "null", "NULL", "NaN", "n/a", "<nil>", "-1", "0", "00", "-2", "", "  ", SELF, SELF,
]  # fmt: skip
#: Add ids of every length: multi-line, long, 255 and 256 bytes.
MIXED_IDENTS = [
    "kiosk@store-12.example.com",
    *SHORT_IDENTS,
    "two\nlines",
    "ana.souza@example.com",
    "Jörg.Müller@example.de",
    *["kiosk@store-12.example.com"] * 3,
    "é" * 127 + "x",
    "é" * 128,
    "x" * 256,
]
TIMES = [
    *["1704067200", "1704067200000", "2024-01-01T00:00:00Z", "2024-06-01T12:00:00+02:00"] * 3,
    "2024-06-01T12:00:00", " 1704067200 ", "", "junk", "1969-07-20T20:17:00Z", "31535999",
    "4102444800", "2099-01-01T00:00:00Z",
]  # fmt: skip

RawRow = tuple[str, str, str]


@st.composite
def random_rows(draw: st.DrawFn, idents: list[object]) -> list[RawRow]:
    """A random file's rows from the small alphabet.

    Each valid anon id gets a "home" identified id (from a few) that most of its rows use, so
    that clusters fill up and pairs repeat; the other rows draw any identified id, which makes
    conflicts. SELF copies the row's anon id, padding and all.
    """
    homes = {u: draw(st.sampled_from(idents[:3])) for u in UUIDS}
    size = draw(st.integers(1, 40))
    drawn = draw(
        st.lists(
            st.tuples(
                st.sampled_from(ANONS),
                st.sampled_from(idents),
                st.sampled_from(TIMES),
                st.integers(0, 3),
            ),
            min_size=size,
            max_size=size,
        )
    )
    rows = []
    for anon, ident, when, coin in drawn:
        home = homes.get(anon.strip().lower())
        if home is not None and coin:
            ident = home
        rows.append((anon, anon if ident is SELF else str(ident), when))
    return rows


def write_input(directory: Path, rows: Sequence[RawRow], fmt: str) -> Path:
    """The rows as CSV (quoted where needed) or as a Parquet file of string columns."""
    header = ["anon_id", "identified_id", "merged_at"]
    if fmt == "csv":
        path = directory / "in.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    else:
        path = directory / "in.parquet"
        columns = {h: pa.array([r[i] for r in rows], pa.string()) for i, h in enumerate(header)}
        pq.write_table(pa.table(columns), path, row_group_size=5)
    return path


def judged(
    path: Path,
    fmt: str,
    *,
    timed: bool,
    chunk_rows: int,
    max_cluster_size: int,
    hasher: Hasher = hash_strings,
    **options: Any,
) -> list[str]:
    """``judge``'s reason code for each row of the file (``options``: more of judge's)."""
    columns = Columns(time="merged_at" if timed else None)
    verdicts = judge(
        open_chunks(path, fmt, columns, chunk_rows),
        now_ms=NOW_MS,
        max_cluster_size=max_cluster_size,
        hasher=hasher,
        **options,
    )
    return [Reason(int(r)).code for r in verdicts.reasons]


def terrible_hasher(values: pa.Array) -> np.ndarray:
    """Four hash values in all: nearly every pair of strings collides."""
    return hash_strings(values) & np.uint64(3)


@pytest.mark.parametrize(
    ("chunk_rows", "idents", "hasher"),
    [
        pytest.param(1, MIXED_IDENTS, hash_strings, id="chunk1"),
        pytest.param(7, SHORT_IDENTS, hash_strings, id="chunk7-short-ids"),
        pytest.param(10_000, MIXED_IDENTS, hash_strings, id="chunk10000"),
        pytest.param(1, MIXED_IDENTS, terrible_hasher, id="chunk1-colliding-hash"),
        pytest.param(7, SHORT_IDENTS, terrible_hasher, id="chunk7-short-ids-colliding-hash"),
        pytest.param(10_000, MIXED_IDENTS, terrible_hasher, id="chunk10000-colliding-hash"),
    ],
)
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_judge_matches_the_reference(
    chunk_rows: int, idents: list[object], hasher: Hasher, data: st.DataObject
) -> None:
    """On random small files, judge gives every row the reference's reason, at any chunk size."""
    check_random_file(data, chunk_rows=chunk_rows, idents=idents, hasher=hasher)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking while the bug stands: it only slows the expected failure down. Once fixed,
    # drop the xfail and this line (or fold the case into the test above).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_judge_matches_the_reference_at_chunk7_with_ids_of_every_length(
    data: st.DataObject,
) -> None:
    """At chunk size 7, with identified ids of every length, judge matches the reference."""
    check_random_file(data, chunk_rows=7, idents=MIXED_IDENTS, hasher=hash_strings)


def _breaks(value: str) -> bool:
    """Whether a value holds a line break inside it (surrounding ones are trimmed)."""
    return "\n" in value.strip() or "\r" in value.strip()


@pytest.mark.parametrize(
    ("chunk_rows", "hasher", "index_memory_bytes", "partitions"),
    [
        pytest.param(7, hash_strings, 0, 3, id="chunk7-no-memory-3-partitions"),
        pytest.param(1, terrible_hasher, 300, 2, id="chunk1-colliding-hash-300-bytes-2"),
        pytest.param(10_000, terrible_hasher, 0, 1, id="chunk10000-colliding-hash-no-memory-1"),
    ],
)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_judge_with_the_index_on_disk_matches_the_reference(
    chunk_rows: int,
    hasher: Hasher,
    index_memory_bytes: int,
    partitions: int,
    data: st.DataObject,
) -> None:
    """With the index on disk in few partitions and next to no memory, judge still agrees."""
    check_random_file(
        data,
        chunk_rows=chunk_rows,
        idents=MIXED_IDENTS,
        hasher=hasher,
        index_memory_bytes=index_memory_bytes,
        partitions=partitions,
    )


def check_random_file(
    data: st.DataObject,
    *,
    chunk_rows: int,
    idents: list[object],
    hasher: Hasher,
    **options: Any,
) -> None:
    """Draw a random file, judge it, and compare every row with the reference."""
    rows = data.draw(random_rows(idents), label="rows")
    fmt = data.draw(st.sampled_from(["csv", "parquet"]), label="format")
    timed = data.draw(st.booleans(), label="timed")
    max_cluster_size = data.draw(st.sampled_from([2, 3, 4]), label="max_cluster_size")
    expected = reference(rows, max_cluster_size=max_cluster_size, timed=timed)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_input(Path(tmp), rows, fmt)
        if fmt == "csv" and any(_breaks(v) for row in rows for v in row[:2]):
            # In CSV an id holding a line break is a quote left open: the file is refused.
            with pytest.raises(InputError, match="line break"):
                judged(path, fmt, timed=timed, chunk_rows=chunk_rows,
                       max_cluster_size=max_cluster_size, hasher=hasher)  # fmt: skip
            return
        got = judged(
            path,
            fmt,
            timed=timed,
            chunk_rows=chunk_rows,
            max_cluster_size=max_cluster_size,
            hasher=hasher,
            **options,
        )
    assert got == expected


@pytest.mark.parametrize("seed", range(4))
def test_bigger_random_tables_match_the_reference(tmp_path: Path, seed: int) -> None:
    """Seeded tables of 600 rows with many ids and full clusters agree with the reference,
    with the index in memory and on disk."""
    rng = random.Random(seed)
    anons = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(250)]
    anons += [a.upper() for a in anons[:20]] + ["", "nope", anons[0].replace("-", "")]
    idents = [f"user_{n}" for n in range(40)] + ["kiosk", "kiosk", "kiosk", "null", "", "K"]
    rows = [(rng.choice(anons), rng.choice(idents), rng.choice(TIMES)) for _ in range(600)]
    rows += [(a, a, "1704067200") for a in anons[:3]]
    rng.shuffle(rows)
    path = write_input(tmp_path, rows, "csv")
    for timed in (False, True):
        expected = reference(rows, max_cluster_size=5, timed=timed)
        assert len(set(expected)) >= 8, "the table should exercise most rules"
        for hasher in (hash_strings, terrible_hasher):
            got = judged(path, "csv", timed=timed, chunk_rows=10_000, max_cluster_size=5,
                         hasher=hasher)  # fmt: skip
            assert got == expected
            on_disk = judged(path, "csv", timed=timed, chunk_rows=64, max_cluster_size=5,
                             hasher=hasher, index_memory_bytes=4000, partitions=3)  # fmt: skip
            assert on_disk == expected


def _sample_rows() -> list[RawRow]:
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [(a, u, t) for a, u, t in reader]


@pytest.mark.parametrize("chunk_rows", [1, 10_000])
def test_sample_file_matches_the_reference(chunk_rows: int) -> None:
    """The shipped sample gets the reference's verdict on every row, every reason present."""
    rows = _sample_rows()
    expected = reference(rows, max_cluster_size=500, timed=True)
    got = judged(SAMPLE_CSV, "csv", timed=True, chunk_rows=chunk_rows, max_cluster_size=500)
    assert got == expected
    assert set(expected) == {r.code for r in Reason if r is not Reason.API_REJECTED}
