"""A local stand-in for Mixpanel's ``POST /import?strict=1``, for tests and rehearsals.

What it imitates
    * HTTP Basic auth with a service account (``username:secret`` plus a ``project_id`` query
      parameter that must name the configured project) or the legacy project API secret
      (username = secret, empty password, no ``project_id`` needed). 401 otherwise; an optional
      "forbidden" mode answers 403 to valid credentials, as for an account without access.
    * Strict mode only: ``strict=1`` is required, so a sender that drops it is caught. The
      query string of every request is logged (``ip=0`` is checked by the tests).
    * Bodies as a JSON array or NDJSON, optionally ``Content-Encoding: gzip``; Mixpanel's 413 when
      the uncompressed body exceeds ``max_bytes`` or the request holds more than ``max_events``.
    * Per-record strict validation (event name, properties, ``time``, ``distinct_id`` and its
      refused placeholders, ``$insert_id``; for ``$identify`` a non-empty ``$anon_id`` and
      ``$identified_id == distinct_id``; for ``$merge`` exactly two string ids). As Mixpanel
      does, a 400 with ``failed_records`` still imports the valid records of the same request;
      every 200 and 400 carries ``num_records_imported``; refusals name their record by
      ``index`` and, unless ``failed_records_key`` is None, by insert id too.
    * Identity merging, per ID merge system (``identity``), with Mixpanel's silence: a record
      that merges nothing is still accepted and counted as imported. Original ID Merge (the
      default): ``$identify`` merges only a UUID v4 ``$anon_id`` (or ``$device:<uuid4>``) not
      merged before, into a cluster of fewer than 500 ids; ``$merge`` joins two whole clusters
      up to 500 ids. Simplified ID Merge (``id_merge="simplified"``): a request holding any
      identity event is refused whole, with ``failed_records`` one plain string, as live
      probes of Mixpanel saw (2026-08); any other event with ``$device_id`` and ``$user_id``
      pairs them, one ``$device:`` stripped, the first pairing of a device winning. What
      merged, what did not and why: ``StandinState.merged_pairs()``, ``not_merged()``,
      ``cluster_of()``, ``devices_of()`` and ``summary()["identity"]``. In Simplified, a
      pairing binds events keyed ``$device:D`` or carrying ``$device_id`` D; a bare distinct_id
      D is a user D (``SimplifiedIdentity.owner_of_event``).
    * ``GET /api/2.0/export`` (``export``): the stored events as JSON Lines, with the failure
      properties of identity records that merged nothing (``failures``), not deduplicated,
      gzip when asked, an ``export_lag`` share not shown yet, 60 queries an hour and 3 a
      second; ``preload_path`` starts the project with events it already holds.
    * Deduplication by ``(event, time, distinct_id, $insert_id)``, the latest arrival winning
      in the store; only the first arrival of a key is an attempt to merge.
    * Mixpanel's response bodies for 200, 400, 401, 413 and 429 (the 429 as live probes saw
      it: no ``code``, ``status`` 0).

What it does not imitate
    * Identity beyond the graph: ``$create_alias`` merges nothing; no canonical distinct_id
      is chosen and no stored event is re-keyed to its cluster (no
      ``$distinct_id_before_identity``); merges take effect at once, where Mixpanel's reports
      may take up to 24 hours. In Simplified, ``distinct_id`` stays required (Mixpanel would
      derive it).
    * Refusals only Mixpanel makes: ``refuse_distinct_ids`` lets a test simulate them.
    * Mixpanel's exact wording for every message, its 10 MB limit (this keeps the documented
      2 MB), ``strict=0``, ``/track`` and profiles. Mixpanel rewrites a future ``time`` to the
      present; this refuses it (beyond ``max_future_s``), as the project's contract does.
    * Persistence: the store lives in memory (about 1-2 KB per unique event); ``store_path`` only
      appends an NDJSON copy of each unique event accepted, for a person to read.

The modules, in the order a request meets them:

    ``config``   the settings (``StandinConfig``) and the throwaway default credentials
    ``app``      the aiohttp application: the order of the answers, one handler class
    ``auth``     credentials, judged as Mixpanel judges them
    ``faults``   the random, scripted and ``always`` faults; the rate limit's token bucket
    ``rules``    the body's decoding and each record's strict checks (pure functions)
    ``state``    the request log, the event store and the counters; the run-time knobs
    ``identity`` what the accepted events merged: Original clusters, Simplified pairings
    ``running``  ``running_standin`` (tests, rehearsals), ``serve`` and its ``banner``
"""

from __future__ import annotations

from backfill.mixpanel import IDENTITY_EVENTS
from backfill.standin.app import CONFIG_KEY, STATE_KEY, make_app
from backfill.standin.config import DEFAULT_PROJECT_ID, DEFAULT_SERVICE_ACCOUNT, StandinConfig
from backfill.standin.faults import FAULT_NAMES, Fault, FaultRates
from backfill.standin.identity import NotMerged
from backfill.standin.running import Standin, banner, request_line, running_standin, serve
from backfill.standin.state import EventKey, RequestRecord, StandinState
from backfill.standin.strict import REFUSED_DISTINCT_IDS, SIMPLIFIED_REFUSAL

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_PROJECT_ID",
    "DEFAULT_SERVICE_ACCOUNT",
    "FAULT_NAMES",
    "IDENTITY_EVENTS",
    "REFUSED_DISTINCT_IDS",
    "SIMPLIFIED_REFUSAL",
    "STATE_KEY",
    "EventKey",
    "Fault",
    "FaultRates",
    "NotMerged",
    "RequestRecord",
    "Standin",
    "StandinConfig",
    "StandinState",
    "banner",
    "make_app",
    "request_line",
    "running_standin",
    "serve",
]
