"""After training (on the driver, numpy only): calibrate, pick the abstain threshold, evaluate, write the artifact."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landmark_core import abstention, members as members_mod, onnx_runtime as rt, openworld, recognizer, storage
from landmark_core.artifact import Artifact, save
from landmark_core.calibration import (
    auroc,
    expected_calibration_error,
    fit_temperature,
    per_class_accuracy,
    softmax,
    threshold_at_accept_rate,
    topk_accuracy,
)
from landmark_core.models import ModelSpec
from landmark_core.preprocess import presets_for

# Chosen by measurement on real photos (README, "Knowing when there is no landmark"): see DEFAULT_METHOD's note.
DEFAULT_METHOD = "knn"
# runtimes whose features differ enough from the driver's fp32 ones to need their own open-world fit
OPEN_WORLD_RUNTIMES = ("onnx-int8",)


def finalize(
    cfg, data, ckpt_dir: Path, *, train_seconds: float, run_name: str, negatives=None, network=None, done=None
) -> dict:
    """``network``: for a member of a pool (--members) after the first, the first member's ONNX model per runtime,
    whose embedding the pooled Predictor scores this member's head on: its runtime fits are made on that.
    ``done``: the last line's opening for a member ("member 1 of 3 trained ..."), whose --output is a scratch
    folder the user never sees (else "wrote --output")."""
    from safetensors.torch import load_file

    ev = dict(np.load(ckpt_dir / "eval.npz"))
    history = json.loads((ckpt_dir / "history.json").read_text())
    train_state = json.loads((ckpt_dir / "state.json").read_text())
    n_classes = len(data.catalog)
    temperature = fit_temperature(ev["val_logits"], ev["val_labels"]) if len(ev["val_labels"]) else 1.0
    fit = _fit_abstention(cfg, ev, temperature, n_classes, negatives)
    gallery = _gallery(cfg, ev, fit.extra, n_classes)
    # an open-world model's score is fitted on its head's softmax: its recognizer is the head
    forced = "head" if fit.open_world else (None if cfg.recognizer == "auto" else cfg.recognizer)
    rec, rec_metrics = recognizer.choose(
        ev["val_logits"],
        ev["val_emb"],
        ev["val_labels"],
        temperature=temperature,
        extra={**fit.extra, **gallery},
        n_classes=n_classes,
        n_head=n_classes,
        forced=forced,
    )
    metrics = _run_metrics(cfg, data, history, train_state, train_seconds, temperature, fit, rec, rec_metrics)
    metrics.update(_eval_metrics(cfg, data, ev, temperature, fit, rec, gallery))
    _, eval_preset = presets_for(cfg.effective_image_size, cfg.crop_fraction)
    art = Artifact(
        spec=ModelSpec(cfg.model, n_classes, dropout=cfg.dropout, weights=cfg.weights),
        catalog=data.catalog,
        preprocess=eval_preset,
        state_dict=load_file(str(ckpt_dir / "best.safetensors")),
        temperature=temperature,
        abstain=_abstain_block(cfg, fit, negatives),
        metrics=metrics,
        recognizer=rec.to_json(),
        extra_tensors={
            **{k: _torch(v) for k, v in {**fit.extra, **gallery}.items()},
            "val_scores": _torch(np.sort(fit.val_scores).astype(np.float32)),
            **{k: _torch(v) for k, v in _held_out(ev).items()},
        },
        provenance=_provenance(cfg, run_name),
    )
    blobs = _fit_runtimes(art, cfg, data, negatives, metrics, network or {}) if fit.open_world else {}
    _write_outputs(cfg, art, metrics, history, blobs)
    if cfg.report:
        _write_report(cfg, data, ev, history, temperature, cfg.s3_options())
    print(
        f"[train] {done or f'wrote {cfg.output}'} (model_id {metrics['model_id']}): "
        + ", ".join(
            f"{k} {metrics[k]:.4f}"
            for k in ("val_top1", "test_top1", "test_top5", "test_ece", "open_auroc", "open_reject_at_95")
            if k in metrics
        ),
        flush=True,
    )
    return metrics


@dataclass(frozen=True)
class _Abstention:
    """How the model decides "no landmark": its method, score function, threshold and the tensors they need."""

    method: str
    open_world: bool
    extra: dict  # reference tensors (banks, prototypes, distractors, held-back negatives' scores)
    score: Callable  # (logits, embeddings) -> score
    val_scores: np.ndarray
    threshold: float
    calibrator: dict | None = None  # open world: the fitted P(right)
    by_group: dict | None = None  # open world: held-back negatives' scores per folder


def _fit_abstention(cfg, ev: dict, temperature: float, n_classes: int, negatives) -> _Abstention:
    """Open world (negatives held back): the fitted P(right) and its --max-wrong-rate threshold; else the chosen
    --abstain-method's score and its --accept-rate threshold on the validation photos."""
    open_world = negatives is not None and bool(negatives) and len(ev.get("negfit_labels", ()))
    if not open_world:
        method = DEFAULT_METHOD if cfg.abstain_method == "auto" else cfg.abstain_method
        emb = ev["train_emb"].astype(np.float32)
        extra = abstention.reference_tensors(method, emb, ev["train_labels"], n_classes, seed=cfg.seed)
        score = _scorer(method, temperature, extra)
        val_scores = score(ev["val_logits"], ev["val_emb"])
        return _Abstention(
            method, False, extra, score, val_scores, threshold_at_accept_rate(val_scores, cfg.accept_rate)
        )
    extra, fitted = _fit_open_world(cfg, ev, temperature, n_classes)
    score = _open_world_scorer(temperature, extra, fitted["calibrator"])
    val_scores = score(ev["val_logits"], ev["val_emb"])
    fit_scores = fitted["neg_fit_scores"]
    extra.update(neg_fit_scores=fit_scores.astype(np.float32), neg_fit_groups=ev["negfit_labels"].astype(np.int32))
    return _Abstention(
        "openworld",
        True,
        extra,
        score,
        val_scores,
        fitted["threshold"],
        calibrator=fitted["calibrator"],
        by_group=openworld.scores_by_group(fit_scores, ev["negfit_labels"], negatives.groups),
    )


