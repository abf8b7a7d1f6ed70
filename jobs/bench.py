"""`landmark bench tag|train|store|serve`: throughput measured side by side in one run, printed as ratios.

bench store: see jobs/_bench_store.py (our query paths against raw DuckDB on the same files, 1M..10M rows);
bench serve: jobs/_bench_serve.py (the app over HTTP against the Predictor in-process).

bench tag, on the same photos with the same model, (b), (c) and (e) on the same runtime (--runtime):
  (a) decode+preprocess alone, all cores (a process per core)
  (b) the model alone on pre-decoded uint8 batches (and, for reference, the torch fp32 model alone)
  (c) the best single-process loop doing both: the faster of (c1) one decode thread overlapped with the model
      and (c2) a decode thread per core overlapped with the model
  (d) the seed's naive loop: torch fp32, PIL full decode, Resize+CenterCrop (256/224 for a 224-px model), one photo
      at a time
  (e) the real Ray Data tag job end to end (read, decode, model, Parquet write, verify, commit), each time in a
      fresh driver process joining this machine's Ray (a new Ray job, as `ray job submit` runs the nightly job;
      Ray's own start-up and Ray Data's cluster services come first, untimed):
      - the photos twice in one driver: the first run pays the job's start-up (its worker processes start, import
        Ray Data and load the model: pipeline_cold_ips), the second is the job's steady rate (pipeline_ips),
        which like (b)-(d) excludes loading and warming up;
      - --scale copies of the photos (symlinks) in another fresh driver: its rate, and the peak RSS of the job's
        processes (driver + its workers) against the 1x job's: streaming means it does not grow with the input.
ratio_limit = e / c, ratio_naive = e / d (steady; ratio_limit_cold from the first run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs._cli import ConfigError, checks_config, run_cli
from jobs.tag import COMPUTE_MODES, TagConfig
from landmark_core import proctree
from landmark_core.datasets import list_files
from landmark_core.onnx_runtime import RUNTIMES

# ---------------------------------------------------------------- memory


def _tree_rss(root: int) -> dict[int, int]:
    """{pid: resident bytes} of ``root`` and all its descendants (no psutil needed)."""
    return proctree.resident_bytes(proctree.descendants(root))


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants."""
    return sum(_tree_rss(root).values())


class PeakRSS:
    """Samples the process tree's RSS every ``interval`` seconds while active; ``new_only``: only the processes
    that were not there when it started (a job's driver and the workers started for it)."""

    def __init__(self, interval: float = 0.25, *, new_only: bool = False):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._old = set(_tree_rss(os.getpid())) if new_only else set()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _sample(self) -> None:
        self.peak = max(self.peak, sum(v for pid, v in _tree_rss(os.getpid()).items() if pid not in self._old))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


# ---------------------------------------------------------------- stages


def _decode_one(args):
    path, preset_json = args
    from landmark_core.preprocess import EvalPreset, decode_image

    preset = EvalPreset.from_json(preset_json)
    return preset.to_uint8(decode_image(Path(path).read_bytes(), draft_to=preset.draft_target()).image)


def bench_decode(paths: list[str], preset, workers: int) -> tuple[float, np.ndarray]:
    args = [(p, preset.to_json()) for p in paths]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_one, args[:workers]))  # warm the workers' imports
        t0 = time.perf_counter()
        images = list(pool.map(_decode_one, args, chunksize=4))
        dt = time.perf_counter() - t0
    return len(paths) / dt, np.stack(images)


