"""`landmark data fetch udacity --dest DIR` and `landmark data synthetic DEST` (no Ray)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jobs._cli import ConfigError, check_output_dir, checks_config, fields_of, run_cli

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


@dataclass(frozen=True)
class DataConfig:
    action: str  # fetch | synthetic
    dest: str
    name: str = "udacity"  # fetch: which public dataset
    url: str = UDACITY_URL
    timeout: float = 15.0
    classes: int = 6  # synthetic: landmarks (class folders)
    train_per_class: int = 30
    test_per_class: int = 10
    seed: int = 0
    bad: bool = False

    def check(self) -> None:
        check_output_dir("--dest" if self.action == "fetch" else "DEST", self.dest)
        if self.action == "fetch" and not self.timeout > 0:
            raise ConfigError(f"--timeout must be > 0, got {self.timeout}")
        if self.action == "synthetic":
            from landmark_core.synthetic import SHAPES

            if not 1 <= self.classes <= len(SHAPES):
                raise ConfigError(f"--classes must be 1 to {len(SHAPES)} (the synthetic shapes), got {self.classes}")
            if self.train_per_class < 2:  # training holds one back for validation
                raise ConfigError(f"--train-per-class must be >= 2, got {self.train_per_class}")
            if self.test_per_class < 0:
                raise ConfigError(f"--test-per-class must be >= 0, got {self.test_per_class}")


@checks_config
def run(cfg: DataConfig) -> dict:
    if cfg.action == "fetch":
        return {"root": str(fetch_udacity(Path(cfg.dest), url=cfg.url, timeout=cfg.timeout))}
    from landmark_core import synthetic

    summary = synthetic.write_dataset(
        cfg.dest,
        n_classes=cfg.classes,
        train_per_class=cfg.train_per_class,
        test_per_class=cfg.test_per_class,
        seed=cfg.seed,
        bad=cfg.bad,
    )
    print(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="landmark data", description="Fetch or generate datasets.")
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fetch", help="download a public dataset")
    f.add_argument("name", choices=["udacity"], help="the dataset: udacity (the 50-landmark Udacity set)")
    f.add_argument("--dest", required=True, help="directory to unpack into")
    f.add_argument("--url", default=UDACITY_URL, help="override the download URL (mirror)")
    f.add_argument("--timeout", type=float, default=15.0, help="network timeout, seconds")
    s = sub.add_parser("synthetic", help="generate the synthetic landmark-like dataset (+ bad files)")
    s.add_argument("dest", metavar="DEST", help="directory to write DEST/train/<class>/ and DEST/test/<class>/ into")
    s.add_argument("--classes", type=int, default=6, help="landmarks (class folders), 1 to 12, default 6")
    s.add_argument("--train-per-class", type=int, default=30, help="training photos per landmark, default 30")
    s.add_argument("--test-per-class", type=int, default=10, help="test photos per landmark, default 10")
    s.add_argument("--seed", type=int, default=0, help="the same seed writes the same photos, default 0")
    s.add_argument("--bad", action="store_true", help="also write the bad-file corpus to DEST/bad/")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        build_parser(),
        argv,
        config=lambda ns: fields_of(DataConfig, ns),
        run=run,
        show=lambda _result, _cfg: 0,
        failures=((FetchError, 1),),
        prog=lambda cfg: f"landmark data {cfg.action}",
    )


if __name__ == "__main__":
    sys.exit(main())
