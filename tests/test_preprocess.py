"""Decoding and transforms: the bad-file corpus, colour modes, EXIF, draft decoding, and (the key property) that
training's evaluation and the predictor see exactly the same tensors for the same photo."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, TiffImagePlugin

from landmark_core import storage
from landmark_core.preprocess import (
    DECODE_ERROR_KINDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Decoded,
    DecodeError,
    EvalPreset,
    TrainPreset,
    decode_image,
    normalize_batch,
    presets_for,
    to_rgb,
)
from landmark_core.synthetic import STORE_ROTATED, generate_dataset, render_scene


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def scene(size=(320, 240), shape="arch", seed=0) -> Image.Image:
    return render_scene(shape, np.random.default_rng(seed), size)


def big_scene(size, shape="arch", seed=0) -> Image.Image:
    """A large photo, cheaply: a quarter-size scene scaled up, plus sensor noise so the JPEG has fine detail."""
    w, h = size
    base = scene((max(8, w // 4), max(8, h // 4)), shape, seed).resize(size, Image.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8))


def rational(x: float, den: int = 100) -> TiffImagePlugin.IFDRational:
    return TiffImagePlugin.IFDRational(round(x * den), den)


def dms(value: float):
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return (rational(d, 1), rational(m, 1), rational(s, 10000))


def with_gps_exif(
    img: Image.Image, lat: float, lon: float, taken: str | None = None, datetime_ifd0: str | None = None
) -> bytes:
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = ("N" if lat >= 0 else "S"), dms(lat)
    gps[3], gps[4] = ("E" if lon >= 0 else "W"), dms(lon)
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if datetime_ifd0:
        exif[306] = datetime_ifd0
    return encode(img, "JPEG", quality=92, exif=exif)


# --------------------------------------------------------------------------------------------- the bad corpus


def test_bad_corpus_every_file_gives_its_expected_outcome(bad_corpus):
    dest, expected = bad_corpus
    assert len(expected) >= 10
    for name, kind in expected.items():
        data = (dest / name).read_bytes()
        if kind is None:
            d = decode_image(data)
            assert isinstance(d, Decoded)
            assert d.image.mode == "RGB", name
            assert d.image.size == (d.width, d.height), name
            arr = np.asarray(d.image)
            assert arr.shape == (d.height, d.width, 3) and arr.dtype == np.uint8
            assert arr.max() > arr.min(), f"{name} decoded to a flat image"
        else:
            assert kind in DECODE_ERROR_KINDS
            with pytest.raises(DecodeError) as ei:
                decode_image(data)
            assert ei.value.kind == kind, (name, str(ei.value))
            assert ei.value.reason and str(ei.value).startswith(kind)


def test_bad_corpus_kinds_cover_every_error_kind_but_unsupported(bad_corpus):
    _, expected = bad_corpus
    assert {k for k in expected.values() if k} == set(DECODE_ERROR_KINDS) - {"unsupported"}  # a new kind: add it


def test_webp_named_jpg_is_decoded_by_content_not_name(bad_corpus):
    dest, _ = bad_corpus
    assert decode_image((dest / "webp_named.jpg").read_bytes()).format == "WEBP"


def test_bad_corpus_png16_keeps_its_range(bad_corpus):
    dest, _ = bad_corpus
    arr = np.asarray(decode_image((dest / "png16.png").read_bytes()).image)
    assert arr.min() == 0 and arr.max() == 255
    assert len(np.unique(arr[..., 0])) > 200  # a gradient, not a two-level clip


def test_bad_corpus_transparent_pixels_are_white(bad_corpus):
    dest, _ = bad_corpus
    # rgba.png's alpha is a 0..255 ramp starting at 0: the first pixel is fully transparent -> white background
    for name in ("rgba.png", "la.png"):
        arr = np.asarray(decode_image((dest / name).read_bytes()).image)
        assert tuple(arr[0, 0]) == (255, 255, 255), name


# ------------------------------------------------------------------------------------------- modes and formats


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "CMYK", "1", "RGB"])
def test_modes_convert_to_rgb(mode):
    src = scene((64, 48))
    img = src.quantize(64) if mode == "P" else src.convert(mode)  # an adaptive palette, as real GIF/PNG-8 have
    assert img.mode == mode
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    d = decode_image(encode(img, fmt))
    assert d.image.mode == "RGB" and d.image.size == (64, 48)
    arr = np.asarray(d.image).astype(int)
    if mode in ("L", "LA", "1"):
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # grey stays grey
    if mode in ("RGB", "RGBA", "P", "CMYK"):
        # colour survives (a palette/CMYK round trip is lossy, but close on average)
        assert np.abs(arr - np.asarray(src).astype(int)).mean() < 12


def test_rgba_alpha_composited_on_white():
    img = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    arr = np.asarray(decode_image(encode(img, "PNG")).image)
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert all(abs(int(c) - 127) <= 1 for c in arr[0, 1])
    assert tuple(arr[1, 3]) == (255, 0, 0)


def test_palette_with_transparency_composited_on_white():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    arr = np.asarray(decode_image(encode(img, "PNG", transparency=0)).image)
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[2, 2]) == (10, 200, 30)


def test_16_bit_grey_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256 * 4).round().astype(np.uint16).reshape(4, 256)
    d = decode_image(encode(Image.fromarray(ramp), "PNG"))
    grey = np.asarray(d.image)[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255  # the whole range, not 0 and 255 only
    assert (np.diff(grey[0]) >= 0).all()  # monotone
    assert len(np.unique(grey)) >= 250
    expected = (ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.abs(grey - expected).max() <= 1


def test_16_bit_mid_grey_maps_to_mid_grey():
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    arr[0, 0] = 0  # not a constant image
    grey = np.asarray(decode_image(encode(Image.fromarray(arr), "PNG")).image)[..., 0]
    assert grey[4, 4] in (127, 128)  # a clip to 8 bits would give 255


def test_16_bit_tiff_via_to_rgb():
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    rgb = to_rgb(im)
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and arr.min() == 0 and arr.max() == 255


def test_float_mode_via_to_rgb_uses_full_range():
    im = Image.fromarray(np.linspace(-3.0, 5.0, 64, dtype=np.float32).reshape(8, 8), "F")
    arr = np.asarray(to_rgb(im))
    assert arr.min() == 0 and arr.max() == 255


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((220, 30, 30), (30, 200, 40), (40, 60, 220))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.n_frames == 3
    d = decode_image(data)
    arr = np.asarray(d.image).reshape(-1, 3)
    assert d.format == "GIF"
    assert (np.abs(arr.astype(int) - [220, 30, 30]) <= 4).all()


@pytest.mark.parametrize(
    "fmt,kw",
    [("WEBP", {"quality": 90}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("JPEG", {"quality": 95})],
)
def test_common_formats_decode(fmt, kw):
    src = scene((80, 60), shape="tower", seed=3)
    d = decode_image(encode(src, fmt, **kw))
    assert d.format == fmt
    assert d.image.mode == "RGB" and d.image.size == (80, 60) and (d.width, d.height) == (80, 60)
    tol = 30 if fmt == "GIF" else 8  # GIF quantises to 256 colours
    assert np.abs(np.asarray(d.image).astype(int) - np.asarray(src).astype(int)).mean() < tol


# ---------------------------------------------------------------------------------------------------- EXIF


def _quadrants(w: int, h: int) -> Image.Image:
    """Upright test card: top-left red, top-right green, bottom-left blue, bottom-right white."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[: h // 2, w // 2 :] = (0, 255, 0)
    arr[h // 2 :, : w // 2] = (0, 0, 255)
    arr[h // 2 :, w // 2 :] = (255, 255, 255)
    return Image.fromarray(arr)


def _stored_rotated(upright: Image.Image, orientation: int, **kw) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    return encode(upright.transpose(STORE_ROTATED[orientation]), "JPEG", quality=95, exif=exif, **kw)


def _corner_colours(img: Image.Image) -> list[tuple[int, int, int]]:
    a = np.asarray(img).astype(int)
    h, w = a.shape[:2]
    pts = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    return [tuple(int(round(c / 255)) * 255 for c in a[y, x]) for y, x in pts]


UPRIGHT_CORNERS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    data = _stored_rotated(_quadrants(120, 80), orientation)
    with Image.open(io.BytesIO(data)) as raw:
        stored = raw.size
    assert stored == ((80, 120) if orientation in (6, 8) else (120, 80))
    d = decode_image(data)
    assert d.image.size == (120, 80) and (d.width, d.height) == (120, 80)  # width/height swapped back
    assert _corner_colours(d.image) == UPRIGHT_CORNERS


def test_synthetic_rotated_photos_decode_upright(tmp_path):
    # the same scenes written twice: stored rotated (with an EXIF orientation) and stored upright; the generator
    # draws identical pixels whatever the rotation fraction, so decoding must give (nearly, JPEG) the same image
    kw = dict(n_classes=2, train_per_class=2, test_per_class=0, image_size=(96, 64), gps_fraction=0.0)
    generate_dataset(tmp_path / "rot", rotated_fraction=1.0, **kw)
    generate_dataset(tmp_path / "up", rotated_fraction=0.0, **kw)
    files = sorted((tmp_path / "rot").glob("train/*/*.jpg"))
    assert len(files) == 4
    orientations = set()
    for f in files:
        data = f.read_bytes()
        with Image.open(io.BytesIO(data)) as raw:
            orientation = raw.getexif().get(274)
            stored = raw.size
        assert orientation in STORE_ROTATED
        orientations.add(orientation)
        d = decode_image(data)
        want = (stored[1], stored[0]) if orientation in (6, 8) else stored
        assert d.image.size == want == (d.width, d.height)
        upright = decode_image((tmp_path / "up" / f.relative_to(tmp_path / "rot")).read_bytes())
        assert upright.image.size == d.image.size
        a, b = np.asarray(d.image).astype(int), np.asarray(upright.image).astype(int)
        assert np.abs(a - b).mean() < 6, f  # JPEG noise only
        assert np.abs(a[::-1, ::-1] - b).mean() > 2 * np.abs(a - b).mean()  # and clearly not upside down
    assert orientations & {6, 8}, "no 90-degree case drawn; pick another seed"


@pytest.mark.parametrize(
    "lat,lon", [(-33.8568, 151.2153), (37.8199, -122.4783), (48.8584, 2.2945), (-13.1631, -72.545)]
)
def test_exif_gps_signed_degrees(lat, lon):
    d = decode_image(with_gps_exif(scene((64, 48)), lat, lon))
    assert d.exif_lat == pytest.approx(lat, abs=1e-5)
    assert d.exif_lon == pytest.approx(lon, abs=1e-5)
    assert (d.exif_lat < 0) == (lat < 0) and (d.exif_lon < 0) == (lon < 0)


def test_exif_capture_time_from_datetime_original_and_fallback():
    d = decode_image(with_gps_exif(scene((64, 48)), 1.0, 2.0, taken="2019:07:04 12:34:56"))
    assert d.exif_time == datetime(2019, 7, 4, 12, 34, 56)
    d = decode_image(with_gps_exif(scene((64, 48)), 1.0, 2.0, datetime_ifd0="2020:01:02 03:04:05"))
    assert d.exif_time == datetime(2020, 1, 2, 3, 4, 5)


def test_synthetic_gps_photos_carry_their_class_coordinates(synthetic_data):
    seen = 0
    for f in synthetic_data["files"]:
        d = decode_image(Path(f).read_bytes())
        if d.exif_lat is None:
            assert d.exif_lon is None and d.exif_time is None
            continue
        seen += 1
        home = synthetic_data["coords"][Path(f).parent.name]
        assert abs(d.exif_lat - home["lat"]) < 0.011 and abs(d.exif_lon - home["lon"]) < 0.011
        assert 2015 <= d.exif_time.year <= 2024
    assert seen == round(0.5 * 12) + round(0.5 * 6)  # gps_fraction 0.5 of train (12) and test (6)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_a_phone_heic_or_avif_decodes_upright_with_its_location_and_time(orientation, fmt):
    """HEIC, most phone uploads, and AVIF: decoded (pillow-heif is a dependency; Pillow reads AVIF), upright (the
    container's rotation, written from the EXIF orientation, applied once), GPS and capture time read as from a
    JPEG."""
    exif = Image.Exif()
    exif[274] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", dms(48.8584), "E", dms(2.2945)
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    upright = _quadrants(120, 80)
    stored = upright.transpose(STORE_ROTATED[orientation]) if orientation != 1 else upright
    d = decode_image(encode(stored, fmt, quality=95, exif=exif.tobytes()))
    assert d.format == fmt and d.image.size == (120, 80) and (d.width, d.height) == (120, 80)
    assert _corner_colours(d.image) == UPRIGHT_CORNERS
    assert (round(d.exif_lat, 4), round(d.exif_lon, 4)) == (48.8584, 2.2945)
    assert d.exif_time == datetime(2024, 5, 6, 7, 8, 9)


def test_no_exif_means_no_gps_and_no_time():
    d = decode_image(encode(scene((64, 48)), "JPEG"))
    assert d.exif_lat is None and d.exif_lon is None and d.exif_time is None


def test_broken_exif_is_ignored(bad_corpus):
    dest, _ = bad_corpus
    d = decode_image((dest / "broken_exif.jpg").read_bytes())
    assert d.image.size == (64, 48)
    assert d.exif_lat is None and d.exif_time is None


def test_broken_exif_prints_no_pillow_warning(bad_corpus):
    """In a fresh process, as a job runs it: the photo decodes without Pillow's "Corrupt EXIF data" on stderr."""
    import subprocess
    import sys

    photo = bad_corpus[0] / "broken_exif.jpg"
    code = (
        "import sys; from landmark_core.preprocess import decode_image; "
        "d = decode_image(open(sys.argv[1], 'rb').read()); print(d.image.size, d.exif_lat)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(photo)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "(64, 48) None", done.stderr
    assert "EXIF" not in done.stderr, done.stderr


def test_out_of_range_gps_and_garbage_orientation_are_ignored():
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (rational(95, 1), rational(0, 1), rational(0, 1))  # latitude 95°: impossible
    gps[3], gps[4] = "E", (rational(10, 1), rational(0, 1), rational(0, 1))
    exif[274] = 42  # not an orientation
    d = decode_image(encode(_quadrants(40, 20), "JPEG", quality=95, exif=exif))
    assert d.exif_lat is None and d.exif_lon is None
    assert d.image.size == (40, 20) and _corner_colours(d.image) == UPRIGHT_CORNERS


# --------------------------------------------------------------------------------------------- draft, bounds


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(big_scene((2000, 1500), shape="bridge", seed=5), "JPEG", quality=90)


def test_jpeg_draft_decoding_reduces_but_reports_original_size(big_jpeg):
    d = decode_image(big_jpeg, draft_to=256)
    short = min(d.image.size)
    assert 256 <= short < 1500
    assert (d.width, d.height) == (2000, 1500)
    assert d.image.size[0] / d.image.size[1] == pytest.approx(2000 / 1500, rel=0.01)
    full = decode_image(big_jpeg)
    assert full.image.size == (2000, 1500) and (full.width, full.height) == (2000, 1500)


def test_draft_never_goes_below_the_target(big_jpeg):
    for target in (100, 256, 374, 376, 700, 749, 751):
        short = min(decode_image(big_jpeg, draft_to=target).image.size)
        assert short >= target, target
    # under 2x the target the decoder does not bother
    assert decode_image(big_jpeg, draft_to=751).image.size == (2000, 1500)


def test_draft_with_exif_rotation_is_upright_and_reports_upright_size():
    data = _stored_rotated(_quadrants(1600, 1200), 6)
    d = decode_image(data, draft_to=256)
    assert (d.width, d.height) == (1600, 1200)
    assert d.image.size[0] > d.image.size[1] and min(d.image.size) >= 256 and d.image.size != (1600, 1200)
    assert _corner_colours(d.image) == UPRIGHT_CORNERS


def test_draft_is_jpeg_only():
    png = encode(big_scene((1200, 900)), "PNG")
    assert decode_image(png, draft_to=256).image.size == (1200, 900)


def test_pixel_bound():
    data = encode(scene((100, 80)), "PNG")
    with pytest.raises(DecodeError) as ei:
        decode_image(data, max_pixels=5000)
    assert ei.value.kind == "too_large" and "100x80" in str(ei.value)
    assert decode_image(data, max_pixels=8000).image.size == (100, 80)  # the bound itself is allowed


def test_max_pixels_is_the_only_bound(monkeypatch):
    # scaled down: make Pillow's guard tiny instead of building a > 179 MP image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(scene((100, 80)), "PNG")  # 8000 px > 2 x 1000
    assert decode_image(data, max_pixels=10**6).image.size == (100, 80)


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"", "empty"),
        (b"\x00" * 100, "not_an_image"),
        (b"%PDF-1.7\n" + b"x" * 200, "not_an_image"),
        (b"GIF89a", "not_an_image"),  # a bare signature: not identified
        (b"\x89PNG\r\n\x1a\n", "not_an_image"),
    ],
)
def test_empty_and_garbage(data, kind):
    with pytest.raises(DecodeError) as ei:
        decode_image(data)
    assert ei.value.kind == kind


