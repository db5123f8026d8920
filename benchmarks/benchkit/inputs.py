"""The benchmarks' inputs: realistic mapping files, generated deterministically and reused.

A file is written a million rows at a time, each chunk from its own seed ``(seed, chunk)``,
so it is the same on every machine (see ``benchmarks/README.md``, "The inputs").
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .common import DATA, log

GENERATOR_VERSION = 1
GEN_CHUNK_ROWS = 1_000_000

#: Share of rows per kind of defect (SPEC reasons in brackets).
DUPLICATE_SHARE = 0.01  # exact repeats of an earlier pair [duplicate_pair]
CONFLICT_SHARE = 0.002  # anon id of another user's row [conflicting_anon_id, both rows]
INVALID_ANON_SHARE = 0.005  # v1, bad variant, undashed, braced, truncated, junk [invalid_anon_id]
PLACEHOLDER_SHARE = 0.002  # null, undefined, 0, ... in any case [invalid_identified_id]
UPPERCASE_SHARE = 0.03  # valid upper-case UUIDs
PADDED_SHARE = 0.001  # surrounding spaces, trimmed by the reader (valid)
EMPTY_SHARE = 0.0001  # each of: empty anon, empty identified, whitespace-only [missing_*]
SELF_MERGE_SHARE = 0.00005  # identified id = anon id [self_merge]
LONG_SHARE = 0.00001  # identified id over 255 bytes [invalid_identified_id]
EMAIL_SHARE = 0.3  # users identified by e-mail rather than user_0001234
KIOSK_ANON_IDS = 650  # one shared login per million rows, past the 500-id cluster limit


_Array = TypeVar("_Array", bound="np.ndarray[Any, Any]")


def _frozen(values: _Array) -> _Array:
    """``values``, read-only: a module constant nobody can change in place."""
    values.flags.writeable = False
    return values


ANON_IDS_PER_USER = (
    _frozen(np.arange(1, 6)),
    _frozen(np.array([0.35, 0.25, 0.2, 0.12, 0.08])),
)

_FIRST = (
    "maria", "james", "wei", "fatima", "olga", "juan", "aiko", "noah", "priya", "liam",
    "chloe", "mateo", "sara", "omar", "ines", "lucas", "emma", "ivan", "zoë", "josé", "björn",
    "anna", "kofi", "mia", "yusuf", "elena", "tom", "hana", "raj", "lea",
)  # fmt: skip
_LAST = (
    "garcia", "smith", "chen", "khan", "ivanova", "lopez", "tanaka", "brown", "patel", "murphy",
    "martin", "rossi", "nguyen", "ali", "silva", "müller", "schmidt", "kowalski", "dubois",
    "jensen", "okafor", "sato", "kim", "novak", "costa",
)  # fmt: skip
_DOMAINS = (
    "gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me",
    "example.com", "acme-corp.io", "gmx.de", "web.de",
)  # fmt: skip
_PLACEHOLDER_VALUES = (
    "null", "NULL", "Null", "undefined", "anonymous", "none", "None", "nil", "<nil>", "0", "-1",
    "unknown", "n/a", "N/A", "NaN", "nan", "false", "[]", "{}",
    "00000000-0000-0000-0000-000000000000",
)  # fmt: skip
_JUNK_ANON_IDS = ("undefined", "null", "0", "anonymous", "GA1.2.1234567890.1712345678")
_HEX = _frozen(np.frombuffer(b"0123456789abcdef", dtype=np.uint8).copy())
_UUID_DASHES = (8, 13, 18, 23)
_UUID_HEX_COLUMNS = _frozen(np.array([i for i in range(36) if i not in _UUID_DASHES]))


def _uuid4_strings(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random lower-case UUID v4 strings, built as one fixed-width byte buffer."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # variant 10xx: 8, 9, a or b
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_COLUMNS] = _HEX[nibbles]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())]
    )


def _digits(values: npt.NDArray[np.int64], width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")


def _pick(rng: np.random.Generator, choices: tuple[str, ...], n: int) -> pa.Array:
    """``n`` values drawn from ``choices``."""
    return pa.array(choices).take(pa.array(rng.integers(0, len(choices), n)))


def _identified_ids(rng: np.random.Generator, user_numbers: npt.NDArray[np.int64]) -> pa.Array:
    """One identified id per user: ``user_0001234``, or an e-mail address made unique by the
    user's number."""
    n = len(user_numbers)
    numbered = pc.binary_join_element_wise("user_", _digits(user_numbers, 7), "")
    first = _pick(rng, _FIRST, n)
    last = _pick(rng, _LAST, n)
    domain = _pick(rng, _DOMAINS, n)
    number = pc.cast(pa.array(user_numbers), pa.string())
    email = pc.binary_join_element_wise(first, ".", last, number, "@", domain, "")
    return pc.if_else(pa.array(rng.random(n) < EMAIL_SHARE), email, numbered)


