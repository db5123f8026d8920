"""Benchmarks of ``backfill``: validation against a naive pandas script, send throughput against
the local stand-in, how closely ``--rate`` is held, the rate held at 1.5 s of latency and against
a project's rate limit (429s). See ``benchmarks/README.md``.

    python benchmarks/bench.py                      # all of them
    python benchmarks/bench.py --rows 200000 --send-rows 50000 --skip-big \
        --latency-rows 50000 --backoff-rows 100000   # smoke test
    python benchmarks/bench.py --only validate --rows 2000000 --parquet
    python benchmarks/bench.py --only latency       # default flags, 1.5 s per request
    python benchmarks/bench.py --only backoff --client-root /tmp/previous   # an older version

Every measured command runs as its own child process; its wall time comes from this process's
monotonic clock and its CPU time and peak RSS from ``os.wait4`` (that child's own rusage).
Inputs are generated deterministically into ``benchmarks/data/`` and reused; reports go to
``benchmarks/out/`` (both git-ignored). The results table is printed and written to
``benchmarks/results.md``. Uses the project and the standard library only (numpy and pyarrow,
which the project depends on, generate the inputs).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import csv
import hashlib
import json
import math
import os
import platform
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
OUT = HERE / "out"
RESULTS = HERE / "results.md"
NAIVE = HERE / "naive_validate.py"
MEASURE = HERE / "measure.py"
PYTHON = sys.executable
GENERATOR_VERSION = 1
GEN_CHUNK_ROWS = 1_000_000
CHILD_TIMEOUT_S = 3600.0
MIB = 1024 * 1024
BACKGROUND_WARN_CORES = 0.25

# --- input generation ------------------------------------------------------------------------

#: Share of rows per kind of defect (SPEC reasons in brackets).
DUPLICATE_SHARE = 0.01  # exact repeats of an earlier pair [duplicate_pair]
CONFLICT_SHARE = 0.002  # anon id of another user's row [conflicting_anon_id, both rows]
INVALID_ANON_SHARE = 0.005  # v1, bad variant, undashed, braced, truncated, junk [invalid_anon_id]
PLACEHOLDER_SHARE = 0.002  # null, undefined, 0, ... in any case [invalid_identified_id]
UPPERCASE_SHARE = 0.03  # valid upper-case UUIDs
PADDED_SHARE = 0.001  # surrounding spaces, trimmed by the reader (valid)
EMPTY_SHARE = 0.0001  # each of: empty anon, empty identified, whitespace-only [missing_*]
SELF_MERGE_SHARE = 0.00005  # identified id = anon id [self_merge]
LONG_SHARE = 0.00001  # identified id over 255 bytes [invalid_identified_id]
EMAIL_SHARE = 0.3  # users identified by e-mail rather than user_0001234
KIOSK_ANON_IDS = 650  # one shared login per million rows, past the 500-id cluster limit
ANON_IDS_PER_USER = (np.arange(1, 6), np.array([0.35, 0.25, 0.2, 0.12, 0.08]))

_FIRST = [
    "maria", "james", "wei", "fatima", "olga", "juan", "aiko", "noah", "priya", "liam",
    "chloe", "mateo", "sara", "omar", "ines", "lucas", "emma", "ivan", "zoë", "josé", "björn",
    "anna", "kofi", "mia", "yusuf", "elena", "tom", "hana", "raj", "lea",
]  # fmt: skip
_LAST = [
    "garcia", "smith", "chen", "khan", "ivanova", "lopez", "tanaka", "brown", "patel", "murphy",
    "martin", "rossi", "nguyen", "ali", "silva", "müller", "schmidt", "kowalski", "dubois",
    "jensen", "okafor", "sato", "kim", "novak", "costa",
]  # fmt: skip
_DOMAINS = [
    "gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me",
    "example.com", "acme-corp.io", "gmx.de", "web.de",
]  # fmt: skip
_PLACEHOLDER_VALUES = [
    "null", "NULL", "Null", "undefined", "anonymous", "none", "None", "nil", "<nil>", "0", "-1",
    "unknown", "n/a", "N/A", "NaN", "nan", "false", "[]", "{}",
    "00000000-0000-0000-0000-000000000000",
]  # fmt: skip
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_DASHES = (8, 13, 18, 23)
_UUID_HEX_COLUMNS = np.array([i for i in range(36) if i not in _UUID_DASHES])


def _uuid4_strings(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random lower-case UUID v4 strings, built as one fixed-width byte buffer."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # variant 10xx: 8, 9, a or b
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_COLUMNS] = _HEX[nibbles]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())]
    )


def _digits(values: npt.NDArray[np.int64], width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")


def _identified_ids(rng: np.random.Generator, user_numbers: npt.NDArray[np.int64]) -> pa.Array:
    """One identified id per user: ``user_0001234``, or an e-mail address made unique by the
    user's number."""
    n = len(user_numbers)
    numbered = pc.binary_join_element_wise("user_", _digits(user_numbers, 7), "")
    first = pa.array(_FIRST).take(pa.array(rng.integers(0, len(_FIRST), n)))
    last = pa.array(_LAST).take(pa.array(rng.integers(0, len(_LAST), n)))
    domain = pa.array(_DOMAINS).take(pa.array(rng.integers(0, len(_DOMAINS), n)))
    number = pc.cast(pa.array(user_numbers), pa.string())
    email = pc.binary_join_element_wise(first, ".", last, number, "@", domain, "")
    return pc.if_else(pa.array(rng.random(n) < EMAIL_SHARE), email, numbered)


def _invalid_anon_ids(rng: np.random.Generator, valid: pa.Array) -> pa.Array:
    """Anon ids an export really holds that are not UUID v4, one kind drawn per value."""
    n = len(valid)
    junk = pa.array(["undefined", "null", "0", "anonymous", "GA1.2.1234567890.1712345678"])
    variants = [
        pc.utf8_replace_slice(valid, 14, 15, "1"),  # UUID v1
        pc.utf8_replace_slice(valid, 19, 20, "c"),  # wrong variant
        pc.replace_substring(valid, "-", ""),  # undashed
        pc.binary_join_element_wise("{", valid, "}", ""),  # braced
        pc.utf8_slice_codeunits(valid, 0, 35),  # truncated
        junk.take(pa.array(rng.integers(0, len(junk), n))),  # not an id at all
    ]
    return pc.choose(pa.array(rng.integers(0, len(variants), n).astype(np.int8)), *variants)


