"""Running a stand-in: inside a test or a rehearsal (``running_standin``), or on its own
(``serve``, behind ``backfill serve``), with the one-line ``banner`` that says how to use it
and, while it serves, one ``request_line`` per request."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from aiohttp import web

from backfill.standin.app import OnRequest, make_app
from backfill.standin.config import StandinConfig
from backfill.standin.state import RequestRecord, StandinState


@dataclass(frozen=True)
class Standin:
    """A running stand-in: ``url`` is the base URL (append ``/import``)."""

    url: str
    host: str
    port: int
    state: StandinState
    config: StandinConfig

    @property
    def import_url(self) -> str:
        """The full URL of the ``/import`` endpoint."""
        return f"{self.url}/import"


@asynccontextmanager
async def running_standin(
    config: StandinConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state: StandinState | None = None,
    shutdown_timeout_s: float = 2.0,
    on_request: OnRequest | None = None,
) -> AsyncIterator[Standin]:
    """Serve a stand-in on ``host:port`` (0 picks a free port) for the ``async with`` block.

    On exit, requests still in flight get ``shutdown_timeout_s`` to finish before being cut.
    ``on_request`` is called with each request's record once it is answered or dropped.
    """
    config = config if config is not None else StandinConfig()
    state = state if state is not None else StandinState(config)
    app = make_app(config, state, on_request=on_request)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); choose another port"
            ) from exc
        bound_port = int(runner.addresses[0][1])
        shown_host = f"[{host}]" if ":" in host else host
        yield Standin(f"http://{shown_host}:{bound_port}", host, bound_port, state, config)
    finally:
        await runner.cleanup()


def banner(standin: Standin) -> str:
    """One line: where the stand-in listens and the throwaway credentials that open it."""
    config = standin.config
    if config.service_accounts:
        user, secret = next(iter(config.service_accounts.items()))
        credentials = (
            f"MIXPANEL_SERVICE_ACCOUNT_USERNAME={user} MIXPANEL_SERVICE_ACCOUNT_SECRET={secret} "
            f"MIXPANEL_PROJECT_ID={config.project_id}"
        )
    elif config.api_secrets:
        credentials = f"MIXPANEL_API_SECRET={min(config.api_secrets)}"
    else:
        credentials = "(no credentials configured: every request gets 401)"
    return (
        f"backfill stand-in listening on {standin.import_url} — rehearse with: "
        f"{credentials} backfill run INPUT --api-url {standin.url}"
    )


def request_line(record: RequestRecord, at: datetime) -> str:
    """One request as a log line: when it finished, what came, how it was answered, and by
    which kind of credential (never a secret: ``auth`` names only configured usernames).

    ``2026-11-29T14:03:07.412 POST /import status=200 events=2000 imported=2000 refused=0
    auth="service-account backfill-rehearsal" ms=12``, with ``fault=NAME`` when a fault was
    injected and ``rate_limited=true`` when the rate limit answered; ``status=dropped`` when the
    connection was closed without an answer.
    """
    status = "dropped" if record.status is None else str(record.status)
    fields = [
        at.isoformat(timespec="milliseconds"),
        f"{record.method} {record.path}",
        f"status={status}",
        f"events={record.events}",
        f"imported={record.imported}",
        f"refused={record.failed}",
    ]
    if record.fault not in (None, "ok"):
        fields.append(f"fault={record.fault}")
    if record.rate_limited:
        fields.append("rate_limited=true")
    fields.append(f'auth="{record.auth}"')
    if record.finished_s is not None:
        fields.append(f"ms={(record.finished_s - record.arrived_s) * 1000:.0f}")
    return " ".join(fields)


#: Seconds ``serve`` gives requests in flight once it is told to stop.
STOP_TIMEOUT_S = 0.1


def summary_lines(received: dict[str, Any]) -> list[str]:
    """What a stand-in received and merged (``StandinState.summary()``), a few lines to read."""
    by_status = ", ".join(f"{k} {v}" for k, v in received.get("by_status", {}).items())
    lines = [
        f"  requests          {received['requests']:,}" + (f" ({by_status})" if by_status else ""),
        f"  events received   {received['events_received']:,}",
        f"  events imported   {received['events_imported']:,} unique "
        f"({received['duplicates']:,} resent duplicates counted once)",
        f"  events refused    {received['events_rejected']:,}",
    ]
    identity = received.get("identity") or {}
    if not identity:
        return lines
    lines.append(
        f"  merged            {identity.get('merged', 0):,} ({identity.get('system')} ID merge)"
    )
    for reason, count in (identity.get("not_merged") or {}).items():
        lines.append(f"  not merged        {count:,} ({reason.replace('_', ' ')})")
    if identity.get("clusters"):
        lines.append(
            f"  clusters          {identity['clusters']:,} "
            f"(largest {identity.get('largest_cluster', 0):,} ids)"
        )
    return lines


def serve(
    config: StandinConfig,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    out: TextIO | None = None,
    log_requests: bool = True,
) -> None:
    """Serve until Ctrl-C or SIGTERM: print the banner, one ``request_line`` per request
    (unless ``log_requests`` is False), then, once stopped (requests in flight cut after
    ``STOP_TIMEOUT_S``), a few lines of what it received and merged.

    The printed credentials are the stand-in's own throwaway ones, never a Mixpanel secret.
    """
    stream = out if out is not None else sys.stdout

    def log(record: RequestRecord) -> None:
        # The log is for a person watching; a closed stdout must not fail the request.
        with contextlib.suppress(OSError, ValueError):
            print(request_line(record, datetime.now()), file=stream, flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows or off the main thread: Ctrl-C then arrives as
            # KeyboardInterrupt, which serve() absorbs below.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        on_request = log if log_requests else None
        # Stopped on purpose: requests still in flight are cut at once (a client retries
        # them), so the process exits promptly instead of waiting out their latency.
        serving = running_standin(
            config, host, port, on_request=on_request, shutdown_timeout_s=STOP_TIMEOUT_S
        )
        async with serving as standin:
            print(banner(standin), file=stream, flush=True)
            try:
                await stop.wait()
            finally:
                # Read once the server is down, so the summary counts every request answered.
                state = standin.state
        with contextlib.suppress(OSError, ValueError):
            lines = ["backfill stand-in stopped:", *summary_lines(state.summary())]
            print("\n".join(lines), file=stream, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
