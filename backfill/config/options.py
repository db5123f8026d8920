"""Every option of ``validate``, ``run`` and ``rehearse``, declared once.

One ``Option`` per setting carries its name (the TOML key and the Python keyword; the flag is
the same with dashes), its type and default, its unit or allowed values, its help and the
commands that take it. From this table come the argparse flags and their ``--help``, the
checks of a ``--config`` TOML file and of ``backfill.validate(**options)`` /
``backfill.run(**options)`` keywords, and the README's configuration table (a test keeps the
README equal to ``markdown_table()``), so the four cannot drift apart.

Every value, wherever it comes from, goes through ``Option.check``: one conversion, one set
of bounds, one message naming the fix, choices compared case-insensitively.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from backfill.errors import ConfigError
from backfill.mixpanel import MAX_CLUSTER_SIZE, MAX_EVENTS_PER_REQUEST, IdMerge

Kind = Literal["str", "int", "float", "bool", "choice"]

VALIDATE, RUN, REHEARSE = "validate", "run", "rehearse"
VERIFY = "verify"
#: ``backfill serve``: the stand-in on its own; its options are flags only (no TOML, no API).
SERVE = "serve"
_ALL = frozenset({VALIDATE, RUN, REHEARSE})
_SENDING = frozenset({RUN, REHEARSE})
#: ``verify`` reads the input (its format and delimiter) and asks the export; the run's
#: columns and event settings come from its checkpoint.
_READING = _ALL | {VERIFY}
_ASKING = _SENDING | {VERIFY}

DEFAULT_PAIRING_EVENT: Final = "Identity Backfill"


@dataclass(frozen=True)
class Option:
    """One setting: where it may come from, what it may hold, what it means."""

    name: str
    kind: Kind
    help: str
    commands: frozenset[str] = _ALL
    default: Any = None
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    above: float | None = None  # exclusive lower bound (a rate, a timeout)
    metavar: str | None = None
    unit: str = ""
    default_text: str | None = None  # how the default reads when it is computed
    #: Whether a config file and the Python API may set it (not: one-off flags, display).
    keyed: bool = True
    #: Whether the Python API may set it even so (``restart``: a one-off, but a notebook
    #: has no command line to pass it on).
    keyword: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling: ``--anon-column``."""
        return "--" + self.name.replace("_", "-")

    @property
    def shown_default(self) -> str:
        """The default as the README shows it: a value in backticks, or words."""
        if self.default_text is not None:
            return self.default_text
        if self.kind == "bool":
            return "off"
        if self.default is None:
            return "none"
        if isinstance(self.default, float) and self.default.is_integer():
            return f"`{self.default:.0f}`"
        return f"`{self.default}`"

    def help_text(self) -> str:
        """``--help`` text: the help, the range, the default (a choice's values are its
        metavar, so they are not listed again)."""
        if self.kind == "bool":
            return self.help
        bounds = self._range().strip()
        ranged = f"; {bounds.removeprefix('from ').removeprefix('of ')}" if bounds else ""
        return f"{self.help}{ranged} (default: {self.shown_default.replace('`', '')})"

    def check(self, value: Any, origin: str) -> Any:
        """``value`` converted to this option's type and checked; ConfigError naming the fix.

        ``origin`` says where the value came from, for the message: ``"flag"``, ``"config
        FILE"`` or ``"keyword"``. Strings from the command line are converted; values from a
        TOML file or a keyword must already have the right type (an int is a fine float).
        """
        if value is None:
            return None
        label = self._label(origin)
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise ConfigError(f"{label} must be true or false, got {value!r}")
        if self.kind in ("int", "float"):
            return self._number(value, label, from_text=origin == "flag")
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {type(value).__name__} {value!r}")
        if self.kind == "choice":
            folded = value.strip().lower()
            if folded not in self.choices:
                raise ConfigError(
                    f"{label} {value!r} is not one of {', '.join(self.choices)}"
                    + _did_you_mean(folded, self.choices)
                )
            return folded
        return value

    def _label(self, origin: str) -> str:
        if origin == "flag":
            return self.flag
        if origin == "keyword":
            return f"{self.name}="
        return f"{origin}: {self.name}"

    def _number(self, value: Any, label: str, *, from_text: bool) -> int | float:
        what = "a whole number" if self.kind == "int" else "a number"
        # A flag's text is shown as typed; a TOML or keyword value as Python shows it.
        shown = value if from_text and isinstance(value, str) else repr(value)
        refused = ConfigError(f"{label} must be {what}{self._range()}, got {shown}")
        number: int | float
        if from_text and isinstance(value, str):
            try:
                number = int(value) if self.kind == "int" else float(value)
            except ValueError:
                raise refused from None
        elif isinstance(value, bool) or not isinstance(
            value, int if self.kind == "int" else int | float
        ):
            raise refused
        else:
            number = value if self.kind == "int" else float(value)
        if not self._in_range(number):
            raise refused
        return number

    def _in_range(self, number: float) -> bool:
        if math.isnan(number) or math.isinf(number):
            return False
        if self.low is not None and number < self.low:
            return False
        if self.high is not None and number > self.high:
            return False
        return self.above is None or number > self.above

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f" from {self.low:g} to {self.high:g}"
        if self.above is not None:
            return f" above {self.above:g}"
        if self.low is not None:
            return f" of {self.low:g} or more"
        return ""


