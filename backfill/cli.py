"""The command line: argparse in front, the exception tree mapped to exit codes behind.

Only this module prints errors or chooses exit codes; everything below raises.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from backfill import __version__
from backfill.errors import EXIT_INTERRUPTED, BackfillError, InputError
from backfill.mixpanel import LEGACY_SECRET_SUNSET
from backfill.report import render_table
from backfill.settings import Settings, build_settings, load_config

_VALIDATE_EXAMPLES = """\
examples:
  backfill validate mappings.csv
  backfill validate export.parquet --anon-column device_id --identified-column user_id
  backfill validate mappings.csv.gz --time-column merged_at --out runs/march
  backfill validate mappings.csv --config configs/migration.toml

Writes rejects.csv (every refused row, with its reason) and summary.json to --out
(default runs/<input stem>/). Exit 0 when the file was read, whatever was rejected.
"""

_RUN_EXAMPLES = """\
examples:
  export MIXPANEL_SERVICE_ACCOUNT_USERNAME=... MIXPANEL_SERVICE_ACCOUNT_SECRET=...
  export MIXPANEL_PROJECT_ID=1234567
  backfill run mappings.csv --region eu
  backfill run mappings.csv --config configs/migration.toml
  backfill run mappings.csv            # again after a crash or Ctrl-C: resumes

Credentials come from the environment only. Rerunning the same command resumes from the
checkpoint in --out; a finished run sends nothing more. Exit codes: 0 finished, 2 bad usage or
input (nothing sent), 3 aborted (Mixpanel refused the credentials or a request, or
retries were exhausted: fix the cause the message names, then rerun to resume),
130 interrupted (rerun to resume).
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, metavar="INPUT", help="CSV (.csv, .csv.gz) or Parquet file")
    p.add_argument("--out", metavar="DIR", help="report folder (default: runs/<input stem>/)")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML file; flags override it")
    p.add_argument("--format", choices=["csv", "parquet"], help="default: from the extension")
    p.add_argument("--anon-column", metavar="NAME", help="anon id column (default: anon_id)")
    p.add_argument(
        "--identified-column", metavar="NAME", help="identified id column (default: identified_id)"
    )
    p.add_argument(
        "--time-column",
        metavar="NAME",
        help="event time column: epoch s, epoch ms or ISO 8601 (default: none)",
    )
    p.add_argument(
        "--max-cluster-size",
        type=int,
        metavar="N",
        help="ids per identity cluster, the identified id included (default: 500)",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="events per request, at most 2000 (default)"
    )
    p.add_argument(
        "--rate", type=float, metavar="EVENTS/S", help="events per second (default: 25000)"
    )
    p.add_argument("--no-progress", action="store_true", default=None, help="no progress display")


