"""``python -m backfill``: the same entry point as the ``backfill`` console script."""

from backfill import interrupts

# Before the heavier imports: a Ctrl-C from the first instant is a request to stop (exit 130).
interrupts.catch_early()

from backfill.cli import entry  # noqa: E402

raise SystemExit(entry())