def _abstain_block(cfg, fit: _Abstention, negatives) -> dict:
    """The artifact's ``abstain``: what the Predictor needs to say "no landmark" as training decided."""
    abstain = {"method": fit.method, "threshold": fit.threshold, "accept_rate": cfg.accept_rate, "k": 5}
    if fit.open_world:
        abstain.update(
            calibrator=fit.calibrator,
            max_wrong_rate=cfg.max_wrong_rate,
            accept_rate=None,
            negative_groups=negatives.groups,
        )
    return abstain


def _run_metrics(cfg, data, history, train_state, train_seconds, temperature, fit: _Abstention, rec, rec_metrics):
    """What the run was and did: model, epochs, speed, the abstention it chose, the recognizer it picked."""
    return {
        "model": cfg.model,
        "freeze_backbone": cfg.freeze_backbone,
        "workers": cfg.workers,
        # the epoch whose weights the worker kept (TrainState's rule: improved by 1e-4, NaN counts as improved)
        "epochs": len(history),
        "best_epoch": int(train_state.get("best_epoch", 0)),
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(float(np.mean([h["images_per_second"] for h in history])), 2) if history else 0,
        "temperature": temperature,
        "abstain_method": fit.method,
        "abstain_threshold": fit.threshold,
        "accept_rate": cfg.accept_rate,
        "resumed_after_epochs": train_state.get("resumed_after") or [],
        "stopped_early": bool(train_state.get("stopped_early")),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "recognizer": rec.mode,
        "recognizer_val_top1": rec_metrics["val_top1"],
    }


def _eval_metrics(cfg, data, ev: dict, temperature: float, fit: _Abstention, rec, gallery: dict) -> dict:
    """The model measured on its validation, test and --unknown photos, and the open-world fit's own figures."""
    n_classes = len(data.catalog)
    out = _split_metrics("val", ev["val_logits"], ev["val_labels"], temperature, n_classes)
    if len(ev["test_labels"]):
        out.update(_split_metrics("test", ev["test_logits"], ev["test_labels"], temperature, n_classes))
        probs = softmax(ev["test_logits"], temperature)
        out["test_per_class"] = dict(zip(data.catalog.names, per_class_accuracy(probs, ev["test_labels"], n_classes)))
        out["test_false_abstain"] = float((fit.score(ev["test_logits"], ev["test_emb"]) < fit.threshold).mean())
    if len(ev["unknown_logits"]):
        out.update(_open_set(ev, temperature, fit.threshold, fit.score, cfg, n_classes))
        named = _recognizer_probs(rec, temperature, {**fit.extra, **gallery}, n_classes)
        out["open_world"] = _open_world_summary(ev, named, fit.threshold, fit.score, fit.open_world)
    if fit.open_world:
        out.update(
            _fit_metrics(fit.val_scores, ev["val_logits"], ev["val_labels"], temperature, fit.by_group, fit.threshold)
        )
        out["max_wrong_rate"] = cfg.max_wrong_rate
    return out


