"""``python -m backfill``: the same entry point as the ``backfill`` console script."""

from backfill.cli import main

raise SystemExit(main())
