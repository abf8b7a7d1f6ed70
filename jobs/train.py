"""Distributed training on Ray Train: `landmark train` / `python -m jobs.train`.

    driver: validate config -> list the dataset -> TorchTrainer(workers) -> final checkpoint -> calibrate,
            choose the abstain threshold, evaluate, write the artifact + metrics.json + report PNGs
    worker: its shard of the data -> DDP epochs (or a head on cached frozen features) -> a checkpoint per epoch
            -> at the end, logits/embeddings of val/test/unknown gathered on rank 0 into the last checkpoint

Checkpoints go to --storage through Ray Train; a killed worker restarts the group from the last one
(FailureConfig), and --resume continues a run whose driver died.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jobs._cli import ConfigError, checks_config, fields_of, run_cli
from jobs._ray import check_local_gpus, check_resources, init_ray
from landmark_core import storage
from landmark_core.abstention import METHODS
from landmark_core.catalog import coords_file_beside, coords_file_note, listed, unmatched_coords
from landmark_core.datasets import NEGATIVE_SAMPLINGS
from landmark_core.models import KNOWN_MODELS, check_model_name
from landmark_core.modelspec import native_image_size
from landmark_core.preprocess import CROP_FRACTION
from landmark_core.recognizer import RECOGNIZERS

HEAD_LR = 3e-3  # a new head on frozen features: --freeze-backbone's default, and the linear probe's (LP-FT)
# The networks halve their input five times (scratch, efficientnet_lite0 and convnext fail below 32 px: their last
# kernels find a feature map smaller than themselves, a worker crash three times over, not a config error).
MIN_IMAGE_SIZE = 32
# The workers seed torch with seed * 1000 + epoch * 10 + rank, which must fit in 64 bits: seeds below 2**32 do.
MAX_SEED = 2**32

# Each numeric field's allowed values: (as the error says them, the test). Checked before Ray starts.
_POSITIVE = ("> 0", lambda v: v > 0)
_NOT_NEGATIVE = (">= 0", lambda v: v >= 0)
_AT_LEAST_ONE = (">= 1", lambda v: v >= 1)
_SHARE = ("in [0, 1)", lambda v: 0 <= v < 1)
_SHARE_NOT_ZERO = ("in (0, 1)", lambda v: 0 < v < 1)
NUMBER_RANGES = {
    "workers": _POSITIVE,
    "gpus_per_worker": _NOT_NEGATIVE,
    "cpus_per_worker": _POSITIVE,
    "epochs": _POSITIVE,
    "batch_size": _POSITIVE,
    "lr": _POSITIVE,
    "backbone_lr_mult": _NOT_NEGATIVE,
    "weight_decay": _NOT_NEGATIVE,
    "warmup_epochs": _NOT_NEGATIVE,
    "label_smoothing": _SHARE,
    "dropout": _SHARE,  # 1 drops every feature: the head would learn nothing
    # the worker stops after this many epochs without a better validation loss: 0 would act as 1, not as "off"
    "patience": (">= 1 (to never stop early, give the --epochs value)", lambda v: v >= 1),
    "image_size": (f"at least {MIN_IMAGE_SIZE} (the networks downsample by 32)", lambda v: v >= MIN_IMAGE_SIZE),
    "crop_fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
    "feature_views": _POSITIVE,
    "probe_epochs": _NOT_NEGATIVE,
    # every run fits its temperature, recognizer and threshold on validation photos: val/, else this share of train/
    "val_fraction": _SHARE_NOT_ZERO,
    "seed": _NOT_NEGATIVE,
    "max_failures": _NOT_NEGATIVE,  # Ray Train reads -1 as "retry forever"
    "negatives_fit_fraction": _SHARE_NOT_ZERO,
    "outlier_weight": _NOT_NEGATIVE,
    "max_wrong_rate": _SHARE,
    "members": _AT_LEAST_ONE,
    "accept_rate": ("in (0, 1]", lambda v: 0 < v <= 1),
    "loader_workers": _NOT_NEGATIVE,
    "cache_mb": _NOT_NEGATIVE,
}
# None: chosen by the model (effective_lr, effective_image_size) or the device
AUTO_WHEN_NONE = ("lr", "loader_workers", "image_size")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    output: str
    model: str = "efficientnet_lite0"
    weights: str = "imagenet"
    trust_pickle: bool = False  # --weights FILE may need full unpickling (can run code): only if the user says so
    freeze_backbone: bool = False
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    epochs: int = 10
    batch_size: int = 32  # per worker
    lr: float | None = None  # default depends on the model and freezing, see effective_lr
    backbone_lr_mult: float = 0.1
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    dropout: float = 0.2
    patience: int = 3
    image_size: int | None = None  # default: the model's pretraining side, see effective_image_size
    crop_fraction: float = CROP_FRACTION  # the eval crop's side over the resized short side (1: the whole square)
    feature_views: int = 4  # frozen backbone: eval crop + augmented crops, computed once
    probe_epochs: int = 20  # fine-tuning a pretrained backbone: head fitted on frozen features first (LP-FT)
    val_fraction: float = 0.15
    seed: int = 0
    storage: str = "out/ray_results"
    name: str | None = None
    resume: bool = False
    max_failures: int = 2
    s3_endpoint: str | None = None
    coords: str | None = None
    unknown: str | None = None
    negatives: tuple[str, ...] = ()  # photos of no catalog landmark: outlier exposure, distractors, threshold
    negatives_fit_fraction: float = 0.5  # share of each negatives folder held back to fit the score and threshold
    outlier_weight: float = 0.5  # weight of the outlier-exposure loss on negatives (fine-tuned or frozen)
    negatives_sampling: str = "balanced"  # each epoch's negatives: every folder alike | every photo alike
    max_wrong_rate: float = 0.01  # with negatives: the threshold tags at most this share of held-back negatives
    members: int = 1  # frozen backbone with negatives: runs of seeds seed..seed+members-1, decision pooled
    abstain_method: str = "auto"
    accept_rate: float = 0.95
    recognizer: str = "auto"  # head | gallery | both | auto (measured on the validation split)
    loader_workers: int | None = None
    cache_mb: int = 1024
    report: bool = True
    ray_address: str | None = None

    def check(self) -> None:
        """Every argument checked before any cluster work; each error names its flag."""
        try:
            check_model_name(self.model)
        except ValueError as e:
            raise ConfigError(f"--model: {e}") from None
        self._check_numbers()
        if self.negatives_sampling not in NEGATIVE_SAMPLINGS:
            raise ConfigError(
                f"--negatives-sampling must be one of {', '.join(NEGATIVE_SAMPLINGS)}, got {self.negatives_sampling!r}"
            )
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.abstain_method not in ("auto",) + METHODS:
            raise ConfigError(f"--abstain-method must be auto or one of {', '.join(METHODS)}")
        if self.recognizer not in ("auto",) + RECOGNIZERS:
            raise ConfigError(f"--recognizer must be auto or one of {', '.join(RECOGNIZERS)}, got {self.recognizer!r}")
        if self.negatives and self.abstain_method != "auto":  # it would be ignored: say so instead
            raise ConfigError(
                f"--abstain-method {self.abstain_method}: a model trained with --negatives abstains on its fitted "
                "open-world P(right) (method 'openworld'); drop the flag, or train without --negatives"
            )
        if self.negatives and self.recognizer not in ("auto", "head"):
            raise ConfigError(
                f"--recognizer {self.recognizer}: a model trained with --negatives names the landmark with its head "
                "(its open-world score is fitted on the head's softmax); drop the flag, or train without --negatives"
            )
        if self.members > 1 and not (self.freeze_backbone and self.negatives):
            raise ConfigError(
                "--members > 1 needs --freeze-backbone and --negatives: the members share one frozen network, and "
                "each fits its score and threshold on its own held-back negatives"
            )
        if self.model == "scratch" and self.freeze_backbone:
            raise ConfigError("--freeze-backbone needs a pretrained --model (scratch has nothing to freeze)")
        try:
            storage.check_locations(
                {
                    "--data": self.data,
                    "--output": self.output,
                    "--storage": self.storage,
                    "--unknown": self.unknown,
                    **{f"--negatives {n}": n for n in self.negatives},
                },
                self.s3_options(),
            )
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None
        if self.coords and not Path(self.coords).is_file():
            raise ConfigError(f"--coords {self.coords}: no such file")
        if not storage.is_s3(self.data) and not Path(self.data).is_dir():
            raise ConfigError(f"--data {self.data}: no such directory")
        for n in self.negatives:
            if not storage.is_s3(n) and not Path(n).is_dir():
                raise ConfigError(f"--negatives {n}: no such directory")

    def _check_numbers(self) -> None:
        """Every numeric flag in its range (NUMBER_RANGES), finite: else it fails in the workers, after Ray Train
        started (a negative --seed, --dropout 1.5), or trains on nonsense without a word (--val-fraction 0)."""
        for name, (allowed, ok) in NUMBER_RANGES.items():
            v, flag = getattr(self, name), f"--{name.replace('_', '-')}"
            if v is None and name in AUTO_WHEN_NONE:
                continue
            if v is None or not (math.isfinite(v) and ok(v)):
                finite = " a finite number" if isinstance(v, float) and not math.isfinite(v) else ""
                raise ConfigError(f"{flag} must be{finite} {allowed}, got {v}")
        if self.seed + self.members - 1 >= MAX_SEED:  # member K's seed is --seed + K - 1
            raise ConfigError(f"--seed must be below {MAX_SEED} (--seed + --members - 1 too), got {self.seed}")

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint)

    def ignored_flags(self) -> list[str]:
        """Flags set away from their defaults that this run does not use: said, not silently dropped."""
        fields = type(self).__dataclass_fields__
        unused = (
            (not self.freeze_backbone, ("feature_views",), "without --freeze-backbone"),
            (self.freeze_backbone, ("probe_epochs", "backbone_lr_mult"), "with --freeze-backbone (it does not train)"),
            (self.model == "scratch", ("probe_epochs",), "with --model scratch (no pretrained features to probe)"),
            (
                not self.negatives,
                ("negatives_fit_fraction", "outlier_weight", "negatives_sampling", "max_wrong_rate"),
                "without --negatives",
            ),
        )
        return [
            f"--{name.replace('_', '-')} {getattr(self, name)} has no effect {why}"
            for applies, names, why in unused
            if applies
            for name in names
            if getattr(self, name) != fields[name].default
        ]

    @property
    def effective_lr(self) -> float:
        """The peak learning rate: --lr, else by model and freezing (the one rule; the worker uses it)."""
        if self.lr is not None:
            return self.lr
        if self.model == "scratch":
            return 2e-3
        return HEAD_LR if self.freeze_backbone else 1e-3

    @property
    def effective_image_size(self) -> int:
        """The input side: --image-size, else the side the backbone was pretrained at (224; Lite1 240, Lite2 260)."""
        return self.image_size if self.image_size is not None else native_image_size(self.model)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


# ---------------------------------------------------------------- driver


@checks_config
def run(cfg: TrainConfig) -> dict:
    """Train, calibrate, evaluate and write the artifact; returns metrics."""
    for warning in cfg.ignored_flags():
        print(f"[train] warning: {warning}", flush=True)
    check_local_gpus(cfg.ray_address, "--gpus-per-worker", cfg.gpus_per_worker)
    if not cfg.resume and (warning := _replaced_model_warning(cfg)):  # --resume: continuing into it is the point
        print(warning, flush=True)
    if cfg.members > 1:
        return _run_members(cfg)
    return _train_one(cfg)


def _replaced_model_warning(cfg: TrainConfig) -> str | None:
    """--output holding a model: re-running a command into its own folder is normal (not refused), but the model
    there is replaced only at the end of the run, silently until now."""
    from landmark_core.artifact import META_FILE

    opts, meta_uri = cfg.s3_options(), storage.join(cfg.output, META_FILE)
    try:
        storage.check_reachable("--output", cfg.output, opts)  # (an S3 head_object would retry a dead endpoint)
        if not storage.exists(meta_uri, opts):
            return None
        meta = json.loads(storage.read_bytes(meta_uri, opts))
    except storage.StorageError as e:
        raise ConfigError(str(e)) from None
    except (OSError, ValueError):  # unreadable or malformed: a model all the same, to be replaced
        meta = {}
    trained = str((meta.get("provenance") or {}).get("created_at") or "")[:10]
    return (
        f"[train] warning: --output {cfg.output} holds model {meta.get('model_id') or f'(unreadable {META_FILE})'}"
        + (f" (trained {trained})" if trained else "")
        + "; it will be replaced when this run finishes"
    )


def _train_one(cfg: TrainConfig, *, member: tuple[int, int] | None = None, network: dict | None = None) -> dict:
    """One training run to its artifact at --output; ``member``: (i, K), member i of a pool's K, whose artifact
    goes to a scratch folder (the first one warns of the data for all); ``network``: the first member's ONNX
    models, see jobs._finalize.finalize."""
    opts = cfg.s3_options()
    _check_sources(cfg, opts)
    resumed = _resumed_run(cfg) if cfg.resume else None  # a wrong --name or --storage: said before Ray's ~20 s
    data, unknown, negatives, warnings = _load_inputs(cfg, opts)
    print(
        f"[train] {data.summary()}"
        + (f", unknown {len(unknown)}" if unknown else "")
        + (f", {negatives.summary()}" if negatives else ""),
        flush=True,
    )
    for warning in warnings if member is None or member[0] == 0 else []:
        print(warning, flush=True)

    init_ray(cfg.ray_address)
    check_resources(  # the workers' ScalingConfig: all of them at once (one placement group)
        cfg.ray_address,
        "train",
        {"CPU": ("--cpus-per-worker", cfg.cpus_per_worker), "GPU": ("--gpus-per-worker", cfg.gpus_per_worker)},
        at_once=("--workers", cfg.workers),
    )
    trainer, run_name = _make_trainer(cfg, data, unknown, negatives, resumed)
    print(
        f"[train] run {run_name!r}: {cfg.workers} worker(s) x ({cfg.cpus_per_worker} CPU, "
        f"{cfg.gpus_per_worker} GPU), model {cfg.model}{' (frozen backbone)' if cfg.freeze_backbone else ''}, "
        f"checkpoints in {storage.join(cfg.storage, run_name)}",
        flush=True,
    )
    t0 = time.time()
    with _interrupt_says_resume():
        result = trainer.fit()
    train_seconds = time.time() - t0
    if result.error:
        raise result.error
    from jobs._finalize import finalize

    with result.checkpoint.as_directory() as ckpt_dir:
        metrics = finalize(
            cfg,
            data,
            Path(ckpt_dir),
            train_seconds=train_seconds,
            run_name=run_name,
            negatives=negatives,
            network=network,
            done=member and f"member {member[0] + 1} of {member[1]} trained (pooled into --output at the end)",
        )
    return metrics


class Interrupted(Exception):
    """Ctrl-C while Ray Train ran: the run's checkpoints are kept, and --resume continues from the last one."""


