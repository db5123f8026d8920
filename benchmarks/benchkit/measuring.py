"""Measuring a child process: wall time here, CPU time and peak RSS from its own rusage.

Each measured command is started through ``measure.py`` (see its docstring for why); the
machine's busy time around it tells how much other processes took meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import BACKGROUND_WARN_CORES, CHILD_TIMEOUT_S, MEASURE, PYTHON, ROOT, log


@dataclass
class Measured:
    """One child process, measured: wall clock here, CPU and peak RSS from its rusage."""

    cmd: list[str]
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    stdout: str
    stderr: str
    #: CPU seconds the whole machine was busy while the child ran (all processes).
    machine_busy_s: float = float("nan")

    def background_cores(self, also: float = 0.0) -> float:
        """Average cores busy with other work while the child ran (``also``: CPU seconds of
        a known partner, such as the stand-in, not to count as background)."""
        return max(0.0, (self.machine_busy_s - self.cpu_s - also) / self.wall_s)

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds of the child itself."""
        return self.user_s + self.sys_s

    @property
    def rss_mib(self) -> float:
        """Peak resident set size in MiB (``ru_maxrss`` is KiB on Linux)."""
        return self.maxrss_kib / 1024

    def check(self, what: str) -> None:
        """Raise with the child's last stderr lines if it failed."""
        if self.returncode != 0:
            tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-8:])
            raise RuntimeError(f"{what} exited {self.returncode}: {' '.join(self.cmd)}\n{tail}")


def system_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a live process has used so far, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSampler:
    """Samples the CPU time of some processes every ``interval_s`` from a thread."""

    pids: dict[str, int]
    interval_s: float = 0.2
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> CpuSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            cpu = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
            self.samples.append((now, {k: v for k, v in cpu.items() if v is not None}))
            if self._stop.wait(self.interval_s):
                return

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        """CPU seconds ``name`` used between two monotonic times (nearest samples)."""
        points = [(t, c[name]) for t, c in self.samples if name in c]
        if len(points) < 2:
            return None
        start = min(points, key=lambda p: abs(p[0] - t0))
        end = min(points, key=lambda p: abs(p[0] - t1))
        return end[1] - start[1] if end[0] > start[0] else None


def run_child(
    cmd: Sequence[str],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
    cwd: Path = ROOT,
) -> tuple[Measured, float]:
    """Run ``cmd`` to its end through ``measure.py``. Returns it, measured, and its end time.

    ``measure.py`` runs the command and measures it with ``os.wait4``: a command started from
    this process directly would inherit this process's own peak RSS (see measure.py).
    stdout and stderr go to files in ``log_dir`` (a pipe could fill and stall the child while
    this process waits). ``on_start`` gets the command's pid, not measure.py's.
    ``python -m backfill`` imports the ``backfill`` of ``cwd``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    report_path = log_dir / "rusage.json"
    pid_path = Path(f"{report_path}.pid")
    for stale in (report_path, pid_path):
        stale.unlink(missing_ok=True)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        busy_before = system_busy_s()
        started = time.monotonic()
        proc = subprocess.Popen(
            [PYTHON, "-S", str(MEASURE), str(report_path), *cmd],
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,  # the watchdog kills the command with it
        )
        usage = _reap(proc, pid_path, on_start)
        ended = time.monotonic()
        busy_after = system_busy_s()
    child_usage = _child_usage(report_path, proc.returncode, ended - started, usage)
    measured = Measured(
        cmd=list(cmd),
        returncode=int(child_usage["returncode"]),
        wall_s=float(child_usage["wall_s"]),
        user_s=float(child_usage["user_s"]),
        sys_s=float(child_usage["sys_s"]),
        maxrss_kib=int(child_usage["maxrss_kib"]),
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        machine_busy_s=busy_after - busy_before,
    )
    return measured, ended


def _reap(
    proc: subprocess.Popen[bytes], pid_path: Path, on_start: Callable[[int], None] | None
) -> resource.struct_rusage:
    """Hand the command's pid to ``on_start``, then reap measure.py (killed after the
    timeout) with ``wait4``; sets its return code. Returns measure.py's own rusage."""
    if on_start is not None:
        child = _wait_for_pid(pid_path, proc)
        if child is not None:
            on_start(child)
    watchdog = threading.Timer(CHILD_TIMEOUT_S, _kill_group, (proc.pid,))
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return usage


def _child_usage(
    report_path: Path, returncode: int, wall_s: float, usage: resource.struct_rusage
) -> dict[str, Any]:
    """What measure.py reported of its command; if it failed or was killed, what it used
    itself, marked as failed."""
    try:
        reported: dict[str, Any] = json.loads(report_path.read_text())
        return reported
    except (OSError, ValueError):
        return {
            "returncode": returncode or -1,
            "wall_s": wall_s,
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss,
        }


def _wait_for_pid(pid_path: Path, launcher: subprocess.Popen[bytes]) -> int | None:
    """The pid measure.py wrote once its command started (None if it never did)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(pid_path.read_text())
        # WNOWAIT: look without reaping; the caller reaps it with wait4 for its rusage.
        if os.waitid(os.P_PID, launcher.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            return None
        time.sleep(0.01)
    return None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wait_for_quiet(limit: float, quiet_s: float = 3.0) -> None:
    """Wait (at most ``limit`` seconds) until the machine has been nearly idle for ``quiet_s``.

    On a shared machine, other people's tests running next to a measurement stretch its wall
    time; this waits for a lull first. Nothing happens when ``limit`` is 0.
    """
    if limit <= 0:
        return
    deadline = time.monotonic() + limit
    calm_since: float | None = None
    before = system_busy_s()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now_busy = system_busy_s()
        cores = (now_busy - before) / 0.5
        before = now_busy
        if cores < BACKGROUND_WARN_CORES:
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= quiet_s:
                return
        else:
            calm_since = None
    log(f"the machine did not become idle within {limit:.0f} s; measuring anyway")


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[list[int]]:
    """``n`` processes spinning on a core each, for as long as the block runs; their pids."""
    procs = [subprocess.Popen([PYTHON, "-S", "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
