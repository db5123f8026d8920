"""A string array's Arrow buffers as numpy views: byte scans and hashes without a Python loop.

Only ``pa.string()`` arrays (32-bit offsets); callers cast other string types first.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa


def string_offsets(values: pa.Array) -> npt.NDArray[np.int32]:
    """The ``len(values) + 1`` offsets of the values into the data buffer (a view, no copy)."""
    buffer = values.buffers()[1]
    if buffer is None:
        return np.zeros(len(values) + 1, dtype=np.int32)
    return np.frombuffer(buffer, dtype="<i4")[values.offset : values.offset + len(values) + 1]


def string_bytes(values: pa.Array) -> npt.NDArray[np.uint8]:
    """The bytes of every value, end to end: data from the first offset to the last (a view)."""
    data = values.buffers()[2] if len(values) else None
    if data is None:
        return np.zeros(0, dtype=np.uint8)
    offsets = string_offsets(values)
    return np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
