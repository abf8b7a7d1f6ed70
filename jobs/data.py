"""`landmark data fetch udacity --dest DIR` and `landmark data synthetic DEST` (no Ray)."""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

UDACITY_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"


class FetchError(RuntimeError):
    pass


def download(url: str, dest: Path, *, timeout: float = 15.0, out=sys.stderr) -> Path:
    """Stream ``url`` to ``dest`` (via a .part file), printing progress; fails fast when offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                if time.time() - last > 2 or done == total:
                    pct = f" ({done / total:.0%})" if total else ""
                    print(f"[data] downloaded {done / 2**20:.1f} MiB{pct}", file=out, flush=True)
                    last = time.time()
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise FetchError(
            f"could not download {url}: {reason}. Are you offline? Download the zip elsewhere and "
            f"unpack it into the --dest directory (layout: landmark_images/train/<class>/*.jpg)"
        ) from None
    part.replace(dest)
    return dest


def unpack(zip_path: Path, dest: Path) -> Path:
    """Unzip, refusing members that would escape ``dest``; returns the dataset root (with train/)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            root = dest.resolve()
            for m in z.infolist():
                target = (dest / m.filename).resolve()
                if not str(target).startswith(str(root)):
                    raise FetchError(f"{zip_path}: member {m.filename!r} escapes the destination")
            z.extractall(dest)
    except zipfile.BadZipFile:
        raise FetchError(f"{zip_path} is not a zip file (truncated download?)") from None
    candidates = [p.parent for p in dest.rglob("train") if p.is_dir()]
    if not candidates:
        raise FetchError(f"{zip_path}: no train/ folder inside (not the Udacity landmark_images layout)")
    return min(candidates, key=lambda p: len(p.parts))


def fetch_udacity(dest: Path, *, url: str = UDACITY_URL, timeout: float = 15.0) -> Path:
    zip_path = dest / "landmark_images.zip"
    if not zip_path.exists():
        download(url, zip_path, timeout=timeout)
    root = unpack(zip_path, dest)
    n_train = sum(1 for _ in (root / "train").rglob("*.jpg"))
    n_test = sum(1 for _ in (root / "test").rglob("*.jpg")) if (root / "test").is_dir() else 0
    print(
        f"[data] Udacity landmark images at {root}: {n_train} train, {n_test} test photos. "
        f"Train with: landmark train --data {root} --output out/udacity",
        flush=True,
    )
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark data", description="Fetch or generate datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a public dataset")
    f.add_argument("name", choices=["udacity"])
    f.add_argument("--dest", required=True, help="directory to unpack into")
    f.add_argument("--url", default=UDACITY_URL, help="override the download URL (mirror)")
    f.add_argument("--timeout", type=float, default=15.0, help="network timeout, seconds")
    s = sub.add_parser("synthetic", help="generate the synthetic landmark-like dataset (+ bad files)")
    s.add_argument("dest", help="directory to write DEST/train/<class>/ and DEST/test/<class>/ into")
    s.add_argument("--classes", type=int, default=6, help="landmarks (class folders), default 6")
    s.add_argument("--train-per-class", type=int, default=30, help="training photos per landmark, default 30")
    s.add_argument("--test-per-class", type=int, default=10, help="test photos per landmark, default 10")
    s.add_argument("--seed", type=int, default=0, help="the same seed writes the same photos, default 0")
    s.add_argument("--bad", action="store_true", help="also write the bad-file corpus to DEST/bad/")
    ns = p.parse_args(argv)
    if ns.cmd == "fetch":
        if ns.timeout <= 0:
            p.error(f"--timeout must be > 0, got {ns.timeout}")
        try:
            fetch_udacity(Path(ns.dest), url=ns.url, timeout=ns.timeout)
        except FetchError as e:
            print(f"landmark data fetch: {e}", file=sys.stderr)
            return 1
        return 0
    from landmark_core import synthetic

    args = [
        ns.dest,
        "--classes",
        str(ns.classes),
        "--train-per-class",
        str(ns.train_per_class),
        "--test-per-class",
        str(ns.test_per_class),
        "--seed",
        str(ns.seed),
    ] + (["--bad"] if ns.bad else [])
    synthetic.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
