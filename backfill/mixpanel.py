"""Mixpanel's facts this tool relies on (SPEC, "Facts about Mixpanel"), in one place.

Constants only, and no imports beyond the standard library, so that the validator, the
sender and the local stand-in all judge by the same rules without depending on each other.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class IdMerge(StrEnum):
    """A project's ID merge system (*Project Settings → Identity Merge*): what a pair becomes."""

    #: ``$identify`` merges a UUID v4 anon id into the user's cluster (at most 500 ids).
    ORIGINAL = "original"
    #: A pairing event (``$device_id`` + ``$user_id``) binds the device; identity events refused.
    SIMPLIFIED = "simplified"


#: Base URL of ``/import`` per data-residency region.
REGIONS: Final = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
#: The legacy project secret (Basic username, empty password) works until this day.
LEGACY_SECRET_SUNSET: Final = "2027-03-03"

#: At most this many events per ``/import`` request.
MAX_EVENTS_PER_REQUEST: Final = 2000
#: The request size limit Mixpanel's 413 message states (uncompressed JSON).
MAX_REQUEST_BYTES: Final = 2 * 1024 * 1024

#: distinct_id values Mixpanel refuses, compared case-insensitively (after trimming).
PLACEHOLDER_DISTINCT_IDS: Final = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
    }
)
#: An id longer than this many UTF-8 bytes is refused.
MAX_ID_BYTES: Final = 255
#: ``$identify`` merges only an anon id that is a UUID v4 (8-4-4-4-12 hex, version 4,
#: variant 8/9/a/b, either case).
UUID4_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
#: Mixpanel's JavaScript SDK writes anonymous ids as this prefix and a UUID; Simplified ID
#: Merge's ingest strips one such prefix from ``$device_id``.
DEVICE_PREFIX: Final = "$device:"
#: An anon id ``$identify`` merges (Original ID Merge): a UUID v4, with or without the prefix.
IDENTIFY_ANON_PATTERN: Final = r"^(\$device:)?" + UUID4_PATTERN[1:]
#: Mixpanel's identity events; a Simplified ID Merge project refuses all of them.
IDENTITY_EVENTS: Final = frozenset({"$identify", "$create_alias", "$merge"})
#: ``$insert_id``: at most 36 characters of ``[A-Za-z0-9-]``.
INSERT_ID_PATTERN: Final = r"^[A-Za-z0-9-]{1,36}$"
#: ``time`` must be at or after 1971-01-01T00:00:00Z (epoch milliseconds).
MIN_TIME_MS: Final = 31_536_000_000
#: A ``time`` of at least this is milliseconds, below it seconds.
MS_THRESHOLD: Final = 100_000_000_000
#: Ids in one identity cluster (Original ID Merge), the identified id included.
MAX_CLUSTER_SIZE: Final = 500

# --- the raw event export (openapi/export.openapi.yaml in mixpanel/docs) ---------------------

#: Base URL of the raw export per data-residency region; the endpoint is ``EXPORT_PATH``.
#: ``GET`` with ``project_id`` (service accounts), ``from_date`` and ``to_date`` (``yyyy-mm-dd``,
#: both inclusive, UTC for projects created since 2023, the project's time zone before),
#: optional ``event`` (a JSON array of names), ``where`` and ``time_in_ms``; HTTP Basic auth.
#: The answer is JSON Lines, one stored event per line (``{"event":…,"properties":{…}}``, every
#: property, ``$insert_id`` included), gzip when asked with ``Accept-Encoding: gzip``. Raw
#: exports are not deduplicated: a resent event may appear more than once.
EXPORT_REGIONS: Final = {
    "us": "https://data.mixpanel.com",
    "eu": "https://data-eu.mixpanel.com",
    "in": "https://data-in.mixpanel.com",
}
EXPORT_PATH: Final = "/api/2.0/export"
#: The export's limits: beyond them it answers 429.
EXPORT_QUERIES_PER_HOUR: Final = 60
EXPORT_QUERIES_PER_S: Final = 3
EXPORT_MAX_CONCURRENT: Final = 100
#: New events take minutes to appear in the export (observed: complete after about 45 min).
EXPORT_LAG_S: Final = 45 * 60

#: Reserved event properties (docs/data-structure/property-reference/reserved-properties.mdx):
#: why identity merging was not executed for this event. Original ID Merge writes a short
#: reason and a longer description; Simplified ID Merge writes its own reason property.
FAILURE_REASON: Final = "$failure_reason"
FAILURE_DESCRIPTION: Final = "$failure_description"
IDENTITY_FAILURE_REASON: Final = "$identity_failure_reason"
#: The one documented value: an ``$anon_id`` that is not a UUID (Original ID Merge).
ANON_NOT_UUID_REASON: Final = "errAnonDistinctIdNonGUIDForm"
