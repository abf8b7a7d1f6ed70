"""`landmark data fetch udacity --dest DIR`, `landmark data synthetic DEST` and `landmark data split SOURCE --dest
DIR` (no Ray)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jobs._cli import ConfigError, check_output_dir, checks_config, fields_of, run_cli
from landmark_core.splitting import SplitError

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
    action: str  # fetch | synthetic | split
    dest: str
    source: str | None = None  # split: the folder of class folders
    test_fraction: float = 0.25
    copy: bool = False
    name: str = "udacity"  # fetch: which public dataset
    url: str = UDACITY_URL
    timeout: float = 15.0
    classes: int = 6  # synthetic: landmarks (class folders)
    train_per_class: int = 30
    test_per_class: int = 10
    seed: int = 0
    bad: bool = False

    def check(self) -> None:
        check_output_dir("DEST" if self.action == "synthetic" else "--dest", self.dest)
        if self.action == "split":
            self._check_split()
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

    def _check_split(self) -> None:
        """A local folder of class folders, not split already, apart from an empty --dest: a split written into
        an old one would mix their photos, and one inside its source would be listed as a landmark next time."""
        from landmark_core.storage import inside, is_s3

        src, dest = os.path.realpath(self.source), os.path.realpath(self.dest)
        if is_s3(self.source) or not os.path.isdir(src):
            raise ConfigError(f"SOURCE {self.source}: no such local folder (a folder of <landmark>/ photo folders)")
        gldv2 = os.path.isfile(os.path.join(src, "train.csv"))  # its photos are under train/, by id
        if split := [d for d in ("train", "val", "test") if os.path.isdir(os.path.join(src, d)) and not gldv2]:
            raise ConfigError(
                f"SOURCE {self.source}: it holds {'/, '.join(split)}/, a split's folders: it is split already (give "
                "it to landmark train --data as it is), or give the folder of landmark folders it was made from"
            )
        if inside(dest, src) or inside(src, dest):
            raise ConfigError(f"--dest {self.dest}: inside SOURCE {self.source}, or holding it; give a folder apart")
        if os.path.isdir(dest) and os.listdir(dest):
            raise ConfigError(f"--dest {self.dest}: not empty; give a new folder (a split is written whole)")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")


@checks_config
def run(cfg: DataConfig) -> dict:
    if cfg.action == "fetch":
        return {"root": str(fetch_udacity(Path(cfg.dest), url=cfg.url, timeout=cfg.timeout))}
    if cfg.action == "split":
        summary = split(cfg)
        print(json.dumps(summary, indent=2))
        return summary
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


SHOWN = 30  # landmarks listed one a line by `data split`


def split(cfg: DataConfig) -> dict:
    """SOURCE's class folders -> --dest train/ and test/, with a line per landmark and the next commands."""
    from landmark_core import splitting

    plan = splitting.plan(cfg.source, test_fraction=cfg.test_fraction, seed=cfg.seed)
    splitting.write(plan, cfg.source, cfg.dest, copy=cfg.copy)
    for name in list(plan.train)[:SHOWN]:  # (a GLDv2 set has thousands: the summary counts them all)
        print(f"[data] {name}: train {len(plan.train[name])}, test {len(plan.test[name])}", file=sys.stderr)
    if len(plan.train) > SHOWN:
        print(f"[data] ... and {len(plan.train) - SHOWN} more landmarks", file=sys.stderr)
    for line in _left_out_lines(plan, cfg.source) + _coords_lines(plan, cfg.source):
        print(f"[data] warning: {line}", file=sys.stderr)
    if one := [n for n in plan.train if not plan.test[n]]:
        print(
            f"[data] warning: no test photo for {', '.join(one)} (fewer than 2 photos, or all copies of one)",
            file=sys.stderr,
        )
    summary = {
        "dest": cfg.dest,
        "train": sum(map(len, plan.train.values())),
        "test": sum(map(len, plan.test.values())),
        "landmarks": len(plan.train),
        "near_copy_groups": plan.copy_groups,
        "near_copy_photos": plan.copy_photos,
        "unreadable": plan.unreadable,
        "not_photos": plan.not_photos,
        "outside_landmark_folders": plan.outside,
        "empty_landmark_folders": plan.empty,
        "missing": plan.missing,  # GLDv2: listed in train.csv, no file
        "files": "copies" if cfg.copy else "symbolic links",
    }
    print(
        f"[data] {summary['train']} training and {summary['test']} test photos of {summary['landmarks']} landmarks in "
        f"{cfg.dest} ({summary['files']}; {plan.copy_groups} group(s) of near-copies, {plan.copy_photos} photos, each "
        f"kept on one side). Next: landmark train --data {cfg.dest} ..., then landmark eval --known "
        f"{Path(cfg.dest, 'test')} ...",
        file=sys.stderr,
    )
    return summary


