"""Judge every row: per-row rules, event times, the whole-dataset rules, verdicts."""
