"""The one options table and the frozen settings (credentials masked) built from it."""
