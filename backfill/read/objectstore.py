"""Object stores (``s3://``, ``gs://``) through pyarrow's own filesystems.

Credentials come from each provider's standard chain, as pyarrow's filesystems find them:
AWS environment variables, profile files and instance roles for S3; Google application
default credentials for GCS. ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` points S3 at an
S3-compatible store (MinIO, Ceph, a test server): pyarrow 26 honours it in ``from_uri`` but not
when an ``S3FileSystem`` is built directly, so it is read here, once, for both. Likewise
``STORAGE_EMULATOR_HOST`` (Google's convention) points GCS at an emulator, anonymously.

Nothing is downloaded whole: files are streamed through a read-ahead buffer, Parquet read by
ranges. A file's version is what the store reports without reading it: the ETag on S3, the
generation (and ETag) on GCS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from backfill.errors import InputError

SCHEMES = ("s3", "gs", "gcs")
#: Read-ahead for streams from a store: one request per this many bytes.
STREAM_BUFFER_BYTES = 8 << 20
_VERSION_KEYS = ("etag", "generation", "version-id", "x-amz-version-id")


def is_url(text: str) -> bool:
    """Whether an input names an object-store URL (or any ``scheme://``)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def split_url(url: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of ``s3://bucket/key``; refuses other schemes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InputError(
            f"cannot read {url}: only s3:// and gs:// URLs are supported (or download the "
            "files and pass their local paths)"
        )
    if not parts.netloc:
        raise InputError(f"{url} names no bucket: write it as {scheme}://BUCKET/PREFIX")
    return ("gs" if scheme == "gcs" else scheme), parts.netloc, parts.path.lstrip("/")


def filesystem(scheme: str, bucket: str, env: Mapping[str, str] | None = None) -> Any:
    """The pyarrow filesystem for a bucket, with the credentials the environment has now.

    Built afresh for each call (the caller keeps one per bucket while resolving inputs), so a
    long-lived process that changes its credentials gets the new ones on the next dataset.
    """
    env = os.environ if env is None else env
    if scheme == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
        return _s3(bucket, endpoint, region)
    return _gcs(env.get("STORAGE_EMULATOR_HOST") or "")


def _s3(bucket: str, endpoint: str, region: str) -> Any:
    options: dict[str, Any] = {"allow_bucket_creation": False, "allow_bucket_deletion": False}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(
            endpoint_override=parts.netloc + parts.path.rstrip("/"),
            scheme=parts.scheme or "https",
            region=region or "us-east-1",
        )
    else:
        if not region:
            try:
                region = pafs.resolve_s3_region(bucket)
            except (OSError, pa.ArrowException):
                region = ""  # let the SDK's own chain decide; a wrong one fails on first use
        if region:
            options["region"] = region
    try:
        return pafs.S3FileSystem(**options)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot set up S3 access: {_first_line(e)}") from None


def _gcs(emulator: str) -> Any:
    try:
        if emulator:
            parts = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
            return pafs.GcsFileSystem(
                anonymous=True, endpoint_override=parts.netloc, scheme=parts.scheme or "http"
            )
        return pafs.GcsFileSystem()
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot set up Google Cloud Storage access: {_first_line(e)}") from None


def version_of(fs: Any, path: str) -> dict[str, str]:
    """The store's version of an object (ETag, generation) from its metadata: no download.

    S3: a HEAD request. GCS: the headers of a download closed at once (pyarrow's metadata
    request for a random-access GCS file hangs on the emulator the tests use, while a
    stream's headers carry the same generation and ETag).
    """
    gcs = type(fs).__name__ == "GcsFileSystem"
    with fs.open_input_stream(path) if gcs else fs.open_input_file(path) as f:
        meta = f.metadata()
    found: dict[str, str] = {}
    for key, value in (meta or {}).items():
        name = (key.decode() if isinstance(key, bytes) else str(key)).lower()
        if name in _VERSION_KEYS:
            text = value.decode() if isinstance(value, bytes) else str(value)
            found[name] = text.strip('"')
    if not found:
        # A store that reports no version: the modification time is the next best thing.
        info = fs.get_file_info(path)
        found["mtime_ns"] = str(info.mtime_ns)
    return found


def store_error(url: str, e: BaseException) -> InputError:
    """A one-line InputError for a failed store request, naming the likely fix."""
    text = _first_line(e)
    lower = text.lower()
    if "access_denied" in lower or "accessdenied" in lower or "403" in lower:
        fix = "the credentials in use may not read it (check AWS_PROFILE / the bucket policy)"
    elif "resolve" in lower or "connect" in lower or "network" in lower:
        fix = (
            "the store is unreachable (check the network, or AWS_ENDPOINT_URL for "
            "S3-compatible stores)"
        )
    elif "credential" in lower:
        fix = (
            "no credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY; for GCS run gcloud auth application-default login)"
        )
    elif "nosuchbucket" in lower or "no_such_bucket" in lower:
        fix = "the bucket does not exist (check the URL)"
    else:
        fix = "check the URL and the credentials"
    return InputError(f"cannot read {url}: {text} ({fix})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
