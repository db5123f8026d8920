"""``backfill rehearse``: the whole migration against a local stand-in, no credentials, no network.

The stand-in (``standin.py``) runs on a free loopback port in a thread of its own, with its
own event loop, so that the run in the main thread is exactly ``backfill run``: the same
validation, checkpoint, sender and reports, just pointed at ``http://127.0.0.1:PORT`` with the
stand-in's throwaway credentials. Every rehearsal starts afresh (the stand-in remembers
nothing between processes), in its own folder, ``runs/<input stem>-rehearsal/`` by default, so
it can never touch a real run's checkpoint. What the stand-in accepted is written to
``received.ndjson`` in that folder, for a person to read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backfill.commands import pipeline
from backfill.config.settings import Credentials, Settings
from backfill.folder.location import default_folder
from backfill.report.progress import Progress
from backfill.report.summary import Summary
from backfill.standin import (
    DEFAULT_PROJECT_ID,
    DEFAULT_SERVICE_ACCOUNT,
    FaultRates,
    Standin,
    StandinConfig,
    running_standin,
)
from backfill.standin.app import OnRequest

RECEIVED_FILE = "received.ndjson"


@dataclass
class Rehearsal:
    """The run's summary and what the stand-in saw."""

    summary: Summary
    received: dict[str, Any]
    received_path: Path


def rehearsal_folder(settings: Settings) -> Path:
    """Where a rehearsal writes: ``--out`` if given, else ``runs/<input name>-rehearsal/``.

    Never the folder of a real run (nor one the registry knows): a rehearsal starts afresh.
    """
    if settings.out is not None:
        return settings.out
    folder = default_folder(settings)
    return folder.with_name(folder.name + "-rehearsal")


@contextmanager
def standin_thread(
    config: StandinConfig, *, on_request: OnRequest | None = None
) -> Iterator[Standin]:
    """A stand-in serving from a background thread for the ``with`` block.

    ``on_request`` is called (on the stand-in's thread) with each request's record.
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        try:
            async with running_standin(config, on_request=on_request) as standin:
                box["standin"] = standin
                ready.set()
                await stop.wait()
        except BaseException as e:
            box["error"] = e
            ready.set()
            raise

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        raise box["error"]
    try:
        yield box["standin"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)


def rehearse(
    settings: Settings,
    *,
    fault_rate: float = 0.0,
    seed: int | None = None,
    progress: Progress | None = None,
    system: str = "original",
) -> Rehearsal:
    """Start the stand-in, run the real ``run`` against it from scratch, report both sides."""
    out = rehearsal_folder(settings)
    received_path = out / RECEIVED_FILE
    received_path.unlink(missing_ok=True)
    user, secret = DEFAULT_SERVICE_ACCOUNT
    config = StandinConfig(
        service_accounts={user: secret},
        project_id=DEFAULT_PROJECT_ID,
        faults=FaultRates.failing(fault_rate, seed=seed),
        store_path=received_path,
        id_merge="simplified" if system == "simplified" else "original",
    )
    with standin_thread(config) as standin:
        rehearsal = replace(
            settings, out=out, api_url=standin.url, project_id=DEFAULT_PROJECT_ID, restart=True
        )
        try:
            summary = pipeline.run(
                rehearsal, Credentials(user, secret), progress=progress, record_folder=False
            )
        finally:
            received = standin.state.summary()
    return Rehearsal(summary, received, received_path)


def render_received(rehearsal: Rehearsal) -> str:
    """What the stand-in saw, as a few lines to print next to the run's summary."""
    received, path = rehearsal.received, rehearsal.received_path
    by_status = ", ".join(f"{k} {v}" for k, v in received.get("by_status", {}).items())
    return "\n".join(
        [
            "local stand-in (what 'Mixpanel' received)",
            f"  requests          {received['requests']:,} ({by_status})",
            f"  events received   {received['events_received']:,}",
            f"  events imported   {received['events_imported']:,} unique "
            f"({received['duplicates']:,} resent duplicates counted once)",
            f"  events refused    {received['events_rejected']:,}",
            *_identity_lines(received.get("identity") or {}),
            f"  stored in         {path}",
        ]
    )


def _identity_lines(identity: dict[str, Any]) -> list[str]:
    """What merged in the stand-in's identity graph, and why the rest did not."""
    if not identity:
        return []
    lines = [
        f"  merged            {identity.get('merged', 0):,} ({identity.get('system')} ID merge)"
    ]
    for reason, count in (identity.get("not_merged") or {}).items():
        lines.append(f"  not merged        {count:,} ({reason.replace('_', ' ')})")
    if identity.get("clusters"):
        lines.append(
            f"  clusters          {identity['clusters']:,} "
            f"(largest {identity.get('largest_cluster', 0):,} ids)"
        )
    return lines
