"""CSV and TSV (plain or gzip) through pyarrow's streaming CSV reader.

Every chosen column is declared a string, so nothing is inferred: ``00042``, ``1e5``, ``TRUE``,
``NULL`` and ``NaN`` arrive as written. A quoted value may span lines (a note column may hold
a paragraph), so row numbers count records, not lines; an *id* never holds a line break, and
one that does is the mark of a quote left open, which would otherwise swallow the rows after
it into one value: the file is refused naming the line where that record starts. A quote
left open in another column either breaks the field count of a later record (refused as
malformed, naming the line) or runs to the end of the file, which an odd count of quotes
reveals (refused, naming the line it opened on).

pyarrow's errors carry no line numbers, so when a file is refused for its shape (a record
with the wrong number of fields, a value too large, an id with a line break), the file is
scanned once more with Python's csv module to find the line: slow, but only on the way out.
"""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from backfill.errors import InputError
from backfill.read.chunk import Columns
from backfill.read.formats import content_hint, looks_like
from backfill.read.lines import read_lines
from backfill.read.source import DataFile

#: pyarrow's parse block: a record longer than this cannot be read (and is no row of ids).
BLOCK_BYTES = 1 << 21
SNIFF_BYTES = 64 << 10
#: Python's csv module refuses a field longer than this: the scan's "far too large".
_SCAN_FIELD_LIMIT = csv.field_size_limit()


def check(file: DataFile, columns: Columns, delimiter: str) -> bool:
    """Refuse a file that is not delimited text or lacks a column; False when it is empty."""
    head = file.head(SNIFF_BYTES)
    if not head.strip():
        return False
    kind = "TSV" if delimiter == "\t" else "CSV"
    seen = looks_like(head)
    if seen in ("binary", "parquet", "gzip"):
        hint = content_hint(head, "csv") if seen != "binary" else ""
        hint = hint or ", or pass --format parquet if it is a Parquet file"
        raise InputError(
            f"{file.name} is not {kind} text (binary data or not UTF-8): export the mappings "
            f"as UTF-8 {kind}{hint}"
        )
    if seen in ("jsonl", "json"):
        raise InputError(
            f"{file.name} looks like JSON, not {kind}: pass --format jsonl if it holds one JSON "
            "object per line"
        )
    header = _header(file, delimiter)
    check_columns(file.name, header, columns, _shape_hint(header, head, delimiter))
    return True


