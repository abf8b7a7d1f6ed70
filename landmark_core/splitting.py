"""`landmark data split`: a folder of class folders (or a GLDv2 root: train.csv and train/a/b/c/<id>.jpg) ->
DEST/train/<class>/ and DEST/test/<class>/, seeded, per landmark, with near-copies of one photo kept on one side (a
test photo that is a resized copy of a training photo measures nothing: the publisher's splits in ../shared hold
such pairs, see README "Open world"). The files are symbolic links to the originals by default (train and eval
follow them), or copies.
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import nearcopy
from .catalog import coords_file_beside
from .datasets import DatasetError, _class_split, gldv2_photos, image_objects


class SplitError(ValueError):
    pass


@dataclass
class Plan:
    """Each landmark's photos on each side, and what could not be placed."""

    train: dict[str, list[str]] = field(default_factory=dict)
    test: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # no photo: left out (train would fail them anyway)
    copy_groups: int = 0  # groups of near-copies, each placed whole on one side
    copy_photos: int = 0  # the photos in them
    not_photos: dict[str, int] = field(default_factory=dict)  # other files by extension, left out
    outside: list[str] = field(default_factory=list)  # photos at SOURCE's root, in no landmark's folder
    empty: list[str] = field(default_factory=list)  # landmark folders with no photo
    missing: list[str] = field(default_factory=list)  # GLDv2: photos train.csv lists that are not there
    place: dict[str, str] = field(default_factory=dict)  # each photo's path below its landmark's folder in DEST


def plan(source: str, *, test_fraction: float, seed: int) -> Plan:
    """Draw each class folder's test photos: whole groups of near-copies (landmark_core.nearcopy), in a seeded
    order, until the class's share is reached (rounded; at least one photo when it has two, never all)."""
    out, by_class = _listed(source)
    for name in sorted(by_class):
        hashes, read = nearcopy.hash_uris(by_class[name])
        out.unreadable += sorted(set(by_class[name]) - set(read))
        ids = nearcopy.groups(hashes) if read else np.zeros(0, int)
        by_group: dict[int, list[str]] = {}
        for uri, g in zip(read, ids.tolist()):
            by_group.setdefault(g, []).append(uri)
        groups = list(by_group.values())
        together = [g for g in groups if len(g) > 1]
        out.copy_groups, out.copy_photos = out.copy_groups + len(together), out.copy_photos + sum(map(len, together))
        # a landmark's draw depends on the seed and its own name only: adding a landmark moves no other's photos
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        test = _draw(groups, _test_size(len(read), test_fraction), rng)
        out.test[name] = sorted(test)
        out.train[name] = sorted(set(read) - set(test))
    return out


def _listed(source: str) -> tuple[Plan, dict[str, list[str]]]:
    """(a Plan with what is left out and where each photo goes, the photos of each landmark)."""
    if os.path.isfile(os.path.join(source, "train.csv")):
        return _listed_gldv2(source)
    left_out: Counter = Counter()
    photos = [uri for uri, _, _ in image_objects(source, left_out=left_out)]
    by_class = _class_split(photos, source.rstrip("/"))
    if not by_class:
        raise SplitError(f"{source}: no class folders with photos (expected <folder>/<landmark>/*.jpg)")
    if coords := coords_file_beside(source):  # (placed beside the split, not left out)
        left_out[Path(coords).suffix.lower()] -= 1
    out = Plan(not_photos={ext: n for ext, n in left_out.most_common() if n > 0})
    out.outside = [u for u in photos if Path(u).parent == Path(source)]
    out.empty = sorted(d.name for d in Path(source).iterdir() if d.is_dir() and d.name not in by_class)
    out.place = {u: str(Path(u).relative_to(Path(source, name))) for name, us in by_class.items() for u in us}
    return out, by_class


def _listed_gldv2(source: str) -> tuple[Plan, dict[str, list[str]]]:
    """A GLDv2 root, as `landmark train --data` reads it: train.csv (id, landmark_id) and train/a/b/c/<id>.jpg;
    each landmark_id becomes a class folder."""
    try:
        rows = gldv2_photos(source)
    except DatasetError as e:
        raise SplitError(str(e)) from None
    out, by_class = Plan(), {}
    for uri, landmark in rows:
        if not os.path.isfile(uri):
            out.missing.append(uri)
            continue
        by_class.setdefault(landmark, []).append(uri)
        out.place[uri] = Path(uri).name
    if not by_class:
        first = os.path.relpath(rows[0][0], source)
        raise SplitError(
            f"{source}/train.csv: none of its {len(rows)} photos is where GLDv2 keeps it, train/a/b/c/<id>.jpg with "
            f"a/b/c the id's first three characters (its first row: {first})"
        )
    return out, by_class


def _test_size(n: int, fraction: float) -> int:
    """The class's share, rounded: at least one photo when it has two, and never all (training needs one)."""
    return min(n - 1, max(1, round(n * fraction))) if n >= 2 else 0


def _draw(groups: list[list[str]], want: int, rng) -> list[str]:
    """Whole groups in a seeded order, each one that still fits; if none fits (every group larger than the
    share), the smallest one that leaves a photo to train on."""
    test: list[str] = []
    for g in rng.permutation(len(groups)).tolist():
        if len(test) + len(groups[g]) <= want:
            test += groups[g]
    n = sum(map(len, groups))
    if want and not test and (fits := [g for g in groups if len(g) < n]):
        test = min(fits, key=len)
    return test


def write(p: Plan, source: str, dest: str, *, copy: bool = False) -> None:
    """DEST/train/<class>/... and DEST/test/<class>/... (each photo's path below its class folder kept), and the
    source's coords file beside them, where train reads it: links to the originals, or copies."""
    src = Path(source).resolve()
    for side, by_class in (("train", p.train), ("test", p.test)):
        for name, uris in by_class.items():
            for uri in uris:
                _place(Path(uri).resolve(), Path(dest, side, name, p.place[uri]), copy)
    if coords := coords_file_beside(str(src)):
        _place(Path(coords), Path(dest, Path(coords).name), copy)


def _place(original: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(original, target)
    else:
        os.symlink(original, target)
