"""Training pieces without Ray, on the CPU: the checkpoint format (with the AMP GradScaler's state) and the driver's
finalize step reporting the best epoch the worker kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landmark_core.training import TrainState, load_checkpoint_dir, save_checkpoint_dir


def _stepped_scaler() -> torch.amp.GradScaler:
    """A CPU GradScaler that has taken real steps: one skipped on an inf gradient (scale backed off), one good
    (growth tracker 1), so every field of its state differs from a fresh scaler's."""
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=7)
    for x in (torch.tensor([[float("inf"), 1.0, 1.0]]), torch.ones(1, 3)):
        opt.zero_grad()
        scaler.scale(net(x).sum()).backward()
        scaler.step(opt)
        scaler.update()
    return scaler


def test_checkpoint_round_trips_the_grad_scaler_state(tmp_path):
    scaler = _stepped_scaler()
    saved = scaler.state_dict()
    assert saved["scale"] == 2.0**11 and saved["_growth_tracker"] == 1  # it really stepped
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint_dir(
        tmp_path,
        net_state=net.state_dict(),
        best_state=net.state_dict(),
        optim_state=opt.state_dict(),
        sched_state=sched.state_dict(),
        scaler_state=saved,
        state=TrainState(epoch=2, history=[]),
    )

    _, _, optim, state = load_checkpoint_dir(tmp_path)
    assert state.epoch == 2 and optim["scaler"] == saved
    resumed = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    resumed.load_state_dict(optim["scaler"])
    assert resumed.get_scale() == 2.0**11 and resumed.state_dict() == saved


def test_worker_resumes_with_the_checkpointed_loss_scale(tmp_path):
    """The worker's restore step (alone: no Ray Train session) puts the saved scale into its (enabled) scaler."""
    from ray.train import Checkpoint

    from jobs._train_worker import Worker

    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    save_checkpoint_dir(
        tmp_path,
        net_state=net.state_dict(),
        best_state=net.state_dict(),
        optim_state=opt.state_dict(),
        sched_state=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0).state_dict(),
        scaler_state=_stepped_scaler().state_dict(),
        state=TrainState(epoch=4, history=[]),
    )
    w = Worker.__new__(Worker)
    w.rank, w.net = 0, torch.nn.Linear(3, 1)
    w.optimizer = torch.optim.SGD(w.net.parameters(), lr=0.1)
    w.scheduler = torch.optim.lr_scheduler.LambdaLR(w.optimizer, lambda s: 1.0)
    w.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # enabled, as it is on a GPU
    w._restore(Checkpoint.from_directory(str(tmp_path)))
    assert w.scaler.get_scale() == 2.0**11 and w.scaler.state_dict()["_growth_tracker"] == 1
    assert w.state.epoch == 4 and w.state.resumed_after == [4]


def _bare_worker(world: int = 1):
    """A Worker with what _restore needs, and no Ray Train session."""
    from jobs._train_worker import Worker

    w = Worker.__new__(Worker)
    w.rank, w.world, w.cuda, w.resumed_rng, w.net = 0, world, False, None, torch.nn.Linear(3, 1)
    w.optimizer = torch.optim.SGD(w.net.parameters(), lr=0.1)
    w.scheduler = torch.optim.lr_scheduler.LambdaLR(w.optimizer, lambda s: 1.0)
    w.scaler = torch.amp.GradScaler("cpu", enabled=False)
    return w


def _checkpoint(path, w, rng_states):
    save_checkpoint_dir(
        path,
        net_state=w.net.state_dict(),
        best_state=w.net.state_dict(),
        optim_state=w.optimizer.state_dict(),
        sched_state=w.scheduler.state_dict(),
        state=TrainState(epoch=3, history=[]),
        rng_states=rng_states,
    )


