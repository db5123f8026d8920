"""Build and encode the events of each ID merge mode: vectorised JSON, stable ``$insert_id``, gzip.

The events (SPEC, "Events sent")::

    original:    {"event":"$identify","properties":{"$anon_id":A,"$identified_id":U,
                  "distinct_id":U,"time":T,"$insert_id":I,"token":TOKEN}}
    original, an anon id that is no UUID v4 under --non-uuid-anon merge:
                 {"event":"$merge","properties":{"$distinct_ids":[U,A],"distinct_id":U,
                  "time":T,"$insert_id":I,"token":TOKEN}}
    simplified:  {"event":E,"properties":{"$device_id":D,"$user_id":U,"distinct_id":U,
                  "time":T,"$insert_id":I,"token":TOKEN}}   (D: A less one leading $device:)

Everything is built per batch with pyarrow string kernels rather than per event in Python:
the JSON of all events is one ``binary_join_element_wise`` over columns, and the request body
is that array's byte buffer with commas between events. Only identified ids that need JSON
escaping (a quote, a backslash or a control character: rare) go through ``json.dumps``.

``$insert_id`` is 32 hex digits of a 128-bit hash of the pair and the event kind alone
(``$identify``: ``A + "\\n" + U``, as ever; ``$merge``: ``"$merge\\n" + A + "\\n" + U``; a
pairing: ``"pair\\n" + D + "\\n" + U``), so a pair has the same id in every run, every resend
and every version of this tool (a test pins known values): Mixpanel counts events with equal
(event, time, distinct_id, $insert_id) once, which makes resending safe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip

from backfill.arrays.buffers import string_offsets
from backfill.arrays.hashing import hash_strings_seeds
from backfill.mixpanel import IDENTIFY_ANON_PATTERN, IdMerge
from backfill.validation.rules import ORIGINAL, Rules, device_ids

MAX_BATCH_BYTES = 2_000_000  # "2 MB" of uncompressed JSON, under 2 MiB as well
# ISA-L's igzip at level 1: measured 0.54 µs per event against zlib level 1's 1.45 µs, and
# smaller output (53 against 60 bytes per event); gzip was two thirds of the send path's CPU.
GZIP_LEVEL = 1
_INSERT_ID_SEEDS = (0x1D3A_7E5B, 0x62C9_0F41)
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Pairs:
    """Valid pairs to send: source row, anon id, identified id and time (ms) of each."""

    rows: I64
    anon: pa.Array
    identified: pa.Array
    times_ms: I64

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, start: int, stop: int) -> Pairs:
        """Pairs ``start`` to ``stop`` (zero-copy)."""
        return Pairs(
            self.rows[start:stop],
            self.anon.slice(start, stop - start),
            self.identified.slice(start, stop - start),
            self.times_ms[start:stop],
        )

    @staticmethod
    def concat(parts: list[Pairs]) -> Pairs:
        """One Pairs from several, in order."""
        if len(parts) == 1:
            return parts[0]
        return Pairs(
            np.concatenate([p.rows for p in parts]),
            pa.concat_arrays([p.anon for p in parts]),
            pa.concat_arrays([p.identified for p in parts]),
            np.concatenate([p.times_ms for p in parts]),
        )


@dataclass(frozen=True)
class Batch:
    """One request's worth of events, with the source row of each for mapping answers back."""

    pairs: Pairs
    insert_ids: pa.Array
    body: bytes  # gzip of the JSON array
    json_bytes: int
    #: The source rows this batch settles in the checkpoint, first and last inclusive. The
    #: producer makes spans tile the file (a span starts right after the previous one ends),
    #: so rejected rows between batches are covered and the done set stays a few intervals.
    span: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def first_row(self) -> int:
        """The source row of the first event."""
        return int(self.pairs.rows[0])

    @property
    def last_row(self) -> int:
        """The source row of the last event."""
        return int(self.pairs.rows[-1])