def _write_outputs(cfg, art: Artifact, metrics: dict, history: list, blobs: dict[str, bytes]) -> None:
    """The artifact, then metrics.json (with the model_id the save computed) and history.json, at --output."""
    opts = cfg.s3_options()
    metrics["model_id"] = save(art, cfg.output, storage_options=opts)
    for name, blob in blobs.items():  # the ONNX model just built, so that the first Predictor need not rebuild it
        rt.cache_model(metrics["model_id"], name, blob)
    storage.write_bytes(storage.join(cfg.output, "metrics.json"), json.dumps(metrics, indent=2).encode(), opts)
    storage.write_bytes(storage.join(cfg.output, "history.json"), json.dumps(history, indent=2).encode(), opts)


def _fit_open_world(cfg, ev, temperature: float, n_classes: int) -> tuple[dict, dict]:
    """The open-world score's banks (known training photos, training negatives as distractors) and its fit on
    known validation photos and held-back negatives, on the driver's fp32 features."""
    extra = abstention.reference_tensors(
        "knn", ev["train_emb"].astype(np.float32), ev["train_labels"], n_classes, seed=cfg.seed
    )
    extra["distractors"] = openworld.distractor_bank(ev["negtrain_emb"], extra["center"])
    x_val = openworld.features(ev["val_logits"], ev["val_emb"], temperature=temperature, extra=extra)
    x_neg = openworld.features(ev["negfit_logits"], ev["negfit_emb"], temperature=temperature, extra=extra)
    right = softmax(ev["val_logits"], temperature).argmax(axis=1) == ev["val_labels"]
    return extra, openworld.fit(x_val, right, x_neg, ev["negfit_labels"], cfg.max_wrong_rate)


def _open_world_scorer(temperature: float, extra: dict, calibrator: dict):
    def score(logits, emb):
        x = openworld.features(logits, emb, temperature=temperature, extra=extra)
        return openworld.prob_right(x, calibrator)

    return score


def _fit_runtimes(art: Artifact, cfg, data, negatives, metrics: dict, network: dict) -> dict[str, bytes]:
    """Each runtime in OPEN_WORLD_RUNTIMES gets its own calibrator, held-back scores and threshold in the
    artifact (the Predictor picks its runtime's); returns the ONNX models built for it (none for a pool's member
    fitted on the first member's ``network``)."""
    blocks, blobs = {}, {}
    for name in OPEN_WORLD_RUNTIMES:
        # a minute or so on a small machine, after the last epoch: say what it is
        print(
            f"[train] fitting the {name} runtime's own score and threshold on {len(data.val)} validation photos "
            f"and {len(negatives.fit)} held-back negatives" + ("" if name in network else " (model built first)"),
            flush=True,
        )
        fitted, groups, blob, (val_logits, val_y) = _fit_runtime(art, name, cfg, data, negatives, network.get(name))
        if name not in network:
            blobs[name] = blob
        threshold = fitted["threshold"]
        blocks[name] = {"calibrator": fitted["calibrator"], "threshold": threshold, "recipe": rt.RECIPE}
        art.extra_tensors[f"neg_fit_scores@{name}"] = _torch(fitted["neg_fit_scores"].astype(np.float32))
        art.extra_tensors[f"neg_fit_groups@{name}"] = _torch(groups.astype(np.int32))
        # --accept-rate at tag time on this runtime: a threshold on its own validation scores, not fp32's
        art.extra_tensors[f"val_scores@{name}"] = _torch(np.sort(fitted["val_scores"]).astype(np.float32))
        by_group = openworld.scores_by_group(fitted["neg_fit_scores"], groups, negatives.groups)
        fit = _fit_metrics(fitted["val_scores"], val_logits, val_y, art.temperature, by_group, threshold)
        metrics.setdefault("fit_runtimes", {})[name] = {"threshold": threshold, **fit}
    art.abstain["runtimes"] = blocks
    return blobs


