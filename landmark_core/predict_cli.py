"""`landmark predict PHOTO... [--model DIR] [-k 5] [--json]`."""

from __future__ import annotations

import argparse
import sys

from .artifact import ArtifactError
from .predict import NoModelError, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark predict",
                                description="Tag photos with the landmark they show, and where it is.")
    p.add_argument("photos", nargs="+", metavar="PHOTO")
    p.add_argument("--model", default=None, help="model artifact directory or s3:// URI (default: $LANDMARK_MODEL)")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=5, help="how many landmarks to list (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per photo per line")
    ns = p.parse_args(argv)
    if ns.k < 1:
        p.error(f"-k/--top-k must be >= 1, got {ns.k}")
    try:
        return run(ns.photos, ns.model, k=ns.k, as_json=ns.json)
    except (NoModelError, ArtifactError) as e:
        print(f"landmark predict: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
