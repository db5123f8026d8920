"""The per-row rules (SPEC 1-5 and ``invalid_time``), by ID merge system, and each reject's detail.

Vectorised over a chunk with pyarrow compute. What an anon id must be depends on the system
the events go to (SPEC, "Per ID merge system"):

* original: a UUID v4, bare or after ``$device:`` (Mixpanel's JS SDK writes it so), compared
  exactly as written; with ``--non-uuid-anon merge`` any other id that is no placeholder and
  fits 255 bytes is kept too, to be sent as ``$merge``;
* simplified: any id that is no placeholder and fits 255 bytes; one leading ``$device:`` is
  not part of the device (the caller strips it before the rules, see ``device_ids``).

Both ids, in every system, are refused when they hold a line break or a NUL, or are made only
of control or invisible characters (ZWSP, BOM, ESC, …): no real id looks like that, and such
a value is usually a broken export.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.mixpanel import (
    DEVICE_PREFIX,
    IDENTIFY_ANON_PATTERN,
    MAX_CLUSTER_SIZE,
    MAX_ID_BYTES,
    PLACEHOLDER_DISTINCT_IDS,
    IdMerge,
)
from backfill.read import Chunk, ChunkSource
from backfill.read.chunk import unusual_rows
from backfill.validation.reasons import Reason
from backfill.validation.times import TimeStatus, to_epoch_ms

#: Values refused as an id (compared case-insensitively): Mixpanel's placeholders, and ``nan``.
PLACEHOLDERS = PLACEHOLDER_DISTINCT_IDS | {"nan"}
DEFAULT_MAX_CLUSTER_SIZE = MAX_CLUSTER_SIZE
_PLACEHOLDER_ARRAY = pa.array(sorted(PLACEHOLDERS), pa.string())
_BROKEN = r"[\n\r\x00]"
#: A line break or NUL anywhere, or only control (Cc), format (Cf: ZWSP, BOM, …) and
#: separator characters.
_BROKEN_OR_INVISIBLE = _BROKEN + r"|^[\p{Cc}\p{Cf}\p{Z}]+$"
_UUID_SHAPE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


@dataclass(frozen=True)
class Rules:
    """Which anon ids are valid: by ID merge system, and what Original does with legacy ids."""

    id_merge: IdMerge
    #: What Original does with an anon id that is no UUID v4: ``refuse`` it, or ``merge`` it.
    non_uuid_anon: str

    @property
    def uuid_only(self) -> bool:
        """Whether an anon id must be a UUID v4 (Original ID Merge, legacy ids refused)."""
        return self.id_merge is IdMerge.ORIGINAL and self.non_uuid_anon == "refuse"


#: The default: Original ID Merge, anon ids that are no UUID v4 refused.
ORIGINAL = Rules(IdMerge.ORIGINAL, "refuse")


def row_reasons(
    chunk: Chunk,
    now_ms: int,
    rules: Rules = ORIGINAL,
    *,
    times: tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]] | None = None,
) -> npt.NDArray[np.uint8]:
    """The first failing per-row rule of each row (SPEC 1-5, then invalid_time), or VALID.

    ``times``: the chunk's times already parsed by ``to_epoch_ms`` (a caller that keeps them).
    """
    anon, ident = chunk.anon, chunk.identified
    # SPEC: an anon id that is empty once one leading ``$device:`` is stripped is missing, in
    # both systems (else Simplified would send ``"$device_id": ""``, one "device" shared by
    # every such row). Simplified's chunks come stripped (``devices``), Original's as written.
    bare = "" if rules.id_merge is IdMerge.SIMPLIFIED else DEVICE_PREFIX
    missing_anon = bool_mask(anon.is_null()) | bool_mask(pc.equal(anon, bare))
    if rules.uuid_only:
        # Anchored at both ends, the pattern refuses line breaks, NULs and invisibles too.
        bad_anon = ~bool_mask(pc.match_substring_regex(anon, IDENTIFY_ANON_PATTERN))
    else:
        bad_anon = _unusable(anon)
    missing_ident = bool_mask(ident.is_null())
    bad_ident = _unusable(ident)
    self_merge = bool_mask(pc.equal(anon, ident))
    reasons = np.zeros(len(chunk), dtype=np.uint8)
    # Later rules first, so that each earlier rule overwrites: a row keeps its first failure.
    if chunk.time is not None:
        _, status = times if times is not None else to_epoch_ms(chunk.time, now_ms)
        reasons[status != TimeStatus.OK] = Reason.INVALID_TIME
    reasons[self_merge] = Reason.SELF_MERGE
    reasons[bad_ident] = Reason.INVALID_IDENTIFIED_ID
    reasons[missing_ident] = Reason.MISSING_IDENTIFIED_ID
    reasons[bad_anon] = Reason.INVALID_ANON_ID
    reasons[missing_anon] = Reason.MISSING_ANON_ID
    return reasons


def devices(source: ChunkSource) -> ChunkSource:
    """``source`` with each anon id as Simplified ID Merge compares it: one ``$device:`` less."""

    def stripped() -> Iterator[Chunk]:
        for chunk in source():
            yield replace(chunk, anon=device_ids(chunk.anon))

    return stripped


def device_ids(anon: pa.Array) -> pa.Array:
    """Each anon id less one leading ``$device:``, as Simplified ID Merge's ingest reads it."""
    prefix = "^" + re.escape(DEVICE_PREFIX)
    return pc.replace_substring_regex(anon, prefix, "", max_replacements=1)