def _fit_runtime(
    art: Artifact, runtime: str, cfg, data, negatives, network: bytes | None = None
) -> tuple[dict, np.ndarray, bytes, tuple]:
    """The open-world fit again on ``runtime``'s own features (the int8 model the CPU tag job runs), from the
    validation photos and held-back negatives decoded as the tag job decodes them. Returns the fit (with the
    validation photos' scores), the negatives' groups, the ONNX model, and the validation logits and labels.

    ``network``: a pool's first member's ONNX model. The pooled Predictor runs it once per photo and this
    member's head on its embedding, in float32 numpy (landmark_core.members.score): the fit is made on that,
    not on this member's own int8 model, whose quantised head gives other logits."""
    from landmark_core.predictor import Predictor
    from landmark_core.tagging import read_and_decode

    blob = network if network is not None else rt.model_bytes(art, runtime, use_cache=False)
    pred = Predictor(art, runtime=runtime, onnx_model=blob)
    uris = list(data.val.uris) + list(negatives.fit)
    labels = np.concatenate([np.asarray(data.val.labels), np.full(len(negatives.fit), -1)])
    groups = np.concatenate([np.full(len(data.val), -1), np.asarray(negatives.fit_groups)])
    logits, emb, ok = [], [], []
    for i in range(0, len(uris), 64):
        chunk = uris[i : i + 64]
        batch = {"uri": chunk, "etag": [None] * len(chunk), "size_bytes": [None] * len(chunk)}
        d = read_and_decode(batch, preset=art.preprocess, opts=cfg.s3_options())
        l_, e_ = pred.logits_and_embeddings(d["image"][d["ok"]])
        logits.append(l_), emb.append(e_), ok.append(d["ok"])
    logits, emb, ok = np.concatenate(logits), np.concatenate(emb), np.concatenate(ok)
    if network is not None:  # this member's head on the pool's embedding, as members.score computes it
        w, b = (art.state_dict[k].detach().cpu().numpy().astype(np.float32) for k in members_mod.HEAD)
        logits = np.asarray(emb, np.float32) @ w.T + b
    x = openworld.features(logits, emb, temperature=art.temperature, extra=pred.extra)
    labels, groups = labels[ok], groups[ok]
    known = labels >= 0
    right = softmax(logits[known], art.temperature).argmax(axis=1) == labels[known]
    fitted = openworld.fit(x[known], right, x[~known], groups[~known], cfg.max_wrong_rate)
    fitted["val_scores"] = openworld.prob_right(x[known], fitted["calibrator"])
    return fitted, groups[~known], blob, (logits[known], labels[known])


def _recognizer_probs(rec, temperature: float, extra: dict, n_classes: int):
    """logits, embeddings -> the probabilities of the recognizer the artifact names the landmark with."""

    def probs(logits, emb):
        return recognizer.probabilities(rec, logits, emb, temperature=temperature, extra=extra, n_classes=n_classes)

    return probs


def _open_world_summary(ev: dict, named, threshold: float, score, open_world: bool) -> dict:
    """`landmark eval`'s numbers on the test photos (known) and --unknown, computed by the same code: the landmark
    named by the artifact's recognizer (``named``), tagged when ``score`` reaches the threshold."""
    from landmark_core.evaluation import UNKNOWN, Outcomes, summary

    parts = []
    for split, label in (("test", None), ("unknown", UNKNOWN)):
        logits, emb = ev[f"{split}_logits"], ev[f"{split}_emb"]
        probs = named(logits, emb)
        s = score(logits, emb)
        shown = s if open_world else probs.max(axis=1)  # the score a row carries
        labels = ev[f"{split}_labels"] if label is None else np.full(len(s), UNKNOWN)
        parts.append(Outcomes.of(split, labels, probs.argmax(axis=1), shown, s >= threshold))
    out = summary(Outcomes.concat(parts))
    out.pop("reliability")
    return out


def _fit_metrics(val_scores, val_logits, val_y, temperature: float, by_group: dict, threshold: float) -> dict:
    """What the threshold does on the photos it was fitted on (not an evaluation: `landmark eval` is)."""
    right = softmax(val_logits, temperature).argmax(axis=1) == val_y
    return {
        "fit_val_right": float(((val_scores >= threshold) & right).mean()) if len(val_y) else float("nan"),
        "fit_wrong_rate": openworld.wrong_rate(by_group, threshold),
        "fit_negatives_tagged": {g: float((s >= threshold).mean()) for g, s in by_group.items()},
    }


