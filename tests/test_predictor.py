"""Predictor: output columns, top-k, failed rows, the abstain threshold and min_score, calibrated scores, and the
open-set ("no landmark") scores of every abstention method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark_core import abstention
from landmark_core.calibration import softmax
from landmark_core.predictor import Predictor
from landmark_core.preprocess import EvalPreset
from landmark_core.status import FAILED, NO_LANDMARK, TAGGED
from landmark_core.synthetic import SHAPES, render_scene

torch.set_num_threads(2)

K = 2
COLUMNS = {"status", "landmark", "score", "lat", "lon", "abstain_score", "topk_idx", "topk_score"}


SMALL = EvalPreset(size=64, resize=73)  # the scratch net is fully convolutional: small inputs keep tests fast


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Eight 64x64 uint8 photos of different scenes (as the SMALL eval preset makes them)."""
    return np.stack(
        [SMALL.to_uint8(render_scene(s, np.random.default_rng(i), (96, 72))) for i, s in enumerate(SHAPES[:8])]
    )


@pytest.fixture(scope="module")
def images224() -> np.ndarray:
    """Four photos at the default preset (224), for the saved tiny_artifact."""
    return np.stack(
        [EvalPreset().to_uint8(render_scene(s, np.random.default_rng(i), (160, 120))) for i, s in enumerate(SHAPES[:4])]
    )


@pytest.fixture(scope="module")
def sharp(make_tiny_artifact):
    """A 3-class artifact whose random head is scaled up: varied classes and scores; threshold 0."""
    return make_tiny_artifact(head_scale=40.0, abstain={"method": "msp", "threshold": 0.0}, preset=SMALL)


@pytest.fixture(scope="module")
def sharp_predictor(sharp) -> Predictor:
    return Predictor(sharp, k=3)


@pytest.fixture(scope="module")
def sharp_out(sharp_predictor, images) -> dict:
    return sharp_predictor.predict_arrays(images)


@pytest.fixture(scope="module")
def logits_emb(sharp_predictor, images):
    return sharp_predictor.logits_and_embeddings(images)


def _with(sharp_predictor, **attrs) -> Predictor:
    """The same loaded network under other settings (threshold, min_score, method, ...) without rebuilding it."""
    p = object.__new__(Predictor)
    p.__dict__.update(sharp_predictor.__dict__)
    p.__dict__.update(attrs)
    return p


# ---------------------------------------------------------------------------------------------------- columns


def test_output_columns_and_shapes(tiny_artifact, images224):
    pred = Predictor(tiny_artifact.path, k=K)
    assert pred.model_id == tiny_artifact.artifact.model_id
    assert pred.device == "cpu" and pred.k == K
    batch = {"image": images224, "uri": np.array(["a", "b", "c", "d"], dtype=object)}
    out = pred(batch)
    assert "image" not in out
    assert list(out["uri"]) == ["a", "b", "c", "d"]  # other columns pass through
    assert COLUMNS <= set(out)
    for col in ("status", "landmark", "score", "lat", "lon", "abstain_score"):
        assert out[col].shape == (4,), col
    assert out["topk_idx"].shape == (4, K) and out["topk_idx"].dtype == np.int32
    assert out["topk_score"].shape == (4, K) and out["topk_score"].dtype == np.float32
    assert out["score"].dtype == np.float32 and out["abstain_score"].dtype == np.float32
    assert set(out["status"]) <= {TAGGED, NO_LANDMARK}
    assert ((out["topk_idx"] >= 0) & (out["topk_idx"] < 3)).all()
    np.testing.assert_array_equal(out["score"], out["topk_score"][:, 0])


def test_default_artifact_threshold_tags_everything(tiny_artifact, images224):
    # 3 classes: the top-1 probability is always >= 1/3 > the artifact's msp threshold 0.3
    out = Predictor(tiny_artifact.path, k=1).predict_arrays(images224[:3])
    assert list(out["status"]) == [TAGGED] * 3
    assert (out["score"] >= 1 / 3 - 1e-6).all()


