"""The command a message tells the user to run next, ready to copy.

Advice such as "rerun with --id-merge simplified" fails when the user has to rebuild the rest
of the command from memory. So the CLI prints the whole command: the user's own arguments
(same inputs, same options, same spelling), with the one change the fix needs. ``--restart``
is never carried over from the user's command: a resume that discarded the checkpoint again
would start the run over.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

#: Flags that hold for one invocation only and are never repeated in a suggested command.
_ONE_OFF = ("--restart",)


def program(argv0: str | None = None, orig_argv: Sequence[str] | None = None) -> str:
    """How the user started backfill: ``backfill`` (the console script) or ``python -m backfill``
    with the interpreter they typed."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    orig = list(sys.orig_argv if orig_argv is None else orig_argv)
    if Path(argv0).name == "__main__.py" and orig:
        return f"{shlex.quote(orig[0])} -m backfill"
    return "backfill"


def suggest(
    args: Sequence[str],
    changes: Sequence[tuple[str, str | None]] = (),
    *,
    prog: str | None = None,
) -> str:
    """``args`` (the user's arguments after the program) as one shell line, with ``changes``
    applied: each flag's earlier occurrences (``--flag V`` or ``--flag=V``) removed, then the
    flag added, with its value unless that is None."""
    drop = {flag for flag, _ in changes} | set(_ONE_OFF)
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in drop:
            # A flag given as "--flag VALUE" takes the next argument along (not a bool flag).
            skip_value = "=" not in arg and flag not in _ONE_OFF and _takes_value(flag, changes)
            continue
        kept.append(arg)
    for flag, value in changes:
        kept.append(flag)
        if value is not None:
            kept.append(value)
    return " ".join([prog or program(), *(shlex.quote(a) for a in kept)])


def _takes_value(flag: str, changes: Sequence[tuple[str, str | None]]) -> bool:
    return any(f == flag and v is not None for f, v in changes)
