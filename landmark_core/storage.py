"""Local paths and s3:// URIs behind one small interface (boto3 for objects, pyarrow for datasets).

Credentials come only from the standard AWS environment (env vars, shared config, instance profile); the one
thing a user passes is ``endpoint`` for S3-compatible stores. Nothing here ever logs or returns a secret.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class StorageError(ValueError):
    pass


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None  # e.g. http://127.0.0.1:8333 for SeaweedFS/MinIO; None = AWS
    region: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5

    def check(self) -> None:
        if self.endpoint:
            u = urlparse(self.endpoint)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise StorageError(f"--s3-endpoint must look like http(s)://host[:port], got {self.endpoint!r}")


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b'); a clear error for anything malformed."""
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not _BUCKET_RE.match(bucket or ""):
        raise StorageError(f"malformed s3 URI {uri!r}: bucket name {bucket!r} is not a valid S3 bucket name")
    return bucket, key


def check_uri(uri: str) -> None:
    """Fail fast on URIs we cannot handle (before any cluster work)."""
    if "://" in str(uri) and not is_s3(uri):
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    if is_s3(uri):
        split_s3(uri)


def check_locations(flags: dict[str, str | None], opts: "S3Options") -> None:
    """Every --flag URI and the endpoint checked at once; the error names the flag."""
    for flag, uri in flags.items():
        if uri:
            try:
                check_uri(uri)
            except StorageError as e:
                raise StorageError(f"{flag}: {e}") from None
    opts.check()


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return str(Path(base, *parts))


@functools.lru_cache(maxsize=8)
def s3_client(opts: S3Options):
    """A boto3 client per process and options (clients are thread-safe; creating one costs ~50 ms)."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        connect_timeout=opts.connect_timeout, read_timeout=opts.read_timeout,
        retries={"max_attempts": opts.max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if opts.endpoint else None,
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", endpoint_url=opts.endpoint, region_name=opts.region or _region(),
                                          config=cfg)


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def read_bytes(uri: str, opts: S3Options = S3Options()) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_client(opts).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()


def write_bytes(uri: str, data: bytes, opts: S3Options = S3Options()) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client(opts).put_object(Bucket=bucket, Key=key, Body=data)
    else:
        p = Path(uri)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)  # atomic on POSIX: readers never see half a file


def exists(uri: str, opts: S3Options = S3Options()) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client(opts).head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
    return Path(uri).exists()


def arrow_fs(uri: str, opts: S3Options = S3Options()):
    """(pyarrow FileSystem, path inside it) for ``uri``; credentials resolved by pyarrow from the environment."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    bucket, key = split_s3(uri)
    kw = dict(region=opts.region or _region(), connect_timeout=opts.connect_timeout,
              request_timeout=opts.read_timeout,
              retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=opts.max_attempts))
    if opts.endpoint:
        u = urlparse(opts.endpoint)
        kw.update(endpoint_override=u.netloc, scheme=u.scheme)
    return pafs.S3FileSystem(**kw), f"{bucket}/{key}".rstrip("/")


def redact(text: str) -> str:
    """Remove anything that looks like a credential from a message before it is logged or stored."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        val = os.environ.get(var)
        if val and len(val) >= 4:
            text = text.replace(val, "***")
    return re.sub(r"(?i)(secret[_-]?(access[_-]?)?key|session[_-]?token|signature)=([^&\s]+)", r"\1=***", text)