def test_a_resumed_worker_draws_what_the_uninterrupted_one_would_have(tmp_path, capsys):
    """The checkpoint keeps the worker's random state; a resumed worker continues from it (after its own start-up
    draws), so the epochs after a kill get the augmentations and dropout masks of a run that was never killed."""
    from ray.train import Checkpoint

    torch.manual_seed(7)
    first = _bare_worker()
    _checkpoint(tmp_path / "ckpt", first, first._rng_states())
    uninterrupted = torch.rand(8)

    torch.manual_seed(7)  # a new worker process: seeded alike, then its start-up draws (the feature cache, ...)
    torch.rand(100)
    resumed = _bare_worker()
    resumed._restore(Checkpoint.from_directory(str(tmp_path / "ckpt")))
    resumed._continue_random_state()
    assert torch.equal(torch.rand(8), uninterrupted)

    # resumed with another number of workers (their shards differ anyway): said, and the draws go on afresh
    other = _bare_worker(world=2)
    other._restore(Checkpoint.from_directory(str(tmp_path / "ckpt")))
    before = torch.get_rng_state()
    other._continue_random_state()
    assert torch.equal(torch.get_rng_state(), before)
    assert "random state is of 1 worker(s), this run has 2" in capsys.readouterr().out

    # a checkpoint from before random states were kept resumes as it always did
    _checkpoint(tmp_path / "old", first, None)
    old = _bare_worker()
    old._restore(Checkpoint.from_directory(str(tmp_path / "old")))
    before = torch.get_rng_state()
    old._continue_random_state()
    assert torch.equal(torch.get_rng_state(), before) and old.resumed_rng is None


def test_final_checkpoint_has_no_optimiser_and_a_disabled_scaler_saves_nothing(tmp_path):
    net = torch.nn.Linear(3, 1)
    save_checkpoint_dir(
        tmp_path / "final",
        net_state=net.state_dict(),
        best_state=net.state_dict(),
        optim_state=None,
        sched_state=None,
        scaler_state={},
        state=TrainState(history=[]),
    )
    assert load_checkpoint_dir(tmp_path / "final")[2] is None
    off = torch.amp.GradScaler("cpu", enabled=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    save_checkpoint_dir(
        tmp_path / "off",
        net_state=net.state_dict(),
        best_state=net.state_dict(),
        optim_state=opt.state_dict(),
        sched_state=None,
        scaler_state=off.state_dict(),
        state=TrainState(history=[]),
    )
    assert load_checkpoint_dir(tmp_path / "off")[2]["scaler"] == {}  # the worker skips loading it


def _finalize_inputs(synthetic_data, tmp_path, **overrides):
    """The synthetic dataset, its number of landmarks and a scratch-model TrainConfig, for finalize on a
    checkpoint the test writes by hand."""
    from jobs.train import TrainConfig
    from landmark_core.datasets import load_labelled

    data = load_labelled(synthetic_data["root"], seed=0)
    root = synthetic_data["root"]
    cfg = TrainConfig(
        data=root, output=str(tmp_path / "model"), model="scratch", weights="none", report=False, **overrides
    )
    return data, len(data.catalog), cfg


def test_finalize_reports_the_best_epoch_the_worker_kept(synthetic_data, tmp_path):
    """Epoch 3's val_loss is lower than epoch 2's by less than TrainState's 1e-4 margin: the worker kept epoch 2's
    weights, and the metrics say 2, not the argmin 3."""
    from safetensors.torch import save_file

    from jobs._finalize import finalize
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.training import to_bytes_npz

    data, n, cfg = _finalize_inputs(synthetic_data, tmp_path, abstain_method="msp")
    history = [{"epoch": e, "val_loss": v, "images_per_second": 10.0} for e, v in ((1, 1.0), (2, 0.5), (3, 0.49995))]
    state = TrainState(epoch=3, best_val_loss=0.5, best_epoch=2, bad_epochs=1, history=history)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    rng = np.random.default_rng(0)

    def split(name: str, k: int, dim: int = 8) -> dict:
        return {
            f"{name}_logits": rng.normal(size=(k, n)).astype(np.float32),
            f"{name}_emb": rng.normal(size=(k, dim)).astype(np.float32),
            f"{name}_labels": np.arange(k) % n,
        }

    (ckpt / "eval.npz").write_bytes(
        to_bytes_npz(**split("val", 6), **split("test", 6), **split("train", 12), **split("unknown", 0))
    )
    (ckpt / "history.json").write_text(json.dumps(history))
    (ckpt / "state.json").write_text(json.dumps(state.to_json()))
    net = build_model(ModelSpec("scratch", n, weights="none"))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt / "best.safetensors"))

    metrics = finalize(cfg, data, ckpt, train_seconds=1.0, run_name="r")
    assert int(np.argmin([h["val_loss"] for h in history])) + 1 == 3  # what the old recomputation said
    assert metrics["best_epoch"] == 2 and metrics["epochs"] == 3
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["best_epoch"] == 2


