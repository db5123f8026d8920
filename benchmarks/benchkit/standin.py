"""The stand-in the send benchmarks run against, each in its own process.

Either ``backfill serve --port 0``, or ``bench.py --serve-logged FILE``: the same stand-in
code, which also writes its request log (arrival and finish times) when it stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .common import ROOT
from .measuring import Measured, proc_cpu_s


class StandinProcess:
    """A stand-in in its own process: ``backfill serve --port 0``, or this script's logged one.

    The port comes from the banner's URL. ``stop`` sends SIGTERM and measures the process with
    ``os.wait4``; ``cpu_at_ready`` is its CPU time once it listens (start-up: imports).
    """

    def __init__(self, cmd: list[str], log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.err_path = log_dir / "standin-stderr.txt"
        self.started = time.monotonic()
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        self.banner = self._read_line(timeout_s=30.0)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/import", self.banner)
        if not match:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"stand-in printed no URL: {self.banner!r}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.cpu_at_ready = proc_cpu_s(self.proc.pid) or 0.0
        # What it prints after the banner is read as it comes: a pipe nobody reads fills up
        # (64 KiB) and the stand-in then blocks in print(), stalling every request.
        self._printed: list[bytes] = []
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._printed.append(line)

    def _read_line(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"stand-in printed nothing in {timeout_s:.0f} s")
        return self.proc.stdout.readline().decode(errors="replace")

    def stop(self) -> tuple[Measured, str]:
        """SIGTERM, then reap with ``wait4``: the measurement and what it printed after."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        self._drain.join(timeout=30.0)  # until it closes stdout
        rest = b"".join(self._printed).decode(errors="replace")
        watchdog = threading.Timer(30.0, self.proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            watchdog.cancel()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.proc.stdout.close()
        measured = Measured(
            cmd=list(map(str, self.proc.args)),  # type: ignore[arg-type]
            returncode=self.proc.returncode,
            wall_s=time.monotonic() - self.started,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            maxrss_kib=usage.ru_maxrss,
            stdout=self.banner + rest,
            stderr=self.err_path.read_text(errors="replace"),
        )
        return measured, rest


def standin_summary(printed: str) -> dict[str, Any]:
    """The counters ``backfill serve`` prints when it stops (empty if absent)."""
    match = re.search(r"backfill stand-in stopped: (\{.*\})", printed)
    return json.loads(match.group(1)) if match else {}


def serve_logged(log_path: Path, latency_s: float = 0.0, rate_limit: float | None = None) -> None:
    """Serve the stand-in like ``backfill serve --port 0 [--latency S] [--rate-limit R]``; on
    SIGTERM, dump its request log.

    The log (arrival and finish times on this process's monotonic clock, events, status) is
    what the rate, latency and backoff benchmarks measure the rate held from.
    """
    from backfill.standin import FaultRates, StandinConfig, banner, running_standin

    config = StandinConfig(
        faults=FaultRates.failing(0.0, latency_s=latency_s), rate_limit_events_per_s=rate_limit
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running_standin(config, "127.0.0.1", 0) as standin:
            print(banner(standin), flush=True)
            await stop.wait()
            requests = [
                {
                    "arrived_s": r.arrived_s,
                    "finished_s": r.finished_s,
                    "events": r.events,
                    "imported": r.imported,
                    "status": r.status,
                }
                for r in standin.state.requests
            ]
            summary = standin.state.summary()
            log_path.write_text(json.dumps({"requests": requests, "summary": summary}))
            print(f"backfill stand-in stopped: {json.dumps(summary)}", flush=True)

    asyncio.run(main())


def client_env() -> dict[str, str]:
    """The environment of a ``backfill run`` against the stand-in: its throwaway account."""
    from backfill.standin import DEFAULT_PROJECT_ID, DEFAULT_SERVICE_ACCOUNT

    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXPANEL_")}
    env["MIXPANEL_SERVICE_ACCOUNT_USERNAME"] = DEFAULT_SERVICE_ACCOUNT[0]
    env["MIXPANEL_SERVICE_ACCOUNT_SECRET"] = DEFAULT_SERVICE_ACCOUNT[1]
    env["MIXPANEL_PROJECT_ID"] = DEFAULT_PROJECT_ID
    return env