def bench_model(predictor, images: np.ndarray, batch_size: int) -> float:
    predictor.predict_arrays(images[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(images), batch_size):
        predictor.predict_arrays(images[s : s + batch_size])
    return len(images) / (time.perf_counter() - t0)


def bench_limit(predictor, paths: list[str], batch_size: int, decode_threads: int = 1) -> float:
    """One process: threads decode batch i+1 (Pillow releases the GIL) while the model runs on batch i."""
    preset = predictor.preset
    preset_json = preset.to_json()
    batches = [paths[s : s + batch_size] for s in range(0, len(paths), batch_size)]
    predictor.predict_arrays(np.stack([_decode_one((p, preset_json)) for p in batches[0][:2]]))  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(decode_threads) as pool:

        def decode(batch):  # the photos of a batch spread over the pool's threads
            return [pool.submit(_decode_one, (p, preset_json)) for p in batch]

        nxt = decode(batches[0])
        for i in range(len(batches)):
            images = np.stack([f.result() for f in nxt])
            if i + 1 < len(batches):
                nxt = decode(batches[i + 1])
            predictor.predict_arrays(images)
    return len(paths) / (time.perf_counter() - t0)


def bench_naive(net, paths: list[str], preset) -> float:
    """The seed project's way: full decode, torchvision Resize/CenterCrop (at the model's side), batch of one."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose(
        [T.Resize(preset.resize), T.CenterCrop(preset.size), T.ToTensor(), T.Normalize(preset.mean, preset.std)]
    )
    with torch.inference_mode():
        net(tf(Image.open(paths[0]).convert("RGB"))[None])
        t0 = time.perf_counter()
        for p in paths:
            net(tf(Image.open(p).convert("RGB"))[None])
    return len(paths) / (time.perf_counter() - t0)


def scaled_tree(paths: list[str], root: str, scale: int, into: str) -> str:
    """``scale`` copies of these photos as symlinks (copy0/..., copy1/...): distinct URIs, the same photos."""
    root = Path(root).resolve()
    for p in map(Path, paths):
        for i in range(scale):
            dst = Path(into, f"copy{i}", p.relative_to(root))
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(p)
    return into


def job_driver(spec_json: str) -> None:
    """Runs in a fresh process, i.e. as a new Ray job on the running cluster, as `ray job submit` runs the nightly
    job: the tag job ``repeat`` times on the same photos (--retag), one JSON line of its run summary each."""
    from jobs.tag import TagConfig, run

    spec = json.loads(spec_json)
    for _ in range(spec["repeat"]):
        with tempfile.TemporaryDirectory() as out:
            s = run(TagConfig(**spec["config"], output=out, retag=True))
        print(
            "BENCH-RUN "
            + json.dumps({k: s[k] for k in ("images_per_second", "timings", "counts", "runtime", "compute")}),
            flush=True,
        )


def bench_job(config: dict, *, repeat: int, address: str) -> dict:
    """The tag job in a fresh driver process; its summaries and the peak RSS of the job's processes (the driver
    and the worker processes started for it: every process below this one that is new)."""
    with tempfile.TemporaryFile("w+") as log, PeakRSS(0.1, new_only=True) as mem:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from jobs.bench import job_driver; job_driver(sys.argv[1])",
                json.dumps({"config": config, "repeat": repeat}),
            ],
            env={**os.environ, "RAY_ADDRESS": address},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc.wait()
        log.seek(0)
        lines = log.read().splitlines()
    if proc.returncode:
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
        raise SystemExit(f"landmark bench: the tag job failed (exit {proc.returncode}); its output is above")
    for line in lines:
        if line.startswith("[tag]"):
            _say(line)
    runs = [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("BENCH-RUN ")]
    return {"runs": runs, "peak_rss": mem.peak}


# ---------------------------------------------------------------- bench tag


def run_tag(ns) -> dict:
    import torch

    from jobs.tag import TagConfig
    from landmark_core.artifact import build_network, load as load_artifact
    from landmark_core.predictor import Predictor

    paths = list_files(str(Path(ns.images).resolve()))
    if ns.limit:
        paths = paths[: ns.limit]
    if not paths:
        raise SystemExit(f"landmark bench: --images {ns.images}: no photos")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    job = TagConfig(
        input=ns.images, output="unused", model=ns.model, runtime=ns.runtime, compute=ns.compute, gpus_per_actor=0.0
    )
    runtime, compute = job.resolved_runtime(), job.resolved_compute()  # what (e) runs; (b) and (c) run it too
    predictor = Predictor(ns.model, threads=cores, runtime=runtime)  # builds and caches an ONNX model if needed
    out: dict = {
        "images": len(paths),
        "cores": cores,
        "batch_size": ns.batch_size,
        "runtime": runtime,
        "compute": compute,
    }
    with PeakRSS() as mem:
        out["decode_ips"], images = bench_decode(paths, predictor.preset, cores)
        _say(f"(a) decode+preprocess, {cores} processes: {out['decode_ips']:.1f} img/s")
        out["model_ips"] = bench_model(predictor, images, ns.batch_size)
        _say(f"(b) model alone ({runtime}), batch {ns.batch_size}: {out['model_ips']:.1f} img/s")
        torch_net = build_network(load_artifact(ns.model))
        if runtime != "torch":
            out["model_torch_ips"] = bench_model(Predictor(ns.model, threads=cores), images, ns.batch_size)
            _say(f"(b') model alone (torch fp32), batch {ns.batch_size}: {out['model_torch_ips']:.1f} img/s")
        c1 = bench_limit(predictor, paths, ns.batch_size, decode_threads=1)
        c2 = bench_limit(predictor, paths, ns.batch_size, decode_threads=cores)
        out["limit_ips"], out["limit_decode_threads"] = max((c1, 1), (c2, cores))
        _say(
            f"(c) best single-process loop (decode overlapped with the model, {runtime}): {out['limit_ips']:.1f} "
            f"img/s (1 decode thread {c1:.1f}, {cores} decode threads {c2:.1f})"
        )
        if ns.compare_model:
            out.update(
                bench_compare(
                    ns,
                    predictor,
                    Predictor(ns.compare_model, threads=cores, runtime=runtime),
                    paths,
                    images,
                    out["limit_decode_threads"],
                )
            )
        out["naive_ips"] = bench_naive(torch_net, paths, predictor.preset)
        _say(f"(d) seed-style loop (torch fp32, full decode, Resize+CenterCrop, batch 1): {out['naive_ips']:.1f} img/s")
        del predictor, images, torch_net
    out["bench_peak_rss_mb"] = round(mem.peak / 2**20, 1)  # (a)-(d) in this process
    out.update(bench_tag_job(ns, paths))
    for k in ("decode_ips", "model_ips", "model_torch_ips", "limit_ips", "naive_ips"):
        if k in out:
            out[k] = round(out[k], 2)
    # from the rates as printed (the job's come rounded from its run summary): e/c recomputed from the output agrees
    out["ratio_limit"] = round(out["pipeline_ips"] / out["limit_ips"], 3)
    out["ratio_naive"] = round(out["pipeline_ips"] / out["naive_ips"], 3)
    out["ratio_limit_cold"] = round(out["pipeline_cold_ips"] / out["limit_ips"], 3)
    _say(
        f"ratio_limit (e/c) {out['ratio_limit']}, ratio_naive (e/d) {out['ratio_naive']}; "
        f"cold e/c {out['ratio_limit_cold']}; the job's peak RSS {out['peak_rss_mb']} MB with 1x the photos, "
        f"{out['peak_rss_scaled_mb']} MB with {ns.scale}x ({out['rss_ratio_scaled']}x)"
    )
    return out


def bench_compare(
    ns, predictor, other, paths: list[str], images: np.ndarray, decode_threads: int, rounds: int = 3
) -> dict:
    """--compare-model: (b) and (c) of a second artifact (e.g. the same network with a gallery recognizer after
    `landmark catalog add`), alternating with the first so that the machine's load hits both alike; medians."""
    rates: dict[str, list[float]] = {
        "model": [],
        "model_cmp": [],
        "limit": [],
        "limit_cmp": [],
        "cpu": [],
        "cpu_cmp": [],
    }
    # a model of another input side (e.g. efficientnet_lite1 against lite0) times its own crops
    other_images = images if other.preset == predictor.preset else bench_decode(paths, other.preset, decode_threads)[1]
    for _ in range(rounds):
        for key, p, x in (("", predictor, images), ("_cmp", other, other_images)):
            cpu0 = time.process_time()
            rates["model" + key].append(bench_model(p, x, ns.batch_size))
            # photos per CPU-second of this process: on a machine shared with other jobs the wall clock mostly
            # measures them (bench_model's warm-up batch is counted too, alike for both)
            rates["cpu" + key].append(len(x) / max(time.process_time() - cpu0, 1e-9))
            rates["limit" + key].append(bench_limit(p, paths, ns.batch_size, decode_threads=decode_threads))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    out = {
        "compare_model": ns.compare_model,
        "compare_recognizer": other.recognizer.mode,
        "recognizer": predictor.recognizer.mode,
        "compare_model_cpu_ips": round(med["cpu_cmp"], 2),
        "compare_model_cpu_ips_base": round(med["cpu"], 2),
        "ratio_compare_model_cpu": round(med["cpu_cmp"] / med["cpu"], 3),
        "compare_model_ips": round(med["model_cmp"], 2),
        "compare_limit_ips": round(med["limit_cmp"], 2),
        "compare_model_ips_base": round(med["model"], 2),
        "compare_limit_ips_base": round(med["limit"], 2),
    }
    out["ratio_compare_model"] = round(out["compare_model_ips"] / out["compare_model_ips_base"], 3)
    out["ratio_compare_limit"] = round(out["compare_limit_ips"] / out["compare_limit_ips_base"], 3)
    _say(
        f"(b/c) --compare-model ({other.recognizer.mode}, {len(other.catalog)} landmarks) vs --model "
        f"({predictor.recognizer.mode}), medians of {rounds} alternating rounds: model alone "
        f"{out['compare_model_ips']:.1f} vs {out['compare_model_ips_base']:.1f} img/s "
        f"({out['ratio_compare_model']}x), single-process loop {out['compare_limit_ips']:.1f} vs "
        f"{out['compare_limit_ips_base']:.1f} ({out['ratio_compare_limit']}x); model alone per CPU-second "
        f"{out['compare_model_cpu_ips']:.1f} vs {out['compare_model_cpu_ips_base']:.1f} "
        f"({out['ratio_compare_model_cpu']}x)"
    )
    return out


