"""`landmark predict PHOTO... [--model DIR] [-k 5] [--json]`."""

from __future__ import annotations

import argparse
import sys

from .artifact import ArtifactError
from .onnx_runtime import RUNTIMES, RuntimeChoiceError
from .predict import NoModelError, run
from .preprocess import GpuDecodeError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="landmark predict", description="Tag photos with the landmark they show, and where it is."
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO")
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
    ns = p.parse_args(argv)
    if ns.k < 1:
        p.error(f"-k/--top-k must be >= 1, got {ns.k}")
    try:
        return run(ns.photos, ns.model, k=ns.k, as_json=ns.json, runtime=ns.runtime, gpu_decode=ns.gpu_decode)
    except (RuntimeChoiceError, GpuDecodeError) as e:
        p.error(str(e))
    except (NoModelError, ArtifactError) as e:
        print(f"landmark predict: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
