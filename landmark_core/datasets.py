"""Training data layouts -> lists of (uri, label) and a catalog. Local paths or s3://bucket/prefix.

Layouts:
- class folders: ``<root>/train/<class>/*`` with optional ``<root>/val/`` and ``<root>/test/`` (Udacity
  ``landmark_images/`` is one); a root with class folders directly in it is taken as train only;
- Google Landmarks v2: ``<root>/train.csv`` (``id,url,landmark_id``), images at ``<root>/train/<a>/<b>/<c>/<id>.jpg``.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import storage
from .catalog import Catalog, same_name_folders

# .jfif: a JPEG as Windows browsers save one; .avif: what web downloads and some phones give (Pillow decodes it)
IMAGE_EXTENSIONS = tuple(".jpg .jpeg .jfif .png .webp .bmp .gif .tif .tiff .heic .heif .avif".split())


# how each training epoch, fine-tuned or frozen, draws its negatives (landmark_core.training.draw_negatives)
NEGATIVE_SAMPLINGS = ("balanced", "uniform")


class DatasetError(ValueError):
    pass


@dataclass
class Split:
    uris: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uris)

    def take(self, idx) -> "Split":
        return Split([self.uris[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class LabelledData:
    catalog: Catalog
    train: Split
    val: Split
    test: Split
    layout: str

    def summary(self) -> str:
        return (
            f"{self.layout} layout: {len(self.catalog)} classes, train {len(self.train)}, "
            f"val {len(self.val)}, test {len(self.test)}"
        )


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def image_objects(root: str, opts: storage.S3Options = storage.S3Options(), *, left_out: Counter | None = None):
    """(uri, size in bytes, etag) of every image below ``root`` (recursive, extensions case-insensitive), sorted
    by uri; an s3 listing is paginated. Local files have no ETag: see ``local_etag``. ``left_out`` counts the
    other objects by extension, for the caller to report."""
    if storage.is_s3(root):
        bucket, prefix = storage.split_s3(root.rstrip("/") + "/")
        pages = storage.s3_client(opts).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        objects = (
            (f"s3://{bucket}/{o['Key']}", int(o["Size"]), o.get("ETag", "").strip('"'))
            for page in pages
            for o in page.get("Contents", [])
            if _is_image_or_count(o["Key"], left_out)
        )
        return sorted(objects)
    out, walked = [], set()
    # symlinked folders are followed (a data set is often a subset linked from a larger one); a folder reached
    # twice (a link to an ancestor, or two links to one folder) is listed once
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirnames[:] = []
            continue
        walked.add(real)
        for f in files:
            if _is_image_or_count(f, left_out):
                full = os.path.join(dirpath, f)
                out.append((full, *_size_and_etag(full)))
    return sorted(out)


def _is_image_or_count(name: str, left_out: Counter | None) -> bool:
    if is_image_name(name):
        return True
    if left_out is not None and not name.endswith("/"):  # (an S3 "folder" marker is no object of the user's)
        left_out[os.path.splitext(name.rsplit("/", 1)[-1])[1].lower() or "(no extension)"] += 1
    return False


def _size_and_etag(path: str) -> tuple[int, str]:
    """A dangling symlink is listed all the same (reading it fails, and its row says why), not a crash here."""
    try:
        st = os.stat(path)
    except OSError:
        st = os.lstat(path)
    return st.st_size, local_etag(st)


def local_etag(st: os.stat_result) -> str:
    """Local files have no ETag; modification time and size change whenever the photo is replaced."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


def list_files(root: str, opts: storage.S3Options = storage.S3Options()) -> list[str]:
    """Every image below ``root`` (recursive), sorted."""
    return [uri for uri, _, _ in image_objects(root, opts)]


def _relative_parts(uri: str, root: str) -> list[str]:
    rel = uri[len(root.rstrip("/")) + 1 :] if uri.startswith(root.rstrip("/") + "/") else uri
    return rel.split("/")