def test_k_larger_than_catalog_is_clipped(sharp, images):
    pred = Predictor(sharp, k=10)
    assert pred.k == 3
    out = pred.predict_arrays(images[:3])
    assert out["topk_idx"].shape == (3, 3)
    assert all(sorted(row) == [0, 1, 2] for row in out["topk_idx"].tolist())


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_a_value_error(sharp, k):
    with pytest.raises(ValueError, match="k must be >= 1"):
        Predictor(sharp, k=k)


def test_empty_batch(sharp_predictor):
    out = sharp_predictor.predict_arrays(np.zeros((0, 64, 64, 3), np.uint8))
    assert COLUMNS == set(out) and all(len(v) == 0 for v in out.values())
    assert out["topk_idx"].shape == (0, 3)


def test_features_are_the_decoded_rows_network_outputs_and_only_when_asked(sharp_predictor, images):
    """`landmark eval` scores its known photos a second way on the features of the pass that tagged them: they are
    the network's logits and embeddings of the decoded rows, in order; without ``features`` no such key exists (a
    tag job batch gets no extra column)."""
    ok = np.array([True, False, True, True])
    batch = {"image": images[:4], "ok": ok}
    out = sharp_predictor(batch, features=True)
    logits, emb = sharp_predictor.logits_and_embeddings(images[:4][ok])
    np.testing.assert_array_equal(out["features"][0], logits)
    np.testing.assert_array_equal(out["features"][1], emb)
    assert "features" not in sharp_predictor(batch)
    assert sharp_predictor({"image": images[:2], "ok": np.array([False, False])}, features=True)["features"] is None


# ------------------------------------------------------------------------------------------------ failed rows


def test_failed_rows_keep_status_and_get_nan(sharp_predictor, sharp_out, images):
    ok = np.array([True, False, True, False, True])
    batch = {
        "image": images[:5],
        "ok": ok,
        "status": np.array(["pending", FAILED, "pending", FAILED, "pending"], dtype=object),
        "error": np.array([None, "decode: truncated", None, "read: not found", None], dtype=object),
    }
    out = sharp_predictor(batch)
    assert list(out["status"][~ok]) == [FAILED, FAILED]
    assert list(out["error"][~ok]) == ["decode: truncated", "read: not found"]
    assert np.isnan(out["score"][~ok]).all() and np.isnan(out["abstain_score"][~ok]).all()
    assert np.isnan(out["lat"][~ok]).all() and np.isnan(out["lon"][~ok]).all()
    assert (out["landmark"][~ok] == None).all()  # noqa: E711 - object array
    assert (out["topk_idx"][~ok] == -1).all() and np.isnan(out["topk_score"][~ok]).all()
    # the good rows are predicted exactly as on their own
    assert set(out["status"][ok]) == {TAGGED}
    np.testing.assert_allclose(out["score"][ok], sharp_out["score"][[0, 2, 4]], rtol=1e-5)
    np.testing.assert_array_equal(out["topk_idx"][ok], sharp_out["topk_idx"][[0, 2, 4]])


def test_failed_rows_without_a_status_column_are_failed(sharp_predictor, images):
    out = sharp_predictor({"image": images[:3], "ok": np.array([False, True, False])})
    assert list(out["status"]) == [FAILED, TAGGED, FAILED]
    assert np.isnan(out["score"][[0, 2]]).all() and np.isfinite(out["score"][1])


