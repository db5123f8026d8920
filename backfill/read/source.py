"""From what the user typed to a sorted list of data files: paths, folders, globs and URLs.

* A file is taken as it is; it must be a regular file (``-``, a FIFO or a device cannot be read
  twice, and the data is read twice: once to validate, once to send).
* A folder means the data files directly inside it. Hidden and marker files are skipped: names
  starting with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``, ``.part-0.crc``), ``*.crc``, and
  S3 console folder markers (``*_$folder$``). Subfolders are not entered: name them with a
  pattern (``'export/*/*.parquet'``).
* A pattern (``*``, ``?``, ``[...]``; ``**`` crosses folders) is expanded here, not by the shell,
  so quote it. Markers are skipped there too.
* ``s3://`` and ``gs://`` URLs name an object, a prefix (a "folder") or a pattern, alike.

Every file found, from every argument, is sorted (by its full path or URL) into one list; a
file named twice is read once.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from backfill.errors import InputError
from backfill.read import objectstore
from backfill.read.formats import is_gzip_name

_GLOB_CHARS = re.compile(r"[*?\[]")
_LOCAL = pafs.LocalFileSystem()


@dataclass
class DataFile:
    """One file of a dataset: where it is, how to open it, and (after a full pass) its rows.

    ``name`` is the path or URL as the user would recognise it; ``format`` one of FORMATS (or
    ``dataframe`` / ``table`` for an in-memory source); ``size`` in bytes; ``rows`` is None
    until the dataset has been read to the end of this file once.
    """

    name: str
    format: str
    size: int
    rows: int | None = None
    fs: Any = field(default=None, repr=False, compare=False)
    path: str = field(default="", repr=False)
    table: pa.Table | None = field(default=None, repr=False, compare=False)

    @property
    def remote(self) -> bool:
        """Whether the file is in an object store (read over the network)."""
        return self.fs is not None and not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def gzipped(self) -> bool:
        """Whether the file is gzip-compressed text (by its name)."""
        return is_gzip_name(self.path or self.name)

    def open_stream(self, *, read_ahead: bool = True) -> Any:
        """A sequential stream of the file's bytes (decompressed when ``.gz``).

        From an object store a stream reads ahead in big ranges (one request each), unless
        ``read_ahead`` is False: a peek at the head then costs one small request.
        """
        ahead = self.remote and read_ahead
        try:
            return self.fs.open_input_stream(
                self.path,
                compression="gzip" if self.gzipped else None,
                buffer_size=objectstore.STREAM_BUFFER_BYTES if ahead else None,
            )
        except (OSError, pa.ArrowException) as e:
            raise _open_error(self.name, e) from None

    def open_random(self) -> Any:
        """A random-access handle (Parquet reads its footer, then column ranges)."""
        try:
            return self.fs.open_input_file(self.path)
        except (OSError, pa.ArrowException) as e:
            raise _open_error(self.name, e) from None

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes (decompressed for ``.gz``), for sniffing."""
        try:
            with self.open_stream(read_ahead=False) as f:
                return bytes(f.read(size))
        except (OSError, EOFError, pa.ArrowException) as e:
            hint = " (is it a valid .gz file?)" if self.gzipped else ""
            raise InputError(f"cannot read {self.name}: {_first_line(e)}{hint}") from None


def _open_error(name: str, e: BaseException) -> InputError:
    if objectstore.is_url(name):
        return objectstore.store_error(name, e)
    return InputError(f"cannot read {name}: {_first_line(e)}")


@dataclass(frozen=True)
class Found:
    """A file found from an input argument, before its format is known."""

    key: str  # sorts the dataset: absolute path or URL
    name: str
    fs: Any
    path: str
    size: int