def _class_split(files: list[str], root: str) -> dict[str, list[str]]:
    """Group files of ``root/<class>/...`` by class folder."""
    by_class: dict[str, list[str]] = {}
    for f in files:
        parts = _relative_parts(f, root)
        if len(parts) >= 2:
            by_class.setdefault(parts[0], []).append(f)
    return by_class


def load_labelled(
    root: str,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    coords: dict | None = None,
    opts: storage.S3Options = storage.S3Options(),
) -> LabelledData:
    storage.check_uri(root)
    if not storage.is_s3(root):
        if not Path(root).is_dir():
            raise DatasetError(f"--data {root}: no such directory")
        root = str(Path(root).resolve())  # workers run in other directories
    if storage.exists(storage.join(root, "train.csv"), opts):
        return _load_gldv2(root, val_fraction=val_fraction, seed=seed, coords=coords, opts=opts)
    files = list_files(root, opts)
    if not files:
        raise DatasetError(f"--data {root}: no images found (expected <root>/train/<class>/*.jpg)")
    splits = {}
    for name in ("train", "val", "test"):
        sub = storage.join(root, name) if storage.is_s3(root) else str(Path(root, name))
        chosen = [f for f in files if f.startswith(sub.rstrip("/") + "/")]
        if chosen:
            splits[name] = _class_split(chosen, sub)
    if "train" not in splits and splits:  # else its test/ photos would train, as a landmark called "test"
        raise DatasetError(
            f"--data {root}: has {'/ and '.join(splits)}/ but no train/: put the training photos in "
            "train/<landmark>/, or give a folder of landmark folders (`landmark data split` makes train/ and test/)"
        )
    if not splits:  # a bare root of class folders
        splits = {"train": _class_split(files, root)}
    catalog = _distinct(
        Catalog.from_folders(splits["train"], coords=coords, name=Path(root.rstrip("/")).name or "custom")
    )
    index = {f: i for i, f in enumerate(catalog.folders)}

    def to_split(by_class: dict[str, list[str]], which: str) -> Split:
        s = Split()
        for folder, fs in sorted(by_class.items()):
            if folder not in index:
                raise DatasetError(f"{which}/{folder} has no matching train/ class folder")
            s.uris += fs
            s.labels += [index[folder]] * len(fs)
        return s

    train = to_split(splits["train"], "train")
    val = to_split(splits["val"], "val") if "val" in splits else None
    test = to_split(splits["test"], "test") if "test" in splits else Split()
    if val is None:
        train, val = stratified_split(train, val_fraction, seed)
    return LabelledData(catalog, train, val, test, "class-folder")


def _distinct(catalog: Catalog) -> Catalog:
    """Two landmarks with one name (folders that differ in case only, or that the known places or the coords
    file name alike) could not be told apart in tags and queries, and a lookup by name finds one: refused."""
    if clash := same_name_folders(catalog):
        a, b, name = clash
        raise DatasetError(
            f"class folders {a!r} and {b!r} would both be landmark {name!r} (names match whatever the case): "
            "tags and queries could not tell them apart; merge them into one folder or rename one"
        )
    return catalog


