"""`landmark data split`: a folder of class folders -> train/ and test/, seeded, near-copies on one side (no Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.data import main as data_main
from landmark_core import nearcopy
from landmark_core.catalog import coords_file_beside, load_coords
from landmark_core.datasets import list_files, load_labelled
from tests.cli_asserts import assert_error_names
from tests.photos import copy, photo


@pytest.fixture
def source(tmp_path) -> Path:
    """Three landmarks of 12, 8 and 1 photos; in the first, two resized copies of one photo (a group of three);
    a file that is no photo; a coords file at the root, as train reads it."""
    src = tmp_path / "mine"
    for name, n, first in (("arch", 12, 0), ("tower", 8, 100), ("lone", 1, 200)):
        for i in range(n):
            photo(src / name / f"{i:02d}.jpg", first + i)
    copy(src / "arch" / "00.jpg", src / "arch" / "00-small.jpg", scale=0.5)
    copy(src / "arch" / "00.jpg", src / "arch" / "nested" / "00-again.jpg", scale=0.8)
    (src / "tower" / "broken.jpg").write_bytes(b"not a photo")
    (src / "tower" / "notes.txt").write_text("taken in May")
    (src / "empty").mkdir()  # a landmark folder with no photo yet
    photo(src / "loose.jpg", 300)  # a photo of no landmark's folder
    (src / "coords.csv").write_text("folder,lat,lon\narch,1,2\ntower,3,4\nlone,5,6\n")
    return src


def _split(src: Path, dest: Path, *extra: str) -> dict[str, list[str]]:
    """`landmark data split SOURCE --dest DEST ...`: each side's photos, relative to it ("arch/01.jpg")."""
    assert data_main(["split", str(src), "--dest", str(dest), *extra]) == 0
    return {side: sorted(str(Path(f).relative_to(dest / side)) for f in list_files(str(dest / side))) for side in SIDES}


SIDES = ("train", "test")
GROUP = {"arch/00.jpg", "arch/00-small.jpg", "arch/nested/00-again.jpg"}  # one photo and its two copies


def test_split_holds_out_each_landmarks_share_with_its_near_copies_on_one_side(source, tmp_path, capsys):
    dest = tmp_path / "split"
    sides = _split(source, dest)
    out = capsys.readouterr()
    summary = json.loads(out.out)
    readable = sorted(
        str(Path(f).relative_to(source)) for f in list_files(str(source)) if "broken" not in f and "loose" not in f
    )
    assert sorted(sides["train"] + sides["test"]) == readable  # every photo on exactly one side
    assert not set(sides["train"]) & set(sides["test"])
    by_class = {side: [p.split("/")[0] for p in sides[side]] for side in sides}
    # arch: 14 photos, 4 held out (a share of 3.5, rounded, is 4 and the group of three fits beside one more or
    # not at all); tower: 8 readable of 9 files, 2; lone: 1 photo, kept for training
    assert by_class["test"].count("tower") == 2 and by_class["test"].count("arch") in (3, 4)
    assert "lone" not in by_class["test"] and by_class["train"].count("lone") == 1
    for seed in range(6):  # the group of copies lands on one side whatever the draw
        drawn = sides if seed == 0 else _split(source, tmp_path / f"seed{seed}", "--seed", str(seed))
        assert GROUP <= set(drawn["train"]) or GROUP <= set(drawn["test"]), (seed, drawn)
    assert summary["near_copy_groups"] == 1 and summary["near_copy_photos"] == 3
    # nothing left out unsaid: the unreadable photo, the other file, the photo outside any landmark, the empty folder
    assert summary["unreadable"] == [str(source / "tower" / "broken.jpg")] and summary["not_photos"] == {".txt": 1}
    assert summary["outside_landmark_folders"] == [str(source / "loose.jpg")]
    assert summary["empty_landmark_folders"] == ["empty"] and summary["landmarks"] == 3
    err = out.err
    for said in (
        "1 file(s) named as photos are no readable photo",
        "1 file(s) are not photos by name, left out (.txt 1)",
        "1 photo(s) at",
        "1 folder(s) hold no photo, no landmark made of them: empty",
        "no test photo for lone",
    ):
        assert said in err, err
    one = sides["train"][0]
    assert (dest / "train" / one).is_symlink() and (dest / "coords.csv").is_symlink()
    assert os.path.realpath(dest / "train" / one) == str(source / one)
    # no test photo is a near-copy of a training photo; train reads the split with the locations of coords.csv
    test_h, _ = nearcopy.hash_uris(list_files(str(dest / "test")))
    train_h, _ = nearcopy.hash_uris(list_files(str(dest / "train")))
    assert nearcopy.copies(test_h, train_h) == {}
    data = load_labelled(str(dest), coords=load_coords(coords_file_beside(str(dest))))  # as train reads them
    assert len(data.test) == len(sides["test"]) and len(data.train) + len(data.val) == len(sides["train"])
    assert {lm.folder: (lm.lat, lm.lon) for lm in data.catalog} == {"arch": (1, 2), "tower": (3, 4), "lone": (5, 6)}


