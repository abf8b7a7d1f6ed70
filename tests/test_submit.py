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


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked (one at a time, the kernel may
    hand out a port just released again: the dashboard and its agent once got the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def ray_head():
    """A real `ray start --head` cluster bound to 127.0.0.1, stopped (only it) at the end."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash, agent_http, agent_grpc, runtime_env, metrics = _free_ports(6)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # The node's agents get free ports too: their defaults (e.g. the dashboard agent's 52365) are taken when
    # another Ray (the suite's `ray_local`) runs on this machine, and then no job agent ever registers.
    agents = [
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
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
    """`ray job submit` of a frozen-backbone training (the run writes a complete artifact), then of the tag job
    with that model."""
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
            "3",
            "--feature-views",
            "2",
        ],
    )
    printed = train.stdout + train.stderr
    assert train.returncode == 0, printed[-4000:]
    assert "succeeded" in printed.lower()
    _assert_complete_frozen_artifact(model, train_data, printed, epochs=3)

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


def _assert_complete_frozen_artifact(out: Path, train_data: dict, printed: str, *, epochs: int) -> None:
    """metrics.json, the report's plots, the artifact's catalog, abstention, gallery and held-out tensors; one
    console line per epoch; and the artifact tags the test photos as well as training measured."""
    import json

    import numpy as np

    from landmark_core.artifact import load as load_artifact
    from landmark_core.predict import predict_paths
    from landmark_core.predictor import Predictor

    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test_top1", "test_top5", "test_ece", "val_top1", "epochs", "train_seconds", "images_per_second"):
        assert key in saved, key
    for key in ("temperature", "abstain_threshold", "model_id"):
        assert key in saved, key
    assert saved["epochs"] == epochs
    assert saved["test_top1"] >= 0.75, saved  # ImageNet features separate the synthetic structures
    assert 0 <= saved["test_ece"] <= 1
    for png in ("curves.png", "confusion.png", "reliability.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    art = load_artifact(str(out))
    assert art.model_id == saved["model_id"] and art.catalog.folders == train_data["classes"]
    assert art.catalog[0].lat is not None  # coords.json beside the data was picked up
    assert "val_scores" in art.extra_tensors and art.abstain["method"] in ("msp", "energy", "proto", "knn")
    # the gallery (training photos) and held-out tensors for `landmark catalog`, the recognizer measured on val
    assert art.extra_tensors["gallery"].shape[0] == len(art.extra_tensors["gallery_labels"]) > 0
    assert {"val_logits", "val_emb", "val_labels"} <= set(art.extra_tensors)
    assert saved["recognizer"] == art.recognizer["mode"]
    assert set(saved["recognizer_val_top1"]) == {"head", "both", "gallery"}
    # one console line per epoch with loss, accuracy and images/s; none of Ray's per-report INFO lines
    lines = [ln for ln in printed.splitlines() if "[train] epoch" in ln]
    assert len({ln.split("[train] epoch")[1].split()[0] for ln in lines}) == epochs, printed[-3000:]
    assert all("loss" in ln and "acc" in ln and "img/s" in ln for ln in lines)
    assert "Reporting training result" not in printed
    assert "cached frozen-backbone features" in printed  # computed once, before the epochs
    assert "have no location" not in printed  # every landmark has one: no warning
    # its best tag is the photo's class as often as training measured (one photo of slack: the artifact decodes
    # the JPEGs afresh, training evaluated its own decoded copies)
    test_files = sorted(Path(train_data["root"], "test").rglob("*.jpg"))
    results = list(predict_paths([str(p) for p in test_files], Predictor(str(out), k=3)))
    assert all(r.status != "failed" and len(r.tags) == 3 for r in results), [r.error for r in results]
    names = dict(zip(art.catalog.folders, art.catalog.names))
    right = [r.tags[0]["name"] == names[p.parent.name] for p, r in zip(test_files, results)]
    assert np.mean(right) >= saved["test_top1"] - 1 / len(right), (np.mean(right), saved["test_top1"])


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