def _replace(values: pa.Array, rows: npt.NDArray[np.int64], new: pa.Array) -> pa.Array:
    """``values`` with the entries at ``rows`` (ascending) replaced by ``new``, in order."""
    mask = np.zeros(len(values), dtype=np.bool_)
    mask[rows] = True
    return pc.replace_with_mask(values, pa.array(mask), new)


def generate_chunk(rng: np.random.Generator, n: int, user_base: int, chunk: int) -> pa.Table:
    """``n`` rows of realistic mappings; users are numbered from ``user_base``."""
    kiosk = KIOSK_ANON_IDS if n >= 50_000 else 0
    n_dup = round(n * DUPLICATE_SHARE)
    n_conf = round(n * CONFLICT_SHARE)
    n_base = n - n_dup - n_conf - kiosk

    # Users with 1-5 anon ids each.
    sizes, weights = ANON_IDS_PER_USER
    per_user = rng.choice(sizes, size=n_base // 2 + 1, p=weights)
    users = int(np.searchsorted(np.cumsum(per_user), n_base)) + 1
    user_of_row = np.repeat(np.arange(users), per_user[:users])[:n_base]
    idents = _identified_ids(rng, np.arange(user_base, user_base + users, dtype=np.int64))
    anon = _uuid4_strings(rng, n_base)
    upper = np.flatnonzero(rng.random(n_base) < UPPERCASE_SHARE)
    anon = _replace(anon, upper, pc.utf8_upper(anon.take(pa.array(upper))))
    ident = idents.take(pa.array(user_of_row))

    # Duplicates and conflicts copy earlier rows; the kiosk shares one login.
    dup = rng.integers(0, n_base, n_dup)
    conf = rng.integers(0, n_base, n_conf)
    other_user = (user_of_row[conf] + 1 + rng.integers(0, max(users - 1, 1), n_conf)) % users
    kiosk_id = pa.array([f"kiosk-{chunk:04d}@stores.example.com"] * kiosk, pa.string())
    anon = pa.concat_arrays(
        [anon, anon.take(pa.array(dup)), anon.take(pa.array(conf)), _uuid4_strings(rng, kiosk)]
    )
    ident = pa.concat_arrays(
        [ident, ident.take(pa.array(dup)), idents.take(pa.array(other_user)), kiosk_id]
    )
    order = pa.array(rng.permutation(n))
    anon, ident = anon.take(order), ident.take(order)

    # Per-row defects on disjoint random rows.
    spots = rng.permutation(n)
    taken = 0

    def rows(share: float) -> npt.NDArray[np.int64]:
        nonlocal taken
        k = round(n * share)
        picked = np.sort(spots[taken : taken + k]).astype(np.int64)
        taken += k
        return picked

    def at(values: pa.Array, where: npt.NDArray[np.int64]) -> pa.Array:
        return values.take(pa.array(where))

    bad = rows(INVALID_ANON_SHARE)
    anon = _replace(anon, bad, _invalid_anon_ids(rng, at(anon, bad)))
    holder = rows(PLACEHOLDER_SHARE)
    values = pa.array(_PLACEHOLDER_VALUES).take(
        pa.array(rng.integers(0, len(_PLACEHOLDER_VALUES), len(holder)))
    )
    ident = _replace(ident, holder, values)
    pad_a, pad_u = rows(PADDED_SHARE / 2), rows(PADDED_SHARE / 2)
    anon = _replace(anon, pad_a, pc.binary_join_element_wise(" ", at(anon, pad_a), "  ", ""))
    ident = _replace(ident, pad_u, pc.binary_join_element_wise("  ", at(ident, pad_u), ""))
    for column, blank in (("anon", ""), ("ident", ""), ("anon", "   "), ("ident", " ")):
        where = rows(EMPTY_SHARE / 2)
        new = pa.array([blank] * len(where), pa.string())
        if column == "anon":
            anon = _replace(anon, where, new)
        else:
            ident = _replace(ident, where, new)
    same = rows(SELF_MERGE_SHARE)
    ident = _replace(ident, same, at(anon, same))
    long = rows(LONG_SHARE)
    jwt = "eyJhbGciOiJIUzI1NiJ9." + "x" * 280
    ident = _replace(ident, long, pa.array([jwt] * len(long), pa.string()))
    return pa.table({"anon_id": anon, "identified_id": ident})


def data_path(rows: int, seed: int, suffix: str = ".csv") -> Path:
    """Where the input of ``rows`` rows lives (generated on first use)."""
    return DATA / f"mappings_{rows}_s{seed}_v{GENERATOR_VERSION}{suffix}"


def ensure_input(rows: int, seed: int, parquet: bool = False) -> Path:
    """The CSV input of ``rows`` rows (and its Parquet twin if asked), generated if missing.

    Chunks of a million rows are generated with their own seed ``(seed, chunk)``, so a file is
    the same whatever machine writes it; files are written under a temporary name and renamed,
    so a half-written file is never reused.
    """
    csv_path = data_path(rows, seed)
    pq_path = data_path(rows, seed, ".parquet")
    want_pq = parquet and not pq_path.exists()
    if csv_path.exists() and not want_pq:
        return csv_path
    DATA.mkdir(parents=True, exist_ok=True)
    write_csv = not csv_path.exists()
    started = time.monotonic()
    tmp_csv = csv_path.with_suffix(".csv.tmp")
    tmp_pq = pq_path.with_suffix(".parquet.tmp")
    schema = pa.schema([("anon_id", pa.string()), ("identified_id", pa.string())])
    with contextlib.ExitStack() as stack:
        csv_writer = pq_writer = None
        if write_csv:
            sink = stack.enter_context(tmp_csv.open("wb"))
            sink.write(b"anon_id,identified_id\n")
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            csv_writer = stack.enter_context(pacsv.CSVWriter(sink, schema, write_options=options))
        if want_pq:
            pq_writer = stack.enter_context(pq.ParquetWriter(tmp_pq, schema))
        for chunk, start in enumerate(range(0, rows, GEN_CHUNK_ROWS)):
            n = min(GEN_CHUNK_ROWS, rows - start)
            table = generate_chunk(np.random.default_rng([seed, chunk]), n, start, chunk)
            if csv_writer is not None:
                csv_writer.write_table(table)
            if pq_writer is not None:
                pq_writer.write_table(table)
    if write_csv:
        tmp_csv.replace(csv_path)
    if want_pq:
        tmp_pq.replace(pq_path)
    made = [p.name for p, w in ((csv_path, write_csv), (pq_path, want_pq)) if w]
    log(f"generated {', '.join(made)} ({rows:,} rows) in {time.monotonic() - started:.1f} s")
    return csv_path


# --- measuring a child process ---------------------------------------------------------------


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


def _proc_cpu_s(pid: int) -> float | None:
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
            cpu = {name: _proc_cpu_s(pid) for name, pid in self.pids.items()}
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
    if cwd == ROOT:  # another tree's client (--compare-root) is named in its own row
        measured_as = f"{log_dir.parent.name}/{log_dir.name}"
        MEASURED_WITH.setdefault(source_digest(), []).append(measured_as)
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
        ended = time.monotonic()
        busy_after = system_busy_s()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    try:
        child_usage = json.loads(report_path.read_text())
    except (OSError, ValueError):
        # measure.py itself failed or was killed: report what it used, marked as failed.
        child_usage = {
            "returncode": proc.returncode or -1,
            "wall_s": ended - started,
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss,
        }
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


#: Seconds ``wait_for_quiet`` may wait before each measurement (set from --wait-quiet).
QUIET_WAIT_S = 0.0


def wait_for_quiet(max_s: float | None = None, quiet_s: float = 3.0) -> None:
    """Wait (at most ``max_s``) until the machine has been nearly idle for ``quiet_s``.

    On a shared machine, other people's tests running next to a measurement stretch its wall
    time; this waits for a lull first. Nothing happens when ``max_s`` is 0.
    """
    limit = QUIET_WAIT_S if max_s is None else max_s
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


def warm_cache(path: Path) -> None:
    """Read a file once so that the first measured reader does not pay for the disk alone."""
    with path.open("rb") as f:
        while f.read(16 * MIB):
            pass


def fresh_dir(path: Path) -> Path:
    """An empty folder at ``path``."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def log(message: str) -> None:
    """Progress of the benchmark itself, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the stand-in ----------------------------------------------------------------------------


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
        self.cpu_at_ready = _proc_cpu_s(self.proc.pid) or 0.0

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
        rest = self.proc.stdout.read().decode(errors="replace")  # until it closes stdout
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


# --- the benchmarks --------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    backfill: str
    reference: str
    result: str


@dataclass
class Report:
    """Everything measured, for the table and for the notes below it."""

    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        """Record a problem and say it now."""
        self.warnings.append(message)
        log(f"WARNING: {message}")


def _fmt_s(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds >= 10 else f"{seconds:,.2f} s"


def _fmt_mib(mib: float) -> str:
    return f"{mib:,.0f} MiB"


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def _best(runs: list[Measured]) -> Measured:
    """The run with the least wall time (the least disturbed by anything else)."""
    return min(runs, key=lambda m: m.wall_s)


def _speed_text(theirs_s: float, ours_s: float) -> str:
    speed = theirs_s / ours_s
    return f"{_ratio(speed)} faster than" if speed >= 1 else f"{_ratio(1 / speed)} slower than"


def bench_validate(
    report: Report, path: Path, rows: int, label: str, *, naive: bool = True, repeat: int = 1
) -> Measured:
    """``backfill validate`` against the naive pandas script on the same file.

    With ``repeat`` > 1 the two alternate and each keeps its fastest run, which is returned.
    """
    warm_cache(path)
    out = fresh_dir(OUT / f"validate-{rows}{path.suffix.replace('.', '-')}")
    ours_runs: list[Measured] = []
    theirs_runs: list[Measured] = []
    for attempt in range(repeat):
        wait_for_quiet()
        log(f"{label}: backfill validate ({attempt + 1}/{repeat})")
        ours, _ = run_child(
            [
                PYTHON,
                "-m",
                "backfill",
                "validate",
                str(path),
                "--out",
                str(out / "backfill"),
                "--no-progress",
            ],
            out / "backfill-logs",
        )
        ours.check("backfill validate")
        ours_runs.append(ours)
        if naive:
            wait_for_quiet()
            log(f"{label}: naive pandas ({attempt + 1}/{repeat})")
            theirs, _ = run_child(
                [PYTHON, str(NAIVE), str(path), "--out", str(out / "naive")], out / "naive-logs"
            )
            theirs_runs.append(theirs)
            if theirs.returncode != 0:
                break
    ours = _best(ours_runs)
    check_background(report, f"{label}, backfill", ours)
    summary = json.loads((out / "backfill" / "summary.json").read_text())
    rejected = {k: v for k, v in summary["rejected"].items() if k != "api_rejected"}
    total = sum(rejected.values())
    key = f"validate_{rows}{path.suffix}"
    report.raw[key] = {
        "backfill": [_measured_json(m) for m in ours_runs],
        "rows_read": summary["rows_read"],
        "rows_valid": summary["rows_valid"],
        "rejected": rejected,
    }
    ours_text = (
        f"{_fmt_s(ours.wall_s)} wall, {_fmt_s(ours.cpu_s)} CPU, "
        f"{_fmt_mib(ours.rss_mib)} peak RSS; {rows / ours.wall_s / 1e6:.2f}M rows/s"
    )
    if summary["rows_read"] != rows:
        report.warn(f"{label}: backfill read {summary['rows_read']:,} rows, expected {rows:,}")
    if not naive:
        report.rows.append(Row(label, ours_text, "–", f"{total:,} rejected ({total / rows:.2%})"))
        return ours

    theirs = theirs_runs[-1]
    report.raw[key]["naive"] = [_measured_json(m) for m in theirs_runs]
    if theirs.returncode != 0:
        tail = " ".join(theirs.stderr.strip().splitlines()[-2:])
        report.warn(f"{label}: the naive script exited {theirs.returncode}: {tail}")
        report.rows.append(
            Row(label, ours_text, f"naive pandas failed (exit {theirs.returncode})", "")
        )
        return ours
    theirs = _best(theirs_runs)
    check_background(report, f"{label}, naive pandas", theirs)
    naive_rejected = json.loads(theirs.stdout.strip().splitlines()[-1])["rejected"]
    naive_total = sum(naive_rejected.values())
    report.raw[key]["naive_rejected"] = naive_rejected
    differing = {
        k: (rejected.get(k, 0), naive_rejected.get(k, 0))
        for k in sorted(set(rejected) | set(naive_rejected))
        if rejected.get(k, 0) != naive_rejected.get(k, 0)
    }
    if naive_total != total or differing:
        examples = first_differences(
            out / "backfill" / "rejects.csv", out / "naive" / "rejects.csv", limit=3
        )
        report.warn(
            f"{label}: backfill and the naive script disagree: {total:,} vs {naive_total:,} "
            f"rejected rows; by reason (backfill, naive): {differing}; e.g. {examples}"
        )
    agreement = (
        f"rejected rows agree ({total:,}, {total / rows:.2%})"
        if naive_total == total and not differing
        else f"rejected rows DIFFER ({total:,} vs {naive_total:,})"
    )
    report.rows.append(
        Row(
            label,
            ours_text,
            f"naive pandas: {_fmt_s(theirs.wall_s)} wall, {_fmt_s(theirs.cpu_s)} CPU, "
            f"{_fmt_mib(theirs.rss_mib)} peak RSS",
            f"{_speed_text(theirs.wall_s, ours.wall_s)} naive, "
            f"{_ratio(ours.rss_mib / theirs.rss_mib)} its peak RSS, "
            f"{_ratio(ours.cpu_s / theirs.cpu_s)} its CPU; {agreement}",
        )
    )
    return ours


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


def bench_validate_busy(
    report: Report, path: Path, rows: int, hogs: int, quiet: Measured, repeat: int = 1
) -> None:
    """``backfill validate`` again with ``hogs`` CPU hogs running: peak RSS against quiet.

    The validator then gets a fraction of a core, while its reader thread would read on: the
    peak must not grow with the wait.
    """
    warm_cache(path)
    out = fresh_dir(OUT / f"validate-{rows}-{hogs}-hogs")
    label = f"validate {rows:,} rows (CSV), {hogs} CPU hogs"
    runs: list[tuple[Measured, float]] = []
    with cpu_hogs(hogs) as pids:
        time.sleep(1.0)  # let them take the cores first
        for attempt in range(repeat):
            log(f"{label}: backfill validate ({attempt + 1}/{repeat})")
            before = sum(_proc_cpu_s(pid) or 0.0 for pid in pids)
            ours, _ = run_child(
                [PYTHON, "-m", "backfill", "validate", str(path), "--out",
                 str(out / "backfill"), "--no-progress"],
                out / "backfill-logs",
            )  # fmt: skip
            ours.check("backfill validate")
            runs.append((ours, sum(_proc_cpu_s(pid) or 0.0 for pid in pids) - before))
    ours, hogs_cpu = min(runs, key=lambda r: r[0].wall_s)
    check_background(report, label, ours, also=hogs_cpu)
    report.raw[f"validate_{rows}_{hogs}_hogs"] = {
        "backfill": [_measured_json(m, also=c) for m, c in runs],
        "hogs_cpu_s": [round(c, 3) for _, c in runs],
    }
    report.rows.append(
        Row(
            label,
            f"{_fmt_s(ours.wall_s)} wall, {_fmt_s(ours.cpu_s)} CPU, "
            f"{_fmt_mib(ours.rss_mib)} peak RSS; the hogs used {hogs_cpu / ours.wall_s:.2f} "
            "cores meanwhile",
            f"quiet: {_fmt_s(quiet.wall_s)} wall, {_fmt_s(quiet.cpu_s)} CPU, "
            f"{_fmt_mib(quiet.rss_mib)} peak RSS",
            f"peak RSS {_ratio(ours.rss_mib / quiet.rss_mib)} the quiet run's "
            f"({(ours.rss_mib - quiet.rss_mib) / quiet.rss_mib:+.0%}); "
            f"CPU {_ratio(ours.cpu_s / quiet.cpu_s)}",
        )
    )


def first_differences(ours: Path, theirs: Path, limit: int) -> str:
    """The first rows whose reason differs between two rejects.csv files, as text."""

    def reasons(path: Path) -> dict[int, tuple[str, str, str]]:
        with path.open(newline="", encoding="utf-8") as f:
            return {
                int(r["row"]): (r["reason"], r["anon_id"], r["identified_id"])
                for r in csv.DictReader(f)
            }

    a, b = reasons(ours), reasons(theirs)
    found = []
    for row in sorted(set(a) | set(b)):
        mine, other = a.get(row), b.get(row)
        if (mine and mine[0]) != (other and other[0]):
            pair = (mine or other or ("", "", ""))[1:]
            found.append(
                f"row {row} {pair[0]},{pair[1]}: backfill {mine[0] if mine else 'valid'}, "
                f"naive {other[0] if other else 'valid'}"
            )
            if len(found) == limit:
                break
    return "; ".join(found)


def _measured_json(m: Measured, also: float = 0.0) -> dict[str, Any]:
    return {
        "wall_s": round(m.wall_s, 3),
        "user_s": round(m.user_s, 3),
        "sys_s": round(m.sys_s, 3),
        "maxrss_mib": round(m.rss_mib, 1),
        "returncode": m.returncode,
        "background_cores": round(m.background_cores(also), 3),
    }


def check_background(report: Report, what: str, m: Measured, also: float = 0.0) -> None:
    """Warn when other processes kept the machine busy during a measurement."""
    cores = m.background_cores(also)
    if cores > BACKGROUND_WARN_CORES:
        report.warn(
            f"{what}: other processes kept {cores:.2f} of {os.cpu_count()} cores busy during "
            "the measurement; its wall time is inflated (CPU time and peak RSS are not)"
        )


@dataclass
class RunMeasurement:
    """One ``backfill run`` against its own ``backfill serve``."""

    client: Measured
    served: Measured
    summary: dict[str, Any]
    server: dict[str, Any]
    standin_cpu_s: float
    standin_cpu_sampled: bool
    standin_cpu_at_ready_s: float
    client_send_cpu_s: float | None

    @property
    def send_s(self) -> float:
        """The client's send phase (``this_run.send_s``)."""
        return float(self.summary["this_run"]["send_s"])


def run_once(csv_path: Path, rate: float, out: Path) -> RunMeasurement:
    """Start a stand-in, run the client against it to the end, stop the stand-in."""
    out = fresh_dir(out)
    wait_for_quiet()
    standin = StandinProcess(
        [PYTHON, "-m", "backfill", "serve", "--port", "0"], out / "standin-logs"
    )
    log(f"run {csv_path.name} against {standin.url} (stand-in pid {standin.proc.pid})")
    pids = {"standin": standin.proc.pid}
    sampler = CpuSampler(pids)
    try:
        with sampler:
            client, ended = run_child(
                [PYTHON, "-m", "backfill", "run", str(csv_path), "--api-url", standin.url,
                 "--out", str(out / "run"), "--no-progress", "--restart", "--rate", f"{rate:g}"],
                out / "client-logs",
                env=client_env(),
                on_start=lambda pid: pids.__setitem__("client", pid),
            )  # fmt: skip
    finally:
        served, printed = standin.stop()
    client.check("backfill run")
    summary = json.loads((out / "run" / "summary.json").read_text())
    send_s = float(summary["this_run"]["send_s"])
    # The stand-in's CPU while the client sent (sampled), else all it used after start-up
    # (which then also counts its shutdown: freeing every stored event).
    sampled = sampler.cpu_between("standin", ended - send_s, ended)
    return RunMeasurement(
        client=client,
        served=served,
        summary=summary,
        server=standin_summary(printed),
        standin_cpu_s=sampled if sampled is not None else served.cpu_s - standin.cpu_at_ready,
        standin_cpu_sampled=sampled is not None,
        standin_cpu_at_ready_s=standin.cpu_at_ready,
        client_send_cpu_s=sampler.cpu_between("client", ended - send_s, ended),
    )


def bench_run(report: Report, csv_path: Path, rows: int, rate: float, repeat: int = 1) -> None:
    """``backfill run`` against ``backfill serve`` in its own process, unpaced.

    With ``repeat`` > 1 the run with the least client wall time is reported.
    """
    warm_cache(csv_path)
    runs = [run_once(csv_path, rate, OUT / f"run-{rows}") for _ in range(repeat)]
    best = min(runs, key=lambda r: r.client.wall_s)
    client, served, summary, server = best.client, best.served, best.summary, best.server
    imported = int(summary["events_imported"])
    send_s = best.send_s
    millions = max(imported, 1) / 1e6
    standin_busy = best.standin_cpu_s / send_s
    client_busy = None if best.client_send_cpu_s is None else best.client_send_cpu_s / send_s
    report.raw[f"run_{rows}"] = [
        {
            "client": _measured_json(r.client, also=r.standin_cpu_s),
            "standin": _measured_json(r.served),
            "standin_cpu_at_ready_s": round(r.standin_cpu_at_ready_s, 3),
            "standin_cpu_during_send_s": r.standin_cpu_s if r.standin_cpu_sampled else None,
            "client_cpu_during_send_s": r.client_send_cpu_s,
            "summary": {
                k: r.summary.get(k)
                for k in (
                    "status",
                    "rows_read",
                    "rows_valid",
                    "events_imported",
                    "requests",
                    "retries",
                    "elapsed_s",
                    "events_per_s",
                    "this_run",
                )
            },
            "standin_summary": r.server,
        }
        for r in runs
    ]
    check_background(report, f"run {rows:,} rows", client, also=best.standin_cpu_s)
    if summary["status"] != "completed":
        report.warn(f"run: status {summary['status']!r}")
    if imported != summary["rows_valid"]:
        report.warn(f"run: imported {imported:,} of {summary['rows_valid']:,} valid rows")
    if server and server.get("events_imported") != imported:
        report.warn(
            f"run: the stand-in stored {server.get('events_imported')} events, "
            f"the client counts {imported:,}"
        )
    retries = sum((summary.get("retries") or {}).values())
    if retries:
        report.warn(f"run: {retries} retries against an unfaulted stand-in: {summary['retries']}")
    bound = (
        "stand-in CPU-bound (≥ 90% of a core while sending)"
        if standin_busy >= 0.9
        else "stand-in not CPU-bound"
    )
    client_text = "n/a" if client_busy is None else f"{client_busy:.0%}"
    client_send_text = (
        ""
        if best.client_send_cpu_s is None
        else f" ({best.client_send_cpu_s / millions:,.1f} s of them while sending)"
    )
    report.rows.append(
        Row(
            f"run {rows:,} rows → stand-in, --rate {rate:,.0f} (unpaced)",
            f"{_fmt_s(client.wall_s)} wall (whole process); {imported:,} events imported; "
            f"{imported / client.wall_s:,.0f} events/s whole process, "
            f"{float(summary['events_per_s']):,.0f}/s over the {_fmt_s(send_s)} send phase; "
            f"{client.cpu_s / millions:,.1f} CPU s per 1M events{client_send_text}; "
            f"{_fmt_mib(client.rss_mib)} peak RSS",
            f"stand-in: {best.standin_cpu_s:,.1f} CPU s = {standin_busy:.0%} of a core over the "
            f"send phase ({best.standin_cpu_s / millions:,.1f} CPU s per 1M events), "
            f"{_fmt_mib(served.rss_mib)} peak RSS",
            f"{bound}; client used {client_text} of a core while sending; "
            f"{summary['this_run']['requests']:,} requests, {retries} retries",
        )
    )


def bench_rate(report: Report, csv_path: Path, rate: float) -> None:
    """Hold ``--rate``: the achieved rate from the stand-in's request log and the client."""
    out = fresh_dir(OUT / f"rate-{rate:g}")
    log_path = out / "requests.json"
    wait_for_quiet()
    standin = StandinProcess(
        [PYTHON, str(Path(__file__).resolve()), "--serve-logged", str(log_path)],
        out / "standin-logs",
    )
    log(f"rate check at {rate:,.0f} events/s against {standin.url}")
    try:
        client, _ = run_child(
            [PYTHON, "-m", "backfill", "run", str(csv_path), "--api-url", standin.url,
             "--out", str(out / "run"), "--no-progress", "--restart", "--rate", f"{rate:g}"],
            out / "client-logs",
            env=client_env(),
        )  # fmt: skip
    finally:
        served, _ = standin.stop()
    client.check("backfill run --rate")
    check_background(report, f"--rate {rate:g}", client, also=served.cpu_s - standin.cpu_at_ready)
    summary = json.loads((out / "run" / "summary.json").read_text())
    send_s = float(summary["this_run"]["send_s"])
    client_rate = float(summary["events_per_s"])
    requests = json.loads(log_path.read_text())["requests"] if log_path.exists() else []
    accepted = sorted(
        (r for r in requests if r["status"] in (200, 400) and r["imported"]),
        key=lambda r: r["arrived_s"],
    )
    window = accepted[-1]["arrived_s"] - accepted[0]["arrived_s"] if len(accepted) > 1 else 0.0
    # Between the first and the last arrival, every request but the last was paid for.
    paid = sum(r["events"] for r in accepted[:-1])
    log_rate = paid / window if window > 0 else float("nan")
    if send_s < 10:
        report.warn(f"rate check: the send phase lasted {send_s:.1f} s, under 10 s")
    if not accepted:
        report.warn("rate check: the stand-in's request log is empty or missing")
    report.raw[f"rate_{rate:g}"] = {
        "client": _measured_json(client),
        "send_s": send_s,
        "events_imported": summary["events_imported"],
        "client_events_per_s": client_rate,
        "standin_requests": len(requests),
        "standin_window_s": window,
        "standin_events_per_s": log_rate,
    }

    def deviation(x: float) -> str:
        return f"{(x - rate) / rate:+.1%}"

    report.rows.append(
        Row(
            f"--rate {rate:,.0f}: {summary['events_imported']:,} events",
            f"{log_rate:,.0f} events/s over {window:.1f} s of request arrivals (stand-in log); "
            f"client summary {client_rate:,.0f}/s over its {send_s:.1f} s send phase",
            f"target {rate:,.0f} events/s",
            f"{deviation(log_rate)} (stand-in log), {deviation(client_rate)} (client summary)",
        )
    )


def held_at_standin(requests: list[dict[str, Any]]) -> tuple[float, float, int]:
    """The rate held as the stand-in saw it: (events/s, window s, accepted requests).

    Accepted requests (200/400 with records imported) but the one-event canary, by arrival:
    every one but the last was paid for between the first arrival and the last.
    """
    accepted = sorted(
        (r for r in requests if r["status"] in (200, 400) and r["imported"]),
        key=lambda r: r["arrived_s"],
    )
    if accepted and accepted[0]["events"] == 1:
        accepted = accepted[1:]  # the canary goes alone, a round trip before the pool starts
    if len(accepted) < 2:
        return float("nan"), 0.0, len(accepted)
    window = accepted[-1]["arrived_s"] - accepted[0]["arrived_s"]
    paid = sum(r["events"] for r in accepted[:-1])
    return (paid / window if window > 0 else float("nan")), window, len(accepted)


@dataclass
class PacedRun:
    """One ``backfill run`` with default pacing against a logged stand-in in its own process."""

    client: Measured
    summary: dict[str, Any]
    requests: list[dict[str, Any]]
    server: dict[str, Any]
    #: CPU seconds the stand-in used after its start-up (not counted as background load).
    standin_cpu_s: float

    @property
    def this_run(self) -> dict[str, Any]:
        """The client's ``this_run`` (empty if it wrote no summary)."""
        this = self.summary.get("this_run")
        return this if isinstance(this, dict) else {}


def paced_run(
    csv_path: Path,
    out: Path,
    rate: float,
    *,
    latency_s: float = 0.0,
    rate_limit: float | None = None,
    client_root: Path = ROOT,
) -> PacedRun:
    """Serve a logged stand-in (latency, rate limit), run the client to its end, stop both.

    The client gets only ``--rate`` beyond the run's plumbing: every pacing flag at its default.
    A client that exits non-zero is measured all the same (an old version may abort).
    """
    out = fresh_dir(out)
    log_path = out / "requests.json"
    wait_for_quiet()
    serve = [PYTHON, str(Path(__file__).resolve()), "--serve-logged", str(log_path)]
    serve += ["--serve-latency", f"{latency_s:g}"]
    if rate_limit is not None:
        serve += ["--serve-rate-limit", f"{rate_limit:g}"]
    standin = StandinProcess(serve, out / "standin-logs")
    log(
        f"paced run of {csv_path.name} at --rate {rate:g} against {standin.url} "
        f"(latency {latency_s:g} s, rate limit {rate_limit}; client from {client_root})"
    )
    try:
        client, _ = run_child(
            [PYTHON, "-m", "backfill", "run", str(csv_path), "--api-url", standin.url,
             "--out", str(out / "run"), "--no-progress", "--restart", "--rate", f"{rate:g}"],
            out / "client-logs",
            env=client_env(),
            cwd=client_root,
        )  # fmt: skip
    finally:
        served, printed = standin.stop()
    summary_path = out / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    logged = json.loads(log_path.read_text()) if log_path.exists() else {}
    return PacedRun(
        client,
        summary,
        logged.get("requests", []),
        standin_summary(printed),
        served.cpu_s - standin.cpu_at_ready,
    )


def _pace_json(run: PacedRun, held: float, window: float) -> dict[str, Any]:
    statuses = Counter(r["status"] for r in run.requests)
    return {
        "client": _measured_json(run.client),
        "status": run.summary.get("status"),
        "rows_valid": run.summary.get("rows_valid"),
        "events_imported": run.summary.get("events_imported"),
        "this_run": run.this_run,
        "standin_requests": len(run.requests),
        "standin_statuses": {str(k): v for k, v in statuses.items()},
        "standin_max_in_flight": run.server.get("max_in_flight"),
        "standin_events_imported": run.server.get("events_imported"),
        "standin_held_events_per_s": held,
        "standin_window_s": window,
    }


def _client_label(client_root: Path) -> str:
    if client_root == ROOT:
        return ""
    return f" [client from {client_root}, sources sha256 {source_digest(client_root)}]"


def _versus(held: float, previous: float | None) -> str:
    if previous is None or not previous > 0:
        return ""
    return f"; {held / previous:.2f}x the previous version's {previous:,.0f} events/s"


def bench_latency(
    report: Report,
    csv_path: Path,
    rows: int,
    rate: float,
    latency_s: float,
    client_root: Path,
    previous: float | None = None,
) -> float:
    """Default flags against a stand-in that answers every request ``latency_s`` late: the
    rate held while sending, as the stand-in saw the requests arrive (returned).

    ``previous`` is the previous version's figure, for the ratio.
    """
    label = f"latency {latency_s:g} s, --rate {rate:,.0f}, {rows:,} rows, default flags"
    label += _client_label(client_root)
    out = OUT / f"latency-{latency_s:g}-{client_root.name}"
    run = paced_run(csv_path, out, rate, latency_s=latency_s, client_root=client_root)
    check_background(report, label, run.client, also=run.standin_cpu_s)
    held, window, accepted = held_at_standin(run.requests)
    this = run.this_run
    report.raw[f"latency_{latency_s:g}_{client_root.name}"] = _pace_json(run, held, window)
    if run.client.returncode != 0 or run.summary.get("status") != "completed":
        report.warn(f"{label}: exit {run.client.returncode}, status {run.summary.get('status')}")
    target = 0.9 * rate
    verdict = "meets" if held >= target else "MISSES"
    client_held = this.get("rate_held_per_s")
    client_text = "client: "
    if isinstance(client_held, int | float):
        client_text += f"held {client_held:,.0f}/s, "
    report.rows.append(
        Row(
            label,
            f"**{held:,.0f} events/s** held at the stand-in ({held / rate:.0%} of --rate) over "
            f"{window:.1f} s, {accepted} requests; {client_text}"
            f"{float(this.get('events_per_s', 0)):,.0f}/s over its whole "
            f"{float(this.get('send_s', 0)):.1f} s send phase (canary round trip included); "
            f"at most {run.server.get('max_in_flight')} requests in flight",
            f"target: ≥ 90% of --rate = {target:,.0f} events/s",
            f"{verdict} the target{_versus(held, previous)}; "
            f"{run.summary.get('events_imported', 0):,} of "
            f"{run.summary.get('rows_valid', 0):,} pairs imported",
        )
    )
    return held


def bench_backoff(
    report: Report,
    csv_path: Path,
    rows: int,
    rate: float,
    limit: float,
    latency_s: float,
    client_root: Path,
    previous: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Default flags at ``rate`` against a stand-in answering 429 above ``limit`` events/s:
    every pair imported, the share of requests answered 429, the rate held.

    Returns (share of 429s, rate held); ``previous`` is the previous version's, for the ratio.
    """
    label = f"--rate {rate:,.0f} against a 429 limit of {limit:,.0f} events/s, {rows:,} rows"
    if latency_s:
        label += f", latency {latency_s:g} s"
    label += _client_label(client_root)
    run = paced_run(
        csv_path,
        OUT / f"backoff-{limit:g}-{client_root.name}",
        rate,
        latency_s=latency_s,
        rate_limit=limit,
        client_root=client_root,
    )
    check_background(report, label, run.client, also=run.standin_cpu_s)
    held, window, _ = held_at_standin(run.requests)
    this = run.this_run
    report.raw[f"backoff_{limit:g}_{client_root.name}"] = _pace_json(run, held, window)
    total = len(run.requests)
    limited = sum(1 for r in run.requests if r["status"] == 429)
    share = limited / total if total else float("nan")
    valid = int(run.summary.get("rows_valid", 0))
    imported = int(run.summary.get("events_imported", 0))
    status = run.summary.get("status")
    everything = status == "completed" and imported == valid
    if not everything:
        report.warn(f"{label}: status {status}, {imported:,} of {valid:,} pairs imported")
    ok = everything and share < 0.10 and held >= 0.8 * limit
    lowest = this.get("lowest_rate_per_s")
    lowered = (
        f"; rate lowered {this.get('rate_lowered')}x, lowest {lowest:,.0f}/s"
        if isinstance(lowest, int | float)
        else ""
    )
    retries = run.summary.get("retries") or {}
    report.rows.append(
        Row(
            label,
            f"status {status}: {imported:,} of {valid:,} pairs imported; **{limited:,} of "
            f"{total:,} requests answered 429 ({share:.1%})**; **{held:,.0f} events/s held** "
            f"at the stand-in over {window:.1f} s{lowered}; retries {retries}",
            f"target: every pair, < 10% 429, ≥ {0.8 * limit:,.0f} events/s held",
            ("meets the targets" if ok else "MISSES a target")
            + (
                f"; the previous version: {previous[0]:.1%} of requests 429, "
                f"{previous[1]:,.0f} events/s held"
                if previous is not None
                else ""
            ),
        )
    )
    return share, held


# --- the table -------------------------------------------------------------------------------


def render(report: Report, args: argparse.Namespace) -> str:
    """The results as markdown: the table, then the machine, the command and any warnings."""
    lines = [
        "| benchmark | backfill | reference | result |",
        "|---|---|---|---|",
        *(f"| {r.benchmark} | {r.backfill} | {r.reference} | {r.result} |" for r in report.rows),
    ]
    versions = _versions()
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPUs, {_mem_total_gib():.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, {versions}. "
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"backfill: {report.raw.get('revision', _revision())} at the end; measured with "
        f"backfill/**/*.py sha256 {', '.join(MEASURED_WITH) or 'n/a'}. "
        f"Command: `python benchmarks/bench.py {' '.join(args.argv)}`".rstrip()
        + ".",
        "Wall time is the whole child process (interpreter start-up, imports and validation "
        "included); CPU is user + system from `os.wait4`; peak RSS is the child's `ru_maxrss`. "
        "The stand-in's CPU excludes its own start-up (imports), which ends before the run.",
    ]
    lines += [f"Note: {n}" for n in report.notes]
    lines += [f"**Warning:** {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _versions() -> str:
    import aiohttp
    import pandas

    return (
        f"numpy {np.__version__}, pyarrow {pa.__version__}, pandas {pandas.__version__}, "
        f"aiohttp {aiohttp.__version__}"
    )


def source_digest(root: Path = ROOT) -> str:
    """A short digest of ``root``'s backfill/**/*.py: which code a measurement ran."""
    digest = hashlib.sha256()
    for source in sorted((root / "backfill").rglob("*.py")):
        name = source.relative_to(root / "backfill").as_posix()
        digest.update(name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


#: Digest of backfill/**/*.py -> the measurements that ran with it (normally one digest).
MEASURED_WITH: dict[str, list[str]] = {}


def _revision() -> str:
    """The commit measured, and whether backfill/ differs from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                "backfill",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", ""
    return (
        f"commit {head}"
        + (" with uncommitted changes in backfill/" if dirty else "")
        + f" (sources sha256 {source_digest()})"
    )


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(
        description="Benchmark backfill: validate vs naive pandas, run throughput, --rate.",
        epilog="Smoke test: python benchmarks/bench.py --rows 200000 --send-rows 50000 --skip-big "
        "--latency-rows 50000 --backoff-rows 100000",
    )
    p.add_argument("--rows", type=int, default=2_000_000, help="validate benchmark rows")
    p.add_argument("--send-rows", type=int, default=500_000, help="run benchmark rows")
    p.add_argument(
        "--big-rows",
        type=int,
        nargs="+",
        default=[20_000_000],
        metavar="ROWS",
        help="big validate rows (one run per size given)",
    )
    p.add_argument(
        "--hogs",
        type=int,
        default=0,
        metavar="N",
        help="also validate the --rows input with N busy-loop processes running",
    )
    p.add_argument("--skip-big", action="store_true", help="no big validate")
    p.add_argument(
        "--skip-big-naive", action="store_true", help="big validate: backfill only, no pandas"
    )
    p.add_argument(
        "--only",
        choices=["validate", "run", "rate", "latency", "backoff"],
        action="append",
        help="this benchmark only (repeat for several)",
    )
    p.add_argument("--latency-rows", type=int, default=200_000, help="latency benchmark rows")
    p.add_argument("--latency-s", type=float, default=1.5, help="latency benchmark: seconds")
    p.add_argument("--latency-rate", type=float, default=20_000.0, help="its --rate")
    p.add_argument("--backoff-rows", type=int, default=400_000, help="backoff benchmark rows")
    p.add_argument(
        "--backoff-limit", type=float, default=10_000.0, help="its stand-in's 429 limit, events/s"
    )
    p.add_argument("--backoff-rate", type=float, default=25_000.0, help="its --rate")
    p.add_argument(
        "--backoff-latency", type=float, default=0.0, help="its stand-in's latency, seconds"
    )
    p.add_argument(
        "--client-root",
        type=Path,
        default=ROOT,
        help="latency/backoff: run the client from this source tree (a previous version)",
    )
    p.add_argument(
        "--compare-root",
        type=Path,
        help="latency/backoff: also run the client from this source tree first, and compare",
    )
    p.add_argument("--rate", type=float, default=5000.0, help="rate check target, events/s")
    p.add_argument(
        "--rate-seconds", type=float, default=12.0, help="rate check: seconds of events to send"
    )
    p.add_argument(
        "--send-rate", type=float, default=1_000_000.0, help="run benchmark --rate (unpaced)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="validate and run: N runs each, the fastest kept"
    )
    p.add_argument("--parquet", action="store_true", help="also write and validate Parquet")
    p.add_argument("--seed", type=int, default=20261128, help="input generator seed")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for the machine to be idle",
    )
    p.add_argument("--no-results-file", action="store_true", help="do not write results.md")
    p.add_argument("--serve-logged", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve-latency", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--serve-rate-limit", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(argv)
    for name in ("rows", "send_rows", "latency_rows", "backoff_rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.big_rows) < 1:
        p.error("--big-rows must be at least 1")
    if args.hogs < 0:
        p.error("--hogs must be at least 0")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.rate <= 0 or args.rate_seconds <= 0 or args.send_rate <= 0:
        p.error("--rate, --rate-seconds and --send-rate must be positive")
    return args


def compile_sources(*roots: Path | None) -> None:
    """Byte-compile the package, as ``pip install`` does.

    An editable checkout run with PYTHONDONTWRITEBYTECODE set (as in CI containers) would
    otherwise compile every module again at each start, time no installed copy spends.
    """
    for root in {r for r in (ROOT, *roots) if r is not None}:
        compileall.compile_dir(root / "backfill", quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks, print the table and write results.md."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_logged is not None:
        serve_logged(args.serve_logged, args.serve_latency, args.serve_rate_limit)
        return 0
    global QUIET_WAIT_S
    QUIET_WAIT_S = args.wait_quiet
    report = Report()
    compile_sources(args.client_root, args.compare_root)
    load = _loadavg()
    log(f"load average {load} on {os.cpu_count()} CPUs")
    report.notes.append(f"load average at the start: {load} (1, 5, 15 min)")
    wanted = set(args.only or ("validate", "run", "rate", "latency", "backoff"))
    if "validate" in wanted:
        path = ensure_input(args.rows, args.seed, parquet=args.parquet)
        quiet = bench_validate(
            report, path, args.rows, f"validate {args.rows:,} rows (CSV)", repeat=args.repeat
        )
        if args.hogs:
            bench_validate_busy(report, path, args.rows, args.hogs, quiet, repeat=args.repeat)
        if args.parquet:
            pq_path = data_path(args.rows, args.seed, ".parquet")
            warm_cache(pq_path)
            bench_validate(
                report,
                pq_path,
                args.rows,
                f"validate {args.rows:,} rows (Parquet)",
                naive=False,
                repeat=args.repeat,
            )
        for big_rows in [] if args.skip_big else args.big_rows:
            big = ensure_input(big_rows, args.seed)
            bench_validate(
                report,
                big,
                big_rows,
                f"validate {big_rows:,} rows (CSV)",
                naive=not args.skip_big_naive,
            )
    if "run" in wanted:
        bench_run(
            report,
            ensure_input(args.send_rows, args.seed),
            args.send_rows,
            args.send_rate,
            repeat=args.repeat,
        )
    if "rate" in wanted:
        # Enough rows that the valid ones (about 97.8%) take rate_seconds to send.
        rows = math.ceil(args.rate * args.rate_seconds / 0.95)
        bench_rate(report, ensure_input(rows, args.seed), args.rate)
    # With --compare-root, the previous version runs first and the current row gives the ratio.
    roots = [args.client_root.resolve()]
    if args.compare_root is not None:
        roots.insert(0, args.compare_root.resolve())
    if "latency" in wanted:
        rows = args.latency_rows
        path = ensure_input(rows, args.seed)
        held: float | None = None
        for root in roots:
            held = bench_latency(
                report, path, rows, args.latency_rate, args.latency_s, root,
                previous=held if root != roots[0] else None,
            )  # fmt: skip
    if "backoff" in wanted:
        rows = args.backoff_rows
        path = ensure_input(rows, args.seed)
        before: tuple[float, float] | None = None
        for root in roots:
            before = bench_backoff(
                report, path, rows, args.backoff_rate, args.backoff_limit, args.backoff_latency,
                root, previous=before if root != roots[0] else None,
            )  # fmt: skip
    report.raw["measured_with"] = MEASURED_WITH
    if len(MEASURED_WITH) > 1:
        report.warn(
            "backfill/ changed while the benchmark ran; measurements by sources sha256: "
            + "; ".join(f"{d}: {', '.join(sorted(set(w)))}" for d, w in MEASURED_WITH.items())
        )
    report.raw["revision"] = _revision()
    table = render(report, args)
    print(table)
    if not args.no_results_file:
        RESULTS.write_text("# Benchmark results\n\n" + table)
        (OUT / "results.json").parent.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(report.raw, indent=2, default=str) + "\n")
        log(f"wrote {RESULTS.relative_to(ROOT)} and {(OUT / 'results.json').relative_to(ROOT)}")
    return 1 if report.warnings else 0


if __name__ == "__main__":
    sys.exit(main())
