"""Dataset layouts (class folders, GLDv2 CSV, s3://) and `landmark data fetch` against a local HTTP server."""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest

from jobs.data import FetchError, fetch_udacity, main as data_main
from landmark_core import storage
from landmark_core.datasets import DatasetError, Split, gldv2_photos, load_labelled, stratified_split
from landmark_core.synthetic import generate_dataset, render_scene
from tests.cli_asserts import assert_error_names


def _jpeg(seed: int = 0) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    render_scene("tower", np.random.default_rng(seed), size=(64, 48)).save(buf, "JPEG")
    return buf.getvalue()


def test_class_folder_layout_with_stratified_val_split(tmp_path):
    info = generate_dataset(tmp_path, n_classes=3, train_per_class=10, test_per_class=3, image_size=(64, 48))
    data = load_labelled(str(tmp_path), val_fraction=0.2, seed=1)
    assert data.catalog.folders == info["classes"]
    assert len(data.train) + len(data.val) == 30 and len(data.test) == 9
    assert sorted(set(data.val.labels)) == [0, 1, 2]  # every class in val
    assert data.catalog[0].lat is None  # no coords passed
    again = load_labelled(str(tmp_path), val_fraction=0.2, seed=1)
    assert again.val.uris == data.val.uris  # seeded
    assert all(Path(u).is_absolute() for u in data.train.uris)  # workers run elsewhere


def test_symlinked_class_folders_are_followed_and_a_link_loop_ends(tmp_path):
    """A data set assembled from links into a larger one: the linked class folders are read; a link back up the
    tree is walked once; a dangling photo link is listed (its row fails with a reason), not a crash."""
    import os

    import numpy as np

    from landmark_core.datasets import list_files
    from landmark_core.preprocess import EvalPreset
    from landmark_core.tagging import read_and_decode

    generate_dataset(tmp_path / "big", n_classes=3, train_per_class=4, test_per_class=0, image_size=(64, 48))
    subset = tmp_path / "subset"
    (subset / "train").mkdir(parents=True)
    big = sorted((tmp_path / "big" / "train").iterdir())
    for cls in big[:2]:
        os.symlink(cls, subset / "train" / cls.name)
    os.symlink(subset, subset / "train" / big[0].name / "loop")  # a link to an ancestor
    data = load_labelled(str(subset), val_fraction=0.25, seed=0)
    assert data.catalog.folders == [c.name for c in big[:2]]
    assert len(data.train) + len(data.val) == 8  # each photo once, the loop walked once
    os.symlink(tmp_path / "gone.jpg", subset / "train" / big[1].name / "dangling.jpg")
    files = list_files(str(subset / "train" / big[1].name))
    assert len(files) == 5 and files[-1].endswith("dangling.jpg")
    rows = read_and_decode(
        {"uri": files[-1:], "etag": [None], "size_bytes": [None]}, preset=EvalPreset(size=32, resize=36), opts=None
    )
    assert rows["status"][0] == "failed" and rows["error"][0] == "read: not found", rows["error"]
    assert not np.asarray(rows["ok"])[0]


def test_val_folder_is_used_when_present(tmp_path):
    generate_dataset(tmp_path, n_classes=2, train_per_class=4, test_per_class=2, val_per_class=2, image_size=(64, 48))
    data = load_labelled(str(tmp_path), val_fraction=0.5)
    assert len(data.train) == 8 and len(data.val) == 4


def test_stratified_split_keeps_one_per_class_each_side():
    s = Split([f"u{i}" for i in range(7)], [0, 0, 1, 1, 1, 2, 2])
    train, val = stratified_split(s, 0.1, seed=0)
    assert sorted(set(train.labels)) == [0, 1, 2] and sorted(set(val.labels)) == [0, 1, 2]


