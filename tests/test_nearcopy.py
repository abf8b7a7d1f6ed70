"""Near-copies of training photos (landmark_core.nearcopy) and what `landmark eval` says of them (no Ray)."""

from __future__ import annotations

import csv
import json
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from landmark_core import nearcopy
from tests.photos import copy as _copy, photo as _photo


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A training run's --data: train/ and test/ class folders of photo-like pictures, one of them turned."""
    root = tmp_path_factory.mktemp("nearcopy")
    made = []
    for i in range(12):
        split, folder = ("train" if i < 9 else "test"), f"0{i % 3}.place"
        made.append(_photo(root / "data" / split / folder / f"p{i}.jpg", i, orientation=6 if i == 4 else None))
    return root, made


def test_a_resized_recompressed_or_turned_copy_is_found_and_other_photos_are_not(photos):
    """Every copy of a photo (half size, JPEG 60; a quarter size; 2% cropped off each side; stored upright where
    the original was turned by its EXIF tag) is within MAX_BITS of it, and no two different photos are."""
    root, originals = photos
    hashes = np.stack([nearcopy.dhash(p.read_bytes()) for p in originals])
    assert hashes.shape == (len(originals), nearcopy.HASH_BITS) and hashes.dtype == bool
    _, bits = nearcopy.nearest(hashes, hashes)
    assert (bits == 0).all()  # each its own nearest
    apart = [int((hashes[i] != hashes[j]).sum()) for i, j in combinations(range(len(hashes)), 2)]
    assert min(apart) > nearcopy.MAX_BITS, sorted(apart)[:5]
    for k, kind in enumerate([dict(scale=0.5, quality=60), dict(scale=0.25), dict(crop=0.02)]):
        copies = [_copy(p, root / f"copies{k}" / f"{i}.jpg", **kind) for i, p in enumerate(originals)]
        found = nearcopy.copies(np.stack([nearcopy.dhash(c.read_bytes()) for c in copies]), hashes)
        assert sorted(found) == list(range(len(originals))), (kind, found)
        assert all(j == i and b <= nearcopy.MAX_BITS for i, (j, b) in found.items()), (kind, found)
    turned = Image.open(originals[4])
    assert turned.getexif().get(0x0112) == 6 and turned.size == (240, 320)  # (the fixture's turned photo)


def test_what_is_no_photo_is_left_out_of_the_hashes(photos, tmp_path):
    _, originals = photos
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    uris = [str(originals[0]), str(tmp_path / "empty.jpg"), str(tmp_path / "noise.jpg"), str(tmp_path / "gone.jpg")]
    hashes, kept = nearcopy.hash_uris(uris)
    assert kept == [str(originals[0])] and hashes.shape == (1, nearcopy.HASH_BITS)
    assert nearcopy.copies(hashes, np.zeros((0, nearcopy.HASH_BITS), bool)) == {}


def _row(folder, kind, path, outcome):
    return {"folder": folder, "kind": kind, "path": str(path), "outcome": outcome, "copy_of": None}


