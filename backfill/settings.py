"""Settings: one frozen value built once from flags, a TOML file and the environment.

Precedence: a flag on the command line, then a key in ``--config``, then the default. Every
value is checked here, so later code never meets a bad one. Credentials come only from the
environment, never from a flag or a file, and their repr never shows a secret.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backfill.errors import ConfigError
from backfill.mixpanel import MAX_EVENTS_PER_REQUEST, REGIONS
from backfill.read import Columns, detect_format
from backfill.times import TimeStatus, now_ms, parse_one
from backfill.validate import DEFAULT_MAX_CLUSTER_SIZE

#: Every key a config file may hold: its type and default. Names follow the long options.
OPTIONS: dict[str, tuple[type, Any]] = {
    "format": (str, None),
    "anon_column": (str, "anon_id"),
    "identified_column": (str, "identified_id"),
    "time_column": (str, None),
    "out": (str, None),
    "no_progress": (bool, False),
    "max_cluster_size": (int, DEFAULT_MAX_CLUSTER_SIZE),
    "project_id": (str, None),
    "region": (str, "us"),
    "api_url": (str, None),
    "concurrency": (int, 10),
    "rate": (float, 25_000.0),
    "batch_size": (int, MAX_EVENTS_PER_REQUEST),
    "max_attempts": (int, 8),
    "timeout": (float, 30.0),
    "event_time": (str, None),
    "retry_base_s": (float, 2.0),
}
#: Keys that must never come from a file: secrets, and the one-off --restart.
_REFUSED_KEYS = {
    "restart": "--restart is a one-off: pass it on the command line",
    "secret": "credentials come from the environment only (see README: Credentials)",
    "api_secret": "credentials come from the environment only (see README: Credentials)",
    "username": "credentials come from the environment only (see README: Credentials)",
    "password": "credentials come from the environment only (see README: Credentials)",
    "token": "the project token comes from MIXPANEL_PROJECT_TOKEN",
}


@dataclass(frozen=True)
class Settings:
    """Everything one run needs to know, checked and resolved once."""

    input_path: Path
    format: str
    columns: Columns
    out_dir: Path
    progress: bool = True
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE
    project_id: str | None = None
    region: str = "us"
    api_url: str = REGIONS["us"]
    concurrency: int = 10
    rate_per_s: float = 25_000.0
    batch_size: int = MAX_EVENTS_PER_REQUEST
    max_attempts: int = 8
    timeout_s: float = 30.0
    event_time_ms: int | None = None
    restart: bool = False
    retry_base_s: float = 2.0
    token: str | None = field(default=None, repr=False)

    @property
    def import_url(self) -> str:
        """The full ``/import`` endpoint (query string added by the sender)."""
        base = self.api_url.rstrip("/")
        return base if base.endswith("/import") else base + "/import"


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to ``/import``; the repr masks every secret."""

    username: str = field(repr=False)
    secret: str = field(repr=False)
    legacy: bool = False

    def __repr__(self) -> str:
        if self.legacy:
            return "Credentials(legacy API secret=****)"
        return f"Credentials(service_account={self.username!r}, secret=****)"

    __str__ = __repr__

    @property
    def basic_auth(self) -> tuple[str, str]:
        """(user, password) for HTTP Basic: the legacy secret goes as user, empty password."""
        return (self.secret, "") if self.legacy else (self.username, self.secret)


def default_out_dir(input_path: Path) -> Path:
    """``runs/<input stem>/``, the stem without .csv/.parquet/.gz."""
    name = input_path.name
    for suffix in (".gz", ".csv", ".tsv", ".parquet", ".pq", ".parq"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path("runs") / (name or "input")


def load_config(path: Path | None) -> dict[str, Any]:
    """The keys of a TOML config file, checked against OPTIONS."""
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
    for key, value in data.items():
        if key in _REFUSED_KEYS:
            raise ConfigError(f"config {path}: key {key!r} is not allowed: {_REFUSED_KEYS[key]}")
        if key not in OPTIONS:
            known = ", ".join(sorted(OPTIONS))
            raise ConfigError(f"config {path}: unknown key {key!r}; known keys: {known}")
        kind = OPTIONS[key][0]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
            ok = True
        if not ok:
            raise ConfigError(
                f"config {path}: {key} must be {kind.__name__}, got {type(value).__name__} "
                f"{value!r}"
            )
    return data


def build_settings(
    input_path: Path,
    flags: Mapping[str, Any],
    config: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    restart: bool = False,
) -> Settings:
    """Resolve flags over config over defaults; check every value; fill in from env."""

    def get(key: str) -> Any:
        value = flags.get(key)
        if value is None or value is False:
            value = config.get(key, value)
        return OPTIONS[key][1] if value is None else value

    fmt = detect_format(input_path, get("format"))
    region = str(get("region")).lower()
    if region not in REGIONS:
        raise ConfigError(f"--region {region!r} is not one of us, eu, in")
    api_url = get("api_url") or REGIONS[region]
    check_api_url(api_url)
    max_cluster = _int_in(get, "max_cluster_size", 2, DEFAULT_MAX_CLUSTER_SIZE)
    batch_size = _int_in(get, "batch_size", 1, MAX_EVENTS_PER_REQUEST)
    concurrency = _int_in(get, "concurrency", 1, 64)
    max_attempts = _int_in(get, "max_attempts", 1, 100)
    rate = _positive(get, "rate")
    timeout = _positive(get, "timeout")
    retry_base = float(get("retry_base_s"))
    if retry_base < 0:
        raise ConfigError("retry_base_s must be 0 or more")
    event_time = get("event_time")
    event_time_ms = None if event_time is None else parse_event_time(str(event_time))
    project_id = get("project_id") or env.get("MIXPANEL_PROJECT_ID") or None
    if project_id is not None and not str(project_id).strip().isdigit():
        raise ConfigError(
            f"project id {project_id!r} is not a number: use the numeric id shown in "
            "Mixpanel's Project Settings (--project-id or MIXPANEL_PROJECT_ID)"
        )
    out = get("out")
    return Settings(
        input_path=input_path,
        format=fmt,
        columns=Columns(
            anon=str(get("anon_column")),
            identified=str(get("identified_column")),
            time=get("time_column") or None,
        ),
        out_dir=Path(out) if out else default_out_dir(input_path),
        progress=not get("no_progress"),
        max_cluster_size=max_cluster,
        project_id=str(project_id).strip() if project_id else None,
        region=region,
        api_url=str(api_url),
        concurrency=concurrency,
        rate_per_s=rate,
        batch_size=batch_size,
        max_attempts=max_attempts,
        timeout_s=timeout,
        event_time_ms=event_time_ms,
        restart=restart,
        retry_base_s=retry_base,
        token=env.get("MIXPANEL_PROJECT_TOKEN") or None,
    )


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
    """Credentials go over https only, or plain http to a loopback address."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(
            "--api-url must not carry credentials: remove user:password@ from it and set "
            "them in the environment"
        )
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
    if not project_id and not creds.legacy:
        raise ConfigError(
            "no project id: set MIXPANEL_PROJECT_ID or pass --project-id "
            "(the checkpoint is tied to it, so a resumed run cannot reach another project)"
        )
    return creds


def _int_in(get: Any, key: str, low: int, high: int) -> int:
    value = get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        option = "--" + key.replace("_", "-")
        raise ConfigError(f"{option} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _positive(get: Any, key: str) -> float:
    value = get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0 or number != number or number == float("inf"):
        option = "--" + key.replace("_", "-")
        raise ConfigError(f"{option} must be a number above 0, got {value!r}")
    return number
