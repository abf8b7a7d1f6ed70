"""The tag store: Parquet tags under a root, one directory per run, visible only once committed.

    <root>/dt=YYYY-MM-DD/run=<run_id>/part-*.parquet   rows of TAGS_SCHEMA
    <root>/dt=YYYY-MM-DD/run=<run_id>/_SUCCESS          JSON written last: counts, model_id, config, timings

A run without ``_SUCCESS`` (died, or still running) is invisible to readers; two runs never share a directory,
so concurrent runs cannot corrupt each other. Readers take the latest committed run per uri.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from . import storage

SUCCESS = "_SUCCESS"
STATUSES = ("tagged", "no_landmark", "failed")

TAG_STRUCT = pa.struct([("name", pa.string()), ("score", pa.float32()), ("lat", pa.float64()),
                        ("lon", pa.float64())])
TAGS_SCHEMA = pa.schema([
    ("uri", pa.string()),
    ("size_bytes", pa.int64()),
    ("etag", pa.string()),
    ("sha256", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("exif_lat", pa.float64()),
    ("exif_lon", pa.float64()),
    ("exif_time", pa.timestamp("us")),
    ("landmark", pa.string()),
    ("score", pa.float32()),
    ("lat", pa.float64()),
    ("lon", pa.float64()),
    ("tags", pa.list_(TAG_STRUCT)),
    ("model_id", pa.string()),
    ("run_id", pa.string()),
    ("tagged_at", pa.timestamp("us", tz="UTC")),
])


@dataclass(frozen=True)
class RunInfo:
    dt: str
    run_id: str
    path: str  # directory inside the filesystem
    success: dict  # the _SUCCESS JSON


def run_dir(root_path: str, dt: str, run_id: str) -> str:
    return f"{root_path.rstrip('/')}/dt={dt}/run={run_id}"


def committed_runs(root: str, opts: storage.S3Options = storage.S3Options()) -> list[RunInfo]:
    """Every committed run under ``root``, oldest first (by commit time, then run_id)."""
    fs, base = storage.arrow_fs(root, opts)
    runs = []
    for dt_dir in _subdirs(fs, base, "dt="):
        for run_path in _subdirs(fs, dt_dir, "run="):
            info = fs.get_file_info(f"{run_path}/{SUCCESS}")
            if info.type != pafs.FileType.File:
                continue
            with fs.open_input_stream(f"{run_path}/{SUCCESS}") as f:
                success = json.loads(f.read())
            runs.append(RunInfo(dt_dir.rsplit("dt=", 1)[1], run_path.rsplit("run=", 1)[1], run_path, success))
    return sorted(runs, key=lambda r: (r.success.get("committed_at", ""), r.run_id))


def _subdirs(fs, path: str, prefix: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


def run_files(fs, run: RunInfo) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(run.path, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def read_committed(root: str, *, columns: list[str] | None = None, filter: pc.Expression | None = None,
                   opts: storage.S3Options = storage.S3Options(), latest_only: bool = True) -> pa.Table:
    """Rows of committed runs, filters pushed down to the Parquet scan; latest committed run wins per uri."""
    fs, _ = storage.arrow_fs(root, opts)
    runs = committed_runs(root, opts)
    files = [f for r in runs for f in run_files(fs, r)]
    if not files:
        return TAGS_SCHEMA.empty_table() if columns is None else TAGS_SCHEMA.empty_table().select(columns)
    order = {r.run_id: i for i, r in enumerate(runs)}
    ds = pads.dataset(files, schema=TAGS_SCHEMA, format="parquet", filesystem=fs)
    if not latest_only:
        return ds.to_table(columns=columns, filter=filter)
    # Latest per uri must be decided before the user's filter: an old run's row that matches must not
    # resurface when the newer row for that uri does not.
    keys = ds.to_table(columns=["uri", "run_id"])
    rank = pa.array([order.get(r, -1) for r in keys.column("run_id").to_pylist()], pa.int64())
    keys = keys.append_column("_rank", rank)
    latest = keys.group_by("uri").aggregate([("_rank", "max")])
    winners = {(u, r) for u, r in zip(latest.column("uri").to_pylist(), latest.column("_rank_max").to_pylist())}
    winning_runs_by_uri = pc.is_in(pc.binary_join_element_wise(
        pc.field("uri"), pc.field("run_id"), "\x00"),
        value_set=pa.array([f"{u}\x00{runs[r].run_id}" for u, r in winners]))
    expr = winning_runs_by_uri if filter is None else winning_runs_by_uri & filter
    return ds.to_table(columns=columns, filter=expr)
