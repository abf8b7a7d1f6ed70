"""Shared pytest fixtures.  Each block below has its own header; add new ones the same way."""

from __future__ import annotations

import secrets

import pytest

from tests.s3server import SeaweedS3


# ---------------------------------------------------------------------------
# S3: a real SeaweedFS server on 127.0.0.1 (tests/s3server.py)
#
#   s3         session-scoped, started SeaweedS3: .endpoint .access_key
#              .secret_key .region .client() .pyarrow_fs() .env() .restart()
#   s3_bucket  a fresh, uniquely named, empty bucket per test (deleted after)
#
# Credentials are never put in os.environ here.  Code under test that reads
# them from the environment gets them per test:
#     for k, v in s3.env().items(): monkeypatch.setenv(k, v)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3: SeaweedS3):
    if not s3.is_running():  # a fault test stopped/killed it and did not bring it back
        s3.start()
    name = "t-" + secrets.token_hex(8)
    client = s3.client()
    client.create_bucket(Bucket=name)
    yield name
    # SeaweedFS deletes non-empty buckets (-s3.allowDeleteBucketNotEmpty, default on),
    # which also frees the bucket's volume; best effort.
    if s3.is_running():
        try:
            client.delete_bucket(Bucket=name)
        except Exception:
            pass
