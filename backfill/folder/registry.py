"""The runs this user started, wherever they were started: for resuming and for ``status``.

Without ``--out`` a command writes to ``runs/<input name>/`` under the current directory. On
its own that would make "run the same command again" from another directory start a second
run from zero. So every ``validate`` and ``run`` records its folder here, with the input it
read (absolute locations: resolved paths, URLs as given; a DataFrame by its content) and the
project. The record is consulted for one thing only: a command without ``--out`` whose input
and project have an *unfinished* run (a ``checkpoint.json`` whose state is not ``completed``
and whose project is this one) uses that run's folder, so it resumes; anything else (a
finished run, a dry run, another project's run) leaves the command in ``runs/<input name>/``.
``backfill status`` lists every recorded folder that still holds a run.

The state file is ``$BACKFILL_STATE_DIR/runs.json``, else ``$XDG_STATE_HOME/backfill/runs.json``,
else ``~/.local/state/backfill/runs.json``: ``{"runs": {folder: {input_key, input, project_id,
updated}}}``. It holds paths, never ids or secrets. It is a convenience: when it cannot be read
or written, backfill carries on as if it were empty. This module reads files only (``status``
must stay light): the checkpoint's ``state`` and ``identity.project_id`` are read as JSON.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backfill.folder.checkpoint import SendState
from backfill.folder.files import PRIVATE_FILE, atomic_write_json
from backfill.untrusted.boundedjson import MiB, read_file

STATE_FILE = "runs.json"
#: Files that make a folder a run folder worth going back to.
RUN_FILES = ("checkpoint.json", "summary.json")
#: Thousands of runs take a few hundred KiB; a larger file is not one backfill wrote (a
#: checkpoint read here for its state is allowed what the checkpoint reader allows).
_MAX_BYTES = 16 * MiB
_MAX_CHECKPOINT_BYTES = 64 * MiB


@dataclass(frozen=True)
class Entry:
    """One recorded run folder."""

    folder: Path
    input_key: str
    #: How the input reads to a person: its absolute locations, or a DataFrame's digest.
    input: str
    project_id: str | None
    updated: float


def state_dir(env: Mapping[str, str]) -> Path:
    """Where the per-user state lives."""
    if env.get("BACKFILL_STATE_DIR"):
        return Path(env["BACKFILL_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "backfill"


def absolute(locations: Sequence[str]) -> list[str]:
    """An input's locations as recorded: local paths resolved, URLs as given, sorted."""
    return sorted(
        loc if "://" in loc else str(Path(loc).expanduser().resolve()) for loc in locations
    )


def key_for(locations: Sequence[str]) -> str:
    """The registry key of an input: a digest of its absolute locations."""
    return hashlib.sha256(json.dumps(absolute(locations)).encode()).hexdigest()[:32]


def entries(env: Mapping[str, str]) -> list[Entry]:
    """Every recorded folder that still holds a run, newest first."""
    found = [e for e in _read(state_dir(env) / STATE_FILE) if holds_run(e.folder)]
    return sorted(found, key=lambda e: e.updated, reverse=True)


def unfinished_run(input_key: str, project_id: str | None, env: Mapping[str, str]) -> Path | None:
    """The folder of the newest unfinished run of this input and project, if one is recorded."""
    return _newest(input_key, project_id, env, finished=False)


def finished_run(input_key: str, project_id: str | None, env: Mapping[str, str]) -> Path | None:
    """The folder of the newest completed run of this input and project, if one is recorded."""
    return _newest(input_key, project_id, env, finished=True)


def _newest(
    input_key: str, project_id: str | None, env: Mapping[str, str], *, finished: bool
) -> Path | None:
    for entry in entries(env):
        if entry.input_key == input_key and _state(entry.folder, project_id) == (
            SendState.COMPLETED.value if finished else "unfinished"
        ):
            return entry.folder
    return None


def remember(
    folder: Path, *, input_key: str, input: str, project_id: str | None, env: Mapping[str, str]
) -> None:
    """Record ``folder`` (made absolute) as a run of this input and project; errors ignored."""
    directory = state_dir(env)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / STATE_FILE
        # Folders that are gone are dropped as the record is rewritten, so it stays small.
        runs = {str(e.folder): _to_json(e) for e in _read(path) if e.folder.is_dir()}
        entry = Entry(folder.resolve(), input_key, input, project_id, round(time.time()))
        runs[str(entry.folder)] = _to_json(entry)
        atomic_write_json(path, {"runs": runs})
    except (OSError, ValueError):  # a disk or a path that refuses: a convenience, never a failure
        pass
    finally:
        os.close(lock)


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run's files (a checkpoint or a summary)."""
    try:
        return any((folder / f).is_file() for f in RUN_FILES)
    except (OSError, ValueError):  # a path with a NUL byte, or one too long: not a run
        return False


def _state(folder: Path, project_id: str | None) -> str | None:
    """``completed`` or ``unfinished`` for a run of this project in ``folder``; else None."""
    data = _json(folder / "checkpoint.json", _MAX_CHECKPOINT_BYTES)
    identity = data.get("identity")
    if not data or not isinstance(identity, dict) or identity.get("project_id") != project_id:
        return None
    return SendState.COMPLETED.value if data.get("state") == SendState.COMPLETED else "unfinished"


def _to_json(entry: Entry) -> dict[str, Any]:
    return {
        "input_key": entry.input_key,
        "input": entry.input,
        "project_id": entry.project_id,
        "updated": entry.updated,
    }


def _read(path: Path) -> list[Entry]:
    data = _json(path, _MAX_BYTES)
    runs = data.get("runs")
    if isinstance(runs, dict):
        return [e for folder, v in runs.items() if (e := _entry(folder, v)) is not None]
    # The first format: {input key: {"out": folder, "updated": t}}, no project recorded.
    return [
        e
        for key, v in data.items()
        if isinstance(v, dict) and (e := _entry(v.get("out"), {**v, "input_key": key}))
    ]


def _entry(folder: Any, value: Any) -> Entry | None:
    if not isinstance(folder, str) or not isinstance(value, dict):
        return None
    project = value.get("project_id")
    updated = value.get("updated")
    return Entry(
        folder=Path(folder),
        input_key=str(value.get("input_key", "")),
        input=str(value.get("input") or "(not recorded)"),
        project_id=project if isinstance(project, str) else None,
        updated=float(updated) if isinstance(updated, int | float) else 0.0,
    )


def _json(path: Path, max_bytes: int) -> dict[str, Any]:
    try:
        data = read_file(path, max_bytes=max_bytes)
    except (OSError, ValueError):  # missing, damaged, too deep or too large: as if empty
        return {}
    return data if isinstance(data, dict) else {}
