"""Formats: which one a file is in (by its name or ``--format``), and what its content looks like.

The content check serves the messages only: a file is read as its extension or ``--format``
says, and when that fails the message names the format the bytes look like, with the flag
that reads them.
"""

from __future__ import annotations

import codecs
from pathlib import PurePath

from backfill.errors import ConfigError, InputError

FORMATS = ("csv", "tsv", "parquet", "jsonl")
#: Formats read as text, line by line (optionally gzipped).
TEXT_FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_NAMED = ".csv, .tsv, .parquet, .jsonl or .ndjson (text formats may end in .gz)"
_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"


def normalize_format(fmt: str | None) -> str | None:
    """``--format`` lower-cased and checked; None stays None (the extension decides)."""
    if fmt is None:
        return None
    value = str(fmt).strip().lower()
    if value in ("ndjson", "json-lines", "jsonlines"):
        value = "jsonl"
    if value not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    return value


def format_of_name(name: str) -> str | None:
    """The format a file name's extension names (``.gz`` allowed on text formats), or None."""
    lower = PurePath(name).name.lower()
    gz = lower.endswith(".gz")
    if gz:
        lower = lower[:-3]
    fmt = _EXTENSIONS.get(PurePath(lower).suffix)
    if fmt is None or (gz and fmt not in TEXT_FORMATS):
        return None
    return fmt


def is_gzip_name(name: str) -> bool:
    """Whether a text file's name says it is gzip-compressed."""
    return name.lower().endswith(".gz")


def detect_format(path: PurePath | str, fmt: str | None) -> str:
    """The format to read ``path`` as: ``fmt`` when given, else from the file extension."""
    given = normalize_format(fmt)
    if given is not None:
        return given
    found = format_of_name(str(path))
    if found is None:
        name = PurePath(str(path)).name
        hint = ""
        if name.lower().endswith((".json", ".json.gz")):
            hint = " (pass --format jsonl if it holds one JSON object per line)"
        raise InputError(
            f"cannot tell the format of {name} from its extension: name it {_NAMED}, "
            f"or pass --format {'|'.join(FORMATS)}{hint}"
        )
    return found


def resolve_delimiter(fmt: str, delimiter: str | None) -> str | None:
    """The one-character field delimiter for CSV/TSV (None for other formats)."""
    if delimiter is not None:
        delimiter = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(delimiter, delimiter)
        if fmt not in ("csv", "tsv"):
            raise ConfigError(f"--delimiter applies to CSV only, not to --format {fmt}")
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise ConfigError(
                f"--delimiter {delimiter!r} must be one character other than a quote or a line "
                "break: e.g. --delimiter ';' or --delimiter '|'"
            )
        if fmt == "tsv" and delimiter != "\t":
            raise ConfigError("--format tsv is tab-separated: use --format csv --delimiter X")
        return delimiter
    if fmt == "tsv":
        return "\t"
    return "," if fmt == "csv" else None


# --- what the content looks like -------------------------------------------------------------


def looks_like(head: bytes) -> str | None:
    """The format the first bytes of a file look like: a FORMATS value, "gzip", "json",
    "binary", or None when it is text of no telling shape."""
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if is_binary(head):
        return "binary"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("{"):
        return "jsonl"
    if text.startswith("["):
        return "json"
    first = text.split("\n", 1)[0]
    if "\t" in first and first.count("\t") >= first.count(","):
        return "tsv"
    if "," in first:
        return "csv"
    return None


def is_binary(head: bytes) -> bool:
    """Not text: invalid UTF-8, or NUL bytes making more than 1% of it (UTF-16, a binary
    format). A stray NUL in an id is not binary: the validator refuses that row alone."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    return head.count(b"\x00") * 100 > max(len(head), 1)


def content_hint(head: bytes, reading_as: str) -> str:
    """A clause telling what the bytes look like when that is not ``reading_as``, or ''."""
    seen = looks_like(head)
    if seen is None or seen == reading_as:
        return ""
    if seen == "parquet":
        return "; it looks like a Parquet file: pass --format parquet"
    if seen == "gzip":
        return "; it is gzip-compressed: name it with a .gz ending"
    if seen == "jsonl":
        return "; it looks like JSON Lines: pass --format jsonl"
    if seen == "json":
        return "; it looks like a JSON array: write one JSON object per line (JSON Lines)"
    if seen == "binary":
        return "; it looks like binary data, not text (export the mappings as UTF-8 text)"
    if seen == "tsv":
        return "; it looks tab-separated: pass --format tsv"
    return "; it looks like CSV text: pass --format csv"
