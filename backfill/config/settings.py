"""Settings: one frozen value built once from flags or keywords, a TOML file and the environment.

Precedence: a flag on the command line (or a keyword of ``backfill.validate``/``run``), then a
key in ``--config``, then the default of ``options.OPTIONS``. Every value is checked there, so
later code never meets a bad one. Credentials come only from the environment or an explicit
``Credentials`` value, never from a flag or a file, and their repr never shows a secret.
"""

from __future__ import annotations

import base64
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backfill.config.options import BY_NAME, DEFAULTS, check_keys, merge
from backfill.errors import ConfigError
from backfill.mixpanel import (
    IDENTITY_EVENTS,
    REGIONS,
    IdMerge,
)
from backfill.read import Columns
from backfill.validation.times import TimeStatus, now_ms, parse_one

#: What a dataset may be read from: paths, folders, globs or URLs; or a DataFrame / Table.
Source = Any


@dataclass(frozen=True)
class Settings:
    """Everything one command needs to know, checked and resolved once."""

    source: Source
    format: str | None
    columns: Columns
    #: None: the run folder is picked once the input is known (``folder.location.locate``).
    out: Path | None
    delimiter: str | None
    progress: bool
    #: Seconds between progress redraws; None: 0.2 on a terminal, 5 in a log.
    progress_interval_s: float | None
    json: bool
    #: Whether to write ``report.html`` (``--no-report`` turns it off).
    report: bool
    id_merge: IdMerge
    non_uuid_anon: str
    pairing_event: str
    max_cluster_size: int
    project_id: str | None
    region: str
    api_url: str
    #: Requests in flight: None adapts (10 to 20, see ``pacing``); a number fixes it.
    concurrency: int | None
    rate_per_s: float
    batch_size: int
    max_attempts: int
    timeout_s: float
    event_time_ms: int | None
    restart: bool
    retry_base_s: float
    token: str | None = field(repr=False)

    @property
    def import_url(self) -> str:
        """The full ``/import`` endpoint (query string added by the sender)."""
        base = self.api_url.rstrip("/")
        return base if base.endswith("/import") else base + "/import"

    @property
    def simplified(self) -> bool:
        """Whether the project uses Simplified ID Merge (pairing events, no $identify)."""
        return self.id_merge is IdMerge.SIMPLIFIED


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to ``/import``; the repr masks every secret."""

    username: str = field(repr=False)
    secret: str = field(repr=False)
    legacy: bool = False

    def __post_init__(self) -> None:
        if self.legacy:
            _check_printable(self.secret, "MIXPANEL_API_SECRET")
        else:
            _check_printable(self.username, "MIXPANEL_SERVICE_ACCOUNT_USERNAME")
            _check_printable(self.secret, "MIXPANEL_SERVICE_ACCOUNT_SECRET")
        if not self.legacy and ":" in self.username:
            # HTTP Basic cannot carry a colon in the user name: the secret would be split.
            raise ConfigError(
                "MIXPANEL_SERVICE_ACCOUNT_USERNAME contains ':': copy the service account's "
                "user name exactly as Mixpanel shows it (it has no colon)"
            )

    def __repr__(self) -> str:
        if self.legacy:
            return "Credentials(legacy API secret=****)"
        return f"Credentials(service_account={self.username!r}, secret=****)"

    __str__ = __repr__

    @property
    def basic_auth(self) -> tuple[str, str]:
        """(user, password) for HTTP Basic: the legacy secret goes as user, empty password."""
        return (self.secret, "") if self.legacy else (self.username, self.secret)

    @property
    def echoes(self) -> tuple[str, ...]:
        """Every spelling of the secret a server could echo back: masked wherever it is quoted.

        The secret itself and the ``Authorization`` header's base64 of ``user:secret`` (with
        and without its padding); ``masking.shown`` masks these and any ``Basic ...`` token.
        """
        user, password = self.basic_auth
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return (self.secret, encoded, encoded.rstrip("="))


def _check_printable(value: str, variable: str) -> None:
    """HTTP Basic carries printable ASCII only; say so before anything is read or sent.

    Mixpanel's user names and secrets are plain ASCII, so any other character (a byte that is
    not UTF-8, a non-breaking space, an accent) is a copy-paste accident. The message names the
    variable, never the value or the offending character's position: it is a secret.
    """
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(
            f"{variable} holds a character that is not printable ASCII (Mixpanel's credentials "
            "never do; a copy-paste or an encoding accident?): set it again, copied from "
            "Mixpanel's Project Settings"
        )


def load_config(path: Path | None, command: str) -> dict[str, Any]:
    """The keys of a TOML config file, each checked against the options of ``command``."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (check --config)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e} (fix that line)") from None
    return check_keys(data, command, f"config {path}")


