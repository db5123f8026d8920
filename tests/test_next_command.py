"""The command a message prints to copy: the user's own arguments, with only the fix changed."""

from __future__ import annotations

import pytest

from backfill.config.commandline import program, suggest

SIMPLIFIED = ("--id-merge", "simplified")


@pytest.mark.parametrize(
    ("given", "fix", "expected"),
    [
        (["run", "m.csv"], [SIMPLIFIED], "backfill run m.csv --id-merge simplified"),
        (["run", "m.csv", "--id-merge", "original", "--rate", "900"], [SIMPLIFIED],
         "backfill run m.csv --rate 900 --id-merge simplified"),
        (["run", "m.csv", "--id-merge=original"], [SIMPLIFIED],
         "backfill run m.csv --id-merge simplified"),
        (["run", "my file.csv", "--restart"], [], "backfill run 'my file.csv'"),
        (["run", "m.csv", "--out", "o"], [("--restart", None)],
         "backfill run m.csv --out o --restart"),
    ],
)  # fmt: skip
def test_the_fix_replaces_its_flag_and_keeps_every_other_argument(
    given: list[str], fix: list[tuple[str, str | None]], expected: str
) -> None:
    """Same inputs and options in the same order, the fixed flag replaced, --restart never
    carried over, arguments quoted for the shell."""
    assert suggest(given, fix, prog="backfill") == expected


def test_the_program_is_named_as_the_user_started_it() -> None:
    """``python -m backfill`` keeps the interpreter as typed; the console script is backfill."""
    assert program("/x/backfill/__main__.py", ["python3", "-m", "backfill", "run"]) == (
        "python3 -m backfill"
    )
    assert program("/usr/local/bin/backfill", ["/usr/bin/python3", "/usr/local/bin/backfill"]) == (
        "backfill"
    )
