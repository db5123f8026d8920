"""64-bit string hashes, vectorised over Arrow buffers: the validator's fingerprints and the
``$insert_id`` of every event (``events``) come from here, so both hash a string the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.arrays.buffers import string_bytes, string_offsets

U64 = npt.NDArray[np.uint64]
Hasher = Callable[[pa.Array], U64]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: Masks keeping the first k bytes of a little-endian word, for k = 0..8.
_TAIL_MASKS = np.array(
    [0, *((1 << (8 * k)) - 1 for k in range(1, 8)), (1 << 64) - 1], dtype=np.uint64
)


def _fmix(h: U64) -> U64:
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def hash_strings(values: pa.Array, seed: int = 0) -> U64:
    """A 64-bit hash of each string's UTF-8 bytes (nulls hash like empty strings)."""
    return hash_strings_seeds(values, (seed,))[0]


def hash_strings_seeds(values: pa.Array, seeds: tuple[int, ...]) -> list[U64]:
    """One 64-bit hash per string and seed, sharing one pass over the bytes.

    Vectorised over the Arrow buffers: word ``j`` of every string is gathered at once through
    an unaligned 8-byte window view of the data, masked to the string's length, and mixed in,
    with the length folded in first so that trailing NUL bytes cannot alias. Little-endian on
    every machine, so the same string always gets the same value: ``$insert_id`` relies on it.
    """
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    n = len(values)
    if n == 0:
        return [np.zeros(0, dtype=np.uint64) for _ in seeds]
    offsets = string_offsets(values)
    start, end = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(end - start + 8, dtype=np.uint8)
    padded[: end - start] = string_bytes(values)
    windows = np.ndarray((end - start + 1,), dtype="<u8", buffer=padded, strides=(1,))
    at = (offsets[:-1] - start).astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    longest = int(lengths.max())
    folded = lengths.astype(np.uint64) * _M2
    hashes = [np.full(n, np.uint64(seed) ^ _GOLDEN, dtype=np.uint64) ^ folded for seed in seeds]
    with np.errstate(over="ignore"):
        for j in range(0, max(longest, 1), 8):
            # Only strings that still have bytes at j take a round (every string takes the
            # first): a string's hash must not depend on the strings hashed beside it.
            active = (lengths > j) | (j == 0)
            tail = _TAIL_MASKS[np.clip(lengths - j, 0, 8)]
            word = windows[np.minimum(at + j, end - start)] & tail
            hashes = [np.where(active, _fmix(h ^ word) + _GOLDEN, h) for h in hashes]
        return [_fmix(h) for h in hashes]
