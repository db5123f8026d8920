"""JSON from outside bytes, bounded and total: an answer, a checkpoint, the registry, a summary.

Python's ``json`` recurses once per nesting level and reads whatever size it is handed, so
bytes built to hurt (``[`` a hundred thousand times, a file of gigabytes, invalid UTF-8) raise
``RecursionError`` or exhaust memory far from where they were read. Every reader of bytes this
process did not just write goes through ``loads`` (or ``read_file``), which turns each of
those into ``Unreadable``: a ``ValueError`` whose text is one short line naming the problem,
never the bytes themselves. Callers already treat ``ValueError`` as "not readable JSON".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Deeper than any file or answer backfill reads (the checkpoint's is 3, Mixpanel's 4).
MAX_DEPTH = 64
MiB = 1 << 20


class Unreadable(ValueError):
    """Bytes that are not JSON backfill will read: too deep, too large, not UTF-8, not JSON."""


def loads(data: bytes | str, *, max_bytes: int) -> Any:
    """The JSON value in ``data``; ``Unreadable`` for anything but plain JSON within bounds."""
    if len(data) > max_bytes:
        raise Unreadable(f"larger than {_size(max_bytes)}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Unreadable(f"not UTF-8 text (at byte {e.start})") from None
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise Unreadable(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        # JSONDecodeError's msg is one line without the position; Python's own refusal of
        # an integer of over 4,300 digits is long and names a setting that is not the fix.
        text = getattr(e, "msg", str(e))
        if "integer string conversion" in text:
            text = "a number of more than 4,300 digits"
        raise Unreadable(f"not JSON ({' '.join(text.split())[:120]})") from None
    if depth_over(value, MAX_DEPTH):
        raise Unreadable(f"nested deeper than {MAX_DEPTH} levels")
    return value


def read_file(path: Path, *, max_bytes: int) -> Any:
    """The JSON in ``path`` (``loads``); reads at most ``max_bytes + 1`` bytes of it.

    ``FileNotFoundError`` and other ``OSError``s pass through: a missing file is not a damaged one.
    """
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    return loads(data, max_bytes=max_bytes)


def depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` deep (no recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n:,} bytes"
