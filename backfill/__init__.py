"""backfill: replay anonymous-to-identified ID mappings into Mixpanel as ``$identify`` events."""

__version__ = "0.1.0"