def _unusable(ids: pa.Array) -> npt.NDArray[np.bool_]:
    """A placeholder (any ASCII case), over 255 bytes, or a broken or invisible value."""
    # ASCII folding only: every placeholder is ASCII, and Unicode folding would turn e.g. a
    # Turkish dotted capital I into "i".
    placeholder = bool_mask(pc.is_in(pc.ascii_lower(ids), value_set=_PLACEHOLDER_ARRAY))
    too_long = bool_mask(pc.greater(pc.binary_length(ids), MAX_ID_BYTES))
    return placeholder | too_long | _broken(ids)


def _broken(ids: pa.Array) -> npt.NDArray[np.bool_]:
    if not pa.types.is_string(ids.type):
        return bool_mask(pc.match_substring_regex(ids, _BROKEN_OR_INVISIBLE))
    unusual = unusual_rows(ids)
    broken = np.zeros(len(ids), dtype=np.bool_)
    if len(unusual):
        suspects = ids.take(pa.array(unusual))
        broken[unusual] = bool_mask(pc.match_substring_regex(suspects, _BROKEN_OR_INVISIBLE))
    return broken


def bool_mask(values: pa.Array) -> npt.NDArray[np.bool_]:
    """A pyarrow boolean array as numpy booleans, null as False."""
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.bool_)


# --- details for the rejects report --------------------------------------------------------


def describe(
    reason: Reason,
    anon: str | None,
    ident: str | None,
    *,
    rules: Rules = ORIGINAL,
    first_row: int | str = 0,
    time_detail: str = "",
    max_cluster_size: int | None = DEFAULT_MAX_CLUSTER_SIZE,
) -> str:
    """The human ``detail`` column of a rejected row."""
    if reason is Reason.MISSING_ANON_ID:
        if anon:
            return f"anon id is only the prefix {anon!r}, with no id after it"
        return "anon id is empty"
    if reason is Reason.INVALID_ANON_ID:
        return _describe_anon(anon or "", rules)
    if reason is Reason.MISSING_IDENTIFIED_ID:
        return "identified id is empty"
    if reason is Reason.INVALID_IDENTIFIED_ID:
        return _describe_unusable("identified id", ident or "")
    if reason is Reason.SELF_MERGE:
        return "identified id equals anon id"
    if reason is Reason.INVALID_TIME:
        return time_detail
    if reason is Reason.CONFLICTING_ANON_ID:
        return f"anon id also maps to another identified id at row {first_row}"
    if reason is Reason.DUPLICATE_PAIR:
        return f"repeats the pair of row {first_row}"
    if reason is Reason.CLUSTER_LIMIT and max_cluster_size is not None:
        return (
            f"identified id already has {max_cluster_size - 1} anon ids "
            f"(cluster limit {max_cluster_size} ids)"
        )
    return ""


def _describe_unusable(what: str, text: str) -> str:
    size = len(text.encode("utf-8"))
    if re.search(r"[\n\r]", text):
        return f"{what} holds a line break: an unclosed quote in the export, or a broken value"
    if "\x00" in text:
        return f"{what} holds a NUL character: the export is damaged, or not text"
    if size > MAX_ID_BYTES:
        return f"{what} is {size} bytes long; Mixpanel allows {MAX_ID_BYTES}"
    if text.lower() in PLACEHOLDERS:
        return f"{what} {text!r} is a placeholder Mixpanel refuses"
    return f"{what} {text!r} is only invisible or control characters"


def _describe_anon(anon: str, rules: Rules) -> str:
    if rules.id_merge is IdMerge.SIMPLIFIED and anon.startswith(DEVICE_PREFIX):
        # Simplified judges the id its ingest reads, one $device: less: describe that one.
        rest = anon[len(DEVICE_PREFIX) :]
        return _describe_unusable(f"anon id after {DEVICE_PREFIX}", rest)
    if not rules.uuid_only or re.search(_BROKEN, anon):
        return _describe_unusable("anon id", anon)
    if anon.startswith(DEVICE_PREFIX):
        rest = anon[len(DEVICE_PREFIX) :]
        return f"after {DEVICE_PREFIX} (the SDK's prefix, kept as written): {_uuid_problem(rest)}"
    problem = _uuid_problem(anon)
    if anon.lower() in PLACEHOLDERS or _UUID_SHAPE.match(anon):
        return problem
    return problem + "; --non-uuid-anon merge would send it as $merge"


def _uuid_problem(text: str) -> str:
    """Why ``text`` is no UUID v4, in a few words."""
    if not _UUID_SHAPE.match(text):
        return "not a UUID (want 8-4-4-4-12 hex digits)"
    version = text[14]
    if version != "4":
        if set(text) <= {"0", "-"}:
            return "nil UUID, not a UUID v4"
        return f"UUID version {version}, not 4"
    return f"UUID variant {text[19]!r} is not 8, 9, a or b"