def is_marker(name: str) -> bool:
    """Hidden files and the markers writers leave beside the data."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return (
        base.startswith((".", "_"))
        or base.lower().endswith(".crc")
        or base.endswith("$folder$")
        or base == ""
    )


def find_files(inputs: Sequence[str | os.PathLike[str]]) -> list[Found]:
    """Every data file the inputs name, sorted, each once."""
    if not inputs:
        raise InputError("no input given: name a file, a folder, a quoted pattern or a URL")
    found: dict[str, Found] = {}
    stores: dict[tuple[str, str], Any] = {}  # one filesystem per bucket
    for item in inputs:
        text = os.fspath(item)
        if not isinstance(text, str):
            raise InputError(f"input {item!r} is not a path")
        hits = _find_url(text, stores) if objectstore.is_url(text) else _find_local(text)
        for hit in hits:
            found.setdefault(hit.key, hit)
    return [found[key] for key in sorted(found)]


# --- local -----------------------------------------------------------------------------------


def _find_local(text: str) -> list[Found]:
    if text == "-":
        raise InputError(
            "'-' (standard input) is not a regular file: backfill reads the input twice "
            "(to validate, then to send); write the export to a file first"
        )
    path = Path(text).expanduser()
    if not os.path.lexists(path) and _GLOB_CHARS.search(text):
        return _glob_local(text)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"input file not found: {text} (check the path)") from None
    except OSError as e:
        raise InputError(f"cannot read {text}: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        return _folder_local(path, text)
    return [_local_file(path, text, info)]


def _local_file(path: Path, name: str, info: os.stat_result) -> Found:
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(info.st_mode)
            else "a character device"
            if stat.S_ISCHR(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a file"
        )
        raise InputError(
            f"{name} is not a regular file ({kind}): backfill reads the input twice "
            "(to validate, then to send); write the export to a file first"
        )
    absolute = str(path.resolve())
    return Found(absolute, name, _LOCAL, absolute, info.st_size)


def _folder_local(path: Path, text: str) -> list[Found]:
    out: list[Found] = []
    subfolders = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if is_marker(entry.name):
                continue
            if entry.is_dir():
                subfolders += 1
                continue
            out.append(_local_file(Path(entry.path), os.path.join(text, entry.name), entry.stat()))
    if not out:
        raise InputError(_empty_folder(text, subfolders))
    return out


def _glob_local(pattern: str) -> list[Found]:
    out: list[Found] = []
    for hit in glob.glob(os.path.expanduser(pattern), recursive=True):
        if is_marker(hit):
            continue
        info = os.stat(hit)
        if stat.S_ISDIR(info.st_mode):
            continue
        out.append(_local_file(Path(hit), hit, info))
    if not out:
        raise InputError(f"no files match {pattern} (check the pattern; quote it in the shell)")
    return out


def _empty_folder(text: str, subfolders: int) -> str:
    if subfolders:
        return (
            f"{text} is a folder with no data files directly inside, only {subfolders} "
            f"subfolder(s): pass a quoted pattern such as '{text.rstrip('/')}/*/*.parquet'"
        )
    return f"{text} is a folder with no data files in it (check the path)"


# --- object stores ---------------------------------------------------------------------------


def _find_url(url: str, stores: dict[tuple[str, str], Any]) -> list[Found]:
    scheme, bucket, key = objectstore.split_url(url)
    if (scheme, bucket) not in stores:
        stores[(scheme, bucket)] = objectstore.filesystem(scheme, bucket)
    fs = stores[(scheme, bucket)]
    prefix = f"{scheme}://"
    try:
        if _GLOB_CHARS.search(key):
            return _glob_store(fs, prefix, bucket, key, url)
        target = f"{bucket}/{key}".rstrip("/")
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.File and not url.endswith("/"):
            return [Found(prefix + info.path, prefix + info.path, fs, info.path, info.size)]
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"nothing found at {url} (check the bucket and the prefix)")
        listing = fs.get_file_info(pafs.FileSelector(target, recursive=False))
    except (OSError, pa.ArrowException) as e:
        raise objectstore.store_error(url, e) from None
    out = [
        Found(prefix + i.path, prefix + i.path, fs, i.path, i.size)
        for i in listing
        if i.type == pafs.FileType.File and not is_marker(i.path)
    ]
    if not out:
        subfolders = sum(1 for i in listing if i.type == pafs.FileType.Directory)
        raise InputError(_empty_folder(url, subfolders))
    return out


def _glob_store(fs: Any, prefix: str, bucket: str, key: str, url: str) -> list[Found]:
    parts = key.split("/")
    fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS.search(p))
    base = "/".join([bucket, *parts[:fixed]])
    deep = len(parts) - fixed > 1 or "**" in key
    pattern = glob_regex(f"{bucket}/{key}")
    try:
        listing = fs.get_file_info(pafs.FileSelector(base, recursive=deep, allow_not_found=True))
    except (OSError, pa.ArrowException) as e:
        raise objectstore.store_error(url, e) from None
    out = [
        Found(prefix + i.path, prefix + i.path, fs, i.path, i.size)
        for i in listing
        if i.type == pafs.FileType.File and not is_marker(i.path) and pattern.fullmatch(i.path)
    ]
    if not out:
        raise InputError(f"no objects match {url} (check the pattern and the bucket)")
    return out


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell pattern as a regex over ``/``-separated paths: ``*`` and ``?`` stay within one
    segment, ``**`` crosses segments, ``[...]`` is a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
