"""The open-world score, its threshold, the evaluation numbers and `landmark eval` (no Ray)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from landmark_core import evaluation, onnx_runtime as rt, openworld
from landmark_core.calibration import threshold_at_accept_rate
from landmark_core.evaluation import UNKNOWN, Outcomes
from tests.cli_asserts import assert_error_names


def test_logistic_calibrator_recovers_a_known_probability():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    p = 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5)))
    y = (rng.random(4000) < p).astype(float)
    cal = openworld.fit_logistic(x, y, l2=1e-4)
    got = openworld.prob_right(x, cal)
    assert np.abs(got - p).mean() < 0.03
    assert cal["features"] == list(openworld.FEATURES)


def test_calibrator_holds_on_a_mix_where_most_photos_are_negatives():
    """Balanced weights alone rank well but claim a 50:50 world; the Platt stage makes the score hold on the mix."""
    rng = np.random.default_rng(3)
    n_known, n_neg = 60, 1200
    x_known = rng.normal(loc=1.5, size=(n_known, 2))
    x_neg = rng.normal(loc=0.0, size=(n_neg, 2))
    right = np.ones(n_known, bool)
    cal = openworld.fit_calibrator(x_known, right, x_neg)
    balanced = {k: v for k, v in cal.items() if k != "platt"}
    x = np.concatenate([x_known, x_neg])
    y = np.r_[np.ones(n_known), np.zeros(n_neg)]
    ours, naive = openworld.prob_right(x, cal), openworld.prob_right(x, balanced)
    assert abs(ours.mean() - y.mean()) < 0.01  # the mix's base rate (about 5%)
    assert naive.mean() > 3 * y.mean()  # what the balanced fit alone would claim
    top = ours >= 0.5
    assert abs(ours[top].mean() - y[top].mean()) < 0.15  # among the photos it would tag, it means what it says
    assert np.array_equal(np.argsort(ours), np.argsort(naive))  # the ranking is the balanced fit's


def test_threshold_caps_the_mean_wrong_rate_over_groups_and_is_the_lowest_that_does():
    groups = {"everyday": np.linspace(0, 0.5, 100), "look_alikes": np.array([0.2, 0.4, 0.6, 0.8, 0.9])}
    thr = openworld.threshold_for_wrong_rate(groups, 0.1)
    assert openworld.wrong_rate(groups, thr) <= 0.1
    lower = np.nextafter(max(s[s < thr].max() for s in groups.values()), -np.inf)
    assert openworld.wrong_rate(groups, lower) > 0.1  # any lower threshold tags too many
    # the small group of look-alikes is not drowned by the big one: 20% of it would exceed the mean on its own
    assert (groups["look_alikes"] >= thr).mean() <= 0.2
    assert openworld.threshold_for_wrong_rate(groups, 0.0) > 0.9
    with pytest.raises(ValueError, match="max_wrong_rate"):
        openworld.threshold_for_wrong_rate(groups, 1.0)


def test_threshold_keeps_its_cap_on_the_float32_scores_that_rows_carry():
    """The Predictor compares float32 scores with the threshold (a Python float, cast to float32): a threshold one
    float64 step above a held-back score rounds back onto it, and that photo would be tagged."""
    rng = np.random.default_rng(3)
    groups = {"everyday": rng.random(1000), "look_alikes": rng.random(300)}
    for rate in (0.0, 0.02, 0.1):
        thr = openworld.threshold_for_wrong_rate(groups, rate)
        as_rows = [(v.astype(np.float32) >= thr).mean() for v in groups.values()]
        assert np.mean(as_rows) <= rate, (rate, as_rows)


def test_tag_scores_put_p_right_first_and_never_sum_above_one():
    top_p = np.array([[0.9, 0.05, 0.03], [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]], dtype=np.float32)
    p_right = np.array([0.1, 0.95, 0.4], dtype=np.float32)
    out = openworld.tag_scores(top_p, p_right)
    assert np.allclose(out[:, 0], p_right)
    assert (out.sum(axis=1) <= 1 + 1e-6).all()
    assert (np.diff(out[:, 1:], axis=1) <= 0).all()  # the rest keep their order


def test_features_see_distractors():
    rng = np.random.default_rng(1)
    known = rng.normal(size=(20, 8)).astype(np.float32) + np.eye(8, dtype=np.float32)[0] * 4
    neg = rng.normal(size=(20, 8)).astype(np.float32) - np.eye(8, dtype=np.float32)[0] * 4
    center = known.mean(axis=0)

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    extra = {
        "center": center,
        "bank": unit(known - center),
        "bank_labels": np.zeros(20, np.int32),
        "distractors": unit(neg - center),
    }
    logits = np.zeros((2, 3), np.float32)
    f = openworld.features(logits, np.stack([known[0], neg[0]]), temperature=1.0, extra=extra)
    col = {n: i for i, n in enumerate(openworld.FEATURES)}
    assert f[0, col["knn"]] > f[1, col["knn"]] and f[1, col["distractor"]] > f[0, col["distractor"]]


def _outcomes() -> Outcomes:
    known = Outcomes.of(["a"] * 4, [0, 0, 1, 1], [0, 0, 1, 0], [0.9, 0.3, 0.8, 0.7], [True, False, True, True])
    unknown = Outcomes.of("street", [UNKNOWN] * 4, [1, 0, 1, 0], [0.6, 0.2, 0.1, 0.1], [True, False, False, False])
    other = Outcomes.of("palace", [UNKNOWN] * 2, [0, 0], [0.2, 0.1], [False, False])
    return Outcomes.concat([known, unknown, other])


def test_summary_counts_right_abstained_wrong_and_tagged():
    s = evaluation.summary(_outcomes())
    assert (s["known_photos"], s["unknown_photos"]) == (4, 6)
    assert s["known_right"] == 0.5 and s["known_abstained"] == 0.25 and s["known_wrong"] == 0.25
    assert s["unknown_tagged"] == pytest.approx(1 / 6)
    assert s["unknown_tagged_mean_over_folders"] == pytest.approx((0.25 + 0.0) / 2)
    rows = {r["folder"]: r for r in s["folders"]}
    assert rows["street"] == {"folder": "street", "kind": "unknown", "photos": 4, "tagged": 0.25}
    # tagged: scores 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (wrong): bins 0.9, 0.8, 0.7, 0.6 each alone
    assert s["tagged_right"] == 0.5
    assert s["ece_tagged"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.6) / 4)


def test_wilson_interval_matches_the_textbook_values_and_holds_the_share():
    lo, hi = evaluation.wilson_interval(50, 55)
    assert (round(lo, 3), round(hi, 3)) == (0.804, 0.961)  # Wilson 1927; 50/55 = 0.909 inside
    assert evaluation.wilson_interval(55, 55)[1] == pytest.approx(1.0) and evaluation.wilson_interval(0, 55)[0] == 0.0
    assert evaluation.wilson_interval(0, 0) is None
    assert evaluation.summary(_outcomes())["known_right_interval"] == evaluation.wilson_interval(2, 4)


def test_ece_if_calibrated_is_the_noise_floor_of_a_perfect_score():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0.1, 1.0, 75), rng.uniform(0.1, 1.0, 20000)
    small, large = evaluation.ece_if_calibrated(few), evaluation.ece_if_calibrated(many, draws=50)
    # a calibrated score on 75 photos spread over the bins still shows about 0.1 of ECE; on 20,000 almost none
    assert 0.05 < small["median"] < small["p90"] < 0.25
    assert large["p90"] < 0.01
    # and a miscalibrated score shows well above its floor: every photo wrong at these scores
    assert evaluation.reliability(few, np.zeros(75))["ece"] > 3 * small["p90"]
    assert evaluation.ece_if_calibrated(np.zeros(0)) is None


def test_coverage_curve_moves_both_ways_with_the_threshold():
    c = evaluation.coverage_curve(_outcomes())
    t = np.asarray(c["threshold"])
    assert (np.diff(t) > 0).all()
    wrong = c["unknown_tagged_mean_over_folders"]
    assert (np.diff(c["coverage"]) <= 1e-12).all() and (np.diff(wrong) <= 1e-12).all()
    assert c["coverage"][0] == 0.75 and wrong[0] == 1.0  # lowest threshold: everything tagged


def test_plots_and_report_are_real_files():
    o = _outcomes()
    s = evaluation.summary(o)
    pngs = {
        "curve.png": evaluation.curve_png(evaluation.coverage_curve(o), operating=s),
        "reliability.png": evaluation.reliability_png(s["reliability"]),
    }
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) > 5000 for b in pngs.values())
    page = evaluation.html_report({"model_id": "lm-x", "threshold": 0.5, "summary": s}, pngs)
    assert "street" in page and "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    lo, hi = s["known_right_interval"]
    assert f"(95%: {100 * lo:.1f}%-{100 * hi:.1f}%)" in page  # how far the known share can be from the truth
    assert f"a calibrated score: {s['ece_if_calibrated']['median']:.3f}" in page


def _open_world_artifact(make_tiny_artifact, tmp_path: Path, provenance: dict | None = None):
    """The tiny artifact made open-world: banks from its own embeddings of synthetic photos (``provenance``: what
    its training run would have recorded, e.g. its inputs)."""
    import torch

    from landmark_core import artifact as artifact_mod
    from landmark_core.predictor import Predictor

    art = make_tiny_artifact(seed=5)
    probe = Predictor(art, runtime="torch", device="cpu")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(12, probe.preset.size, probe.preset.size, 3), dtype=np.uint8)
    logits, emb = probe.logits_and_embeddings(imgs)
    center = emb[:6].mean(axis=0)

    def unit(v):
        v = v - center
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    extra = {
        "center": center.astype(np.float32),
        "bank": unit(emb[:6]),
        "bank_labels": (np.arange(6) % 3).astype(np.int32),
        "distractors": unit(emb[6:]),
    }
    x = openworld.features(logits, emb, temperature=art.temperature, extra=extra)
    cal = openworld.fit_logistic(x, np.r_[np.ones(6), np.zeros(6)])
    fit_scores = openworld.prob_right(x[6:], cal).astype(np.float32)
    extra.update(neg_fit_scores=fit_scores, neg_fit_groups=np.array([0, 0, 0, 1, 1, 1], np.int32))
    extra["val_scores"] = np.sort(openworld.prob_right(x[:6], cal)).astype(np.float32)
    art.extra_tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in extra.items()}
    art.abstain = {"method": "openworld", "threshold": 0.5, "calibrator": cal, "max_wrong_rate": 0.02}
    art.provenance = {**art.provenance, **(provenance or {})}
    dest = tmp_path / "ow-model"
    artifact_mod.save(art, str(dest))
    return str(dest), imgs, openworld.prob_right(x, cal)


def test_predictor_scores_are_the_open_world_probability(make_tiny_artifact, tmp_path):
    from landmark_core.predictor import Predictor

    path, imgs, p_right = _open_world_artifact(make_tiny_artifact, tmp_path)
    pred = Predictor(path, runtime="torch", device="cpu", k=3).predict_arrays(imgs)
    assert np.allclose(pred["score"], p_right, atol=1e-5)
    assert ((pred["status"] == "tagged") == (p_right >= 0.5)).all()
    assert (pred["topk_score"].sum(axis=1) <= 1 + 1e-5).all()
    # --max-wrong-rate recomputes the threshold from the held-back negatives' scores, as the artifact stores
    # them (float32: the float64 score may lie a rounding step above its stored copy)
    strict = Predictor(path, runtime="torch", device="cpu", max_wrong_rate=0.0)
    assert strict.threshold > float(np.max(p_right[6:].astype(np.float32)))
    with pytest.raises(ValueError, match="without --negatives"):  # the plain tiny artifact has no negatives
        Predictor(make_tiny_artifact(), runtime="torch", device="cpu", max_wrong_rate=0.02)


def test_predictor_uses_its_runtimes_own_fit(make_tiny_artifact, tmp_path):
    """An int8 model's features differ from fp32's: the artifact carries a fit per runtime and the Predictor of
    that runtime uses its calibrator, threshold and held-back scores; other runtimes keep the fp32 fit."""
    import torch

    from landmark_core import artifact as artifact_mod
    from landmark_core.predictor import Predictor

    path, imgs, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    art = artifact_mod.load(path)
    int8 = Predictor(art, runtime="onnx-int8")
    logits, emb = int8.logits_and_embeddings(imgs)
    x = openworld.features(logits, emb, temperature=art.temperature, extra=int8.extra)
    fitted = openworld.fit(x[:6], np.ones(6, bool), x[6:], np.array([0, 0, 0, 1, 1, 1]), 0.34)
    fit = {"calibrator": fitted["calibrator"], "threshold": fitted["threshold"], "recipe": rt.RECIPE}
    art.abstain["runtimes"] = {"onnx-int8": fit}
    art.extra_tensors["neg_fit_scores@onnx-int8"] = torch.from_numpy(fitted["neg_fit_scores"].astype(np.float32))
    art.extra_tensors["neg_fit_groups@onnx-int8"] = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.int32)
    int8_val = np.sort(openworld.prob_right(x[:6], fitted["calibrator"])).astype(np.float32)
    art.extra_tensors["val_scores@onnx-int8"] = torch.from_numpy(int8_val)
    dest = str(tmp_path / "ow-runtimes")
    artifact_mod.save(art, dest)

    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.StaleFitWarning)  # fitted on the model this code builds: nothing to say
        int8 = Predictor(dest, runtime="onnx-int8")
    assert int8.stale_fit is None
    assert int8.threshold == pytest.approx(fitted["threshold"]) and int8.threshold != 0.5
    got = int8.predict_arrays(imgs)
    assert np.allclose(got["abstain_score"], openworld.prob_right(x, fitted["calibrator"]), atol=1e-5)
    assert Predictor(dest, runtime="torch", device="cpu").threshold == 0.5  # the fp32 fit
    strict = Predictor(dest, runtime="onnx-int8", max_wrong_rate=0.0)  # from the int8 held-back scores
    assert strict.threshold > float(fitted["neg_fit_scores"].astype(np.float32).max())
    # --accept-rate: a threshold on the runtime's own validation scores, as its calibrator scores photos
    fp32_val = art.extra_tensors["val_scores"].numpy()
    int8_at, fp32_at = threshold_at_accept_rate(int8_val, 0.5), threshold_at_accept_rate(fp32_val, 0.5)
    assert int8_at != pytest.approx(fp32_at)  # (else this check could not tell them apart)
    assert Predictor(dest, runtime="onnx-int8", accept_rate=0.5).threshold == pytest.approx(int8_at)
    assert Predictor(dest, runtime="torch", device="cpu", accept_rate=0.5).threshold == pytest.approx(fp32_at)


def test_a_runtime_fit_made_on_another_quantisation_recipe_is_said_not_silently_used(
    make_tiny_artifact, tmp_path, capsys
):
    """An int8 fit records the RECIPE of the model it was made on; one made on another (an artifact from before
    recipe 2, whose fit carries none) still scores, and the Predictor, `landmark eval`, `landmark predict` and
    `landmark tag` say its threshold was fitted on another model's features."""
    from jobs.eval import main as eval_main
    from landmark_core import artifact as artifact_mod
    from landmark_core.predictor import Predictor

    path, imgs, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    art = artifact_mod.load(path)
    art.abstain["runtimes"] = {"onnx-int8": {"calibrator": art.abstain["calibrator"], "threshold": 0.42}}
    dest = str(tmp_path / "ow-recipe-1")
    artifact_mod.save(art, dest)
    said = rf"fitted on quantisation recipe 1; this version builds recipe {rt.RECIPE}"
    with pytest.warns(rt.StaleFitWarning, match=said):
        int8 = Predictor(dest, runtime="onnx-int8")
    assert int8.threshold == pytest.approx(0.42) and "train the model again" in int8.stale_fit
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.StaleFitWarning)  # torch has no quantisation recipe
        assert Predictor(dest, runtime="torch", device="cpu").stale_fit is None
    known, _ = _eval_photos(tmp_path, 1)
    assert eval_main(["--model", dest, "--known", known, "--runtime", "onnx-int8", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["stale_fit"] == int8.stale_fit
    assert f"[eval] warning: --model: {int8.stale_fit}" in err and "StaleFitWarning" not in err
    from landmark_core.predict_cli import main as predict_main

    photo = next(Path(known).rglob("*.jpg"))
    assert predict_main(["--model", dest, "--runtime", "onnx-int8", "--json", str(photo)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] in ("tagged", "no_landmark")
    assert err.splitlines() == [f"landmark predict: warning: --model: {int8.stale_fit}"]
    # the tag job's driver says it once, after loading the model and before any work (here an --output that
    # cannot be written stops the run next)
    from jobs.tag import main as tag_main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["--input", known, "--output", str(blocker / "tags"), "--model", dest, "--runtime", "onnx-int8"]
    assert tag_main(argv) == 2
    out, err = capsys.readouterr()
    assert out.count(f"[tag] warning: --model: {int8.stale_fit}") == 1 and "--output" in err, (out, err)


def test_removing_a_landmark_from_an_open_world_model_is_refused_by_name(make_tiny_artifact, tmp_path, capsys):
    """Its P(right) and threshold were fitted with every landmark: `catalog remove` says so (it crashed)."""
    from jobs.catalog import main as catalog_main
    from landmark_core import artifact as artifact_mod, enroll

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    name = artifact_mod.load(path).catalog.names[0]
    with pytest.raises(enroll.EnrollError, match="--negatives"):
        enroll.remove(artifact_mod.load(path), name)
    code = catalog_main(["remove", "--model", path, "--name", name, "--output", str(tmp_path / "smaller")])
    assert code == 2 and not (tmp_path / "smaller").exists()
    assert_error_names(capsys.readouterr().err, f"--name {name!r}", "open-world", "--negatives")


def test_adding_a_landmark_to_an_open_world_model_is_refused_with_what_works(make_tiny_artifact, tmp_path, capsys):
    """`catalog add` used to answer with the closed-world advice (`--abstain-method knn`), which training refuses
    with --negatives; it now names the two ways that work, and writes nothing."""
    from jobs.catalog import main as catalog_main
    from landmark_core.synthetic import generate_dataset

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    generate_dataset(
        tmp_path / "new", shapes=("pyramid",), n_classes=1, train_per_class=3, test_per_class=0, image_size=(64, 64)
    )
    photos = next((tmp_path / "new" / "train").iterdir())
    out = tmp_path / "bigger"
    code = catalog_main(
        ["add", "--model", path, "--name", "Pyramid", "--lat", "1", "--lon", "2", "--photos", str(photos),
         "--output", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    line = assert_error_names(err, "open-world", "--negatives", "--data")
    assert "--abstain-method" not in err and len(err.strip().splitlines()) == 1, line


def _eval_photos(tmp_path: Path, per_class: int) -> tuple[str, dict]:
    """Known test photos of the tiny model's 3 landmarks, and negatives (plain scenes and wheels): (known, neg)."""
    from landmark_core.synthetic import generate_dataset, generate_negatives

    generate_dataset(
        tmp_path / "data",
        shapes=("tower", "arch", "dome"),
        n_classes=3,
        train_per_class=0,
        test_per_class=per_class,
        image_size=(96, 72),
        seed=4,
    )
    neg = generate_negatives(tmp_path / "neg", shapes=("wheel",), scenes=4, per_shape=per_class, image_size=(96, 72))
    return str(tmp_path / "data" / "test"), neg


def test_eval_command_reports_folders_and_writes_its_files(make_tiny_artifact, tmp_path, capsys):
    from jobs.eval import main as eval_main

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    known, neg = _eval_photos(tmp_path, 3)
    code = eval_main(
        [
            "--model",
            path,
            "--known",
            known,
            "--unknown",
            str(Path(neg["root"], "scenes")),
            "--unknown",
            str(Path(neg["root"], "wheel")),
            "--out",
            str(tmp_path / "ev"),
            "--json",
            "--runtime",
            "torch",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    s = result["summary"]
    assert (s["known_photos"], s["unknown_photos"]) == (9, 7)
    assert {r["folder"] for r in s["folders"]} == {"00.Tower", "01.Arch", "02.Dome", "scenes", "wheel"}
    assert s["known_right"] + s["known_abstained"] + s["known_wrong"] == pytest.approx(1.0)
    # which landmark each folder's wrong tags went to: they add up to its wrong (known) or tagged (unknown) photos
    names = {"Tower", "Arch", "Dome"}
    for r in s["folders"]:
        wrong = r["wrong"] if r["kind"] == "known" else r["tagged"]
        assert sum(r["wrong_as"].values()) == round(wrong * r["photos"]) and set(r["wrong_as"]) <= names, r
        assert list(r["wrong_as"].values()) == sorted(r["wrong_as"].values(), reverse=True)
    assert any(r["wrong_as"] for r in s["folders"])  # (this mix has some, else the check above is empty)
    from jobs.eval import format_table
    from landmark_core.evaluation import wrong_as

    table = format_table(result).splitlines()
    assert table[0].endswith("on torch)") and result["runtime"] == "torch"  # whose threshold it is
    assert table[1].endswith("wrong tags as") and table[2 + len(s["folders"])].startswith("(right, abstain, wrong:")
    for r in s["folders"]:
        (line,) = [ln for ln in table if ln.startswith(r["folder"])]
        assert line.rstrip().endswith(wrong_as(r)), (line, r)
    for name in ("curve.png", "reliability.png"):
        assert (tmp_path / "ev" / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["model_id"] == result["model_id"]
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "Open-world evaluation" in page and f"{result['model_id']}, on\ntorch, threshold" in page  # whose fit
    _check_photo_rows(tmp_path / "ev" / "photos.csv", result)
    assert [r["folder"] for r in result["catalog_look_alikes"]] == ["00.Tower", "01.Arch", "02.Dome"]
    _check_report_in_chromium(
        tmp_path / "ev" / "report.html", s, tmp_path, result["mistakes"], result["catalog_look_alikes"]
    )


def test_a_landmark_left_out_takes_its_column_and_bank_photos_and_renumbers_the_rest():
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    extra = {"bank": np.arange(6, dtype=np.float32)[:, None], "bank_labels": np.array([0, 1, 2, 2, 1, 0]), "center": 7}
    reduced, banks = openworld.without(logits, extra, 1)
    assert reduced.tolist() == logits[:, [0, 2]].tolist()
    assert banks["bank"].ravel().tolist() == [0, 2, 3, 5] and banks["bank_labels"].tolist() == [0, 1, 1, 0]
    assert banks["center"] == 7 and extra["bank_labels"].tolist() == [0, 1, 2, 2, 1, 0]  # the model's own untouched


def test_eval_scores_each_known_folder_as_if_its_landmark_were_not_in_the_catalog(make_tiny_artifact, tmp_path, capsys):
    """Catalog look-alikes: a known folder's photos through a model without its landmark (head column and bank
    photos removed here by hand), tagged as another landmark where that model's score reaches the threshold."""
    from collections import Counter

    from jobs.eval import format_table, main as eval_main
    from landmark_core.predictor import Predictor
    from landmark_core.storage import S3Options
    from landmark_core.training import eval_arrays
    from tests.openworld_asserts import banks_without

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    known, _ = _eval_photos(tmp_path, 3)
    pred = Predictor(path, runtime="torch", device="cpu")
    names, hand = pred.catalog.names, {}
    for absent, folder in enumerate(("00.Tower", "01.Arch", "02.Dome")):
        images, ok = eval_arrays(sorted(str(p) for p in Path(known, folder).iterdir()), S3Options(), pred.preset)
        logits, emb = pred.logits_and_embeddings(images[ok])
        reduced = np.delete(logits, absent, axis=1)
        x = openworld.features(reduced, emb, temperature=pred.temperature, extra=banks_without(pred.extra, absent))
        others = [n for i, n in enumerate(names) if i != absent]
        hand[folder] = (
            openworld.prob_right(x, pred.calibrator).astype(np.float32),
            [others[i] for i in reduced.argmax(1)],
        )
        got = pred.open_world_scores(logits, emb, absent=absent)
        np.testing.assert_allclose(got, hand[folder][0], rtol=1e-5)
        assert not np.allclose(got, pred.open_world_scores(logits, emb))  # (leaving it out changes the scores)
    cut = float(np.median(np.concatenate([s for s, _ in hand.values()])))  # some photos pass, some do not
    argv = ["--model", path, "--known", known, "--min-score", str(cut), "--json", "--runtime", "torch"]
    assert eval_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["folder"]: r for r in result["catalog_look_alikes"]}
    assert sorted(rows) == sorted(hand)
    passed = 0
    for absent, (folder, (score, named)) in enumerate(hand.items()):
        want = Counter(n for n, s in zip(named, score) if s >= result["threshold"])
        r = rows[folder]
        assert (r["landmark"], r["photos"]) == (names[absent], 3) and names[absent] not in r["as"]
        assert r["as"] == dict(want) and r["tagged"] == pytest.approx(sum(want.values()) / 3), (folder, r, score)
        passed += sum(want.values())
    assert 0 < passed < 9
    table = format_table(result)
    assert "catalog look-alikes" in table and all(f"  {f}" in table for f in hand)
    # a model trained without negatives has no open-world score to leave a landmark out of
    plain = tmp_path / "plain"
    from landmark_core import artifact as artifact_mod

    artifact_mod.save(make_tiny_artifact(), str(plain))
    assert eval_main(["--model", str(plain), "--known", known, "--json", "--runtime", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["catalog_look_alikes"] is None


def _check_photo_rows(csv_path: Path, result: dict) -> None:
    """photos.csv: one row per file, whose outcomes add up to each folder's shares, tagged exactly where the
    decision score reaches the threshold; eval.json's mistakes are its rows not right, in their order."""
    import csv
    from collections import Counter

    from jobs.eval import PHOTO_FIELDS

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    s = result["summary"]
    assert list(rows[0]) == list(PHOTO_FIELDS) and len(rows) == s["known_photos"] + s["unknown_photos"]
    seen = Counter((r["folder"], r["outcome"]) for r in rows)
    for fr in s["folders"]:
        g, n = fr["folder"], fr["photos"]
        if fr["kind"] == "known":
            want = {o: round(fr[share] * n) for o, share in (("right", "right"), ("abstained", "abstained"))}
            want["wrong"] = round(fr["wrong"] * n)
        else:
            want = {"tagged": round(fr["tagged"] * n), "no_landmark": n - round(fr["tagged"] * n)}
        assert {o: seen[(g, o)] for o in want} == want and sum(want.values()) == n, (g, want)
    for r in rows:
        tagged = r["outcome"] in ("right", "wrong", "tagged")
        assert tagged == (float(r["decision_score"]) >= result["threshold"]), r
        assert (r["expected"] == r["top1"]) == (r["outcome"] == "right") or r["outcome"] == "abstained", r
    mistakes = result["mistakes"]
    assert mistakes and {m["path"] for m in mistakes} == {
        r["path"] for r in rows if r["outcome"] in ("abstained", "wrong", "tagged")
    }
    missed = [m["decision_score"] for m in mistakes if m["kind"] == "known"]
    wrong = [m["decision_score"] for m in mistakes if m["kind"] == "unknown"]
    assert missed == sorted(missed) and wrong == sorted(wrong, reverse=True)
    assert [m["kind"] for m in mistakes] == sorted((m["kind"] for m in mistakes), key=("known", "unknown").index)


def test_eval_shows_the_model_at_other_wrong_tag_rates(make_tiny_artifact, tmp_path):
    """Beside the threshold it runs, eval shows an open-world model at each of RATES: every row is what
    `--max-wrong-rate R` gives (its threshold and its shares); a model trained without negatives has no rates."""
    from jobs.eval import RATES, EvalConfig, format_table, run as eval_run

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    known, neg = _eval_photos(tmp_path, 3)
    unknown = tuple(str(Path(neg["root"], f)) for f in ("scenes", "wheel"))
    base = EvalConfig(model=path, known=known, unknown=unknown, runtime="torch")
    result = eval_run(base)
    rows = result["rates"]
    assert [r["max_wrong_rate"] for r in rows] == list(RATES)
    assert [r["threshold"] for r in rows] == sorted((r["threshold"] for r in rows), reverse=True)
    for r in rows:
        at = eval_run(replace(base, max_wrong_rate=r["max_wrong_rate"]))
        assert at["threshold"] == r["threshold"], r
        s = at["summary"]
        assert (s["known_right"], s["known_wrong"]) == (pytest.approx(r["coverage"]), pytest.approx(r["known_wrong"]))
        assert s["unknown_tagged_mean_over_folders"] == pytest.approx(r["unknown_tagged_mean_over_folders"]), r
    table = format_table(result)
    assert "landmark tag --max-wrong-rate R" in table and f"{rows[-1]['threshold']:.4g}" in table
    closed = eval_run(replace(base, model=_knn_artifact(make_tiny_artifact, tmp_path)))
    assert closed["rates"] is None and "--max-wrong-rate R" not in format_table(closed)


def test_eval_compares_two_models_photo_by_photo(make_tiny_artifact, tmp_path, capsys):
    """--compare-model: both models on the same photos; each one's counts are its own eval's, what only one of them
    gets right is counted and tested (exact McNemar), and the photos they decide differently are listed; a model
    against itself differs nowhere."""
    from jobs.eval import EvalConfig, format_table, run as eval_run
    from landmark_core.evaluation import mcnemar_p

    a, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    b = _knn_artifact(make_tiny_artifact, tmp_path)
    known, neg = _eval_photos(tmp_path, 4)
    base = EvalConfig(model=a, known=known, unknown=(str(Path(neg["root"], "wheel")),), runtime="torch")
    both = eval_run(replace(base, compare_model=b, out=str(tmp_path / "cmp")))
    alone = {m: eval_run(replace(base, model=m)) for m in (a, b)}
    report = (tmp_path / "cmp" / "report.html").read_text()
    assert "<h2>Compared with another model</h2>" in report and "exact McNemar p" in report
    c = both["compare"]
    assert c["model_id"] == alone[b]["model_id"] and c["summary"] == alone[b]["summary"]
    for i, m in enumerate((a, b)):
        s = alone[m]["summary"]
        assert c["known"]["right"][i] == round(s["known_right"] * s["known_photos"]), m
        assert c["unknown"]["tagged"][i] == round(s["unknown_tagged"] * s["unknown_photos"]), m
    for kind, counted in (("known", "right"), ("unknown", "tagged")):
        k = c[kind]
        assert k[counted][0] - k[counted][1] == k["only"][0] - k["only"][1], k
        assert k["p_value"] == mcnemar_p(*k["only"])
    assert c["differ"] and len(c["differ"]) >= sum(c["known"]["only"]) + sum(c["unknown"]["only"])
    assert all(d["outcome"] != d["compare_outcome"] or d["outcome"] in ("wrong", "tagged") for d in c["differ"])
    assert "exact McNemar p" in format_table(both)
    same = eval_run(replace(base, compare_model=a))["compare"]
    assert same["differ"] == [] and same["known"]["only"] == [0, 0] and same["known"]["p_value"] == 1.0
    from jobs.eval import main as eval_main

    assert eval_main(["--model", a, "--compare-model", str(tmp_path / "nope"), "--known", known]) == 2
    assert_error_names(capsys.readouterr().err, "--compare-model", "nope")
    # the test itself: 5 against 0 discordant photos is 2 / 2**5; an even split is no evidence
    assert mcnemar_p(0, 5) == mcnemar_p(5, 0) == 2 / 32 and mcnemar_p(1, 1) == mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def _knn_artifact(make_tiny_artifact, tmp_path: Path) -> str:
    """The tiny artifact as a model trained without negatives: a kNN bank of its own embeddings."""
    import torch

    from landmark_core import abstention, artifact as artifact_mod
    from landmark_core.predictor import Predictor

    art = make_tiny_artifact(seed=5)
    rng = np.random.default_rng(1)
    probe = Predictor(art, runtime="torch", device="cpu")
    imgs = rng.integers(0, 255, size=(9, probe.preset.size, probe.preset.size, 3), dtype=np.uint8)
    _, emb = probe.logits_and_embeddings(imgs)
    bank = abstention.reference_tensors("knn", emb, np.arange(9) % 3, 3)
    art.extra_tensors = {k: torch.from_numpy(v) for k, v in bank.items()}
    art.abstain = {"method": "knn", "threshold": 0.0, "k": 5}
    artifact_mod.save(art, str(tmp_path / "knn"))
    return str(tmp_path / "knn")


def test_eval_curve_moves_the_threshold_the_model_decides_on(make_tiny_artifact, tmp_path):
    """A model trained without negatives tags on its kNN score, not on the softmax its rows carry: the curve's
    points are what `--min-score` at each of its thresholds gives (the curve was drawn on the softmax)."""
    from jobs.eval import EvalConfig, run as eval_run

    model = _knn_artifact(make_tiny_artifact, tmp_path)
    known, neg = _eval_photos(tmp_path, 4)
    base = EvalConfig(
        model=model,
        known=known,
        unknown=(str(Path(neg["root"], "wheel")),),
        runtime="torch",
    )
    curve = eval_run(base)["curve"]
    assert len(curve["threshold"]) > 3
    for k in (1, len(curve["threshold"]) // 2, len(curve["threshold"]) - 2):
        s = eval_run(replace(base, min_score=curve["threshold"][k]))["summary"]
        assert s["known_right"] == pytest.approx(curve["coverage"][k]), k
        assert s["unknown_tagged_mean_over_folders"] == pytest.approx(curve["unknown_tagged_mean_over_folders"][k]), k


def test_eval_names_each_unreadable_photo_and_counts_it_in_no_share(make_tiny_artifact, tmp_path, capsys):
    """A photo that cannot be read is in no share: it is named with its reason (as it happens, and in the result),
    counted in its folder's row, and a folder none of whose photos could be read still has its row."""
    from jobs.eval import format_table, main as eval_main
    from landmark_core.synthetic import generate_unknown

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    some, none = tmp_path / "some_bad", tmp_path / "all_bad"
    generate_unknown(some, n=3)
    for d, name in ((some, "broken.jpg"), (none, "a.jpg"), (none, "b.png")):
        d.mkdir(exist_ok=True)
        (d / name).write_bytes(b"not a photo")
    argv = ["--model", path, "--unknown", str(some), "--unknown", str(none), "--json", "--runtime", "torch"]
    assert eval_main(argv + ["--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["failed_photos"] == 3
    assert {(Path(f["path"]).name, f["folder"]) for f in result["failed"]} == {
        ("broken.jpg", "some_bad"),
        ("a.jpg", "all_bad"),
        ("b.png", "all_bad"),
    }
    assert all("not_an_image" in f["error"] for f in result["failed"])
    for f in result["failed"]:
        assert f"[eval] failed: {f['path']}: {f['error']}" in out.err
    rows = {r["folder"]: r for r in result["summary"]["folders"]}
    assert (rows["some_bad"]["photos"], rows["some_bad"]["failed"]) == (3, 1)
    assert (rows["all_bad"]["photos"], rows["all_bad"]["failed"]) == (0, 2)
    assert result["summary"]["unknown_photos"] == 3
    table = format_table(result)
    assert "3 photo(s) could not be read" in table
    assert [ln.split()[-1] for ln in table.splitlines() if ln.startswith(("some_bad", "all_bad"))] == ["1", "2"]
    assert "<td>all_bad</td><td>unknown</td><td>0</td>" in (tmp_path / "ev" / "report.html").read_text()
    import csv

    with open(tmp_path / "ev" / "photos.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6  # every file has its row, the unreadable ones too, with their reason
    bad = {(Path(r["path"]).name, r["error"]) for r in rows if r["outcome"] == "failed"}
    assert bad == {(Path(f["path"]).name, f["error"]) for f in result["failed"]}
    assert all(r["decision_score"] == "" and r["top1"] == "" for r in rows if r["outcome"] == "failed")


def test_catalog_look_alikes_of_a_known_folder_with_no_readable_photo_say_so(make_tiny_artifact, tmp_path, capsys):
    from jobs.eval import format_table, main as eval_main

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    folder = tmp_path / "known" / "00.Tower"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"not a photo")
    argv = [
        "--model",
        path,
        "--known",
        str(folder.parent),
        "--json",
        "--runtime",
        "torch",
        "--out",
        str(tmp_path / "ev"),
    ]
    assert eval_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["failed_photos"] == 1
    assert result["catalog_look_alikes"] == [
        {"folder": "00.Tower", "landmark": "Tower", "photos": 0, "tagged": None, "as": {}}
    ]
    assert [ln for ln in format_table(result).splitlines() if ln.startswith("  00.Tower")]
    assert "<td>00.Tower</td><td>0</td><td>-</td>" in (tmp_path / "ev" / "report.html").read_text()


def _check_report_in_chromium(
    page: Path, s: dict, tmp_path: Path, mistakes: list[dict] = (), look_alikes: list[dict] = ()
) -> None:
    """The report as a browser shows it: every folder's row, the headline figures, both plots embedded, the
    photos to look at, the catalog look-alikes, painted."""
    from tests.browser import rendered_dom, require_chromium, screenshot

    require_chromium()
    dom = rendered_dom(page.as_uri(), tmp_path)
    for folder in ("00.Tower", "01.Arch", "02.Dome", "scenes", "wheel"):
        assert f"<td>{folder}</td>" in dom, folder
    assert f"{100 * s['known_right']:.1f}%" in dom and "a calibrated score:" in dom
    assert dom.count("data:image/png;base64,") == 2
    assert "At other wrong-tag rates" in dom and "<th>--max-wrong-rate</th>" in dom
    for m in mistakes:
        assert f">{Path(m['path']).name}</td><td>{m['folder']}</td><td>{m['outcome']}</td>" in dom, m
    for title, kind in (("Known photos not right", "known"), ("Unknown photos tagged", "unknown")):
        n = sum(m["kind"] == kind for m in mistakes)
        assert (f"{title} ({n})" in dom) == bool(n), title
    assert ("Catalog look-alikes" in dom) == bool(look_alikes)
    for r in look_alikes:
        assert f"<td>{r['folder']}</td><td>{r['photos']}</td><td>{100 * r['tagged']:.1f}%</td>" in dom, r
    pixels = screenshot(page.as_uri(), tmp_path, size=(1200, 1600))
    assert pixels.std() > 20, "the report painted blank"


def test_eval_command_fails_fast_naming_the_flag(tiny_artifact, tmp_path, capsys):
    from jobs.eval import main as eval_main

    with pytest.raises(SystemExit) as e:
        eval_main(["--model", tiny_artifact.path, "--known", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, "--known", "no such directory")
    (tmp_path / "known" / "not_a_landmark").mkdir(parents=True)
    assert eval_main(["--model", str(tmp_path / "no-model"), "--known", str(tmp_path / "known")]) == 2
    assert_error_names(capsys.readouterr().err, "--model", "no-model is not a directory")
    from landmark_core.synthetic import generate_unknown

    generate_unknown(tmp_path / "known" / "not_a_landmark", n=1)
    generate_unknown(tmp_path / "known" / "00.Tower", n=1)  # a landmark's folder, listed before the stray one
    assert eval_main(["--model", tiny_artifact.path, "--known", str(tmp_path / "known"), "--runtime", "torch"]) == 2
    err = capsys.readouterr().err
    assert "'not_a_landmark' is not a landmark of the catalog of --model" in err
    assert "00.Tower: 1 files" not in err  # refused before any photo was read
    # a raw threshold no score of this model can reach: refused, not 100% abstained
    argv = ["--model", tiny_artifact.path, "--known", str(tmp_path / "known"), "--min-score", "2"]
    assert eval_main(argv) == 2
    assert_error_names(capsys.readouterr().err, "--min-score 2", "lies in")
    # photos with no class folder above them: nothing to score as known (it crashed on an empty concatenation)
    generate_unknown(tmp_path / "loose", n=2)
    model = ["--model", tiny_artifact.path, "--runtime", "torch"]
    assert eval_main(model + ["--known", str(tmp_path / "loose")]) == 2
    assert_error_names(capsys.readouterr().err, "--known", "no class folders")
    # the data set's root (train/ and test/ above the class folders): pointed at its test split
    generate_unknown(tmp_path / "set" / "test" / "x", n=1)
    assert eval_main(model + ["--known", str(tmp_path / "set")]) == 2
    assert_error_names(capsys.readouterr().err, "--known", f"give the test split, --known {tmp_path / 'set'}/test")
    # a GLDv2 root (train.csv, train/a/b/c/<id>.jpg): no test split and no class folders; data split makes both
    generate_unknown(tmp_path / "gld" / "train" / "a" / "b" / "c", n=1)
    (tmp_path / "gld" / "train.csv").write_text("id,url,landmark_id\n")
    assert eval_main(model + ["--known", str(tmp_path / "gld")]) == 2
    assert_error_names(capsys.readouterr().err, "--known", "a GLDv2 root", f"landmark data split {tmp_path / 'gld'}")
    for argv, said in (  # one folder twice, however spelt, or one inside another: its photos would count twice
        (["--unknown", str(tmp_path / "loose"), "--unknown", str(tmp_path / "set" / ".." / "loose") + "/"], "again"),
        (["--known", str(tmp_path / "set"), "--unknown", str(tmp_path / "set" / "test" / "x")], "holds the other"),
        (["--unknown", str(tmp_path / "set" / "test"), "--unknown", str(tmp_path / "set")], "holds the other"),
    ):
        with pytest.raises(SystemExit) as e:
            eval_main(model + argv)
        assert e.value.code == 2
        assert_error_names(capsys.readouterr().err, f"{argv[-2]} {argv[-1]}", said, "count twice")
    bad = {
        "--accept-rate": ["--unknown", str(tmp_path / "loose"), "--accept-rate", "1.5"],
        "--max-wrong-rate": ["--unknown", str(tmp_path / "loose"), "--max-wrong-rate", "1"],
        "--min-score": ["--unknown", str(tmp_path / "loose"), "--min-score", "nan"],
    }
    for flag, argv in bad.items():
        with pytest.raises(SystemExit) as e:
            eval_main(model + argv)
        assert e.value.code == 2
        assert_error_names(capsys.readouterr().err, flag)
    # a misspelt flag: argparse's error, with the flag it is closest to (none for one like no flag at all)
    with pytest.raises(SystemExit) as e:
        eval_main(model + ["--unknown", str(tmp_path / "loose"), "--knwon", "x", "--max-wrng-rate=0.1", "--zzz"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --knwon x --max-wrng-rate=0.1 --zzz" in err
    assert "(--knwon: did you mean --known?; --max-wrng-rate: did you mean --max-wrong-rate?)" in err, err
    # a misspelt required flag: argparse says the flag is missing before it says the other is unknown; the
    # hint names it all the same, and an unambiguous prefix of a flag (--unk) is no misspelling
    with pytest.raises(SystemExit) as e:
        eval_main(["--modle", str(tmp_path), "--unk", str(tmp_path / "loose"), "--known", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "the following arguments are required: --model (--modle: did you mean --model?)" in err
    assert "--unk:" not in err, err


def test_eval_names_each_unknown_folder_apart_from_the_others_and_by_more_than_a_split_name():
    """A row's folder is the path's last part, with parents added until it differs from every other folder's and
    is more than a split's name: two folders named coco, or the other city's test split, stay apart and legible."""
    from jobs.eval import folder_labels

    folders = ["../shared/data/real/porto/test", "/n/everyday/coco", "/m/coco/", "/n/everyday/pets", "s3://b/x/val"]
    assert folder_labels(folders) == ["porto/test", "everyday/coco", "m/coco", "pets", "x/val"]
    assert folder_labels(["a/test", "b/test", "test"]) == ["a/test", "b/test", "test"]  # no parent left to add


def test_an_unknown_folder_named_as_a_landmark_keeps_a_row_of_its_own(tmp_path):
    """--unknown .../halong_bay beside --known's halong_bay folder: one row held both, known and unknown photos
    mixed, and the unknown folder's share was lost."""
    from jobs.eval import EvalConfig, _listed
    from landmark_core.synthetic import generate_unknown

    known, neg = _eval_photos(tmp_path, 1)
    generate_unknown(tmp_path / "uploads" / "00.Tower", n=2)
    cfg = EvalConfig(model="m", known=known, unknown=(str(tmp_path / "uploads" / "00.Tower"), neg["root"]))
    rows = [(name, len(paths), folder) for name, paths, folder in _listed(cfg)]
    assert rows[:3] == [("00.Tower", 1, "00.Tower"), ("01.Arch", 1, "01.Arch"), ("02.Dome", 1, "02.Dome")]
    assert rows[3] == ("uploads/00.Tower", 2, None) and rows[4][0] == "neg" and rows[4][2] is None


def test_eval_out_that_cannot_be_a_folder_fails_before_any_work(tiny_artifact, tmp_path, capsys, monkeypatch):
    """--out a file, under a file, where no folder can be made, or s3://: exit 2 naming --out before the model is
    loaded (it was checked only when writing, after the whole evaluation: a FileExistsError traceback). The
    probe leaves no folder behind; an existing --out folder is written into, as before."""
    from jobs.eval import main as eval_main
    from landmark_core import predictor
    from landmark_core.synthetic import generate_unknown

    generate_unknown(tmp_path / "street", n=2)
    a_file = tmp_path / "a-file.jpg"
    a_file.write_text("not a folder")
    model = ["--model", tiny_artifact.path, "--unknown", str(tmp_path / "street"), "--runtime", "torch"]
    real_predictor = predictor.Predictor

    def no_work(*_a, **_k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(predictor, "Predictor", no_work)
    for out, needle in (
        (a_file, "a file is there"),
        (a_file / "sub", f"{a_file} is a file"),
        ("/proc/x", "cannot create it"),
        ("s3://bucket/eval", "local folder"),
    ):
        with pytest.raises(SystemExit) as e:
            eval_main(model + ["--out", str(out)])
        assert e.value.code == 2
        assert_error_names(capsys.readouterr().err, f"--out {out}", needle)
    monkeypatch.setattr(predictor, "Predictor", real_predictor)
    assert eval_main(model + ["--out", str(tmp_path / "new" / "ev"), "--min-score", "2"]) == 2  # fails in run
    assert_error_names(capsys.readouterr().err, "--min-score")
    assert not (tmp_path / "new").exists() and a_file.read_text() == "not a folder"
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "eval.json").write_text("{}")
    assert eval_main(model + ["--out", str(tmp_path / "ev"), "--json"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["summary"]


def test_eval_and_predict_read_photos_and_the_model_from_an_s3_compatible_store(
    make_tiny_artifact, tmp_path, capsys, s3, s3_bucket, monkeypatch
):
    """`--s3-endpoint`: eval's --known/--unknown prefixes, predict's s3:// photos and prefixes, and --model, on
    SeaweedFS; eval's numbers equal those of the same photos on disk. A prefix predict cannot list (no such
    bucket) is one failed answer, not a traceback."""
    from jobs.eval import main as eval_main
    from landmark_core import predict_cli

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    known, neg = _eval_photos(tmp_path, 2)
    for local, prefix in ((Path(path), "model"), (Path(known), "known"), (Path(neg["root"], "wheel"), "wheel")):
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            client.put_object(Bucket=s3_bucket, Key=f"{prefix}/{f.relative_to(local)}", Body=f.read_bytes())
    endpoint = ["--s3-endpoint", s3.endpoint, "--runtime", "torch", "--json"]
    on_disk = ["--model", path, "--known", known, "--unknown", str(Path(neg["root"], "wheel"))]
    assert eval_main(on_disk + endpoint) == 0
    want = json.loads(capsys.readouterr().out)["summary"]
    b = f"s3://{s3_bucket}"
    assert eval_main(["--model", f"{b}/model", "--known", f"{b}/known", "--unknown", f"{b}/wheel"] + endpoint) == 0
    got = json.loads(capsys.readouterr().out)["summary"]
    assert (got["known_photos"], got["unknown_photos"]) == (6, 2)
    for key in ("known_right", "known_abstained", "known_wrong", "unknown_tagged_mean_over_folders"):
        assert got[key] == pytest.approx(want[key]), key

    client.put_object(Bucket=s3_bucket, Key="notes/readme", Body=b"not a photo")
    for wheel in (f"{b}/wheel/", f"{b}/wheel"):  # a prefix with or without its slash, as the tag job's --input
        code = predict_cli.main(
            ["--json", "--model", f"{b}/model", "--s3-endpoint", s3.endpoint, wheel, "s3://no-such-bucket/x/"]
            + [f"{b}/notes/readme"]
        )
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["path"].split("/", 3)[-1] for r in rows[:2]] == ["wheel/wheel_0000.jpg", "wheel/wheel_0001.jpg"]
        assert all(r["status"] in ("tagged", "no_landmark") for r in rows[:2])
        assert rows[2]["status"] == "failed" and rows[2]["error"].startswith("list: ") and code == 1
        # an object with no photo's extension is tried as the photo it was named as, not listed as a prefix
        assert rows[3]["path"] == f"{b}/notes/readme" and rows[3]["status"] == "failed", rows[3]
        assert "decode" in rows[3]["error"] or "image" in rows[3]["error"], rows[3]


def test_eval_names_folders_the_model_learned_from(tmp_path, monkeypatch):
    """The training run's --data outside its test split, and its --negatives (a folder of them, or a folder
    holding them), are named as not held out; its test split, the other folders and other buckets are not. An
    artifact from before ``provenance.inputs`` is read from its flags, relative to the current folder."""
    from jobs.eval import EvalConfig, not_held_out

    data, neg = tmp_path / "vn", tmp_path / "negatives"
    for d in (data / "train" / "a", data / "test" / "a", neg / "everyday" / "pets", neg / "everyday" / "coco"):
        d.mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)  # the same photos under another name
    inputs = {"data": str(data), "negatives": [str(neg / "everyday" / "pets"), "s3://bucket/neg/streets"]}

    def said(known=None, *unknown, provenance=None):
        cfg = EvalConfig(model="m", known=known and str(known), unknown=tuple(map(str, unknown)))
        provenance = {"inputs": inputs} if provenance is None else provenance
        return [line.split(": ")[0] for line in not_held_out(cfg, provenance)]

    assert said(data / "test", neg / "everyday" / "coco", "s3://bucket/neg/other") == []
    assert said(data / "train") == [f"--known {data / 'train'}"]
    assert said(tmp_path / "link" / "train") == [f"--known {tmp_path / 'link' / 'train'}"]
    assert said(None, neg / "everyday" / "pets", neg, "s3://bucket/neg/streets/") == [
        f"--unknown {neg / 'everyday' / 'pets'}",
        f"--unknown {neg}",  # it holds a folder of them
        "--unknown s3://bucket/neg/streets/",
    ]
    assert said(None, data / "test" / "a") == [f"--unknown {data / 'test' / 'a'}"]  # its own landmarks
    monkeypatch.chdir(tmp_path)
    old = {"config": {"data": "vn", "negatives": ["negatives/everyday/pets"]}}
    assert said(data / "train", neg / "everyday" / "pets", provenance=old) == [
        f"--known {data / 'train'}",
        f"--unknown {neg / 'everyday' / 'pets'}",
    ]
    assert said(data / "train", provenance={}) == []  # nothing recorded: nothing to say


def test_eval_names_folders_holding_training_photos_through_links(tmp_path):
    """A folder whose files are the model's training photos reached through links (a split made of symbolic
    links, a hard link) is named as not held out, though its path is nowhere near the training folders; a copy
    of a photo is not the same file (the near-copies check finds those), and a folder named already is left."""
    import os

    from jobs.eval import linked_training_photos

    photos, split, other = tmp_path / "photos" / "louvre", tmp_path / "split" / "train" / "louvre", tmp_path / "other"
    for d in (photos, split, other):
        d.mkdir(parents=True)
    for i in range(4):
        (photos / f"{i}.jpg").write_bytes(b"jpeg %d" % i)
    for i in range(3):  # the user's own training split: links to three of the photos
        (split / f"{i}.jpg").symlink_to(photos / f"{i}.jpg")
    os.link(photos / "3.jpg", other / "hard.jpg")
    (other / "copy.jpg").write_bytes((photos / "0.jpg").read_bytes())
    reference = sorted(str(p) for p in split.iterdir())  # what training read
    folders = {
        f"--known {photos.parent}": sorted(str(p) for p in photos.iterdir()),
        f"--unknown {other}": sorted(str(p) for p in other.iterdir()),
        f"--unknown {tmp_path / 'gone'}": [str(tmp_path / "gone" / "x.jpg"), "s3://bucket/x.jpg"],
    }
    lines = linked_training_photos(folders, reference)
    assert [line.split(": ")[0] for line in lines] == [f"--known {photos.parent}"], lines
    assert "3 of its 4 photos are files the model learned from" in lines[0], lines
    hard = linked_training_photos(folders, reference + [str(photos / "3.jpg")])
    assert [line.split(": ")[0] for line in hard] == [f"--known {photos.parent}", f"--unknown {other}"], hard
    assert "1 of its 2 photos" in hard[1], hard  # the hard link, not the copy
    assert linked_training_photos(folders, reference, named=[f"--known {photos.parent}: inside --data"]) == []
    assert linked_training_photos(folders, []) == []


def test_eval_known_folders_may_be_named_by_landmark(make_tiny_artifact, tmp_path, capsys):
    """--known class folders named as the model's training folders ("01.Arch") or by the landmark's name
    ("Arch") score alike."""
    import shutil

    from jobs.eval import main as eval_main

    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path)
    known, _ = _eval_photos(tmp_path, 2)
    by_name = tmp_path / "by-name"
    shutil.copytree(known, by_name)
    (by_name / "01.Arch").rename(by_name / "Arch")
    rows = {}
    for root in (known, by_name):
        assert eval_main(["--model", path, "--known", str(root), "--runtime", "torch", "--json"]) == 0
        rows[root] = {r["folder"]: r for r in json.loads(capsys.readouterr().out)["summary"]["folders"]}
    assert sorted(rows[by_name]) == ["00.Tower", "02.Dome", "Arch"]
    assert {k: v for k, v in rows[by_name]["Arch"].items() if k != "folder"} == {
        k: v for k, v in rows[known]["01.Arch"].items() if k != "folder"
    }
