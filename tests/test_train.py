"""Ray Train job: artifacts, learning, faults (a killed worker, a killed driver), config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jobs.train import ConfigError, TrainConfig, main as train_main, run as train_run
from landmark_core import onnx_runtime as rt
from landmark_core.artifact import load as load_artifact
from landmark_core.predictor import Predictor
from tests.cli_asserts import assert_error_names
from tests.openworld_asserts import banks_without
from tests.procs import live_in_session, own_process_titles

ROOT = Path(__file__).resolve().parents[1]


def _cfg(data: str, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        data=data,
        output=str(tmp_path / "model"),
        storage=str(tmp_path / "ray_results"),
        workers=2,
        batch_size=16,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _checkpoint_epochs(storage_dir: Path) -> list[int]:
    epochs = []
    for p in storage_dir.glob("*/checkpoint_*/state.json"):
        try:
            epochs.append(json.loads(p.read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            pass  # being written
    return epochs


def _wait_for_checkpoint(storage_dir: Path, epoch: int, timeout: float, alive=lambda: True) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        if any(e >= epoch for e in _checkpoint_epochs(storage_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint for epoch {epoch} within {timeout}s")


def _train_worker_pids() -> list[int]:
    """PIDs of this test session's Ray Train worker processes (descendants of this process), from /proc."""
    return sorted(p for p, n in own_process_titles().items() if n.startswith("ray::RayTrainWorker"))