def bench_tag_job(ns, paths: list[str]) -> dict:
    """(e): the real tag job, each time in a fresh driver process on this machine's Ray (a new Ray job, as the
    nightly `ray job submit` runs): 1x the photos twice in one driver (cold, then steady), then --scale x."""
    import ray

    from jobs._ray import init_ray

    init_ray(None, worker_env=None)  # Ray's start-up is not the job's
    address = ray.get_runtime_context().gcs_address
    if os.environ.get("RAY_ADDRESS"):  # the job's workers are then another Ray's processes, not below this one
        _say(
            f"joined the Ray at RAY_ADDRESS={os.environ['RAY_ADDRESS']}: the job's peak RSS below counts its "
            "driver only; unset RAY_ADDRESS to measure on a local Ray that the bench starts"
        )
    out: dict = {"ray_data_services_started": _start_ray_data_services(), "scale": ns.scale}
    config = {
        "model": str(Path(ns.model).resolve()),
        "runtime": ns.runtime,
        "compute": ns.compute,
        **({"decode_batch": ns.decode_batch} if ns.decode_batch else {}),
    }
    job = TagConfig(input=ns.images, output="unused", **config)
    if job.resolved_compute() == "actors":  # (in tasks the pool's flags do nothing, and the job would say so)
        config.update(batch_size=ns.batch_size, actors=[ns.actors, ns.actors], cpus_per_actor=ns.cpus_per_actor)
    with tempfile.TemporaryDirectory() as tree:  # the photos (all, or --limit of them) as (c) and (d) had them
        one = bench_job({**config, "input": scaled_tree(paths, ns.images, 1, tree)}, repeat=2, address=address)
    cold, steady = one["runs"]
    out["pipeline_cold_ips"] = cold["images_per_second"]
    out["pipeline_ips"] = steady["images_per_second"]
    out["startup_seconds"] = round(cold["timings"]["pipeline_seconds"] - steady["timings"]["pipeline_seconds"], 2)
    out["peak_rss_mb"] = round(one["peak_rss"] / 2**20, 1)
    _say(
        f"(e) the Ray Data tag job end to end ({steady['runtime']}, {steady['compute']}; read, decode, model, "
        f"Parquet write, verify, commit) in a fresh driver: first run {out['pipeline_cold_ips']} img/s (its worker "
        f"processes start, import and load the model: about {out['startup_seconds']} s), the same job again in "
        f"that driver {out['pipeline_ips']} img/s; peak RSS of the job's processes {out['peak_rss_mb']} MB"
    )
    with tempfile.TemporaryDirectory() as tree:
        scaled = bench_job(
            {**config, "input": scaled_tree(paths, ns.images, ns.scale, tree)}, repeat=1, address=address
        )
    run = scaled["runs"][0]
    if run["counts"]["total"] != ns.scale * len(paths):
        raise SystemExit(
            f"landmark bench: the {ns.scale}x job wrote {run['counts']['total']} rows, expected {ns.scale * len(paths)}"
        )
    out["rows_scaled"] = run["counts"]["total"]
    out["pipeline_scaled_ips"] = run["images_per_second"]
    out["peak_rss_scaled_mb"] = round(scaled["peak_rss"] / 2**20, 1)
    out["rss_ratio_scaled"] = round(scaled["peak_rss"] / max(one["peak_rss"], 1), 3)
    _say(
        f"(e{ns.scale}x) the same job on {ns.scale}x the photos ({ns.scale * len(paths)}, symlinks), fresh driver: "
        f"{out['pipeline_scaled_ips']} img/s; peak RSS of the job's processes {out['peak_rss_scaled_mb']} MB "
        f"({out['rss_ratio_scaled']}x the 1x job's)"
    )
    return out


