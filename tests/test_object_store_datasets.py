"""Datasets in object stores: a real S3 server (moto) and a GCS emulator, both on loopback.

The servers run in this process's threads on free 127.0.0.1 ports; the code under test finds
them the way a user's S3-compatible store is found, through ``AWS_ENDPOINT_URL`` (and
``STORAGE_EMULATOR_HOST`` for GCS). Each test skips, saying why, when its server's package is
not installed.
"""

from __future__ import annotations

import gzip
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Bucket

from backfill.errors import InputError
from backfill.read import Columns, Dataset, open_dataset
from backfill.read.objectstore import split_url
from backfill.validation.judge import judge

NOW_MS = 1_760_000_000_000
U1 = "8e8afc84-9b31-46ab-a745-e5279afad5ab"
U2 = "a92d9e0f-e310-4aee-9817-a1320b6451b0"
U3 = "bf44e1ec-1d71-43de-9cf8-1d93982ed19d"
U4 = "945b3a5a-89ca-43eb-a0c1-7c7337ef1c35"
#: Four parts whose rows conflict and repeat across part boundaries (one part empty).
PARTS = [
    [(U1, "alice"), (U2, "bob")],
    [(U1, "alice"), (U3, "carol")],
    [],
    [(U3, "dave"), (U4, "erin")],
]


