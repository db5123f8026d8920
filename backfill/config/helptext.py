"""What ``--help`` says: each command's line and its examples (the options' help comes from
the options table itself)."""

from __future__ import annotations

from backfill.config.options import REHEARSE, RUN, VALIDATE, VERIFY

INTRO = "backfill: replay anonymous-to-identified ID mappings into Mixpanel as identity merges."

START_HERE = """\
start here:
  backfill validate mappings.csv        # what would be sent, what is refused and why
  backfill rehearse mappings.csv        # the same run against a local stand-in
"""

#: Each command's one line in ``backfill --help`` (and, capitalised, its own description).
HELPS = {
    VALIDATE: "dry run: read and validate, report every refused row; sends nothing",
    REHEARSE: "the whole run against a local Mixpanel stand-in: no credentials, no network",
    RUN: "validate, then send to Mixpanel's /import (resumable: rerun to resume)",
    VERIFY: "after a run: ask Mixpanel's export which sent pairs really merged",
    "status": "progress of a run, from its folder (while it runs or after)",
    "serve": "run the local Mixpanel stand-in on its own (for rehearsals and tests)",
}

EXAMPLES = {
    VALIDATE: """\
examples:
  backfill validate mappings.csv
  backfill validate export/ --anon-column device_id --identified-column user_id
  backfill validate 'export/part-*.parquet' --time-column merged_at --out runs/march
  backfill validate mappings.csv --config configs/migration.toml --json

Writes rejects.csv (every refused row, with its reason and detail) and summary.json to the
run folder, and prints the counts by reason and the time the run would take. Exit 0 when the
input was read, whatever was rejected; 2 for bad usage or input.
""",
    RUN: """\
examples:
  export MIXPANEL_SERVICE_ACCOUNT_USERNAME=... MIXPANEL_SERVICE_ACCOUNT_SECRET=...
  export MIXPANEL_PROJECT_ID=1234567
  backfill run mappings.csv --region eu
  backfill run mappings.csv --config configs/migration.toml
  backfill run mappings.csv            # again after a crash or Ctrl-C: resumes

Credentials come from the environment only. The first request holds one event (the canary);
the workers start once it settles. Rerunning the same command resumes from the checkpoint; a
finished run sends nothing more. Exit codes: 0 finished, 2 bad usage or input (nothing sent),
3 aborted (Mixpanel refused the credentials or a request, or retries were exhausted: fix the
cause the message names, then rerun to resume), 130 interrupted (rerun to resume).
""",
    REHEARSE: """\
examples:
  backfill rehearse sample_data/mappings.csv --time-column merged_at
  backfill rehearse mappings.csv --fault-rate 0.1 --retry-base-s 0.2
  backfill rehearse mappings.csv --system simplified      # see a Simplified project refuse

Runs the real `run` code path against a local stand-in for Mixpanel's /import on a free
loopback port, with throwaway credentials; writes to <run folder>-rehearsal/ (never a real
run's folder), including received.ndjson (what the stand-in accepted). Starts afresh each time.
""",
    VERIFY: """\
examples:
  backfill verify mappings.csv                # the run of mappings.csv, as `run` finds it
  backfill verify mappings.csv --region eu --json
  backfill verify mappings.csv --export-url http://127.0.0.1:8787   # a local stand-in

Credentials come from the environment, as for `run`. Re-derives the pairs the run sent from
the input and its checkpoint, asks Mixpanel's raw export (GET /api/2.0/export; 60 queries an
hour) for the run's events over the days they span (at most 3 queries), and writes
verify.csv: each sent pair merged, not_merged (Mixpanel's $failure_reason or
$identity_failure_reason quoted) or not_found (new events take about 45 minutes to appear:
run it again later; pairs already merged are not asked for again). Exit codes: 0 every sent
pair merged, 4 some not merged or not found yet, 2 bad usage, 3 the export refused.
""",
}

SERVE_EXAMPLES = """\
examples:
  backfill serve --port 8787 --store received.ndjson
  backfill serve --fault-rate 0.05 --rate-limit 30000 --latency 0.05
  backfill serve --system simplified

It prints the throwaway credentials it accepts; then, in another shell:
  MIXPANEL_SERVICE_ACCOUNT_USERNAME=backfill-rehearsal \\
  MIXPANEL_SERVICE_ACCOUNT_SECRET=rehearsal-only-not-a-mixpanel-secret \\
  MIXPANEL_PROJECT_ID=1 backfill run mappings.csv --api-url http://127.0.0.1:8787
"""