def resolve(
    command: str,
    *,
    explicit: Mapping[str, Any],
    config: Mapping[str, Any],
    origin: str,
) -> dict[str, Any]:
    """Every option of ``command``: ``explicit`` (flags or keywords) over ``config`` over defaults.

    ``origin`` is ``"flag"`` (strings from argparse, converted here) or ``"keyword"``.
    """
    present = {k: v for k, v in explicit.items() if v is not None}
    if origin == "keyword":
        given = check_keys(present, command, origin)
    else:
        given = {k: BY_NAME[k].check(v, origin) for k, v in present.items()}
    return merge(given, config, command)


def settings_for(
    command: str,
    source: Source,
    *,
    explicit: Mapping[str, Any],
    config_path: Path | None,
    origin: str,
    env: Mapping[str, str],
) -> Settings:
    """The checked ``Settings`` of ``command``: flags or keywords over a TOML file over defaults."""
    config = load_config(config_path, command)
    values = resolve(command, explicit=explicit, config=config, origin=origin)
    return build_settings(source, values, env)


def build_settings(source: Source, values: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """A ``Settings`` from resolved option values (``resolve``) and the environment.

    An option the command does not take (``validate`` has no ``--timeout``) gets the options
    table's default, so no default is declared anywhere else.
    """
    values = {**DEFAULTS, **{k: v for k, v in values.items() if v is not None}}
    region = str(values["region"])
    api_url = str(values["api_url"] or REGIONS[region])
    check_api_url(api_url)
    event_time = values["event_time"]
    out = values["out"]
    return Settings(
        source=source,
        format=values["format"],
        columns=Columns(
            anon=values["anon_column"],
            identified=values["identified_column"],
            time=values["time_column"] or None,
        ),
        out=Path(out) if out else None,
        delimiter=_delimiter(values["delimiter"]),
        progress=not values["no_progress"],
        progress_interval_s=values["progress_interval_s"],
        report=not values["no_report"],
        json=bool(values["json"]),
        id_merge=IdMerge(values["id_merge"]),
        non_uuid_anon=values["non_uuid_anon"],
        pairing_event=_pairing_event(values["pairing_event"]),
        max_cluster_size=values["max_cluster_size"],
        project_id=_project_id(values["project_id"] or env.get("MIXPANEL_PROJECT_ID")),
        region=region,
        api_url=api_url,
        concurrency=values["concurrency"],
        rate_per_s=values["rate"],
        batch_size=values["batch_size"],
        max_attempts=values["max_attempts"],
        timeout_s=values["timeout"],
        event_time_ms=None if event_time is None else parse_event_time(str(event_time)),
        restart=bool(values["restart"]),
        retry_base_s=values["retry_base_s"],
        token=env.get("MIXPANEL_PROJECT_TOKEN") or None,
    )


def _project_id(value: Any) -> str | None:
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise ConfigError(
            f"project id {value!r} is not a number: use the numeric id shown in "
            "Mixpanel's Project Settings (--project-id or MIXPANEL_PROJECT_ID)"
        )
    return text


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    text = "\t" if value in ("\\t", "tab") else value
    if len(text) != 1 or text in '\r\n"':
        raise ConfigError(
            f"--delimiter must be one character other than a quote or a line break, got "
            f"{value!r} (e.g. --delimiter ';', or --format tsv for tabs)"
        )
    return text


def _pairing_event(name: str) -> str:
    stripped = name.strip()
    if not stripped:
        raise ConfigError(
            "--pairing-event must not be empty: e.g. --pairing-event 'Identity Backfill'"
        )
    if stripped in IDENTITY_EVENTS:
        raise ConfigError(
            f"--pairing-event {stripped!r} is one of Mixpanel's identity events, which a "
            "Simplified project refuses: choose a plain name such as 'Identity Backfill'"
        )
    return stripped


def parse_event_time(text: str) -> int:
    """``--event-time`` as epoch milliseconds, or a ConfigError naming the fix."""
    ms, status = parse_one(text, now_ms())
    if status is TimeStatus.OK:
        return ms
    problem = {
        TimeStatus.MISSING: "is empty",
        TimeStatus.UNPARSEABLE: "is not epoch seconds, epoch ms or ISO 8601",
        TimeStatus.TOO_EARLY: "is before 1971-01-01",
        TimeStatus.FUTURE: "is in the future",
    }[status]
    raise ConfigError(f"--event-time {text!r} {problem}: e.g. --event-time 2024-01-01T00:00:00Z")


def check_api_url(url: str) -> None:
    """Credentials go over https only, or plain http to a loopback address; the URL must parse."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(
            "--api-url must not carry credentials: remove user:password@ from it and set "
            "them in the environment"
        )
    try:
        parts.port  # noqa: B018  (raises on a port out of range or not a number)
    except ValueError:
        raise ConfigError(
            f"--api-url {url!r} has an invalid port: e.g. https://api.mixpanel.com or "
            "http://127.0.0.1:8787"
        ) from None
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    if parts.scheme == "http":
        raise ConfigError(
            f"refusing to send credentials over plain http to {parts.hostname}: "
            "use an https:// --api-url (plain http is allowed only to 127.0.0.1 or localhost)"
        )
    raise ConfigError(f"--api-url {url!r} is not an http(s) URL: e.g. https://api.mixpanel.com")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_from_env(env: Mapping[str, str], project_id: str | None) -> Credentials:
    """Service account (preferred) or legacy API secret, from the environment only.

    A service account needs the project id (it goes with every request); the legacy secret
    names its project by itself, as SPEC allows.
    """
    user = env.get("MIXPANEL_SERVICE_ACCOUNT_USERNAME", "").strip()
    secret = env.get("MIXPANEL_SERVICE_ACCOUNT_SECRET", "").strip()
    legacy = env.get("MIXPANEL_API_SECRET", "").strip()
    if user or secret:
        if not (user and secret):
            missing = "SECRET" if user else "USERNAME"
            raise ConfigError(
                f"MIXPANEL_SERVICE_ACCOUNT_{missing} is not set: set both "
                "MIXPANEL_SERVICE_ACCOUNT_USERNAME and MIXPANEL_SERVICE_ACCOUNT_SECRET"
            )
        creds = Credentials(user, secret)
    elif legacy:
        creds = Credentials("", legacy, legacy=True)
    else:
        raise ConfigError(
            "no Mixpanel credentials: set MIXPANEL_SERVICE_ACCOUNT_USERNAME, "
            "MIXPANEL_SERVICE_ACCOUNT_SECRET and MIXPANEL_PROJECT_ID in the environment "
            "(or try it first with `backfill rehearse`)"
        )
    check_project(creds, project_id)
    return creds


def check_project(creds: Credentials, project_id: str | None) -> None:
    """A service account needs a project id: the checkpoint and every request name it."""
    if not project_id and not creds.legacy:
        raise ConfigError(
            "no project id: set MIXPANEL_PROJECT_ID or pass --project-id "
            "(the checkpoint is tied to it, so a resumed run cannot reach another project)"
        )