@contextmanager
def _interrupt_says_resume():
    """Ray Train answers SIGINT with its own handler, set in fit(): it aborts the run and leaves fit() by a
    SystemExit (before it is set: a KeyboardInterrupt). Either is an Interrupted, for main to say how to go on;
    the handler is put back after, so that a Ctrl-C while the artifact is written is a KeyboardInterrupt."""
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise Interrupted() from None
    finally:
        if threading.current_thread() is threading.main_thread():  # (only there can a handler be set: a run in
            signal.signal(signal.SIGINT, before)  # a thread, as the tests' worker-kill run, has none to restore)


def _run_members(cfg: TrainConfig) -> dict:
    """--members K: K runs of seeds seed..seed+K-1 into a scratch folder, then one pooled artifact at --output
    (landmark_core.members). Each run has its own Ray Train name (NAME-m0, NAME-m1, ...) and keeps its finished
    artifact in its run folder under --storage, so --resume takes those of the members that had finished (same
    flags) as they are and continues the one that was cut off."""
    import tempfile
    from dataclasses import replace

    from landmark_core import members
    from landmark_core.artifact import load

    base = _base_name(cfg)
    started = _members_started(cfg, base)
    _check_sources(cfg, cfg.s3_options())  # a bad input is one error line, not one under "member 1 of K"
    _load_inputs(cfg, cfg.s3_options())
    with tempfile.TemporaryDirectory(prefix="landmark-members-") as tmp:
        runs, network = [], None
        for i in range(cfg.members):
            name, resume = f"{base}-m{i}", started[i]
            mcfg = replace(cfg, members=1, seed=cfg.seed + i, output=str(Path(tmp, f"m{i}")), name=name, resume=resume)
            kept = _finished_member(mcfg) if resume else None
            note = ""
            if cfg.resume:
                note = ", continuing its run" if resume else ", not started before the cut: from the start"
                note = ", finished before the cut: its artifact taken as it is" if kept else note
            print(f"[train] member {i + 1} of {cfg.members}: seed {mcfg.seed}{note}", flush=True)
            mcfg.check()
            if kept:
                runs.append(kept)
            else:
                runs.append(_train_one(mcfg, member=(i, cfg.members), network=network))
                _keep_member(mcfg)
            if i == 0:
                network = _first_network(tmp)
        arts = [load(str(Path(tmp, f"m{i}"))) for i in range(cfg.members)]
        pooled = members.combine(arts)
        return _write_pooled(cfg, pooled, runs, Path(tmp, "m0"))