def _invalid_anon_ids(rng: np.random.Generator, valid: pa.Array) -> pa.Array:
    """Anon ids an export really holds that are not UUID v4, one kind drawn per value."""
    n = len(valid)
    variants = [
        pc.utf8_replace_slice(valid, 14, 15, "1"),  # UUID v1
        pc.utf8_replace_slice(valid, 19, 20, "c"),  # wrong variant
        pc.replace_substring(valid, "-", ""),  # undashed
        pc.binary_join_element_wise("{", valid, "}", ""),  # braced
        pc.utf8_slice_codeunits(valid, 0, 35),  # truncated
        _pick(rng, _JUNK_ANON_IDS, n),  # not an id at all
    ]
    return pc.choose(pa.array(rng.integers(0, len(variants), n).astype(np.int8)), *variants)


def _replace(values: pa.Array, rows: npt.NDArray[np.int64], new: pa.Array) -> pa.Array:
    """``values`` with the entries at ``rows`` (ascending) replaced by ``new``, in order."""
    mask = np.zeros(len(values), dtype=np.bool_)
    mask[rows] = True
    return pc.replace_with_mask(values, pa.array(mask), new)


def _at(values: pa.Array, where: npt.NDArray[np.int64]) -> pa.Array:
    return values.take(pa.array(where))


class _Spots:
    """Disjoint random rows of a chunk, handed out a share at a time."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.n = n
        self.order = rng.permutation(n)
        self.taken = 0

    def rows(self, share: float) -> npt.NDArray[np.int64]:
        """The next ``share`` of the chunk's rows, ascending."""
        k = round(self.n * share)
        picked = np.sort(self.order[self.taken : self.taken + k]).astype(np.int64)
        self.taken += k
        return picked


