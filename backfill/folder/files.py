"""The run folder's files: private, durable, and failing in one line.

* Every file holds user ids, so each is created readable by its owner only (0600) and a run
  folder backfill creates is 0700.
* Writes that must survive a crash go through a temp file, fsync, rename and an fsync of the
  folder: a reader (or a rerun after kill -9) sees either the old file or the new one.
* A full disk is an expected failure, not a bug: ``disk_errors`` turns ENOSPC/EDQUOT into
  ``OutOfSpace`` (exit 3; whatever was written before stays consistent) naming the fix.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backfill.errors import ConfigError, OutOfSpace
from backfill.untrusted.boundedjson import MiB, read_file

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700
_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into ``OutOfSpace``, naming the fix."""
    try:
        yield
    except OSError as e:
        if e.errno in _FULL:
            raise OutOfSpace(
                f"no space left on the disk of {path.parent} while writing {path.name}: free "
                "some space (or copy the run folder to a disk with room and pass it as --out), "
                "then run the same command again; the checkpoint is consistent"
            ) from None
        raise


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` (0700) if needed; a file in its place or no write access: ConfigError."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
    except OSError as e:
        raise ConfigError(
            f"cannot create the run folder {folder} ({e.strerror}): choose another --out"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the run folder {folder} is not writable: choose another --out")


def open_private(path: Path, mode: str) -> Any:
    """``open(path, mode)`` for text, the file created 0600 if it is new."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    return os.fdopen(fd, mode, encoding="utf-8", newline="")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (0600)."""
    atomic_write_blocks(path, [data])


def atomic_write_blocks(path: Path, blocks: Iterable[bytes]) -> None:
    """Replace ``path`` with ``blocks`` one after another, atomically and durably (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with disk_errors(path):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(fd, "wb") as f:
                for block in blocks:
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically and durably."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: No file of a run folder comes near this: a checkpoint's done spans take a few KiB.
MAX_JSON_FILE_BYTES = 64 * MiB


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if the file does not exist.

    Bounded (``boundedjson``): a file too deep, too large or not UTF-8 JSON raises
    ``Unreadable``, a ``ValueError`` of one line.
    """
    try:
        return read_file(path, max_bytes=MAX_JSON_FILE_BYTES)
    except FileNotFoundError:
        return None


def read_json_dict(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if it is missing, unreadable or not an object.

    For readers that only report (status, a dry run's summary): a damaged file is theirs to
    skip, not to fail on; a run that must resume from it reads it with ``read_json``.
    """
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


#: What a spreadsheet runs as a formula when a cell starts with it (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a leading ``'`` where it would run it."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def formula_unsafe(text: str) -> str:
    """The cell as it was before ``formula_safe``: without the ``'`` that marks it as text."""
    return text[1:] if text.startswith("'") and text[1:2].startswith(FORMULA_STARTS) else text
