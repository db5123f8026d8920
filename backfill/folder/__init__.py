"""What is on disk in a run folder: files, lock, checkpoint, registry, location."""
