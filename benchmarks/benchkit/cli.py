"""The command line of ``bench.py``: its options, and running the benchmarks they choose."""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import OUT, RESULTS, ROOT, log, warm_cache
from .inputs import data_path, ensure_input
from .paced import Backoff, bench_backoff, bench_latency
from .sending import bench_rate, bench_run
from .session import Session
from .standin import serve_logged
from .table import loadavg, render, revision
from .validate import bench_validate, bench_validate_busy

BENCHMARKS = ("validate", "run", "rate", "latency", "backoff")


def _add_validate_options(p: argparse.ArgumentParser) -> None:
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
        choices=list(BENCHMARKS),
        action="append",
        help="this benchmark only (repeat for several)",
    )


def _add_pacing_options(p: argparse.ArgumentParser) -> None:
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
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


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error (2) on an option out of range."""
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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(
        description="Benchmark backfill: validate vs naive pandas, run throughput, --rate.",
        epilog="Smoke test: python benchmarks/bench.py --rows 200000 --send-rows 50000 --skip-big "
        "--latency-rows 50000 --backoff-rows 100000",
    )
    _add_validate_options(p)
    _add_pacing_options(p)
    _add_run_options(p)
    args = p.parse_args(argv)
    args.argv = list(argv)
    _check(p, args)
    return args


def compile_sources(*roots: Path | None) -> None:
    """Byte-compile the package, as ``pip install`` does.

    An editable checkout run with PYTHONDONTWRITEBYTECODE set (as in CI containers) would
    otherwise compile every module again at each start, time no installed copy spends.
    """
    for root in {r for r in (ROOT, *roots) if r is not None}:
        compileall.compile_dir(root / "backfill", quiet=1)


def _validate(session: Session, args: argparse.Namespace) -> None:
    """The validate benchmarks: the --rows input (quiet, busy, Parquet), then the big ones."""
    path = ensure_input(args.rows, args.seed, parquet=args.parquet)
    quiet = bench_validate(
        session, path, args.rows, f"validate {args.rows:,} rows (CSV)", repeat=args.repeat
    )
    if args.hogs:
        bench_validate_busy(session, path, args.rows, args.hogs, quiet, repeat=args.repeat)
    if args.parquet:
        pq_path = data_path(args.rows, args.seed, ".parquet")
        warm_cache(pq_path)
        bench_validate(
            session,
            pq_path,
            args.rows,
            f"validate {args.rows:,} rows (Parquet)",
            naive=False,
            repeat=args.repeat,
        )
    for big_rows in [] if args.skip_big else args.big_rows:
        big = ensure_input(big_rows, args.seed)
        bench_validate(
            session,
            big,
            big_rows,
            f"validate {big_rows:,} rows (CSV)",
            naive=not args.skip_big_naive,
        )


def _paced(session: Session, args: argparse.Namespace, wanted: set[str]) -> None:
    """The latency and backoff benchmarks, with --compare-root's client first if given."""
    roots = [args.client_root.resolve()]
    if args.compare_root is not None:
        roots.insert(0, args.compare_root.resolve())
    if "latency" in wanted:
        rows = args.latency_rows
        path = ensure_input(rows, args.seed)
        held: float | None = None
        for root in roots:
            held = bench_latency(
                session, path, rows, args.latency_rate, args.latency_s, root,
                previous=held if root != roots[0] else None,
            )  # fmt: skip
    if "backoff" in wanted:
        setting = Backoff(
            args.backoff_rows, args.backoff_rate, args.backoff_limit, args.backoff_latency
        )
        path = ensure_input(setting.rows, args.seed)
        before: tuple[float, float] | None = None
        for root in roots:
            before = bench_backoff(
                session, path, setting, root, previous=before if root != roots[0] else None
            )


def _finish(session: Session, args: argparse.Namespace) -> int:
    """Print the table, write results.md and results.json; 1 if anything needs a look."""
    report = session.report
    report.raw["measured_with"] = session.measured_with
    if len(session.measured_with) > 1:
        report.warn(
            "backfill/ changed while the benchmark ran; measurements by sources sha256: "
            + "; ".join(
                f"{d}: {', '.join(sorted(set(w)))}" for d, w in session.measured_with.items()
            )
        )
    report.raw["revision"] = revision()
    table = render(session, args.argv)
    print(table)
    if not args.no_results_file:
        RESULTS.write_text("# Benchmark results\n\n" + table)
        (OUT / "results.json").parent.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(report.raw, indent=2, default=str) + "\n")
        log(f"wrote {RESULTS.relative_to(ROOT)} and {(OUT / 'results.json').relative_to(ROOT)}")
    return 1 if report.warnings else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks, print the table and write results.md."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_logged is not None:
        serve_logged(args.serve_logged, args.serve_latency, args.serve_rate_limit)
        return 0
    session = Session(quiet_wait_s=args.wait_quiet)
    compile_sources(args.client_root, args.compare_root)
    load = loadavg()
    log(f"load average {load} on {os.cpu_count()} CPUs")
    session.report.notes.append(f"load average at the start: {load} (1, 5, 15 min)")
    wanted = set(args.only or BENCHMARKS)
    if "validate" in wanted:
        _validate(session, args)
    if "run" in wanted:
        bench_run(
            session,
            ensure_input(args.send_rows, args.seed),
            args.send_rows,
            args.send_rate,
            repeat=args.repeat,
        )
    if "rate" in wanted:
        # Enough rows that the valid ones (about 97.8%) take rate_seconds to send.
        rows = math.ceil(args.rate * args.rate_seconds / 0.95)
        bench_rate(session, ensure_input(rows, args.seed), args.rate)
    # With --compare-root, the previous version runs first and the current row gives the ratio.
    _paced(session, args, wanted)
    return _finish(session, args)
