"""Which folder a command writes to: ``--out``, else the one recorded for its input, else
``runs/<input name>/`` (see ``registry`` for why the record exists)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from backfill.config.settings import Settings
from backfill.folder import registry
from backfill.folder.files import prepare_folder
from backfill.read import Dataset

RUNS_ROOT = Path("runs")


def locate(
    settings: Settings, env: Mapping[str, str], dataset: Dataset | None = None
) -> tuple[Settings, str | None]:
    """``settings`` with its run folder decided, and a note when it was found elsewhere.

    ``--out`` wins; else the folder an earlier command on this input recorded, so the same
    command resumes from any directory; else ``runs/<input name>/``. An in-memory input needs
    its ``dataset`` (its content names it).
    """
    if settings.out is not None:
        return settings, None
    default = default_folder(settings, dataset)
    known = registry.lookup(registry_key(settings, dataset), env)
    if known is None:
        return replace(settings, out=default), None
    note = None
    if known != default.resolve():
        note = (
            f"this input's run folder is {known} (recorded by an earlier command): using it; "
            "pass --out to choose another"
        )
    return replace(settings, out=known), note


def default_folder(settings: Settings, dataset: Dataset | None = None) -> Path:
    """``runs/<input name>/``: the name keeps the format (``mappings-csv``, ``mappings-parquet``)
    so two exports of one table never share a folder; a DataFrame is named by its content."""
    if not isinstance(settings.source, tuple):
        digest = _content_digest(dataset)
        return RUNS_ROOT / f"{_slug(type(settings.source).__name__).lower()}-{digest[:12]}"
    first = str(settings.source[0]).rstrip("/")
    name = _slug(first.rsplit("/", 1)[-1] or first)
    more = len(settings.source) - 1
    return RUNS_ROOT / (name + (f"-and-{more}-more" if more else ""))


def registry_key(settings: Settings, dataset: Dataset | None = None) -> str:
    """The key under which the registry records this input's run folder."""
    if not isinstance(settings.source, tuple):
        return "content-" + _content_digest(dataset)
    return registry.key_for([str(s) for s in settings.source])


def prepare(settings: Settings, dataset: Dataset, *, record: bool = True) -> Path:
    """The run folder, created (0700) and, unless ``record`` is off, recorded for this input."""
    located, _ = locate(settings, os.environ, dataset)
    assert located.out is not None
    prepare_folder(located.out)
    if record:
        registry.remember(registry_key(settings, dataset), located.out, os.environ)
    return located.out


def _content_digest(dataset: Dataset | None) -> str:
    if dataset is None:
        raise ValueError("an in-memory input is named by its content: pass its dataset")
    files = dataset.fingerprint()["files"]
    return str(files[0].get("sha256", "")) or "unknown"


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")
    return slug or "input"
