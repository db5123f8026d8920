"""Which folder a command writes to, by one rule for every command (``FOLDER_RULE``).

``--out`` wins; without it, the folder of an unfinished run of the same input and project,
wherever that run was started (the ``registry`` remembers it), so "run the same command again"
resumes from any directory; else ``runs/<input name>/`` under the current directory. A
rehearsal never uses a real run's folder (``rehearse.rehearsal_folder``). This module imports
neither pyarrow nor the settings at run time: ``status`` uses it and must stay light.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from backfill.errors import AlreadySent, CheckpointMismatch
from backfill.folder import registry
from backfill.folder.files import prepare_folder, read_json, read_json_dict

if TYPE_CHECKING:
    from backfill.config.settings import Settings
    from backfill.read import Dataset

RUNS_ROOT = Path("runs")
#: The rule, as ``--out --help``, the README and the note of a command print it.
FOLDER_RULE = (
    "without --out, a command uses the folder of the unfinished run of the same input and "
    "project, wherever that run was started, else runs/<input name>/ in the current directory"
)


def locate(
    settings: Settings,
    env: Mapping[str, str],
    dataset: Dataset | None = None,
    *,
    command: str = "validate",
) -> tuple[Settings, str | None]:
    """``settings`` with its run folder decided by ``FOLDER_RULE``, and the line to print when
    that folder is not the default. An in-memory input needs its ``dataset`` (its content
    names it).

    A finished run elsewhere never captures a command, but it is not ignored either: ``run``
    would send the whole input again under a new event time (events Mixpanel then counts
    twice), so it refuses naming that folder; ``verify`` checks that run, which is what it is
    for. SPEC: "the same command from any directory finds the same run, or refuses naming it".
    """
    if settings.out is not None:
        return settings, None
    default = default_folder(settings, dataset)
    key = registry_key(settings, dataset)
    known = registry.unfinished_run(key, settings.project_id, env)
    if known is not None and known != default.resolve():
        note = (
            f"using {known}: it holds the unfinished run of this input and project "
            f"({FOLDER_RULE}; --out DIR chooses another)"
        )
        return replace(settings, out=known), note
    if known is None and command in ("run", "verify"):
        done = registry.finished_run(key, settings.project_id, env)
        if done is not None and done != default.resolve() and not registry.holds_run(default):
            if command == "run" and _sent_to(done) in (None, settings.import_url):
                raise _already_sent(done, settings.project_id)
            if command == "verify":
                return replace(settings, out=done), (
                    f"using {done}: it holds the finished run of this input and project"
                )
    return replace(settings, out=default), None


def _sent_to(folder: Path) -> str | None:
    """The /import URL a finished run sent to (None if its summary cannot say): a run that went
    to a local stand-in is no reason to refuse the real one."""
    summary = read_json_dict(folder / "summary.json")
    url = None if summary is None else summary.get("api_url")
    return url if isinstance(url, str) else None


def _already_sent(folder: Path, project_id: str | None) -> AlreadySent:
    project = f"project {project_id}" if project_id else "this project"
    error = AlreadySent(
        f"this input was already sent to {project} by the finished run in {folder}: the same "
        "command with --out naming that folder sends nothing more (below); to send every "
        "pair again as a new migration (a new event time: Mixpanel counts the events again), "
        "pass --out with a new folder"
    )
    error.fix = (("--out", str(folder)),)
    return error


def default_folder(settings: Settings, dataset: Dataset | None = None) -> Path:
    """``runs/<input name>/``: the name keeps the format (``mappings-csv``, ``mappings-parquet``)
    so two exports of one table never share a folder; a DataFrame is named by its content."""
    if not isinstance(settings.source, tuple):
        digest = _content_digest(dataset)
        return RUNS_ROOT / f"{_slug(type(settings.source).__name__).lower()}-{digest[:12]}"
    return folder_for([str(s) for s in settings.source])


def folder_for(locations: Sequence[str]) -> Path:
    """The default folder of an input given as files, folders, globs or URLs."""
    first = locations[0].rstrip("/")
    name = _slug(first.rsplit("/", 1)[-1] or first)
    more = len(locations) - 1
    return RUNS_ROOT / (name + (f"-and-{more}-more" if more else ""))


def registry_key(settings: Settings, dataset: Dataset | None = None) -> str:
    """The key under which the registry records this input's runs."""
    if not isinstance(settings.source, tuple):
        return "content-" + _content_digest(dataset)
    return registry.key_for([str(s) for s in settings.source])


def prepare(
    settings: Settings,
    dataset: Dataset,
    *,
    command: str,
    record: bool = True,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """The run folder of ``command``, created (0700), passed to ``check`` (which may refuse
    it) and, unless ``record`` is off, recorded for this input."""
    located, _ = locate(settings, os.environ, dataset, command=command)
    assert located.out is not None
    prepare_folder(located.out)
    if check is not None:
        check(located.out)
    if record:
        registry.remember(
            located.out,
            input_key=registry_key(settings, dataset),
            input=_described(settings, dataset),
            project_id=settings.project_id,
            env=os.environ,
        )
    return located.out


def refuse_another_input(out_dir: Path, fingerprint: Callable[[], object]) -> None:
    """A dry run never writes into the folder of another input's run (``fingerprint()`` is the
    checkpoint's ``identity.input`` this input would have, computed only when a run is there):
    that run's rejects.csv is its record of what Mixpanel refused."""
    try:
        data = read_json(out_dir / "checkpoint.json")
        recorded = data["identity"]["input"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no run here (or a damaged one, which `run` refuses in its own words)
    if recorded != fingerprint():
        error = CheckpointMismatch(
            f"{out_dir} holds the run of another input (its files differ): a dry run will not "
            "overwrite that run's reports; pass --out DIR to validate into another folder"
        )
        error.fix = (("--out", f"{out_dir}-dry-run"),)
        raise error


def _described(settings: Settings, dataset: Dataset) -> str:
    if not isinstance(settings.source, tuple):
        return f"a {type(settings.source).__name__} (content {_content_digest(dataset)[:12]})"
    return ", ".join(registry.absolute([str(s) for s in settings.source]))


def _content_digest(dataset: Dataset | None) -> str:
    if dataset is None:
        raise ValueError("an in-memory input is named by its content: pass its dataset")
    files = dataset.fingerprint()["files"]
    return str(files[0].get("sha256", "")) or "unknown"


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")
    return slug or "input"
