"""The nightly tag job on Ray Data: `landmark tag` / `python -m jobs.tag`.

    list (driver) -> skip what a committed run tagged -> read + decode (CPU tasks, draft JPEG decode)
      -> Predictor (actor pool: GPU actors, or CPU actors without a GPU) -> rows (TAGS_SCHEMA)
      -> Parquet in <output>/runs/<day>/<run_id>/ -> verify one row per input -> one Delta commit (the run)

It streams: Ray Data holds a bounded number of blocks in flight, whatever the number of photos.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs._cli import ConfigError, check_threshold_flags, checks_config, fields_of, run_cli
from jobs._tag_worker import StageClock, TagActor, start_workers, tag_task, timed_read_and_decode
from landmark_core import abstention, storage, tagstore
from landmark_core.artifact import ArtifactError, load as load_artifact
from landmark_core.onnx_runtime import ONNX_RUNTIMES, RUNTIMES, RuntimeChoiceError, resolve_runtime, stale_fit
from landmark_core.preprocess import DEFAULT_MAX_PIXELS
from landmark_core.tagging import (
    InputError,
    Pending,
    left_out_note,
    list_inputs,
    pending,
    read_manifest,
    unique_uris,
)

COMPUTE_MODES = ("auto", "actors", "tasks")


class OutputError(RuntimeError):
    """The run could not be written or committed to --output; nothing was committed."""


@dataclass(frozen=True)
class TagConfig:
    output: str
    model: str
    input: str | None = None
    manifest: str | None = None
    k: int = 5
    batch_size: int = 32
    actors: tuple[int, int] = (1, 1)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None
    decode_batch: int = 16
    runtime: str = "auto"  # landmark_core.onnx_runtime: torch | onnx | onnx-int8 | auto (torch on GPU, else int8)
    compute: str = "auto"  # where the model runs: actors | tasks | auto (see TagConfig.resolved_compute)
    min_score: float | None = None
    accept_rate: float | None = None
    max_wrong_rate: float | None = None  # open-world models: threshold from the held-back negatives
    retag: bool = False
    retry_failed: bool = False  # read again the photos that failed to decode with the same bytes
    s3_endpoint: str | None = None
    dt: str | None = None
    run_id: str | None = None
    rows_per_file: int = 250_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    ray_address: str | None = None
    stage_times: bool = False  # time read+decode and model+rows apart (a small actor the stages report to)
    gpu_decode: bool = False  # JPEGs decoded in the GPU actors (nvJPEG) instead of the CPU tasks

    def check(self) -> None:
        if bool(self.input) == bool(self.manifest):
            raise ConfigError("give exactly one of --input DIR_OR_S3_PREFIX and --manifest FILE")
        for flag, v in (
            ("-k", self.k),
            ("--batch-size", self.batch_size),
            ("--decode-batch", self.decode_batch),
            ("--cpus-per-actor", self.cpus_per_actor),
            ("--rows-per-file", self.rows_per_file),
            ("--max-pixels", self.max_pixels),
        ):
            if v is None or not 0 < v < math.inf:  # (NaN too: --cpus-per-actor nan)
                raise ConfigError(f"{flag} must be > 0, got {v}")
        if self.threads_per_actor is not None and self.threads_per_actor < 1:  # None: as --cpus-per-actor, or 1
            raise ConfigError(f"--threads-per-actor must be >= 1, got {self.threads_per_actor}")
        lo, hi = self.actors
        if lo < 1 or hi < lo:
            raise ConfigError(f"--actors must be MIN[,MAX] with 1 <= MIN <= MAX, got {lo},{hi}")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")
        try:
            runtime = self.resolved_runtime()
        except RuntimeChoiceError as e:
            raise ConfigError(str(e)) from None
        if self.compute not in COMPUTE_MODES:
            raise ConfigError(f"--compute must be one of {', '.join(COMPUTE_MODES)}, got {self.compute!r}")
        if self.compute == "tasks" and (self.gpus_per_actor or runtime not in ONNX_RUNTIMES):
            raise ConfigError(
                "--compute tasks needs an ONNX runtime on CPUs (--runtime onnx or onnx-int8, no "
                "--gpus-per-actor); the torch runtime and GPUs run in actors"
            )
        if self.gpu_decode and not self.gpus_per_actor:  # (GPU actors run torch: other runtimes are refused above)
            raise ConfigError("--gpu-decode decodes JPEGs in the GPU actors: it needs --gpus-per-actor > 0")
        check_threshold_flags(self.min_score, self.accept_rate, self.max_wrong_rate)
        if self.dt is not None:
            try:
                datetime.strptime(self.dt, "%Y-%m-%d")
            except ValueError:
                raise ConfigError(f"--dt must be YYYY-MM-DD, got {self.dt!r}") from None
        if self.run_id is not None and not all(c.isalnum() or c in "-_" for c in self.run_id):
            raise ConfigError(f"--run-id may hold only letters, digits, - and _, got {self.run_id!r}")
        try:
            storage.check_locations(
                {"--input": self.input, "--manifest": self.manifest, "--output": self.output, "--model": self.model},
                self.s3_options(),
            )
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None
        if self.input and not storage.is_s3(self.input) and os.path.isfile(self.input):
            raise ConfigError(_INPUT_IS_A_FILE.format(input=self.input, what="a file"))

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint)

    def resolved_runtime(self) -> str:
        """The runtime the actors run: ``auto`` is torch on GPU actors, the CPU default on CPU actors."""
        return resolve_runtime(self.runtime, "cuda" if self.gpus_per_actor else "cpu")

    def resolved_compute(self) -> str:
        """``auto``: an ONNX runtime on CPUs runs as plain tasks (read + decode + model + rows fused in one task
        per block, the model cached per worker process); torch and GPUs run in an actor pool (model loaded once
        per actor, decode in separate CPU tasks when the actor holds a GPU)."""
        if self.compute != "auto":
            return self.compute
        return "tasks" if self.resolved_runtime() in ONNX_RUNTIMES and not self.gpus_per_actor else "actors"

    def ignored_flags(self) -> list[str]:
        """Flags set away from their defaults that this run ignores (the actor pool's when the model runs in tasks;
        --retry-failed beside --retag): said, not dropped."""
        said = (
            ["--retry-failed has no effect with --retag (it reads every photo)"]
            if self.retry_failed and self.retag
            else []
        )
        return said + self._pool_flags_ignored()

    def _pool_flags_ignored(self) -> list[str]:
        if self.resolved_compute() != "tasks":
            return []
        how = "--compute tasks" if self.compute == "tasks" else "--compute auto (tasks: an ONNX runtime on CPUs)"
        fields = type(self).__dataclass_fields__
        given = {
            name: ",".join(map(str, v)) if isinstance(v, tuple) else v  # --actors MIN,MAX as it was given
            for name in ("actors", "cpus_per_actor", "batch_size")
            if (v := getattr(self, name)) != fields[name].default
        }
        return [
            f"--{name.replace('_', '-')} {v} has no effect with {how}: no actor pool, the model runs in the decode "
            "tasks (1 CPU each, a --decode-batch block per call)"
            for name, v in given.items()
        ]

    def safe_json(self) -> dict:
        """The config as recorded in the run's commit (nothing secret is in it: credentials never enter the config)."""
        return asdict(self)


