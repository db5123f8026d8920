"""The Python API: ``backfill.validate`` and ``backfill.run``, the same paths as the CLI's.

Options are the TOML keys (``anon_column``, ``time_column``, ``rate``, ``id_merge``, …) with
the same checks as the flags; an unknown key gets a "did you mean". Nothing is printed unless
``progress=True`` (a progress line on stderr); every failure is a ``BackfillError``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backfill.commands import pipeline
from backfill.config.settings import (
    Credentials,
    Settings,
    check_project,
    credentials_from_env,
    settings_for,
)
from backfill.errors import ConfigError
from backfill.report.progress import Progress
from backfill.report.summary import Summary

#: What ``source`` may be: a path or URL, several of them, a DataFrame or a pyarrow Table.
SourceLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Any


def validate(
    source: SourceLike,
    *,
    out: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    progress: bool = False,
    **options: Any,
) -> Summary:
    """Read and judge every row of ``source``, write the reports, send nothing.

    Returns the dry run's ``Summary`` (``summary.out`` is the run folder holding
    ``rejects.csv``). Raises ``InputError``/``ConfigError`` (``UsageError``s) for bad input or
    options.
    """
    settings = _settings("validate", source, out, config, progress, options)
    return pipeline.validate(settings, progress=Progress(enabled=progress))


def run(
    source: SourceLike,
    *,
    out: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    credentials: Credentials | None = None,
    progress: bool = False,
    **options: Any,
) -> Summary:
    """Validate ``source``, then send every valid pair to Mixpanel's ``/import``; resumable.

    ``credentials`` defaults to the environment (``MIXPANEL_SERVICE_ACCOUNT_USERNAME`` /
    ``_SECRET`` and ``MIXPANEL_PROJECT_ID``, or ``MIXPANEL_API_SECRET``). Calling it again
    with the same source and ``out`` resumes. Raises ``Aborted`` (the run stopped; its
    ``summary`` attribute holds the Summary) or ``Interrupted``.
    """
    settings = _settings("run", source, out, config, progress, options)
    if credentials is None:
        creds = credentials_from_env(os.environ, settings.project_id)
    elif isinstance(credentials, Credentials):
        creds = credentials
        check_project(creds, settings.project_id)
    else:
        raise ConfigError(
            f"credentials= must be a backfill.Credentials, got {type(credentials).__name__}"
        )
    return pipeline.run(settings, creds, progress=Progress(enabled=progress))


def _settings(
    command: str,
    source: SourceLike,
    out: str | os.PathLike[str] | None,
    config: str | os.PathLike[str] | None,
    progress: bool,
    options: dict[str, Any],
) -> Settings:
    explicit = dict(options)
    if out is not None:
        explicit["out"] = os.fspath(out)
    explicit.setdefault("no_progress", not progress)
    return settings_for(
        command,
        normalize_source(source),
        explicit=explicit,
        config_path=None if config is None else Path(config),
        origin="keyword",
        env=os.environ,
    )


def normalize_source(source: SourceLike) -> Any:
    """Paths and URLs as a tuple of strings; a DataFrame or Table as it is."""
    if isinstance(source, str | os.PathLike):
        return (os.fspath(source),)
    if isinstance(source, Sequence) and all(isinstance(s, str | os.PathLike) for s in source):
        if not source:
            raise ConfigError("source is an empty list: give at least one file, folder or URL")
        return tuple(os.fspath(s) for s in source)
    return source
