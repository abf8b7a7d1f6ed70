"""`landmark demo` (the README's first command) end to end, as a user runs it: its own Ray, its own S3 server."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.cli_asserts import assert_error_names


@pytest.mark.slow
def test_demo_runs_the_whole_story(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--out", str(out), "--classes", "3", "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for n in range(1, 7):
        assert f"=== [{n}/6]" in r.stdout
    assert "started SeaweedFS S3" in r.stdout and "uploaded to s3://uploads/" in r.stdout
    # the broken uploads failed to decode and are unchanged: the second run reads none of them again
    assert re.search(
        r"second run tagged 0 photos \(\d+ already tagged, [1-9]\d* of them broken files not read again; 0 failed\)",
        r.stdout,
    ), r.stdout[-3000:]
    assert "held-out photos given their own landmark:" in r.stdout
    assert (out / "report" / "report.html").is_file() and (out / "model" / "artifact.json").is_file()
    assert (out / "model" / "report").is_dir()


def test_demo_refuses_a_model_dir_without_an_artifact(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--model", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert_error_names(r.stderr, "--model")
