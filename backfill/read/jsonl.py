"""JSON Lines (``.jsonl``, ``.ndjson``, plain or gzip): one JSON object per line.

The chosen keys are read as strings exactly as written in the file, like CSV: a JSON string
as it is; a number as its literal text (``42`` gives ``"42"``, ``1.50`` gives ``"1.50"``,
never a float's rounding); ``true``/``false`` as those words; ``null`` or an absent key is
missing. Values are then trimmed, and empty means missing, as for CSV. A nested object or
array under an id or time key refuses the whole file, naming the line: it means the wrong key
was chosen or the export nested its columns, and no row of such a file can be trusted.
Blank lines are skipped; rows count records (non-blank lines), the file's lines count all.

Two readers, one meaning. pyarrow's JSON reader is fast but only takes a JSON string for a
string column; so it reads a file until it meets anything else (a number, a boolean, an
object, a bad line) and the exact reader, Python's ``json`` with numbers kept as their text,
takes over at that record. On each pass the switch happens at the same record, so the rows
and chunks are the same every time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from backfill.errors import InputError
from backfill.read.chunk import Columns
from backfill.read.formats import content_hint, is_binary
from backfill.read.lines import read_lines
from backfill.read.source import DataFile

BLOCK_BYTES = 1 << 20
SNIFF_BYTES = 64 << 10
#: Records sampled at the start of a file to check that the chosen keys occur at all.
_SAMPLE_RECORDS = 1000


def check(file: DataFile, columns: Columns) -> bool:
    """Refuse a file that is not JSON Lines, or whose first records lack a chosen key.

    False when the file is empty (or blank).
    """
    head = file.head(SNIFF_BYTES)
    if not head.strip():
        return False
    lines = head.split(b"\n")
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last may be cut short
    if is_binary(head) or not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        raise InputError(
            f"{file.name} is not JSON Lines (one JSON object per line)"
            + (content_hint(head, "jsonl") or ": re-export it as JSON Lines")
        )
    keys: dict[str, None] = {}
    chosen = frozenset(columns.names())
    sampled = 0
    for number, line in enumerate(lines, start=1):
        if sampled >= _SAMPLE_RECORDS:
            break
        if not line.strip():
            continue
        obj = _parse(file, number, line.removeprefix(b"\xef\xbb\xbf"), chosen)
        keys.update(dict.fromkeys(obj))
        sampled += 1
    _check_keys(file, columns, list(keys), sampled)
    return True


def _check_keys(file: DataFile, columns: Columns, found: list[str], sampled: int) -> None:
    options = (
        ("--anon-column", columns.anon),
        ("--identified-column", columns.identified),
        ("--time-column", columns.time),
    )
    for option, wanted in options:
        if wanted is not None and wanted not in found:
            shown = ", ".join(repr(c) for c in found[:20]) + (" …" if len(found) > 20 else "")
            raise InputError(
                f"column {wanted!r} not found in the first {sampled} records of {file.name}; "
                f"keys found: {shown}. Pass {option} NAME to choose another"
            )


def batches(file: DataFile, columns: Columns, chunk_rows: int) -> Iterator[list[pa.Array]]:
    """The chosen keys as raw strings: pyarrow's reader while it can, then the exact one."""
    names = columns.names()
    unique = list(dict.fromkeys(names))
    done = 0
    stream = file.open_stream()
    try:
        reader = pajson.open_json(
            stream,
            read_options=pajson.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
            parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema([(n, pa.string()) for n in unique]),
                unexpected_field_behavior="ignore",
            ),
        )
        for batch in reader:
            yield [batch.column(unique.index(n)) for n in names]
            done += batch.num_rows
        return
    except (pa.ArrowException, OSError, EOFError):
        pass  # the exact reader takes over where this one stopped, and explains any fault
    finally:
        stream.close()
    yield from _exact_batches(file, names, chunk_rows, skip=done)


def _exact_batches(
    file: DataFile, names: list[str], chunk_rows: int, *, skip: int
) -> Iterator[list[pa.Array]]:
    values: list[list[str | None]] = [[] for _ in names]
    chosen = frozenset(names)
    record = 0
    for number, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue
        record += 1
        if record <= skip:
            continue
        obj = _parse(file, number, line, chosen)
        for k, key in enumerate(names):
            values[k].append(_text(file, number, key, obj.get(key)))
        if len(values[0]) >= chunk_rows:
            yield [pa.array(v, pa.string()) for v in values]
            values = [[] for _ in names]
    if values[0]:
        yield [pa.array(v, pa.string()) for v in values]


def _lines(file: DataFile) -> Iterator[bytes]:
    try:
        with file.open_stream() as f:
            yield from read_lines(f, BLOCK_BYTES)
    except (OSError, EOFError, pa.ArrowException) as e:
        hint = " (is it a valid .gz file?)" if file.gzipped else " (re-export the file)"
        raise InputError(f"cannot read {file.name}: {_first_line(e)}{hint}") from None


def _parse(file: DataFile, number: int, line: bytes, keys: frozenset[str]) -> dict[str, Any]:
    """One line's object; refused (naming the line) unless it is one, with ``keys`` once."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"{file.name}: line {number} is not valid UTF-8 text (re-export it as UTF-8)"
        ) from None
    try:
        obj = json.loads(
            text,
            parse_int=str,
            parse_float=str,
            parse_constant=str,
            object_pairs_hook=_Object.of,
        )
    except RecursionError:
        raise InputError(
            f"{file.name}: line {number} nests arrays or objects too deeply to be a mapping "
            "record (thousands of levels): fix that line or re-export the file as JSON Lines"
        ) from None
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        raise InputError(
            f"{file.name}: line {number} is not valid JSON ({msg}): fix that line or re-export "
            "the file as JSON Lines"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(
            f"{file.name}: line {number} holds a JSON {_kind(obj, text)}, not an object: JSON "
            "Lines has one object per line"
        )
    twice = obj.repeated & keys if isinstance(obj, _Object) else frozenset()
    if twice:
        listed = ", ".join(repr(k) for k in sorted(twice))
        raise InputError(
            f"{file.name}: line {number} has the key {listed} more than once: backfill cannot "
            "tell which value holds the id; fix the export"
        )
    return obj


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once."""

    repeated: frozenset[str] = frozenset()

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> _Object:
        """Build from the decoder's key/value pairs (the last of a repeated key wins)."""
        obj = cls(pairs)
        if len(obj) != len(pairs):
            counts = Counter(k for k, _ in pairs)
            obj.repeated = frozenset(k for k, n in counts.items() if n > 1)
        return obj


def _text(file: DataFile, number: int, key: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise InputError(
            f"{file.name}: line {number}: {key!r} holds a JSON {_kind(value)}, not a string "
            "or number: choose the key that holds the ids, or flatten the export"
        )
    return str(value)


def _kind(value: Any, text: str = '"') -> str:
    """What JSON value ``text`` held: numbers arrive as strings (``parse_int=str``)."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "string" if text.lstrip().startswith('"') else "number"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
