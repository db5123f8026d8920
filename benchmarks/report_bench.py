"""What ``report.html`` costs a dry run: 2M rows with a planted kiosk, with and without it.

    python benchmarks/report_bench.py [--rows 2000000] [--repeat 3]

The input is ``bench.py``'s generated CSV (realistic refusals) with 1,200 rows of one
identified id, ``kiosk@store-7.example.com``, planted with fresh UUID v4 anon ids, and an
event-time column over three years. ``backfill validate`` runs alternately with and without
``--no-report`` (through ``measure.py``: wall, CPU and peak RSS of the child alone); printed:
the best of each, the page's size, and the kiosk's place in the largest-clusters chart.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.common import DATA, OUT, ROOT, fresh_dir
from benchkit.inputs import ensure_input
from benchkit.measuring import Measured, run_child

KIOSK = "kiosk@store-7.example.com"


def kiosk_input(rows: int) -> Path:
    """bench.py's input of ``rows`` rows, with the kiosk and a time column (made once)."""
    path = DATA / f"kiosk_{rows}.csv"
    if path.exists():
        return path
    table = pacsv.read_csv(ensure_input(rows, 1))
    rng = np.random.default_rng(7)
    at = np.sort(rng.choice(rows, 1200, replace=False))
    ident = table.column("identified_id").to_numpy(zero_copy_only=False).astype(object)
    anon = table.column("anon_id").to_numpy(zero_copy_only=False).astype(object)
    ident[at] = KIOSK
    anon[at] = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in at]
    seconds = 1_640_995_200 + (np.arange(rows) * (94_000_000 // rows)).astype(np.int64)
    out = pa.table({"anon_id": anon.tolist(), "identified_id": ident.tolist(),
                    "merged_at": pa.array(seconds).cast(pa.string())})  # fmt: skip
    pacsv.write_csv(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    return path


def main() -> int:
    """Measure, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = kiosk_input(args.rows)
    best: dict[str, Measured] = {}
    page = 0
    for i in range(args.repeat):
        for label, extra in (("report", []), ("no report", ["--no-report"])):
            out = fresh_dir(OUT / f"report_bench_{label.replace(' ', '_')}")
            cmd = [sys.executable, "-m", "backfill", "validate", str(data), "--out", str(out),
                   "--time-column", "merged_at", "--no-progress", *extra]  # fmt: skip
            measured, _ = run_child(cmd, OUT / "logs" / f"{label}-{i}", cwd=ROOT)
            if label not in best or measured.wall_s < best[label].wall_s:
                best[label] = measured
            if not extra:
                page = (out / "report.html").stat().st_size
                text = (out / "report.html").read_text(encoding="utf-8")
                top = text[text.index('<figure class="top">') :]
                first = top[top.index('class="label"') :].split(">", 1)[1].split("<", 1)[0]
            print(f"{label}: {measured.wall_s:.2f} s wall, {measured.cpu_s:.2f} CPU s, "
                  f"{measured.rss_mib:.0f} MiB", flush=True)  # fmt: skip
    with_r, without = best["report"], best["no report"]
    print(f"best with report: {with_r.wall_s:.2f} s, {with_r.cpu_s:.2f} CPU s, "
          f"{with_r.rss_mib:.0f} MiB; without: {without.wall_s:.2f} s, {without.cpu_s:.2f} CPU s, "
          f"{without.rss_mib:.0f} MiB; wall +{100 * (with_r.wall_s / without.wall_s - 1):.1f}%, "
          f"CPU +{100 * (with_r.cpu_s / without.cpu_s - 1):.1f}%; page {page:,} bytes; "
          f"first bar of the largest clusters: {first}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