# ---------------------------------------------------------------- driver


@checks_config
def run(cfg: TagConfig) -> dict:
    """Tag every new photo; returns the summary of the committed run (also in the run's Delta commit)."""
    from jobs._ray import check_local_gpus

    t_start = time.time()
    for warning in cfg.ignored_flags():
        print(f"[tag] warning: {warning}", flush=True)
    check_local_gpus(cfg.ray_address, "--gpus-per-actor", cfg.gpus_per_actor)
    opts = cfg.s3_options()
    _check_reachable(cfg, opts)
    runtime = cfg.resolved_runtime()
    artifact = _load_model(cfg, runtime)
    run_id = cfg.run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    dt = cfg.dt or f"{datetime.now(timezone.utc):%Y-%m-%d}"
    fs, root_path = storage.arrow_fs(cfg.output, opts)
    out_dir = tagstore.run_files_dir(root_path, dt, run_id)
    _check_writable(fs, out_dir, cfg.output)
    _ensure_table(cfg.output, opts)

    listing, left_out = _list_photos(cfg, opts)
    t_list = time.time()
    # a catalog change (landmark catalog add/remove) does not re-tag what its parent models settled
    lineage = tuple(artifact.provenance.get("lineage") or ())
    if cfg.retag:
        plan = Pending(listing)
    else:
        plan = pending(listing, cfg.output, artifact.model_id, opts, settled_by=lineage, retry_failed=cfg.retry_failed)
    print(f"[tag] run {run_id}: {_pending_line(listing.num_rows, plan, artifact.model_id, lineage)}", flush=True)
    todo = plan.todo
    timings = {"list_seconds": round(t_list - t_start, 2)}
    with _blaming_output(fs, out_dir, cfg.output, run_id):  # a lost output is the likely cause of a failure: say so
        if todo.num_rows:
            timings.update(_tag_photos(cfg, artifact, todo, out_dir, fs, run_id, runtime))
        timings["pipeline_seconds"] = round(time.time() - t_list, 2)
        t_verify = time.time()
        counts, files = _verify(fs, out_dir, todo)
    timings["verify_seconds"] = round(time.time() - t_verify, 2)
    summary = {
        "run_id": run_id,
        "dt": dt,
        "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_id": artifact.model_id,
        "counts": counts,
        "rows": counts["total"],
        "listed": listing.num_rows,
        "not_photos_by_name": dict(left_out),
        "skipped": plan.skipped,
        "skipped_undecodable": plan.undecodable,
        "output": cfg.output,
        "files": [f[len(root_path) :].lstrip("/") for f in files],
        "config": cfg.safe_json(),
        "runtime": runtime,
        "compute": cfg.resolved_compute(),
        "timings": timings,
        "images_per_second": round(todo.num_rows / max(timings["pipeline_seconds"], 1e-9), 2),
    }
    summary["version"] = _commit(cfg, fs, out_dir, files, summary, opts)
    _print_summary(summary)
    return summary