def test_all_rows_failed_never_runs_the_model(sharp_predictor, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model called for failed rows")

    p = _with(sharp_predictor)
    monkeypatch.setattr(p, "predict_arrays", boom)
    # garbage pixels: they must not even be looked at
    out = p({"image": np.zeros((2, 1, 1, 3), np.uint8), "ok": np.array([False, False])})
    assert list(out["status"]) == [FAILED, FAILED] and np.isnan(out["score"]).all()


# ------------------------------------------------------------------------------------- threshold, min_score


def test_threshold_above_one_means_no_landmark_for_everything(sharp_predictor, images):
    out = _with(sharp_predictor, threshold=1.01).predict_arrays(images)
    assert list(out["status"]) == [NO_LANDMARK] * len(images)
    assert (out["landmark"] == None).all()  # noqa: E711
    assert np.isnan(out["lat"]).all() and np.isnan(out["lon"]).all()
    assert np.isfinite(out["score"]).all() and (out["topk_idx"] >= 0).all()  # best guesses still there


def test_threshold_zero_tags_with_name_and_catalog_location(sharp_predictor, sharp_out, images):
    out, cat = sharp_out, sharp_predictor.catalog
    assert list(out["status"]) == [TAGGED] * len(images)
    top1 = out["topk_idx"][:, 0]
    assert list(out["landmark"]) == [cat[int(i)].name for i in top1]
    np.testing.assert_array_equal(out["lat"], [cat[int(i)].lat for i in top1])
    np.testing.assert_array_equal(out["lon"], [cat[int(i)].lon for i in top1])
    assert len(set(top1.tolist())) >= 2  # the scaled head really varies


def test_artifact_threshold_is_used(make_tiny_artifact, images, sharp_out):
    cut = float(np.median(sharp_out["score"]))
    art = make_tiny_artifact(head_scale=40.0, abstain={"method": "msp", "threshold": cut}, preset=SMALL)
    out = Predictor(art, k=1).predict_arrays(images)
    want = np.where(sharp_out["score"] >= cut, TAGGED, NO_LANDMARK)
    assert 0 < (want == TAGGED).sum() < len(images)  # both outcomes occur
    assert list(out["status"]) == list(want)


def test_min_score_overrides_the_artifacts_threshold(sharp, sharp_out, images):
    scores = sharp_out["abstain_score"]
    cut = float(np.median(scores))
    p = Predictor(sharp, k=1, min_score=cut)
    assert p.threshold == cut
    out = p.predict_arrays(images)
    assert list(out["status"]) == [TAGGED if s >= cut else NO_LANDMARK for s in scores]
    assert 0 < (out["status"] == TAGGED).sum() < len(images)
    # it replaces the artifact's threshold in both directions
    strict = type(sharp)(**{**sharp.__dict__, "abstain": {"method": "msp", "threshold": 1.01}})
    assert set(Predictor(strict, k=1).predict_arrays(images[:3])["status"]) == {NO_LANDMARK}
    assert set(Predictor(strict, k=1, min_score=0.0).predict_arrays(images[:3])["status"]) == {TAGGED}


@pytest.mark.parametrize(
    "method, bad, fine", [("msp", (1.01, -0.1, 2.0), (0.0, 1.0)), ("knn", (1.5, -1.2), (-0.5, 1.0))]
)
def test_a_min_score_outside_the_models_score_range_is_refused(make_tiny_artifact, method, bad, fine):
    """A threshold no score can reach (or every score passes) would tag no photo (or every one) for the whole run,
    and the tag job's rows would then be skipped as settled: refused up front, naming the flag."""
    art = make_tiny_artifact(abstain={"method": method, "threshold": 0.0}, preset=SMALL)
    for value in bad:
        with pytest.raises(ValueError, match=r"--min-score .*lies in \["):
            Predictor(art, k=1, min_score=value)
    for value in fine:
        assert Predictor(art, k=1, min_score=value).threshold == value


def test_accept_rate_uses_the_artifacts_validation_scores(sharp, images):
    from landmark_core.calibration import threshold_at_accept_rate

    val = np.linspace(0.4, 0.9, 99).astype(np.float32)
    art = type(sharp)(**{**sharp.__dict__, "extra_tensors": {"val_scores": torch.from_numpy(val)}})
    p = Predictor(art, k=1, accept_rate=0.9)
    assert p.threshold == pytest.approx(threshold_at_accept_rate(val, 0.9))
    assert 0.4 < p.threshold < 0.5  # about the 10th percentile of the known scores
    assert Predictor(art, k=1, accept_rate=1.0).threshold == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no validation scores"):
        Predictor(sharp, k=1, accept_rate=0.9)


# ------------------------------------------------------------------------------------------ calibrated scores


def test_topk_scores_sorted_and_a_distribution(sharp_out):
    s = sharp_out["topk_score"]
    assert (np.diff(s, axis=1) <= 0).all()
    np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-5)  # k = all 3 classes
    assert ((s >= 0) & (s <= 1)).all()