def stratified_split(data: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded per-class split; every class with >= 2 photos keeps at least one on each side."""
    if fraction <= 0:
        return data, Split()
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * fraction))
        n_val = min(max(n_val, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return data.take(sorted(train_idx)), data.take(sorted(val_idx))


def gldv2_photos(root: str, opts: storage.S3Options = storage.S3Options()) -> list[tuple[str, str]]:
    """(photo uri, landmark_id) for each row of a GLDv2 root's train.csv: its photos are train/a/b/c/<id>.jpg,
    a/b/c the id's first three characters. A spreadsheet's byte-order mark and spaces around fields are read
    past (a header that reads `id,url,landmark_id` on screen must not be refused)."""
    text = storage.read_bytes(storage.join(root, "train.csv"), opts).decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header = [h.strip() for h in next(reader, [])]
    if not {"id", "landmark_id"} <= set(header):
        raise DatasetError(
            f"{root}/train.csv: expected the columns id,url,landmark_id (GLDv2's train.csv), found "
            f"{','.join(header) or 'no header'}"
        )
    i, j = header.index("id"), header.index("landmark_id")
    rows = [(r[i].strip(), r[j].strip()) for r in reader if len(r) > max(i, j) and r[i].strip()]
    if not rows:
        raise DatasetError(f"{root}/train.csv: no rows under its header")
    return [(gldv2_path(root, photo_id), landmark) for photo_id, landmark in rows]


def gldv2_path(root: str, photo_id: str) -> str:
    """Where GLDv2 keeps a photo: train/<first 3 characters of its id, one folder each>/<id>.jpg."""
    return storage.join(root, "train", *photo_id[:3], f"{photo_id}.jpg")


def _load_gldv2(
    root: str, *, val_fraction: float, seed: int, coords: dict | None, opts: storage.S3Options
) -> LabelledData:
    rows = gldv2_photos(root, opts)
    folders = sorted({landmark for _, landmark in rows}, key=lambda s: (len(s), s))
    catalog = _distinct(Catalog.from_folders(folders, coords=coords, name="gldv2"))
    index = {f: i for i, f in enumerate(catalog.folders)}
    data = Split()
    for uri, landmark in rows:
        data.uris.append(uri)
        data.labels.append(index[landmark])
    train, val = stratified_split(data, val_fraction, seed)
    return LabelledData(catalog, train, val, Split(), "gldv2")


def load_unlabelled(root: str, opts: storage.S3Options = storage.S3Options()) -> list[str]:
    """All images below ``root`` (class folders, if any, are ignored) - for --unknown."""
    storage.check_uri(root)
    if not storage.is_s3(root):
        root = str(Path(root).resolve())
    files = list_files(root, opts)
    if not files:
        raise DatasetError(f"{root}: no images found")
    return files


@dataclass
class Negatives:
    """Photos of no catalog landmark, split per folder (seeded) into what trains and what fits the score."""

    groups: list[str]  # one name per folder of photos ("everyday/pets")
    train: list[str] = field(default_factory=list)
    fit: list[str] = field(default_factory=list)
    fit_groups: list[int] = field(default_factory=list)  # index into groups, one per fit photo

    def __bool__(self) -> bool:
        return bool(self.train or self.fit)

    def summary(self) -> str:
        return f"negatives {len(self.train)} train + {len(self.fit)} held back in {len(self.groups)} folder(s)"


def load_negatives(
    roots, *, fit_fraction: float, seed: int, opts: storage.S3Options = storage.S3Options()
) -> Negatives:
    """Every image below each root; the group of a photo is its folder relative to the root's parent, so that
    each folder of look-alikes counts on its own when the threshold is fitted (a big folder of everyday photos
    must not drown a small one of other landmarks)."""
    by_group: dict[str, list[str]] = {}
    for root in roots:
        top = root.rstrip("/") if storage.is_s3(root) else str(Path(root).resolve())
        parent = top.rsplit("/", 1)[0]
        for f in load_unlabelled(root, opts):
            by_group.setdefault(f.rsplit("/", 1)[0][len(parent) + 1 :], []).append(f)
    neg = Negatives(groups=sorted(by_group))
    rng = np.random.default_rng(seed)
    for gi, g in enumerate(neg.groups):
        files = sorted(by_group[g])
        order = rng.permutation(len(files))
        n_fit = min(max(1, int(round(len(files) * fit_fraction))), len(files) - 1) if len(files) > 1 else 0
        neg.fit += [files[i] for i in sorted(order[:n_fit])]
        neg.fit_groups += [gi] * n_fit
        neg.train += [files[i] for i in sorted(order[n_fit:])]
    return neg
