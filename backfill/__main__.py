"""``python -m backfill``: the same entry point as the ``backfill`` console script."""

from backfill.cli import entry

raise SystemExit(entry())
