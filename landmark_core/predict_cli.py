"""The `landmark predict PHOTO... [--model DIR] [-k 5] [--json]` command: photos on this machine, no Ray."""

from __future__ import annotations

import argparse
import os
import sys

from .artifact import ArtifactError
from .cli_errors import brief_errors
from .closed_pipe import quiet_on_closed_pipe
from .onnx_runtime import RUNTIMES, RuntimeChoiceError
from .predict import PhotoResult, predict_paths
from .predictor import Predictor
from .preprocess import GpuDecodeError, check_gpu_decode
from .status import FAILED
from .storage import S3Options, StorageError, exists, is_s3, redact

MODEL_ENV = "LANDMARK_MODEL"


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


def format_human(r: PhotoResult) -> str:
    if r.status == FAILED:
        return f"{r.path}: FAILED ({r.error})"
    head = f"{r.path}: " + (  # "tagged" said: a tag's score can be low (the chance it is right) and still pass
        f"{r.landmark} (tagged, score {r.score:.1%})"
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
    s3_endpoint: str | None = None,
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
            raise GpuDecodeError(f"--gpu-decode feeds the torch runtime on the GPU; not --runtime {runtime}")
    opts = S3Options(endpoint=s3_endpoint)
    predictor = Predictor.for_command("landmark predict:", model, k=k, runtime=runtime, storage_options=opts)
    items = expand_folders(paths, opts)
    photos = [i for i in items if isinstance(i, str)]
    answers = predict_paths(photos, predictor, gpu_decode=gpu_decode, opts=opts)
    failed = 0
    for item in items:  # in the arguments' order, each photo's answer as it comes
        r = item if isinstance(item, PhotoResult) else next(answers)
        failed += r.status == FAILED
        print(r.to_json() if as_json else format_human(r), file=out if out is not None else sys.stdout, flush=True)
    return 1 if failed else 0


def expand_folders(paths: list[str], opts: S3Options = S3Options()) -> list[str | PhotoResult]:
    """PHOTO arguments -> photos to answer: a folder (or an s3:// prefix) stands for its photos, found as the tag
    job finds them (recursive, by name, sorted), or for one failed answer when it has none; anything else is tried
    as given. A photo under two of the arguments is answered once."""
    from collections import Counter

    from .datasets import image_objects
    from .tagging import left_out_note

    items, seen = [], set()
    for path in paths:
        if not (os.path.isdir(path) or _is_s3_prefix(path, opts)):
            found = [path]
        else:
            left_out = Counter()
            try:
                found = [uri for uri, _, _ in image_objects(path, opts, left_out=left_out)]
            except Exception as e:  # an unreachable store, a missing bucket: this argument's answer says so
                items.append(PhotoResult(path, FAILED, error=f"list: {redact(str(e))[:200]}"))
                continue
            if note := left_out_note(
                dict(left_out), where=path, instead="name them as PHOTO arguments", verb=("answer", "answered")
            ):
                print(f"landmark predict: {note}", file=sys.stderr, flush=True)
            if not found:
                items.append(PhotoResult(path, FAILED, error="no photos in this folder"))
        items += [f for f in found if f not in seen]
        seen.update(found)
    return items


def _is_s3_prefix(path: str, opts: S3Options) -> bool:
    """An s3:// argument ending in "/" is a prefix; so is one with no photo's extension that is no object (as
    `--input s3://uploads/2026-11-24` names one for the tag job). A photo's name is tried as given, no request."""
    from .datasets import is_image_name

    if not is_s3(path) or is_image_name(path):
        return False
    if path.endswith("/"):
        return True
    try:
        return not exists(path, opts)
    except Exception:  # unreachable or refused: listing it will say why, in this argument's answer
        return True


def main(argv: list[str] | None = None) -> int:
    """`landmark predict`; when stdout's reader goes (`| head -1`), ends quietly as every job does."""
    return quiet_on_closed_pipe(_main)(argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="landmark predict",
        description="Tag photos with the landmark they show, and where it is.",
        epilog="Exit status: 0; 1 when any photo failed (the others are answered all the same); 2 for a bad "
        "argument or model.",
    )
    p.add_argument(
        "photos",
        nargs="+",
        metavar="PHOTO",
        help="photo files or s3:// URIs; a folder or an s3:// prefix (s3://bucket/2026-11-24 or .../2026-11-24/) "
        "stands for its photos",
    )
    p.add_argument("--model", default=None, help="model artifact directory or s3:// URI (default: $LANDMARK_MODEL)")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=5, help="how many landmarks to list (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per photo per line")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="model runtime: torch, onnx (ONNX Runtime fp32), onnx-int8, or auto (default: torch on a "
        "GPU, onnx-int8 on a CPU; the ONNX model is built once per model and cached)",
    )
    p.add_argument(
        "--gpu-decode",
        action="store_true",
        help="decode JPEGs on the GPU (nvJPEG via torchvision); needs CUDA and the torch runtime",
    )
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint for s3:// photos and --model")
    brief_errors(p, sys.argv[1:] if argv is None else argv)  # two lines and a did-you-mean, as every command
    ns = p.parse_args(argv)
    if ns.k < 1:
        p.error(f"-k/--top-k must be >= 1, got {ns.k}")
    try:
        S3Options(endpoint=ns.s3_endpoint).check()
        return run(
            ns.photos,
            ns.model,
            k=ns.k,
            as_json=ns.json,
            runtime=ns.runtime,
            gpu_decode=ns.gpu_decode,
            s3_endpoint=ns.s3_endpoint,
        )
    except (RuntimeChoiceError, GpuDecodeError, StorageError) as e:
        p.error(str(e))
    except NoModelError as e:
        print(f"landmark predict: {e}", file=sys.stderr)
        return 2
    except ArtifactError as e:
        print(f"landmark predict: --model: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