def _send_options(p: argparse.ArgumentParser) -> None:
    """How to send: shared by `run` and `rehearse`."""
    p.add_argument("--concurrency", type=int, metavar="N", help="requests in flight (default: 10)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="tries per batch (default: 8)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per request (default: 30)")
    p.add_argument(
        "--event-time",
        metavar="ISO8601|EPOCH",
        help="time of every event without --time-column (default: the first run's start)",
    )
    p.add_argument(
        "--retry-base-s",
        type=float,
        metavar="SECONDS",
        help="first retry pause; doubles to 30x, jitter 0.5x-2.5x (default: 2, Mixpanel's)",
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project-id", metavar="ID", help="default: $MIXPANEL_PROJECT_ID")
    p.add_argument("--region", choices=["us", "eu", "in"], help="data residency (default: us)")
    p.add_argument(
        "--api-url", metavar="URL", help="overrides --region (https; http only to loopback)"
    )
    _send_options(p)
    p.add_argument(
        "--restart", action="store_true", help="discard the checkpoint in --out and start over"
    )
    p.add_argument("--dry-run", action="store_true", help="validate only: the same as `validate`")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="backfill",
        description="Replay anon-to-identified ID mappings into Mixpanel as $identify events.",
        epilog="Start with `backfill validate INPUT`: it sends nothing. See README.md.",
    )
    parser.add_argument("--version", action="version", version=f"backfill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter
    v = sub.add_parser(
        "validate",
        help="dry run: read, validate, report every refused row; send nothing",
        description="Read and validate INPUT, write rejects.csv and summary.json, send nothing.",
        epilog=_VALIDATE_EXAMPLES,
        formatter_class=fmt,
    )
    _common(v)
    r = sub.add_parser(
        "run",
        help="validate, then send $identify events to Mixpanel (resumable)",
        description="Validate INPUT, then send every valid pair to Mixpanel's /import.",
        epilog=_RUN_EXAMPLES,
        formatter_class=fmt,
    )
    _common(r)
    _run_options(r)
    rh = sub.add_parser(
        "rehearse",
        help="the whole run against a local Mixpanel stand-in: no credentials, no network",
        description="Start a local /import stand-in on a free loopback port, run the real "
        "`run` code path against it with throwaway credentials, and print what it received.",
        epilog=_REHEARSE_EXAMPLES,
        formatter_class=fmt,
    )
    _common(rh)
    _send_options(rh)
    rh.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of requests the stand-in fails (503, 429, dropped), to watch retries",
    )
    rh.add_argument(
        "--system",
        choices=["original", "simplified"],
        type=str.lower,
        default="original",
        help="the ID merge system the stand-in's project uses (default: original)",
    )
    sv = sub.add_parser(
        "serve",
        help="run the local Mixpanel /import stand-in (for rehearsals and tests)",
        description="Serve a local stand-in for Mixpanel's /import?strict=1 until Ctrl-C.\n"
        "Prints one line per request (time, status, events, imported, refused, the fault if\n"
        "any, the credential kind; never a secret), and when stopped what it imported and\n"
        "what merged.",
        epilog=_SERVE_EXAMPLES,
        formatter_class=fmt,
    )
    sv.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    sv.add_argument("--port", type=int, default=8787, help="default: 8787 (0: any free port)")
    sv.add_argument("--store", type=Path, metavar="FILE", help="append accepted events (NDJSON)")
    sv.add_argument(
        "--error-rate", type=float, default=0.0, metavar="P", help="share of requests failed"
    )
    sv.add_argument(
        "--rate-limit", type=float, metavar="EVENTS/S", help="answer 429 above this rate"
    )
    sv.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="per request")
    sv.add_argument("--seed", type=int, help="make the injected faults reproducible")
    sv.add_argument(
        "--system",
        choices=["original", "simplified"],
        type=str.lower,
        default="original",
        help="the project's ID merge system: simplified refuses identity events and pairs "
        "$device_id with $user_id (default: original)",
    )
    sv.add_argument(
        "--quiet", action="store_true", help="no line per request: the banner and summary only"
    )
    st = sub.add_parser(
        "status",
        help="progress of a run, from the files in --out (while it runs or after)",
        description="Show a run's progress from its checkpoint.json and summary.json.",
        epilog="examples:\n  backfill status --out runs/mappings\n  backfill status   "
        "# every run under runs/\n  backfill status --out runs/mappings --json",
        formatter_class=fmt,
    )
    st.add_argument("--out", type=Path, metavar="DIR", help="run folder (default: all under runs/)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    return parser


_REHEARSE_EXAMPLES = """\
examples:
  backfill rehearse sample_data/mappings.csv --time-column merged_at
  backfill rehearse mappings.csv --fault-rate 0.1 --retry-base-s 0.2

Writes to runs/<input stem>-rehearsal/ (never a real run's folder): rejects.csv, summary.json,
checkpoint.json, and received.ndjson (what the stand-in accepted). Starts afresh every time.
"""

_SERVE_EXAMPLES = """\
examples:
  backfill serve --port 8787 --store received.ndjson
  backfill serve --error-rate 0.05 --rate-limit 30000 --latency 0.05

Then, in another shell, with the credentials it prints:
  backfill run mappings.csv --api-url http://127.0.0.1:8787
"""

_FLAG_KEYS = (
    "format",
    "anon_column",
    "identified_column",
    "time_column",
    "out",
    "no_progress",
    "max_cluster_size",
    "batch_size",
    "rate",
    "project_id",
    "region",
    "api_url",
    "concurrency",
    "max_attempts",
    "timeout",
    "event_time",
    "retry_base_s",
)


def settings_from_args(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    """Flags over the TOML config over defaults, checked once."""
    flags = {k: getattr(args, k, None) for k in _FLAG_KEYS}
    config = load_config(args.config)
    return build_settings(
        args.input, flags, config, env, restart=bool(getattr(args, "restart", False))
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    from backfill.pipeline import validate_command

    settings = settings_from_args(args, dict(os.environ))
    summary = validate_command(settings)
    _print_summary(summary, f"backfill validate {settings.input_path} (dry run: nothing sent)")
    print(f"reports: {settings.out_dir / 'rejects.csv'}, {settings.out_dir / 'summary.json'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from backfill.errors import Aborted, Interrupted
    from backfill.pipeline import run_command

    env = dict(os.environ)
    settings = settings_from_args(args, env)
    if not env.get("MIXPANEL_SERVICE_ACCOUNT_USERNAME") and env.get("MIXPANEL_API_SECRET"):
        print(
            "backfill: warning: MIXPANEL_API_SECRET is Mixpanel's legacy project secret, "
            f"accepted until {LEGACY_SECRET_SUNSET}: create a service account and set "
            "MIXPANEL_SERVICE_ACCOUNT_USERNAME/SECRET instead",
            file=sys.stderr,
        )
    title = f"backfill run {settings.input_path} -> {settings.import_url}"
    try:
        summary = run_command(settings, env)
    except (Aborted, Interrupted) as e:
        if e.summary:
            _print_summary(e.summary, title + f" ({e.summary['status']})")
        raise
    _print_summary(summary, title)
    print(f"reports: {settings.out_dir / 'rejects.csv'}, {settings.out_dir / 'summary.json'}")
    return 0


def _cmd_rehearse(args: argparse.Namespace) -> int:
    from backfill.errors import Aborted, ConfigError, Interrupted
    from backfill.rehearse import rehearsal_out_dir, rehearse_command, render_received

    if not 0.0 <= args.fault_rate <= 1.0:
        raise ConfigError(f"--fault-rate must be from 0 to 1, got {args.fault_rate}")
    env = dict(os.environ)
    settings = settings_from_args(args, env)
    explicit = args.out is not None or "out" in load_config(args.config)
    settings = replace(settings, out_dir=rehearsal_out_dir(settings, explicit))
    title = f"backfill rehearse {settings.input_path} (local stand-in, nothing leaves this machine)"
    try:
        result = rehearse_command(settings, fault_rate=args.fault_rate, system=args.system)
    except (Aborted, Interrupted) as e:
        if e.summary:
            _print_summary(e.summary, title + f" ({e.summary['status']})")
        raise
    _print_summary(result.summary, title)
    print(render_received(result.received, result.received_path))
    print(f"reports: {settings.out_dir / 'rejects.csv'}, {settings.out_dir / 'summary.json'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from backfill.errors import ConfigError
    from backfill.standin import FaultRates, StandinConfig, serve

    if not 0.0 <= args.error_rate <= 1.0:
        raise ConfigError(f"--error-rate must be from 0 to 1, got {args.error_rate}")
    if args.latency < 0:
        raise ConfigError(f"--latency must be 0 or more, got {args.latency}")
    if args.rate_limit is not None and not args.rate_limit > 0:
        raise ConfigError(f"--rate-limit must be above 0 events/s, got {args.rate_limit}")
    faults = FaultRates.failing(args.error_rate, latency_s=args.latency, seed=args.seed)
    config = StandinConfig(
        faults=faults,
        rate_limit_events_per_s=args.rate_limit,
        store_path=args.store,
        id_merge=args.system,
    )
    try:
        serve(config, host=args.host, port=args.port, log_requests=not args.quiet)
    except OSError as e:
        raise ConfigError(f"cannot serve: {e}") from None
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from backfill.status import find_run_dirs, read_status, render_status

    statuses = []
    for folder in find_run_dirs(args.out):
        try:
            statuses.append(read_status(folder))
        except InputError:
            if args.out is not None:
                raise  # the folder asked for; under runs/, a folder without a run is skipped
    if not statuses:
        raise InputError("no runs found under runs/: pass --out DIR (the folder a run wrote to)")
    if args.json:
        print(json.dumps(statuses[0] if args.out else statuses, indent=2))
    else:
        print("\n\n".join(render_status(s) for s in statuses))
    return 0


def _print_summary(summary: dict[str, Any], title: str) -> None:
    print(render_table(summary, title=title))


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _cmd_validate,
    "run": _cmd_run,
    "status": _cmd_status,
    "rehearse": _cmd_rehearse,
    "serve": _cmd_serve,
}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``backfill`` and ``python -m backfill``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM outside the send loop (which handles it itself) stops like Ctrl-C: exit 130.
    signal.signal(signal.SIGTERM, _terminate)
    command = args.command
    if command == "run" and args.dry_run:
        command = "validate"
    try:
        return _COMMANDS[command](args)
    except BackfillError as e:
        print(f"backfill: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("backfill: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except Exception as e:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("BACKFILL_DEBUG"):
            traceback.print_exc()
        print(
            f"backfill: internal error: {type(e).__name__}: {e} "
            "(a bug: please report it; BACKFILL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
