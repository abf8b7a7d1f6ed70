"""landmark_core.members: the seeded splits, the pool and one member's fit, on synthetic embeddings (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.train import ConfigError, TrainConfig
from landmark_core import members, openworld


def _clusters(rng, n_classes=3, per_class=30, neg_groups=3, per_group=40, dim=32):
    """Known photos around one direction per class; negatives around other directions, one per group."""
    centers = rng.normal(size=(n_classes + neg_groups, dim)) * 3
    emb = np.concatenate([centers[c] + rng.normal(size=(per_class, dim)) for c in range(n_classes)])
    labels = np.repeat(np.arange(n_classes), per_class)
    neg = np.concatenate([centers[n_classes + g] + rng.normal(size=(per_group, dim)) for g in range(neg_groups)])
    groups = np.repeat(np.arange(neg_groups), per_group)
    return emb.astype(np.float32), labels, neg.astype(np.float32), groups


def test_split_is_seeded_disjoint_and_keeps_every_class_and_folder_on_both_sides():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 1)
    groups = np.array([0] * 8 + [1] * 3)
    tr, va, ntr, nfit = members.split(labels, groups, seed=4, val_fraction=0.2, fit_fraction=0.5)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    assert sorted(np.concatenate([ntr, nfit]).tolist()) == list(range(len(groups)))
    assert set(labels[va]) == {0, 1} and set(labels[tr]) == {0, 1, 2}  # a lone photo trains
    assert len(va) == 2 + 1 and set(groups[nfit]) == {0, 1} and len(nfit) == 4 + 2
    again = members.split(labels, groups, seed=4, val_fraction=0.2, fit_fraction=0.5)
    assert all((a == b).all() for a, b in zip(again, (tr, va, ntr, nfit)))
    other = members.split(labels, groups, seed=5, val_fraction=0.2, fit_fraction=0.5)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(other, (tr, va, ntr, nfit)))


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


def test_a_member_scores_known_photos_high_negatives_low_and_keeps_its_rate():
    rng = np.random.default_rng(1)
    emb, labels, neg, groups = _clusters(rng)
    m = members.fit(
        emb, labels, neg, groups, 3, seed=7, val_fraction=0.2, fit_fraction=0.5, outlier_weight=0.5, max_wrong_rate=0.05
    )
    assert set(members.TENSORS) <= set(m["tensors"]) and m["tensors"]["weight"].shape == (3, emb.shape[1])
    # its threshold keeps its own held-back negatives within the rate (their scores are kept as float32: one may
    # round up past the float64 threshold just above it)
    by_group = openworld.scores_by_group(m["neg_fit_scores"], m["neg_fit_groups"])
    assert openworld.wrong_rate(by_group, m["threshold"] * (1 + 1e-6)) <= 0.05
    va, nfit = m["split"]  # photos its head did not train on
    known_scores = members.score(m, m["calibrator"], emb[va])
    neg_scores = members.score(m, m["calibrator"], neg[nfit])
    assert np.median(known_scores) > 0.5 > np.median(neg_scores)
    # a rate asked for later moves its threshold from the stored scores
    assert members.threshold(m, max_wrong_rate=0.0) >= members.threshold(m) >= members.threshold(m, max_wrong_rate=0.5)


def test_members_round_trip_through_the_artifact_form():
    rng = np.random.default_rng(2)
    emb, labels, neg, groups = _clusters(rng)
    fitted = [
        members.fit(
            emb,
            labels,
            neg,
            groups,
            3,
            seed=s,
            val_fraction=0.2,
            fit_fraction=0.5,
            outlier_weight=0.5,
            max_wrong_rate=0.05,
        )
        for s in (1, 2)
    ]
    int8 = [members.refit(m, emb + 0.01, labels, neg + 0.01, groups, 0.05) for m in fitted]
    blocks, runtimes, tensors = members.to_artifact(fitted, {"onnx-int8": int8})
    abstain = {"members": blocks, "runtimes": {"onnx-int8": {"members": runtimes["onnx-int8"]}}}
    for runtime, source in (("torch", fitted), ("onnx-int8", int8)):
        loaded = members.from_artifact(abstain, tensors, runtime)
        assert len(loaded) == 2
        for got, want, m in zip(loaded, source, fitted):
            assert got["threshold"] == pytest.approx(want["threshold"])
            np.testing.assert_allclose(
                members.score(got, got["calibrator"], neg), members.score(m, want["calibrator"], neg), rtol=1e-6
            )
            np.testing.assert_array_equal(got["neg_fit_groups"], want["neg_fit_groups"])
    assert members.from_artifact({}, {}, "torch") == []


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
