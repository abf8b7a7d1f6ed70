"""The tag pipeline's stages as plain functions over batches (no Ray): jobs/tag.py wires them into Ray Data.

    list_inputs -> pending (skip what a committed run already tagged) -> read_and_decode -> Predictor ->
    to_tag_rows (TAGS_SCHEMA) -> Parquet

Every input row leaves every stage as exactly one row: a failure becomes status "failed" with a reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import storage, tagstore
from .datasets import image_objects, local_etag
from .predictor import Predictor
from .preprocess import DEFAULT_MAX_PIXELS, DecodeError, EvalPreset, decode_image, decode_jpegs_to_uint8, jpeg_header
from .status import FAILED, TAGGED

LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("size_bytes", pa.int64()), ("etag", pa.string())])
_NAT = -1  # exif_time inside the pipeline: microseconds since epoch, -1 = absent


class InputError(ValueError):
    pass


# ---------------------------------------------------------------- listing


def list_inputs(root: str, opts: storage.S3Options = storage.S3Options(), *, left_out=None) -> pa.Table:
    """Every image object below ``root`` (recursive, extensions case-insensitive) with size and etag;
    ``left_out`` (a Counter) counts the other objects by extension."""
    if not storage.is_s3(root):
        if not Path(root).is_dir():
            raise InputError(f"--input {root}: no such directory")
        root = str(Path(root).resolve())
    columns = [list(c) for c in zip(*image_objects(root, opts, left_out=left_out))] or [[], [], []]
    return pa.table(columns, schema=LISTING_SCHEMA)


def left_out_note(
    left_out: dict[str, int],
    *,
    where: str = "--input",
    instead: str = "list them in a --manifest",
    verb: tuple[str, str] = ("tag", "tagged"),
) -> str | None:
    """One line on the objects under ``where`` that are not photos by name (none tagged, none in a row);
    ``verb``: what the command does to a photo, and its participle (predict answers)."""
    if not left_out:
        return None
    kinds = ", ".join(f"{ext} {n}" for ext, n in sorted(left_out.items(), key=lambda kv: (-kv[1], kv[0]))[:8])
    return (
        f"{sum(left_out.values())} object(s) under {where} are not photos by name, not {verb[1]} ({kinds}); "
        f"to {verb[0]} them anyway, {instead}"
    )


def read_manifest(path: str, opts: storage.S3Options = storage.S3Options()) -> pa.Table:
    """A Parquet or CSV file with a ``uri`` column (``size_bytes``/``etag`` optional: fetched when absent)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        fs, p = storage.arrow_fs(path, opts)
        table = (
            pq.read_table(p, filesystem=fs)
            if path.lower().endswith(".parquet")
            else pacsv.read_csv(pa.BufferReader(storage.read_bytes(path, opts)))
        )
    except FileNotFoundError:
        raise InputError(f"--manifest {path}: no such file") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(
            f"--manifest {path}: not a readable Parquet/CSV file ({storage.redact(str(e))[:200]})"
        ) from None
    if "uri" not in table.column_names:
        raise InputError(f"--manifest {path}: needs a 'uri' column (has {', '.join(table.column_names)})")
    uris = [u for u in table.column("uri").to_pylist() if u]
    for u in uris[:1000]:
        storage.check_uri(u)
    if {"size_bytes", "etag"} <= set(table.column_names):
        return table.select(["uri", "size_bytes", "etag"]).cast(LISTING_SCHEMA)
    return stat_uris(uris, opts)


def unique_uris(listing: pa.Table) -> tuple[pa.Table, int]:
    """The listing with each uri once (its first row): a manifest that names a photo twice would give it two
    rows in one run, which the run's check refuses to commit. Returns (table, rows dropped)."""
    uris = listing.column("uri").to_pylist()
    first = {u: i for i, u in reversed(list(enumerate(uris)))}
    if len(first) == len(uris):
        return listing, 0
    return listing.take(sorted(first.values())), len(uris) - len(first)


def stat_uris(uris: list[str], opts: storage.S3Options, threads: int = 32) -> pa.Table:
    """Size and etag per uri (HEAD in parallel); a missing object keeps size/etag null and fails later."""

    def stat(u: str):
        try:
            if storage.is_s3(u):
                bucket, key = storage.split_s3(u)
                h = storage.s3_client(opts).head_object(Bucket=bucket, Key=key)
                return int(h["ContentLength"]), h.get("ETag", "").strip('"')
            st = os.stat(u)
            return st.st_size, local_etag(st)
        except Exception:
            return None, None

    with ThreadPoolExecutor(threads) as pool:
        stats = list(pool.map(stat, uris))
    return pa.table([uris, [s for s, _ in stats], [e for _, e in stats]], schema=LISTING_SCHEMA)