@pytest.mark.parametrize(
    "freeze, model, want", [(True, "efficientnet_lite0", 3e-3), (False, "resnet18", 1e-3), (False, "scratch", 2e-3)]
)
def test_one_learning_rate_rule(freeze, model, want):
    from jobs.train import TrainConfig

    assert TrainConfig(data=".", output="o", model=model, freeze_backbone=freeze).effective_lr == want
    assert TrainConfig(data=".", output="o", model=model, freeze_backbone=freeze, lr=0.25).effective_lr == 0.25


def test_negatives_are_drawn_per_folder_alike_or_per_photo():
    """balanced: a 5-photo folder of look-alikes is drawn as often as a 200-photo folder of everyday photos;
    uniform: in proportion to its size, each photo at most once."""
    from landmark_core.training import draw_negatives

    uris = [f"/neg/everyday/{i}.jpg" for i in range(200)] + [f"/neg/louvre/{i}.jpg" for i in range(5)]
    g = torch.Generator().manual_seed(0)
    picks = draw_negatives(uris, 2000, g, sampling="balanced")
    share = float((picks >= 200).double().mean())
    assert 0.45 < share < 0.55, share
    assert len(set(picks[picks >= 200].tolist())) == 5  # every look-alike photo is seen
    uniform = draw_negatives(uris, 100, torch.Generator().manual_seed(0), sampling="uniform")
    assert len(set(uniform.tolist())) == 100  # without replacement
    assert float((draw_negatives(uris, 205, g, sampling="uniform") >= 200).double().mean()) == 5 / 205
    assert len(draw_negatives([], 10, g)) == 0
    with pytest.raises(ValueError, match="sampling"):
        draw_negatives(uris, 10, g, sampling="by_size")


def test_negatives_sampling_flag_is_checked():
    from jobs.train import ConfigError, TrainConfig

    assert TrainConfig(data=".", output="o").negatives_sampling == "balanced"
    with pytest.raises(ConfigError, match="--negatives-sampling"):
        TrainConfig(data=".", output="o", negatives_sampling="by_size").check()


class _Listed(list):
    """What the epoch draw reads of a dataset: its length and its uris."""

    @property
    def uris(self):
        return list(self)


def _frozen_worker(outlier_weight: float, feats: np.ndarray, labels: list[int], n_known: int):
    """A Worker around a bare head on cached features (no Ray session): what --freeze-backbone's epochs run."""
    from jobs._train_worker import Worker
    from jobs.train import TrainConfig
    from landmark_core.models import LandmarkNet
    from landmark_core.training import smoothed_ce

    w = Worker.__new__(Worker)
    w.c = TrainConfig(data=".", output="o", freeze_backbone=True, outlier_weight=outlier_weight, batch_size=16)
    w.rank, w.world, w.device = 0, 1, torch.device("cpu")
    uris = [f"known/{i}.jpg" if i < n_known else f"neg/{i % 2}/{i}.jpg" for i in range(len(labels))]
    w.loop_cfg = {"train": (uris[:n_known], labels[:n_known]), "neg_train": uris[n_known:]}
    torch.manual_seed(0)
    w.net = LandmarkNet(torch.nn.Identity(), feats.shape[1], 2, dropout=0.0)
    w.ddp, w.loss_fn = w.net.head, smoothed_ce(0.0)
    w.optimizer = torch.optim.AdamW(w.net.head.parameters(), lr=0.05)
    w.scheduler = torch.optim.lr_scheduler.LambdaLR(w.optimizer, lambda s: 1.0)
    w.scaler = torch.amp.GradScaler("cpu", enabled=False)
    w.frozen_ds = _Listed(uris)
    w.feats, w.feat_labels = torch.from_numpy(feats[None]), torch.as_tensor(labels)
    return w


