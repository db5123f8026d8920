"""A stream's lines, in time linear in their length however long one line is.

Joining the unfinished tail to each new block (``rest + block``) copies the tail again for
every block: a line of n bytes costs n²/block bytes of copying (a 256 MB line took 32 s, 1 GB
nearly 9 minutes). Here the tail's parts are kept in a list, only the new block is searched
for a line break, and a line is joined once, when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_BOM = b"\xef\xbb\xbf"


def read_lines(stream: Any, block_bytes: int, *, keepends: bool = False) -> Iterator[bytes]:
    """Each line of ``stream`` (a UTF-8 BOM at the start dropped), with its ``\\n`` if
    ``keepends`` (the last line has none if the stream ends without one).

    ``stream`` is a binary stream, Arrow's or Python's: its ``read`` gives bytes or a buffer.
    """
    end = b"\n" if keepends else b""
    parts: list[bytes] = []
    first = True
    while block := stream.read(block_bytes):
        data = bytes(block)
        if first:
            data = data.removeprefix(_BOM)
            first = False
        *whole, tail = data.split(b"\n")
        if whole:
            parts.append(whole[0])
            yield b"".join(parts) + end
            for line in whole[1:]:
                yield line + end
            parts = []
        if tail:
            parts.append(tail)
    if parts:
        yield b"".join(parts)