def test_gldv2_csv_layout(tmp_path):
    rows = ["id,url,landmark_id"]
    for i, lm in enumerate(["7", "7", "7", "12", "12", "12"]):
        img_id = f"abc{i}ef0123456789"
        p = tmp_path / "train" / img_id[0] / img_id[1] / img_id[2] / f"{img_id}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_jpeg(i))
        rows.append(f"{img_id},http://example/{i},{lm}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    data = load_labelled(str(tmp_path), val_fraction=0.34)
    assert data.layout == "gldv2" and len(data.catalog) == 2
    assert len(data.train) + len(data.val) == 6 and len(data.val) == 2
    assert all(Path(u).exists() for u in data.train.uris + data.val.uris)


def test_a_gldv2_csv_from_a_spreadsheet_reads_and_a_wrong_header_is_shown(tmp_path):
    """Excel writes a byte-order mark and some tools pad fields: the header still reads id,url,landmark_id on
    screen, so it is read; a header without those columns is refused showing the columns it has."""
    img_id = "abc0ef0123456789"
    p = tmp_path / "train" / "a" / "b" / "c" / f"{img_id}.jpg"
    p.parent.mkdir(parents=True)
    p.write_bytes(_jpeg())
    (tmp_path / "train.csv").write_bytes(f"\ufeffid, url, landmark_id\n{img_id}, http://x, 7\n".encode())
    assert gldv2_photos(str(tmp_path)) == [(str(p), "7")]
    (tmp_path / "train.csv").write_text("image,landmark\nabc,7\n")
    with pytest.raises(DatasetError) as e:
        gldv2_photos(str(tmp_path))
    assert "expected the columns id,url,landmark_id" in str(e.value) and "found image,landmark" in str(e.value)


def test_empty_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        load_labelled(str(tmp_path))


@pytest.mark.parametrize("parts", [("test",), ("val", "test")])
def test_a_data_root_with_test_but_no_train_is_refused(tmp_path, parts):
    """Read as a bare root, its test/ photos would have trained as a landmark called "test"."""
    for part in parts:
        (tmp_path / part / "hoian_town").mkdir(parents=True)
        (tmp_path / part / "hoian_town" / "a.jpg").write_bytes(_jpeg())
    with pytest.raises(DatasetError) as e:
        load_labelled(str(tmp_path))
    assert f"has {'/ and '.join(parts)}/ but no train/" in str(e.value) and "landmark data split" in str(e.value)


def test_class_folders_from_s3(s3, s3_bucket, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("00.Tower", "01.Arch"):
            for i in range(n):
                client.put_object(Bucket=s3_bucket, Key=f"set/{split}/{cls}/{i}.JPG", Body=_jpeg(i))
    opts = storage.S3Options(endpoint=s3.endpoint)
    data = load_labelled(f"s3://{s3_bucket}/set", val_fraction=0.25, opts=opts)
    assert data.catalog.names == ["Tower", "Arch"] and len(data.test) == 4
    assert len(data.train) + len(data.val) == 8
    assert storage.read_bytes(data.test.uris[0], opts)[:2] == b"\xff\xd8"


def _left_out_cases(put) -> None:
    for name in "a.jpg b.JPEG c.heic clip.MOV clip2.mov IMG_0001 notes.txt sub/d.png e.avif f.JFIF".split():
        put(name, _jpeg(0))


def test_the_tag_listing_counts_what_it_leaves_out_by_name(tmp_path, s3, s3_bucket, monkeypatch):
    """Objects under --input that are not photos by name get no row: the listing counts them by extension, for
    the job to say so (locally and on S3); the photos are listed."""
    from collections import Counter

    from landmark_core.tagging import left_out_note, list_inputs

    def put_local(name, body):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(body)

    _left_out_cases(put_local)
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    _left_out_cases(lambda name, body: client.put_object(Bucket=s3_bucket, Key=f"up/{name}", Body=body))
    client.put_object(Bucket=s3_bucket, Key="up/folder/", Body=b"")  # a console-made "folder": not counted
    opts = storage.S3Options(endpoint=s3.endpoint)
    for root in (str(tmp_path / "in"), f"s3://{s3_bucket}/up"):
        left_out = Counter()
        listing = list_inputs(root, opts, left_out=left_out)
        names = sorted(u.rsplit("/", 1)[-1] for u in listing.column("uri").to_pylist())
        assert names == ["a.jpg", "b.JPEG", "c.heic", "d.png", "e.avif", "f.JFIF"], root
        assert left_out == {".mov": 2, "(no extension)": 1, ".txt": 1}, root
        note = left_out_note(dict(left_out))
        assert note.startswith("4 object(s) under --input are not photos by name") and "--manifest" in note
        assert "(.mov 2, (no extension) 1, .txt 1)" in note
    assert left_out_note({}) is None


# ---------------------------------------------------------------- landmark data fetch


@pytest.fixture
def zip_server(tmp_path):
    """A local HTTP server serving a small zip in the Udacity landmark_images/ layout."""
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "landmark_images.zip", "w") as z:
        for split in ("train", "test"):
            for cls in ("00.Haleakala_National_Park", "01.Mount_Rainier_National_Park"):
                for i in range(2):
                    z.writestr(f"landmark_images/{split}/{cls}/{i}.jpg", _jpeg(i))
    (site / "not_a_zip.zip").write_bytes(b"<html>error page</html>")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_downloads_and_unpacks(zip_server, tmp_path, capsys):
    assert (
        data_main(["fetch", "udacity", "--dest", str(tmp_path / "d"), "--url", f"{zip_server}/landmark_images.zip"])
        == 0
    )
    root = tmp_path / "d" / "landmark_images"
    assert len(list((root / "train").rglob("*.jpg"))) == 4
    data = load_labelled(str(root))
    assert data.catalog.names == ["Haleakala National Park", "Mount Rainier National Park"]
    assert "landmark train --data" in capsys.readouterr().out


def test_fetch_refuses_a_non_zip(zip_server, tmp_path):
    with pytest.raises(FetchError, match="not a zip"):
        fetch_udacity(tmp_path / "d", url=f"{zip_server}/not_a_zip.zip")


def test_fetch_offline_fails_fast_with_a_clear_message(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    code = data_main(
        [
            "fetch",
            "udacity",
            "--dest",
            str(tmp_path / "d"),
            "--url",
            f"http://127.0.0.1:{port}/landmark_images.zip",
            "--timeout",
            "5",
        ]
    )
    assert code == 1 and time.time() - t0 < 10
    err = capsys.readouterr().err
    assert "offline" in err and "landmark_images" in err
    assert not list((tmp_path / "d").glob("*.part"))


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["synthetic", "{d}", "--classes", "0"], "--classes"),  # wrote nothing and said it was done
        (["synthetic", "{d}", "--classes", "99"], "--classes"),  # was a ValueError traceback
        (["synthetic", "{d}", "--train-per-class", "-1"], "--train-per-class"),
        (["synthetic", "{d}", "--test-per-class", "-2"], "--test-per-class"),
        (["fetch", "udacity", "--dest", "{d}", "--timeout", "0"], "--timeout"),
    ],
)
def test_bad_data_arguments_fail_fast_naming_the_flag(argv, flag, tmp_path, capsys):
    d = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        data_main([a.format(d=d) for a in argv])
    assert exit_.value.code == 2 and not d.exists()
    assert_error_names(capsys.readouterr().err, flag)


