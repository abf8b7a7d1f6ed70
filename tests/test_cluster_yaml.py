"""cluster.yaml is a valid Ray cluster-launcher config and keeps its security promises.

Validation runs what `ray up` runs before it touches AWS: prepare_config()
(merge with Ray's AWS defaults.yaml, setup-command merging, per-type worker
bounds) and validate_config() (ray-schema.json plus the head/worker checks).
The AWS-side step in between (fillout_available_node_types_resources, an EC2
DescribeInstanceTypes call) is skipped: every node type declares its CPU/GPU
resources itself, so nothing depends on it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
GPU_TYPES = {"gpu_g5": ("g5.xlarge", 1), "gpu_g5_12x": ("g5.12xlarge", 4)}


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def cfg(text: str) -> dict:
    return yaml.safe_load(text)


def test_ray_accepts_it(cfg: dict) -> None:
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError
    assert prepared["provider"]["type"] == "aws"
    assert prepared["cluster_name"] == "landmark-tagger"
    # the command lists are ours: Ray's AWS defaults (nightly wheel install, extra
    # boto3 pip install) must not have been merged in
    all_cmds = "\n".join(
        prepared["head_setup_commands"]
        + prepared["worker_setup_commands"]
        + prepared["head_start_ray_commands"]
        + prepared["worker_start_ray_commands"]
    )
    assert "ray-wheels" not in all_cmds and "anaconda3" not in all_cmds
    assert prepared["head_setup_commands"] == cfg["setup_commands"]
    assert prepared["worker_setup_commands"] == cfg["setup_commands"]


def test_no_static_aws_credentials(text: str, cfg: dict) -> None:
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "AWS access key id in cluster.yaml"
    assert not re.search(r"aws_secret_access_key|aws_access_key_id|secret_?key", text, re.I)
    assert not re.search(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])", text), (
        "40-character token that looks like a secret access key"
    )
    assert "aws_credentials" not in cfg["provider"]


def test_every_node_type_uses_an_instance_profile(cfg: dict) -> None:
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for name, node_type in types.items():
        arn = node_type["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert re.fullmatch(r"arn:aws:iam::(<ACCOUNT_ID>|\d{12}):instance-profile/[\w+=,.@/-]+", arn), (name, arn)
        assert node_type["node_config"].get("ImageId"), name


def test_node_types(cfg: dict) -> None:
    types = cfg["available_node_types"]
    for name, (instance, gpus) in GPU_TYPES.items():
        assert types[name]["node_config"]["InstanceType"] == instance
        assert types[name]["resources"]["GPU"] == gpus
        assert types[name]["min_workers"] == 0, "GPU nodes must scale to zero"
        assert types[name]["max_workers"] >= 1
    decode = types["cpu_decode"]
    assert decode["node_config"]["InstanceType"] == "c6i.4xlarge"
    assert decode["min_workers"] == 0 and decode["resources"].get("decode", 0) > 0
    assert "GPU" not in decode["resources"]
    head = types[cfg["head_node_type"]]
    assert "GPU" not in head["resources"] and 0 < head["resources"]["CPU"] <= 4
    assert sum(t.get("max_workers", 0) for t in types.values()) <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0


def test_project_installed_on_every_node_and_token_auth(cfg: dict) -> None:
    remote = "/home/ubuntu/landmark-tagger"
    assert cfg["file_mounts"][remote] == "."
    assert any(f"pip install -e {remote}" in c for c in cfg["setup_commands"])
    assert any(re.search(r"ray\[[^]]*default[^]]*\]==\d+\.\d+\.\d+", c) for c in cfg["setup_commands"])
    assert ".venv" in cfg["rsync_exclude"]
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    for cmds in (head_start, worker_start):
        assert "RAY_AUTH_MODE=token" in cmds


def test_documents_how_to_run(text: str) -> None:
    for needle in (
        "ray up cluster.yaml",
        "ray dashboard cluster.yaml",
        "ray job submit --address http://localhost:8265 --working-dir .",
        "python -m jobs.train",
        "python -m jobs.tag",
        "RAY_AUTH_MODE=token",
        "0 2 * * *",
    ):
        assert needle in text, needle


def test_node_configs_are_valid_run_instances_requests(cfg: dict) -> None:
    """Ray hands node_config to EC2 RunInstances as is: check it against boto's own model."""
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in cfg["available_node_types"].items():
        params = dict(copy.deepcopy(node_type["node_config"]), MinCount=1, MaxCount=1)
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), (name, report.generate_report())
