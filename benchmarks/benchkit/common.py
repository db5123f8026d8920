"""What every benchmark module shares: where things are, limits, and small helpers."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

#: The ``benchmarks/`` folder; ``bench.py`` there is the entry point.
HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent
SCRIPT = HERE / "bench.py"
DATA = HERE / "data"
OUT = HERE / "out"
RESULTS = HERE / "results.md"
NAIVE = HERE / "naive_validate.py"
MEASURE = HERE / "measure.py"
PYTHON = sys.executable
CHILD_TIMEOUT_S = 3600.0
MIB = 1024 * 1024
BACKGROUND_WARN_CORES = 0.25


def log(message: str) -> None:
    """Progress of the benchmark itself, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fresh_dir(path: Path) -> Path:
    """An empty folder at ``path``."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def warm_cache(path: Path) -> None:
    """Read a file once so that the first measured reader does not pay for the disk alone."""
    with path.open("rb") as f:
        while f.read(16 * MIB):
            pass


def source_digest(root: Path = ROOT) -> str:
    """A short digest of ``root``'s backfill/**/*.py: which code a measurement ran."""
    digest = hashlib.sha256()
    for source in sorted((root / "backfill").rglob("*.py")):
        name = source.relative_to(root / "backfill").as_posix()
        digest.update(name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


def backfill_cmd(*args: str) -> list[str]:
    """``python -m backfill ARGS...`` with this interpreter."""
    return [PYTHON, "-m", "backfill", *args]
