"""Read the input: one or more files (local or in an object store), or a DataFrame, as one
dataset streamed in chunks of (anon id, identified id, time), never whole.

Formats: CSV and TSV (plain or gzip), Parquet, JSON Lines (plain or gzip). Values are strings
exactly as written (no type inference: ``00042``, ``1e5``, ``TRUE``, ``NULL`` and ``NaN`` arrive
as written), trimmed of surrounding whitespace; a value that is empty after trimming, or null,
is missing. Integer columns become their decimal strings. Rows are numbered from 1, the first
record after the header being row 1, both across the dataset and within each file.

Modules, one concern each:

* ``source``: inputs (paths, folders, patterns, URLs) to a sorted list of ``DataFile``
* ``objectstore``: S3 and GCS through pyarrow's filesystems
* ``formats``: which format a file is in, and what its content looks like
* ``delimited``, ``parquet``, ``jsonl``, ``memory``: one reader per kind of source
* ``chunk``: ``Chunk``, ``Columns``, the cleaning rules, the chunk digest
* ``dataset``: ``Dataset`` and ``open_dataset``, the public entry
* ``fingerprint``: what identifies the dataset's content, for the checkpoint
"""

from backfill.errors import InputChanged
from backfill.read.chunk import DEFAULT_CHUNK_ROWS, Chunk, ChunkSource, Columns
from backfill.read.dataset import Dataset, open_chunks, open_dataset
from backfill.read.fingerprint import file_fingerprint
from backfill.read.formats import FORMATS, detect_format
from backfill.read.source import DataFile

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "FORMATS",
    "Chunk",
    "ChunkSource",
    "Columns",
    "DataFile",
    "Dataset",
    "InputChanged",
    "detect_format",
    "file_fingerprint",
    "open_chunks",
    "open_dataset",
]
