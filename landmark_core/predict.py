"""`landmark predict`: tag individual photos from disk, the seed app's job, without Ray."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .preprocess import DecodeError, decode_image
from .predictor import FAILED, Predictor

MODEL_ENV = "LANDMARK_MODEL"


class NoModelError(ValueError):
    pass


def resolve_model(model: str | None) -> str:
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise NoModelError(
            f"no model given: pass --model DIR or set {MODEL_ENV}. Get one with "
            f"`landmark train --data DIR --output out/model` (or `make demo`, which trains one to out/demo/model)")
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


def predict_paths(paths: list[str], predictor: Predictor, *, batch_size: int = 16):
    """Yield a PhotoResult per path, in order; a bad file is a failed result, never an exception."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        decoded, images = {}, []
        results: list[PhotoResult] = []
        for p in chunk:
            try:
                d = decode_image(Path(p).read_bytes(), draft_to=predictor.preset.draft_target())
                decoded[p] = d
                images.append(predictor.preset.to_uint8(d.image))
                results.append(PhotoResult(p, "pending", exif_lat=d.exif_lat, exif_lon=d.exif_lon))
            except DecodeError as e:
                results.append(PhotoResult(p, FAILED, error=str(e)))
            except OSError as e:
                results.append(PhotoResult(p, FAILED, error=f"unreadable: {e.strerror or e}"))
        if images:
            pred = predictor.predict_arrays(np.stack(images))
            j = 0
            for r in results:
                if r.status != "pending":
                    continue
                r.status = pred["status"][j]
                r.landmark = pred["landmark"][j]
                r.score = float(pred["score"][j])
                r.lat, r.lon = _num(pred["lat"][j]), _num(pred["lon"][j])
                r.tags = predictor.tags(pred["topk_idx"][j], pred["topk_score"][j])
                j += 1
        yield from results


def format_human(r: PhotoResult) -> str:
    if r.status == FAILED:
        return f"{r.path}: FAILED ({r.error})"
    head = f"{r.path}: " + (f"{r.landmark} ({r.score:.1%})" if r.landmark else
                            f"no landmark recognised (best guess {r.tags[0]['name']}, {r.score:.1%})")
    lines = [head]
    for t in r.tags:
        where = f" at {t['lat']:.4f}, {t['lon']:.4f}" if t["lat"] is not None else ""
        lines.append(f"    {t['score']:6.1%}  {t['name']}{where}")
    if r.exif_lat is not None:
        lines.append(f"    photo's own GPS: {r.exif_lat:.5f}, {r.exif_lon:.5f}")
    return "\n".join(lines)


def run(paths: list[str], model: str | None, *, k: int = 5, as_json: bool = False, out=None) -> int:
    """Print one result per photo; exit code 1 when any photo failed (the others still print)."""
    predictor = Predictor(resolve_model(model), k=k)
    failed = 0
    for r in predict_paths(paths, predictor):
        failed += r.status == FAILED
        print(r.to_json() if as_json else format_human(r), file=out if out is not None else sys.stdout, flush=True)
    return 1 if failed else 0
