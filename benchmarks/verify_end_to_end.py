"""``backfill verify`` after a real run against the local stand-in, beside the dry run's figures.

For each size: the benchmark input of that many rows (generated once, as ``bench.py`` does),
a fresh ``backfill serve``, then ``backfill validate``, ``backfill run`` and ``backfill
verify`` of it, each measured through ``measure.py`` (wall, CPU, peak RSS of that process
alone). The stand-in keeps every imported event in memory (about 3 KB each), so sizes past a
few million rows need ``verify_index.py``, which measures the join alone at any size.

    PYTHONPATH=$PWD python benchmarks/verify_end_to_end.py --rows 1000000 2000000
"""

from __future__ import annotations

import argparse
import re
import sys

from benchkit.common import OUT, backfill_cmd, fresh_dir
from benchkit.inputs import ensure_input
from benchkit.measuring import Measured, run_child
from benchkit.standin import StandinProcess, client_env


def one_size(rows: int, seed: int) -> list[str]:
    """The three commands of one size, measured: a line each."""
    source = ensure_input(rows, seed)
    work = fresh_dir(OUT / f"verify-{rows}")
    standin = StandinProcess(backfill_cmd("serve", "--port", "0"), work / "standin")
    lines = []
    try:
        env = client_env()
        run_dir, quiet = str(work / "run"), ("--no-progress", "--no-report")
        commands = {
            "validate": ["validate", str(source), "--out", str(work / "dry"), *quiet],
            "run": ["run", str(source), "--out", run_dir, "--api-url", standin.url, *quiet],
            "verify": ["verify", str(source), "--out", run_dir, "--export-url", standin.url],
        }
        for name, args in commands.items():
            measured, _ = run_child(backfill_cmd(*args), work / name, env=env)
            lines.append(_line(rows, name, measured))
            if measured.returncode != 0:
                lines.append(f"  {name} exited {measured.returncode}: {measured.stderr[-500:]}")
                break
    finally:
        standin.stop()
    return lines


def _line(rows: int, name: str, m: Measured) -> str:
    sent = re.search(r"pairs sent\s+([\d,]+)", m.stdout)
    extra = f", {sent.group(1)} pairs verified" if sent and name == "verify" else ""
    return (
        f"{rows:>11,} rows  {name:<9} {m.wall_s:7.1f} s  {m.user_s + m.sys_s:7.1f} CPU s  "
        f"{m.maxrss_kib / 1024:6.0f} MiB peak RSS{extra}"
    )


def main() -> int:
    """Each size in turn; exit 1 when a command failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--seed", type=int, default=20261128)
    args = parser.parse_args()
    failed = False
    for rows in args.rows:
        for line in one_size(rows, args.seed):
            print(line, flush=True)
            failed |= "exited" in line
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