def _start_ray_data_services() -> bool:
    """Start Ray Data's cluster services before timing (e): the stats actor and the autoscaling coordinator.

    Both are detached actors that the first Ray Data job on a fresh cluster starts and every later job reuses, so
    on a cluster that runs the nightly job they already exist; on the bench's fresh local Ray they would add
    seconds of Ray start-up to (e). Nothing of the tag job is started here: its worker processes, their imports
    and the model load stay in (e). Internal Ray Data API: when it moves, (e) is simply timed cold (False).
    """
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.stats import get_or_create_stats_actor

        ray.get(
            [a.__ray_ready__.remote() for a in (get_or_create_stats_actor(), get_or_create_autoscaling_coordinator())],
            timeout=120,
        )
        return True
    except Exception as e:  # pragma: no cover - depends on Ray's internals
        _say(f"could not start Ray Data's services ahead ({type(e).__name__}: {e}); (e) includes them")
        return False


def _say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


# ---------------------------------------------------------------- bench train


def train_config(ns, workers: int, frozen: bool, tmp: str):
    """One measured run's TrainConfig (checked, as `landmark train` checks it, before Ray starts)."""
    from jobs.train import TrainConfig

    return TrainConfig(
        data=ns.data,
        output=f"{tmp}/m",
        storage=f"{tmp}/r",
        model=ns.model,
        freeze_backbone=frozen,
        workers=workers,
        epochs=ns.epochs,
        # each mode only the flag it uses: no probe before fine-tuning, one cached view when frozen
        **({"feature_views": 1} if frozen else {"probe_epochs": 0}),
        report=False,
        patience=100,
    )


