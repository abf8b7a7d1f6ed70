"""landmark_core.members: the pool's arithmetic and the --members flag's checks (no Ray; the pooled artifact of
real training runs is checked in test_train.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from jobs.train import ConfigError, TrainConfig
from landmark_core import members, openworld


def test_pool_is_the_mean_log_odds_so_the_pooled_decision_is_the_mean_margin():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, size=(5, 200))
    t = rng.uniform(0.05, 0.95, size=5)
    np.testing.assert_allclose(members.pool([p[0]]), p[0], rtol=1e-9)
    np.testing.assert_allclose(members.pool([np.full(3, 0.3)] * 4), 0.3, rtol=1e-9)
    pooled, threshold = members.pool(list(p)), members.pool(list(t))
    margin = np.mean([members.logit(p[k]) - members.logit(t[k]) for k in range(5)], axis=0)
    assert ((pooled >= threshold) == (margin >= 0)).all()
    assert ((pooled > 0) & (pooled < 1)).all()
    # a score of exactly 0 or 1 (a saturated calibrator) stays finite in the pool
    assert np.isfinite(members.pool([np.array([0.0, 1.0]), np.array([0.5, 0.5])])).all()


def test_a_members_threshold_moves_with_the_rate_asked_for_at_tag_time():
    rng = np.random.default_rng(1)
    member = {
        "threshold": 0.4,
        "neg_fit_scores": rng.uniform(0, 1, 300).astype(np.float32),
        "neg_fit_groups": np.repeat(np.arange(3), 100).astype(np.int32),
        "val_scores": np.sort(rng.uniform(0.3, 1, 40)).astype(np.float32),
    }
    assert members.threshold(member) == 0.4
    strict, loose = members.threshold(member, max_wrong_rate=0.01), members.threshold(member, max_wrong_rate=0.3)
    assert strict > loose
    by_group = openworld.scores_by_group(member["neg_fit_scores"], member["neg_fit_groups"])
    assert openworld.wrong_rate(by_group, strict * (1 + 1e-6)) <= 0.01
    assert members.threshold(member, accept_rate=0.9) <= members.threshold(member, accept_rate=0.5)


def test_no_members_in_an_artifact_means_none_to_pool():
    assert members.from_artifact({"method": "openworld", "threshold": 0.5}, {}, "onnx-int8") == []


@pytest.mark.parametrize(
    "kwargs, needs",
    [
        (dict(members=0), "--members must be >= 1"),
        (dict(members=3, negatives=("n",)), "--freeze-backbone"),
        (dict(members=3, freeze_backbone=True), "--negatives"),
    ],
)
def test_members_flag_is_checked_before_any_cluster_work(kwargs, needs):
    with pytest.raises(ConfigError) as e:
        TrainConfig(data=".", output="o", model="efficientnet_lite0", **kwargs).check()
    assert "--members" in str(e.value) and needs in str(e.value)


def test_members_resume_needs_an_earlier_member_and_continues_those_that_started(tmp_path, capsys):
    """--members K --resume under a --storage with no member's run (a wrong --name or --storage): one error line
    naming --resume and exit 2, as one run's --resume, before any training; with member 0's run there, member 0
    continues and the others start fresh."""
    from jobs import train

    data, storage_dir = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    storage_dir.mkdir()
    argv = ["--data", str(data), "--output", str(tmp_path / "out"), "--storage", str(storage_dir)]
    argv += ["--negatives", str(data), "--freeze-backbone", "--members", "3", "--name", "vn", "--resume"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --resume: no earlier run named 'vn'" in err and "vn-m0 to vn-m2" in err, err
    assert not (tmp_path / "out").exists()

    (storage_dir / ".vn-m0.latest").write_text("vn-m0-20261204-120000")
    cfg = train.config_from_args(train_parser().parse_args(argv))
    assert train._members_started(cfg, "vn") == [True, False, False]
    assert train._members_started(replace(cfg, resume=False), "vn") == [False, False, False]


def train_parser():
    import argparse

    from jobs import train

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_finished_members_artifact_is_kept_under_storage_and_taken_on_resume(
    where, make_tiny_artifact, tmp_path, capsys, request, monkeypatch
):
    """A member's finished artifact is copied into its run folder under --storage (local or S3) with a marker
    after it; --resume with the same flags takes it back whole (its metrics, its files), with other flags it is
    made again (the flags named), and a run whose marker was never written is continued."""
    from jobs import train
    from jobs._finalize import config_of
    from landmark_core import artifact, storage

    if where == "s3":
        s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket")
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        runs, endpoint = f"s3://{bucket}/runs", s3.endpoint
    else:
        runs, endpoint = str(tmp_path / "runs"), None
    scratch = tmp_path / "scratch" / "m0"
    mcfg = TrainConfig(
        data=str(tmp_path),
        output=str(scratch),
        model="efficientnet_lite0",
        storage=runs,
        s3_endpoint=endpoint,
        freeze_backbone=True,
        negatives=("n",),
        name="vn-m0",
    )
    config = config_of(mcfg)  # what finalize records
    art = make_tiny_artifact()
    art.provenance = {"run_name": "vn-m0-20261204-120000", "config": config}
    model_id = artifact.save(art, str(scratch))
    metrics = {"model_id": model_id, "abstain_threshold": 0.25}
    (scratch / "metrics.json").write_text(json.dumps(metrics))
    (scratch / "report").mkdir()
    (scratch / "report" / "curves.png").write_bytes(b"\x89PNG not really")
    opts = mcfg.s3_options()
    train._keep_member(mcfg)
    assert storage.exists(f"{runs}/vn-m0-20261204-120000/{train.MEMBER_DONE}", opts)
    storage.write_bytes(f"{runs}/.vn-m0.latest", b"vn-m0-20261204-120000", opts)

    again = replace(mcfg, resume=True, output=str(tmp_path / "again" / "m0"))
    assert train._finished_member(again) == metrics
    for f in ("artifact.json", "model.safetensors", "metrics.json", "report/curves.png"):
        assert (tmp_path / "again" / "m0" / f).read_bytes() == (scratch / f).read_bytes(), f
    assert artifact.load(again.output).model_id == model_id

    assert train._finished_member(replace(again, max_wrong_rate=0.05)) is None
    assert not Path(again.output).exists()  # the old artifact is not left where the new one is made
    assert (
        "vn-m0: finished with other values of --max-wrong-rate: its artifact is made again" in capsys.readouterr().out
    )
    storage.write_bytes(f"{runs}/.vn-m0.latest", b"vn-m0-20261205-080000", opts)  # a later run, cut off
    assert train._finished_member(again) is None