def test_split_is_seeded_per_landmark_and_copies_on_request(source, tmp_path, capsys):
    first = _split(source, tmp_path / "a", "--seed", "3")
    assert _split(source, tmp_path / "b", "--seed", "3") == first  # the same seed, the same split
    assert _split(source, tmp_path / "c", "--seed", "4") != first
    # a landmark's draw is its own: adding one moves no other's photos
    for i in range(6):
        photo(source / "bridge" / f"{i}.jpg", 300 + i)
    grown = _split(source, tmp_path / "d", "--seed", "3")
    assert [p for p in grown["test"] if not p.startswith("bridge/")] == first["test"]
    copied = _split(source, tmp_path / "e", "--seed", "3", "--copy", "--test-fraction", "0.5")
    assert not any(p.is_symlink() for p in (tmp_path / "e").rglob("*"))
    assert sum(p.startswith("tower/") for p in copied["test"]) == 4  # half of its 8 photos
    capsys.readouterr()


def test_split_refuses_what_would_mix_or_lose_photos(source, tmp_path, capsys):
    (tmp_path / "used" / "x").mkdir(parents=True)
    (tmp_path / "already" / "train" / "arch").mkdir(parents=True)
    (tmp_path / "half" / "test" / "arch").mkdir(parents=True)  # a split's test/ alone is no landmark "test"
    cases = [
        ([str(tmp_path / "nowhere"), "--dest", str(tmp_path / "o1")], "SOURCE", "no such local folder"),
        ([str(tmp_path / "already"), "--dest", str(tmp_path / "o2")], "SOURCE", "it is split already"),
        ([str(tmp_path / "half"), "--dest", str(tmp_path / "o2")], "SOURCE", "it holds test/, a split's folders"),
        ([str(source), "--dest", str(tmp_path / "used")], "--dest", "not empty"),
        ([str(source), "--dest", str(source / "split")], "--dest", "inside SOURCE"),
        ([str(source), "--dest", str(tmp_path / "o3"), "--test-fraction", "1"], "--test-fraction", "(0, 1)"),
    ]
    for argv, flag, needle in cases:
        with pytest.raises(SystemExit) as e:
            data_main(["split", *argv])
        assert e.value.code == 2, argv
        assert_error_names(capsys.readouterr().err, flag, needle)
    # found only once the folder is listed: the same one line and exit 2, nothing written
    assert data_main(["split", str(tmp_path / "used"), "--dest", str(tmp_path / "o4")]) == 2
    assert "no class folders with photos" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5)) and not (source / "split").exists()


def test_a_gldv2_root_with_its_photos_elsewhere_is_told_where_they_belong(tmp_path, capsys):
    """Photos laid flat in train/ are not where GLDv2 keeps them: the error names the place of the first row."""
    root = tmp_path / "gld"
    photo(root / "train" / "c698aa0123456789.jpg", 401)
    (root / "train.csv").write_text("id,url,landmark_id\nc698aa0123456789,,7\n")
    assert data_main(["split", str(root), "--dest", str(tmp_path / "split")]) == 2
    err = capsys.readouterr().err
    assert "train/a/b/c/<id>.jpg" in err and "(its first row: train/c/6/9/c698aa0123456789.jpg)" in err, err


def test_a_coords_file_whose_rows_name_no_landmark_folder_is_said(tmp_path, capsys):
    """Keyed by names where the folders are ids (GLDv2's), its rows would give no landmark a location: said when
    the split is made (train refuses a file none of whose rows matches)."""
    src = tmp_path / "src"
    for k in range(4):
        photo(src / "7" / f"{k}.jpg", 500 + k)
        photo(src / "12" / f"{k}.jpg", 600 + k)
    (src / "coords.csv").write_text("folder,lat,lon\n7,1,2\nlouvre,48.86,2.34\n")
    _split(src, tmp_path / "split")
    err = capsys.readouterr().err
    assert (
        f"[data] warning: {src / 'coords.csv'}: 1 of its 2 rows names no landmark folder, ignored: 'louvre' "
        "(the folders: '12', '7')" in err
    ), err


def test_split_of_a_gldv2_root_makes_class_folders_eval_can_read(tmp_path, capsys):
    """A GLDv2 root (train.csv; train/a/b/c/<id>.jpg, as `landmark train --data` reads it) has no test split and
    no class folders for `landmark eval --known`: split makes both, a folder per landmark_id; a photo the CSV
    lists that is not there is said and left out."""
    root, rows = tmp_path / "gld", ["id,url,landmark_id"]
    for k, lm in enumerate(["7"] * 6 + ["12"] * 5):
        img_id = f"{k:x}a{k % 3}f0123456789"
        photo(root / "train" / img_id[0] / img_id[1] / img_id[2] / f"{img_id}.jpg", 400 + k)
        rows.append(f"{img_id},http://example/{k},{lm}")
    rows.append("fffgone000000000,http://example/x,12")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "coords.csv").write_text("folder,lat,lon\n7,1,2\n12,3,4\n")
    sides = _split(root, tmp_path / "split")
    summary = json.loads(capsys.readouterr().out)
    assert [p.split("/")[0] for p in sides["test"]].count("7") == 2  # round(6 * 0.25)
    assert [p.split("/")[0] for p in sides["test"]].count("12") == 1  # round(5 * 0.25)
    assert len(sides["train"]) + len(sides["test"]) == 11 and summary["missing"][0].endswith("fffgone000000000.jpg")
    data = load_labelled(str(tmp_path / "split"), coords=load_coords(coords_file_beside(str(tmp_path / "split"))))
    assert sorted(data.catalog.folders) == ["12", "7"] and len(data.test) == 3
    assert {lm.folder: lm.lat for lm in data.catalog} == {"7": 1, "12": 3}