def run_train(ns) -> dict:
    from jobs._ray import init_ray
    from jobs.train import run as train_run

    out = feature_pass(ns)
    init_ray(None)
    for workers in ns.workers:
        for frozen in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                train_run(train_config(ns, workers, frozen, tmp))
                history = json.loads(Path(tmp, "m", "history.json").read_text())
            # epoch 1 of fine-tuning also decodes every photo once (later epochs read the decoded cache)
            steady = history[1:] or history
            key = f"{'frozen' if frozen else 'finetune'}_{workers}w_ips"
            out[key] = round(float(np.mean([h["images_per_second"] for h in steady])), 2)
            _say(f"{key}: {out[key]:.1f} img/s per epoch ({ns.model}, {workers} worker(s))")
    for w in ns.workers:
        out[f"frozen_speedup_{w}w"] = round(out[f"frozen_{w}w_ips"] / out[f"finetune_{w}w_ips"], 1)
    _say(", ".join(f"{k} {v}" for k, v in out.items() if "speedup" in k))
    return out


def feature_pass(ns) -> dict:
    """The frozen backbone's one pass over --data's photos (the eval crop), in this process on one thread, as a
    CPU worker runs it: torch against ONNX Runtime fp32, each after a warm-up batch, on photos decoded once before
    (both read the same cache): seconds and the ratio."""
    import torch

    from landmark_core.datasets import list_files
    from landmark_core.models import ModelSpec, build_model, native_image_size
    from landmark_core.preprocess import presets_for
    from landmark_core.storage import S3Options
    from landmark_core.training import UriImageDataset, cache_side_for, cached_features

    torch.set_num_threads(1)
    uris = list_files(ns.data)
    side = native_image_size(ns.model)  # as `landmark train` runs it by default
    train_p, eval_p = presets_for(side)
    ds = UriImageDataset(
        uris, [0] * len(uris), None, opts=S3Options(), draft_to=eval_p.resize, cache_side=cache_side_for(side)
    )
    for i in range(len(ds)):
        ds.image(i)  # decoded once, so that both passes time the network
    net = build_model(ModelSpec(ns.model, 2, weights="imagenet"))
    warm_up = UriImageDataset(
        uris[:8], [0] * len(uris[:8]), None, opts=S3Options(), draft_to=eval_p.resize, cache_side=cache_side_for(side)
    )
    out = {"feature_pass_photos": len(ds)}
    for runtime in ("torch", "onnx"):
        kw = dict(views=1, eval_preset=eval_p, train_preset=train_p, runtime=runtime)
        cached_features(net, warm_up, "cpu", **kw)
        t0 = time.perf_counter()
        cached_features(net, ds, "cpu", **kw)
        out[f"feature_pass_{runtime}_s"] = round(time.perf_counter() - t0, 2)
    out["feature_pass_speedup"] = round(out["feature_pass_torch_s"] / out["feature_pass_onnx_s"], 1)
    _say(
        f"feature pass, {len(ds)} photos, 1 thread: torch {out['feature_pass_torch_s']} s, onnx "
        f"{out['feature_pass_onnx_s']} s (the ONNX export included): {out['feature_pass_speedup']}x"
    )
    return out


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated row counts, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected row counts >= 1, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    _add_tag_parser(sub)
    _add_train_parser(sub)
    _add_store_parser(sub)

    from jobs import _bench_serve as bench_serve

    se = sub.add_parser(
        "serve", help="the app over HTTP vs the Predictor in-process; with and without batching; a mixed load test"
    )
    bench_serve.add_arguments(se)

    def config(ns: argparse.Namespace) -> BenchConfig:
        if ns.what == "serve":
            bench_serve.check_arguments(se, ns)  # exits 2 naming the flag, as `landmark bench serve`
        return BenchConfig(ns.what, ns)

    # an error while measuring is `landmark bench train: error: ...`, as a bad flag's (the subcommand's parser)
    return run_cli(p, argv, config=config, run=run, show=_show, prog=lambda cfg: f"landmark bench {cfg.what}")