def test_frozen_head_epochs_train_outlier_exposure_on_the_cached_negatives():
    """--freeze-backbone --negatives: each frozen epoch draws as many negatives as known photos, as fine-tuning
    does, and their loss flattens the head's softmax on look-alikes it would otherwise tag with confidence."""
    from jobs._train_worker import NEGATIVE

    rng = np.random.default_rng(0)
    centre = np.zeros((2, 8), np.float32)
    centre[0, 0], centre[1, 1] = 4.0, 4.0
    known = np.concatenate([centre[c] + rng.normal(0, 0.5, (20, 8)) for c in (0, 1)])
    look_alikes = centre[0] + rng.normal(0, 0.5, (60, 8))
    look_alikes[:, 2] += 4.0  # like landmark 0, plus what sets them apart
    feats = np.concatenate([known, look_alikes]).astype(np.float32)
    labels = [0] * 20 + [1] * 20 + [NEGATIVE] * 60
    peak = {}
    for weight in (0.0, 1.0):
        n = len(labels) if weight else 40  # as _cache_frozen_features: negatives cached only when they are used
        w = _frozen_worker(weight, feats[:n], labels[:n], n_known=40)
        order = w._epoch_order(w.frozen_ds, 0)
        assert sorted(i for i in order if i < 40) == list(range(40))  # every known photo once
        assert sum(i >= 40 for i in order) == (40 if weight else 0)  # and as many negatives, when used
        for e in range(30):
            _, correct, seen, _ = w._frozen_epoch(e)
        assert seen == 40 and correct >= 38  # negatives count in neither, the known photos are learnt
        with torch.no_grad():
            peak[weight] = torch.softmax(w.net.head(torch.from_numpy(look_alikes.astype(np.float32))), 1).max(1)[0]
    assert peak[0.0].mean() > 0.9  # without outlier exposure the look-alikes get landmark 0 with confidence
    assert peak[1.0].mean() < 0.65  # with it, close to the flat 0.5 of two landmarks


def test_finalize_open_world_metrics_name_the_landmark_as_the_artifact_does(synthetic_data, tmp_path):
    """`train --unknown`'s open_world metrics name each photo's landmark with the recognizer the artifact keeps
    (here the gallery), as `landmark eval` does through the Predictor, not with the head's argmax."""
    from safetensors.torch import save_file

    from jobs._finalize import finalize
    from landmark_core import abstention, recognizer
    from landmark_core.artifact import load
    from landmark_core.calibration import softmax
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.training import to_bytes_npz

    data, n, cfg = _finalize_inputs(synthetic_data, tmp_path, abstain_method="knn", recognizer="gallery")
    rng = np.random.default_rng(2)
    splits = {}
    for name, k in (("val", 12), ("test", 24), ("train", 24), ("unknown", 10)):
        labels = np.arange(k) % n
        emb = rng.normal(size=(k, 8)) + 2.0 * np.eye(8)[labels % 8]  # the gallery can tell the classes apart
        splits.update(
            {
                f"{name}_logits": rng.normal(size=(k, n)).astype(np.float32),  # the head cannot
                f"{name}_emb": emb.astype(np.float32),
                f"{name}_labels": labels,
            }
        )
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "eval.npz").write_bytes(to_bytes_npz(**splits))
    history = [{"epoch": 1, "val_loss": 1.0, "images_per_second": 10.0}]
    (ckpt / "history.json").write_text(json.dumps(history))
    (ckpt / "state.json").write_text(json.dumps(TrainState(epoch=1, best_epoch=1, history=history).to_json()))
    save_file(
        {k: v.contiguous() for k, v in build_model(ModelSpec("scratch", n, weights="none")).state_dict().items()},
        str(ckpt / "best.safetensors"),
    )

    ow = finalize(cfg, data, ckpt, train_seconds=1.0, run_name="r")["open_world"]
    art = load(cfg.output, tensors="numpy")
    extra = {k: np.asarray(v) for k, v in art.extra_tensors.items()}
    logits, emb, labels = splits["test_logits"], splits["test_emb"], splits["test_labels"]
    named = recognizer.probabilities(
        recognizer.Recognizer.from_json(art.recognizer),
        logits,
        emb,
        temperature=art.temperature,
        extra=extra,
        n_classes=n,
    ).argmax(axis=1)
    assert (named != softmax(logits, art.temperature).argmax(axis=1)).any()  # (else this could not tell them apart)
    tagged = (
        abstention.known_score("knn", logits, emb, temperature=art.temperature, extra=extra, k=5)
        >= (art.abstain["threshold"])
    )
    assert ow["known_right"] == pytest.approx(float((tagged & (named == labels)).mean()))
    assert ow["known_wrong"] == pytest.approx(float((tagged & (named != labels)).mean()))
    assert ow["unknown_photos"] == 10