class Encoder:
    """Turns Pairs into Batches under the event-count and byte limits; settings fixed once."""

    def __init__(
        self,
        *,
        token: str | None,
        batch_size: int,
        max_bytes: int = MAX_BATCH_BYTES,
        gzip_level: int = GZIP_LEVEL,
        rules: Rules = ORIGINAL,
        pairing_event: str | None = None,
    ) -> None:
        """``rules`` say which events the pairs become; ``pairing_event`` names Simplified's."""
        simplified = rules.id_merge is IdMerge.SIMPLIFIED
        if simplified and pairing_event is None:
            raise ValueError("Simplified ID Merge sends a pairing event: pass pairing_event")
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.gzip_level = gzip_level
        token_part = "" if token is None else ',"token":' + json.dumps(token, ensure_ascii=False)
        self._suffix = '"' + token_part + "}},"
        self._pairing = json.dumps(pairing_event or "", ensure_ascii=False)
        # Resolved once: the hot path takes no decision the settings already took.
        self._build = (
            self._pairings
            if simplified
            else self._identifies_or_merges
            if rules.non_uuid_anon == "merge"
            else self._identifies
        )

    def event_json(self, pairs: Pairs) -> tuple[pa.Array, pa.Array]:
        """The JSON text of each event (each followed by a comma), and its ``$insert_id``."""
        return self._build(pairs)

    def _identifies(self, pairs: Pairs) -> tuple[pa.Array, pa.Array]:
        ids = insert_ids(pairs.anon, pairs.identified)
        ident = _json_strings(pairs.identified)
        # A UUID v4 (with or without $device:) needs no escaping: no per-value check here.
        head = [
            '{"event":"$identify","properties":{"$anon_id":"',
            pairs.anon,
            '","$identified_id":',
            ident,
            ',"distinct_id":',
            ident,
        ]
        return self._event(head, pairs, ids), ids

    def _merges(self, pairs: Pairs) -> tuple[pa.Array, pa.Array]:
        ids = insert_ids(pairs.anon, pairs.identified, kind="$merge")
        ident = _json_strings(pairs.identified)
        head = [
            '{"event":"$merge","properties":{"$distinct_ids":[',
            ident,
            ",",
            _json_strings(pairs.anon),
            '],"distinct_id":',
            ident,
        ]
        return self._event(head, pairs, ids), ids

    def _identifies_or_merges(self, pairs: Pairs) -> tuple[pa.Array, pa.Array]:
        merge = merge_mask(pairs.anon)
        if not merge.any():
            return self._identifies(pairs)
        if merge.all():
            return self._merges(pairs)
        (identify_json, identify_ids), (merge_json, merge_ids) = (
            self._identifies(pairs),
            self._merges(pairs),
        )
        chosen = pa.array(merge)
        return pc.if_else(chosen, merge_json, identify_json), pc.if_else(
            chosen, merge_ids, identify_ids
        )

    def _pairings(self, pairs: Pairs) -> tuple[pa.Array, pa.Array]:
        device = device_ids(pairs.anon)
        ids = insert_ids(device, pairs.identified, kind="pair")
        ident = _json_strings(pairs.identified)
        head = [
            '{"event":' + self._pairing + ',"properties":{"$device_id":',
            _json_strings(device),
            ',"$user_id":',
            ident,
            ',"distinct_id":',
            ident,
        ]
        return self._event(head, pairs, ids), ids

    def _event(self, head: list[pa.Array | str], pairs: Pairs, ids: pa.Array) -> pa.Array:
        """Each event's JSON: ``head`` (its name and ids), then what every kind ends with."""
        return pc.binary_join_element_wise(
            *head,
            ',"time":',
            pc.cast(pa.array(pairs.times_ms), pa.string()),
            ',"$insert_id":"',
            ids,
            self._suffix,
            "",
        )

    def batches(self, pairs: Pairs) -> Iterator[Batch]:
        """Cut ``pairs`` into batches of at most batch_size events and max_bytes of JSON."""
        if len(pairs) == 0:
            return
        events, ids = self.event_json(pairs)
        offsets = _offsets(events)
        start = 0
        n = len(pairs)
        while start < n:
            stop = min(n, start + self.batch_size)
            # Each event costs its text (comma included, which the brackets replace).
            limit = offsets[start] + self.max_bytes - 1
            fit = int(np.searchsorted(offsets, limit, side="right")) - 1
            stop = max(start + 1, min(stop, fit))
            yield self._batch(
                pairs.slice(start, stop),
                ids.slice(start, stop - start),
                events,
                start,
                stop,
                offsets,
            )
            start = stop

    def split(self, batch: Batch, at: int | None = None) -> tuple[Batch, Batch]:
        """The batch cut before event ``at`` (default: in half), both parts re-encoded.

        The halves after a 413; ``at=1`` cuts off the canary. The spans still tile the batch's.
        """
        cut = len(batch) // 2 if at is None else at
        if not 0 < cut < len(batch):
            raise ValueError(f"cannot split a batch of {len(batch)} events at {cut}")
        first = self._encode(batch.pairs.slice(0, cut))
        second = self._encode(batch.pairs.slice(cut, len(batch)))
        start, end = batch.span
        return (
            replace(first, span=(start, first.last_row)),
            replace(second, span=(first.last_row + 1, end)),
        )

    def _encode(self, pairs: Pairs) -> Batch:
        events, ids = self.event_json(pairs)
        return self._batch(pairs, ids, events, 0, len(pairs), _offsets(events))

    def _batch(
        self,
        pairs: Pairs,
        ids: pa.Array,
        events: pa.Array,
        start: int,
        stop: int,
        offsets: I64,
    ) -> Batch:
        data = events.buffers()[2]
        lo, hi = int(offsets[start]), int(offsets[stop])
        # The events' bytes end with a comma: it becomes the closing bracket.
        body = b"[" + memoryview(data)[lo : hi - 1].tobytes() + b"]"
        return Batch(pairs, ids, gzip_bytes(body, self.gzip_level), len(body))


