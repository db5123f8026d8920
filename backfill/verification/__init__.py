"""``backfill verify``: ask Mixpanel which of a run's pairs it actually merged, from its export.

Mixpanel accepts identity records it will not merge (an anon id already merged to someone
else, a cluster at 500 ids, a device already paired with another user) and says so only on
the stored event, in the reserved properties ``$failure_reason``/``$failure_description``
(Original ID Merge) or ``$identity_failure_reason`` (Simplified). This package reads those
back from the raw export (``GET /api/2.0/export``) for the events the run sent, matched by
``$insert_id``, and classifies every sent pair: ``merged``, ``not_merged`` (Mixpanel's
reason quoted) or ``not_found`` (not in the export yet). Pairs refused before or while
sending stay in ``rejects.csv``; the project's own events never count.

Modules: ``pairs`` (the run's pairs as 64-bit keys), ``export`` (the streaming client),
``match`` (the export's lines as keys and reasons), ``index`` (the join of both, within a
memory budget), ``files`` (``verify.csv``, the merged set, summary block),
``result`` (the frozen ``Verification``), ``check`` (one verification, start to end).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backfill.config.options import VERIFY
from backfill.config.settings import (
    Credentials,
    Settings,
    build_settings,
    check_api_url,
    load_config,
    resolve,
)
from backfill.errors import ConfigError
from backfill.mixpanel import EXPORT_REGIONS
from backfill.verification.check import check
from backfill.verification.index import DEFAULT_BUDGET, Budget
from backfill.verification.result import Verification, render_verification

__all__ = ["Verification", "render_verification", "run_verify", "verify", "verify_settings"]


def verify_settings(
    source: Any,
    *,
    explicit: Mapping[str, Any],
    config_path: Path | None,
    origin: str,
    env: Mapping[str, str],
) -> tuple[Settings, str]:
    """The checked settings of ``verify`` and the export's base URL (``--export-url``, else
    the host of ``--region``)."""
    config = load_config(config_path, VERIFY)
    values = resolve(VERIFY, explicit=explicit, config=config, origin=origin)
    # The run's own settings (columns, system) come from its checkpoint later; the rest
    # of Settings takes the table's defaults (build_settings).
    settings = build_settings(source, values, env)
    url = values.get("export_url") or EXPORT_REGIONS[settings.region]
    try:
        check_api_url(url)
    except ConfigError as e:
        raise ConfigError(str(e).replace("--api-url", "--export-url")) from None
    return settings, str(url)


def run_verify(
    settings: Settings,
    export_url: str,
    credentials: Credentials | None = None,
    *,
    env: Mapping[str, str] | None = None,
    note: Any = None,
    budget: Budget | None = None,
) -> Verification:
    """Verify the run of ``settings`` against the export at ``export_url``; ``budget``: the
    memory its key index may hold before it uses the run folder's disk (``index.Budget``)."""
    environ = os.environ if env is None else env
    budget = budget or DEFAULT_BUDGET
    return check(settings, export_url, credentials, environ, note=note, budget=budget)


def verify(
    source: Any,
    *,
    out: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    credentials: Credentials | None = None,
    **options: Any,
) -> Verification:
    """Check which pairs the run of ``source`` merged, from Mixpanel's raw export.

    ``source`` and ``out`` find the run as ``backfill.run`` does; options are the TOML keys of
    ``verify`` (``export_url``, ``region``, ``project_id``, …). Credentials default to the
    environment, as for ``run``. Writes ``verify.csv`` and the ``verify`` block of
    ``summary.json``; returns a ``Verification`` (``.complete`` when every pair merged).
    """
    from backfill.api import api_errors, normalize_source

    explicit = dict(options)
    if out is not None:
        explicit["out"] = os.fspath(out)
    explicit.setdefault("no_progress", True)
    # Its errors speak in keywords, as validate's and run's do.
    with api_errors(source):
        settings, url = verify_settings(
            normalize_source(source),
            explicit=explicit,
            config_path=None if config is None else Path(config),
            origin="keyword",
            env=os.environ,
        )
        if credentials is not None and not isinstance(credentials, Credentials):
            raise ConfigError(
                f"credentials= must be a backfill.Credentials, got {type(credentials).__name__}"
            )
        return run_verify(settings, url, credentials)