@dataclass(frozen=True)
class Pending:
    """What a run has to tag: ``todo``, the listing's rows still to read; ``skipped``, how many it drops, of which
    ``undecodable`` failed to decode before with the same bytes (they would fail the same way again)."""

    todo: pa.Table
    skipped: int = 0
    undecodable: int = 0


def pending(
    listing: pa.Table,
    output: str,
    model_id: str,
    opts: storage.S3Options,
    settled_by: tuple[str, ...] = (),
    *,
    retry_failed: bool = False,
) -> Pending:
    """Drop objects whose current row has the same etag and model and did not fail, or failed to decode (unless
    ``retry_failed``): the committed rows of the listed uris only (the listing's uris filter the scan; all of
    them, so their newest per uri is the current row, without the superseded table), joined with the listing in
    DuckDB. Memory is bounded by the listing and the few columns this needs, not by the history.

    ``settled_by``: other model_ids whose rows count as done too (the models a `landmark catalog` change was made
    from: the artifact's provenance ``lineage``)."""
    if not listing.num_rows:  # nothing to look up (pyarrow's isin cannot even type an empty value set)
        return Pending(listing)
    store = tagstore.open_store(output, opts, superseded=False)
    if store is None:
        return Pending(listing)
    try:
        store.con.register("listing", listing.append_column("_i", pa.array(range(listing.num_rows), pa.int64())))
        if store.native:  # DuckDB's reader: the semi join with the listing becomes a filter in the scan
            rows = "(SELECT * FROM tags_history WHERE uri IN (SELECT uri FROM listing))"
        else:
            cols = ["uri", "etag", "model_id", "status", "error", "tagged_at", "run_id"]
            rows = store.dataset.to_table(columns=cols, filter=pc.field("uri").isin(listing.column("uri")))
            store.con.register("listed_rows", rows)
            rows = "listed_rows"
        state = store.con.sql(
            SKIP_SQL.format(current=tagstore.newest_sql(rows)), params=[FAILED, [model_id, *settled_by]]
        ).to_arrow_table()
    finally:
        store.close()
    settled = state.column("_settled")
    undecodable = pc.fill_null(pc.equal(settled, UNDECODABLE), False)
    done = pc.or_(pc.fill_null(pc.equal(settled, DONE), False), pc.and_(undecodable, pa.scalar(not retry_failed)))
    todo = state.filter(pc.invert(done)).select(listing.column_names).cast(listing.schema)
    n_undecodable = 0 if retry_failed else pc.sum(undecodable.cast(pa.int64())).as_py() or 0
    return Pending(todo, listing.num_rows - todo.num_rows, n_undecodable)


# Each listed object with what its current row (same etag, same model) settles: DONE (tagged, or no landmark),
# UNDECODABLE (failed to decode: the same bytes fail the same way, so only --retry-failed reads them again) or
# NULL (no such row, or a read that failed: an S3 outage, a missing object; tagged by this run).
# {current}: the current rows of (at least) the listed uris.
DONE, UNDECODABLE = "done", "undecodable"
SKIP_SQL = f"""
WITH cur AS ({{current}})
SELECT l.*, CASE WHEN cur.status <> ? THEN '{DONE}' WHEN starts_with(cur.error, 'decode: ') THEN '{UNDECODABLE}'
    END AS _settled
FROM listing l
LEFT JOIN cur ON cur.uri = l.uri AND cur.etag = coalesce(l.etag, '') AND list_contains(?::VARCHAR[], cur.model_id)
ORDER BY l._i
"""


# ---------------------------------------------------------------- read + decode


def read_and_decode(
    batch: dict,
    *,
    preset: EvalPreset,
    opts: storage.S3Options,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    defer_jpeg: bool = False,
) -> dict:
    """uri/size/etag rows -> + sha256, width, height, EXIF, image (N, S, S, 3) uint8, ok, status, error.

    ``defer_jpeg`` (--gpu-decode): JPEGs the GPU can decode are only read and their headers parsed here; their
    bytes go on in a ``jpeg`` column (b"" for the other rows), ok stays False, and the GPU actor decodes them
    (``decode_deferred``).
    """
    uris = list(batch["uri"])
    out = _decoded_batch(batch, preset, defer_jpeg)
    t0 = time.perf_counter()
    for i, uri in enumerate(uris):
        data = _read_into(out, i, uri, opts)
        if data is not None:
            _decode_into(out, i, data, preset, max_pixels)
    out["decode_seconds"] = np.full(len(uris), (time.perf_counter() - t0) / max(len(uris), 1))
    return out