def gzip_bytes(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """``data`` in gzip format (``Content-Encoding: gzip``)."""
    packed: bytes = igzip.compress(data, level)
    return packed


def insert_ids(anon: pa.Array, identified: pa.Array, *, kind: str = "") -> pa.Array:
    """32 lowercase hex digits per pair, a function of the pair and the event kind alone.

    ``$identify`` (``kind=""``) keeps the ids of every earlier version: ``A + "\\n" + U``.
    """
    keys = pc.binary_join_element_wise(anon, identified, "\n")
    if kind:
        keys = pc.binary_join_element_wise(kind, keys, "\n")
    n = len(keys)
    digest = np.empty((n, 2), dtype=">u8")
    digest[:, 0], digest[:, 1] = hash_strings_seeds(keys, _INSERT_ID_SEEDS)
    raw = digest.view(np.uint8).reshape(n, 16)
    text = np.empty((n, 32), dtype=np.uint8)
    text[:, 0::2] = _HEX[raw >> 4]
    text[:, 1::2] = _HEX[raw & 0x0F]
    offsets = pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32).tobytes())
    return pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(text.tobytes())])


def merge_mask(anon: pa.Array) -> npt.NDArray[np.bool_]:
    """Which anon ids ``$identify`` cannot merge (not a UUID v4, with or without $device:)."""
    matches = pc.match_substring_regex(anon, IDENTIFY_ANON_PATTERN).fill_null(False)
    return ~np.asarray(matches.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _json_strings(values: pa.Array) -> pa.Array:
    """Each value as a JSON string literal (quotes included), escaping only where needed."""
    quoted = pc.binary_join_element_wise('"', values, '"', "")
    escape = values.fill_null("") if values.null_count else values
    needs = np.asarray(
        pc.match_substring_regex(escape, _NEEDS_ESCAPE).to_numpy(zero_copy_only=False),
        dtype=np.bool_,
    )
    if not needs.any():
        return quoted
    fixed = quoted.to_pylist()
    for i in np.flatnonzero(needs).tolist():
        fixed[i] = json.dumps(values[i].as_py(), ensure_ascii=False)
    return pa.array(fixed, pa.string())


def _offsets(values: pa.Array) -> I64:
    return string_offsets(values).astype(np.int64)