def test_truncated_png_and_jpeg():
    for fmt in ("PNG", "JPEG"):
        data = encode(scene((200, 150)), fmt)
        with pytest.raises(DecodeError) as ei:
            decode_image(data[: len(data) // 2])
        assert ei.value.kind == "truncated", (fmt, str(ei.value))


# ------------------------------------------------------------------------------------------------ transforms


def test_eval_preset_to_uint8_shapes():
    p = EvalPreset()
    for size in ((320, 240), (240, 320), (8, 6), (1000, 100), (224, 224)):
        arr = p.to_uint8(scene(size) if min(size) > 20 else Image.new("RGB", size, (1, 2, 3)))
        assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8, size


def test_eval_preset_centre_crop():
    # a 512x256 image: resize short side to 256 (no-op), centre crop 224 of the middle
    arr = np.zeros((256, 512, 3), np.uint8)
    arr[:, 256:] = 255  # right half white
    out = EvalPreset().to_uint8(Image.fromarray(arr))
    assert (out[:, :100] == 0).all() and (out[:, 124:] == 255).all()  # the boundary sits at the crop's middle


def test_eval_preset_json_round_trip_and_presets_for():
    p = EvalPreset(size=160, resize=183)
    assert EvalPreset.from_json(p.to_json()) == p
    train, ev = presets_for(224)
    assert (ev.size, ev.resize, ev.draft_target()) == (224, 256, 256) and train.size == 224
    train, ev = presets_for(288)
    assert (ev.size, ev.resize) == (288, 329) and train.size == 288


def test_normalize_batch_matches_the_formula():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    t = normalize_batch(batch)
    assert t.shape == (3, 3, 5, 7) and t.dtype == torch.float32
    want = (batch.astype(np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(t.numpy(), want.transpose(0, 3, 1, 2), atol=1e-5)
    assert batch.dtype == np.uint8 and batch.max() > 1  # input untouched


def test_eval_preset_tensor_is_normalize_of_to_uint8():
    p = EvalPreset()
    img = scene((300, 200))
    t = p.tensor(img)
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    assert torch.equal(t, normalize_batch(p.to_uint8(img)[None])[0])


def test_train_preset_transform_shape_dtype():
    torch.manual_seed(0)
    tf = TrainPreset().transform()
    for size in ((320, 240), (240, 320), (100, 80)):
        x = tf(scene(size))
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        lo = (0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD)
        hi = (1 - min(IMAGENET_MEAN)) / min(IMAGENET_STD)
        assert x.min() >= lo - 1e-4 and x.max() <= hi + 1e-4
    x1, x2 = tf(scene((320, 240))), tf(scene((320, 240)))
    assert not torch.equal(x1, x2)  # augmentation is random
    assert TrainPreset(size=128, flip=False, jitter=0).transform()(scene()).shape == (3, 128, 128)


# -------------------------------------------------------------------- THE KEY ONE: eval path == predict path


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, synthetic_data) -> list[str]:
    """Small synthetic JPEGs (some EXIF-rotated), big JPEGs (draft kicks in), a rotated big one, a PNG, a CMYK."""
    d = tmp_path_factory.mktemp("photos")
    files = list(synthetic_data["files"][:6])
    extra = {
        "big.jpg": encode(big_scene((2000, 1500), "bridge", 1), "JPEG", quality=90),
        "portrait.jpg": encode(big_scene((900, 1300), "tower", 2), "JPEG", quality=85),
        "big_rot6.jpg": _stored_rotated(big_scene((1600, 1200), "dome", 3), 6),
        "mid.jpg": encode(big_scene((640, 520), "castle", 4), "JPEG", quality=90),
        "small.jpg": encode(scene((400, 300), "arch", 7), "JPEG", quality=90),
        "photo.png": encode(big_scene((700, 600), "spire", 5), "PNG"),
        "cmyk.jpg": encode(big_scene((1200, 1000), "pagoda", 6).convert("CMYK"), "JPEG", quality=90),
    }
    for name, data in extra.items():
        (d / name).write_bytes(data)
        files.append(str(d / name))
    return files


def _draft_route(paths, preset: EvalPreset) -> np.ndarray:
    """What `landmark predict` (predict_paths) and the tag job feed the Predictor: draft decode + to_uint8."""
    return np.stack(
        [preset.to_uint8(decode_image(Path(p).read_bytes(), draft_to=preset.draft_target()).image) for p in paths]
    )


def test_training_eval_and_predictor_inputs_are_identical(photo_files, tiny_artifact):
    from landmark_core.predict import predict_paths
    from landmark_core.predictor import Predictor
    from landmark_core.training import eval_arrays

    predictor = Predictor(tiny_artifact.path, k=3)
    preset = predictor.preset
    # training's evaluation route
    eval_u8, ok = eval_arrays(photo_files, storage.S3Options(), preset)
    assert ok.all()
    # the predictor route, as `landmark predict` really runs it: spy on what reaches predict_arrays
    seen = []
    real = predictor.predict_arrays
    predictor.predict_arrays = lambda images, **kw: (seen.append(images.copy()), real(images, **kw))[1]
    results = list(predict_paths(photo_files, predictor, batch_size=5))
    pred_u8 = np.concatenate(seen)
    assert pred_u8.shape == eval_u8.shape == (len(photo_files), 224, 224, 3)
    assert np.array_equal(pred_u8, eval_u8)
    assert np.array_equal(_draft_route(photo_files, preset), eval_u8)
    # and the normalised tensors, hence the scores, are identical too
    t_eval = normalize_batch(eval_u8, preset.mean, preset.std)
    t_pred = normalize_batch(pred_u8, preset.mean, preset.std)
    assert torch.equal(t_eval, t_pred)
    from landmark_core.calibration import softmax
    from landmark_core.training import forward_uint8

    logits, _ = forward_uint8(predictor.net, eval_u8, preset, "cpu")
    probs = softmax(logits, predictor.temperature)
    assert [r.status for r in results] == ["tagged"] * len(photo_files)
    np.testing.assert_allclose([r.score for r in results], probs.max(axis=1), rtol=1e-5, atol=1e-6)
    assert [r.tags[0]["name"] for r in results] == [predictor.catalog.names[i] for i in probs.argmax(axis=1)]


def test_tag_job_decode_stage_matches_training_eval(photo_files):
    """The Ray tag job's CPU stage (landmark_core.tagging.read_and_decode) gives the same pixels."""
    from landmark_core import tagging
    from landmark_core.training import eval_arrays

    preset = EvalPreset()
    eval_u8, ok = eval_arrays(photo_files, storage.S3Options(), preset)
    n = len(photo_files)
    out = tagging.read_and_decode(
        {"uri": photo_files, "etag": [None] * n, "size_bytes": [None] * n}, preset=preset, opts=storage.S3Options()
    )
    assert out["ok"].all()
    assert np.array_equal(out["image"], eval_u8)


def test_eval_preset_tensor_equals_batch_path_when_no_draft(photo_files):
    """EvalPreset.tensor on a full decode == normalize_batch of the draft route, for photos too small to draft."""
    preset = EvalPreset()
    small = [p for p in photo_files if min(decode_image(Path(p).read_bytes()).image.size) < 2 * preset.draft_target()]
    assert len(small) >= 7
    batch = normalize_batch(_draft_route(small, preset), preset.mean, preset.std)
    for i, p in enumerate(small):
        single = preset.tensor(decode_image(Path(p).read_bytes()).image)
        assert torch.equal(single, batch[i]), p


def test_draft_and_full_decode_differ_slightly_for_big_jpegs(photo_files):
    """Documented, expected: for JPEGs >= 2x the target, draft (DCT-scaled) decoding changes pixels a little.

    Both training's evaluation and tagging use the draft route, so they agree with each other (tested above);
    EvalPreset.tensor on a full-resolution decode is NOT the same tensor for these photos.
    """
    preset = EvalPreset()
    big = [p for p in photo_files if Path(p).name in ("big.jpg", "portrait.jpg", "big_rot6.jpg", "cmyk.jpg")]
    assert len(big) == 4, big
    for p in big:
        data = Path(p).read_bytes()
        full = preset.to_uint8(decode_image(data).image).astype(int)
        draft = preset.to_uint8(decode_image(data, draft_to=preset.draft_target()).image).astype(int)
        diff = np.abs(full - draft)
        assert diff.max() > 0, p  # they differ ...
        assert diff.mean() < 3.0, p  # ... but only slightly: same content, same framing


# ------------------------------------------------------------------------------------------------- fuzzing


def _small_valid_images() -> list[bytes]:
    img = scene((24, 18), "wheel", 9)
    return [
        encode(img, "JPEG", quality=80),
        encode(img, "PNG"),
        encode(img, "GIF"),
        encode(img, "WEBP"),
        encode(img, "TIFF"),
        encode(img, "BMP"),
        _stored_rotated(img, 6),
        with_gps_exif(img, -10.5, 20.25, taken="2021:02:03 04:05:06"),
    ]


SEEDS = _small_valid_images()


def _check_decode(data: bytes) -> None:
    try:
        d = decode_image(data, draft_to=8)
    except DecodeError as e:
        assert e.kind in DECODE_ERROR_KINDS
        return
    assert d.image.mode == "RGB"
    assert d.width > 0 and d.height > 0 and min(d.image.size) > 0


@settings(max_examples=200, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_only_decode_error(data):
    _check_decode(data)


@settings(max_examples=200, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
    prefix_magic=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF"]),
)
def test_fuzz_mutated_real_images_only_decode_error(seed, flips, cut, prefix_magic):
    data = bytearray(SEEDS[seed])
    for pos, val in flips:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[: int(len(data) * cut)]
    _check_decode(prefix_magic + bytes(data) if prefix_magic and not data.startswith(prefix_magic[:2]) else bytes(data))
