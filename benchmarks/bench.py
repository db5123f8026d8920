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

The benchmarks themselves live in the ``benchkit`` package beside this file (its
``__init__`` lists its modules); this file is the entry point.
"""

from __future__ import annotations

import sys

from benchkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