def _load_model(cfg: TagConfig, runtime: str):
    """The artifact at --model, and the thresholds flags checked against it: before any table or cluster work."""
    try:  # numpy tensors for the ONNX runtimes: the driver imports torch only if it has to build the ONNX model
        artifact = load_artifact(
            cfg.model,
            storage_options=cfg.s3_options(),
            tensors="numpy" if runtime in ONNX_RUNTIMES else "torch",
        )
    except ArtifactError as e:
        raise ConfigError(f"--model: {e}") from None
    if stale := stale_fit(artifact.abstain.get("runtimes", {}).get(runtime, {}), runtime):
        print(f"[tag] warning: --model: {stale}", flush=True)
    if cfg.max_wrong_rate is not None and "neg_fit_scores" not in artifact.extra_tensors:
        raise ConfigError(
            f"--max-wrong-rate: the model at --model {cfg.model} was trained without --negatives; "
            f"use --min-score or --accept-rate"
        )
    if cfg.min_score is not None:  # else every actor refuses it, after the table exists
        try:
            abstention.check_min_score(artifact.abstain.get("method", "msp"), cfg.min_score)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return artifact


def _list_photos(cfg: TagConfig, opts: storage.S3Options):
    """The photos of this run (--manifest's or --input's), and the objects left out as not photos by name."""
    left_out = Counter()  # objects under --input that are not photos by name: said, not silently dropped
    if cfg.manifest:
        listing, repeated = unique_uris(read_manifest(cfg.manifest, opts))  # (a listing names each object once)
        if repeated:
            print(
                f"[tag] --manifest {cfg.manifest}: {repeated} row(s) repeat an earlier row's uri; each photo is "
                "tagged once",
                flush=True,
            )
    else:
        listing = list_inputs(cfg.input, opts, left_out=left_out)
    if note := left_out_note(dict(left_out)):
        print(f"[tag] {note}", flush=True)
    if not listing.num_rows:  # a night with no uploads is a normal run: committed, but not silently
        where = f"under --input {cfg.input}" if cfg.input else f"in --manifest {cfg.manifest}"
        print(f"[tag] no photos {where}: an empty run is committed", flush=True)
    return listing, left_out