def test_scores_are_temperature_scaled_softmax(sharp_predictor, sharp_out, logits_emb):
    logits, _ = logits_emb
    T = sharp_predictor.temperature
    assert T == 1.5
    probs = softmax(logits, T)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    gathered = np.take_along_axis(probs, sharp_out["topk_idx"].astype(int), axis=1)
    np.testing.assert_allclose(sharp_out["topk_score"], gathered, rtol=1e-5, atol=1e-7)
    # a temperature of 1 would give sharper (larger top-1) scores for the same logits
    assert (softmax(logits, 1.0).max(axis=1) >= sharp_out["score"] - 1e-6).all()
    assert (softmax(logits, 1.0).max(axis=1) > sharp_out["score"] + 1e-3).any()


def test_higher_temperature_flattens_but_keeps_the_ranking(make_tiny_artifact, sharp_out, images):
    hot = Predictor(
        make_tiny_artifact(head_scale=40.0, temperature=4.0, preset=SMALL, abstain={"method": "msp", "threshold": 0.0}),
        k=3,
    )
    out = hot.predict_arrays(images)
    np.testing.assert_array_equal(out["topk_idx"], sharp_out["topk_idx"])
    assert (out["score"] < sharp_out["score"]).all()
    np.testing.assert_allclose(out["topk_score"].sum(axis=1), 1.0, atol=1e-5)


def test_msp_abstain_score_is_the_top1_probability(sharp_out):
    np.testing.assert_allclose(sharp_out["abstain_score"], sharp_out["score"], rtol=1e-6)


def test_tags_helper(sharp_predictor, sharp_out):
    tags = sharp_predictor.tags(sharp_out["topk_idx"][0], sharp_out["topk_score"][0])
    assert [t["name"] for t in tags] == [sharp_predictor.catalog[int(i)].name for i in sharp_out["topk_idx"][0]]
    assert [t["score"] for t in tags] == pytest.approx(sharp_out["topk_score"][0].tolist())
    assert all(isinstance(t["score"], float) and t["lat"] is not None for t in tags)
    assert sharp_predictor.tags(np.array([-1, -1, -1]), np.full(3, np.nan)) == []


# ------------------------------------------------------------------------------------------------ abstention


