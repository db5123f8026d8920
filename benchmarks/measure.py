"""Run one command and report its own resource use: how ``bench.py`` measures a child.

    python -S benchmarks/measure.py REPORT.json COMMAND...

Why a go-between: on Linux, ``subprocess`` starts a child with vfork (or posix_spawn), so the
child runs in its parent's memory until it calls exec, and exec carries the old memory's peak
resident set over into the new program's ``ru_maxrss``. A command started straight from
``bench.py`` was therefore reported with ``max(bench.py's own peak, its own)``: once bench.py
had generated a 2M-row input in-process (a 499 MiB peak), a validation that peaked at 275 MiB
was reported as 499 MiB. This script imports only the standard library and holds nothing, so
what its child inherits is a few MiB, below the peak of anything measured.

As soon as the command has started, its pid goes to ``REPORT.json.pid`` (for samplers); when
it ends, ``REPORT.json`` gets its exit status, wall time (monotonic clock, from just before
the start to the reaping), user and system CPU seconds and peak RSS in KiB, both from
``os.wait4`` on that one process. The script exits 0 unless it could not run the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    """Run ``argv[1:]``, write the report to ``argv[0]``."""
    if len(argv) < 2:
        print("usage: measure.py REPORT.json COMMAND...", file=sys.stderr)
        return 2
    report, command = argv[0], argv[1:]
    started = time.monotonic()
    proc = subprocess.Popen(command)
    with open(report + ".pid", "w", encoding="ascii") as f:
        f.write(str(proc.pid))
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    result = {
        "returncode": proc.returncode,
        "wall_s": ended - started,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,
    }
    with open(report, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
