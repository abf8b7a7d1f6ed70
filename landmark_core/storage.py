"""Local paths and s3:// URIs behind one small interface (boto3 for objects, pyarrow for datasets).

Credentials come only from the standard AWS environment (env vars, shared config, instance profile); the one
thing a user passes is ``endpoint`` for S3-compatible stores. Nothing here ever logs or returns a secret.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import random
import re
import time
from dataclasses import dataclass, field, replace
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
    # An object read that fails on a transient error (connection refused/reset, 5xx, cut-off body) is retried
    # with backoff until the store has been unreachable this long: a restart of the store costs time, not rows.
    read_retry_seconds: float = 30.0
    endpoint_from: str = field(default="--s3-endpoint", repr=False, compare=False)  # for error messages

    def __post_init__(self) -> None:
        # no --s3-endpoint: the endpoint boto3 itself would use (AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL), so that
        # pyarrow, delta-rs and our checks talk to the same store as boto3 does, not to AWS
        if self.endpoint is None and env_endpoint():
            object.__setattr__(self, "endpoint", env_endpoint())
            object.__setattr__(self, "endpoint_from", "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL")

    def check(self) -> None:
        if self.endpoint:
            u = urlparse(self.endpoint)
            if u.username or u.password:  # printed in errors and recorded in each run's config: no place for keys
                raise StorageError(
                    f"{self.endpoint_from} holds credentials ({redact(self.endpoint)}): give them in "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance profile), never in the endpoint"
                )
            if u.scheme not in ("http", "https") or not u.hostname:
                raise StorageError(
                    f"{self.endpoint_from} must look like http(s)://host[:port], got {redact(self.endpoint)!r}"
                )


def env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def as_options(opts: "S3Options | dict | None") -> S3Options:
    """S3Options from S3Options, None (the defaults) or a dict of its fields (``{"endpoint": URL}``)."""
    if isinstance(opts, S3Options):
        return opts
    return S3Options(**(opts or {}))


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b'); a clear error for anything malformed."""
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
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


def absolute(uri: str) -> str:
    """A local folder as its real absolute path (links followed), an s3:// URI without a trailing slash."""
    return uri.rstrip("/") if is_s3(uri) else os.path.realpath(uri)


def inside(uri: str, folder: str) -> bool:
    """``uri`` is ``folder`` or below it (both as ``absolute`` gives them)."""
    return uri == folder or uri.startswith(folder.rstrip("/") + "/")


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return str(Path(base, *parts))


def s3_client(opts: S3Options):
    """A boto3 client per process, options and credentials (clients are thread-safe; creating one costs ~50 ms).

    The environment's credentials are part of the cache key (as a hash, never the secret itself): a client
    made before the keys changed would otherwise keep signing with the old ones.
    """
    return _cached_client(opts, _credentials_fingerprint())


