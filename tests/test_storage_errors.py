"""What the S3 read path retries, what it redacts, and where credentials never go: the rules behind RELIABILITY's
outage and secret rows, each checked directly (the end-to-end tests cannot force every kind of error)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, IncompleteReadError, ReadTimeoutError

from landmark_core import storage, tagging, tagstore

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Get")


@pytest.mark.parametrize(
    "error, transient",
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("ServiceUnavailable", 503), True),
        (_client_error("Whatever", 502), True),  # any 5xx
        (_client_error("RequestTimeout", 400), True),
        (IncompleteReadError(actual_bytes=10, expected_bytes=100), True),  # a body cut off mid-stream
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionResetError(), True),
        (_client_error("NoSuchKey", 404), False),  # a failed row at once, not 30 s of retries
        (_client_error("AccessDenied", 403), False),
        (_client_error("SignatureDoesNotMatch", 403), False),
        (FileNotFoundError(), False),
        (ValueError("bad"), False),
    ],
)
def test_what_the_read_path_retries(error, transient):
    assert storage.is_transient(error) is transient


def test_an_outage_after_a_quiet_gap_gets_the_whole_retry_budget_again(monkeypatch):
    monkeypatch.setattr(storage, "_outage", {})
    start = storage._outage_start
    assert start("e", 100.0, 30.0) == 100.0  # first failure
    assert start("e", 125.0, 30.0) == 100.0  # the same outage: the budget counts from its start
    assert start("e", 150.0, 30.0) == 100.0  # still failing (each object one try now)
    assert start("e", 1000.0, 30.0) == 1000.0  # long quiet, a new outage: retried again from now
    assert start("other", 1001.0, 30.0) == 1001.0  # per endpoint


def test_redact_removes_credentials_from_messages(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEXAMPLETOKEN")
    text = (
        f"failed with key {SECRET} for {KEY_ID} token FQoGZXIvYXdzEXAMPLETOKEN; "
        "url https://b.s3/k.jpg?X-Amz-Credential=AKIDOTHER/20261205/us-east-1/s3/aws4_request&X-Amz-Signature=abcdef0123"
        "&X-Amz-Security-Token=tok123 secret_access_key=zzz9"
    )
    out = storage.redact(text)
    for leaked in (SECRET, KEY_ID, "FQoGZXIvYXdzEXAMPLETOKEN", "AKIDOTHER", "abcdef0123", "tok123", "zzz9"):
        assert leaked not in out, (leaked, out)
    assert "failed with key ***" in out and "k.jpg" in out  # the rest of the message is kept


def test_credentials_in_an_endpoint_url_are_refused_and_never_printed(monkeypatch, capsys):
    """An endpoint written http://user:password@host would be printed in errors and recorded in each run's config:
    refused, before any work, with the password masked; redact masks such URLs wherever else they appear."""
    from jobs import query

    url = "http://admin:pw-TOPSECRET@127.0.0.1:9"
    assert storage.redact(f"GET {url}/bkt/tags failed") == "GET http://***@127.0.0.1:9/bkt/tags failed"
    with pytest.raises(storage.StorageError, match="--s3-endpoint holds credentials"):
        storage.S3Options(endpoint=url).check()
    with pytest.raises(SystemExit) as e:
        query.main(["--tags", "s3://bkt/tags", "--s3-endpoint", url, "--summary"])
    printed = capsys.readouterr()
    assert e.value.code == 2 and "--s3-endpoint holds credentials" in printed.err
    assert "TOPSECRET" not in printed.out + printed.err
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)  # the same endpoint from the environment: refused alike
    with pytest.raises(storage.StorageError, match="AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL holds credentials"):
        storage.S3Options().check()


def test_a_failed_rows_reason_carries_no_secret(monkeypatch):
    """The reason text is what reaches the tag table: an exception that quotes the secret is redacted there."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    reason = tagging._reason(RuntimeError(f"signing with {SECRET} failed"))
    assert SECRET not in reason and reason.startswith("RuntimeError: signing with ***")
    coded = tagging._reason(_client_error("AccessDenied", 403))
    assert coded.startswith("AccessDenied")


def test_credentials_never_enter_delta_options_worker_env_or_the_run_config(monkeypatch):
    """delta-rs and the workers read credentials from the standard environment; nothing the job records or hands
    to Ray (runtime_env, a commit's config) carries them."""
    from jobs import _ray
    from jobs.tag import TagConfig

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    opts = storage.S3Options(endpoint="http://127.0.0.1:8333")
    delta = tagstore.storage_options("s3://tags/landmarks", opts)
    cfg = TagConfig(input="s3://up/2026-12-05/", output="s3://tags/landmarks", model="m", s3_endpoint=opts.endpoint)
    for where, values in (
        ("delta-rs options", delta),
        ("worker env", _ray.WORKER_ENV),
        ("run config", {k: str(v) for k, v in cfg.safe_json().items()}),
    ):
        assert not any("SECRET" in k.upper() or "ACCESS_KEY" in k.upper() for k in values), where
        assert not any(SECRET in v or KEY_ID in v for v in values.values()), where
