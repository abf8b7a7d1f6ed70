"""The synthetic dataset: layout, determinism, EXIF GPS and orientation, open-set scenes, the bad-file corpus,
and that the classes are actually tellable apart."""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from landmark_core.synthetic import (
    SHAPES,
    STORE_ROTATED,
    class_coords,
    generate_dataset,
    generate_unknown,
    main,
    render_scene,
    write_bad_corpus,
)

SMALL = (96, 72)
GPS_FRACTION, ROTATED_FRACTION = 0.5, 0.25
DECODES = {
    "webp_named.jpg",
    "png16.png",
    "cmyk.jpg",
    "animated.gif",
    "broken_exif.jpg",
    "palette_alpha.png",
    "la.png",
    "rgba.png",
    "tiny.bmp",
    "image.tiff",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synth")
    return generate_dataset(
        root,
        n_classes=6,
        train_per_class=8,
        test_per_class=3,
        val_per_class=2,
        image_size=SMALL,
        seed=0,
        gps_fraction=GPS_FRACTION,
        rotated_fraction=ROTATED_FRACTION,
    )


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    dest = tmp_path_factory.mktemp("bad")
    return dest, write_bad_corpus(dest)


@pytest.fixture
def strict_truncation(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


def _files(root: str | Path, split: str | None = None) -> list[Path]:
    return sorted(Path(root).glob(f"{split or '*'}/*/*.jpg"))


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


def _gps(path: Path) -> dict:
    with Image.open(path) as im:
        return dict(im.getexif().get_ifd(0x8825))


def _decimal(dms, ref: str) -> float:
    value = float(dms[0]) + float(dms[1]) / 60 + float(dms[2]) / 3600
    return -value if ref in ("S", "W") else value


# ------------------------------------------------------------------------------------------------- scenes


def test_shapes_are_many_and_distinct():
    assert len(SHAPES) >= 10 and len(set(SHAPES)) == len(SHAPES)


@pytest.mark.parametrize("shape", [*SHAPES, None])
def test_render_scene_is_rgb_of_requested_size(shape):
    img = render_scene(shape, np.random.default_rng(3), (120, 90))
    assert img.mode == "RGB" and img.size == (120, 90)
    assert np.asarray(img).std() > 5  # a scene, not a flat fill


def test_render_scene_rejects_unknown_shape():
    with pytest.raises(ValueError, match="unknown shape"):
        render_scene("teapot", np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ dataset


def test_layout_counts_and_summary(dataset):
    root = Path(dataset["root"])
    folders = ["00.Tower", "01.Arch", "02.Dome", "03.Bridge", "04.Pyramid", "05.Wheel"]
    assert dataset["classes"] == folders
    assert dataset["counts"] == {"train": 48, "test": 18, "val": 12}
    for split, per_class in (("train", 8), ("test", 3), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == folders
        for folder in folders:
            assert len(list((root / split / folder).glob("*.jpg"))) == per_class
    assert set(dataset["coords"]) == set(folders)
    assert all(v["country"] is None for v in dataset["coords"].values())
    coords = json.loads((root / "coords.json").read_text())
    assert coords["01.Arch"] == {**class_coords("01.Arch"), "name": "Arch"}


def test_files_are_jpegs_of_varied_size(dataset):
    sizes = set()
    for path in _files(dataset["root"]):
        with Image.open(path) as im:
            assert im.format == "JPEG"
            w, h = ImageOps.exif_transpose(im).size
        sizes.add((w, h))
        long_side, short_side = max(w, h), min(w, h)
        assert 0.8 * SMALL[1] - 1 <= short_side and long_side <= 1.2 * SMALL[0] + 1
    assert len(sizes) > 20
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)  # some portrait, mostly landscape


def test_same_seed_same_bytes(tmp_path):
    kwargs = dict(
        n_classes=3, train_per_class=3, test_per_class=1, image_size=SMALL, gps_fraction=0.5, rotated_fraction=0.5
    )
    runs = [generate_dataset(tmp_path / name, seed=seed, **kwargs) for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    a, b, c = (_files(r["root"]) for r in runs)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a, b))
    assert (tmp_path / "a" / "coords.json").read_bytes() == (tmp_path / "b" / "coords.json").read_bytes()
    assert any(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(a, c))


def test_gps_exif_on_the_requested_fraction_with_signed_coordinates(dataset):
    refs = set()
    for split, n in dataset["counts"].items():
        tagged = [p for p in _files(dataset["root"], split) if _gps(p)]
        assert len(tagged) == round(GPS_FRACTION * n)
        for path in tagged:
            gps = _gps(path)
            lat, lon = _decimal(gps[2], gps[1]), _decimal(gps[4], gps[3])
            home = class_coords(path.parent.name)
            assert abs(lat - home["lat"]) < 0.02 and abs(lon - home["lon"]) < 0.02
            refs.update((gps[1], gps[3]))
            with Image.open(path) as im:
                taken = im.getexif().get_ifd(0x8769)[0x9003]
            assert re.fullmatch(r"\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}", taken)
    assert refs == {"N", "S", "E", "W"}  # the first six classes span both hemispheres each way


def test_class_coords_are_valid_and_distinct():
    points = [class_coords(f"{i:02d}.{s.capitalize()}") for i, s in enumerate(SHAPES)]
    assert all(-90 <= p["lat"] <= 90 and -180 <= p["lon"] <= 180 for p in points)
    assert len({(p["lat"], p["lon"]) for p in points}) == len(points)
    assert class_coords("00.Tower")["lat"] < 0 and class_coords("00.Tower")["lon"] < 0


@pytest.mark.parametrize("orientation", sorted(STORE_ROTATED))
def test_orientation_pairs_round_trip_exactly(orientation):
    upright = Image.new("RGB", (6, 4), (0, 0, 0))
    upright.putpixel((0, 0), (255, 0, 0))  # a marker in the top-left corner
    stored = upright.transpose(STORE_ROTATED[orientation])
    exif = Image.Exif()
    exif[274] = orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif)  # lossless, so the check is pixel-exact
    with Image.open(buf) as im:
        shown = ImageOps.exif_transpose(im)
    assert shown.size == (6, 4)
    assert np.array_equal(np.asarray(shown), np.asarray(upright))


def test_rotated_files_transpose_back_to_the_upright_scene(tmp_path):
    kwargs = dict(n_classes=4, train_per_class=3, test_per_class=0, image_size=SMALL, gps_fraction=0.0, seed=2)
    upright = _files(generate_dataset(tmp_path / "up", rotated_fraction=0.0, **kwargs)["root"])
    rotated = _files(generate_dataset(tmp_path / "rot", rotated_fraction=1.0, **kwargs)["root"])
    orientations = set()
    for pu, pr in zip(upright, rotated):
        up = _open(pu)
        with Image.open(pr) as im:
            orientation = im.getexif()[274]
            stored_size = im.size
            shown = ImageOps.exif_transpose(im)
        orientations.add(orientation)
        assert stored_size == (up.size if orientation == 3 else up.size[::-1])
        assert shown.size == up.size
        diff = np.abs(np.asarray(shown, float) - np.asarray(up, float)).mean()
        assert diff < 4, f"{pr} (orientation {orientation}) does not transpose back to its upright scene"
    assert orientations == {3, 6, 8}


def test_rotated_fraction_is_tagged(dataset):
    for split, n in dataset["counts"].items():
        tagged = 0
        for p in _files(dataset["root"], split):
            with Image.open(p) as im:
                tagged += im.getexif().get(274, 1) != 1
        assert tagged == round(ROTATED_FRACTION * n)


def test_generate_unknown(tmp_path):
    paths = generate_unknown(tmp_path, n=7, image_size=SMALL)
    assert len(paths) == 7 and sorted(paths) == sorted(tmp_path.glob("*.jpg"))
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG" and not im.getexif()


def test_classes_are_learnable(tmp_path):
    """Nearest class mean over each photo's foreground colour histogram beats chance (1/6) by far.

    The backdrop is a vertical gradient, so subtracting each row's median leaves the structure (plus clouds,
    trees, hills); raw-pixel means would mostly measure the sky, which is deliberately class-independent."""
    summary = generate_dataset(tmp_path, n_classes=6, train_per_class=30, test_per_class=10, image_size=SMALL)

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, folder in enumerate(summary["classes"]):
            for path in sorted((tmp_path / split / folder).glob("*.jpg")):
                with Image.open(path) as im:
                    x = np.asarray(ImageOps.exif_transpose(im).convert("RGB").resize((32, 32)), float) / 255
                fg = np.abs(x - np.median(x, axis=1, keepdims=True)).sum(-1) > 0.15
                q = (x[fg] * 3.999).astype(int)
                hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(float)
                xs.append(hist / max(hist.sum(), 1))
                ys.append(label)
        return np.array(xs), np.array(ys)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    means = np.stack([x_train[y_train == c].mean(0) for c in range(6)])
    pred = ((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y_test).mean() >= 0.35


def test_main_writes_dataset_and_bad_corpus(tmp_path, capsys):
    summary = main(
        [str(tmp_path), "--classes", "2", "--train-per-class", "2", "--test-per-class", "1", "--seed", "3", "--bad"]
    )
    assert summary["counts"] == {"train": 4, "test": 2, "val": 0}
    assert len(_files(tmp_path)) == 6
    assert (tmp_path / "bad" / "huge_header.png").exists()
    assert json.loads(capsys.readouterr().out)["classes"] == ["00.Tower", "01.Arch"]


# --------------------------------------------------------------------------------------------- bad corpus


def test_bad_corpus_names_and_kinds(bad):
    dest, expected = bad
    assert sorted(p.name for p in dest.iterdir()) == sorted(expected)
    assert {k for k, v in expected.items() if v is None} == DECODES
    assert {v for v in expected.values() if v} <= {"empty", "not_an_image", "truncated", "too_large", "unsupported"}
    assert expected["truncated.jpg"] == "truncated" and expected["zero_bytes.jpg"] == "empty"
    assert expected["text.jpg"] == "not_an_image" and expected["huge_header.png"] == "too_large"


@pytest.mark.parametrize("name", sorted(DECODES))
def test_valid_files_decode_with_plain_pillow(bad, name, strict_truncation):
    dest, _ = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broken_exif.jpg: Pillow warns "Corrupt EXIF data" and carries on
        im = _open(dest / name)
        assert ImageOps.exif_transpose(im).size == im.size
    assert im.width > 0 and im.height > 0


def test_valid_files_have_the_stated_formats(bad):
    dest, _ = bad
    expect = {
        "webp_named.jpg": ("WEBP", "RGB"),
        "png16.png": ("PNG", "I;16"),
        "cmyk.jpg": ("JPEG", "CMYK"),
        "animated.gif": ("GIF", "P"),
        "broken_exif.jpg": ("JPEG", "RGB"),
        "palette_alpha.png": ("PNG", "P"),
        "la.png": ("PNG", "LA"),
        "rgba.png": ("PNG", "RGBA"),
        "tiny.bmp": ("BMP", "RGB"),
        "image.tiff": ("TIFF", "RGB"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broken_exif.jpg
        for name, (fmt, mode) in expect.items():
            with Image.open(dest / name) as im:
                assert (im.format, im.mode) == (fmt, mode), name
    with Image.open(dest / "palette_alpha.png") as im:
        assert "transparency" in im.info
    levels = np.unique(np.asarray(_open(dest / "png16.png")))
    assert len(levels) > 256 and np.any(levels % 257)  # real 16-bit content, not 8-bit scaled up


def test_animated_gif_has_three_different_frames(bad):
    dest, _ = bad
    with Image.open(dest / "animated.gif") as im:
        assert im.n_frames >= 3
        colours = set()
        for i in range(im.n_frames):
            im.seek(i)
            colours.add(im.convert("RGB").getpixel((5, 5)))
    assert len(colours) >= 3


def test_broken_exif_is_corrupt_but_pixels_decode(bad):
    data = (bad[0] / "broken_exif.jpg").read_bytes()
    assert data[:4] == b"\xff\xd8\xff\xe1" and data[6:12] == b"Exif\x00\x00"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            assert not im.getexif().get_ifd(0x8825)
            im.load()


def test_truncated_jpeg_fails_on_load(bad, strict_truncation):
    with Image.open(bad[0] / "truncated.jpg") as im:
        assert im.format == "JPEG"  # the header is intact; the scan data is not
        with pytest.raises(OSError):
            im.load()


@pytest.mark.parametrize("name", ["zero_bytes.jpg", "text.jpg"])
def test_empty_and_text_are_not_images(bad, name):
    with pytest.raises(UnidentifiedImageError):
        Image.open(bad[0] / name)
    assert (bad[0] / "zero_bytes.jpg").stat().st_size == 0


def test_huge_header_claims_50000_squared(bad, monkeypatch):
    path = bad[0] / "huge_header.png"
    assert path.stat().st_size < 1024
    with pytest.raises(Image.DecompressionBombError):  # Pillow's default limit refuses it already at open()
        Image.open(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(path) as im:
        assert im.size == (50000, 50000)
