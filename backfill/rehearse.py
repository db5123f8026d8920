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
from typing import Any, Literal

from backfill.pipeline import run_command
from backfill.settings import Settings
from backfill.standin import (
    DEFAULT_PROJECT_ID,
    DEFAULT_SERVICE_ACCOUNT,
    FaultRates,
    Standin,
    StandinConfig,
    running_standin,
)

RECEIVED_FILE = "received.ndjson"


@dataclass
class Rehearsal:
    """The run's summary and what the stand-in saw."""

    summary: dict[str, Any]
    received: dict[str, Any]
    received_path: Path


def rehearsal_out_dir(settings: Settings, explicit_out: bool) -> Path:
    """Where a rehearsal writes: ``--out`` if given, else ``runs/<stem>-rehearsal``."""
    if explicit_out:
        return settings.out_dir
    return settings.out_dir.with_name(settings.out_dir.name + "-rehearsal")


@contextmanager
def standin_thread(config: StandinConfig) -> Iterator[Standin]:
    """A stand-in serving from a background thread for the ``with`` block."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        try:
            async with running_standin(config) as standin:
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


def rehearse_command(
    settings: Settings,
    *,
    fault_rate: float = 0.0,
    seed: int | None = None,
    progress_stream: Any = None,
    system: Literal["original", "simplified"] = "original",
) -> Rehearsal:
    """Start the stand-in, run the real ``run`` against it from scratch, report both sides."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    received_path = settings.out_dir / RECEIVED_FILE
    received_path.unlink(missing_ok=True)
    user, secret = DEFAULT_SERVICE_ACCOUNT
    config = StandinConfig(
        service_accounts={user: secret},
        project_id=DEFAULT_PROJECT_ID,
        faults=FaultRates.failing(fault_rate, seed=seed),
        store_path=received_path,
        id_merge=system,
    )
    env = {
        "MIXPANEL_SERVICE_ACCOUNT_USERNAME": user,
        "MIXPANEL_SERVICE_ACCOUNT_SECRET": secret,
        "MIXPANEL_PROJECT_ID": DEFAULT_PROJECT_ID,
    }
    if settings.token:
        env["MIXPANEL_PROJECT_TOKEN"] = settings.token
    with standin_thread(config) as standin:
        rehearsal = replace(
            settings, api_url=standin.url, project_id=DEFAULT_PROJECT_ID, restart=True
        )
        try:
            summary = run_command(rehearsal, env, progress_stream=progress_stream)
        finally:
            received = standin.state.summary()
            received["pairs_stored"] = len(standin.state.identify_pairs())
    return Rehearsal(summary, received, received_path)


def render_received(received: dict[str, Any], path: Path) -> str:
    """What the stand-in saw, as a few lines to print next to the run's summary."""
    by_status = ", ".join(f"{k} {v}" for k, v in received.get("by_status", {}).items())
    return "\n".join(
        [
            "local stand-in (what 'Mixpanel' received)",
            f"  requests          {received['requests']:,} ({by_status})",
            f"  events received   {received['events_received']:,}",
            f"  events imported   {received['events_imported']:,} unique "
            f"({received['duplicates']:,} resent duplicates counted once)",
            f"  events refused    {received['events_rejected']:,}",
            f"  stored in         {path}",
        ]
    )
