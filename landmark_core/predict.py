"""Tagging photos in this process, without Ray: paths or bytes in, a PhotoResult each (`landmark predict`, the app)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .predictor import Predictor
from .preprocess import DecodeError, decode_image
from .status import FAILED

PENDING = "pending"  # a result whose photo is read but not yet decoded and tagged


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
