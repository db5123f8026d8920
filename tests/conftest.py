"""Shared fixtures: input files written the way exports write them, and UUID v4 factories.

The writers are plain functions handed out by session-scoped fixtures, so hypothesis tests can
use them too (a session fixture holds no per-test state, which hypothesis would object to).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import random
import socket
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from resumekit import Dataset, make_dataset

from backfill.standin import Standin, running_standin

DEFAULT_HEADER = ("anon_id", "identified_id")

# The run-folder registry of every test, and of every command a test starts (they inherit the
# environment), lives in a folder of this session, never in the machine's home; each test then
# gets one of its own (``_own_state``) so no test finds another's run folder.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="backfill-test-state-")

Row = Sequence[Any]
WriteCsv = Callable[..., Path]
WriteParquet = Callable[..., Path]
NewUuid = Callable[[], str]


def write_csv_file(
    directory: Path,
    rows: Sequence[Row],
    header: Sequence[str] | None = DEFAULT_HEADER,
    *,
    name: str = "mappings.csv",
    newline: str = "\n",
    bom: bool = False,
    encoding: str = "utf-8",
) -> Path:
    """Write ``rows`` under ``header`` as CSV (quoted where needed); ``.gz`` names are gzipped.

    ``None`` values are written as empty fields. ``header=None`` writes no header line.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    if header is not None:
        writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    data = buffer.getvalue().encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path = directory / name
    path.write_bytes(data)
    return path


def write_parquet_file(
    directory: Path,
    columns: dict[str, Any],
    *,
    name: str = "mappings.parquet",
    row_group_size: int | None = None,
) -> Path:
    """Write a Parquet file from ``{name: values}``; values may be lists or pyarrow arrays.

    Plain lists become string columns (None stays null); pass a pyarrow array for any other
    type (integers, dictionary-encoded strings, timestamps).
    """
    arrays = {
        k: v if isinstance(v, pa.Array | pa.ChunkedArray) else pa.array(v, pa.string())
        for k, v in columns.items()
    }
    path = directory / name
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)
    return path


def uuid4_factory(seed: int) -> NewUuid:
    """A callable returning a fresh, reproducible lower-case UUID v4 string each call."""
    rng = random.Random(seed)

    def new() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    return new


@pytest.fixture(scope="session")
def write_csv() -> WriteCsv:
    """``write_csv(tmp_path, rows, header=...)``: see ``write_csv_file``."""
    return write_csv_file


@pytest.fixture(scope="session")
def write_parquet() -> WriteParquet:
    """``write_parquet(tmp_path, {column: values})``: see ``write_parquet_file``."""
    return write_parquet_file


@pytest.fixture
def new_uuid(request: pytest.FixtureRequest) -> NewUuid:
    """A UUID v4 factory, seeded from the test's name so every run sees the same ids."""
    return uuid4_factory(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound for an instant, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def _own_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run-folder registry of this test's own (commands it starts inherit it)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


# --- a real S3 server on loopback (moto), for the object-store tests ----------------------

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole session."""
    server_module = pytest.importorskip(
        "moto.server", reason="moto is not installed: pip install -e '.[test]'"
    )
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Bucket:
    """A fresh bucket on the test server, and a client to fill it."""

    name: str
    client: Any

    def put(self, key: str, body: bytes) -> None:
        """Upload one object."""
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def url(self, key: str = "") -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.name}/{key}"


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """An empty bucket, with the AWS environment pointing at the loopback server."""
    import boto3

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"backfill-test-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return Bucket(name, client)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def standin() -> AsyncIterator[Standin]:
    """A stand-in with the default config on a free port of 127.0.0.1 (files that serve the
    stand-in from a thread of their own define their own ``standin``)."""
    async with running_standin() as s:
        yield s


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """20,000 valid pairs and 5 invalid rows: long enough to interrupt."""
    return make_dataset(tmp_path_factory.mktemp("big"), 20_000, seed=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """2,000 valid pairs and 5 invalid rows: for runs that need not be caught mid-way."""
    return make_dataset(tmp_path_factory.mktemp("small"), 2_000, seed=5)