def test_the_feature_pass_reports_progress_now_and_then(synthetic_data):
    """The frozen backbone's one pass over every photo (minutes on a large set) calls back after each batch with
    photo-views done of views x photos; ``every`` lets through at most one call per period, and the last."""
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.preprocess import presets_for
    from landmark_core.storage import S3Options
    from landmark_core.training import UriImageDataset, cached_features, every

    uris = sorted(synthetic_data["files"])[:10]
    train_p, eval_p = presets_for(32)
    ds = UriImageDataset(uris, [0] * 10, None, opts=S3Options(), draft_to=eval_p.resize, cache_side=48)
    calls = []
    feats = cached_features(
        build_model(ModelSpec("scratch", 2, weights="none")),
        ds,
        "cpu",
        views=2,
        eval_preset=eval_p,
        train_preset=train_p,
        batch_size=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert feats.shape[:2] == (2, 10)
    assert calls == [(4, 20), (8, 20), (10, 20), (14, 20), (18, 20), (20, 20)]
    now = [0.0]
    said = []
    progress = every(30.0, lambda done, total: said.append(done), clock=lambda: now[0])
    for done, t in ((4, 10.0), (8, 31.0), (10, 40.0), (14, 62.0), (18, 63.0), (20, 64.0)):
        now[0] = t
        progress(done, 20)
    assert said == [8, 14, 20]  # 30 s apart, and the end


def test_the_cpu_feature_pass_gives_torch_embeddings(synthetic_data):
    """On a CPU the frozen backbone's pass runs the network exported to ONNX Runtime fp32 (about 5x torch's speed
    there): the eval-crop view is torch's own embedding of each photo, to float precision."""
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.preprocess import presets_for
    from landmark_core.storage import S3Options
    from landmark_core.training import UriImageDataset, cached_features

    uris = sorted(synthetic_data["files"])[:6]
    train_p, eval_p = presets_for(64)
    ds = UriImageDataset(uris, [0] * 6, None, opts=S3Options(), draft_to=eval_p.resize, cache_side=80)
    net = build_model(ModelSpec("efficientnet_lite0", 2, weights="imagenet"))
    feats = cached_features(net, ds, "cpu", views=2, eval_preset=eval_p, train_preset=train_p, batch_size=4)
    with torch.no_grad():
        ref = net.eval().embed(torch.stack([eval_p.tensor(ds.image(i)) for i in range(6)])).numpy()
    assert feats.shape == (2, 6, ref.shape[1])
    np.testing.assert_allclose(feats[0], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    assert not np.allclose(feats[1], ref, atol=1e-2)  # the second view is an augmented crop, not the eval crop


def test_the_cpu_final_pass_gives_torch_logits_and_embeddings():
    """A run's last pass over its photos (fixed weights) runs the network exported to ONNX Runtime fp32 on a CPU:
    torch's logits and embeddings to float precision, the network left in the mode it was in, and no photos in,
    none out."""
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.onnx_runtime import calibration_images
    from landmark_core.preprocess import presets_for
    from landmark_core.training import forward_uint8, network_runner

    _, preset = presets_for(64)
    net = build_model(ModelSpec("efficientnet_lite0", 3, weights="imagenet")).train()
    images = calibration_images(preset, n=5, seed=7)
    logits, emb = network_runner(net, preset, "cpu", batch_size=2)(images)
    assert net.training  # the export evaluates in eval mode and gives the run its mode back
    ref_logits, ref_emb = forward_uint8(net, images, preset, "cpu")
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4 * float(np.abs(ref_logits).max()))
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-4 * float(np.abs(ref_emb).max()))
    none = network_runner(net, preset, "cpu")(images[:0])
    assert none[0].shape == (0, 3) and none[1].shape == (0, emb.shape[1])


def test_a_bad_training_photo_is_read_and_warned_of_once(synthetic_data, tmp_path, capsys):
    """Four views of the features, then epochs, each ask for every photo: a photo that cannot be decoded is tried
    once, named in one warning, and stays marked bad (label -100 for the loss)."""
    from landmark_core.models import ModelSpec, build_model
    from landmark_core.preprocess import presets_for
    from landmark_core.storage import S3Options
    from landmark_core.training import UriImageDataset, cached_features

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    uris = sorted(synthetic_data["files"])[:3] + [str(broken)]
    train_p, eval_p = presets_for(32)
    ds = UriImageDataset(uris, [0] * 4, eval_p.tensor, opts=S3Options(), draft_to=eval_p.resize, cache_side=48)
    net = build_model(ModelSpec("scratch", 2, weights="none"))
    cached_features(net, ds, "cpu", views=4, eval_preset=eval_p, train_preset=train_p, batch_size=2)
    assert [ds[i][1] for i in range(4)] == [0, 0, 0, -100] and ds.bad == {3}
    warned = [ln for ln in capsys.readouterr().out.splitlines() if "skipping" in ln]
    assert warned == [f"warning: skipping {broken}: not_an_image: not a recognised image format"]