def _credentials_fingerprint() -> str:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return hashlib.sha256("\x00".join(os.environ.get(k, "") for k in keys).encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _cached_client(opts: S3Options, _fingerprint: str):
    import boto3
    from botocore.config import Config

    cfg = Config(
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
        retries={"max_attempts": opts.max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if opts.endpoint else None,
        max_pool_connections=32,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=opts.endpoint, region_name=opts.region or _region(), config=cfg
    )


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def read_bytes(uri: str, opts: S3Options = S3Options()) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return _read_s3_retrying(bucket, key, opts)
    return Path(uri).read_bytes()


_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
_outage: dict[str | None, tuple[float, float]] = {}  # per endpoint, this process: (first, last) transient failure


def _outage_start(endpoint: str | None, now: float, retry_seconds: float) -> float:
    """When the current outage of ``endpoint`` began, given a transient failure at ``now``. A failure after a quiet
    gap longer than the retry budget starts a new outage: else a process whose last read, long ago, failed would
    give the next outage one attempt per object and no retries."""
    first, last = _outage.get(endpoint, (now, now))
    if now - last > retry_seconds:
        first = now
    _outage[endpoint] = (first, now)
    return first


def _read_s3_retrying(bucket: str, key: str, opts: S3Options) -> bytes:
    """GET + body read, retried as a whole on transient errors, with jittered exponential backoff.

    botocore's own retries do not cover a body cut off mid-stream, and give up after a few seconds. Bounded by
    ``read_retry_seconds`` counted from when this process first saw the store fail: once the store has been
    down that long, each further object gets one attempt, so a dead store fails rows fast instead of stalling.
    """
    client = s3_client(replace(opts, max_attempts=1))  # this loop is the one retry layer (no nested backoff)
    for attempt in itertools.count():
        try:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            _outage.pop(opts.endpoint, None)
            return data
        except Exception as e:
            if not is_transient(e):
                raise
            now = time.monotonic()
            since = _outage_start(opts.endpoint, now, opts.read_retry_seconds)
            pause = min(4.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
            if now + pause - since > opts.read_retry_seconds:
                raise
            time.sleep(pause)


def is_transient(e: BaseException) -> bool:
    """Worth retrying: the connection failed or was cut, the read timed out, or the store answered 5xx/slow down."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or err.get("Code") in _TRANSIENT_CODES
    return isinstance(e, (ConnectionError, HTTPClientError, IncompleteReadError, ConnectionResetError))


def write_bytes(uri: str, data: bytes, opts: S3Options = S3Options()) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client(opts).put_object(Bucket=bucket, Key=key, Body=data)
    else:
        p = Path(uri)
        p.parent.mkdir(parents=True, exist_ok=True)
        # a temp name of this writer's own: processes writing the same file at once never share one
        tmp = p.with_name(f".{p.name}.{os.getpid()}-{random.getrandbits(32):08x}.tmp")
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


def folder_markers(uri: str, opts: S3Options = S3Options()) -> set[str]:
    """The empty "folder/" objects below an s3:// prefix (pyarrow's create_dir leaves them; they hold nothing), as
    paths relative to it without the slash ("" for the prefix's own). A local path has none."""
    if not is_s3(uri):
        return set()
    bucket, prefix = split_s3(uri.rstrip("/") + "/")
    pages = s3_client(opts).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {
        o["Key"][len(prefix) :].rstrip("/")
        for page in pages
        for o in page.get("Contents", [])
        if o["Key"].endswith("/") and int(o["Size"]) == 0
    }


_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403"}


def check_reachable(flag: str, uri: str | None, opts: S3Options) -> None:
    """One quick request to the bucket behind an s3:// ``flag`` (list at most one key, at most 2 tries, short
    timeouts): a wrong endpoint, refused credentials or a missing bucket fail in seconds, in one line naming the
    flag and the endpoint, before any cluster work. Local paths are not checked here."""
    if not uri or not is_s3(uri):
        return
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, key = split_s3(uri)
    where = f"S3 endpoint {opts.endpoint}" if opts.endpoint else "AWS S3 (no --s3-endpoint given)"
    client = s3_client(
        replace(
            opts,
            connect_timeout=min(opts.connect_timeout, 5.0),
            read_timeout=min(opts.read_timeout, 10.0),
            max_attempts=2,
        )
    )
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except NoCredentialsError:
        raise StorageError(
            f"{flag} {uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role)"
        ) from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", "?"))
        if code in ("NoSuchBucket", "404"):
            raise StorageError(f"{flag} {uri}: bucket {bucket!r} does not exist at {where}") from None
        if code in _AUTH_CODES:
            raise StorageError(
                f"{flag} {uri}: {where} refused the credentials ({code}); check "
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role"
            ) from None
        raise StorageError(f"{flag} {uri}: {where} answered {code}: {redact(str(e))[:200]}") from None
    except (BotoCoreError, OSError) as e:
        raise StorageError(
            f"{flag} {uri}: cannot reach the {where} ({type(e).__name__}); check --s3-endpoint and that the store is up"
        ) from None


def unreachable_reason(flag: str, uri: str, opts: S3Options = S3Options()) -> str | None:
    """After a read of s3:// ``uri`` failed: check_reachable's one line (refused credentials, a missing bucket,
    no endpoint) when that is why, else None (the read's own error then says more than a listing can)."""
    if not is_s3(uri):
        return None
    try:
        check_reachable(flag, uri, opts)
    except StorageError as e:
        return str(e)
    return None


def arrow_fs(uri: str, opts: S3Options = S3Options()):
    """(pyarrow FileSystem, path inside it) for ``uri``; credentials resolved by pyarrow from the environment."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    bucket, key = split_s3(uri)
    kw = dict(
        region=opts.region or _region(),
        connect_timeout=opts.connect_timeout,
        request_timeout=opts.read_timeout,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=opts.max_attempts),
    )
    if opts.endpoint:
        u = urlparse(opts.endpoint)
        kw.update(endpoint_override=u.netloc, scheme=u.scheme)
    return pafs.S3FileSystem(**kw), f"{bucket}/{key}".rstrip("/")


# key=value pairs that carry a credential: config-style names and a presigned URL's X-Amz-* query parameters
_SECRET_PARAM = re.compile(
    r"(?i)(secret[_-]?(access[_-]?)?key|(?:session|security)[_-]?token|signature|credential)=([^&\s]+)"
)
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")  # scheme://user:password@host


def redact(text: str) -> str:
    """Remove anything that looks like a credential from a message before it is logged or stored."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        val = os.environ.get(var)
        if val and len(val) >= 4:
            text = text.replace(val, "***")
    return _URL_CREDENTIALS.sub(r"\1***@", _SECRET_PARAM.sub(r"\1=***", text))
