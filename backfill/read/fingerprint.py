"""What identifies a dataset's content, for the checkpoint: one entry per file, in order.

* Local files: name, size and the SHA-256 of the bytes (any edit, however small, changes it;
  the checkpoint's ``identity.input`` holds these entries).
* Object stores: name, size and the version the store reports without a download: the ETag
  on S3 (changes with every upload), the generation and ETag on GCS.
* In memory: a SHA-256 of the chosen columns' values (the same rows give the same digest in
  every process, so a run from a DataFrame can resume).

``name`` is the file's base name, not its full path: a run resumed from another directory, or
after the export folder was moved, is still the same run; the order of the entries and their
content tell the files apart.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from backfill.errors import InputError
from backfill.read import objectstore
from backfill.read.memory import table_digest
from backfill.read.source import DataFile

_BLOCK_BYTES = 4 << 20


def file_fingerprint(file: DataFile) -> dict[str, Any]:
    """The identity of one file of a dataset (see the module docstring)."""
    base = file.name.rstrip("/").rsplit("/", 1)[-1]
    if file.table is not None:
        return {"name": file.name, "rows": file.table.num_rows, "sha256": table_digest(file.table)}
    if file.remote:
        try:
            version = objectstore.version_of(file.fs, file.path)
        except (OSError, pa.ArrowException) as e:
            raise objectstore.store_error(file.name, e) from None
        return {"name": base, "size": file.size, **version}
    return {"name": base, **local_digest(file)}


def local_digest(file: DataFile) -> dict[str, Any]:
    """Size and SHA-256 of a local file's bytes (as stored: a .gz file's compressed bytes)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with file.fs.open_input_stream(file.path) as f:
            while block := f.read(_BLOCK_BYTES):
                digest.update(block)
                size += len(block)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {file.name}: {e}") from None
    return {"size": size, "sha256": digest.hexdigest()}
