"""The command line: a thin face over the library, with the exception tree mapped to exit codes.

The flags of ``validate``, ``run``, ``rehearse``, ``verify`` and ``serve`` are generated from
the options table (``config.options.OPTIONS``); ``status`` has flags of its own. Only this
module prints errors or chooses exit codes; everything below raises. Heavy modules are
imported inside the commands, so ``backfill --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from backfill import __version__, interrupts
from backfill.config.helptext import EXAMPLES, HELPS, INTRO, SERVE_EXAMPLES, START_HERE
from backfill.config.options import REHEARSE, RUN, SERVE, VALIDATE, VERIFY, options_for
from backfill.errors import EXIT_INTERRUPTED, EXIT_USAGE, BackfillError, Interrupted


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line naming ``--help``."""

    def error(self, message: str) -> NoReturn:
        print(f"backfill: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    parser = _Parser(
        prog="backfill",
        description=INTRO,
        epilog=START_HERE,
        formatter_class=_WideHelp,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"backfill {__version__}")
    # Listed once, under "commands", in the order a newcomer uses them.
    sub = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND", parser_class=_Parser
    )
    for command in (VALIDATE, REHEARSE, RUN, VERIFY):
        p = sub.add_parser(
            command,
            help=HELPS[command],
            description=HELPS[command][0].upper() + HELPS[command][1:] + ".",
            epilog=EXAMPLES[command],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        _table_options(p, command)
    _status_parser(sub)
    _serve_parser(sub)
    return parser


class _WideHelp(argparse.RawDescriptionHelpFormatter):
    """The top-level help: each command and its line on one row, as in a README."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=14, width=100)

    def _format_action(self, action: argparse.Action) -> str:
        # The commands themselves, without argparse's "COMMAND" line above them.
        if isinstance(action, argparse._SubParsersAction):
            parts = [super(_WideHelp, self)._format_action(a) for a in action._get_subactions()]
            return "".join(parts)
        return super()._format_action(action)


def _table_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="files, folders, quoted globs ('export/part-*.parquet') or s3:// / gs:// URLs, "
        "read together as one dataset",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings; flags win")
    _flags(p, command)


def _flags(p: argparse.ArgumentParser, command: str) -> None:
    """``command``'s options from the table, as flags (their values checked by the table)."""
    for option in options_for(command):
        if option.kind == "bool":
            p.add_argument(option.flag, dest=option.name, action="store_true", default=None,
                           help=option.help_text())  # fmt: skip
        else:
            metavar = option.metavar or "|".join(option.choices) or None
            p.add_argument(option.flag, dest=option.name, metavar=metavar, help=option.help_text())


def _serve_parser(sub: Any) -> None:
    sv = sub.add_parser(
        "serve",
        help=HELPS["serve"],
        description="Serve a local stand-in for Mixpanel's /import?strict=1 until Ctrl-C.\n"
        "Prints one line per request (time, status, events, imported, refused, the fault if\n"
        "any, the credential kind; never a secret), and when stopped what it imported and\n"
        "what merged.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    _flags(sv, SERVE)
    # The name of earlier versions (still in scripts): the same setting, not shown.
    sv.add_argument("--error-rate", dest="fault_rate", help=argparse.SUPPRESS)


def _status_parser(sub: Any) -> None:
    st = sub.add_parser(
        "status",
        help="progress of a run, from the files in its folder (while it runs or after)",
        description="Show runs' progress from their checkpoint.json and summary.json: with no "
        "argument, every run this user started (from any directory); with an INPUT, that "
        "input's run; with --out, that folder's.",
        epilog="examples:\n  backfill status                  # every run, one line each\n"
        "  backfill status mappings.csv     # the run of this input\n"
        "  backfill status --out runs/mappings --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    st.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="the input a run read, as given to run (default: every run)")  # fmt: skip
    st.add_argument("--out", type=Path, metavar="DIR", help="a run folder")
    st.add_argument("--json", action="store_true", help="print the status as JSON")


# --- commands ------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, command: str) -> Any:
    from backfill.config.settings import settings_for
    from backfill.folder.location import locate

    explicit = {o.name: getattr(args, o.name, None) for o in options_for(command)}
    settings = settings_for(
        command,
        tuple(args.inputs),
        explicit=explicit,
        config_path=args.config,
        origin="flag",
        env=os.environ,
    )
    if command == REHEARSE:
        return settings  # a rehearsal has its own folder, never a recorded run's
    settings, note = locate(settings, os.environ, command=command)
    if note:
        print(f"backfill: {note}", file=sys.stderr)
    return settings


def _note(line: str) -> None:
    print(f"backfill: {line}", file=sys.stderr)


def _progress(settings: Any) -> Any:
    from backfill.report.progress import Progress

    return Progress(enabled=settings.progress, interval_s=settings.progress_interval_s)


def _cmd_validate(args: argparse.Namespace) -> int:
    from backfill.commands import pipeline
    settings = _settings(args, VALIDATE)
    summary = pipeline.validate(settings, progress=_progress(settings))
    _show(summary, settings, "validate", "dry run: nothing sent")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from backfill.commands import pipeline
    from backfill.config.settings import credentials_from_env
    from backfill.mixpanel import LEGACY_SECRET_SUNSET

    settings = _settings(args, RUN)
    creds = credentials_from_env(os.environ, settings.project_id)
    if creds.legacy:
        print(
            "backfill: warning: MIXPANEL_API_SECRET is Mixpanel's legacy project secret, "
            f"accepted until {LEGACY_SECRET_SUNSET}: create a service account and set "
            "MIXPANEL_SERVICE_ACCOUNT_USERNAME/SECRET instead",
            file=sys.stderr,
        )
    try:
        summary = pipeline.run(settings, creds, progress=_progress(settings), notify=_note)
    except BackfillError as e:
        if e.summary is not None:
            _show(e.summary, settings, "run", f"to {settings.import_url}")
        raise
    _show(summary, settings, "run", f"to {settings.import_url}")
    return 0


def _cmd_rehearse(args: argparse.Namespace) -> int:
    from backfill.commands.rehearse import rehearse, render_received
    from backfill.config.options import BY_NAME
    from backfill.mixpanel import IdMerge

    settings = _settings(args, REHEARSE)
    fault_rate = BY_NAME["fault_rate"].check(args.fault_rate or "0", "flag")
    system = IdMerge(BY_NAME["system"].check(args.system, "flag") or settings.id_merge)
    note = "local stand-in, nothing leaves this machine"
    progress = _progress(settings)
    try:
        result = rehearse(settings, fault_rate=fault_rate, system=system, progress=progress)
    except BackfillError as e:
        if e.summary is not None:
            _show(e.summary, settings, "rehearse", note)
        if isinstance(e, Interrupted):
            raise Interrupted(
                "interrupted: a rehearsal starts afresh each time, so run it again to rehearse "
                "the whole migration"
            ) from None
        raise
    _show(result.summary, settings, "rehearse", note, extra=render_received(result))
    return 0


def _show(summary: Any, settings: Any, command: str, note: str, extra: str = "") -> None:
    """The summary as a table on stdout, or as JSON on stdout with the table on stderr."""
    import json

    from backfill.report.table import render_table

    status = summary.status.value
    title = f"backfill {command} {summary.input} ({note}; {status})"
    lines = [render_table(summary, title=title)]
    if extra:
        lines.append(extra)
    page = f", {summary.report}" if summary.report else ""
    lines.append(f"reports: {summary.out / 'rejects.csv'}, {summary.out / 'summary.json'}{page}")
    human: IO[str] = sys.stderr if settings.json else sys.stdout
    print("\n".join(lines), file=human)
    if settings.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False))


def _cmd_serve(args: argparse.Namespace) -> int:
    from backfill.config.settings import resolve
    from backfill.errors import ConfigError
    from backfill.mixpanel import IdMerge
    from backfill.standin import FaultRates, StandinConfig, serve

    explicit = {o.name: getattr(args, o.name, None) for o in options_for(SERVE)}
    v = resolve(SERVE, explicit=explicit, config={}, origin="flag")  # checked by the table
    preload = None if v["preload"] is None else Path(v["preload"])
    if preload is not None and not preload.is_file():
        raise ConfigError(f"--preload {preload}: no such file")
    faults = FaultRates.failing(v["fault_rate"], latency_s=v["latency"], seed=v["seed"])
    try:
        config = StandinConfig(
            faults=faults,
            rate_limit_events_per_s=v["rate_limit"],
            store_path=None if v["store"] is None else Path(v["store"]),
            # Serving on its own, the stand-in is an Original project unless told otherwise.
            id_merge=IdMerge(v["system"] or IdMerge.ORIGINAL),
            preload_path=preload,
            export_lag=v["export_lag"],
        )
    except ValueError as e:
        raise ConfigError(f"cannot serve: {e}") from None
    try:
        serve(config, host=v["host"], port=v["port"], log_requests=not v["quiet"])
    except OSError as e:
        raise ConfigError(f"cannot serve: {e}") from None
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from backfill.errors import InputError
    from backfill.report.status import find_runs, read_status, render_list, render_status

    statuses = []
    for folder, recorded in find_runs(args.out, args.inputs, os.environ):
        try:
            statuses.append(read_status(folder, recorded_input=recorded))
        except InputError:
            if args.out is not None:
                raise  # the folder asked for; elsewhere a folder without a run is skipped
    if args.json:
        shown = [s.to_json() for s in statuses]
        print(json.dumps(shown[0] if args.out else shown, indent=2))
    elif args.out is None and not args.inputs and len(statuses) > 1:
        print(render_list(statuses))
    else:
        print("\n\n".join(render_status(s) for s in statuses))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import json

    from backfill.verification import render_verification, run_verify, verify_settings

    explicit = {o.name: getattr(args, o.name, None) for o in options_for(VERIFY)}
    settings, url = verify_settings(
        tuple(args.inputs), explicit=explicit, config_path=args.config, origin="flag",
        env=os.environ,
    )  # fmt: skip
    note = (lambda text: print(f"backfill: {text}", file=sys.stderr)) if settings.progress else None
    result = run_verify(settings, url, note=note)
    human: IO[str] = sys.stderr if settings.json else sys.stdout
    print(render_verification(result), file=human)
    if settings.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    return result.exit_code


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    VALIDATE: _cmd_validate,
    VERIFY: _cmd_verify,
    RUN: _cmd_run,
    REHEARSE: _cmd_rehearse,
    "status": _cmd_status,
    "serve": _cmd_serve,
}