def test_eval_names_the_copies_of_training_photos_and_the_shares_without_them(photos, tmp_path, capsys):
    """The training run's --data outside its test split and its --negatives are what a copy is looked for in: a
    copy of a training photo among the known ones, of a training negative among the unknown ones, are named with
    the photo they copy; a photo of the test split is no one's copy, nor is a failed photo; the shares are also
    given without the copies. A training folder that cannot be listed from here is said, and the rest checked."""
    from jobs.eval import EvalConfig, _near_copies, _training_listing

    root, _ = photos
    data, neg = root / "data", tmp_path / "neg" / "streets"
    train = sorted((data / "train").rglob("*.jpg"))
    test = sorted((data / "test").rglob("*.jpg"))
    negatives = [_photo(neg / f"n{i}.jpg", 100 + i) for i in range(2)]
    known_copy = _copy(train[0], tmp_path / "eval" / "a" / "k0.jpg", scale=0.5)
    unknown_copy = _copy(negatives[0], tmp_path / "eval" / "u" / "u0.jpg", crop=0.03)
    rows = [
        _row("a", "known", known_copy, "right"),
        _row("a", "known", test[0], "right"),
        _row("a", "known", test[1], "abstained"),
        _row("u", "unknown", unknown_copy, "tagged"),
        _row("u", "unknown", _copy(negatives[1], tmp_path / "eval" / "u" / "failed.jpg"), "failed"),
    ]
    gone, cfg = str(tmp_path / "elsewhere"), EvalConfig(model="m")
    inputs = {"inputs": {"data": str(data), "negatives": [str(neg), gone]}}
    result = _near_copies(cfg, *_training_listing(cfg, inputs), rows)
    err = capsys.readouterr().err
    assert {(r["path"], r["copy_of"]) for r in result["photos"]} == {
        (str(known_copy), str(train[0])),
        (str(unknown_copy), str(negatives[0])),
    }
    assert [r["copy_of"] for r in rows] == [str(train[0]), None, None, str(negatives[0]), None]
    assert result["reference_photos"] == len(train) + len(negatives) and result["not_checked"] == [gone]
    assert result["reference_unreadable"] == 0
    assert result["known_right_without_copies"] == 0.5 and result["unknown_tagged_without_copies"] is None
    assert f"near-copies not checked against {gone}" in err
    assert "1 of the 3 known photos and 1 of the 1 unknown photos are near-copies" in result["warning"]
    assert "known right 66.7%, 50.0% without them" in result["warning"] and result["warning"] in err
    # no photo read (every one failed): nothing is a copy, and no share to give without them
    failed = [{**r, "outcome": "failed", "copy_of": None} for r in rows]
    none = _near_copies(cfg, *_training_listing(cfg, inputs), failed)
    assert none["photos"] == [] and none["warning"] is None and none["known_right_without_copies"] is None
    capsys.readouterr()
    # nothing recorded (an older artifact), or every folder gone: not checked, and said
    assert _near_copies(cfg, *_training_listing(cfg, {}), rows) is None
    assert "the model does not record its training photos" in capsys.readouterr().err
    assert _near_copies(cfg, *_training_listing(cfg, {"inputs": {"data": gone, "negatives": []}}), rows) is None
    assert f"not checked against {gone}" in capsys.readouterr().err


def test_eval_command_writes_the_copies_into_its_rows_json_and_report(photos, make_tiny_artifact, tmp_path, capsys):
    """Through `landmark eval`: photos.csv's copy_of, eval.json's near_copies and the report's warning, shown
    by a browser; --no-copy-check skips it (None)."""
    from jobs.eval import main as eval_main
    from tests.browser import rendered_dom, require_chromium
    from tests.test_openworld import _open_world_artifact

    root, _ = photos
    data = root / "data"
    train = sorted((data / "train").rglob("*.jpg"))
    path, _, _ = _open_world_artifact(make_tiny_artifact, tmp_path, provenance={"inputs": {"data": str(data)}})
    unknown = tmp_path / "uploads"
    copy = _copy(train[0], unknown / "c.jpg", scale=0.5)
    _copy(sorted((data / "test").rglob("*.jpg"))[0], unknown / "t.jpg")
    argv = ["--model", path, "--unknown", str(unknown), "--runtime", "torch", "--json"]
    assert eval_main(argv + ["--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    (found,) = result["near_copies"]["photos"]
    assert (found["path"], found["copy_of"], found["kind"]) == (str(copy), str(train[0]), "unknown")
    assert "1 of the 2 unknown photos are near-copies" in out.err and " known photos" not in out.err
    with open(tmp_path / "ev" / "photos.csv", newline="") as f:
        by_path = {r["path"]: r["copy_of"] for r in csv.DictReader(f)}
    assert by_path == {str(copy): str(train[0]), str(unknown / "t.jpg"): ""}
    report = tmp_path / "ev" / "report.html"
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["near_copies"] == result["near_copies"]
    require_chromium()
    dom = rendered_dom(report.as_uri(), tmp_path)
    assert "Not held out" in dom and "near-copies of photos the model learned from" in dom
    assert eval_main(argv + ["--no-copy-check"]) == 0
    assert json.loads(capsys.readouterr().out)["near_copies"] is None


def test_the_training_photos_are_those_training_read():
    """Under --data: train/ and val/ when it has train/ (a folder beside them was never read), else all but test/;
    under a --negatives root, every photo."""
    from jobs.eval import _training_photos

    listed = ["/d/train/a/1.jpg", "/d/val/a/2.jpg", "/d/test/a/3.jpg", "/d/extra/4.jpg", "/n/x/5.jpg"]
    assert _training_photos(listed, "/d") == ["/d/train/a/1.jpg", "/d/val/a/2.jpg", "/n/x/5.jpg"]
    bare = ["/d/a/1.jpg", "/d/test/a/3.jpg", "/n/x/5.jpg"]
    assert _training_photos(bare, "/d") == ["/d/a/1.jpg", "/n/x/5.jpg"]
    assert _training_photos(bare, None) == bare
    empty = np.zeros((0, nearcopy.HASH_BITS), bool)
    assert [len(a) for a in nearcopy.nearest(empty, np.ones((2, nearcopy.HASH_BITS), bool))] == [0, 0]