def batches(file: DataFile, columns: Columns, delimiter: str) -> Iterator[list[pa.Array]]:
    """The chosen columns, a parse block at a time, as raw strings.

    The bytes pass through a quote counter on their way to pyarrow: a quote left open in any
    column (not only an id) swallows every line after it into one value, and when it is never
    closed pyarrow reads that as a valid last record. Well-formed CSV has an even number of
    quotes, so an odd count triggers a scan for the unclosed one (see ``_unclosed_quote``).
    """
    names = columns.names()
    unique = list(dict.fromkeys(names))
    counter = _QuoteCounter(file.open_stream())
    try:
        reader = pacsv.open_csv(
            pa.PythonFile(counter, mode="r"),
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
            parse_options=_parse_options(delimiter),
            convert_options=pacsv.ConvertOptions(
                include_columns=unique,
                column_types={n: pa.string() for n in unique},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        try:
            for batch in reader:
                yield [batch.column(unique.index(n)) for n in names]
        finally:
            reader.close()
    finally:
        counter.close()
    if counter.quotes % 2:
        # After the last batch: validation reads every row before anything is sent, so a
        # refusal here still comes before the first request.
        _unclosed_quote(file, delimiter)


class _QuoteCounter:
    """A read-only file object counting the ``"`` bytes that pass through it.

    pyarrow's streaming reader calls ``read`` from its I/O thread, reading ahead, and goes on
    doing so for a while after the reader is closed. So ``close`` waits for a read under way
    (the stream is never closed under it) and every read after it is an immediate end of
    file: the I/O thread winds down at once instead of reading on while the process exits
    (which hung in Arrow's thread pool, or aborted).
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.quotes = 0
        self.closed = False
        self._lock = threading.Lock()

    def read(self, size: int = -1) -> bytes:
        """Read like the wrapped stream, counting quotes; nothing once closed."""
        with self._lock:
            if self.closed:
                return b""
            data = bytes(self.raw.read(size))
        if data.find(b'"') >= 0:  # memchr: a block without quotes costs next to nothing
            self.quotes += data.count(b'"')
        return data

    def readable(self) -> bool:
        """A readable stream, for pyarrow's PythonFile."""
        return True

    def close(self) -> None:
        """Close the wrapped stream, once no read is under way."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.raw.close()


def _unclosed_quote(file: DataFile, delimiter: str) -> None:
    """Refuse the file if its last record ends inside an open quote (an odd count of quotes
    may also be a stray quote inside an unquoted value, which pyarrow reads as a character:
    then the strict scan stops early, and the file is read as pyarrow read it)."""
    start, row, line = 1, 0, 0
    reader = csv.reader(_lines(file), delimiter=delimiter, strict=True)
    try:
        for fields in reader:
            if fields:
                row += 1
            line = reader.line_num
            start = line + 1
    except csv.Error as e:
        if "unexpected end of data" not in str(e):
            return
        raise InputError(
            f"{file.name}: a quote opened in the record at line {start} (row {row}) is never "
            f"closed: lines {start} to {reader.line_num} were read as one record. Fix the "
            "quoting at that line or re-export the file"
        ) from None


def _parse_options(delimiter: str) -> pacsv.ParseOptions:
    # A quoted value may hold a line break (a note column); ids are checked for them later.
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)


def _header(file: DataFile, delimiter: str) -> list[str]:
    stream = file.open_stream(read_ahead=False)
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=SNIFF_BYTES, use_threads=False),
            parse_options=_parse_options(delimiter),
        )
        names = list(reader.schema.names)
        reader.close()
    except (pa.ArrowException, OSError, EOFError) as e:
        raise explain(file, delimiter, e) from None
    finally:
        stream.close()
    return names


def check_columns(name: str, found: list[str], columns: Columns, hint: str = "") -> None:
    """Each chosen column present exactly once in ``found`` (a header or a schema)."""
    options = (
        ("--anon-column", columns.anon),
        ("--identified-column", columns.identified),
        ("--time-column", columns.time),
    )
    for option, wanted in options:
        if wanted is not None and wanted not in found:
            shown = ", ".join(repr(c) for c in found[:20]) + (" …" if len(found) > 20 else "")
            raise InputError(
                f"column {wanted!r} not found in {name}; columns found: {shown}. "
                f"Pass {option} NAME to choose another{hint}"
            )
    twice = sorted({c for c in columns.names() if found.count(c) > 1})
    if twice:
        listed = ", ".join(repr(c) for c in twice)
        raise InputError(
            f"{name} has more than one column named {listed}: backfill cannot tell which "
            "holds the ids; rename the duplicates"
            + ("" if name.startswith("<") else " in the export")
        )


def _shape_hint(header: list[str], head: bytes, delimiter: str) -> str:
    """When the chosen columns are not found: what the header's shape suggests."""
    seen = looks_like(head)
    if seen in ("jsonl", "json"):
        return content_hint(head, "csv")
    if len(header) != 1:
        return ""
    only = header[0]
    if "\t" in only:
        return " (the header holds tabs: pass --format tsv)"
    for other in (";", "|"):
        if other in only:
            return f" (the header holds {other!r}: pass --delimiter '{other}')"
    if "," in only and delimiter != ",":
        return " (the header holds commas: pass --format csv)"
    return ""


# --- refusals with a line number -------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    row: int  # 0 for the header, then 1, 2, … as pyarrow counts records
    line: int  # where it starts (1-based physical line)
    end_line: int
    fields: int


class _TooLarge(Exception):
    def __init__(self, row: int, line: int) -> None:
        super().__init__(f"field too large at line {line}")
        self.row = row
        self.line = line


def _lines(file: DataFile) -> Iterator[str]:
    """The file's lines (``\\n``-terminated), decoded leniently: the scan only counts."""
    with file.open_stream() as f:
        for line in read_lines(f, 1 << 20, keepends=True):
            yield line.decode("utf-8", errors="replace")


def _records(file: DataFile, delimiter: str) -> Iterator[_Record]:
    reader = csv.reader(_lines(file), delimiter=delimiter, quotechar='"', doublequote=True)
    row = 0
    end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:
            raise _TooLarge(row, end + 1) from None
        if fields:  # pyarrow skips empty lines too
            yield _Record(row, end + 1, reader.line_num, len(fields))
            row += 1
        end = reader.line_num


def broken_quote(file: DataFile, delimiter: str, row: int, column: str) -> InputError:
    """The refusal of an id holding a line break, naming the line its record starts on."""
    where = f"row {row}"
    try:
        for record in _records(file, delimiter):
            if record.row == row:
                where = f"line {record.line} (row {row})"
                break
    except _TooLarge as e:
        where = f"line {e.line} (row {row})"
    return InputError(
        f"{file.name}: the {column!r} value of the record at {where} holds a line break: a "
        "quote is probably not closed, joining the lines after it into one value. Fix the "
        "quoting at that line or re-export the file"
    )


def explain(file: DataFile, delimiter: str, e: BaseException) -> InputError:
    """A one-line InputError for a pyarrow failure while reading ``file``."""
    text = _first_line(e)
    if isinstance(e, (OSError, EOFError)) and not isinstance(e, pa.ArrowException):
        hint = " (is it a valid .gz file?)" if file.gzipped else " (re-export the file)"
        return InputError(f"cannot read {file.name}: {text}{hint}")
    if "Empty CSV file" in text:
        return InputError(
            f"input file is empty: {file.name} (export the mappings with a header row)"
        )
    if "UTF8" in text or "UTF-8" in text:
        return InputError(f"{file.name}: input is not valid UTF-8 text (re-export it as UTF-8)")
    if "straddl" in text:
        return _too_large(file, delimiter)
    if "parse error" in text.lower():
        return _malformed(file, delimiter, text)
    return InputError(f"{file.name}: cannot read the input: {text} (re-export the file)")


def _too_large(file: DataFile, delimiter: str) -> InputError:
    what = f"a record is over {BLOCK_BYTES >> 20} MiB"
    try:
        for _ in _records(file, delimiter):
            pass
    except _TooLarge as e:
        what = (
            f"the record at line {e.line} (row {e.row}) holds a value over "
            f"{_SCAN_FIELD_LIMIT // 1024} KiB"
        )
    return InputError(
        f"{file.name}: {what}, far too large to be an id: the delimiter is probably wrong "
        "(--delimiter, --format tsv) or a quote is not closed. Fix that line or re-export the "
        "file"
    )


def _malformed(file: DataFile, delimiter: str, text: str) -> InputError:
    # pyarrow's text ends with the raw record, which may run on for lines: keep its head.
    shape = re.search(r"Expected \d+ columns?, got \d+", text)
    summary = shape.group(0) if shape else text.split(": ")[0]
    where = ""
    try:
        header = next(_records(file, delimiter), None)
        expected = header.fields if header else 0
        for record in _records(file, delimiter):
            if record.row and record.fields != expected:
                where = f" at line {record.line} (row {record.row})"
                if record.end_line > record.line:
                    where += (
                        f", a record running to line {record.end_line}: a quote is probably "
                        "not closed"
                    )
                break
    except _TooLarge as e:
        where = f" at line {e.line} (row {e.row}): a value runs on far too long, a quote is "
        where += "probably not closed"
    return InputError(
        f"{file.name}: malformed CSV: {summary}{where} (fix that record or re-export the file)"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
