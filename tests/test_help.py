"""`--help`: each command listed once, each option named once, its range and values once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from runkit import backfill_cli

from backfill.cli import build_parser
from backfill.config.options import BY_NAME, OPTIONS, REHEARSE, RUN, VALIDATE

COMMANDS = ("validate", "rehearse", "run", "status", "serve")


def test_top_level_help_lists_each_command_once(tmp_path: Path) -> None:
    """`backfill --help` names each command on exactly one line of its own."""
    result = backfill_cli("--help", cwd=tmp_path)
    assert result.code == 0
    for command in COMMANDS:
        listed = [line for line in result.stdout.splitlines() if line.split()[:1] == [command]]
        assert len(listed) == 1, (command, listed)
    assert "COMMAND\n" not in result.stdout


@pytest.mark.parametrize("command", [VALIDATE, RUN, REHEARSE])
def test_every_ranged_option_shows_its_range(command: str, tmp_path: Path) -> None:
    """Each option with bounds says them in --help (e.g. --max-cluster-size 2 to 500)."""
    result = backfill_cli(command, "--help", cwd=tmp_path)
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        if command not in option.commands or option.kind not in ("int", "float"):
            continue
        if option.low is not None and option.high is not None:
            assert f"{option.low:g} to {option.high:g}" in text, option.name
        elif option.above is not None:
            assert f"above {option.above:g}" in text, option.name
    assert "2 to 500" in text
    if command != VALIDATE:
        assert "1 to 64" in text


def test_choices_are_listed_once(tmp_path: Path) -> None:
    """--format's values appear once (as its metavar), not again in its help line."""
    result = backfill_cli("validate", "--help", cwd=tmp_path)
    entry = result.stdout.split("\n  --format csv|tsv|parquet|jsonl\n")[1].split("--delimiter")[0]
    assert "input format" in entry
    assert "tsv" not in entry


def test_serve_fault_rate_is_one_name_with_the_old_one_hidden(tmp_path: Path) -> None:
    """serve takes --fault-rate like rehearse; --error-rate still works but is not shown."""
    parser = build_parser()
    option = BY_NAME["fault_rate"]  # flags arrive as text and are checked by the table
    assert (
        option.check(parser.parse_args(["serve", "--fault-rate", "0.2"]).fault_rate, "flag") == 0.2
    )
    assert (
        option.check(parser.parse_args(["serve", "--error-rate", "0.3"]).fault_rate, "flag") == 0.3
    )
    result = backfill_cli("serve", "--help", cwd=tmp_path)
    assert "--fault-rate" in result.stdout
    assert "--error-rate" not in result.stdout
    refused = backfill_cli("serve", "--fault-rate", "2", cwd=tmp_path)
    assert refused.code == 2
    assert re.search(r"--fault-rate must be a number from 0 to 1, got 2", refused.stderr)


def test_api_url_help_says_it_takes_either_url(tmp_path: Path) -> None:
    """--api-url's help says it takes the base URL or the /import URL."""
    result = backfill_cli("run", "--help", cwd=tmp_path)
    assert "base URL" in result.stdout
    assert "/import URL" in " ".join(result.stdout.split())