def _left_out_lines(plan, source: str) -> list[str]:
    """What SOURCE holds that is in no split, one line a kind: nothing is left out unsaid."""
    lines = []
    if plan.unreadable:
        shown = ", ".join(plan.unreadable[:5]) + (" ..." if len(plan.unreadable) > 5 else "")
        lines.append(f"{len(plan.unreadable)} file(s) named as photos are no readable photo, left out: {shown}")
    if plan.not_photos:
        kinds = ", ".join(f"{ext} {n}" for ext, n in plan.not_photos.items())
        lines.append(f"{sum(plan.not_photos.values())} file(s) are not photos by name, left out ({kinds})")
    if plan.outside:
        lines.append(f"{len(plan.outside)} photo(s) at {source}'s root are in no landmark's folder, left out")
    if plan.missing:
        lines.append(
            f"{len(plan.missing)} photo(s) that train.csv lists are not there, left out: {plan.missing[0]} ..."
        )
    if plan.empty:
        lines.append(f"{len(plan.empty)} folder(s) hold no photo, no landmark made of them: {', '.join(plan.empty)}")
    return lines


def _coords_lines(plan, source: str) -> list[str]:
    """The coords file placed beside the split, read as train will read it: rows that name no landmark folder
    (a GLDv2 root's folders are its landmark_ids) are said now, not after the split is trained on."""
    from landmark_core.catalog import Catalog, CatalogError, coords_file_beside, coords_file_note, load_coords

    if not (path := coords_file_beside(source)):
        return []
    try:
        coords = load_coords(path)
    except CatalogError as e:  # train refuses it, naming the row
        return [f"{e} (landmark train will refuse it)"]
    note = coords_file_note(coords, Catalog.from_folders(plan.train), path, "landmark folder")
    return [note] if note else []


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
    sp = sub.add_parser("split", help="split a folder of class folders into train/ and test/ (seeded, per landmark)")
    sp.add_argument(
        "source",
        metavar="SOURCE",
        help="a local folder of <landmark>/ photo folders (a coords file kept), or a GLDv2 root: train.csv "
        "(id,url,landmark_id) and train/a/b/c/<id>.jpg, a/b/c the id's first three characters",
    )
    sp.add_argument("--dest", required=True, help="a new folder: DEST/train/<landmark>/, DEST/test/<landmark>/")
    sp.add_argument("--test-fraction", type=float, default=0.25, help="each landmark's share held out, default 0.25")
    sp.add_argument("--seed", type=int, default=0, help="the same seed draws the same split, default 0")
    sp.add_argument("--copy", action="store_true", help="copy the photos (default: symbolic links to them)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        build_parser(),
        argv,
        config=lambda ns: fields_of(DataConfig, ns),
        run=run,
        show=lambda _result, _cfg: 0,
        failures=((FetchError, 1), (SplitError, 2)),
        prog=lambda cfg: f"landmark data {cfg.action}",
    )


if __name__ == "__main__":
    sys.exit(main())
