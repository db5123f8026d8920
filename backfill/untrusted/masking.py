"""Server text made safe to show: no control characters, nothing that looks like a credential.

A proxy in front of ``/import`` may echo the request's ``Authorization`` header in its error
page, and any server can put escape sequences in a body; quoted verbatim, the first prints the
base64 of the credential on the terminal and in the run folder's files, the second rewrites the
terminal. Every message that quotes a server (an answer's body, a refusal's message, a
``Location``) goes through ``shown``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "****"
# An ANSI/VT escape sequence (CSI ... final byte, OSC ... BEL/ST, or ESC and one character),
# removed whole so that no "[31m" remains of it.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|.)?", re.S)
# Other control characters (C0, DEL, C1) and the bidirectional overrides that reorder text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# "Authorization: <scheme> <value>", and a "Basic"/"Bearer" token anywhere (as headers spell
# them; at least 12 characters, so that English such as "Basic validation" stays readable).
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:[a-z]+\s+)?[^\s\"'<,;]+"
)
_SCHEME = re.compile(
    r"\b(Basic|Bearer|Digest|BASIC|BEARER|basic|bearer)(\s+)[A-Za-z0-9+/=._~-]{12,}"
)


def shown(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` on one line with each of ``secrets``, credentials and control characters masked."""
    text = _ESCAPE.sub("", text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:  # an empty or tiny "secret" would mask every letter
            text = text.replace(secret, MASK)
    text = _HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _SCHEME.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())