def _tag_photos(cfg: TagConfig, artifact, todo, out_dir: str, fs, run_id: str, runtime: str) -> dict:
    """Run the pipeline over ``todo`` into ``out_dir``; returns its timings (the ONNX build, the stages')."""
    timings = {}
    onnx_model = None
    if runtime in ONNX_RUNTIMES:  # built (or read from the cache) once here, shipped to every actor/task
        from landmark_core.onnx_runtime import model_bytes

        t0 = time.time()
        onnx_model = model_bytes(artifact, runtime)
        timings["onnx_model_seconds"] = round(time.time() - t0, 2)
    if stages := _run_pipeline(cfg, artifact, todo, out_dir, fs, run_id, runtime=runtime, onnx_model=onnx_model):
        timings["stages"] = stages
    return timings


@contextmanager
def _blaming_output(fs, out_dir: str, output: str, run_id: str):
    """Any failure inside: first check whether --output is still there, and say so if not (_blame_output)."""
    try:
        yield
    except Exception:
        _blame_output(fs, out_dir, output, run_id)
        raise


def _commit(cfg: TagConfig, fs, out_dir: str, files: list[str], summary: dict, opts: storage.S3Options) -> int:
    """Add the run's files to the Delta table in one commit; its version. Not committed: one line naming --output."""
    try:
        return tagstore.commit_run(cfg.output, fs, files, summary, opts)
    except Exception as e:  # delta-rs raises its own types for storage errors; any of them means "not committed"
        _blame_output(fs, out_dir, cfg.output, summary["run_id"])
        raise OutputError(
            f"--output {cfg.output}: could not commit to the Delta table "
            f"({tagstore.error_text(e, 200)}); run {summary['run_id']} was not committed"
        ) from None


def _check_reachable(cfg: TagConfig, opts: storage.S3Options) -> None:
    """Endpoint, credentials, buckets and the Ray address answer: seconds, not minutes of retries, and one line
    naming the flag (the Ray address before the table is created, though Ray starts later, if at all)."""
    from jobs._ray import check_address

    check_address(cfg.ray_address)
    try:
        storage.check_reachable("--input", cfg.input, opts)
        storage.check_reachable("--output", cfg.output, opts)
    except storage.StorageError as e:
        raise ConfigError(str(e)) from None
    if cfg.input and _names_one_object(cfg.input, opts):
        raise ConfigError(_INPUT_IS_A_FILE.format(input=cfg.input, what="an object"))


def _names_one_object(uri: str, opts: storage.S3Options) -> bool:
    """An s3:// --input that is an object's key with nothing below it as a prefix: one photo, not a folder."""
    if not storage.is_s3(uri) or uri.endswith("/"):
        return False
    bucket, key = storage.split_s3(uri)
    below = storage.s3_client(opts).list_objects_v2(Bucket=bucket, Prefix=key + "/", MaxKeys=1)
    return not below.get("Contents") and storage.exists(uri, opts)


_INPUT_IS_A_FILE = (
    "--input {input} is {what}: --input takes a folder or an s3:// prefix of photos; for a list of photos, give it "
    "as --manifest FILE (CSV or Parquet with a 'uri' column)"
)


def _ensure_table(output: str, opts: storage.S3Options) -> None:
    try:
        tagstore.ensure_table(output, opts)
    except Exception as e:
        raise ConfigError(f"--output {output}: cannot create the Delta table there: {tagstore.error_text(e)}") from None


def _blame_output(fs, out_dir: str, output: str, run_id: str) -> None:
    """After a failed write or read-back: if --output is no longer writable (bucket gone, keys revoked, store
    down past every retry), raise that as one clear OutputError; otherwise return and let the error surface."""
    try:
        _check_writable(fs, out_dir, output)
    except ConfigError as e:
        raise OutputError(f"{str(e).rstrip('. ')}; run {run_id} was not committed") from None


