"""`landmark data split`: a folder of class folders -> DEST/train/<class>/ and DEST/test/<class>/, seeded, per
landmark, with near-copies of one photo kept on one side (a test photo that is a resized copy of a training photo
measures nothing: the publisher's splits in ../shared hold such pairs, see README "Open world"). The files are
symbolic links to the originals by default (train and eval follow them), or copies.
"""

from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import nearcopy
from .catalog import coords_file_beside
from .datasets import _class_split, list_files


class SplitError(ValueError):
    pass


@dataclass
class Plan:
    """Each landmark's photos on each side, and what could not be placed."""

    train: dict[str, list[str]] = field(default_factory=dict)
    test: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # no photo: left out (train would fail them anyway)
    copies_kept_together: int = 0  # photos placed with a near-copy of theirs rather than drawn alone


def plan(source: str, *, test_fraction: float, seed: int) -> Plan:
    """Draw each class folder's test photos: whole groups of near-copies (landmark_core.nearcopy), in a seeded
    order, until the class's share is reached (rounded; at least one photo when it has two, never all)."""
    by_class = _class_split(list_files(source), source.rstrip("/"))
    if not by_class:
        raise SplitError(f"{source}: no class folders with photos (expected <folder>/<landmark>/*.jpg)")
    out = Plan()
    for name in sorted(by_class):
        hashes, read = nearcopy.hash_uris(by_class[name])
        out.unreadable += sorted(set(by_class[name]) - set(read))
        ids = nearcopy.groups(hashes) if read else np.zeros(0, int)
        by_group: dict[int, list[str]] = {}
        for uri, g in zip(read, ids.tolist()):
            by_group.setdefault(g, []).append(uri)
        groups = list(by_group.values())
        out.copies_kept_together += sum(len(g) - 1 for g in groups)
        # a landmark's draw depends on the seed and its own name only: adding a landmark moves no other's photos
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        test = _draw(groups, _test_size(len(read), test_fraction), rng)
        out.test[name] = sorted(test)
        out.train[name] = sorted(set(read) - set(test))
    return out


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
                _place(Path(uri).resolve(), Path(dest, side, name, Path(uri).relative_to(Path(source, name))), copy)
    if coords := coords_file_beside(str(src)):
        _place(Path(coords), Path(dest, Path(coords).name), copy)


def _place(original: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(original, target)
    else:
        os.symlink(original, target)