def _gallery(cfg, ev: dict, extra: dict, n_classes: int) -> dict:
    """The training photos' embeddings as the recognizer's gallery, centred as the abstention bank is (the
    centre is stored too when the abstention method has none)."""
    train_emb = ev["train_emb"].astype(np.float32)
    center = extra.get("center", train_emb.mean(axis=0).astype(np.float32))
    return {
        "center": center,
        **recognizer.gallery_tensors(train_emb, ev["train_labels"], center, n_classes, seed=cfg.seed),
    }


def _held_out(ev: dict) -> dict:
    """Validation logits, embeddings and labels: `landmark catalog add` measures the recognizers on them again."""
    return {
        recognizer.VAL_LOGITS: ev["val_logits"].astype(np.float32),
        recognizer.VAL_EMB: ev["val_emb"].astype(np.float32),
        recognizer.VAL_LABELS: np.asarray(ev["val_labels"]).astype(np.int64),
    }


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _scorer(method: str, temperature: float, extra: dict):
    def score(logits, emb):
        return abstention.known_score(method, logits, emb, temperature=temperature, extra=extra)

    return score


def _split_metrics(split: str, logits, labels, temperature: float, n_classes: int) -> dict:
    if not len(labels):
        return {}
    probs = softmax(logits, temperature)
    return {
        f"{split}_top1": topk_accuracy(probs, labels, 1),
        f"{split}_top5": topk_accuracy(probs, labels, 5),
        f"{split}_ece": expected_calibration_error(probs, labels),
        f"{split}_ece_uncalibrated": expected_calibration_error(softmax(logits, 1.0), labels),
    }


def _open_set(ev: dict, temperature: float, threshold: float, score, cfg, n_classes: int) -> dict:
    """Known test photos vs photos of no catalog landmark, for the chosen score and every candidate."""
    known_logits = ev["test_logits"] if len(ev["test_labels"]) else ev["val_logits"]
    known_emb = ev["test_emb"] if len(ev["test_labels"]) else ev["val_emb"]
    known, unknown = score(known_logits, known_emb), score(ev["unknown_logits"], ev["unknown_emb"])
    out = {
        "open_auroc": auroc(known, unknown),
        "open_reject_at_95": _reject_at(ev, score, unknown, 0.95),
        "open_reject_at_threshold": float((unknown < threshold).mean()),
        "open_false_abstain": float((known < threshold).mean()),
        "n_unknown": int(len(unknown)),
        "open_methods": {},
    }
    for m in abstention.METHODS:
        extra = abstention.reference_tensors(
            m, ev["train_emb"].astype(np.float32), ev["train_labels"], n_classes, seed=cfg.seed
        )
        s = _scorer(m, temperature, extra)
        u = s(ev["unknown_logits"], ev["unknown_emb"])
        out["open_methods"][m] = {
            "auroc": auroc(s(known_logits, known_emb), u),
            "reject_at_95": _reject_at(ev, s, u, 0.95),
        }
    return out


def _reject_at(ev: dict, score, unknown_scores, accept_rate: float) -> float:
    """Share of unknown photos rejected at the threshold accepting ``accept_rate`` of known validation photos
    (the empirical quantile, as the metric is defined; the deployed threshold is the conformal one)."""
    thr = float(np.quantile(score(ev["val_logits"], ev["val_emb"]), 1.0 - accept_rate))
    return float((unknown_scores < thr).mean())


def _provenance(cfg, run_name: str) -> dict:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
    except Exception:
        commit = None
    return {
        "run_name": run_name,
        "git_commit": commit,
        "python": platform.python_version(),
        "config": config_of(cfg),
        "inputs": inputs_of(cfg),
    }


def inputs_of(cfg) -> dict:
    """The photo folders the run learned from or fitted on, absolute (``provenance.inputs``): `landmark eval`
    warns when it is asked to measure the model on them, from whatever folder it runs."""
    return {
        "data": storage.absolute(cfg.data),
        "negatives": [storage.absolute(n) for n in cfg.negatives],
    }


def config_of(cfg) -> dict:
    """The run's flags as its artifact records them (``provenance.config``): all but the S3 endpoint."""
    return {k: v for k, v in cfg.__dict__.items() if k not in ("s3_endpoint",)}


def _write_report(cfg, data, ev, history, temperature, opts) -> None:
    from landmark_core.training_report import training_report_pngs

    files = training_report_pngs(history, ev, temperature, data.catalog.names)
    for name, blob in files.items():
        storage.write_bytes(storage.join(cfg.output, "report", name), blob, opts)