def _check_writable(fs, out_dir: str, output: str) -> None:
    """Fail before any work when the output cannot be written (bad bucket, no permission, full disk)."""
    probe = f"{out_dir}/.probe"
    try:
        fs.create_dir(out_dir, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:
        raise ConfigError(f"--output {output} is not writable: {storage.redact(str(e))[:300]}") from None


def _run_pipeline(
    cfg: TagConfig,
    artifact,
    todo: pa.Table,
    out_dir: str,
    fs,
    run_id: str,
    *,
    runtime: str = "torch",
    onnx_model: bytes | None = None,
) -> dict:
    """Runs the Ray Data pipeline; with --stage-times returns the worker-seconds and photos of each stage
    (StageClock), else {}."""
    import ray

    _start_ray(cfg)
    n_blocks = max(1, -(-todo.num_rows // cfg.decode_batch))
    predictor = {
        "model": cfg.model,
        "model_id": artifact.model_id,
        "k": cfg.k,
        "min_score": cfg.min_score,
        "accept_rate": cfg.accept_rate,
        "max_wrong_rate": cfg.max_wrong_rate,
        "s3_endpoint": cfg.s3_endpoint,
        "runtime": runtime,
        "onnx_model": None if onnx_model is None else ray.put(onnx_model),
    }
    in_tasks = cfg.resolved_compute() == "tasks"
    if in_tasks:
        predictor["threads"] = cfg.threads_per_actor or 1
        _warm_up_tasks(n_blocks, predictor)
    import ray.data  # Ray Data's import overlaps the workers' start

    ray.data.DataContext.get_current().enable_progress_bars = True
    ds = _dataset_of([todo.slice(i * cfg.decode_batch, cfg.decode_batch) for i in range(n_blocks)])
    # Off by default: the clock is one more worker process to start, and the stages wait for it on first report.
    clock = ray.remote(num_cpus=0)(StageClock).remote() if cfg.stage_times else None
    stage_kwargs = {
        "preset": artifact.preprocess,
        "opts": cfg.s3_options(),
        "max_pixels": cfg.max_pixels,
        "clock": clock,
    }
    if in_tasks:
        _write_in_tasks(cfg, ds, out_dir, fs, {**stage_kwargs, "run_id": run_id, "predictor": predictor})
    else:
        _write_in_actors(cfg, ds, out_dir, fs, stage_kwargs, {**predictor, "run_id": run_id, "clock": clock})
    return ray.get(clock.totals.remote()) if clock else {}


def _start_ray(cfg: TagConfig) -> None:
    """Ray (--ray-address, or a local one), and for actors the resources their pool needs, checked up front."""
    from jobs._ray import check_resources, init_ray

    init_ray(cfg.ray_address, worker_env=None)  # nothing of WORKER_ENV (Ray Train's) concerns this job
    if cfg.resolved_compute() == "actors":  # tasks take 1 CPU each, one at a time if need be
        check_resources(  # the pool's MIN actors must all start before Ray Data sends them a batch
            cfg.ray_address,
            "tag",
            {"CPU": ("--cpus-per-actor", cfg.cpus_per_actor), "GPU": ("--gpus-per-actor", cfg.gpus_per_actor)},
            at_once=("--actors", cfg.actors[0]),
        )


def _warm_up_tasks(n_blocks: int, predictor: dict) -> None:
    """Start one worker per free CPU (up to the blocks) with the model loaded, before Ray Data asks for them."""
    import ray

    if n_warm := min(n_blocks, int(ray.available_resources().get("CPU", 1))):
        start_workers(n_warm, predictor)
        # The warm-up holds every free CPU for a moment, so Ray Data's start-of-run check would warn on every run
        # that the cluster "does not have any available CPUs" and "will hang": not so, they are this run's own.
        from ray.util.debug import log_once

        log_once("cpu_warning")


def _write_in_tasks(cfg: TagConfig, ds, out_dir: str, fs, task_kwargs: dict) -> None:
    """One task per block does it all on one core (read + decode, the 1-thread model, the rows): a task per core
    leaves no core idle, oversubscribes none, and starts no actor."""
    ds = ds.map_batches(
        tag_task,
        batch_size=cfg.decode_batch,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={**task_kwargs, "tagged_at": datetime.now(timezone.utc)},
        udf_modifying_row_count=False,
    )
    # Ray Data 2.60 would run a small job one task at a time: its per-operator CPU budget waits for a resource
    # reservation learnt asynchronously (not needed: the outputs are kilobytes of rows), and a writer fused into
    # the tasks takes --rows-per-file rows as one task (its other resources keep it apart).
    if hasattr(ds.context, "op_resource_reservation_enabled"):
        ds.context.op_resource_reservation_enabled = False
    ds.write_parquet(
        out_dir,
        filesystem=fs,
        min_rows_per_file=cfg.rows_per_file,
        compression="zstd",
        ray_remote_args={"num_cpus": 0.5},
    )


def _write_in_actors(cfg: TagConfig, ds, out_dir: str, fs, stage_kwargs: dict, actor_kwargs: dict) -> None:
    """Read + decode in CPU tasks, then a pool of --actors TagActors (the torch runtime, GPUs) tags the batches."""
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(
        timed_read_and_decode,
        batch_size=cfg.decode_batch,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={**stage_kwargs, "defer_jpeg": cfg.gpu_decode},
        udf_modifying_row_count=False,
    )
    lo, hi = cfg.actors
    ds = ds.map_batches(
        TagActor,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=lo, max_size=hi),
        num_gpus=cfg.gpus_per_actor or None,
        num_cpus=cfg.cpus_per_actor,
        fn_constructor_kwargs={
            **actor_kwargs,
            "gpu_decode": cfg.gpu_decode,
            "max_pixels": cfg.max_pixels,
            "threads": cfg.threads_per_actor or max(1, int(cfg.cpus_per_actor)),
            "tagged_at": datetime.now(timezone.utc),
        },
        # Ray Data's actor pool defaults to max_restarts=-1, max_task_retries=-1: a killed actor is replaced and
        # its batch redone, so a lost actor costs time, never rows.
        udf_modifying_row_count=False,
    )
    ds.write_parquet(out_dir, filesystem=fs, min_rows_per_file=cfg.rows_per_file, compression="zstd")


def _dataset_of(blocks: list[pa.Table]):
    """The listing as a dataset of these blocks (one per task), their metadata computed here.

    ``ray.data.from_arrow`` computes each block's row count and schema in Ray tasks and waits for them (a worker
    start and Ray Data's import before anything is read); the listing and its metadata are already here.
    """
    import ray

    from_blocks = getattr(ray.data, "from_blocks", None)  # DeveloperAPI in Ray 2.60; keeps the blocks as given
    return from_blocks(blocks) if from_blocks is not None else ray.data.from_arrow(blocks)


def _verify(fs, out_dir: str, todo: pa.Table) -> tuple[dict, list[str]]:
    """Exactly one row per input, or no commit: counts from the files actually written, and those files."""
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(out_dir, recursive=True, allow_not_found=True))
    files = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    if files:
        written = pa.concat_tables(pq.read_table(f, columns=["uri", "status"], filesystem=fs) for f in files)
    else:
        written = pa.table({"uri": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    n, distinct = written.num_rows, pc.count_distinct(written.column("uri")).as_py() if written.num_rows else 0
    expected = set(todo.column("uri").to_pylist())
    if n != len(expected) or distinct != n or not set(written.column("uri").to_pylist()) == expected:
        raise RuntimeError(
            f"refusing to commit {out_dir}: wrote {n} rows ({distinct} distinct uris) for {len(expected)} inputs"
        )
    counts = {s: 0 for s in tagstore.STATUSES}
    for s, c in (
        zip(*np.unique(np.asarray(written.column("status").to_pylist(), dtype=object).astype(str), return_counts=True))
        if n
        else []
    ):
        counts[s] = int(c)
    counts["total"] = n
    return counts, sorted(files)


def _pending_line(listed: int, p: Pending, model_id: str, lineage: tuple[str, ...]) -> str:
    by = f"model {model_id}" + (f" or the models it was made from ({', '.join(lineage)})" if lineage else "")
    undecodable = (
        f" ({p.undecodable} of them failed to decode before and are unchanged: --retry-failed reads them again)"
        if p.undecodable
        else ""
    )
    return f"{listed} photos listed, {p.skipped} already tagged by {by}{undecodable}, {p.todo.num_rows} to tag"


def _print_summary(s: dict) -> None:
    c = s["counts"]
    print(
        f"[tag] committed run {s['run_id']} (table version {s['version']}): {c['tagged']} tagged, "
        f"{c['no_landmark']} no landmark, "
        f"{c['failed']} failed ({c['total']} rows; {s['skipped']} skipped as already tagged)",
        flush=True,
    )
    t = s["timings"]
    print(
        f"[tag] listing {t['list_seconds']}s, pipeline {t['pipeline_seconds']}s, verify {t['verify_seconds']}s, "
        f"{s['images_per_second']} images/s ({s.get('runtime')} in {s.get('compute')}); table: {s['output']}",
        flush=True,
    )
    if t.get("stages"):
        print(
            "[tag] stages (summed over workers): "
            + ", ".join(
                f"{k} {v['seconds']}s for {v['photos']} photos "
                f"({v['photos'] / max(v['seconds'], 1e-9):.0f}/s per worker)"
                for k, v in t["stages"].items()
            ),
            flush=True,
        )


# ---------------------------------------------------------------- CLI


def _actors(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN[,MAX] integers, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected MIN[,MAX], got {text!r}")
    return (parts[0], parts[-1])


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TagConfig(output="", model="")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="directory or s3://bucket/prefix of photos (recursive)")
    src.add_argument("--manifest", help="Parquet/CSV with a 'uri' column, for buckets too large to list")
    p.add_argument("--output", required=True, help="the tags Delta table (path or s3://); created if absent")
    p.add_argument(
        "--model",
        default=os.environ.get("LANDMARK_MODEL"),
        help="model artifact dir or s3:// URI (default $LANDMARK_MODEL)",
    )
    p.add_argument("-k", "--top-k", dest="k", type=int, default=d.k, help="tags per photo")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="photos per model call")
    p.add_argument("--actors", type=_actors, default=d.actors, help="predictor actor pool size MIN[,MAX]")
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=d.gpus_per_actor,
        help="GPUs per predictor actor (default 0: CPU actors)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=d.cpus_per_actor,
        help="CPUs reserved per predictor actor (default 1)",
    )
    p.add_argument(
        "--threads-per-actor",
        type=int,
        default=None,
        help="model threads per actor (default: cpus-per-actor), or per task with --compute tasks "
        "(default 1: a task per core)",
    )
    p.add_argument("--decode-batch", type=int, default=d.decode_batch, help="photos per decode task")
    p.add_argument(
        "--compute",
        choices=COMPUTE_MODES,
        default=d.compute,
        help="where the model runs: actors (an actor pool, --actors), tasks (CPU tasks that also decode; "
        "ONNX runtimes only), or auto (default: tasks for an ONNX runtime on CPUs, else actors)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=d.runtime,
        help="model runtime: torch, onnx (ONNX Runtime fp32), onnx-int8, or auto (default: torch on "
        "GPU actors, onnx-int8 on CPU actors)",
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="override the model's abstain threshold (on its abstention score, see metrics.json)",
    )
    p.add_argument(
        "--accept-rate",
        type=float,
        default=None,
        help="override the abstain threshold by the share of known validation photos to accept",
    )
    p.add_argument(
        "--max-wrong-rate",
        type=float,
        default=None,
        help="models trained with --negatives: override the threshold by the share of held-back "
        "negatives (photos of no catalog landmark) it may tag, mean over their folders",
    )
    p.add_argument("--retag", action="store_true", help="tag everything, even photos already tagged")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="read again the photos that failed to decode, which later runs skip while their bytes stay the "
        "same (after raising --max-pixels, say); a failed read is retried by every run",
    )
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    p.add_argument(
        "--gpu-decode",
        action="store_true",
        help="decode JPEGs in the GPU actors (torchvision.io.decode_jpeg on CUDA, nvJPEG) instead of "
        "the CPU tasks; needs --gpus-per-actor > 0",
    )
    p.add_argument(
        "--stage-times",
        action="store_true",
        help="also time read+decode and model+rows apart (printed and in the run's commit; costs a little start-up)",
    )
    p.add_argument("--dt", default=None, help="partition date YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--run-id", default=None, help="run id (default: time + random suffix)")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file, help="minimum rows per Parquet file")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="refuse photos larger than this")
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, set by `ray job submit`; else a local Ray)",
    )


def config_from_args(ns: argparse.Namespace) -> TagConfig:
    if not ns.model:
        raise ConfigError("--model is required (or set LANDMARK_MODEL); train one with `landmark train`")
    return fields_of(TagConfig, ns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark tag", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_cli(p, argv, config=config_from_args, run=run, failures=((InputError, 2), (OutputError, 1)))


if __name__ == "__main__":
    sys.exit(main())
