"""Views of what a command did: summary, terminal table, progress line, status."""