OPTIONS: Final[tuple[Option, ...]] = (
    Option("out", "str", "folder for the reports and the checkpoint", metavar="DIR",
           default_text="the folder of the unfinished run of the same input and project, "
           "wherever that run was started, else `runs/<input name>/` in the current directory "
           "(rehearse: always `runs/<input name>-rehearsal/`)", unit="folder",
           commands=_READING),
    Option("format", "choice", "input format", choices=("csv", "tsv", "parquet", "jsonl"),
           default_text="from the file extension", commands=_READING),
    Option("delimiter", "str", "field separator of a CSV file, one character", metavar="CHAR",
           default_text="`,` (tsv: tab)", unit="one character", commands=_READING),
    Option("anon_column", "str", "the column of anon ids", default="anon_id", metavar="NAME",
           unit="column name"),
    Option("identified_column", "str", "the column of identified ids", default="identified_id",
           metavar="NAME", unit="column name"),
    Option("time_column", "str", "the column of each pair's event time", metavar="NAME",
           unit="epoch s, epoch ms (≥ 1e11) or ISO 8601 (zone-less = UTC)"),
    Option("id_merge", "choice", "the project's ID merge system (Project Settings → Identity "
           "Merge)", choices=tuple(IdMerge), default=IdMerge.ORIGINAL.value),
    Option("non_uuid_anon", "choice", "original only: refuse anon ids that are not UUID v4, or "
           "send them as $merge events", choices=("refuse", "merge"), default="refuse"),
    Option("pairing_event", "str", "simplified only: the name of the events that pair a device "
           "with its user", default=DEFAULT_PAIRING_EVENT, metavar="NAME", unit="event name"),
    Option("max_cluster_size", "int", "ids per identity cluster, the identified id included",
           default=MAX_CLUSTER_SIZE, low=2, high=MAX_CLUSTER_SIZE, metavar="N",
           unit="ids (2-500)"),
    Option("batch_size", "int", "events per request (also at most 2 MB of JSON)",
           default=MAX_EVENTS_PER_REQUEST, low=1, high=MAX_EVENTS_PER_REQUEST, metavar="N",
           unit="events (1-2000)"),
    Option("rate", "float", "events per second (Mixpanel allows ~30,000 per project)",
           default=25_000.0, above=0, metavar="EVENTS/S", unit="events/s"),
    Option("no_progress", "bool", "no progress display", default=False, commands=_READING),
    Option("progress_interval_s", "float", "seconds between progress redraws",
           commands=_READING, above=0, metavar="SECONDS", unit="seconds",
           default_text="0.2 on a terminal, 5 in a log"),
    Option("no_report", "bool", "write no report.html in the run folder", default=False),
    Option("json", "bool", "print the summary as one JSON object on stdout (the rest on "
           "stderr)", default=False, keyed=False, commands=_READING),
    Option("project_id", "str", "the Mixpanel project id", commands=frozenset({RUN, VERIFY}),
           metavar="ID", default_text="`$MIXPANEL_PROJECT_ID`", unit="number"),
    Option("region", "choice", "data residency of the project",
           commands=frozenset({RUN, VERIFY}), choices=("us", "eu", "in"), default="us"),
    Option("api_url", "str", "Mixpanel's API base URL (https://api-eu.mixpanel.com) or its "
           "/import URL; overrides --region",
           commands=frozenset({RUN}), metavar="URL", default_text="from --region",
           unit="base or /import URL; https (http only to loopback)"),
    Option("export_url", "str", "the raw export's base URL (Mixpanel's is "
           "https://data.mixpanel.com); overrides --region", commands=frozenset({VERIFY}),
           metavar="URL", default_text="from --region", unit="https URL (http only to loopback)"),
    Option("concurrency", "int", "requests in flight; unset, it adapts to Mixpanel's latency "
           "from 10 up to 20 (Mixpanel's guidance) to hold --rate; a number fixes it there "
           "(above 20 to allow more)", commands=_SENDING, low=1, high=64, metavar="N",
           default_text="adaptive, 10 to 20", unit="requests (1-64)"),
    Option("max_attempts", "int", "tries per batch before the run stops", commands=_ASKING,
           default=8, low=1, high=100, metavar="N", unit="tries"),
    Option("timeout", "float", "seconds per request", commands=_ASKING, default=30.0, above=0,
           metavar="SECONDS", unit="seconds"),
    Option("event_time", "str", "the time of every event without --time-column",
           commands=_SENDING, metavar="ISO8601|EPOCH", default_text="the first run's start",
           unit="ISO 8601 or epoch s/ms"),
    Option("retry_base_s", "float", "the pause before a batch's first retry; each later retry "
           "waits twice the one before, at most 30 times this, plus a random 0.5 to 2.5 times "
           "this (the default follows Mixpanel's advice: 2 s doubling to 60 s, plus 1-5 s)",
           commands=_ASKING, default=2.0, low=0,
           metavar="SECONDS", unit="seconds"),
    Option("restart", "bool", "discard the checkpoint in --out and start over",
           commands=frozenset({RUN}), keyed=False, keyword=True),
    Option("dry_run", "bool", "validate only: the same as `backfill validate`",
           commands=frozenset({RUN}), keyed=False),
    Option("fault_rate", "float", "share of requests the stand-in fails (503, 429, dropped)",
           commands=frozenset({REHEARSE, SERVE}), default=0.0, low=0, high=1, metavar="P",
           unit="0 to 1", keyed=False),
    Option("system", "choice", "the ID merge system of the stand-in's project (simplified "
           "refuses identity events and pairs $device_id with $user_id)",
           commands=frozenset({REHEARSE, SERVE}), choices=tuple(IdMerge),
           default_text="--id-merge (serve: original)", keyed=False),
    Option("host", "str", "the address the stand-in listens on", commands=frozenset({SERVE}),
           default="127.0.0.1", metavar="HOST", unit="address", keyed=False),
    Option("port", "int", "the stand-in's port (0: any free port)", commands=frozenset({SERVE}),
           default=8787, low=0, high=65535, metavar="PORT", unit="0 to 65535", keyed=False),
    Option("store", "str", "append the events the stand-in accepted to FILE (NDJSON)",
           commands=frozenset({SERVE}), metavar="FILE", unit="file", keyed=False),
    Option("rate_limit", "float", "the stand-in answers 429 above this rate",
           commands=frozenset({SERVE}), above=0, metavar="EVENTS/S", unit="events/s",
           default_text="no limit", keyed=False),
    Option("latency", "float", "seconds the stand-in waits before each answer",
           commands=frozenset({SERVE}), default=0.0, low=0, metavar="SECONDS", unit="seconds",
           keyed=False),
    Option("seed", "int", "makes the stand-in's injected faults reproducible",
           commands=frozenset({SERVE}), metavar="N", unit="whole number", keyed=False),
    Option("preload", "str", "start with a project that already holds these events (JSON "
           "Lines of {event, properties}: SDK events, earlier merges)",
           commands=frozenset({SERVE}), metavar="FILE", unit="file", keyed=False),
    Option("export_lag", "float", "share of imported events /api/2.0/export does not show yet",
           commands=frozenset({SERVE}), default=0.0, low=0, high=1, metavar="P", unit="0 to 1",
           keyed=False),
    Option("quiet", "bool", "no line per request: the banner and the summary only",
           commands=frozenset({SERVE}), keyed=False),
)  # fmt: skip

