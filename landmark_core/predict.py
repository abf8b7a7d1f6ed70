"""Tagging photos in this process, without Ray: paths or bytes in, a PhotoResult each (`landmark predict`, the app)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .predictor import Predictor
from .preprocess import DEFAULT_MAX_PIXELS
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


def predict_paths(paths: list[str], predictor: Predictor, *, batch_size: int = 16, gpu_decode: bool = False, opts=None):
    """Yield a PhotoResult per path (local or s3://), in order, through the tag job's stages (read + decode, the
    model): a bad file is a failed result with the tag job's reason (``read: ...``, or the DecodeError's).

    ``gpu_decode``: JPEGs are decoded on the predictor's device (nvJPEG on a GPU; the caller checks there is
    one, see predict_cli.run()); other files and JPEGs it refuses take the CPU path. ``opts``: the S3Options of
    s3:// paths (an S3-compatible endpoint), default AWS's.
    """
    from . import storage
    from .tagging import read_and_decode

    opts = storage.as_options(opts)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        listing = {"uri": chunk, "etag": [None] * len(chunk), "size_bytes": [None] * len(chunk)}
        batch = read_and_decode(listing, preset=predictor.preset, opts=opts, defer_jpeg=gpu_decode)
        pred = _predict(batch, predictor, gpu_decode)
        yield from (_fill(PhotoResult(p, PENDING), pred, i, predictor) for i, p in enumerate(chunk))


def predict_bytes(
    results: list[PhotoResult],
    datas: list[bytes | None],
    predictor: Predictor,
    *,
    gpu_decode: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[PhotoResult]:
    """Decode and tag, in one model call, the photo bytes of every result still ``pending`` (``datas[i]`` belongs
    to ``results[i]``); a photo that does not decode becomes a failed result with the DecodeError's reason.
    The app (`landmark serve`) calls it; the stages are the tag job's (landmark_core.tagging).
    """
    from .tagging import decode_bytes

    todo = [i for i, r in enumerate(results) if r.status == PENDING]
    if todo:
        batch = decode_bytes(
            [datas[i] for i in todo], preset=predictor.preset, max_pixels=max_pixels, defer_jpeg=gpu_decode
        )
        pred = _predict(batch, predictor, gpu_decode)
        for j, i in enumerate(todo):
            _fill(results[i], pred, j, predictor)
    return results


def _predict(batch: dict, predictor: Predictor, gpu_decode: bool) -> dict:
    """The model on the decoded rows (a model failure raises: here it is the caller's error, not a photo's)."""
    from .tagging import decode_deferred

    if gpu_decode:
        batch = decode_deferred(batch, preset=predictor.preset, device=predictor.device)
    return predictor(batch)


def _fill(r: PhotoResult, pred: dict, i: int, predictor: Predictor) -> PhotoResult:
    """``r`` with row ``i`` of the tag stages' output."""
    r.status = str(pred["status"][i])
    r.exif_lat, r.exif_lon = _num(pred["exif_lat"][i]), _num(pred["exif_lon"][i])
    if r.status == FAILED:  # a photo's reason starts with its kind (`not_an_image: ...`), as the app answers it
        r.error = str(pred["error"][i]).removeprefix("decode: ")
        return r
    r.landmark, r.score = pred["landmark"][i], float(pred["score"][i])
    r.lat, r.lon = _num(pred["lat"][i]), _num(pred["lon"][i])
    r.tags = predictor.tags(pred["topk_idx"][i], pred["topk_score"][i])
    return r