@pytest.mark.parametrize(
    "head, flag",
    [(["synthetic"], "DEST"), (["fetch", "udacity", "--url", "http://127.0.0.1:9/no.zip", "--dest"], "--dest")],
)
def test_a_dest_that_cannot_be_a_folder_fails_fast_naming_it(head, flag, tmp_path, capsys):
    """DEST (--dest) a file, under a file, or where no folder can be made: exit 2 and one line naming it, before
    any photo is drawn or download started. Before: a NotADirectoryError / FileExistsError traceback."""
    a_file = tmp_path / "photo.jpg"
    a_file.write_bytes(b"a photo")
    for dest, needle in ((a_file, "a file is there"), (a_file / "sub", f"{a_file} is a file"), ("/proc/x", "create")):
        with pytest.raises(SystemExit) as exit_:
            data_main([*head, str(dest)])
        assert exit_.value.code == 2
        assert_error_names(capsys.readouterr().err, f"{flag} {dest}", needle)
    assert a_file.read_bytes() == b"a photo"


def test_synthetic_writes_the_dataset_it_reports(tmp_path, capsys):
    d = tmp_path / "syn"
    assert data_main(["synthetic", str(d), "--classes", "2", "--train-per-class", "3", "--test-per-class", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["root"] == str(d) and len(summary["classes"]) == 2
    assert len(list((d / "train").rglob("*.jpg"))) == 6 and len(list((d / "test").rglob("*.jpg"))) == 2


@pytest.mark.parametrize("second", ["Sapa_Rice_Terraces", "Sa Pa Rice Terraces"])
def test_class_folders_that_make_one_landmark_name_are_refused(tmp_path, second):
    """Two folders that differ in case only (or that the known places name alike) were two landmarks of one
    name: tags and queries could not tell them apart."""
    for folder in ("sapa_rice_terraces", second, "hoian_town"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.jpg").write_bytes(_jpeg())
    with pytest.raises(DatasetError) as e:
        load_labelled(str(tmp_path))
    assert f"'{second}' and 'sapa_rice_terraces'" in str(e.value) and "'Sa Pa Rice Terraces'" in str(e.value)