@pytest.mark.slow
def test_scratch_cnn_learns_through_a_killed_worker_and_a_killed_driver(tmp_path):
    """The scratch CNN learns the synthetic set through both faults of a training run, as a user runs it
    (`python -m jobs.train`, its own local Ray): a Ray Train worker SIGKILLed mid-run (Ray Train restarts the
    worker group from the last checkpoint), then the whole driver process group SIGKILLed (`--resume` continues
    from the last checkpoint). Every epoch is trained once in the history and the model still learns. One run
    checks all three: most of each one's time is the fixed cost of a run (Ray's and Ray Train's start, the
    evaluation, the artifact)."""
    from landmark_core.synthetic import generate_dataset

    generate_dataset(
        tmp_path / "data", n_classes=5, train_per_class=64, test_per_class=16, image_size=(96, 72), seed=11
    )
    storage_dir = tmp_path / "ray_results"
    # small photos and batches learn most per second: 76 of 80 test photos right without a fault (72 is the line)
    args = [sys.executable, "-m", "jobs.train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "model")]
    args += ["--storage", str(storage_dir), "--model", "scratch", "--workers", "2", "--epochs", "16"]
    args += ["--image-size", "64", "--batch-size", "16", "--patience", "30", "--max-failures", "2", "--no-report"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    alive = lambda: proc.poll() is None  # noqa: E731
    try:
        _wait_for_checkpoint(storage_dir, 3, timeout=240, alive=alive)
        written = max(_checkpoint_epochs(storage_dir))
        time.sleep(3)  # Ray Train's controller registers reported checkpoints asynchronously
        workers = [p for p in _train_worker_pids() if p in set(live_in_session(proc.pid))]
        assert workers, "no live Ray Train worker of the run to kill"
        os.kill(workers[-1], signal.SIGKILL)
        killed_at = max(_checkpoint_epochs(storage_dir))
        _wait_for_checkpoint(storage_dir, killed_at + 2, timeout=240, alive=alive)  # going on after the restart
        driver_written = max(_checkpoint_epochs(storage_dir))
        time.sleep(3)
        assert alive(), "the run finished before its driver could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from checkpoint after epoch" in done.stdout + done.stderr
    m = json.loads(Path(tmp_path, "model", "metrics.json").read_text())
    assert m["epochs"] == 16
    # each from the last registered checkpoint: Ray Train registers a reported one asynchronously, seconds later
    # on a loaded machine (CI: 3 written 3 s before the kill, resumed after 2), so the one before it at the oldest
    after_worker, after_driver = m["resumed_after_epochs"]
    assert written - 1 <= after_worker <= killed_at + 1, (written, killed_at, m["resumed_after_epochs"])
    assert after_driver >= driver_written - 1, (driver_written, m["resumed_after_epochs"])
    history = json.loads(Path(tmp_path, "model", "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 17))
    assert m["test_top1"] >= 0.90, m


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--model", "vgg_nonexistent"], "--model"),
        (["--workers", "0"], "--workers"),
        (["--epochs", "-1"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--accept-rate", "1.5"], "--accept-rate"),
        (["--output", "s3://Bad_Bucket/x"], "--output"),
        (["--storage", "gs://bucket/x"], "--storage"),
        (["--s3-endpoint", "localhost:9000"], "--s3-endpoint"),
        (["--model", "scratch", "--freeze-backbone"], "--freeze-backbone"),
        (["--negatives", ".", "--abstain-method", "msp"], "--abstain-method"),  # ignored with negatives: refused
        (["--negatives", ".", "--recognizer", "gallery"], "--recognizer"),
        (["--image-size", "5"], "--image-size"),  # workers crashed three times on a conv "Kernel size" error
        (["--image-size", "31"], "--image-size"),
        (["--crop-fraction", "0"], "--crop-fraction must be in (0, 1]"),
        (["--crop-fraction", "1.5"], "--crop-fraction must be in (0, 1]"),
        (["--crop-fraction", "nan"], "--crop-fraction must be a finite number in (0, 1]"),
        # each numeric flag in its range, named with it (these started Ray Train and failed in the workers, were
        # told as another flag's error, or trained on nonsense)
        (["--seed", "-1"], "--seed must be >= 0"),  # was numpy's "expected non-negative integer" under --data
        (["--seed", str(2**32)], "--seed must be below"),  # the workers' torch seeds overflow 64 bits
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--loader-workers", "-1"], "--loader-workers must be >= 0"),
        (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
        (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
        (["--patience", "0"], "--patience must be >= 1"),  # stopped as 1 does, not "never"
        (["--patience", "-1"], "--patience must be >= 1"),
        (["--cache-mb", "-1"], "--cache-mb must be >= 0"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
        (["--val-fraction", "0"], "--val-fraction must be in (0, 1)"),  # the threshold is fitted on validation
        (["--backbone-lr-mult", "-0.1"], "--backbone-lr-mult must be >= 0"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number >= 0"),
        (["--outlier-weight", "nan"], "--outlier-weight must be a finite number >= 0"),
        (["--cpus-per-worker", "nan"], "--cpus-per-worker must be a finite number > 0"),
        (["--cpus-per-worker", "inf"], "--cpus-per-worker must be a finite number > 0"),
        (["--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number >= 0"),
    ],
)
def test_bad_arguments_fail_fast_naming_the_flag(argv, flag, train_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    base = ["--data", train_data["root"], "--output", str(tmp_path / "m")]
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        train_main(base + argv)
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, flag)
    assert time.time() - t0 < 5  # before any cluster work


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--data", str(tmp_path / "nope"), "--output", str(tmp_path / "m")])
    assert exit_.value.code == 2 and not (tmp_path / "m").exists()
    assert_error_names(capsys.readouterr().err, "--data")


@pytest.mark.parametrize("flag", ["--unknown", "--negatives"])
def test_an_empty_photo_folder_is_a_clear_error_naming_its_flag(train_data, tmp_path, capsys, flag):
    (tmp_path / "empty").mkdir()
    argv = ["--data", train_data["root"], flag, str(tmp_path / "empty"), "--output", str(tmp_path / "m")]
    assert train_main(argv) == 2
    assert_error_names(capsys.readouterr().err, flag, "no images found")
    assert not (tmp_path / "m").exists()


def test_negatives_with_nothing_to_hold_back_are_refused_before_training(train_data, tmp_path, capsys):
    """One photo per folder leaves no negative to fit the threshold on: the model would quietly have been a
    closed-world one (and --members would have trained every run before failing)."""
    import shutil

    photos = sorted(Path(train_data["root"], "train").rglob("*.jpg"))[:2]
    for i, photo in enumerate(photos):
        (tmp_path / "neg" / f"f{i}").mkdir(parents=True)
        shutil.copy(photo, tmp_path / "neg" / f"f{i}")
    argv = ["--data", train_data["root"], "--negatives", str(tmp_path / "neg"), "--freeze-backbone"]
    assert train_main(argv + ["--members", "2", "--output", str(tmp_path / "m")]) == 2
    assert_error_names(capsys.readouterr().err, "--negatives", "0 held back", "at least 2")
    assert not (tmp_path / "m").exists()


def test_negatives_folders_too_small_for_the_wrong_tag_rate_are_named(train_data, tmp_path):
    """--max-wrong-rate caps the mean over the held-back folders: a folder so small that one of its photos is more
    than the rate of that mean lets none pass, and its highest-scoring photo sets the threshold. Said before the
    run, naming the folders; the README's open-world command (four folders, the smallest 28 held back) warns of
    nothing."""
    from jobs.train import _coarse_rate_warning, _load_inputs
    from landmark_core.datasets import Negatives
    from landmark_core.synthetic import generate_unknown

    neg = Negatives(groups=["everyday/big", "street/a", "street/b"], fit_groups=[0] * 100 + [1] + [2] * 3)
    warning = _coarse_rate_warning(neg, 0.01)
    assert "--max-wrong-rate 0.01 is finer than 2 of the 3 held-back" in warning
    assert "photos held back: 'street/a' 1, 'street/b' 3)" in warning and "fewer, larger folders" in warning
    assert _coarse_rate_warning(neg, 0.5) is None  # 1 / (3 x 1) under the rate: measurable
    readme = Negatives(groups=list("abcd"), fit_groups=[0] * 470 + [1] * 125 + [2] * 27 + [3] * 28)
    assert _coarse_rate_warning(readme, 0.01) is None  # one photo of c: 1 / 108 = 0.0093
    assert "'c' 27, 'd' 28)" in _coarse_rate_warning(readme, 0.005)
    for street in ("s1", "s2", "s3"):  # a --negatives root of small folders, as the job lists it
        generate_unknown(tmp_path / "neg" / street, n=2)
    cfg = TrainConfig(data=train_data["root"], output=str(tmp_path / "m"), negatives=(str(tmp_path / "neg"),))
    *_, warnings = _load_inputs(cfg, cfg.s3_options())
    assert [w for w in warnings if "is finer than 3 of the 3 held-back" in w], warnings


def test_a_run_without_negatives_is_told_it_makes_a_closed_world_model(train_data, tmp_path):
    """Without --negatives the score is a probability among the catalog's landmarks, and photos of other places get
    tagged: the run says so before it starts, naming the flag that changes it; with negatives it says nothing."""
    from jobs.train import _load_inputs
    from landmark_core.synthetic import generate_unknown

    cfg = TrainConfig(data=train_data["root"], output=str(tmp_path / "m"))
    data, _, _, warnings = _load_inputs(cfg, cfg.s3_options())
    notes = [w for w in warnings if "closed-world" in w]
    assert len(notes) == 1 and f"among its {len(data.catalog)} landmarks" in notes[0] and "--negatives DIR" in notes[0]
    generate_unknown(tmp_path / "neg" / "everyday", n=4)
    cfg = TrainConfig(data=train_data["root"], output=str(tmp_path / "m"), negatives=(str(tmp_path / "neg"),))
    *_, warnings = _load_inputs(cfg, cfg.s3_options())
    assert not [w for w in warnings if "closed-world" in w], warnings


def test_what_a_run_could_not_measure_is_said_before_it_starts(train_data, tmp_path):
    """A one-photo negatives folder beside good ones trains but holds nothing back, so the threshold leaves its
    kind of photo out; a --data root of bare class folders has no test split. Both are said before the run."""
    import shutil

    from jobs.train import _load_inputs
    from landmark_core.synthetic import generate_unknown

    generate_unknown(tmp_path / "neg" / "everyday", n=6)
    generate_unknown(tmp_path / "neg" / "tower", n=1)
    cfg = TrainConfig(data=train_data["root"], output=str(tmp_path / "m"), negatives=(str(tmp_path / "neg"),))
    data, _, negatives, warnings = _load_inputs(cfg, cfg.s3_options())
    assert negatives.groups == ["neg/everyday", "neg/tower"] and len(data.test)
    alone = [w for w in warnings if "hold one photo" in w]
    assert len(alone) == 1 and "1 --negatives folder(s) hold one photo ('neg/tower')" in alone[0], warnings
    assert not [w for w in warnings if "no test/ split" in w], warnings

    bare = tmp_path / "bare"
    shutil.copytree(Path(train_data["root"], "train"), bare)
    cfg = TrainConfig(data=str(bare), output=str(tmp_path / "m"), negatives=(str(tmp_path / "neg" / "everyday"),))
    data, _, _, warnings = _load_inputs(cfg, cfg.s3_options())
    assert not len(data.test) and not [w for w in warnings if "hold one photo" in w], warnings
    notes = [w for w in warnings if "no test/ split" in w]
    assert len(notes) == 1 and "landmark eval --known DIR" in notes[0] and "landmark data split" in notes[0], warnings


def test_the_pooled_run_names_each_runtime_s_threshold():
    """The tag job on a CPU cuts at the int8 fit's threshold, not the fp32 one: the last line names both."""
    from jobs.train import _thresholds_by_runtime

    abstain = {"threshold": 0.14213, "runtimes": {"onnx-int8": {"threshold": 0.16512}}}
    assert _thresholds_by_runtime(abstain) == "0.1421 (fp32; onnx-int8 0.1651)"
    assert _thresholds_by_runtime({"threshold": 0.2}) == "0.2000"


def test_the_pooled_test_line_names_each_runtime():
    from jobs.train import _test_text

    fp32 = {"photos": 40, "right": 0.9, "abstained": 0.1, "wrong": 0.0}
    int8 = {"photos": 40, "right": 0.85, "abstained": 0.125, "wrong": 0.025}
    assert _test_text({"torch": fp32, "onnx-int8": int8}) == (
        "; test fp32 right 0.9000, abstained 0.1000, wrong 0.0000; "
        "onnx-int8 right 0.8500, abstained 0.1250, wrong 0.0250"
    )
    assert _test_text(None) == ""


@pytest.mark.parametrize("how", ["inside", "linked"])
def test_negatives_that_are_the_data_s_own_photos_are_refused(how, train_data, tmp_path, capsys, monkeypatch):
    """The known landmarks' test folder given as --negatives (or links to --data's photos) would train the model
    to reject its own landmarks: refused while the photos are listed, before Ray."""
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    negatives = Path(train_data["root"], "test")
    if how == "linked":
        negatives = tmp_path / "neg"
        negatives.mkdir()
        for i, photo in enumerate(sorted(Path(train_data["root"], "train").rglob("*.jpg"))[:3]):
            (negatives / f"n{i}.jpg").symlink_to(photo)
    argv = ["--data", train_data["root"], "--negatives", str(negatives), "--output", str(tmp_path / "m")]
    assert train_main(argv) == 2
    assert_error_names(capsys.readouterr().err, f"--negatives {negatives}", "--data")
    assert not (tmp_path / "m").exists()


def test_an_output_holding_a_model_is_warned_of_unless_resuming(tiny_artifact, tmp_path, capsys):
    """Training into a folder that holds a model replaces it at the end: said first, in one line (re-running a
    command into its own folder is normal, so not refused); --resume continues that folder's run: no warning."""
    import shutil

    shutil.copytree(tiny_artifact.path, tmp_path / "m")
    (tmp_path / "data").mkdir()  # no photos: refused next, after the warning
    meta = json.loads((tmp_path / "m" / "artifact.json").read_text())
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "m"), "--storage", str(tmp_path / "ckpt")]
    assert train_main(argv) == 2
    out = capsys.readouterr().out
    date = meta["provenance"]["created_at"][:10]
    assert (
        f"[train] warning: --output {tmp_path / 'm'} holds model {meta['model_id']} (trained {date}); "
        "it will be replaced when this run finishes" in out
    ), out
    assert train_main(argv + ["--resume"]) == 2
    assert "holds model" not in capsys.readouterr().out
    assert train_main([*argv[:2], "--output", str(tmp_path / "new"), *argv[4:]]) == 2
    assert "holds model" not in capsys.readouterr().out


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        TrainConfig(data=".", output="o", model="alexnet9").check()
    assert "efficientnet_lite0" in str(e.value) and "resnet18" in str(e.value)


def test_flags_a_run_does_not_use_are_named_before_it_starts(tmp_path, capsys):
    """A flag set away from its default that the run ignores (fine-tuning flags on a frozen backbone, negatives'
    flags without --negatives) is one warning line each, before any work; the defaults warn of nothing."""
    base = dict(data=str(tmp_path), output=str(tmp_path / "o"), model="efficientnet_lite0")
    assert TrainConfig(**base).ignored_flags() == []
    assert TrainConfig(**base, freeze_backbone=True, negatives=("n",), members=3).ignored_flags() == []
    frozen = TrainConfig(**base, freeze_backbone=True, probe_epochs=5, outlier_weight=1.0, feature_views=2)
    assert frozen.ignored_flags() == [
        "--probe-epochs 5 has no effect with --freeze-backbone (it does not train)",
        "--outlier-weight 1.0 has no effect without --negatives",
    ]
    tuned = TrainConfig(**base, feature_views=2, max_wrong_rate=0.05, backbone_lr_mult=0.02)
    assert tuned.ignored_flags() == [
        "--feature-views 2 has no effect without --freeze-backbone",
        "--max-wrong-rate 0.05 has no effect without --negatives",
    ]
    assert TrainConfig(**{**base, "model": "scratch"}, probe_epochs=3).ignored_flags() == [
        "--probe-epochs 3 has no effect with --model scratch (no pretrained features to probe)"
    ]
    # printed by the job itself, before it reads the data (here: an empty folder, refused next)
    argv = ["--data", str(tmp_path), "--output", str(tmp_path / "o"), "--model", "efficientnet_lite0"]
    assert train_main(argv + ["--probe-epochs", "5", "--freeze-backbone"]) == 2
    out, err = capsys.readouterr()
    assert "[train] warning: --probe-epochs 5 has no effect with --freeze-backbone" in out and "--data" in err


def test_image_size_defaults_to_the_side_the_backbone_was_pretrained_at(tmp_path):
    base = dict(data=str(tmp_path), output=str(tmp_path / "o"))
    sides = {
        m: TrainConfig(**base, model=m).effective_image_size for m in ("scratch", "efficientnet_lite0", "resnet18")
    }
    assert sides == {"scratch": 224, "efficientnet_lite0": 224, "resnet18": 224}
    assert TrainConfig(**base, model="efficientnet_lite1").effective_image_size == 240
    assert TrainConfig(**base, model="efficientnet_lite2").effective_image_size == 260
    assert TrainConfig(**base, model="efficientnet_lite2", image_size=224).effective_image_size == 224
    TrainConfig(**base, model="efficientnet_lite2")._check_numbers()  # None is "the model's", not a bad value


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True], ids=["fine-tuned", "frozen"])
def test_training_with_negatives_makes_an_open_world_model(ray_local, train_data, tmp_path, capfd, frozen):
    """Training with --negatives, fine-tuned or --freeze-backbone (two DDP workers): outlier exposure in the epochs,
    distractors and a fitted P(right) in the artifact, the threshold capping the held-back negatives' tag rate;
    `landmark eval` on held-out look-alikes."""
    from jobs.eval import EvalConfig, run as eval_run
    from landmark_core.synthetic import generate_negatives

    neg = generate_negatives(
        tmp_path / "neg", shapes=("pyramid", "wheel", "castle"), scenes=24, per_shape=16, image_size=(160, 120)
    )
    held_out = generate_negatives(
        tmp_path / "held_out", shapes=("lighthouse", "columns"), scenes=12, per_shape=12, image_size=(160, 120), seed=9
    )
    coords = json.loads(Path(train_data["root"], "coords.json").read_text())
    nowhere = sorted(coords)[0]
    coords.pop(nowhere)  # one landmark without a location: train warns once, not once per member
    Path(tmp_path, "coords.json").write_text(json.dumps(coords))
    cfg = _cfg(
        train_data["root"],
        tmp_path,
        model="efficientnet_lite0",
        epochs=2,
        probe_epochs=5,
        image_size=96,
        negatives=(neg["root"],),
        max_wrong_rate=0.05,
        report=False,
        freeze_backbone=frozen,
        feature_views=2,
        members=2 if frozen else 1,  # the open-world command's shape: frozen, its decision pooled over runs
        crop_fraction=1.0 if frozen else 0.875,  # the whole square README measures beside the default crop
        coords=str(tmp_path / "coords.json"),
        unknown=str(held_out["root"]) if frozen else None,
    )
    metrics = train_run(cfg)
    out = capfd.readouterr().out
    assert out.count("landmarks have no location") == 1 and f"'{nowhere}'" in out, out[-3000:]
    # the minute after the last epoch is named: each run's own int8 fit (a pool's later members on its network)
    assert out.count("[train] fitting the onnx-int8 runtime's own score and threshold") == (2 if frozen else 1)
    assert out.count("(model built first)") == 1, out[-3000:]
    art = load_artifact(cfg.output)
    assert art.abstain["method"] == "openworld" and art.abstain["max_wrong_rate"] == 0.05
    # the eval crop the run trained on is the one the artifact's users (tag, serve, eval) read photos with
    assert (art.preprocess.size, art.preprocess.resize) == ((96, 96) if frozen else (96, 110))
    # what it learned from, absolute: eval warns when asked to measure it there, from any folder
    real = os.path.realpath
    assert art.provenance["inputs"] == {"data": real(train_data["root"]), "negatives": [real(neg["root"])]}
    assert art.abstain["negative_groups"] == ["neg/castle", "neg/pyramid", "neg/scenes", "neg/wheel"]
    for name in ("bank", "bank_labels", "distractors", "neg_fit_scores", "neg_fit_groups", "val_scores"):
        assert name in art.extra_tensors, name
    n_train_neg = sum(neg["folders"].values()) - len(art.extra_tensors["neg_fit_scores"])
    assert art.extra_tensors["distractors"].shape[0] == n_train_neg  # the training part became distractors
    own = metrics["members"]["runs"][0] if frozen else metrics  # a pool's runs each keep their own fit's metrics
    assert own["fit_wrong_rate"] <= 0.05  # the threshold's promise, on the photos it was fitted on
    # the int8 runtime the CPU tag job runs got its own fit, on its own features of the same photos
    int8 = art.abstain["runtimes"]["onnx-int8"]
    assert set(int8) == {"calibrator", "threshold", "recipe"} | ({"member_thresholds"} if frozen else set())
    assert int8["recipe"] == rt.RECIPE  # the model it was fitted on: a later recipe's Predictor says so
    assert "platt" in int8["calibrator"]
    assert len(art.extra_tensors["neg_fit_scores@onnx-int8"]) == len(art.extra_tensors["neg_fit_scores"])
    assert len(art.extra_tensors["val_scores@onnx-int8"]) == len(art.extra_tensors["val_scores"])
    assert own["fit_runtimes"]["onnx-int8"]["fit_wrong_rate"] <= 0.05
    assert Predictor(cfg.output, runtime="onnx-int8").threshold == pytest.approx(int8["threshold"])
    if frozen:  # the pool's last line names the threshold the CPU tag job cuts at, beside the fp32 one
        assert f"threshold {art.abstain['threshold']:.4f} (fp32; onnx-int8 {int8['threshold']:.4f})" in out, out[-800:]
        _check_members(cfg, art, metrics, held_out["root"])
        _check_members_resume(cfg, metrics, capfd)
    result = eval_run(
        EvalConfig(
            model=cfg.output,
            known=str(Path(train_data["root"], "test")),
            unknown=tuple(str(Path(held_out["root"], f)) for f in held_out["folders"]),
            runtime="torch",
        )
    )
    s = result["summary"]
    # every known photo is right, abstained or wrong; the score is a probability among tagged photos
    assert s["known_right"] + s["known_abstained"] + s["known_wrong"] == pytest.approx(1.0)
    assert s["known_right"] >= 0.5, s
    assert s["unknown_tagged_mean_over_folders"] < s["known_right"], s
    if not frozen:  # (a pool tags between its members, photo by photo: checked in _check_members)
        assert s["unknown_tagged_mean_over_folders"] <= 0.5, s
    assert s["ece_tagged"] is None or 0 <= s["ece_tagged"] <= 1
    # eval's rows at other rates: the trained rate's is the threshold eval ran (a pool's, pooled) and its shares
    (trained,) = [r for r in result["rates"] if r["max_wrong_rate"] == cfg.max_wrong_rate]
    assert trained["threshold"] == pytest.approx(result["threshold"], rel=1e-6)
    assert trained["coverage"] == pytest.approx(s["known_right"])
    assert result["not_held_out"] == []  # its test split and look-alikes it never saw
    if frozen:  # its training photos and a folder of its negatives: both named as not held out
        train_dir, wheel = str(Path(train_data["root"], "train")), str(Path(neg["root"], "wheel"))
        leaked = eval_run(EvalConfig(model=cfg.output, known=train_dir, unknown=(wheel,), runtime="torch"))
        assert [line.split(": ")[0] for line in leaked["not_held_out"]] == [
            f"--known {train_dir}",
            f"--unknown {wheel}",
        ]


def _check_members_resume(cfg, metrics, capfd) -> None:
    """--members --resume: a member whose run had finished is taken as it is (no Ray Train run); one cut off
    while its artifact was made continues its own run from its last checkpoint (no epoch trained again); the same
    pool is written again. A finished member resumed with other flags is made again, naming them."""
    from dataclasses import replace

    from jobs.train import MEMBER_DONE, _finished_member

    (marker,) = Path(cfg.storage).glob(f"model-m1-*/{MEMBER_DONE}")
    marker.unlink()  # member 2 as if the driver died before its artifact was kept
    again = train_run(replace(cfg, resume=True, name="model", output=str(Path(cfg.output).parent / "again")))
    out = capfd.readouterr().out
    assert out.count("finished before the cut: its artifact taken as it is") == 1, out
    assert out.count("continuing its run") == 1 and out.count("resumed from checkpoint after epoch") == 1, out
    assert "[train] epoch" not in out, out
    assert again["members"]["thresholds"] == pytest.approx(metrics["members"]["thresholds"])
    assert again["members"]["test"] == pytest.approx(metrics["members"]["test"])
    assert again["model_id"] == metrics["model_id"]  # the same pool, byte for byte
    first = replace(cfg, members=1, name="model-m0", resume=True, output=str(Path(cfg.output).parent / "m0"))
    assert _finished_member(first)["model_id"] == metrics["members"]["runs"][0]["model_id"]
    assert _finished_member(replace(first, max_wrong_rate=0.1, epochs=3)) is None
    assert "model-m0: finished with other values of --epochs, --max-wrong-rate: its artifact is made again" in (
        capfd.readouterr().out
    )


def _check_members(cfg, art, metrics, photos_root) -> None:
    """--members 2: the second run's head, banks and own int8 fit in the artifact; the stored thresholds and every
    row's score are the pooled ones (mean log-odds), so each photo's decision lies between its members'; what cannot
    be pooled is refused by name."""
    from dataclasses import replace

    from landmark_core import enroll, members, openworld
    from landmark_core.calibration import threshold_at_accept_rate
    from landmark_core.storage import S3Options
    from landmark_core.training import eval_arrays

    (block,) = art.abstain["members"]
    assert block["seed"] == cfg.seed + 1 and metrics["members"]["seeds"] == [cfg.seed, cfg.seed + 1]
    for name in members.TENSORS + members.STORED + tuple(f"{k}@onnx-int8" for k in members.STORED):
        assert f"member1.{name}" in art.extra_tensors, name
    # the runs drew their own splits: their held-back negatives and thresholds differ
    assert not np.array_equal(art.extra_tensors["member1.neg_fit_scores"], art.extra_tensors["neg_fit_scores"])
    assert art.abstain["member_thresholds"] == pytest.approx(metrics["members"]["thresholds"])
    assert art.abstain["threshold"] == pytest.approx(float(members.pool(art.abstain["member_thresholds"])))
    int8 = art.abstain["runtimes"]["onnx-int8"]
    own = int8["member_thresholds"]
    assert own[1] == block["runtimes"]["onnx-int8"]["threshold"] and own[0] != own[1]
    assert int8["threshold"] == pytest.approx(float(members.pool(own)))
    t = metrics["members"]["test"]
    assert t["photos"] > 0 and t["right"] + t["abstained"] + t["wrong"] == pytest.approx(1.0)
    assert metrics["test_false_abstain"] == t["abstained"] and "fit_wrong_rate" not in metrics  # the pool's, only
    by_runtime = metrics["members"]["test_by_runtime"]  # the CPU tag job's decision, beside fp32's
    assert list(by_runtime) == ["torch", "onnx-int8"] and by_runtime["torch"] == t
    int8_test = by_runtime["onnx-int8"]
    assert int8_test["photos"] == t["photos"]
    assert int8_test["right"] + int8_test["abstained"] + int8_test["wrong"] == pytest.approx(1.0)
    ow = metrics["open_world"]  # --unknown: eval's numbers, for the pooled decision
    assert (ow["known_photos"], ow["known_right"], ow["known_abstained"]) == (t["photos"], t["right"], t["abstained"])
    assert ow["unknown_photos"] == len(list(Path(photos_root).rglob("*.jpg")))
    assert metrics["members"]["runs"][0]["open_world"] != ow  # (each run's own is kept beside it)
    assert [r["abstain_threshold"] for r in metrics["members"]["runs"]] == metrics["members"]["thresholds"]
    pred = Predictor(cfg.output, runtime="onnx-int8")
    # the held-out look-alikes and the known test photos: both sides of the decision (both members tag, neither
    # does) hold photos
    uris = sorted(str(p) for p in Path(photos_root).rglob("*.jpg"))
    test_uris = sorted(str(p) for p in Path(cfg.data, "test").rglob("*.jpg"))
    images, ok = eval_arrays(uris + test_uris, S3Options(), pred.preset)
    assert ok.all()
    out = pred.predict_arrays(images)
    logits, emb = pred.logits_and_embeddings(images)
    alone = openworld.prob_right(
        openworld.features(logits, emb, temperature=pred.temperature, extra=pred.extra), pred.calibrator
    )
    second = members.score(pred.members[0], emb)
    np.testing.assert_allclose(out["abstain_score"], members.pool([alone, second]), rtol=1e-5)
    tagged = out["status"] == "tagged"
    assert (tagged == (out["abstain_score"] >= pred.threshold)).all()
    np.testing.assert_allclose(pred.open_world_scores(logits, emb), out["abstain_score"], rtol=1e-5)
    # a landmark left out (`landmark eval`'s catalog look-alikes) is the pool of models physically without it
    np.testing.assert_allclose(
        pred.open_world_scores(logits, emb, absent=1),
        members.pool(
            [_without_landmark(pred, 1, logits, emb), members.score(_member_without(pred.members[0], 1), emb)]
        ),
        rtol=1e-5,
    )
    by_member = np.stack([alone >= own[0], second >= own[1]])
    assert by_member.all(axis=0).any() and (~by_member.any(axis=0)).any(), by_member.sum(axis=1)
    assert tagged[by_member.all(axis=0)].all() and not tagged[~by_member.any(axis=0)].any()
    out = {k: v[: len(uris)] for k, v in out.items()}  # the look-alikes alone, for the tag job below
    # the nightly job (Ray Data tasks, the ONNX model shipped from the driver) gives each photo the pool's answer
    from jobs.tag import TagConfig, run as tag_run
    from landmark_core import tagstore

    tags = str(Path(cfg.output).parent / "tags")
    assert tag_run(TagConfig(input=str(photos_root), output=tags, model=cfg.output))["runtime"] == "onnx-int8"
    rows = {r["uri"]: r for r in tagstore.read(tags).to_pylist()}
    assert sorted(rows) == [str(Path(u).resolve()) for u in uris]
    got = [rows[str(Path(u).resolve())] for u in uris]
    assert [r["status"] for r in got] == list(out["status"])
    np.testing.assert_allclose([r["score"] for r in got], out["score"], rtol=1e-5)
    # the second member's int8 fit was made on what the pool scores it with: the first member's int8 embedding
    # through its own head (not its own int8 model's quantised logits)
    from landmark_core.datasets import load_negatives
    from landmark_core.tagging import read_and_decode

    fit_uris = load_negatives(cfg.negatives, fit_fraction=0.5, seed=cfg.seed + 1).fit
    batch = {"uri": fit_uris, "etag": [None] * len(fit_uris), "size_bytes": [None] * len(fit_uris)}
    decoded = read_and_decode(batch, preset=pred.preset, opts=S3Options())
    _, fit_emb = pred.logits_and_embeddings(decoded["image"][decoded["ok"]])
    np.testing.assert_allclose(
        members.score(pred.members[0], fit_emb),
        art.extra_tensors["member1.neg_fit_scores@onnx-int8"].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    # a rate given at tag time moves every member's threshold, pooled the same way
    strict = Predictor(cfg.output, runtime="onnx-int8", max_wrong_rate=0.0)
    assert strict.threshold >= pred.threshold
    # the training rate given again is the trained threshold, to the float: the rate enters only the threshold,
    # so a model is measured at another rate without retraining (the README's rate rows)
    for runtime, trained in (("onnx-int8", pred.threshold), ("torch", art.abstain["threshold"])):
        again = Predictor(cfg.output, runtime=runtime, device="cpu", max_wrong_rate=cfg.max_wrong_rate)
        assert again.threshold == pytest.approx(trained, rel=1e-6), runtime
    at_half = [  # --accept-rate: from each member's own int8 validation scores
        threshold_at_accept_rate(art.extra_tensors[f"{m}val_scores@onnx-int8"].numpy(), 0.5) for m in ("", "member1.")
    ]
    loose = Predictor(cfg.output, runtime="onnx-int8", accept_rate=0.5)
    assert loose.threshold == pytest.approx(float(members.pool(at_half)))
    # the members' heads all know every landmark: taking one out needs a new training run, and says so
    with pytest.raises(enroll.EnrollError, match="--members"):
        enroll.remove(art, art.catalog.names[0])
    # combining checks what the pool needs: one frozen network, open-world members, no pool inside a pool
    plain = replace(art, abstain={k: v for k, v in art.abstain.items() if k != "members"})
    key = next(k for k in plain.state_dict if k not in members.HEAD)
    cases = {
        "already a pooled model": [art, plain],
        "backbone differs": [plain, replace(plain, state_dict={**plain.state_dict, key: plain.state_dict[key] + 1})],
        "not an open-world model": [plain, replace(plain, abstain={"method": "msp", "threshold": 0.5})],
    }
    for message, arts in cases.items():
        with pytest.raises(members.MembersError, match=message):
            members.combine(arts)


def test_training_warns_of_landmarks_with_no_location():
    """A landmark with no location makes tags that cannot say where a photo was taken: train says which, and how
    to give them; folders the catalog knows (the Udacity 50, the real sets) need nothing."""
    from jobs.train import location_warning
    from landmark_core.catalog import Catalog

    assert location_warning(Catalog.from_folders(["00.Haleakala_National_Park", "halong_bay"])) is None
    mine = [f"spot {i}" for i in range(7)]
    warning = location_warning(Catalog.from_folders(mine + ["halong_bay"]))
    assert "7 of 8 landmarks have no location" in warning
    assert "'spot 0', 'spot 1', 'spot 2', 'spot 3', 'spot 4' and 2 more" in warning
    assert "--coords" in warning and "coords.json" in warning
    coords = {f: {"lat": 1.0, "lon": 2.0} for f in mine}
    assert location_warning(Catalog.from_folders(mine, coords=coords)) is None


# ------------------------------------------------------------------ the data's own problems, said before Ray


def _no_ray(monkeypatch):
    """Stops a run where Ray would start, with exit 2: what was printed before it is the test's."""
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: (_ for _ in ()).throw(ConfigError("(no Ray here)")))


def _tiny_data(root: Path, folders=("00.Tower", "01.Arch"), photos: int = 3) -> str:
    from landmark_core.synthetic import render_scene

    for folder in folders:
        (root / folder).mkdir(parents=True)
        for i in range(photos if folder != "03.Lone" else 1):
            render_scene("tower", np.random.default_rng(i), size=(64, 48)).save(root / folder / f"{i}.jpg", "JPEG")
    return str(root)


@pytest.mark.parametrize(
    "row, message",
    [
        ("hoian_town,abc,108.3,VN", "line 3: lat 'abc' is not a number"),
        ("01.Arch,123.0,107.18,VN", "line 3: lat 123.0 is out of range"),
        ("01.Arch,21.0,,VN", "line 3: lat and lon must both be set or both be empty"),
    ],
)
def test_a_bad_coords_row_names_the_flag_the_file_and_its_line(row, message, tmp_path, capsys, monkeypatch):
    """It said `--data: could not convert string to float: 'abc'` (or the matched folder's name): no file, no line."""
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    data = _tiny_data(tmp_path / "data")
    coords = tmp_path / "coords.csv"
    coords.write_text(f"folder,lat,lon,country\n00.Tower,10,20,VN\n{row}\n")
    assert train_main(["--data", data, "--output", str(tmp_path / "m"), "--coords", str(coords)]) == 2
    assert_error_names(capsys.readouterr().err, f"--coords {coords} {message}")
    (tmp_path / "data" / "coords.csv").write_text(coords.read_text())  # read since --coords is not given
    assert train_main(["--data", data, "--output", str(tmp_path / "m")]) == 2
    assert_error_names(capsys.readouterr().err, f"--data {data}: {data}/coords.csv {message}")


def test_coords_rows_that_match_no_folder_are_named_in_one_warning(tmp_path, capsys, monkeypatch):
    """A misspelt folder's row was ignored without a word, and the location warning asked for --coords FILE."""
    _no_ray(monkeypatch)
    data = _tiny_data(tmp_path / "data")
    coords = tmp_path / "coords.csv"
    coords.write_text("folder,lat,lon\n00.Tower,10,20\n01.Archh,1,2\n")
    assert train_main(["--data", data, "--output", str(tmp_path / "m"), "--coords", str(coords)]) == 2
    out = capsys.readouterr().out
    assert (
        f"[train] warning: --coords {coords}: 1 of its 2 rows names no class folder of --data, ignored: '01.Archh' "
        "(the folders: '00.Tower', '01.Arch')\n" in out
    ), out
    assert "1 of 2 landmarks have no location ('01.Arch'): " in out and f"their rows in --coords {coords}" in out
    # no row names a folder (names where the folders are ids, or another data set's file): refused before Ray
    coords.write_text("folder,lat,lon\nEiffel Tower,48.86,2.29\n1004,1,2\n")
    assert train_main(["--data", data, "--output", str(tmp_path / "m"), "--coords", str(coords)]) == 2
    assert_error_names(
        capsys.readouterr().err,
        f"--coords {coords}: none of its 2 rows names a class folder of --data ('Eiffel Tower', '1004'; the folders: "
        "'00.Tower', '01.Arch')",
    )
    coords.write_text("00.Tower,10,20\n")  # no header line: its one row is taken for the header, no rows left
    assert train_main(["--data", data, "--output", str(tmp_path / "m"), "--coords", str(coords)]) == 2
    assert_error_names(capsys.readouterr().err, f"--coords {coords} line 1: header '00.Tower,10,20'")
    coords.write_text("folder,lat,lon\n")
    assert train_main(["--data", data, "--output", str(tmp_path / "m"), "--coords", str(coords)]) == 2
    assert f"warning: --coords {coords} has no rows: expected the header line folder,lat,lon" in capsys.readouterr().out


def test_a_pool_s_bad_input_is_one_error_before_any_member(tmp_path, capsys, monkeypatch):
    """--members K: an empty --negatives folder was refused under a "member 1 of K" line, as if a run had begun."""
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    data = _tiny_data(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    argv = ["--data", data, "--output", str(tmp_path / "m"), "--freeze-backbone", "--members", "3"]
    assert train_main([*argv, "--negatives", str(tmp_path / "empty")]) == 2
    out, err = capsys.readouterr()
    assert "member" not in out, out
    assert_error_names(err, "--negatives", "no images found")


@pytest.mark.parametrize("second", ["Sapa_Rice_Terraces", "Sa Pa Rice Terraces"])
def test_two_folders_of_one_landmark_name_are_refused_before_ray(second, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    data = _tiny_data(tmp_path / "data", folders=("sapa_rice_terraces", second, "hoian_town"))
    assert train_main(["--data", data, "--output", str(tmp_path / "m")]) == 2
    assert_error_names(capsys.readouterr().err, "--data", f"'{second}' and 'sapa_rice_terraces'")


@pytest.mark.parametrize("negatives", [False, True])
def test_one_landmark_is_refused_before_ray(negatives, tmp_path, capsys, monkeypatch):
    """One class: the model tagged a cat as it at 100%; with --negatives (tried) the head learnt nothing and the
    model abstained on every test photo of its landmark."""
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    data = _tiny_data(tmp_path / "data", folders=("00.Tower",))
    neg = ["--negatives", _tiny_data(tmp_path / "neg", folders=("cats",))] if negatives else []
    assert train_main(["--data", data, "--output", str(tmp_path / "m"), *neg]) == 2
    assert_error_names(capsys.readouterr().err, f"--data {data}: 1 landmark ('00.Tower')", "at least 2")


def test_a_landmark_with_one_photo_is_warned_of(tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    data = _tiny_data(tmp_path / "data", folders=("00.Tower", "01.Arch", "03.Lone"))
    assert train_main(["--data", data, "--output", str(tmp_path / "m")]) == 2
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "no validation photo" in ln]
    assert len(lines) == 1 and "1 of 3 landmarks have no validation photo ('03.Lone'" in lines[0], lines


def test_resume_with_no_earlier_run_fails_before_ray_naming_the_absolute_storage(tmp_path, capsys, monkeypatch):
    """It took a local Ray's ~20 s start to say so, and named --storage as given (relative, by default)."""
    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    monkeypatch.chdir(tmp_path)
    data = _tiny_data(tmp_path / "data")
    assert train_main(["--data", data, "--output", "m", "--resume"]) == 2
    assert_error_names(capsys.readouterr().err, f"--resume: no earlier run named 'm' under --storage {tmp_path}/out/")
    pool = ["--members", "2", "--freeze-backbone", "--negatives", _tiny_data(tmp_path / "neg", folders=("cats",))]
    assert train_main(["--data", data, "--output", "m", "--resume", *pool]) == 2
    assert_error_names(capsys.readouterr().err, f"(members m-m0 to m-m1) under --storage {tmp_path}/out/")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert "default out/ray_results" in " ".join(capsys.readouterr().out.split())


def test_ctrl_c_while_training_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Ray Train's SIGINT handler leaves fit() by SystemExit(1): it exited 1 with no word of ours. By hand (a real
    run, SIGINT to its process group after the first epoch): exit 130, this line, the checkpoints kept."""
    import signal as signals

    from jobs import train

    before = signals.getsignal(signals.SIGINT)
    with pytest.raises(train.Interrupted):
        with train._interrupt_says_resume():
            signals.signal(signals.SIGINT, lambda *a: None)  # as fit() sets Ray Train's own
            raise SystemExit(1)
    assert signals.getsignal(signals.SIGINT) is before  # put back: Ctrl-C while finalizing is ours again

    def interrupted(cfg, **kw):
        raise train.Interrupted()

    monkeypatch.setattr("jobs.train._train_one", interrupted)
    assert train_main(["--data", _tiny_data(tmp_path / "data"), "--output", str(tmp_path / "m")]) == 130
    err = capsys.readouterr().err
    assert err == (
        "landmark train: interrupted; rerun the same command with --resume to continue from the last checkpoint\n"
    )


def test_a_pool_s_last_line_is_the_pooled_model_s(capsys):
    from jobs.train import _show

    pooled = {
        "val_top1": 0.9,
        "test_top1": 0.8,
        "abstain_threshold": 0.5,
        "members": {"count": 2, "test": {"photos": 10, "right": 0.7, "abstained": 0.2, "wrong": 0.1}},
    }
    _show(pooled, None)
    assert json.loads(capsys.readouterr().out) == {
        "members": 2,
        "test_right": 0.7,
        "test_abstained": 0.2,
        "test_wrong": 0.1,
        "val_top1": 0.9,
        "test_top1": 0.8,
    }


def _without_landmark(pred, absent: int, logits, emb):
    """The first member's score with the landmark's head column and bank photos removed by hand."""
    from landmark_core import openworld

    reduced = np.concatenate([logits[:, :absent], logits[:, absent + 1 :]], axis=1)
    x = openworld.features(reduced, emb, temperature=pred.temperature, extra=banks_without(pred.extra, absent))
    return openworld.prob_right(x, pred.calibrator)


def _member_without(member: dict, absent: int) -> dict:
    t = banks_without(member["tensors"], absent)
    rows = np.arange(len(t["weight"])) != absent
    return {**member, "tensors": {**t, "weight": t["weight"][rows], "bias": t["bias"][rows]}}
