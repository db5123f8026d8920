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
    lines = Lines()
    first = True
    while block := stream.read(block_bytes):
        data = bytes(block)
        if first:
            data = data.removeprefix(_BOM)
            first = False
        for line in lines.feed(data):
            yield line + end
    if (last := lines.end()) is not None:
        yield last


class Lines:
    """Lines from blocks pushed in (``read_lines`` pulls; a network answer pushes).

    A line longer than ``max_line_bytes`` is dropped whole, its parts as they come, so one
    without an end cannot fill the memory; ``dropped`` counts them.
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._max = max_line_bytes
        self._dropping = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines that ``data`` ends (without their ``\\n``), in order."""
        *whole, tail = data.split(b"\n")
        out: list[bytes] = []
        if whole:
            first = self._take(whole[0])
            if first is not None:
                out.append(first)
            out.extend(line for line in whole[1:] if not self._over(len(line)))
        if tail:
            self._keep(tail)
        return out

    def end(self) -> bytes | None:
        """The last line, if the stream ended without a line break after it."""
        if not self._parts and not self._dropping:
            return None
        return self._take(b"")

    def _take(self, part: bytes) -> bytes | None:
        self._keep(part)
        line = None if self._dropping else b"".join(self._parts)
        self._parts, self._size, self._dropping = [], 0, False
        return line

    def _keep(self, part: bytes) -> None:
        if self._dropping:
            return
        self._size += len(part)
        if self._over(self._size):
            self._parts, self._dropping = [], True
        else:
            self._parts.append(part)

    def _over(self, size: int) -> bool:
        if self._max is not None and size > self._max:
            self.dropped += 1
            return True
        return False
