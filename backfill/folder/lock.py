"""The lock on a run folder: one command at a time.

``.lock`` holds an exclusive ``flock`` for the life of a command. The kernel drops it when
the process dies, however it dies, so a stale lock from a killed run is simply taken over. It
is opened without following symlinks: a link planted as ``.lock`` never truncates its target.
``status`` asks whether a command is active with a shared lock held for an instant.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from backfill.errors import RunLocked
from backfill.untrusted.boundedjson import loads

LOCK_FILE = ".lock"


class FolderLock:
    """An exclusive ``flock`` on ``--out/.lock`` for the life of a command."""

    def __init__(self, out_dir: Path, *, command: str) -> None:
        self.path = out_dir / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: a symlink planted as .lock must not make us truncate its target.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise RunLocked(
                f"cannot open the lock {self.path} ({e.strerror}): if it is a symlink, remove "
                "it; else choose another --out"
            ) from None
        if not _try_flock(fd, fcntl.LOCK_EX):
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise RunLocked(
                f"another backfill {holder} is using {self.path.parent}: wait for it to "
                "finish (see `backfill status`), or pass another --out"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def active_holder(out_dir: Path) -> dict[str, Any] | None:
    """Who holds the lock on ``out_dir`` right now, or None if no command is active."""
    path = out_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock (or a symlink planted as one): no backfill command holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        return holder or {}
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return None


def _try_flock(fd: int, kind: int, attempts: int = 5) -> bool:
    # `status` holds a shared lock for an instant to ask whether a run is active; a few
    # short retries keep such a glance from refusing a run that starts at that moment.
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = loads(os.pread(fd, 4096, 0) or b"{}", max_bytes=4096)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "process"
    return f"{holder.get('command', 'run')} (pid {holder.get('pid')} on {holder.get('host')})"
