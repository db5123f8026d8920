"""``backfill rehearse``: the whole migration against a local stand-in, no credentials, no network.

The stand-in (``backfill.standin``) runs on a free loopback port in a thread of its own, with its
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
from backfill.errors import BackfillError
from backfill.folder.location import default_folder
from backfill.mixpanel import IdMerge
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
from backfill.standin.running import summary_lines
from backfill.verification import Verification, render_verification, run_verify

RECEIVED_FILE = "received.ndjson"


@dataclass
class Rehearsal:
    """The run's summary and what the stand-in saw."""

    summary: Summary
    received: dict[str, Any]
    received_path: Path
    #: What the stand-in's export says merged (``backfill verify`` at the rehearsal's end).
    verification: Verification | None = None


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
    system: IdMerge = IdMerge.ORIGINAL,
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
        id_merge=IdMerge(system),
    )
    with standin_thread(config) as standin:
        rehearsal = replace(
            settings, out=out, api_url=standin.url, project_id=DEFAULT_PROJECT_ID, restart=True
        )
        try:
            summary = pipeline.run(
                rehearsal, Credentials(user, secret), progress=progress, record_folder=False
            )
        except BackfillError as e:
            # What refused here is the stand-in playing Mixpanel: say so.
            e.args = tuple(
                a.replace("Mixpanel refused", "the stand-in refused") if isinstance(a, str) else a
                for a in e.args
            )
            raise
        finally:
            received = standin.state.summary()
        # The stand-in's export shows every event at once: the verification a real run
        # gets about 45 minutes later, here at the end of the rehearsal.
        verification = run_verify(rehearsal, standin.url, Credentials(user, secret))
    return Rehearsal(summary, received, received_path, verification)


def render_received(rehearsal: Rehearsal) -> str:
    """What the stand-in saw, as a few lines to print next to the run's summary."""
    return "\n".join(
        [
            "local stand-in (what 'Mixpanel' received)",
            *summary_lines(rehearsal.received),
            f"  stored in         {rehearsal.received_path}",
            *([render_verification(rehearsal.verification)] if rehearsal.verification else []),
        ]
    )