BY_NAME: Final = {o.name: o for o in OPTIONS}
#: Every option's default: the one place a default is declared.
DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType({o.name: o.default for o in OPTIONS})
#: Keys that must never come from a file or a keyword, with the reason.
REFUSED_KEYS: Final = {
    "secret": "credentials come from the environment only (see README: Credentials)",
    "api_secret": "credentials come from the environment only (see README: Credentials)",
    "username": "credentials come from the environment only (see README: Credentials)",
    "password": "credentials come from the environment only (see README: Credentials)",
    "token": "the project token comes from MIXPANEL_PROJECT_TOKEN",
}


def options_for(command: str) -> tuple[Option, ...]:
    """The options ``command`` takes, in table order."""
    return tuple(o for o in OPTIONS if command in o.commands)


def keys_for(command: str, *, keyword: bool = False) -> frozenset[str]:
    """The keys a config file (or, with ``keyword``, the Python API) may set for ``command``."""
    return frozenset(o.name for o in options_for(command) if o.keyed or (keyword and o.keyword))


def check_keys(values: Mapping[str, Any], command: str, origin: str) -> dict[str, Any]:
    """Each known key's value checked; an unknown or refused key is a ConfigError.

    ``origin`` is ``"keyword"`` for the Python API, or ``"config FILE"``.
    """
    allowed = keys_for(command, keyword=origin == "keyword")
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key in REFUSED_KEYS:
            raise ConfigError(f"{origin}: {key!r} is not allowed: {REFUSED_KEYS[key]}")
        if key in allowed:
            checked[key] = BY_NAME[key].check(value, origin)
            continue
        if key in BY_NAME:
            option = BY_NAME[key]
            if command in option.commands:
                raise ConfigError(
                    # In backticks: the Python API's messages keep it a flag (``in_keywords``).
                    f"{origin}: {key!r} cannot be set here: pass `{option.flag}` on the command "
                    "line"
                )
            raise ConfigError(
                f"{origin}: {key!r} is a setting of {'/'.join(sorted(option.commands))}, "
                f"not of {command}"
            )
        hint = _did_you_mean(key, sorted(allowed)) or f"; known keys: {', '.join(sorted(allowed))}"
        raise ConfigError(f"{origin}: unknown key {key!r}{hint}")
    return checked