def _add_tag_parser(sub) -> None:
    t = sub.add_parser("tag", help="decode / model / single-process limit / naive / Ray Data pipeline")
    t.add_argument("--images", required=True, help="a folder of photos (recursive)")
    t.add_argument("--model", required=True, help="model artifact")
    t.add_argument("--batch-size", type=int, default=16, help="photos per model call in (b), (c) and (e) (default 16)")
    t.add_argument("--actors", type=int, default=1, help="(e): predictor actors (default 1)")
    t.add_argument(
        "--cpus-per-actor",
        type=float,
        default=1.0,
        help="CPUs reserved per predictor actor; decode tasks need the rest (2.0 on 2 cores starves them)",
    )
    t.add_argument("--limit", type=int, default=0, help="use at most N photos")
    t.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="model runtime for (b), (c) and (e): torch, onnx, onnx-int8, auto (as `landmark tag`)",
    )
    t.add_argument(
        "--compute",
        choices=COMPUTE_MODES,
        default="auto",
        help="(e): the model in an actor pool or in the decode tasks (as `landmark tag --compute`)",
    )
    t.add_argument("--decode-batch", type=int, default=None, help="(e): photos per decode task (as `landmark tag`)")
    t.add_argument(
        "--scale",
        type=int,
        default=10,
        help="(e) also runs on this many copies of the photos (symlinks): memory 1x vs Nx",
    )
    t.add_argument("--json", action="store_true", help="last line: a JSON object of the results")
    t.add_argument(
        "--compare-model",
        default=None,
        help="a second artifact (e.g. after `landmark catalog add`): its (b) and (c) beside --model's, "
        "alternating, with their ratios",
    )