def decode_bytes(
    datas: list[bytes], *, preset: EvalPreset, max_pixels: int = DEFAULT_MAX_PIXELS, defer_jpeg: bool = False
) -> dict:
    """Photos already in memory (the app's uploads) -> the batch ``read_and_decode`` makes, uris empty."""
    n = len(datas)
    listing = {"uri": [""] * n, "etag": [None] * n, "size_bytes": [len(d) for d in datas]}
    out = _decoded_batch(listing, preset, defer_jpeg)
    for i, data in enumerate(datas):
        _decode_into(out, i, data, preset, max_pixels)
    return out


def _decoded_batch(batch: dict, preset: EvalPreset, defer_jpeg: bool) -> dict:
    """The decode stage's columns for ``batch``'s rows, every row still pending."""
    n = len(batch["uri"])
    out = {
        "uri": np.asarray(batch["uri"], dtype=object),
        "etag": np.asarray(batch["etag"], dtype=object),
        "size_bytes": np.array([None if s is None or s != s else int(s) for s in batch["size_bytes"]], dtype=object),
    }
    out.update(
        sha256=np.full(n, None, dtype=object),
        status=np.full(n, "pending", dtype=object),
        error=np.full(n, None, dtype=object),
        width=np.full(n, -1, dtype=np.int32),
        height=np.full(n, -1, dtype=np.int32),
        exif_lat=np.full(n, np.nan),
        exif_lon=np.full(n, np.nan),
        exif_time=np.full(n, _NAT, dtype=np.int64),
        ok=np.zeros(n, dtype=bool),
        image=np.zeros((n, preset.size, preset.size, 3), dtype=np.uint8),
    )
    if defer_jpeg:  # b"" for the rows decoded (or failed) here: an all-None object column comes back as NaN
        out["jpeg"] = np.full(n, b"", dtype=object)
    return out


def _read_into(out: dict, i: int, uri: str, opts: storage.S3Options) -> bytes | None:
    try:
        data = storage.read_bytes(uri, opts)
    except Exception as e:  # any read failure becomes this row's reason; the next run retries it
        out["status"][i], out["error"][i] = FAILED, f"read: {_reason(e)}"
        return None
    out["sha256"][i] = hashlib.sha256(data).hexdigest()
    out["size_bytes"][i] = len(data)
    return data


def _decode_into(out: dict, i: int, data: bytes, preset: EvalPreset, max_pixels: int) -> None:
    if "jpeg" in out:
        head = jpeg_header(data, max_pixels)
        if head is not None:  # the GPU actor decodes it
            out["jpeg"][i] = data
            _set_header(out, i, head)
            return
    try:
        d = decode_image(data, draft_to=preset.draft_target(), max_pixels=max_pixels)
        out["image"][i] = preset.to_uint8(d.image)
    except Exception as e:
        out["status"][i], out["error"][i] = FAILED, _decode_error(e)
        return
    out["ok"][i] = True
    _set_header(out, i, d)