def _toy_embeddings(seed: int = 0):
    """3 known classes clustered around orthogonal directions in 8-D; unknowns around a 4th direction."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3] * 5
    labels = np.repeat(np.arange(3), 30)
    train = centres[labels] + rng.normal(0, 0.5, (90, 8))
    known = centres[np.arange(12) % 3] + rng.normal(0, 0.5, (12, 8))
    unknown = np.eye(8)[3] * 5 + rng.normal(0, 0.5, (12, 8))
    head = np.eye(8)[:3] * 2.0  # logits = emb @ head.T: confident on known, flat on unknown
    return train.astype(np.float32), labels, known.astype(np.float32), unknown.astype(np.float32), head


def test_reference_tensors_shapes():
    train, labels, *_ = _toy_embeddings()
    proto = abstention.reference_tensors("proto", train, labels, 3)
    assert proto["prototypes"].shape == (3, 8) and proto["prototypes"].dtype == np.float32
    assert set(proto) <= {"prototypes", "center"}  # "center": the training mean, when embeddings are centred
    np.testing.assert_allclose(np.linalg.norm(proto["prototypes"], axis=1), 1.0, rtol=1e-5)
    assert (proto["prototypes"].argmax(axis=1) == [0, 1, 2]).all()
    knn = abstention.reference_tensors("knn", train, labels, 3, bank_per_class=10)
    assert knn["bank"].shape == (30, 8) and knn["bank"].dtype == np.float32
    assert set(knn) <= {"bank", "bank_labels", "center"}
    assert (knn["bank_labels"] == np.repeat([0, 1, 2], 10)).all()  # each bank row's landmark, in bank order
    for ref in (proto, knn):
        if "center" in ref:
            np.testing.assert_allclose(ref["center"], train.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(knn["bank"], axis=1), 1.0, rtol=1e-5)
    assert abstention.reference_tensors("knn", train, labels, 3)["bank"].shape == (90, 8)  # fewer than 200/class
    assert abstention.reference_tensors("msp", train, labels, 3) == {}
    assert abstention.reference_tensors("energy", train, labels, 3) == {}
    # a class without training embeddings gets a zero prototype, not NaN
    p = abstention.reference_tensors("proto", train[labels < 2], labels[labels < 2], 3)["prototypes"]
    assert np.isfinite(p).all() and (p[2] == 0).all()


@pytest.mark.parametrize("method", abstention.METHODS)
def test_known_scores_higher_than_unknown(method):
    train, labels, known, unknown, head = _toy_embeddings()
    extra = abstention.reference_tensors(method, train, labels, 3)
    s_known = abstention.known_score(method, known @ head.T, known, temperature=1.5, extra=extra, k=3)
    s_unknown = abstention.known_score(method, unknown @ head.T, unknown, temperature=1.5, extra=extra, k=3)
    assert s_known.shape == s_unknown.shape == (12,)
    assert s_known.min() > s_unknown.max(), method


def test_known_score_formulas():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    msp = abstention.known_score("msp", logits, None, temperature=2.0, extra={})
    np.testing.assert_allclose(msp, softmax(logits, 2.0).max(axis=1))
    np.testing.assert_allclose(msp[1], 1 / 3)
    energy = abstention.known_score("energy", logits, None, temperature=2.0, extra={})
    np.testing.assert_allclose(energy, 2.0 * np.log(np.exp(logits / 2.0).sum(axis=1)), rtol=1e-12)
    emb = np.array([[3.0, 0.0], [1.0, 1.0]])
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    knn1 = abstention.known_score("knn", logits, emb, temperature=1.0, extra={"bank": bank}, k=1)
    np.testing.assert_allclose(knn1, [1.0, (0.6 + 0.8) / np.sqrt(2)])
    knn2 = abstention.known_score("knn", logits, emb, temperature=1.0, extra={"bank": bank}, k=2)
    np.testing.assert_allclose(knn2, [0.6, 1 / np.sqrt(2)])  # the 2nd nearest
    knn_big = abstention.known_score("knn", logits, emb, temperature=1.0, extra={"bank": bank}, k=50)
    np.testing.assert_allclose(knn_big, [0.0, 1 / np.sqrt(2)])  # k clipped to the bank size
    proto = abstention.known_score("proto", logits, emb, temperature=1.0, extra={"prototypes": bank[:2]})
    np.testing.assert_allclose(proto, [1.0, 1 / np.sqrt(2)])
    with pytest.raises(ValueError, match="unknown abstention method"):
        abstention.known_score("odin", logits, emb, temperature=1.0, extra={})


@pytest.mark.parametrize("method", ["proto", "knn", "energy"])
def test_predictor_uses_the_artifacts_abstention_method(sharp, sharp_predictor, logits_emb, images, method):
    logits, emb = logits_emb
    labels = np.arange(len(images)) % 3
    extra = {k: torch.from_numpy(v) for k, v in abstention.reference_tensors(method, emb, labels, 3).items()}
    abstain = {"method": method, "threshold": -1e9, "k": 1}
    art = type(sharp)(**{**sharp.__dict__, "abstain": abstain, "extra_tensors": extra})
    p = Predictor(art, k=3)
    assert p.method == method and p.knn_k == 1
    out = p.predict_arrays(images)
    want = abstention.known_score(
        method, logits, emb, temperature=1.5, extra={k: v.numpy() for k, v in extra.items()}, k=1
    )
    np.testing.assert_allclose(out["abstain_score"], want, rtol=1e-4, atol=1e-5)
    if method == "knn":  # every photo is in the bank: its nearest neighbour is itself
        np.testing.assert_allclose(out["abstain_score"], 1.0, atol=1e-5)
    assert set(out["status"]) == {TAGGED}
    # the threshold splits on this score
    cut = float(np.median(out["abstain_score"]))
    out2 = _with(p, threshold=cut).predict_arrays(images)
    assert list(out2["status"]) == [TAGGED if s >= cut else NO_LANDMARK for s in out["abstain_score"]]