def merge(flags: Mapping[str, Any], config: Mapping[str, Any], command: str) -> dict[str, Any]:
    """Every option of ``command``: a flag wins over the config file, which wins over defaults."""
    resolved: dict[str, Any] = {}
    for option in options_for(command):
        value = flags.get(option.name)
        if value is None:
            value = config.get(option.name)
        resolved[option.name] = option.default if value is None else value
    return resolved


def markdown_table() -> str:
    """The README's configuration table, generated from ``OPTIONS``."""
    rows = [
        "| option | TOML key / Python keyword | default | unit / values | commands |",
        "|---|---|---|---|---|",
        "| `INPUT...` | `source` (Python) | – | files, folders, globs, `s3://`/`gs://` URLs; "
        "Python: also a DataFrame or pyarrow Table | validate, run, rehearse, verify |",
        "| `--config FILE` | `config` (Python) | none | TOML file of these keys; flags win "
        "| validate, run, rehearse, verify |",
    ]
    order = (VALIDATE, RUN, REHEARSE, VERIFY, SERVE)
    for o in OPTIONS:
        key = (
            f"`{o.name}`"
            if o.keyed
            else f"`{o.name}` (Python only)"
            if o.keyword
            else "– (flag only)"
        )
        values = ", ".join(f"`{c}`" for c in o.choices) if o.choices else (o.unit or "–")
        default = o.shown_default
        commands = ", ".join(c for c in order if c in o.commands)
        rows.append(f"| `{o.flag}` | {key} | {default} | {values} | {commands} |")
    return "\n".join(rows)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- the same advice for the Python API ------------------------------------------------------

#: A flag in a message, and the token after it when that may be its value: a quoted string,
#: an UPPERCASE placeholder (``NAME``), or a word, a number or ``a|b`` choices. A flag in
#: backticks is left as it is (a message naming the command line on purpose).
_FLAG_IN_TEXT = re.compile(
    r"(?<![`\w-])--([a-z][a-z0-9-]*)(?: ('[^']*'|\"[^\"]*\"|[A-Z][A-Z/|]*\b|[\w.|-]+))?"
)
#: Words of the command line, and what a caller of the Python API does instead.
_PHRASES = (
    ("run the same command again", "make the same call again"),
    ("rerun the same command", "make the same call again"),
    ("the same command", "the same call"),
)


def in_keywords(message: str) -> str:
    """A message for the command line, told to a caller of the Python API: each flag of the
    options table as its keyword (``--anon-column NAME`` → ``anon_column='NAME'``,
    ``--restart`` → ``restart=True``, ``another --out`` → ``another out``), command-line
    phrases as calls."""
    for cli, api in _PHRASES:
        message = message.replace(cli, api)
    return _FLAG_IN_TEXT.sub(_keyword, message)


def _keyword(match: re.Match[str]) -> str:
    name, token = match.group(1).replace("-", "_"), match.group(2)
    option = BY_NAME.get(name)
    if option is None:
        return "config=" + _value(token, quote=True) if name == "config" else match.group(0)
    if option.kind == "bool":
        return f"{name}=True" + ("" if token is None else f" {token}")
    value = _option_value(option, token)
    if value is None:
        # The flag named in prose ("another --id-merge", "--format and --delimiter"): the name.
        return name + ("" if token is None else f" {token}")
    return f"{name}={value}"


def _option_value(option: Option, token: str | None) -> str | None:
    """The keyword's value for a flag's value token, or None when the token is prose."""
    if token is None:
        return None
    numeric = option.kind in ("int", "float")
    if token[0] in "'\"" or token.isupper():
        return _value(token, quote=not numeric)
    words = token.split("|")
    if option.choices and all(w.lower() in option.choices for w in words):
        return " or ".join(repr(w.lower()) for w in words)
    if numeric and re.fullmatch(r"[0-9.]+", token):
        return token
    return None


def _value(token: str | None, *, quote: bool) -> str:
    if token is None:
        return "..."
    bare = token.strip("'\"")
    return repr(bare) if quote else bare
