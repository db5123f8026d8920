"""The Python API: ``backfill.validate`` and ``backfill.run``, the same paths as the CLI's.

Options are the TOML keys (``anon_column``, ``time_column``, ``rate``, ``id_merge``, …) with
the same checks as the flags; an unknown key gets a "did you mean". Nothing is printed unless
``progress=True`` (a progress line on stderr); every failure is a ``BackfillError``, its
message speaking in keywords (``pass anon_column='NAME'``) where the CLI's names flags: the
one translation happens here, at the boundary (``options.in_keywords``).

For a DataFrame source the Summary keeps the DataFrame's index, so ``summary.rejects()``
names each refused row by its own label, not only by its position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backfill.commands import pipeline
from backfill.config.options import in_keywords
from backfill.config.settings import (
    Credentials,
    Settings,
    check_project,
    credentials_from_env,
    settings_for,
)
from backfill.errors import BackfillError, ConfigError
from backfill.read.memory import is_in_memory
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
    with api_errors(source):
        settings = _settings("validate", source, out, config, progress, options)
        summary = pipeline.validate(settings, progress=_progress(settings, progress))
    return _with_labels(summary, source)


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
    with api_errors(source):
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
        summary = pipeline.run(settings, creds, progress=_progress(settings, progress))
    return _with_labels(summary, source)


@contextlib.contextmanager
def api_errors(source: SourceLike) -> Iterator[None]:
    """Every BackfillError's message in keywords; a stopped run's summary with the labels."""
    try:
        yield
    except BackfillError as e:
        e.args = tuple(in_keywords(a) if isinstance(a, str) else a for a in e.args)
        if e.summary is not None:
            e.summary = _with_labels(e.summary, source)
        raise


def _with_labels(summary: Summary, source: SourceLike) -> Summary:
    """The summary holding a pandas DataFrame source's index (for ``rejects()``)."""
    kind = type(source)
    if kind.__name__ == "DataFrame" and kind.__module__.startswith("pandas"):
        frame: Any = source
        return dataclasses.replace(summary, index_labels=frame.index)
    return summary


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
    if is_in_memory(source):
        return source
    kind = type(source)
    hint = (
        ": a Series is one column; pass a DataFrame of the anon and identified columns, e.g. "
        "pd.DataFrame({'anon_id': anon, 'identified_id': ids})"
        if kind.__name__ == "Series"
        else ""
    )
    raise ConfigError(
        f"source is a {kind.__module__.split('.')[0]}.{kind.__name__}, not a path, URL, list "
        f"of them, pandas DataFrame or pyarrow Table{hint}"
    )


def _progress(settings: Settings, enabled: bool) -> Progress:
    return Progress(enabled=enabled, interval_s=settings.progress_interval_s)