def _users(
    rng: np.random.Generator, n_base: int, user_base: int
) -> tuple[pa.Array, pa.Array, pa.Array, npt.NDArray[np.int64], int]:
    """Users with 1-5 anon ids each: (anon, ident, each user's ident, user of row, users)."""
    sizes, weights = ANON_IDS_PER_USER
    per_user = rng.choice(sizes, size=n_base // 2 + 1, p=weights)
    users = int(np.searchsorted(np.cumsum(per_user), n_base)) + 1
    user_of_row = np.repeat(np.arange(users), per_user[:users])[:n_base]
    idents = _identified_ids(rng, np.arange(user_base, user_base + users, dtype=np.int64))
    anon = _uuid4_strings(rng, n_base)
    upper = np.flatnonzero(rng.random(n_base) < UPPERCASE_SHARE)
    anon = _replace(anon, upper, pc.utf8_upper(anon.take(pa.array(upper))))
    ident = idents.take(pa.array(user_of_row))
    return anon, ident, idents, user_of_row, users


def _defects(rng: np.random.Generator, anon: pa.Array, ident: pa.Array) -> pa.Table:
    """Per-row defects on disjoint random rows."""
    spots = _Spots(rng, len(anon))
    bad = spots.rows(INVALID_ANON_SHARE)
    anon = _replace(anon, bad, _invalid_anon_ids(rng, _at(anon, bad)))
    holder = spots.rows(PLACEHOLDER_SHARE)
    ident = _replace(ident, holder, _pick(rng, _PLACEHOLDER_VALUES, len(holder)))
    pad_a, pad_u = spots.rows(PADDED_SHARE / 2), spots.rows(PADDED_SHARE / 2)
    anon = _replace(anon, pad_a, pc.binary_join_element_wise(" ", _at(anon, pad_a), "  ", ""))
    ident = _replace(ident, pad_u, pc.binary_join_element_wise("  ", _at(ident, pad_u), ""))
    for column, blank in (("anon", ""), ("ident", ""), ("anon", "   "), ("ident", " ")):
        where = spots.rows(EMPTY_SHARE / 2)
        new = pa.array([blank] * len(where), pa.string())
        if column == "anon":
            anon = _replace(anon, where, new)
        else:
            ident = _replace(ident, where, new)
    same = spots.rows(SELF_MERGE_SHARE)
    ident = _replace(ident, same, _at(anon, same))
    long = spots.rows(LONG_SHARE)
    jwt = "eyJhbGciOiJIUzI1NiJ9." + "x" * 280
    ident = _replace(ident, long, pa.array([jwt] * len(long), pa.string()))
    return pa.table({"anon_id": anon, "identified_id": ident})


def generate_chunk(rng: np.random.Generator, n: int, user_base: int, chunk: int) -> pa.Table:
    """``n`` rows of realistic mappings; users are numbered from ``user_base``."""
    kiosk = KIOSK_ANON_IDS if n >= 50_000 else 0
    n_dup = round(n * DUPLICATE_SHARE)
    n_conf = round(n * CONFLICT_SHARE)
    n_base = n - n_dup - n_conf - kiosk
    anon, ident, idents, user_of_row, users = _users(rng, n_base, user_base)

    # Duplicates and conflicts copy earlier rows; the kiosk shares one login.
    dup = rng.integers(0, n_base, n_dup)
    conf = rng.integers(0, n_base, n_conf)
    other_user = (user_of_row[conf] + 1 + rng.integers(0, max(users - 1, 1), n_conf)) % users
    kiosk_id = pa.array([f"kiosk-{chunk:04d}@stores.example.com"] * kiosk, pa.string())
    anon = pa.concat_arrays(
        [anon, anon.take(pa.array(dup)), anon.take(pa.array(conf)), _uuid4_strings(rng, kiosk)]
    )
    ident = pa.concat_arrays(
        [ident, ident.take(pa.array(dup)), idents.take(pa.array(other_user)), kiosk_id]
    )
    order = pa.array(rng.permutation(n))
    return _defects(rng, anon.take(order), ident.take(order))


def data_path(rows: int, seed: int, suffix: str = ".csv") -> Path:
    """Where the input of ``rows`` rows lives (generated on first use)."""
    return DATA / f"mappings_{rows}_s{seed}_v{GENERATOR_VERSION}{suffix}"


def _write_chunks(rows: int, seed: int, csv_tmp: Path | None, pq_tmp: Path | None) -> None:
    """Generate ``rows`` rows a chunk at a time into the files asked for (None: not that one)."""
    schema = pa.schema([("anon_id", pa.string()), ("identified_id", pa.string())])
    with contextlib.ExitStack() as stack:
        csv_writer = pq_writer = None
        if csv_tmp is not None:
            sink = stack.enter_context(csv_tmp.open("wb"))
            sink.write(b"anon_id,identified_id\n")
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            csv_writer = stack.enter_context(pacsv.CSVWriter(sink, schema, write_options=options))
        if pq_tmp is not None:
            pq_writer = stack.enter_context(pq.ParquetWriter(pq_tmp, schema))
        for chunk, start in enumerate(range(0, rows, GEN_CHUNK_ROWS)):
            n = min(GEN_CHUNK_ROWS, rows - start)
            table = generate_chunk(np.random.default_rng([seed, chunk]), n, start, chunk)
            if csv_writer is not None:
                csv_writer.write_table(table)
            if pq_writer is not None:
                pq_writer.write_table(table)


def ensure_input(rows: int, seed: int, parquet: bool = False) -> Path:
    """The CSV input of ``rows`` rows (and its Parquet twin if asked), generated if missing.

    Chunks of a million rows are generated with their own seed ``(seed, chunk)``, so a file is
    the same whatever machine writes it; files are written under a temporary name and renamed,
    so a half-written file is never reused.
    """
    csv_path = data_path(rows, seed)
    pq_path = data_path(rows, seed, ".parquet")
    want_pq = parquet and not pq_path.exists()
    if csv_path.exists() and not want_pq:
        return csv_path
    DATA.mkdir(parents=True, exist_ok=True)
    write_csv = not csv_path.exists()
    started = time.monotonic()
    tmp_csv = csv_path.with_suffix(".csv.tmp")
    tmp_pq = pq_path.with_suffix(".parquet.tmp")
    _write_chunks(rows, seed, tmp_csv if write_csv else None, tmp_pq if want_pq else None)
    if write_csv:
        tmp_csv.replace(csv_path)
    if want_pq:
        tmp_pq.replace(pq_path)
    made = [p.name for p, w in ((csv_path, write_csv), (pq_path, want_pq)) if w]
    log(f"generated {', '.join(made)} ({rows:,} rows) in {time.monotonic() - started:.1f} s")
    return csv_path
