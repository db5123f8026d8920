"""SIGINT at 100 random instants of ``backfill run``, each followed by a resume (issue 19.5).

    PYTHONPATH=$PWD python benchmarks/interrupts.py [--instants 100] [--seed 19]

The instants are spread over an uninterrupted run's life, measured first (one at random in
each of 100 equal slices: validation, the canary, the sending and the final writes all get
their share). Each trial (``tests/interrupting.py``) starts a fresh stand-in answering 50 ms
late and a fresh run folder, sends SIGINT, and checks: exit 130 within 5 s (or 0 with the
summary ``completed`` when the run had finished), nothing on stderr that is a traceback, an
abort or an "error:", then a resume that exits 0 having sent exactly the pairs the checkpoint
did not record as done, and a stand-in holding each valid pair once.
``tests/test_ctrl_c_at_any_instant.py`` runs 20 of these. Prints one line per trial and a
summary; exit 1 if any trial broke a promise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from interrupting import baseline_s, instants, trial, write_mappings


async def main(count: int, seed: int) -> int:
    """Run ``count`` trials; 0 if every one kept every promise."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="backfill-interrupts-") as tmp:
        folder = Path(tmp)
        data = write_mappings(folder)
        span = await baseline_s(data, folder)
        print(f"uninterrupted run: {span:.2f} s from its run folder to its exit", flush=True)
        codes: Counter[int | None] = Counter()
        stops: list[float] = []
        failed = 0
        for i, delay in enumerate(instants(count, span, seed)):
            where = folder / f"trial-{i}"
            where.mkdir()
            result = await trial(data, where, delay)
            codes[result.code] += 1
            if result.code == 130 and result.stop_s is not None:
                stops.append(result.stop_s)
            failed += not result.ok
            print(
                f"{i:3d} at {delay:5.2f} s: exit {result.code} after {result.stop_s or 0:.2f} s, "
                f"status {result.status}, resume {result.resume_code}"
                + ("" if result.ok else f"  BROKEN: {result.problems}"),
                flush=True,
            )
    took = time.monotonic() - started
    print(
        f"{count} SIGINTs: {dict(codes)} exits; {failed} broke a promise; SIGINT to exit 130: "
        f"median {statistics.median(stops) if stops else 0:.2f} s, max "
        f"{max(stops, default=0):.2f} s; {took:.0f} s in all"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=19)
    options = parser.parse_args()
    raise SystemExit(asyncio.run(main(options.instants, options.seed)))
