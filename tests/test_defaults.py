"""Defaults are declared once, in the options table: the values a run uses are the table's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from runkit import REPO

from backfill.config.options import DEFAULTS, OPTIONS
from backfill.config.settings import Settings, build_settings
from backfill.send.sender import SendConfig
from backfill.verification.export import ExportConfig

PACKAGE = REPO / "backfill"


def test_settings_and_send_configs_declare_no_defaults_of_their_own() -> None:
    """Settings, SendConfig and ExportConfig take every option-backed value from their maker."""
    for kind in (Settings, SendConfig, ExportConfig):
        with_default = [
            f.name
            for f in dataclasses.fields(kind)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ]
        assert with_default in ([], ["pacing"]), (kind.__name__, with_default)


def test_a_command_without_an_option_gets_the_tables_default() -> None:
    """validate takes no --timeout: its settings still carry the table's default, no other."""
    settings = build_settings(("m.csv",), {}, {})
    assert settings.timeout_s == DEFAULTS["timeout"]
    assert settings.max_attempts == DEFAULTS["max_attempts"]
    assert settings.retry_base_s == DEFAULTS["retry_base_s"]
    assert settings.pairing_event == DEFAULTS["pairing_event"]
    assert settings.rate_per_s == DEFAULTS["rate"]


def test_no_module_falls_back_to_a_default_of_its_own() -> None:
    """No .get("option", fallback) in the package, and the default pairing event named once."""
    names = "|".join(re.escape(o.name) for o in OPTIONS)
    fallback = re.compile(rf"""\.get\(["']({names})["'],""")
    pairing = str(DEFAULTS["pairing_event"])
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {m.group(0)}" for m in fallback.finditer(text)]
        if path != PACKAGE / "config" / "options.py" and f'"{pairing}"' in text:
            found.append(f"{path.name}: {pairing!r}")
    assert found == [], found


def test_the_table_is_the_only_source_of_defaults_for_every_command() -> None:
    """Every option has exactly one entry, so one default."""
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    assert set(DEFAULTS) == set(names)
    assert isinstance(PACKAGE, Path)
