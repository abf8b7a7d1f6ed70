"""The SeaweedFS S3 test server itself: auth, boto3 + pyarrow round trips, loopback only, restarts."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import urllib.error
import urllib.request

import boto3
import botocore
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from landmark_core.devs3 import SeaweedS3


def _error(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_list(s3: SeaweedS3, s3_bucket: str) -> None:
    c = s3.client()
    body = b"landmark photo bytes"
    put = c.put_object(Bucket=s3_bucket, Key="2026-11-24/a/001.jpg", Body=body)
    # single-part PUT: ETag is the quoted MD5, as on AWS
    assert put["ETag"] == '"%s"' % hashlib.md5(body).hexdigest()
    for i in range(2, 6):
        c.put_object(Bucket=s3_bucket, Key="2026-11-24/a/%03d.jpg" % i, Body=b"x" * i)
    c.put_object(Bucket=s3_bucket, Key="2026-11-24/b/001.jpg", Body=b"y")

    got = c.get_object(Bucket=s3_bucket, Key="2026-11-24/a/001.jpg")
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)
    ranged = c.get_object(Bucket=s3_bucket, Key="2026-11-24/a/001.jpg", Range="bytes=9-13")
    assert ranged["Body"].read() == body[9:14]

    keys = [
        o["Key"]
        for page in c.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix="2026-11-24/", PaginationConfig={"PageSize": 2}
        )
        for o in page.get("Contents", [])
    ]
    assert keys == ["2026-11-24/a/%03d.jpg" % i for i in range(1, 6)] + ["2026-11-24/b/001.jpg"]

    top = c.list_objects_v2(Bucket=s3_bucket, Prefix="2026-11-24/", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["2026-11-24/a/", "2026-11-24/b/"]
    assert "Contents" not in top

    with pytest.raises(ClientError) as ei:
        c.get_object(Bucket=s3_bucket, Key="missing.jpg")
    assert _error(ei.value) == ("NoSuchKey", 404)


def test_put_if_none_match_refuses_an_existing_key(s3: SeaweedS3, s3_bucket: str) -> None:
    """What delta-rs's commits on S3 rest on (RELIABILITY "Concurrent writers on S3"): a PUT with If-None-Match: *
    of a key that exists answers 412, and the first writer's bytes stay."""
    from botocore.exceptions import ClientError

    c = s3.client()
    key = "tags/_delta_log/00000000000000000001.json"
    c.put_object(Bucket=s3_bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        c.put_object(Bucket=s3_bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert c.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"first"


def test_multipart_upload(s3: SeaweedS3, s3_bucket: str) -> None:
    c = s3.client()
    data = os.urandom(11 * 1024 * 1024)
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    c.upload_fileobj(io.BytesIO(data), s3_bucket, "big.bin", Config=cfg)
    head = c.head_object(Bucket=s3_bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    # multipart ETag is "<md5 of part md5s>-<parts>", not the MD5 of the object
    assert head["ETag"].strip('"').endswith("-3")
    assert c.get_object(Bucket=s3_bucket, Key="big.bin")["Body"].read() == data


def test_anonymous_requests_refused(s3: SeaweedS3, s3_bucket: str) -> None:
    s3.client().put_object(Bucket=s3_bucket, Key="secret.txt", Body=b"s")
    anon = boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        config=Config(signature_version=botocore.UNSIGNED, s3={"addressing_style": "path"}),
    )
    calls = [
        lambda: anon.list_buckets(),
        lambda: anon.list_objects_v2(Bucket=s3_bucket),
        lambda: anon.get_object(Bucket=s3_bucket, Key="secret.txt"),
        lambda: anon.put_object(Bucket=s3_bucket, Key="evil.txt", Body=b"e"),
        lambda: anon.create_bucket(Bucket="anon-bucket"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as ei:
            call()
        assert _error(ei.value) == ("AccessDenied", 403)
    # plain HTTP without any signature
    with pytest.raises(urllib.error.HTTPError) as hi:
        urllib.request.urlopen("%s/%s/secret.txt" % (s3.endpoint, s3_bucket), timeout=10)
    assert hi.value.code == 403
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["secret.txt"]
    assert "anon-bucket" not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]


@pytest.mark.parametrize(
    "access_key, secret_key, code",
    [
        (None, "wrong-" + "0" * 34, "SignatureDoesNotMatch"),
        ("AKUNKNOWN0000000", "whatever", "InvalidAccessKeyId"),
    ],
)
def test_bad_credentials_refused(s3: SeaweedS3, s3_bucket: str, access_key, secret_key, code) -> None:
    bad = boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id=access_key or s3.access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    for call in (
        lambda: bad.list_buckets(),
        lambda: bad.put_object(Bucket=s3_bucket, Key="x", Body=b"x"),
        lambda: bad.get_object(Bucket=s3_bucket, Key="x"),
    ):
        with pytest.raises(ClientError) as ei:
            call()
        assert _error(ei.value) == (code, 403)
    assert "Contents" not in s3.client().list_objects_v2(Bucket=s3_bucket)


def test_pyarrow_parquet_round_trip(s3: SeaweedS3, s3_bucket: str) -> None:
    table = pa.table(
        {
            "key": ["uploads/a.jpg", "uploads/b.jpg", "uploads/c.jpg"],
            "landmark": ["Eiffel_Tower", "Golden_Gate_Bridge", "Taj_Mahal"],
            "score": [0.91, 0.55, 0.78],
        }
    )
    # spelled out the way job code builds it (path-style is pyarrow's default
    # with endpoint_override; the bucket already exists)
    fs = pafs.S3FileSystem(
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        endpoint_override=s3.endpoint,
        scheme="http",
        region=s3.region,
    )
    path = "%s/tags/date=2026-11-24/part-0.parquet" % s3_bucket
    pq.write_table(table, path, filesystem=fs)

    info = fs.get_file_info(path)
    assert info.type == pafs.FileType.File and info.size > 0
    assert pq.read_table(path, filesystem=fs).equals(table)
    # the same bytes through boto3 (pyarrow uploads as a 1-part multipart: ETag "...-1")
    head = s3.client().head_object(Bucket=s3_bucket, Key="tags/date=2026-11-24/part-0.parquet")
    assert head["ContentLength"] == info.size
    # directory listing and a dataset read through the helper
    listed = fs.get_file_info(pafs.FileSelector("%s/tags" % s3_bucket, recursive=True))
    assert [i.path for i in listed if i.type == pafs.FileType.File] == [path]
    ds = pq.ParquetDataset("%s/tags" % s3_bucket, filesystem=s3.pyarrow_fs())
    assert sorted(ds.read().column("landmark").to_pylist()) == sorted(table.column("landmark").to_pylist())

    wrong = s3.pyarrow_fs(secret_key="not-the-secret")
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        wrong.get_file_info(path)


def test_env_for_code_that_reads_the_environment(
    s3: SeaweedS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the session fixture must not have leaked credentials into the process
    assert s3.access_key not in os.environ.values()
    assert s3.secret_key not in os.environ.values()
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    # boto3 with no explicit settings at all (AWS_ENDPOINT_URL_S3 is honoured)
    plain = boto3.session.Session().client("s3")
    plain.put_object(Bucket=s3_bucket, Key="from-env.txt", Body=b"e")
    # pyarrow resolves s3:// URIs with the same variables
    # (a bare pafs.S3FileSystem() does NOT read AWS_ENDPOINT_URL_S3: pass endpoint_override)
    uri = "s3://%s/env/t.parquet" % s3_bucket
    pq.write_table(pa.table({"a": [1, 2]}), uri)
    assert pq.read_table(uri).column("a").to_pylist() == [1, 2]
    assert s3.client().get_object(Bucket=s3_bucket, Key="from-env.txt")["Body"].read() == b"e"


def _listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by ``pid`` (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, state, inode = f[1], f[3], f[9]
            if state != "0A" or inode not in inodes:  # 0A = TCP_LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def _non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


@pytest.mark.skipif(not os.path.isdir("/proc/net"), reason="needs Linux /proc")
def test_listens_only_on_loopback(s3: SeaweedS3) -> None:
    assert s3.pid is not None
    listening = _listening_sockets(s3.pid)
    ports = {port for _ip, port in listening}
    assert s3.port in ports
    assert {ip for ip, _port in listening} == {"127.0.0.1"}, listening
    # nothing beyond the ports we chose (no default 8333/9333/8888/23646, no WebDAV)
    assert ports <= set(s3.ports.values()), (sorted(ports), s3.ports)

    other = _non_loopback_ipv4()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, s3.port), timeout=2).close()


def test_restart_keeps_objects_keys_and_port(s3: SeaweedS3, s3_bucket: str) -> None:
    c = s3.client()
    c.put_object(Bucket=s3_bucket, Key="keep/me.txt", Body=b"persist")
    endpoint, key, pid = s3.endpoint, s3.access_key, s3.pid
    s3.restart()
    assert s3.pid != pid and (s3.endpoint, s3.access_key) == (endpoint, key)
    # the client made before the restart still works
    assert c.get_object(Bucket=s3_bucket, Key="keep/me.txt")["Body"].read() == b"persist"
    c.put_object(Bucket=s3_bucket, Key="keep/after.txt", Body=b"new")
    # a crash (SIGKILL, no clean shutdown) keeps acknowledged writes as well
    s3.kill()
    assert not s3.is_running()
    s3.start()
    assert c.get_object(Bucket=s3_bucket, Key="keep/after.txt")["Body"].read() == b"new"
    assert s3_bucket in [b["Name"] for b in c.list_buckets()["Buckets"]]


def test_independent_servers_start_fast_and_ignore_ambient_aws_env(
    s3: SeaweedS3, tmp_path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    # Credentials in the caller's environment must not become a second identity
    # (weed mini turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an admin user).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AMBIENTKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret-0000000000")
    with SeaweedS3(tmp_path / "a") as a, SeaweedS3(tmp_path / "b") as b:
        record_property("seaweedfs_startup_seconds", [round(a.startup_seconds, 2), round(b.startup_seconds, 2)])
        print("SeaweedFS start-up: %.2f s, %.2f s" % (a.startup_seconds, b.startup_seconds))
        assert a.startup_seconds < 30 and b.startup_seconds < 30
        assert not set(a.ports.values()) & set(b.ports.values())
        assert not set(a.ports.values()) & set(s3.ports.values())
        assert a.access_key != b.access_key
        a.make_bucket("only-in-a")
        assert [x["Name"] for x in b.client().list_buckets()["Buckets"]] == []
        ambient = boto3.session.Session().client(
            "s3",
            endpoint_url=a.endpoint,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )  # picks up the ambient env keys
        with pytest.raises(ClientError) as ei:
            ambient.list_buckets()
        assert _error(ei.value) == ("InvalidAccessKeyId", 403)
    assert not a.is_running() and not b.is_running()