def parquet_bytes(rows: list[tuple[str, str]]) -> bytes:
    """A Parquet file of string columns anon_id, identified_id."""
    table = pa.table(
        {
            "anon_id": pa.array([a for a, _ in rows], pa.string()),
            "identified_id": pa.array([u for _, u in rows], pa.string()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    """The rows as CSV under the default header."""
    return ("anon_id,identified_id\n" + "".join(f"{a},{u}\n" for a, u in rows)).encode()


def verdicts(source: Dataset) -> tuple[list[int], list[int]]:
    """Every row's reason and the row each repeat refers back to."""
    v = judge(source, now_ms=NOW_MS)
    return v.reasons.tolist(), v.first_rows(np.arange(1, v.rows_read + 1)).tolist()


def local_verdicts(tmp_path: Path) -> tuple[list[int], list[int]]:
    """The verdicts of PARTS as local Parquet files: what every store must give too."""
    folder = tmp_path / "local"
    folder.mkdir()
    for k, rows in enumerate(PARTS):
        (folder / f"part-{k:04d}.parquet").write_bytes(parquet_bytes(rows))
    return verdicts(open_dataset([folder]))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- S3 ----------------------------------------------------------------------------------------


def put_parts(bucket: Bucket, prefix: str = "export/") -> None:
    """PARTS as Parquet objects under ``prefix``, with the markers writers leave."""
    for k, rows in enumerate(PARTS):
        bucket.put(f"{prefix}part-{k:04d}.parquet", parquet_bytes(rows))
    bucket.put(f"{prefix}_SUCCESS", b"")
    bucket.put(f"{prefix}.part-0000.parquet.crc", b"crc")


class TestS3:
    def test_prefix_pattern_and_objects_judge_like_local_files(
        self, bucket: Bucket, tmp_path: Path
    ) -> None:
        """A prefix, a pattern and the objects one by one give the local folder's verdicts."""
        put_parts(bucket)
        expected = local_verdicts(tmp_path)
        keys = [f"export/part-{k:04d}.parquet" for k in range(4)]
        for inputs in (
            [bucket.url("export/")],
            [bucket.url("export")],
            [bucket.url("export/part-*.parquet")],
            [bucket.url(k) for k in reversed(keys)],
        ):
            ds = open_dataset(inputs)
            assert [f.name for f in ds.files] == [bucket.url(k) for k in keys]
            assert verdicts(ds) == expected

    def test_rows_know_their_object(self, bucket: Bucket) -> None:
        """Each chunk names its object and the row within it, as for local files."""
        put_parts(bucket)
        ds = open_dataset([bucket.url("export/")], chunk_rows=1)
        got = [(c.first_row, c.file_index, c.file_row) for c in ds()]
        assert got == [(1, 0, 1), (2, 0, 2), (3, 1, 1), (4, 1, 2), (5, 3, 1), (6, 3, 2)]
        assert [f.rows for f in ds.files] == [2, 2, 0, 2]

    def test_text_formats_stream_from_the_store(self, bucket: Bucket) -> None:
        """CSV, gzipped CSV and JSON Lines objects are read like local files."""
        rows = [(U1, "alice"), (U2, " 00042 ")]
        bucket.put("t/a.csv", csv_bytes(rows))
        bucket.put("g/a.csv.gz", gzip.compress(csv_bytes(rows)))
        bucket.put("j/a.jsonl", b'{"anon_id": "%s", "identified_id": "alice"}\n' % U1.encode())
        for key in ("t/", "g/"):
            ds = open_dataset([bucket.url(key)])
            assert [(c.anon.to_pylist(), c.identified.to_pylist()) for c in ds()] == [
                ([U1, U2], ["alice", "00042"])
            ]
        ds = open_dataset([bucket.url("j/a.jsonl")])
        assert [c.identified.to_pylist() for c in ds()] == [["alice"]]

    def test_fingerprint_holds_size_and_etag_and_sees_a_replaced_part(self, bucket: Bucket) -> None:
        """Per object: name, size, ETag; uploading a changed part changes the fingerprint."""
        put_parts(bucket)
        before = open_dataset([bucket.url("export/")]).fingerprint()
        assert [f["name"] for f in before["files"]] == [f"part-{k:04d}.parquet" for k in range(4)]
        assert all(f["etag"] and f["size"] > 0 for f in before["files"])
        assert open_dataset([bucket.url("export/")]).fingerprint() == before
        bucket.put("export/part-0001.parquet", parquet_bytes([(U1, "alicf"), (U3, "carol")]))
        after = open_dataset([bucket.url("export/")]).fingerprint()
        assert after["files"][1]["etag"] != before["files"][1]["etag"]
        assert after["files"][0] == before["files"][0]

    def test_missing_prefix_and_bucket_are_refused_in_one_line(self, bucket: Bucket) -> None:
        """Nothing at a prefix, or no such bucket: an InputError naming the URL."""
        with pytest.raises(InputError, match=r"nothing found at s3://.*/nope/"):
            open_dataset([bucket.url("nope/")])
        with pytest.raises(InputError, match="nothing found at s3://no-such-bucket-here/") as err:
            open_dataset(["s3://no-such-bucket-here/export/"])
        assert "s3://no-such-bucket-here/export/" in str(err.value)
        assert "\n" not in str(err.value)

    def test_pattern_matching_nothing_is_refused(self, bucket: Bucket) -> None:
        """A pattern that matches no object names the pattern."""
        put_parts(bucket)
        with pytest.raises(InputError, match=r"no objects match s3://.*\*\.csv"):
            open_dataset([bucket.url("export/*.csv")])

    def test_mixed_local_and_store_files_are_one_dataset(
        self, bucket: Bucket, tmp_path: Path
    ) -> None:
        """A local file and objects together form one dataset, sorted by their full names."""
        put_parts(bucket)
        local = tmp_path / "extra.parquet"
        local.write_bytes(parquet_bytes([(U2, "bob")]))
        ds = open_dataset([bucket.url("export/"), local], columns=Columns())
        assert ds.files[0].name == str(local)
        reasons, _ = verdicts(ds)
        assert len(reasons) == 7


# --- GCS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[tuple[str, Any]]:
    """gcp-storage-emulator on a free loopback port, with a bucket ``bkt``."""
    server_module = pytest.importorskip(
        "gcp_storage_emulator.server",
        reason="gcp-storage-emulator is not installed: pip install -e '.[test]'",
    )
    port = free_port()
    server = server_module.create_server("127.0.0.1", port, in_memory=True, default_bucket="bkt")
    server.start()
    yield f"127.0.0.1:{port}", server
    server.stop()


@pytest.fixture
def gcs(gcs_emulator: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A pyarrow filesystem on the emulator to put objects with; STORAGE_EMULATOR_HOST set."""
    import pyarrow.fs as pafs

    host, _ = gcs_emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{host}")
    return pafs.GcsFileSystem(anonymous=True, endpoint_override=host, scheme="http")


class TestGcs:
    def test_prefix_and_pattern_stream_csv_parts(self, gcs: Any) -> None:
        """gs:// prefixes and patterns list the parts, skip markers and stream their rows."""
        for k, rows in enumerate(PARTS):
            with gcs.open_output_stream(f"bkt/csv/part-{k:04d}.csv") as f:
                f.write(csv_bytes(rows))
        with gcs.open_output_stream("bkt/csv/_SUCCESS") as f:
            f.write(b"")
        for url in ("gs://bkt/csv/", "gs://bkt/csv/part-*.csv", "gcs://bkt/csv"):
            ds = open_dataset([url])
            assert [f.name for f in ds.files] == [
                f"gs://bkt/csv/part-{k:04d}.csv" for k in range(4)
            ]
            assert [len(c) for c in ds()] == [2, 2, 2]

    def test_fingerprint_holds_the_generation(self, gcs: Any) -> None:
        """Each object's fingerprint has its generation, which a re-upload changes."""
        with gcs.open_output_stream("bkt/fp/part-0.csv") as f:
            f.write(csv_bytes([(U1, "alice")]))
        before = open_dataset(["gs://bkt/fp/"]).fingerprint()["files"][0]
        assert before["generation"]
        with gcs.open_output_stream("bkt/fp/part-0.csv") as f:
            f.write(csv_bytes([(U1, "alicf")]))
        after = open_dataset(["gs://bkt/fp/"]).fingerprint()["files"][0]
        assert after["generation"] != before["generation"]


def test_urls_split_into_scheme_bucket_and_key() -> None:
    """s3://, gs:// and gcs:// URLs split; other schemes and bucketless URLs are refused."""
    assert split_url("s3://b/export/part-*.parquet") == ("s3", "b", "export/part-*.parquet")
    assert split_url("gcs://b/x") == ("gs", "b", "x")
    assert split_url("gs://b") == ("gs", "b", "")
    with pytest.raises(InputError, match="only s3:// and gs://"):
        split_url("https://example.com/x.csv")
    with pytest.raises(InputError, match="names no bucket"):
        split_url("s3:///x.csv")
