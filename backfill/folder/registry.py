"""Which folder holds the run of an input, so the same command finds the same run from anywhere.

Without ``--out`` a run writes to ``runs/<input name>/`` under the current directory. On its
own that would make "run the same command again" from another directory start a second run
from zero. So every ``validate`` and ``run`` records, in a per-user state file, the absolute
folder that holds the run of its input, keyed by the input's absolute locations (resolved
paths; URLs as given) or, for a DataFrame, its content. A later command without ``--out``
that finds its input there uses that folder (and says so), wherever it is started from; the
checkpoint in it then resumes the run, or refuses it naming ``--restart`` if the input or a
setting changed. An explicit ``--out`` always wins.

The state file is ``$BACKFILL_STATE_DIR/runs.json``, else ``$XDG_STATE_HOME/backfill/runs.json``,
else ``~/.local/state/backfill/runs.json``. It holds paths, never ids or secrets. It is a
convenience: when it cannot be read or written, backfill carries on as if it were empty.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backfill.folder.files import PRIVATE_FILE, atomic_write_json

STATE_FILE = "runs.json"
#: Files that make a folder a run folder worth going back to.
_RUN_FILES = ("checkpoint.json", "summary.json")


def state_dir(env: Mapping[str, str]) -> Path:
    """Where the per-user state lives."""
    if env.get("BACKFILL_STATE_DIR"):
        return Path(env["BACKFILL_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "backfill"


def key_for(locations: Sequence[str]) -> str:
    """The registry key of an input: its absolute locations (local paths resolved), sorted."""
    absolute = sorted(
        loc if "://" in loc else str(Path(loc).expanduser().resolve()) for loc in locations
    )
    return hashlib.sha256(json.dumps(absolute).encode()).hexdigest()[:32]


def lookup(key: str, env: Mapping[str, str]) -> Path | None:
    """The run folder recorded for ``key``, if it still holds a run."""
    entry = _read(state_dir(env) / STATE_FILE).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("out"), str):
        return None
    folder = Path(entry["out"])
    return folder if any((folder / f).is_file() for f in _RUN_FILES) else None


def remember(key: str, folder: Path, env: Mapping[str, str]) -> None:
    """Record ``folder`` (made absolute) as the run folder of ``key``; errors are ignored."""
    directory = state_dir(env)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / STATE_FILE
        entries = _read(path)
        entries[key] = {"out": str(folder.resolve()), "updated": round(time.time())}
        atomic_write_json(path, entries)
    except Exception:  # a convenience must never fail the run
        pass
    finally:
        os.close(lock)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
