"""backfill: replay anonymous-to-identified ID mappings into Mixpanel as identity merges.

The library is the product; the ``backfill`` command is a thin face over it::

    import backfill

    summary = backfill.validate(df, anon_column="device_id", identified_column="user_id")
    print(summary.rejected)             # rows refused, by reason; summary.out / "rejects.csv"
    summary = backfill.run(df, anon_column="device_id", identified_column="user_id")
    print(summary.events_imported)

``validate`` and ``run`` take what ``backfill validate INPUT...`` takes (paths, folders,
globs, ``s3://``/``gs://`` URLs, or a pandas DataFrame / pyarrow Table) and the TOML keys as
keywords; they print nothing and raise ``BackfillError`` subclasses. Heavy modules (pyarrow,
aiohttp) load on first use, so ``import backfill`` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backfill.errors import (
    Aborted,
    AuthRefused,
    BackfillError,
    CheckpointMismatch,
    ConfigError,
    IdentityEventsRefused,
    InputError,
    Interrupted,
    RequestRefused,
    RetriesExhausted,
    RunLocked,
    UnexpectedAnswer,
    Unreachable,
    UsageError,
)
from backfill.report.summary import FileRows, RunStatus, Summary, ThisRun

if TYPE_CHECKING:
    from backfill.api import run, validate
    from backfill.config.settings import Credentials

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AuthRefused",
    "BackfillError",
    "CheckpointMismatch",
    "ConfigError",
    "Credentials",
    "FileRows",
    "IdentityEventsRefused",
    "InputError",
    "Interrupted",
    "RequestRefused",
    "RetriesExhausted",
    "RunLocked",
    "RunStatus",
    "Summary",
    "ThisRun",
    "UnexpectedAnswer",
    "Unreachable",
    "UsageError",
    "run",
    "validate",
]

_LAZY = {
    "validate": "backfill.api",
    "run": "backfill.api",
    "Credentials": "backfill.config.settings",
}


def __getattr__(name: str) -> Any:
    """Load ``validate``, ``run`` and ``Credentials`` (and their heavy imports) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'backfill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