def _add_train_parser(sub) -> None:
    tr = sub.add_parser("train", help="epoch images/s: fine-tuned vs frozen (cached features), 1 and 2 workers")
    tr.add_argument("--data", required=True, help="class-folder dataset to train on")
    tr.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="network, as `landmark train --model` (default efficientnet_lite0)",
    )
    tr.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs per run (default 2; the first one is not timed when there are more)",
    )
    tr.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="Ray Train worker counts to measure, comma-separated (default 1,2)",
    )
    tr.add_argument("--json", action="store_true", help="last line: a JSON object of the results")


def _add_store_parser(sub) -> None:
    so = sub.add_parser("store", help="the tag store: landmark query / skip check vs raw DuckDB, seconds and RSS")
    so.add_argument("--rows", type=_sizes, default=[1_000_000, 10_000_000], help="store sizes, e.g. 1000000,10000000")
    so.add_argument("--runs", type=int, default=1, help="repeats of each measurement (the median is reported)")
    so.add_argument("--rows-per-run", type=int, default=50_000, help="rows a night (one run, one commit)")
    so.add_argument("--listed", type=int, default=100_000, help="photos listed for the skip check")
    so.add_argument(
        "--dir",
        default=str(Path(tempfile.gettempdir()) / "landmark-bench-store"),
        help="where the synthetic stores are built (and kept for the next run)",
    )
    so.add_argument("--json", action="store_true", help="last line: a JSON object of the results")


@dataclass(frozen=True)
class BenchConfig:
    """Which measurement, and its flags as parsed (each measurement has its own)."""

    what: str
    args: argparse.Namespace

    def check(self) -> None:
        ns = self.args
        if self.what == "store":
            if ns.runs < 1 or ns.rows_per_run < 1 or ns.listed < 1 or min(ns.rows) < ns.rows_per_run:
                raise ConfigError(
                    "--runs, --rows-per-run and --listed must be > 0, and every --rows at least --rows-per-run"
                )
        elif self.what == "tag":
            if not Path(ns.images).is_dir():
                raise ConfigError(f"--images {ns.images}: no such directory")
            if ns.batch_size < 1 or ns.actors < 1 or ns.cpus_per_actor <= 0 or (ns.decode_batch or 1) < 1:
                raise ConfigError("--batch-size, --actors, --cpus-per-actor and --decode-batch must be > 0")
            if ns.scale < 2:
                raise ConfigError(f"--scale {ns.scale}: must be at least 2")
            TagConfig(input=ns.images, output="unused", model=ns.model, runtime=ns.runtime, compute=ns.compute).check()
        elif self.what == "train":  # --data, --model, --epochs, --workers: as `landmark train` checks them
            for workers in ns.workers:
                for frozen in (False, True):
                    train_config(ns, workers, frozen, "unused").check()


def _show(result: dict, cfg: BenchConfig) -> None:
    if cfg.args.json:
        print(json.dumps(result))


@checks_config
def run(cfg: BenchConfig) -> dict:
    ns = cfg.args
    if cfg.what == "store":
        from jobs import _bench_store

        return _bench_store.run(
            ns.rows, runs=ns.runs, rows_per_run=ns.rows_per_run, listed=ns.listed, work=Path(ns.dir), say=_say
        )
    if cfg.what == "tag":
        return run_tag(ns)
    if cfg.what == "serve":
        from jobs import _bench_serve as bench_serve

        return bench_serve.run_serve_bench(ns)
    return run_train(ns)


if __name__ == "__main__":
    sys.exit(main())
