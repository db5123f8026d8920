"""Event times: parse epoch seconds, epoch milliseconds or ISO 8601 into integer milliseconds.

A number of 1e11 or more is milliseconds, anything smaller seconds: 1e11 seconds lies in the
year 5138, and 1e11 milliseconds in 1973, so the only values read the "wrong" way round are
millisecond times from 1971-1973. An ISO 8601 time without a zone is UTC. Valid times are at
or after 1971-01-01T00:00:00Z and not after the moment the run started.

Epoch microseconds and nanoseconds (a plain integer column from a warehouse, not a timestamp
type) are not units the contract knows: read as milliseconds they lie thousands of years
ahead. Such numbers (16 digits and more) get a status of their own, so that the reject's detail
names the unit the value most likely has and the fix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backfill.mixpanel import MIN_TIME_MS, MS_THRESHOLD

MIN_MS = MIN_TIME_MS
# At most 18 integer and 9 fraction digits: exact in int64 and decimal128(27, 9); a longer
# number is no epoch time.
_NUMBER = r"^-?[0-9]{1,18}(\.[0-9]{1,9})?$"
_DECIMAL = pa.decimal128(27, 9)
_NANOS_TEXT = r"^[0-9]{19}$"


class TimeStatus(IntEnum):
    """Why a time value is not usable; OK (0) when it is."""

    OK = 0
    MISSING = 1
    UNPARSEABLE = 2
    TOO_EARLY = 3
    FUTURE = 4
    MICROSECONDS = 5
    NANOSECONDS = 6


#: A number at or above this, read as milliseconds, is past the year 5138: microseconds, most
#: likely (now is about 1.7e15 in microseconds); at or above _NANOS_FROM, nanoseconds.
_MICROS_FROM = 10**14
_NANOS_FROM = 10**17


def now_ms() -> int:
    """The current time in epoch milliseconds."""
    return int(datetime.now(UTC).timestamp() * 1000)


def to_epoch_ms(values: pa.Array, now: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Epoch milliseconds for each value, and a TimeStatus per value (ms is 0 unless OK)."""
    n = len(values)
    ms = np.zeros(n, dtype=np.int64)
    status = np.full(n, TimeStatus.UNPARSEABLE, dtype=np.uint8)
    typ = values.type
    if pa.types.is_dictionary(typ):
        values = values.dictionary_decode()
        typ = values.type
    present = _bool(pc.is_valid(values))
    numeric = np.zeros(n, dtype=np.bool_)
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        # Sub-millisecond parts are dropped (safe=False), not refused.
        stamp = pc.cast(values, pa.timestamp("ms", tz=getattr(typ, "tz", None)), safe=False)
        parsed = _int64(pc.cast(stamp, pa.int64()))
        ms[present] = parsed[present]
        status[present] = TimeStatus.OK
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
        # Unsafe: integers past 2**53 (nanoseconds) lose low digits instead of failing; every
        # valid time is far below that, so valid values stay exact.
        numbers = pc.cast(values, pa.float64(), safe=False)
        numbers = numbers.fill_null(0.0).to_numpy(zero_copy_only=False)
        finite = present & np.isfinite(numbers)
        ms[finite] = _scale_float(numbers[finite])
        status[finite] = TimeStatus.OK
        numeric = finite
    else:
        numeric = _parse_text(values, present, ms, status)
    status[~present] = TimeStatus.MISSING
    ok = status == TimeStatus.OK
    status[ok & (ms < MIN_MS)] = TimeStatus.TOO_EARLY
    future = ok & (ms > now)
    status[future] = TimeStatus.FUTURE
    status[future & numeric & (ms >= _MICROS_FROM)] = TimeStatus.MICROSECONDS
    status[future & numeric & (ms >= _NANOS_FROM)] = TimeStatus.NANOSECONDS
    ms[status != TimeStatus.OK] = 0
    return ms, status


def parse_one(text: str, now: int) -> tuple[int, TimeStatus]:
    """Parse a single time (e.g. ``--event-time``) the same way as a column value."""
    ms, status = to_epoch_ms(pa.array([text.strip() or None], pa.string()), now)
    return int(ms[0]), TimeStatus(int(status[0]))


def describe(status: TimeStatus, raw: str) -> str:
    """The ``detail`` text of an ``invalid_time`` reject."""
    if status is TimeStatus.MISSING:
        return "time is empty"
    if status is TimeStatus.UNPARSEABLE:
        return f"unparseable time {raw!r} (use epoch seconds, epoch ms or ISO 8601)"
    if status is TimeStatus.TOO_EARLY:
        return f"time {raw!r} is before 1971-01-01"
    if status is TimeStatus.MICROSECONDS:
        return (
            f"time {raw!r} looks like epoch microseconds (as milliseconds it is far in the "
            "future): convert it to milliseconds (divide by 1,000)"
        )
    if status is TimeStatus.NANOSECONDS:
        return (
            f"time {raw!r} looks like epoch nanoseconds (as milliseconds it is far in the "
            "future): convert it to milliseconds (divide by 1,000,000)"
        )
    return f"time {raw!r} is in the future"


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC string, for messages and summaries."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _parse_text(
    values: pa.Array,
    present: npt.NDArray[np.bool_],
    ms: npt.NDArray[np.int64],
    status: npt.NDArray[np.uint8],
) -> npt.NDArray[np.bool_]:
    """Parse text times into ``ms``/``status``; which values were plain numbers."""
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    numeric = _bool(pc.match_substring_regex(values, _NUMBER)) & present
    if numeric.any():
        # Decimal, not float: "135038998.943" must give exactly 135038998943 ms.
        exact = pc.cast(pc.filter(values, _arrow_mask(numeric)), _DECIMAL)
        big = _bool(pc.greater_equal(pc.abs(exact), MS_THRESHOLD))
        whole = pc.cast(exact, pa.int64(), safe=False).to_numpy(zero_copy_only=False)
        milli = pc.cast(
            pc.multiply(exact, pa.scalar(1000, pa.decimal128(4, 0))), pa.int64(), safe=False
        ).to_numpy(zero_copy_only=False)
        ms[numeric] = np.where(big, whole, milli)
        status[numeric] = TimeStatus.OK
    textual = present & ~numeric
    if textual.any():
        import pandas as pd  # only runs with ISO times; keeps start-up light otherwise

        texts = pc.filter(values, _arrow_mask(textual)).to_pandas()
        stamps = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
        good = stamps.notna().to_numpy()
        idx = np.flatnonzero(textual)
        # Milliseconds hold any year pandas can parse; nanoseconds overflow past 2262.
        ms[idx[good]] = stamps[good].dt.as_unit("ms").array.asi8
        status[idx[good]] = TimeStatus.OK
        # 19 digits is past what the number pattern reads exactly: nanoseconds, by its size.
        nanos = _bool(pc.match_substring_regex(values, _NANOS_TEXT)) & textual
        status[nanos] = TimeStatus.NANOSECONDS
    return numeric


def _scale_float(numbers: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    # Floats are inexact: round to the nearest millisecond, and clip what int64 cannot hold
    # (such values are far in the future or past anyway).
    big = np.abs(numbers) >= MS_THRESHOLD
    scaled = np.where(big, numbers, numbers * 1000.0)
    return np.clip(np.rint(scaled), -(2.0**62), 2.0**62).astype(np.int64)


def _arrow_mask(mask: npt.NDArray[np.bool_]) -> pa.Array:
    return pa.array(mask, pa.bool_())


def _bool(values: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.bool_)


def _int64(values: pa.Array) -> npt.NDArray[np.int64]:
    return np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
