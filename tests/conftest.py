"""Shared pytest fixtures.  Each block below has its own header; add new ones the same way."""

from __future__ import annotations

import secrets
from dataclasses import dataclass as _dataclass
from pathlib import Path as _Path

import pytest

from landmark_core.devs3 import SeaweedS3

# ---------------------------------------------------------------------------
# S3: a real SeaweedFS server on 127.0.0.1 (landmark_core/devs3.py)
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


# ---------------------------------------------------------------------------
# Core library (landmark_core, no Ray): tiny model artifacts and synthetic photos
#
#   make_tiny_artifact  session-scoped factory: make_tiny_artifact(temperature=1.5,
#                       abstain={"method": "msp", "threshold": 0.3}, seed=0, extra_tensors=None,
#                       head_scale=1.0, preset=None)
#                       -> a fresh in-memory landmark_core.artifact.Artifact: the "scratch" CNN with
#                       random (seeded) weights over the 3-class catalog "tiny-3" (folders 00.Tower,
#                       01.Arch, 02.Dome as in synthetic_data; made-up coordinates, country "ZZ"),
#                       default EvalPreset (224/256).  Random weights: fine for format/plumbing tests;
#                       for "tagged" assertions use threshold 0.  head_scale multiplies the head's
#                       weights: a random head gives near-uniform scores; ~40 gives varied, confident ones.
#                       preset: an EvalPreset (default 224/256); e.g. EvalPreset(64, 73) makes the fully
#                       convolutional scratch net ~12x cheaper where the input size does not matter.
#   tiny_artifact       session-scoped: that default artifact saved once; ``.path`` (str, the artifact
#                       directory) and ``.artifact`` (the Artifact as saved).  Read-only: do not write
#                       into .path or mutate .artifact; make your own with make_tiny_artifact instead.
#   synthetic_data      session-scoped small synthetic dataset (landmark_core.synthetic.generate_dataset):
#                       3 classes (the tiny-3 folders), train 4 / test 2 per class, ~96x72 JPEGs,
#                       half with EXIF GPS, a quarter stored rotated with an EXIF orientation.  The dict
#                       generate_dataset returns, plus "files": sorted list of every JPEG path (str).
#   bad_corpus          session-scoped (dir Path, {filename: expected DecodeError kind or None}) from
#                       landmark_core.synthetic.write_bad_corpus.
# ---------------------------------------------------------------------------

TINY_SHAPES = ("tower", "arch", "dome")


def _tiny_catalog():
    from landmark_core.catalog import Catalog
    from landmark_core.synthetic import class_coords, folder_name

    folders = [folder_name(i, s) for i, s in enumerate(TINY_SHAPES)]
    coords = {f: {**class_coords(f), "country": "ZZ"} for f in folders}
    return Catalog.from_folders(folders, coords=coords, name="tiny-3")


@pytest.fixture(scope="session")
def make_tiny_artifact():
    import torch

    from landmark_core.artifact import Artifact
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.preprocess import EvalPreset

    def make(
        *,
        temperature: float = 1.5,
        abstain: dict | None = None,
        seed: int = 0,
        extra_tensors: dict | None = None,
        head_scale: float = 1.0,
        preset: EvalPreset | None = None,
    ) -> Artifact:
        catalog = _tiny_catalog()
        spec = ModelSpec("scratch", len(catalog), weights="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(spec)
        return Artifact(
            spec=spec,
            catalog=catalog,
            preprocess=preset or EvalPreset(),
            state_dict={
                k: v.detach().clone() * (head_scale if k == "head.weight" else 1) for k, v in net.state_dict().items()
            },
            temperature=temperature,
            abstain=dict(abstain) if abstain is not None else {"method": "msp", "threshold": 0.3},
            extra_tensors=dict(extra_tensors or {}),
            metrics={"test_top1": 0.0},
            provenance={"made_by": "tests/conftest.py"},
        )

    return make


@_dataclass(frozen=True)
class TinyArtifact:
    path: str
    artifact: object  # landmark_core.artifact.Artifact


@pytest.fixture(scope="session")
def tiny_artifact(make_tiny_artifact, tmp_path_factory) -> TinyArtifact:
    from landmark_core import artifact as artifact_mod

    art = make_tiny_artifact()
    dest = tmp_path_factory.mktemp("tiny_artifact") / "model"
    artifact_mod.save(art, str(dest))
    return TinyArtifact(str(dest), art)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict:
    from landmark_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic_data")
    info = generate_dataset(
        root,
        shapes=TINY_SHAPES,
        n_classes=len(TINY_SHAPES),
        train_per_class=4,
        test_per_class=2,
        image_size=(96, 72),
        seed=0,
        gps_fraction=0.5,
        rotated_fraction=0.25,
    )
    info["files"] = sorted(str(p) for p in _Path(root).glob("*/*/*.jpg"))
    return info


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory):
    from landmark_core.synthetic import write_bad_corpus

    dest = tmp_path_factory.mktemp("bad_corpus")
    return dest, write_bad_corpus(dest)


# ---------------------------------------------------------------------------
# Ray and job fixtures (real local Ray, as the jobs use it)
#
#   ray_local      session-scoped: ray.init(address="local", num_cpus=2), shut down at the end.
#                  The jobs' init_ray() sees it initialised and uses it. Ray's workers inherit the
#                  environment of the process that starts Ray, so the test S3 server's keys are in
#                  os.environ only while Ray starts (as an instance profile would be on a cluster node);
#                  the endpoint is not: jobs must pass --s3-endpoint through to their workers.
#   train_data     session-scoped synthetic class-folder dataset for training tests:
#                  4 classes, 16 train / 6 test per class, ~160x120 JPEGs (+ coords.json).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local(s3):
    import os

    import ray

    if not ray.is_initialized():
        creds = {k: v for k, v in s3.env().items() if k != "AWS_ENDPOINT_URL_S3"}
        saved = {k: os.environ.get(k) for k in creds}
        os.environ.update(creds)
        try:
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    from landmark_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("train_data")
    info = generate_dataset(root, n_classes=4, train_per_class=16, test_per_class=6, image_size=(160, 120), seed=3)
    return {"root": str(root), **info}
