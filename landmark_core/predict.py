"""`landmark predict`: tag individual photos from disk, the seed app's job, without Ray."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from .predictor import Predictor
from .preprocess import DecodeError, check_gpu_decode, decode_image
from .status import FAILED

MODEL_ENV = "LANDMARK_MODEL"
PENDING = "pending"  # a result whose photo is read but not yet decoded and tagged


class NoModelError(ValueError):
    pass


def resolve_model(model: str | None) -> str:
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise NoModelError(
            f"no model given: pass --model DIR or set {MODEL_ENV}. Get one with "
            f"`landmark train --data DIR --output out/model` (or `make demo`, which trains one to out/demo/model)"
        )
    return model


@dataclass
class PhotoResult:
    path: str
    status: str
    error: str | None = None
    landmark: str | None = None
    score: float | None = None
    lat: float | None = None
    lon: float | None = None
    tags: list | None = None
    exif_lat: float | None = None
    exif_lon: float | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def predict_paths(paths: list[str], predictor: Predictor, *, batch_size: int = 16, gpu_decode: bool = False):
    """Yield a PhotoResult per path (local or s3://), in order, through the tag job's stages (read + decode, the
    model): a bad file is a failed result with the tag job's reason (``read: ...``, ``decode: ...``).

    ``gpu_decode``: JPEGs are decoded on the predictor's device (nvJPEG on a GPU; the caller checks there is
    one, see run()); other files and JPEGs it refuses take the CPU path.
    """
    from . import storage
    from .tagging import decode_deferred, predict_batch, read_and_decode

    preset, opts = predictor.preset, storage.S3Options()
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        listing = {"uri": chunk, "etag": [None] * len(chunk), "size_bytes": [None] * len(chunk)}
        batch = read_and_decode(listing, preset=preset, opts=opts, defer_jpeg=gpu_decode)
        if gpu_decode:
            batch = decode_deferred(batch, preset=preset, device=predictor.device)
        pred = predict_batch(predictor, batch)
        yield from (_photo_result(p, pred, i, predictor) for i, p in enumerate(chunk))


def _photo_result(path: str, pred: dict, i: int, predictor: Predictor) -> PhotoResult:
    r = PhotoResult(path, str(pred["status"][i]))
    r.exif_lat, r.exif_lon = _num(pred["exif_lat"][i]), _num(pred["exif_lon"][i])
    if r.status == FAILED:  # a photo's reason starts with its kind (`not_an_image: ...`), as predict_bytes says it
        r.error = str(pred["error"][i]).removeprefix("decode: ")
        return r
    r.landmark, r.score = pred["landmark"][i], float(pred["score"][i])
    r.lat, r.lon = _num(pred["lat"][i]), _num(pred["lon"][i])
    r.tags = predictor.tags(pred["topk_idx"][i], pred["topk_score"][i])
    return r


def predict_bytes(
    results: list[PhotoResult], datas: list[bytes | None], predictor: Predictor, *, gpu_decode: bool = False
) -> list[PhotoResult]:
    """Decode and tag, in one model call, the photo bytes of every result still ``pending`` (``datas[i]`` belongs
    to ``results[i]``); a photo that does not decode becomes a failed result with the DecodeError's reason.

    The one path from bytes to a result: `landmark predict` and `landmark serve` both call it.
    """
    todo = [i for i, r in enumerate(results) if r.status == PENDING]
    on_device = _decode_on_device({i: datas[i] for i in todo}, predictor) if gpu_decode else {}
    images, decoded = [], []
    for i in todo:
        r = results[i]
        try:
            if i in on_device:
                image, (r.exif_lat, r.exif_lon) = on_device[i]
            else:
                d = decode_image(datas[i], draft_to=predictor.preset.draft_target())
                image, r.exif_lat, r.exif_lon = predictor.preset.to_uint8(d.image), d.exif_lat, d.exif_lon
                if gpu_decode:
                    import torch

                    image = torch.from_numpy(image).to(predictor.device)
            images.append(image)
            decoded.append(r)
        except DecodeError as e:
            r.status, r.error = FAILED, str(e)
    if images:
        if gpu_decode:
            import torch

            batch = torch.stack(images)
        else:
            batch = np.stack(images)
        pred = predictor.predict_arrays(batch)
        for j, r in enumerate(decoded):
            r.status = pred["status"][j]
            r.landmark = pred["landmark"][j]
            r.score = float(pred["score"][j])
            r.lat, r.lon = _num(pred["lat"][j]), _num(pred["lon"][j])
            r.tags = predictor.tags(pred["topk_idx"][j], pred["topk_score"][j])
    return results


def _decode_on_device(datas: dict, predictor: Predictor) -> dict:
    """key -> ((S, S, 3) uint8 tensor on the predictor's device, (exif_lat, exif_lon)) for the JPEGs decoded there."""
    from .preprocess import _open, _read_exif, decode_jpegs_to_uint8

    paths = list(datas)
    batch, ok = decode_jpegs_to_uint8([datas[p] for p in paths], predictor.preset, device=predictor.device)
    out, j = {}, 0
    for p, good in zip(paths, ok):
        if good and batch is not None:
            try:
                exif = _read_exif(_open(datas[p]))
            except Exception:
                exif = {}
            out[p] = (batch[j], (exif.get("lat"), exif.get("lon")))
        if good:
            j += 1
    return out


def format_human(r: PhotoResult) -> str:
    if r.status == FAILED:
        return f"{r.path}: FAILED ({r.error})"
    head = f"{r.path}: " + (
        f"{r.landmark} ({r.score:.1%})"
        if r.landmark
        else f"no landmark recognised (best guess {r.tags[0]['name']}, {r.score:.1%})"
    )
    lines = [head]
    for t in r.tags:
        where = f" at {t['lat']:.4f}, {t['lon']:.4f}" if t["lat"] is not None else ""
        lines.append(f"    {t['score']:6.1%}  {t['name']}{where}")
    if r.exif_lat is not None:
        lines.append(f"    photo's own GPS: {r.exif_lat:.5f}, {r.exif_lon:.5f}")
    return "\n".join(lines)


def run(
    paths: list[str],
    model: str | None,
    *,
    k: int = 5,
    as_json: bool = False,
    out=None,
    runtime: str = "auto",
    gpu_decode: bool = False,
) -> int:
    """Print one result per photo; exit code 1 when any photo failed (the others still print).

    ``runtime``: landmark_core.onnx_runtime (auto: torch on a GPU, the int8 ONNX model on a CPU). ``gpu_decode``:
    nvJPEG decoding on the GPU; refused (GpuDecodeError) without a CUDA GPU or with an ONNX runtime.
    """
    model = resolve_model(model)
    if gpu_decode:
        from .onnx_runtime import resolve_runtime
        from .predictor import pick_device

        check_gpu_decode(pick_device())
        if resolve_runtime(runtime, "cuda") != "torch":
            from .preprocess import GpuDecodeError

            raise GpuDecodeError(f"--gpu-decode feeds the torch runtime on the GPU; not --runtime {runtime}")
    predictor = Predictor(model, k=k, runtime=runtime)
    failed = 0
    for r in predict_paths(paths, predictor, gpu_decode=gpu_decode):
        failed += r.status == FAILED
        print(r.to_json() if as_json else format_human(r), file=out if out is not None else sys.stdout, flush=True)
    return 1 if failed else 0