def _set_header(out: dict, i: int, d) -> None:
    out["width"][i], out["height"][i] = d.width, d.height
    if d.exif_lat is not None:
        out["exif_lat"][i], out["exif_lon"][i] = d.exif_lat, d.exif_lon
    if d.exif_time is not None:
        out["exif_time"][i] = int(d.exif_time.replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


def decode_deferred(batch: dict, *, preset: EvalPreset, device: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """--gpu-decode, in the GPU actor: the ``jpeg`` column's photos decoded on ``device`` (nvJPEG on a GPU); any
    it refuses are decoded here on the CPU exactly as the CPU stage would (and fail with its reasons). Returns the
    batch with ``image`` an (N, S, S, 3) uint8 tensor on ``device`` and ``ok``/``status``/``error`` updated."""
    import torch

    out = {
        k: (np.array(v, copy=True) if k in ("ok", "status", "error", "exif_lat", "exif_lon", "exif_time") else v)
        for k, v in batch.items()
        if k != "jpeg"
    }
    jpeg = batch["jpeg"]
    images = torch.from_numpy(np.ascontiguousarray(batch["image"])).to(device)
    todo = [i for i in range(len(jpeg)) if isinstance(jpeg[i], bytes) and jpeg[i]]
    on_device, decoded = decode_jpegs_to_uint8([jpeg[i] for i in todo], preset, device=device) if todo else (None, [])
    j = 0
    for i, ok in zip(todo, decoded):
        if ok and on_device is not None:
            images[i], out["ok"][i], j = on_device[j], True, j + 1
            continue
        try:  # refused by the GPU decoder (or its whole batch was): the CPU path, same result as without the flag
            d = decode_image(jpeg[i], draft_to=preset.draft_target(), max_pixels=max_pixels)
            images[i] = torch.from_numpy(preset.to_uint8(d.image)).to(device)
            out["ok"][i] = True
        except Exception as e:
            out["status"][i], out["error"][i] = FAILED, _decode_error(e)
            out["exif_lat"][i] = out["exif_lon"][i] = np.nan  # as the CPU path: no header facts for a failed row
            out["exif_time"][i] = _NAT
    out["image"] = images
    return out


def _decode_error(e: BaseException) -> str:
    """A failed row's reason: a DecodeError's kind and message; anything else (a resize of a pathological image)
    as a short reason, so it is still one failed row, never a crash."""
    return f"decode: {e}" if isinstance(e, DecodeError) else f"decode: {_reason(e)}"


def _reason(e: BaseException) -> str:
    """A short, secret-free reason: error code for S3 errors, else type and message."""
    code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
    if code:
        return storage.redact(f"{code}: {e}")[:300]
    if isinstance(e, FileNotFoundError):
        return "not found"
    return storage.redact(f"{type(e).__name__}: {e}")[:300]


# ---------------------------------------------------------------- predict + rows


def predict_batch(predictor: Predictor, batch: dict) -> dict:
    """The Predictor on the decodable rows; a model failure fails this batch's rows, with the reason."""
    try:
        return predictor(batch)
    except Exception as e:
        out = {k: v for k, v in batch.items() if k != "image"}
        out.update(predictor._empty(len(batch["uri"])))
        out["status"] = np.full(len(batch["uri"]), FAILED, dtype=object)
        out["error"] = np.where(
            np.asarray(batch["ok"]), f"model: {_reason(e)}", np.asarray(batch["error"], dtype=object)
        )
        return out


def _strings(values) -> pa.Array:
    """Object columns cross Ray Data as object arrays, or as float NaN when every value was None."""
    return pa.array([v if isinstance(v, str) else None for v in values], pa.string())


def to_tag_rows(pred: dict, predictor: Predictor, *, run_id: str, tagged_at: datetime) -> pa.Table:
    """Predictor output -> a table of TAGS_SCHEMA (nulls, not NaN; tags as list<struct>)."""
    n = len(pred["uri"])
    ok = np.asarray(pred["status"]) != FAILED
    tags = [predictor.tags(pred["topk_idx"][i], pred["topk_score"][i]) if ok[i] else None for i in range(n)]
    tagged = np.asarray(pred["status"]) == TAGGED
    exif_time = np.asarray(pred["exif_time"], dtype=np.int64)
    cols = {
        "uri": _strings(pred["uri"]),
        "size_bytes": pa.array([None if s is None or s != s else int(s) for s in pred["size_bytes"]], pa.int64()),
        "etag": _strings(pred["etag"]),
        "sha256": _strings(pred["sha256"]),
        "status": _strings(pred["status"]),
        "error": _strings(pred["error"]),
        "width": pa.array(pred["width"], pa.int32(), mask=~ok),
        "height": pa.array(pred["height"], pa.int32(), mask=~ok),
        "exif_lat": pa.array(pred["exif_lat"], pa.float64(), from_pandas=True),
        "exif_lon": pa.array(pred["exif_lon"], pa.float64(), from_pandas=True),
        "exif_time": pa.array(exif_time, pa.timestamp("us"), mask=exif_time == _NAT),
        "landmark": _strings(pred["landmark"]),
        "score": pa.array(pred["score"], pa.float32(), mask=~ok),
        "lat": pa.array(pred["lat"], pa.float64(), mask=~tagged | np.isnan(pred["lat"])),
        "lon": pa.array(pred["lon"], pa.float64(), mask=~tagged | np.isnan(pred["lon"])),
        "tags": pa.array(tags, tagstore.TAGS_SCHEMA.field("tags").type),
        "model_id": pa.array([predictor.model_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "tagged_at": pa.array([tagged_at] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(cols, schema=tagstore.TAGS_SCHEMA)
