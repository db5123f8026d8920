"""A dataset that refuses to hand out anything but the bytes its first full pass read.

Validation judges the dataset in its first pass; later passes (the reject report, the send
pass) re-read it. A file overwritten in place with the same length between the two would
otherwise send pairs that were never validated. So the first full pass records each chunk's
digest, and every later pass compares: the first chunk that differs raises ``InputChanged``
before any of its rows is handed out, naming the file and its rows.
"""

from __future__ import annotations

from collections.abc import Iterator

from backfill.errors import InputChanged
from backfill.read.chunk import Chunk
from backfill.read.dataset import Dataset


class Verified:
    """``dataset``, its later passes checked chunk by chunk against its first full pass."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._digests: list[bytes] | None = None

    def __call__(self) -> Iterator[Chunk]:
        """Stream the dataset: recording digests the first time, checking them after."""
        return self._record() if self._digests is None else self._verify(self._digests)

    def _record(self) -> Iterator[Chunk]:
        digests = []
        for chunk in self.dataset():
            digests.append(chunk.digest())
            yield chunk
        self._digests = digests

    def _verify(self, digests: list[bytes]) -> Iterator[Chunk]:
        for index, chunk in enumerate(self.dataset()):
            if index >= len(digests) or chunk.digest() != digests[index]:
                name = self.dataset.files[chunk.file_index].name
                last = chunk.file_row + len(chunk) - 1
                raise InputChanged(
                    f"{name} changed since backfill validated it (rows {chunk.file_row:,}-"
                    f"{last:,} of it differ now): nothing from them was sent. Restore the file "
                    "and run the same command again, or pass --restart to validate and send "
                    "what it holds now"
                )
            yield chunk
