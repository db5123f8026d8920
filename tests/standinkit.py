"""Helpers for the stand-in's own tests: valid events, a POST as the sender makes it, a clock."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from typing import Any, NamedTuple

import aiohttp

from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    Standin,
)

T_MS = 1_700_000_000_000  # 2023-11-14, well inside Mixpanel's accepted range
SA_HEADER = {"Authorization": aiohttp.encode_basic_auth(*DEFAULT_SERVICE_ACCOUNT)}
PARAMS = {"strict": "1", "project_id": "1"}
UNSET: Any = object()


def identify(n: int, **props: Any) -> dict[str, Any]:
    """A valid ``$identify`` event for pair number ``n``, with ``props`` overriding."""
    identified = f"user-{n}"
    properties: dict[str, Any] = {
        "$anon_id": str(uuid.UUID(int=n + 1, version=4)),
        "$identified_id": identified,
        "distinct_id": identified,
        "time": T_MS,
        "$insert_id": f"ins-{n}",
    }
    properties.update(props)
    return {"event": "$identify", "properties": properties}


class Reply(NamedTuple):
    status: int
    body: Any
    headers: Any


async def post(
    session: aiohttp.ClientSession,
    standin: Standin,
    body: list[Any] | bytes,
    *,
    auth: tuple[str, str] | None = UNSET,
    params: dict[str, str] | None = None,
    gzipped: bool = False,
    content_type: str = "application/json",
    path: str = "/import",
) -> Reply:
    """POST ``body`` (events or raw bytes) the way the sender does, and decode the answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    credentials = DEFAULT_SERVICE_ACCOUNT if auth is UNSET else auth
    if credentials is not None:
        headers["Authorization"] = aiohttp.encode_basic_auth(*credentials)
    if gzipped:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    async with session.post(
        standin.url + path,
        data=io.BytesIO(data),  # aiohttp warns about large raw bytes bodies
        headers=headers,
        params=PARAMS if params is None else params,
    ) as response:
        return Reply(response.status, await response.json(content_type=None), response.headers)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
