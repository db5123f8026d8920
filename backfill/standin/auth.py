"""Who is calling: HTTP Basic credentials judged as Mixpanel's ``/import`` judges them.

A service account (``username:secret``) needs ``project_id`` naming the configured project; a
legacy project secret is the Basic username with an empty password and needs no project id.
The result names the credential kind for the request log, never a secret: a username is shown
only when it is one the stand-in was configured with.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, NamedTuple

from backfill.standin.config import StandinConfig

if TYPE_CHECKING:
    from aiohttp import web

    from backfill.standin.state import RequestRecord, StandinState

#: Mixpanel's 401 message for credentials it does not know.
INVALID_CREDENTIALS = "Invalid credentials"


class Verdict(NamedTuple):
    """The credential kind (for the log) and, when they do not pass, the 401's message."""

    kind: str
    refusal: str | None


def basic_credentials(header: str) -> tuple[str, str] | None:
    """``(username, password)`` from a Basic Authorization header, or None if malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def authenticate(header: str, project_id: str | None, config: StandinConfig) -> Verdict:
    """Judge an Authorization header and the request's ``project_id`` query parameter."""
    credentials = basic_credentials(header)
    if credentials is None:
        return Verdict("none" if not header else "malformed", INVALID_CREDENTIALS)
    login, password = credentials

    secret = config.service_accounts.get(login)
    if secret is not None and password:
        kind = f"service-account {login}"
        # compare_digest: no timing hint about how much of a guessed secret was right.
        if not hmac.compare_digest(password.encode(), secret.encode()):
            return Verdict(kind, INVALID_CREDENTIALS)
        if project_id is None:
            return Verdict(
                kind, "project_id query parameter is required with service account credentials"
            )
        if project_id != config.project_id:
            return Verdict(kind, f"service account has no access to project_id {project_id!r}")
        return Verdict(kind, None)

    if not password and any(
        hmac.compare_digest(login.encode(), s.encode()) for s in config.api_secrets
    ):
        return Verdict("api-secret", None)
    return Verdict("unknown", INVALID_CREDENTIALS)


def refused_access(
    request: web.Request, config: StandinConfig, state: StandinState, record: RequestRecord
) -> tuple[int, str] | None:
    """Every endpoint's first steps, as Mixpanel takes them: the credentials (401), then a
    project the service account may not reach (403). The refusal's status and message, if any;
    the record learns how the caller authenticated."""
    verdict = authenticate(
        request.headers.get("Authorization", ""), request.query.get("project_id"), config
    )
    record.auth = verdict.kind
    if verdict.refusal is not None:
        return 401, verdict.refusal
    if state.forbidden:
        return 403, "service account does not have access to this project"
    return None