def _next_command(error: BackfillError, given: Sequence[str], *, resumable: bool) -> None:
    """The command that fixes ``error`` (or resumes a run after it), whole, on its own line."""
    from backfill.config.commandline import suggest

    if error.fix:
        print(f"backfill: run next: {suggest(given, error.fix)}", file=sys.stderr)
    elif error.resumes and resumable:
        print(f"backfill: to resume, run: {suggest(given)}", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


#: What a deliberate Ctrl-C ends with: a calm line, not an error.
INTERRUPTED = "backfill: interrupted; run the same command again to resume"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``backfill`` and ``python -m backfill``; returns the exit code.

    SIGINT/SIGTERM only ask the command to stop (``interrupts``): it ends with exit 130 within
    ``interrupts.DEADLINE_S``, whatever it was doing. A ``run`` whose sending had already
    finished when the signal came ends as it finished (exit 0): everything is sent and
    recorded, there is nothing to resume.
    """
    with interrupts.caught(deadline_s=interrupts.DEADLINE_S):
        parser = build_parser()
        given = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(given)
        if args.command is None:
            print(parser.format_help(), file=sys.stderr, end="")
            return EXIT_USAGE
        command = args.command
        if command == RUN and args.dry_run:
            command = VALIDATE
        if command == "serve":
            # The stand-in stops on Ctrl-C by itself (SIGTERM raising KeyboardInterrupt).
            if interrupts.release():
                return EXIT_INTERRUPTED
            signal.signal(signal.SIGTERM, _terminate)
        code = _command(command, args, given)
        if code == 0 and interrupts.requested() and command not in (RUN, REHEARSE, "serve"):
            print(INTERRUPTED, file=sys.stderr)
            code = EXIT_INTERRUPTED
        return code


def entry() -> NoReturn:
    """The console script and ``python -m backfill``: ``main``, then an exit that skips the
    interpreter's shutdown (``interrupts.exit_now``).

    Two reasons. A read stopped early can leave Arrow's I/O thread finishing a block, which the
    shutdown would race (a hang in its thread pool, or an abort). And the shutdown gives
    SIGINT back to Python's default, so a Ctrl-C in its last milliseconds would kill a run
    that had completed. Every file of ours is written and closed by then.
    """
    interrupts.catch_early()
    interrupts.exit_now(main())


def _command(command: str, args: argparse.Namespace, given: Sequence[str]) -> int:
    try:
        return _COMMANDS[command](args)
    except Interrupted as e:
        print(f"backfill: {e}", file=sys.stderr)
        _next_command(e, given, resumable=command == RUN)
        return e.exit_code
    except BackfillError as e:
        print(f"backfill: error: {e}", file=sys.stderr)
        _next_command(e, given, resumable=command == RUN)
        return e.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
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
