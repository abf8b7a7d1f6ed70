"""`ray start --head` on loopback + `ray job submit` of the training job and of the nightly tag job (token auth on)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cli_asserts import assert_error_names

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A real `ray start --head` cluster bound to 127.0.0.1, stopped (only it) at the end."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # The node's agents get free ports too: their defaults (e.g. the dashboard agent's 52365) are taken when
    # another Ray (the suite's `ray_local`) runs on this machine, and then no job agent ever registers.
    agents = [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--num-cpus=2",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        *agents,
    ]
    log = open(Path(temp) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ready = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address],
            env=_job_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ready.returncode == 0:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"ray start failed: {(Path(temp) / 'ray-start.log').read_text()[-3000:]}")
        time.sleep(2)
    else:
        raise RuntimeError(f"Ray dashboard at {address} not ready: {ready.stderr[-2000:]}")
    yield address
    # the whole session (head, raylet, GCS, dashboard, workers) is this cluster's alone: a short grace, then
    # SIGKILL (a graceful `ray start --block` exit took about 30 s of the suite)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


def _job_env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    return env


def _submit(address: str, entrypoint: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit` waits for the job and exits non-zero unless it SUCCEEDED."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--"] + entrypoint
    deadline = time.time() + 90
    while True:
        r = subprocess.run(cmd, cwd=ROOT, env=_job_env(), capture_output=True, text=True, timeout=timeout)
        # The dashboard answers `ray job list` before the node's job agent has registered; Ray says to retry.
        if "No available agent to submit job" not in r.stderr + r.stdout or time.time() > deadline:
            return r
        time.sleep(3)


@pytest.mark.slow
def test_submit_training_then_nightly_tagging(ray_head, train_data, tmp_path):
    model = tmp_path / "model"
    train = _submit(
        ray_head,
        [
            "python",
            "-m",
            "jobs.train",
            "--data",
            train_data["root"],
            "--output",
            str(model),
            "--storage",
            str(tmp_path / "ray_results"),
            "--model",
            "efficientnet_lite0",
            "--freeze-backbone",
            "--workers",
            "2",
            "--epochs",
            "2",
            "--feature-views",
            "1",
            "--no-report",
        ],
    )
    assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
    assert "succeeded" in (train.stdout + train.stderr).lower()
    from landmark_core.artifact import load

    art = load(str(model))
    assert len(art.catalog) == 4 and art.metrics["epochs"] == 2

    tags = tmp_path / "tags"
    tag = _submit(
        ray_head,
        [
            "python",
            "-m",
            "jobs.tag",
            "--input",
            str(Path(train_data["root"], "test")),
            "--output",
            str(tags),
            "--model",
            str(model),
        ],
    )
    assert tag.returncode == 0, (tag.stdout + tag.stderr)[-4000:]
    from landmark_core import tagstore

    table = tagstore.read(str(tags))
    assert table.num_rows == 24 and set(table.column("status").to_pylist()) <= {"tagged", "no_landmark"}


@pytest.mark.slow
def test_submit_fails_for_a_bad_argument(ray_head):
    bad = _submit(ray_head, ["python", "-m", "jobs.train", "--data", "/nonexistent", "--output", "/tmp/x"], timeout=180)
    assert bad.returncode != 0
    assert_error_names(bad.stdout + bad.stderr, "--data")


@pytest.mark.slow
def test_the_cluster_refuses_a_client_without_its_token(ray_head):
    """Token auth is on: the job API answers a request without the token 401 and with a wrong one 403, and
    `ray job submit` with a wrong token fails before any job exists."""
    import requests

    assert requests.get(f"{ray_head}/api/jobs/", timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert requests.get(f"{ray_head}/api/jobs/", headers=wrong, timeout=30).status_code == 403
    env = {**_job_env(), "RAY_AUTH_TOKEN": "0" * 64}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--", "python", "-c", "print('ran')"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ran" not in r.stdout, (r.stdout + r.stderr)[-2000:]
    listed = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", ray_head], env=_job_env(), capture_output=True, text=True
    )
    assert listed.returncode == 0 and "print('ran')" not in listed.stdout
