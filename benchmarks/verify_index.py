"""Peak memory of ``backfill verify``'s join at any number of pairs, without a run or an export.

``backfill verify`` at 10^8 pairs would need a 10^8-event project to export; this measures the
part of it whose memory could grow with the pairs: the key index (``verification.index``)
fed as ``check`` feeds it. For each size, in a fresh process: N sent keys in chunks of 65,536
(as the input's chunks come), a merged set of N/4 keys from an earlier verify, the export's
lines (every sent key once, 1% of them failing, plus N/10 of the project's own events and
N/20 repeats), then the join, the outcomes read back in row order, and the new merged set.
Each size prints wall and CPU seconds, peak RSS and the bytes the temp files reached.

    PYTHONPATH=$PWD python benchmarks/verify_index.py --pairs 1000000 10000000 100000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from backfill.verification.files import MergedSet, read_merged
from backfill.verification.index import DEFAULT_BUDGET, KeyIndex, Outcomes

CHUNK = 1 << 16


def measure(pairs: int, folder: Path) -> dict[str, float]:
    """One size, in this process: the figures."""
    rng = np.random.default_rng(7)
    start, cpu = time.perf_counter(), time.process_time()
    disk = 0
    with KeyIndex(DEFAULT_BUDGET, folder) as index:
        for at in range(0, pairs, CHUNK):
            n = min(CHUNK, pairs - at)
            index.add_sent(_keys(at, n), rng.integers(19_000, 19_400, n, dtype=np.int64))
        with MergedSet(folder) as before:
            for at in range(0, pairs // 4, CHUNK):
                before.add(_keys(at, min(CHUNK, pairs // 4 - at)))
            before.commit()
        for keys in read_merged(folder):
            index.add_before(keys)
        known, _ = index.still_to_find()
        lines = pairs + pairs // 10 + pairs // 20
        for at in range(0, lines, CHUNK):
            n = min(CHUNK, lines - at)
            ordinals = np.arange(at, at + n, dtype=np.uint64)
            ours = ordinals < pairs
            repeat = ordinals >= pairs + pairs // 10
            keys = np.where(ours, _keys(at, n), _keys(at + 2**40, n))
            keys[repeat] = _keys(at % pairs, n)[repeat]
            codes = np.where(ours & (rng.random(n) < 0.01), 1, 0).astype(np.int32)
            index.add_exported(keys, codes)
        with Outcomes(index.sent, DEFAULT_BUDGET, folder) as outcomes, MergedSet(folder) as merged:
            index.resolve(outcomes, merged)
            disk = index.disk_bytes + outcomes.disk_bytes
            index.close()
            counts = np.zeros(3, dtype=np.int64)
            for at in range(0, pairs, CHUNK):
                outcome, _ = outcomes.of(at, min(CHUNK, pairs - at))
                counts += np.bincount(outcome, minlength=3)
            merged.commit()
    assert counts.sum() == pairs
    assert known == pairs // 4
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "pairs": pairs,
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "peak_rss_mib": round(peak),
        "temp_disk_mib": round(disk / 2**20),
        "merged": int(counts[1]),
        "not_merged": int(counts[2]),
        "not_found": int(counts[0]),
    }


def _keys(first: int, n: int) -> np.ndarray:
    """Keys of ordinals ``first`` to ``first + n - 1``: a bijective mix, as insert ids are."""
    x = np.arange(first, first + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15)
        return x ^ (x >> np.uint64(29))


def main() -> None:
    """Each size in its own process, so that each peak is its own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dir", type=Path, default=None, help="temp files (default: /tmp)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="verify-index-"))
        try:
            print(json.dumps(measure(args.pairs[0], folder)))
        finally:
            shutil.rmtree(folder)
        return
    for pairs in args.pairs:
        command = [sys.executable, __file__, "--one", "--pairs", str(pairs)]
        if args.dir:
            command += ["--dir", str(args.dir)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