# A member's finished artifact, in its Ray Train run folder; the marker is written after every file of it.
MEMBER_DIR, MEMBER_DONE = "member-artifact", "member-artifact.done"
# flags that do not change a member's artifact: a resumed pool may differ in these and still take it
_MEMBER_NEUTRAL = ("resume", "output", "s3_endpoint", "ray_address")


def _keep_member(mcfg: TrainConfig) -> None:
    """Copy a member's finished artifact (at its scratch --output) into its run folder under --storage."""
    import pyarrow.fs as pafs

    run = storage.join(mcfg.storage, _provenance_at(mcfg.output)["run_name"])
    fs, path = storage.arrow_fs(storage.join(run, MEMBER_DIR), mcfg.s3_options())
    _copy_tree(pafs.LocalFileSystem(), mcfg.output, fs, path)
    storage.write_bytes(storage.join(run, MEMBER_DONE), b"", mcfg.s3_options())


def _finished_member(mcfg: TrainConfig) -> dict | None:
    """--resume: a member whose run had finished, trained with the same flags, copied to its scratch --output;
    its metrics. None when it has to run (cut off, kept by an earlier version, or its flags differ: said)."""
    import pyarrow.fs as pafs

    from jobs._finalize import config_of

    opts = mcfg.s3_options()
    run = storage.join(mcfg.storage, _resumed_run(mcfg))
    if not storage.exists(storage.join(run, MEMBER_DONE), opts):
        return None
    fs, path = storage.arrow_fs(storage.join(run, MEMBER_DIR), opts)
    _copy_tree(fs, path, pafs.LocalFileSystem(), mcfg.output)
    then = _provenance_at(mcfg.output).get("config", {})
    now = json.loads(json.dumps(config_of(mcfg)))  # as the artifact's JSON holds it (tuples as lists)
    changed = sorted(k for k in set(then) | set(now) if k not in _MEMBER_NEUTRAL and then.get(k) != now.get(k))
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        print(f"[train] {mcfg.name}: finished with other values of {flags}: its artifact is made again", flush=True)
        shutil.rmtree(mcfg.output)  # (nothing of the old artifact, its report included, may end in the new one)
        return None
    return json.loads(Path(mcfg.output, "metrics.json").read_text())


