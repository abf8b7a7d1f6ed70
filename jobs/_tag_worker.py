"""The tag job's worker side: the per-batch functions and the actor its Ray Data plans run, and the stage clock.

jobs/tag.py (the driver) builds the plans; everything here runs in Ray workers.
"""

from __future__ import annotations

import importlib
import time
import warnings

import pyarrow as pa

from landmark_core import storage
from landmark_core.preprocess import DEFAULT_MAX_PIXELS
from landmark_core.tagging import read_and_decode, to_tag_rows


class StageClock:
    """Worker-seconds and photos per stage, reported by the stages themselves: with decode and the model fused
    into one task (CPU) or one actor, Ray Data's per-operator stats cannot tell them apart."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def add(self, stage: str, seconds: float, photos: int) -> None:
        s = self.stages.setdefault(stage, {"seconds": 0.0, "photos": 0})
        s["seconds"] += seconds
        s["photos"] += photos

    def totals(self) -> dict:
        return {k: {"seconds": round(v["seconds"], 2), "photos": v["photos"]} for k, v in self.stages.items()}


def _clocked(clock, stage: str, fn, n: int):
    """fn() timed into ``clock`` (waited for, so the driver's totals include it; one small call per batch)."""
    import ray

    t0 = time.perf_counter()
    out = fn()
    if clock is not None:
        ray.get(clock.add.remote(stage, time.perf_counter() - t0, n))
    return out


def timed_read_and_decode(batch: dict, *, clock=None, **kwargs) -> dict:
    return _clocked(clock, "read+decode", lambda: read_and_decode(batch, **kwargs), len(batch["uri"]))


def _make_predictor(
    *,
    model: str,
    model_id: str,
    k: int,
    min_score,
    accept_rate,
    s3_endpoint,
    runtime: str,
    onnx_model,
    threads: int,
    max_wrong_rate=None,
):
    from landmark_core.onnx_runtime import StaleFitWarning
    from landmark_core.predictor import Predictor

    if onnx_model is not None and not isinstance(onnx_model, bytes):  # an ObjectRef from the driver
        import ray

        onnx_model = ray.get(onnx_model)
    with warnings.catch_warnings():  # a stale runtime fit: the driver has said it once (not once per worker)
        warnings.simplefilter("ignore", StaleFitWarning)
        p = Predictor(
            model,
            k=k,
            min_score=min_score,
            accept_rate=accept_rate,
            max_wrong_rate=max_wrong_rate,
            threads=threads,
            storage_options=storage.S3Options(endpoint=s3_endpoint),
            runtime=runtime,
            onnx_model=onnx_model,
        )
    if model_id is not None and p.model_id != model_id:  # the artifact at --model was replaced meanwhile
        raise RuntimeError(f"--model {model} changed during the run (model_id {p.model_id}, expected {model_id})")
    return p


# Worker processes run many tasks of one job: the predictor is built by the first task and reused (keyed by
# everything that makes it, model_id included, so a replaced artifact is never served from the cache).
_WORKER_PREDICTORS: dict = {}


def _worker_predictor(predictor: dict):
    key = tuple(sorted((k, v) for k, v in predictor.items() if k != "onnx_model"))
    if key not in _WORKER_PREDICTORS:
        _WORKER_PREDICTORS.clear()  # one model per worker process
        _WORKER_PREDICTORS[key] = _make_predictor(**predictor)
    return _WORKER_PREDICTORS[key]


def start_workers(n: int, predictor: dict) -> None:
    """Start ``n`` of this job's worker processes now, each importing Ray Data and loading the model, while the
    driver imports Ray Data and plans: a job's fresh workers otherwise start only when its first tasks are
    scheduled. Fire and forget: the pipeline's
    tasks then run in these processes (Ray reuses a job's idle workers), their model already cached."""
    import ray

    warm = ray.remote(num_cpus=1, max_retries=0)(warm_worker)
    for _ in range(n):
        warm.remote(predictor)


def warm_worker(predictor: dict) -> bool:
    importlib.import_module("ray.data._internal.execution.operators.map_operator")  # what Ray Data's tasks load

    try:
        _worker_predictor(predictor)
        return True
    except Exception:  # the pipeline's own tasks meet the same error and report it; a warm-up has nothing to add
        return False


def tag_task(
    batch: dict, *, preset, opts, max_pixels: int, run_id: str, tagged_at, predictor: dict, clock=None
) -> pa.Table:
    """``--compute tasks``: listing rows -> read + decode -> predict -> TAGS_SCHEMA rows, in one task."""
    from landmark_core.tagging import predict_batch

    p = _worker_predictor(predictor)
    decoded = timed_read_and_decode(batch, preset=preset, opts=opts, max_pixels=max_pixels, clock=clock)
    return _clocked(
        clock,
        "model+rows",
        lambda: to_tag_rows(predict_batch(p, decoded), p, run_id=run_id, tagged_at=tagged_at),
        len(batch["uri"]),
    )


class TagActor:
    """The Ray Data actor: one Predictor per actor (model loaded once), batches in, TAGS_SCHEMA rows out."""

    def __init__(
        self,
        *,
        model: str,
        k: int,
        min_score,
        accept_rate,
        s3_endpoint,
        run_id: str,
        threads: int,
        tagged_at,
        runtime: str = "torch",
        onnx_model=None,
        model_id: str | None = None,
        clock=None,
        gpu_decode: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_wrong_rate=None,
    ):
        self.predictor = _make_predictor(
            model=model,
            model_id=model_id,
            k=k,
            min_score=min_score,
            accept_rate=accept_rate,
            max_wrong_rate=max_wrong_rate,
            s3_endpoint=s3_endpoint,
            runtime=runtime,
            onnx_model=onnx_model,
            threads=threads,
        )
        if gpu_decode:  # an actor without CUDA says so once, instead of decoding slowly on its CPU
            from landmark_core.preprocess import check_gpu_decode

            check_gpu_decode(self.predictor.device)
        self.run_id, self.tagged_at, self.clock = run_id, tagged_at, clock
        self.gpu_decode, self.max_pixels = gpu_decode, max_pixels

    def __call__(self, batch: dict) -> pa.Table:
        from landmark_core.tagging import decode_deferred, predict_batch

        if self.gpu_decode:
            batch = _clocked(
                self.clock,
                "gpu-decode",
                lambda: decode_deferred(
                    batch, preset=self.predictor.preset, device=self.predictor.device, max_pixels=self.max_pixels
                ),
                len(batch["uri"]),
            )

        return _clocked(
            self.clock,
            "model+rows",
            lambda: to_tag_rows(
                predict_batch(self.predictor, batch), self.predictor, run_id=self.run_id, tagged_at=self.tagged_at
            ),
            len(batch["uri"]),
        )