def _provenance_at(folder: str) -> dict:
    """The provenance in a local artifact folder's artifact.json (no weights read: the pool loads them later)."""
    from landmark_core.artifact import META_FILE

    return json.loads(Path(folder, META_FILE).read_text()).get("provenance", {})


def _copy_tree(src_fs, src: str, dst_fs, dst: str) -> None:
    """A folder's files from one pyarrow filesystem to another (local or S3), its subfolders made first."""
    import pyarrow.fs as pafs

    infos = src_fs.get_file_info(pafs.FileSelector(src, recursive=True))
    for d in [dst] + [f"{dst}/{i.path[len(src) :].lstrip('/')}" for i in infos if i.type == pafs.FileType.Directory]:
        dst_fs.create_dir(d, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def _members_started(cfg: TrainConfig, base: str) -> list[bool]:
    """Which members have an earlier run to continue under --storage. With --resume and none, the same error as
    one run's (a wrong --name or --storage must not silently retrain all K); members after the cut start fresh."""
    if not cfg.resume:
        return [False] * cfg.members
    opts = cfg.s3_options()
    started = [storage.exists(_latest_pointer(cfg, f"{base}-m{i}"), opts) for i in range(cfg.members)]
    if not any(started):
        raise ConfigError(
            f"--resume: no earlier run named {base!r} (members {base}-m0 to {base}-m{cfg.members - 1}) under "
            f"--storage {_shown_storage(cfg)}"
        )
    return started


def _first_network(tmp: str) -> dict[str, bytes]:
    """The first member's ONNX model per runtime with a fit of its own: the pooled Predictor runs it, and every
    other member's head on its embedding (built at the first member's finalize: a cache hit)."""
    from jobs._finalize import OPEN_WORLD_RUNTIMES
    from landmark_core import onnx_runtime as rt
    from landmark_core.artifact import load

    first = load(str(Path(tmp, "m0")))
    return {name: rt.model_bytes(first, name) for name in OPEN_WORLD_RUNTIMES}


def _write_pooled(cfg: TrainConfig, pooled, runs: list[dict], first: Path) -> dict:
    """The pooled artifact at --output, its metrics (the first member's, with every member's and the pooled
    thresholds and the pooled decision on the test split and --unknown), the first member's history and report."""
    from landmark_core import onnx_runtime as rt
    from landmark_core.artifact import save

    opts = cfg.s3_options()
    # the network and the head that names the landmark are the first run's; the decision is the pool's
    metrics = {k: v for k, v in runs[0].items() if not k.startswith(DECISION_METRICS) and k != "model_id"}
    metrics["abstain_threshold"] = pooled.abstain["threshold"]
    metrics["members"] = {
        "count": cfg.members,
        "seeds": [cfg.seed + i for i in range(cfg.members)],
        "thresholds": [r["abstain_threshold"] for r in runs],
        "runs": runs,
    }
    pooled.metrics = metrics
    metrics["model_id"] = save(pooled, cfg.output, storage_options=opts)
    for runtime in pooled.abstain.get("runtimes", {}):  # one network: the first member's ONNX models serve
        blob = rt.cached_model(runs[0]["model_id"], runtime)
        if blob is not None:
            rt.cache_model(metrics["model_id"], runtime, blob)
    # the tag job's CPU runtime has its own fit: its decision, beside fp32's
    by_runtime, open_world = _pooled_decision(cfg, list(pooled.abstain.get("runtimes", {})))
    test = metrics["members"]["test"] = by_runtime["torch"]
    if test:
        metrics["members"]["test_by_runtime"] = by_runtime
        metrics["test_false_abstain"] = test["abstained"]
    if open_world:
        metrics["open_world"] = open_world
    storage.write_bytes(storage.join(cfg.output, "metrics.json"), json.dumps(metrics, indent=2).encode(), opts)
    for f in sorted(first.rglob("*")):
        if f.is_file() and (f.name == "history.json" or f.parent.name == "report"):
            storage.write_bytes(storage.join(cfg.output, str(f.relative_to(first))), f.read_bytes(), opts)
    print(
        f"[train] wrote {cfg.output} (model_id {metrics['model_id']}): {cfg.members} members pooled, threshold "
        f"{_thresholds_by_runtime(pooled.abstain)}{_test_text(metrics['members'].get('test_by_runtime'))}",
        flush=True,
    )
    return metrics


def _test_text(by_runtime: dict | None) -> str:
    """The pooled decision on the test split, each runtime named: the tag job on a CPU runs int8, whose
    decision can differ from fp32's by a photo or two (its own features, score and threshold)."""
    if not by_runtime:
        return ""
    parts = [
        f"{'fp32' if runtime == 'torch' else runtime} right {t['right']:.4f}, abstained {t['abstained']:.4f}, "
        f"wrong {t['wrong']:.4f}"
        for runtime, t in by_runtime.items()
    ]
    return "; test " + "; ".join(parts)


# a run's metrics of its own tag decision: in the pooled model's metrics.json under members.runs only
DECISION_METRICS = ("abstain_threshold", "test_false_abstain", "fit_", "open_", "n_unknown")


def _pooled_decision(cfg: TrainConfig, runtimes: list[str]) -> tuple[dict | None, dict | None]:
    """The pooled decision on the test split on torch (as the members' own metrics) and on each of ``runtimes``,
    each test photo read once: {runtime: shares right (tagged with its landmark), abstained and wrong}; and with
    --unknown, eval's open-world numbers on the test and unknown photos (torch), as one run's metrics have them
    (``open_world``)."""
    import numpy as np

    from landmark_core.datasets import load_labelled, load_unlabelled
    from landmark_core.evaluation import UNKNOWN, Outcomes, summary
    from landmark_core.predictor import Predictor

    opts = cfg.s3_options()
    preds = {rt: Predictor(cfg.output, storage_options=opts, runtime=rt) for rt in ("torch", *runtimes)}
    test = load_labelled(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, opts=opts).test
    known = _decide(preds, "test", list(test.uris), np.asarray(test.labels), opts)
    by_runtime = {rt: _shares(o) for rt, o in known.items()}  # (None each when no test photo was read)
    unknown = load_unlabelled(cfg.unknown, opts) if cfg.unknown else []
    if not unknown:
        return by_runtime, None
    torch_only = {"torch": preds["torch"]}
    unknown_outcomes = _decide(torch_only, "unknown", unknown, np.full(len(unknown), UNKNOWN), opts)["torch"]
    both = summary(Outcomes.concat([known["torch"], unknown_outcomes]))
    both.pop("reliability")
    return by_runtime, both


def _shares(known) -> dict | None:
    """Shares of the known photos right (tagged with their landmark), abstained and wrong."""
    if not len(known.label):
        return None
    right = known.tagged & (known.pred == known.label)
    return {
        "photos": len(known.label),
        "right": float(right.mean()),
        "abstained": float((~known.tagged).mean()),
        "wrong": float((known.tagged & ~right).mean()),
    }


def _decide(preds: dict, group: str, uris: list[str], labels, opts) -> dict:
    """Each Predictor's decision on ``uris`` as eval's Outcomes, {runtime: Outcomes} (photos that do not decode
    left out), 64 photos at a time, each decoded once for all (one artifact: one preprocessing): a large split
    must not be one forward pass."""
    from landmark_core.evaluation import Outcomes
    from landmark_core.status import TAGGED
    from landmark_core.training import eval_arrays

    parts = {rt: [] for rt in preds}
    preset = next(iter(preds.values())).preset
    for s in range(0, len(uris), 64):
        images, ok = eval_arrays(uris[s : s + 64], opts, preset)
        for rt, pred in preds.items():
            out = pred.predict_arrays(images[ok])
            top = out["topk_idx"][:, 0]
            parts[rt].append(Outcomes.of(group, labels[s : s + 64][ok], top, out["score"], out["status"] == TAGGED))
    empty = Outcomes.of(group, [], [], [], [])
    return {rt: Outcomes.concat(p) if p else empty for rt, p in parts.items()}


def _check_sources(cfg: TrainConfig, opts: storage.S3Options) -> None:
    """Before any Ray work: the S3 locations answer (seconds, one line naming the flag) and a --weights file
    loads here as it will in every worker, so a missing, corrupt or untrusted pickle fails now, not on N workers."""
    try:
        for flag, uri in (("--data", cfg.data), ("--output", cfg.output), ("--storage", cfg.storage)):
            storage.check_reachable(flag, uri, opts)
    except storage.StorageError as e:
        raise ConfigError(str(e)) from None
    if cfg.weights not in ("imagenet", "none"):
        from landmark_core.weights import WeightsError, load_state_dict_file

        try:
            load_state_dict_file(cfg.weights, cfg.s3_options(), trust_pickle=cfg.trust_pickle)
        except WeightsError as e:
            raise ConfigError(f"--weights: {e}") from None


def location_warning(catalog, coords_file: str | None = None) -> str | None:
    """Known folder names get their location from the catalog; others need --coords or coords.json (or their
    rows in the coords file read: ``coords_file``, as data_warnings names it)."""
    from landmark_core.catalog import COORDS_HEADER, no_location_note

    how = f"--coords FILE (CSV: {COORDS_HEADER}, or JSON) or put coords.json / coords.csv in the --data folder"
    note = no_location_note(
        catalog.without_location,
        len(catalog),
        what="landmarks",
        how=f"their rows in {coords_file} (CSV: {COORDS_HEADER})" if coords_file else how,
    )
    return note and f"[train] {note}"


def data_warnings(data, coords: dict | None, coords_file: str | None) -> list[str]:
    """One line each, before Ray: rows of the coords file that match no class folder, landmarks with no location,
    landmarks with no validation photo."""
    lines = (_coords_warning(data, coords, coords_file), location_warning(data.catalog, coords_file))
    return [line for line in (*lines, _no_val_warning(data)) if line]


def _coords_warning(data, coords: dict | None, coords_file: str | None) -> str | None:
    note = coords_file_note(coords, data.catalog, coords_file, "class folder of --data")
    return note and f"[train] warning: {note}"


def _refuse_coords_of_other_folders(data, coords: dict | None, coords_file: str | None) -> None:
    """A coordinates file none of whose rows names a landmark of --data is the wrong file, or keyed by names
    where the folders are ids (a GLDv2 split's): the model would know no landmark's location, which is its point,
    so it is refused before Ray, not warned of after ten minutes of training."""
    if coords and len(unmatched_coords(coords, data.catalog)) == len(coords):
        raise ConfigError(
            f"{coords_file}: none of its {len(coords)} rows names a class folder of --data ({listed(list(coords))}; "
            f"the folders: {listed(data.catalog.folders)}): a row's folder column is the landmark's folder name "
            "(a GLDv2 split's folders are its landmark_ids; a name column beside it names the landmark)"
        )


def _no_val_warning(data) -> str | None:
    """A landmark with one photo trains on it and has none held back: the temperature and the threshold, fitted
    on validation photos, never see it."""
    with_val = set(data.val.labels)
    if unseen := [lm.folder for lm in data.catalog if lm.id not in with_val]:
        return (
            f"[train] warning: {len(unseen)} of {len(data.catalog)} landmarks have no validation photo "
            f"({listed(unseen)}: one photo, kept for training): their temperature and tag threshold rest on the "
            "other landmarks' photos. Give each 2 photos or more"
        )
    return None


def _load_inputs(cfg: TrainConfig, opts: storage.S3Options):
    """The photos and locations the flags name, listed before any Ray work: (data, unknown, negatives, warning
    lines). A folder with no photos, a malformed coordinates file, one landmark only or negatives that leave
    nothing to hold back is a ConfigError naming its flag."""
    from landmark_core.datasets import load_labelled, load_negatives, load_unlabelled

    coords, coords_file = _coords(cfg)
    with _names_flag("--data"):
        data = load_labelled(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, coords=coords, opts=opts)
    _refuse_one_landmark(cfg, data)
    _refuse_coords_of_other_folders(data, coords, coords_file)
    with _names_flag("--unknown"):
        unknown = load_unlabelled(cfg.unknown, opts) if cfg.unknown else []
    with _names_flag("--negatives"):
        negatives = load_negatives(cfg.negatives, fit_fraction=cfg.negatives_fit_fraction, seed=cfg.seed, opts=opts)
    _refuse_known_negatives(cfg, data, negatives.train + negatives.fit)
    if cfg.negatives and not negatives.fit:  # else the model would quietly be a closed-world one
        raise ConfigError(
            f"--negatives: no photo can be held back to fit the open-world score and threshold ({negatives.summary()}"
            "): a folder of photos needs at least 2, one to train on and one to hold back"
        )
    warnings = data_warnings(data, coords, coords_file)
    warnings += [_coarse_rate_warning(negatives, cfg.max_wrong_rate), _unmeasured_folders_warning(negatives)]
    warnings += [_closed_world_note(negatives, data), _no_test_warning(data)]
    return data, unknown, negatives, [w for w in warnings if w]


def _thresholds_by_runtime(abstain: dict) -> str:
    """ "0.1421 (fp32; onnx-int8 0.1651)": each runtime tags at its own fit's threshold, and the tag job on a CPU
    runs int8, so the fp32 figure alone would not be the one its rows are cut at."""
    others = [f"{rt} {fit['threshold']:.4f}" for rt, fit in sorted(abstain.get("runtimes", {}).items())]
    return f"{abstain['threshold']:.4f}" + (f" (fp32; {', '.join(others)})" if others else "")


def _unmeasured_folders_warning(negatives) -> str | None:
    """A negatives folder of one photo trains, but holds nothing back: the threshold's mean over the folders then
    leaves that kind of photo out, which the run would otherwise not show."""
    if not negatives:
        return None
    held = Counter(negatives.fit_groups)
    alone = [g for i, g in enumerate(negatives.groups) if not held[i]]
    if not alone:
        return None
    return (
        f"[train] warning: {len(alone)} --negatives folder(s) hold one photo ({listed(alone)}): it trains, but none "
        "is held back, so the threshold does not measure that kind of photo. Give each folder 2 photos or more, or "
        "merge it into a larger one"
    )


def _no_test_warning(data) -> str | None:
    """A --data without test/ (bare class folders, a GLDv2 root) leaves no test split: validation numbers only."""
    if len(data.test):
        return None
    return (
        "[train] note: --data has no test/ split, so its photos are split for training and validation only: the "
        "run reports validation numbers; measure the model on photos it never saw with `landmark eval --known DIR` "
        "(`landmark data split DIR --dest NEW` holds out a test split of class folders for it)"
    )


def _closed_world_note(negatives, data) -> str | None:
    """Without negatives the model is closed-world, which is right for sorting photos known to show a catalog
    landmark and wrong for tagging uploads, where most photos show none: said before the run, not found later."""
    if negatives:
        return None
    return (
        f"[train] note: no --negatives, so this is a closed-world model: its score is a probability among its "
        f"{len(data.catalog)} landmarks, and photos of other places pass its threshold too (the README's vietnam "
        "model tags 46% of other landmarks' photos). To tag uploads, give photos of no catalog landmark with "
        "--negatives DIR (README: 'Open world')"
    )


def _coarse_rate_warning(negatives, rate: float) -> str | None:
    """Held-back folders too small for --max-wrong-rate: the threshold caps the mean over the folders of each one's
    share tagged, so one photo of a folder of n held back among G folders is 1 / (G n) of that mean. Where that is
    more than the rate, no held-back photo of the folder may pass: its highest-scoring photo sets the threshold."""
    counts = Counter(negatives.fit_groups)
    coarse = {negatives.groups[g]: n for g, n in sorted(counts.items()) if 1.0 / (len(counts) * n) > rate}
    if not coarse:
        return None
    smallest = sorted(coarse.items(), key=lambda kv: kv[1])
    shown = ", ".join(f"{name!r} {n}" for name, n in smallest[:5]) + (
        f" and {len(smallest) - 5} more" if len(smallest) > 5 else ""
    )
    return (
        f"[train] warning: --max-wrong-rate {rate:g} is finer than {len(coarse)} of the {len(counts)} held-back "
        f"negatives folder(s) can measure (photos held back: {shown}): one photo of such a folder is more "
        f"than {rate:g} of the mean over the folders, so none of its held-back photos may pass the threshold and "
        "its highest-scoring photo sets it. Put photos of one kind in fewer, larger folders (every folder below a "
        "--negatives root is one), or give a higher --max-wrong-rate"
    )


def _refuse_one_landmark(cfg: TrainConfig, data) -> None:
    """One class: its softmax is 1 whatever the photo, so the model tags a cat as it at 100%. With --negatives the
    run finishes too, but its head learns nothing (no loss to lower) and it abstained on every test photo."""
    if len(data.catalog) < 2:
        raise ConfigError(
            f"--data {cfg.data}: 1 landmark ({data.catalog.folders[0]!r}); a model needs at least 2 to choose "
            "between (--negatives does not make up for it: a one-class head learns nothing)"
        )


def _refuse_known_negatives(cfg: TrainConfig, data, negatives: list[str]) -> None:
    """Negatives that are --data's own photos (its test folder given as --negatives, links to its photos) would
    train the model to reject its own landmarks and fit the threshold on them: refused, naming the folder."""

    where = storage.absolute  # a local photo by its real path (links followed)
    root = where(cfg.data)
    known = {where(u) for split in (data.train, data.val, data.test) for u in split.uris}
    clash = [n for n in negatives if storage.inside(where(n), root) or where(n) in known]
    if not clash:
        return
    given = {n: storage.absolute(n) for n in cfg.negatives}
    flag = next((f"--negatives {n}" for n, top in given.items() if storage.inside(clash[0], top)), "--negatives")
    raise ConfigError(
        f"{flag}: {len(clash)} of its photos are under --data {cfg.data} or are its photos (e.g. {clash[0]}); "
        "negatives must be photos of no catalog landmark"
    )


@contextmanager
def _names_flag(flag: str):
    """A bad input behind ``flag`` (no photos, an unreadable or malformed file) -> a ConfigError that names it."""
    try:
        yield
    except (OSError, ValueError) as e:  # DatasetError and CatalogError are ValueErrors
        raise ConfigError(str(e) if str(e).startswith(flag) else f"{flag}: {e}") from None


def _coords(cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """The coordinates of --coords, else of a coords.json / coords.csv at --data's root (the synthetic generator
    writes one), and that file as messages name it; a malformed row is a ConfigError naming the file and line."""
    from landmark_core.catalog import CatalogError, load_coords

    path = cfg.coords or coords_file_beside(cfg.data)
    if path is None:
        return None, None
    flag = "--coords" if cfg.coords else f"--data {cfg.data}:"
    try:
        return load_coords(path), f"{flag} {Path(path)}"
    except CatalogError as e:  # (its message starts with the file)
        raise ConfigError(f"{flag} {e}") from None


def _latest_pointer(cfg: TrainConfig, base: str) -> str:
    """The file under --storage naming the latest run of ``base`` (what --resume continues)."""
    return storage.join(cfg.storage, f".{base}.latest")


def _base_name(cfg: TrainConfig) -> str:
    return cfg.name or Path(cfg.output.rstrip("/")).name or "landmark"


def _resumed_run(cfg: TrainConfig) -> str:
    """--resume: the run to continue under --storage (no Ray needed to find it)."""
    base, opts = _base_name(cfg), cfg.s3_options()
    try:
        if cfg.name and storage.exists(storage.join(cfg.storage, cfg.name), opts):
            return cfg.name
        if storage.exists(pointer := _latest_pointer(cfg, base), opts):
            return storage.read_bytes(pointer, opts).decode().strip()
    except storage.StorageError as e:
        raise ConfigError(str(e)) from None
    raise ConfigError(f"--resume: no earlier run named {base!r} under --storage {_shown_storage(cfg)}")


def _shown_storage(cfg: TrainConfig) -> str:
    """--storage as an error shows it: a relative path (the default) made absolute, for it depends on the cwd."""
    return cfg.storage if storage.is_s3(cfg.storage) else os.path.abspath(cfg.storage)


def _new_run_name(cfg: TrainConfig) -> str:
    base = _base_name(cfg)
    name = f"{base}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    storage.write_bytes(_latest_pointer(cfg, base), name.encode(), cfg.s3_options())
    return name


def _make_trainer(cfg: TrainConfig, data, unknown: list[str], negatives, resumed: str | None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs._train_worker import train_loop

    run_name = resumed or _new_run_name(cfg)
    fs, path = storage.arrow_fs(cfg.storage, cfg.s3_options())
    if not storage.is_s3(cfg.storage):
        Path(path).mkdir(parents=True, exist_ok=True)
    loop_cfg = {
        "cfg": cfg,
        "n_classes": len(data.catalog),
        "train": (data.train.uris, data.train.labels),
        "val": (data.val.uris, data.val.labels),
        "test": (data.test.uris, data.test.labels),
        "unknown": unknown,
        "neg_train": negatives.train if negatives else [],
        "neg_fit": (negatives.fit, negatives.fit_groups) if negatives else ([], []),
    }
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer, run_name


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", output="")
    p.add_argument("--data", required=True, help="class-folder dataset or GLDv2 CSV layout (path or s3://)")
    p.add_argument("--output", required=True, help="artifact directory to write (path or s3://)")
    p.add_argument("--model", default=d.model, help=f"default {d.model}; one of: {', '.join(KNOWN_MODELS)}")
    p.add_argument(
        "--weights",
        default=d.weights,
        help="pretrained backbone weights: imagenet (default), none, or a state-dict file path/s3:// URI",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a --weights FILE that needs full unpickling (it can run code): only for files you "
        "trust; .safetensors and tensors-only .pth never need it",
    )
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only, on cached features")
    p.add_argument("--workers", type=int, default=d.workers, help="Ray Train workers (DDP processes)")
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=d.gpus_per_worker,
        help="GPUs per Ray Train worker (default 0: train on CPU; > 0 trains on GPU with NCCL)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=d.cpus_per_worker,
        help="CPUs per Ray Train worker, also its torch threads (default 1)",
    )
    p.add_argument(
        "--epochs", type=int, default=d.epochs, help="training epochs (default 10; --patience may stop sooner)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per worker")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate of the head (default 1e-3 fine-tune, 3e-3 frozen, 2e-3 scratch)",
    )
    p.add_argument(
        "--backbone-lr-mult",
        type=float,
        default=d.backbone_lr_mult,
        help="backbone learning rate as a multiple of the head's --lr (default 0.1)",
    )
    p.add_argument(
        "--optimizer",
        default=d.optimizer,
        choices=("adamw", "sgd"),
        help="adamw (default) or sgd (Nesterov, momentum 0.9)",
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="optimizer weight decay (default 0.05)")
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.warmup_epochs,
        help="epochs of linear learning-rate warm-up before the cosine decay (default 1)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        help="label smoothing of the cross-entropy loss (default 0.1)",
    )
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the head (default 0.2)")
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early stopping: epochs without a better validation loss before the run stops (default 3, >= 1)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="model input side in pixels (default: the backbone's pretraining side, 224; efficientnet_lite1 240, "
        "efficientnet_lite2 260)",
    )
    p.add_argument(
        "--crop-fraction",
        type=float,
        default=d.crop_fraction,
        help="the eval crop's share of the photo's short side, resized to --image-size / this (default 0.875, the "
        "ImageNet convention; 1: the whole centre square). Recorded in the artifact: tag, serve and eval use it",
    )
    p.add_argument(
        "--feature-views",
        type=int,
        default=d.feature_views,
        help="frozen backbone: cached views per photo (1 = centre crop only)",
    )
    p.add_argument(
        "--probe-epochs",
        type=int,
        default=d.probe_epochs,
        help="fine-tuning: head-only epochs on frozen features first (0 = off)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of train/ held back for validation when the data has no val/ (default 0.15, in (0, 1))",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seeds training, the validation split and the negatives' split (default 0); with --members K, "
        "the runs use seeds seed..seed+K-1",
    )
    p.add_argument(
        "--storage",
        default=d.storage,
        help=f"Ray Train checkpoint storage, path or s3:// (default {d.storage}, relative to the current folder: "
        "--resume looks there)",
    )
    p.add_argument("--name", default=None, help="run name (default: output folder name + time)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this name from its checkpoint")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker failures survived per run")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    p.add_argument("--coords", default=None, help="CSV/JSON of landmark coordinates for the catalog")
    p.add_argument("--unknown", default=None, help="photos of no catalog landmark, for open-set evaluation")
    p.add_argument(
        "--negatives",
        action="append",
        default=[],
        metavar="DIR",
        help="photos of no catalog landmark (recursive; repeat for several folders): a seeded part "
        "trains the model to reject them and serves as distractors, the rest fits the score",
    )
    p.add_argument(
        "--negatives-fit-fraction",
        type=float,
        default=d.negatives_fit_fraction,
        help="share of each negatives folder held back to fit the score and the threshold",
    )
    p.add_argument(
        "--outlier-weight",
        type=float,
        default=d.outlier_weight,
        help="weight of the outlier-exposure loss on negatives, fine-tuned or --freeze-backbone (0 = off)",
    )
    p.add_argument(
        "--negatives-sampling",
        default=d.negatives_sampling,
        choices=NEGATIVE_SAMPLINGS,
        help="each epoch's negatives: every folder drawn alike (balanced) or every photo alike (uniform)",
    )
    p.add_argument(
        "--max-wrong-rate",
        type=float,
        default=d.max_wrong_rate,
        help="with --negatives: share of held-back negatives the threshold may tag (mean over folders)",
    )
    p.add_argument(
        "--members",
        type=int,
        default=d.members,
        help="with --freeze-backbone and --negatives: train this many runs (seeds --seed, --seed+1, ...), each its "
        "own split, head and threshold, and pool their tag decision in one artifact (one network)",
    )
    p.add_argument(
        "--abstain-method",
        default=d.abstain_method,
        choices=("auto",) + METHODS,
        help='open-set score of the "no landmark" threshold (auto: knn); with --negatives the fitted '
        "open-world score, and any other value than auto is refused",
    )
    p.add_argument(
        "--accept-rate",
        type=float,
        default=d.accept_rate,
        help="share of known validation photos the abstain threshold accepts",
    )
    p.add_argument(
        "--recognizer",
        default=d.recognizer,
        choices=("auto",) + RECOGNIZERS,
        help="how the model names a landmark: its head, a kNN vote over its gallery of training photos, "
        "or both; auto (default) picks the best top-1 on the validation split",
    )
    p.add_argument("--loader-workers", type=int, default=None, help="DataLoader processes per worker")
    p.add_argument("--cache-mb", type=int, default=d.cache_mb, help="decoded-photo cache per worker")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip the report PNGs")
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, set by `ray job submit`; else a local Ray; "
        "'auto' joins a cluster started with `ray start` on this machine)",
    )


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    return fields_of(TrainConfig, ns, negatives=tuple(ns.negatives or ()))


def _show(metrics: dict, _cfg: TrainConfig) -> None:
    """The model at --output in one JSON line; a pool's: its decision on the test split (right, abstained, wrong),
    and the top-1 numbers of its head, which is the first member's."""
    shown = {k: metrics[k] for k in ("val_top1", "test_top1", "test_top5", "test_ece") if k in metrics}
    if pool := metrics.get("members"):
        test = {f"test_{k}": v for k, v in (pool.get("test") or {}).items() if k != "photos"}
        shown = {"members": pool["count"], **test, **shown}
    print(json.dumps(shown))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark train", description=__doc__.split("\n")[0])
    add_arguments(p)
    try:
        return run_cli(p, argv, config=config_from_args, run=run, show=_show)
    except Interrupted:
        print(
            f"{p.prog}: interrupted; rerun the same command with --resume to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:  # before Ray Train's run (nothing to resume) or while its artifact is written
        print(f"{p.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
