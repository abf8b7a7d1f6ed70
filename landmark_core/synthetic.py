"""Synthetic landmark photos: a dataset that needs no download, for tests and smoke runs.

Every "landmark" is a structure kind (tower, arch, dome, ...) with its own silhouette and colour family, drawn into
a varied outdoor scene (sky, horizon, clouds, hills, trees, lighting, noise), so a small CNN can learn it while the
pipeline still sees realistic files: JPEGs of varying size, some with EXIF GPS/DateTimeOriginal, some stored rotated
with an EXIF Orientation tag. ``write_bad_corpus`` writes the awkward and broken files a decoder must cope with.

Only numpy and Pillow; no Ray import. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, TiffImagePlugin

Color = tuple[int, int, int]
Draw = ImageDraw.ImageDraw
ShapeFn = Callable[[Draw, float, float, float, Color, np.random.Generator], None]

SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing for polygons and lines
JPEG_QUALITY = 90
CLEAR = (0, 0, 0, 0)  # "cut a hole" colour on a structure's RGBA layer
EXIF_GPS_IFD = 0x8825
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_ORIENTATION = 274
# EXIF orientation -> transpose that turns the upright scene into the stored pixels; exif_transpose undoes it.
# 6 means "rotate 90° clockwise to display", so the stored pixels are the upright scene turned 90° counter-clockwise.
STORE_ROTATED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
SPLITS = ("train", "test", "val")
_PURPOSES = ("scene", "exif", "gps", "rotation", "unknown")


# ----------------------------------------------------------------------------------------------- colour helpers


def _jitter(rng: np.random.Generator, base: Color, amount: int = 18) -> Color:
    """A member of a colour family: the base colour moved a little per channel."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)


def _shade(col: Color, f: float) -> Color:
    """Lighter (f > 1) or darker (f < 1) version of a colour, for lit and shadowed faces."""
    return tuple(int(min(255, c * f)) for c in col)


def _rgba(col: Color) -> tuple[int, int, int, int]:
    """Opaque colour for drawing on a structure's RGBA layer (where CLEAR cuts holes)."""
    return (*col, 255)


# ------------------------------------------------------------------------------------------------- structures
# Each draws on a transparent RGBA layer: x = centre, b = base line (y of the ground contact), h = height.
# Holes (the sky seen through an arch or between columns) are drawn with CLEAR.


def _tower(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Lattice tower (Eiffel-like): concave flared legs, an arch between them, platforms; bronze-brown."""
    ts = np.linspace(0.0, 0.94, 24)
    half = 0.26 * h * (1 - ts / 0.94) ** 2.3 + 0.018 * h
    left = [(x - w, b - t * h) for t, w in zip(ts, half)]
    right = [(x + w, b - t * h) for t, w in zip(ts[::-1], half[::-1])]
    d.polygon(left + [(x, b - h)] + right, fill=_rgba(col))
    d.chord([x - 0.15 * h, b - 0.24 * h, x + 0.15 * h, b + 0.24 * h], 180, 360, fill=CLEAR)
    d.rectangle([x - 0.16 * h, b - 0.30 * h, x + 0.16 * h, b - 0.27 * h], fill=_rgba(_shade(col, 0.7)))
    d.rectangle([x - 0.075 * h, b - 0.60 * h, x + 0.075 * h, b - 0.58 * h], fill=_rgba(_shade(col, 0.7)))
    for t in (0.35, 0.45, 0.52):
        w = 0.26 * h * (1 - t / 0.94) ** 2.3
        d.line([(x - w, b - t * h), (x + w, b - (t + 0.07) * h)], fill=_rgba(_shade(col, 1.3)), width=2)


def _arch(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Triumphal arch: a broad cream block with a tall round-topped opening and a dark cornice."""
    w = 0.46 * h
    d.rectangle([x - w, b - h, x + w, b], fill=_rgba(col))
    d.rectangle([x - w - 0.02 * h, b - h, x + w + 0.02 * h, b - 0.88 * h], fill=_rgba(_shade(col, 0.75)))
    ow = 0.16 * h
    d.rectangle([x - ow, b - 0.48 * h, x + ow, b], fill=CLEAR)
    d.ellipse([x - ow, b - 0.64 * h, x + ow, b - 0.32 * h], fill=CLEAR)
    for sx in (-1, 1):  # recessed reliefs on the piers
        cx = x + sx * 0.33 * h
        d.rectangle([cx - 0.06 * h, b - 0.75 * h, cx + 0.06 * h, b - 0.55 * h], fill=_rgba(_shade(col, 0.82)))


def _dome(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Domed hall: a pale stone base with windows, a drum and a big golden dome with a lantern."""
    stone = _jitter(rng, (232, 226, 212), 10)
    d.rectangle([x - 0.55 * h, b - 0.35 * h, x + 0.55 * h, b], fill=_rgba(stone))
    for i in range(7):
        wx = x - 0.45 * h + i * 0.15 * h
        d.rectangle([wx - 0.03 * h, b - 0.27 * h, wx + 0.03 * h, b - 0.12 * h], fill=_rgba(_shade(stone, 0.55)))
    d.rectangle([x - 0.28 * h, b - 0.50 * h, x + 0.28 * h, b - 0.35 * h], fill=_rgba(_shade(stone, 0.9)))
    d.pieslice([x - 0.30 * h, b - 0.80 * h, x + 0.30 * h, b - 0.20 * h], 180, 360, fill=_rgba(col))
    d.pieslice([x - 0.30 * h, b - 0.80 * h, x + 0.30 * h, b - 0.20 * h], 270, 360, fill=_rgba(_shade(col, 0.8)))
    d.rectangle([x - 0.035 * h, b - 0.92 * h, x + 0.035 * h, b - 0.79 * h], fill=_rgba(stone))
    d.polygon([(x - 0.04 * h, b - 0.92 * h), (x + 0.04 * h, b - 0.92 * h), (x, b - h)], fill=_rgba(col))


def _bridge(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Suspension bridge: two red-orange towers, sagging main cables, suspenders and a long deck."""
    deck_y, span = b - 0.28 * h, 0.62 * h
    dark = _rgba(_shade(col, 0.8))
    d.rectangle([x - 2.2 * h, deck_y - 0.03 * h, x + 2.2 * h, deck_y + 0.02 * h], fill=dark)
    for tx in (x - span, x + span):
        for leg in (-0.05 * h, 0.05 * h):
            d.rectangle([tx + leg - 0.022 * h, b - h, tx + leg + 0.022 * h, b], fill=_rgba(col))
        for y in (0.95, 0.75, 0.55):
            d.rectangle([tx - 0.07 * h, b - y * h, tx + 0.07 * h, b - (y - 0.04) * h], fill=_rgba(col))
    top, low = b - 0.97 * h, deck_y - 0.04 * h
    cable = [(x + u, top + (low - top) * (1 - (u / span) ** 2)) for u in np.linspace(-span, span, 25)]
    d.line(cable, fill=_rgba(col), width=max(2, int(0.012 * h)))
    for px, py in cable[2:-2:2]:
        d.line([(px, py), (px, deck_y)], fill=_rgba(col), width=1)
    for sx in (-1, 1):
        d.line(
            [(x + sx * span, top), (x + sx * 2.2 * h, deck_y - 0.02 * h)], fill=_rgba(col), width=max(2, int(0.012 * h))
        )


def _pyramid(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Pyramid: a wide sandy triangle with a lit and a shadowed face."""
    split = x + rng.uniform(-0.25, 0.25) * h
    d.polygon([(x - 0.8 * h, b), (x, b - h), (split, b)], fill=_rgba(_shade(col, 1.1)))
    d.polygon([(split, b), (x, b - h), (x + 0.8 * h, b)], fill=_rgba(_shade(col, 0.72)))


def _wheel(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Ferris wheel: a magenta rim with spokes and gondolas on an A-frame."""
    r, cy = 0.44 * h, b - 0.54 * h
    grey = _rgba((90, 90, 100))
    for sx in (-1, 1):
        d.line([(x, cy), (x + sx * 0.3 * h, b)], fill=grey, width=max(3, int(0.025 * h)))
    n = int(rng.integers(10, 17))
    phase = rng.uniform(0, 2 * math.pi)
    for k in range(n):
        a = phase + 2 * math.pi * k / n
        px, py = x + r * math.cos(a), cy + r * math.sin(a)
        d.line([(x, cy), (px, py)], fill=_rgba(_shade(col, 1.2)), width=1)
        g = 0.035 * h
        d.ellipse([px - g, py - g * 0.4, px + g, py + g * 1.6], fill=_rgba(_shade(col, 0.7)))
    lw = max(2, int(0.02 * h))
    d.ellipse([x - r, cy - r, x + r, cy + r], outline=_rgba(col), width=lw)
    d.ellipse([x - 0.05 * h, cy - 0.05 * h, x + 0.05 * h, cy + 0.05 * h], fill=_rgba(col))


def _obelisk(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Obelisk: a very narrow tapering granite shaft with a pyramidion on a low pedestal."""
    d.rectangle([x - 0.11 * h, b - 0.06 * h, x + 0.11 * h, b], fill=_rgba(_shade(col, 0.8)))
    bw, tw, top = 0.065 * h, 0.042 * h, b - 0.9 * h
    d.polygon([(x - bw, b - 0.06 * h), (x - tw, top), (x, top), (x, b - 0.06 * h)], fill=_rgba(_shade(col, 1.1)))
    d.polygon([(x, b - 0.06 * h), (x, top), (x + tw, top), (x + bw, b - 0.06 * h)], fill=_rgba(_shade(col, 0.8)))
    d.polygon([(x - tw, top), (x, b - h), (x + tw, top)], fill=_rgba(_shade(col, 1.25)))


def _pagoda(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Pagoda: stacked red storeys, each under a dark roof with upturned eaves, and a finial."""
    tiers = int(rng.integers(4, 6))
    roof = _rgba((45, 50, 45))
    tier_h = 0.85 * h / tiers
    for k in range(tiers):
        y0 = b - k * tier_h
        w = 0.22 * h * (1 - 0.13 * k)
        d.rectangle([x - w, y0 - tier_h, x + w, y0], fill=_rgba(col))
        d.rectangle([x - 0.3 * w, y0 - 0.6 * tier_h, x + 0.3 * w, y0], fill=_rgba(_shade(col, 0.55)))
        ry, rw = y0 - tier_h, w * 1.6
        d.polygon(
            [
                (x - rw, ry - 0.12 * tier_h),
                (x - w * 1.2, ry + 0.12 * tier_h),
                (x + w * 1.2, ry + 0.12 * tier_h),
                (x + rw, ry - 0.12 * tier_h),
                (x + w * 0.8, ry - 0.3 * tier_h),
                (x - w * 0.8, ry - 0.3 * tier_h),
            ],
            fill=roof,
        )
    d.rectangle([x - 0.012 * h, b - h, x + 0.012 * h, b - 0.85 * h], fill=roof)


def _castle(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Castle: a crenellated grey curtain wall between towers with blue conical roofs, and a dark gate."""
    roof = _rgba(_jitter(rng, (50, 65, 135), 12))
    wall_top = b - 0.42 * h
    d.rectangle([x - 0.6 * h, wall_top, x + 0.6 * h, b], fill=_rgba(col))
    for k in range(12):
        mx = x - 0.6 * h + k * 0.1 * h
        d.rectangle([mx, wall_top - 0.05 * h, mx + 0.05 * h, wall_top], fill=_rgba(col))
    for tx, th in ((x - 0.6 * h, 0.72), (x + 0.6 * h, 0.72), (x, 0.8)):
        tw = 0.11 * h if tx != x else 0.14 * h
        d.rectangle([tx - tw, b - th * h, tx + tw, b], fill=_rgba(_shade(col, 0.9)))
        d.polygon(
            [
                (tx - tw * 1.25, b - th * h),
                (tx, b - (th + 0.2 if tx == x else th + 0.26) * h),
                (tx + tw * 1.25, b - th * h),
            ],
            fill=roof,
        )
        d.rectangle([tx - 0.015 * h, b - (th - 0.12) * h, tx + 0.015 * h, b - (th - 0.2) * h], fill=_rgba((30, 30, 30)))
    d.chord([x - 0.08 * h, b - 0.3 * h, x + 0.08 * h, b - 0.14 * h], 180, 360, fill=_rgba((40, 30, 25)))
    d.rectangle([x - 0.08 * h, b - 0.22 * h, x + 0.08 * h, b], fill=_rgba((40, 30, 25)))


def _lighthouse(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Lighthouse: a tapered tower in red and white bands under a glowing lantern room."""
    white = _rgba(_jitter(rng, (238, 238, 232), 8))
    top, bw, tw = b - 0.76 * h, 0.11 * h, 0.065 * h
    bands = 6

    def half(y: float) -> float:
        return bw + (tw - bw) * (b - y) / (b - top)

    for k in range(bands):
        y0, y1 = b - k * (b - top) / bands, b - (k + 1) * (b - top) / bands
        fill = _rgba(col) if k % 2 == 0 else white
        d.polygon([(x - half(y0), y0), (x - half(y1), y1), (x + half(y1), y1), (x + half(y0), y0)], fill=fill)
    d.rectangle([x - tw * 1.5, top - 0.025 * h, x + tw * 1.5, top], fill=_rgba((40, 40, 40)))
    d.rectangle([x - tw * 0.9, top - 0.13 * h, x + tw * 0.9, top - 0.025 * h], fill=_rgba((250, 225, 120)))
    d.pieslice([x - tw, top - 0.21 * h, x + tw, top - 0.07 * h], 180, 360, fill=_rgba(_shade(col, 0.6)))
    d.line([(x, top - 0.14 * h), (x, b - h)], fill=_rgba((40, 40, 40)), width=2)


def _columns(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Classical temple front: stepped base, a row of marble columns with sky between, architrave, pediment."""
    w = 0.75 * h
    for k in range(3):  # steps
        d.rectangle(
            [x - w - (3 - k) * 0.02 * h, b - (k + 1) * 0.035 * h, x + w + (3 - k) * 0.02 * h, b - k * 0.035 * h],
            fill=_rgba(_shade(col, 0.85 + 0.05 * k)),
        )
    col_bot, col_top = b - 0.105 * h, b - 0.68 * h
    n = int(rng.integers(6, 9))
    cw = 2 * w / (2 * n - 1) * 0.9
    for k in range(n):
        cx = x - w + cw / 2 + k * (2 * w - cw) / (n - 1)
        d.rectangle([cx - cw / 2, col_top, cx + cw / 2, col_bot], fill=_rgba(col))
        d.line([(cx, col_top), (cx, col_bot)], fill=_rgba(_shade(col, 0.8)), width=1)
    d.rectangle([x - w - 0.03 * h, col_top - 0.1 * h, x + w + 0.03 * h, col_top], fill=_rgba(_shade(col, 0.92)))
    d.polygon(
        [(x - w - 0.05 * h, col_top - 0.1 * h), (x, b - h), (x + w + 0.05 * h, col_top - 0.1 * h)], fill=_rgba(col)
    )
    d.polygon(
        [(x - w + 0.05 * h, col_top - 0.12 * h), (x, b - 0.95 * h), (x + w - 0.05 * h, col_top - 0.12 * h)],
        fill=_rgba(_shade(col, 0.85)),
    )


def _spire(d: Draw, x: float, b: float, h: float, col: Color, rng: np.random.Generator) -> None:
    """Gothic church: slate nave with a pitched roof, a square tower and a needle spire with pinnacles."""
    d.rectangle([x - 0.4 * h, b - 0.3 * h, x + 0.4 * h, b], fill=_rgba(col))
    d.polygon(
        [(x - 0.42 * h, b - 0.3 * h), (x, b - 0.45 * h), (x + 0.42 * h, b - 0.3 * h)], fill=_rgba(_shade(col, 0.7))
    )
    d.rectangle([x - 0.09 * h, b - 0.55 * h, x + 0.09 * h, b], fill=_rgba(_shade(col, 1.15)))
    d.polygon([(x - 0.08 * h, b - 0.55 * h), (x, b - h), (x + 0.08 * h, b - 0.55 * h)], fill=_rgba(_shade(col, 0.85)))
    for sx in (-1, 1):
        px = x + sx * 0.09 * h
        d.polygon([(px - 0.02 * h, b - 0.55 * h), (px, b - 0.66 * h), (px + 0.02 * h, b - 0.55 * h)], fill=_rgba(col))
    d.ellipse([x - 0.05 * h, b - 0.42 * h, x + 0.05 * h, b - 0.32 * h], fill=_rgba((200, 160, 70)))
    for k in (-3, -2, -1, 1, 2, 3):  # lancet windows along the nave
        wx = x + k * 0.1 * h
        d.chord([wx - 0.025 * h, b - 0.24 * h, wx + 0.025 * h, b - 0.17 * h], 180, 360, fill=_rgba(_shade(col, 0.5)))
        d.rectangle([wx - 0.025 * h, b - 0.205 * h, wx + 0.025 * h, b - 0.08 * h], fill=_rgba(_shade(col, 0.5)))


# kind -> (draw function, colour family, width as a fraction of height: keeps the structure mostly in frame)
_STRUCTURES: dict[str, tuple[ShapeFn, Color, float]] = {
    "tower": (_tower, (115, 88, 62), 0.55),
    "arch": (_arch, (222, 205, 165), 0.95),
    "dome": (_dome, (212, 170, 60), 1.1),
    "bridge": (_bridge, (196, 68, 40), 1.4),
    "pyramid": (_pyramid, (212, 176, 112), 1.6),
    "wheel": (_wheel, (186, 62, 160), 0.9),
    "obelisk": (_obelisk, (176, 128, 118), 0.25),
    "pagoda": (_pagoda, (172, 34, 30), 0.75),
    "castle": (_castle, (128, 126, 116), 1.35),
    "lighthouse": (_lighthouse, (200, 28, 34), 0.3),
    "columns": (_columns, (236, 230, 214), 1.6),
    "spire": (_spire, (72, 82, 104), 0.85),
}
SHAPES: tuple[str, ...] = tuple(_STRUCTURES)


# ------------------------------------------------------------------------------------------------------ scenes

_SKIES = {  # (top, horizon) colours per sky kind
    "day": ((60, 120, 205), (175, 212, 240)),
    "dusk": ((55, 48, 105), (245, 150, 90)),
    "overcast": ((140, 146, 156), (205, 205, 210)),
}
_GROUNDS = ((80, 125, 60), (150, 135, 95), (110, 110, 108), (60, 95, 130), (195, 180, 140))


def _backdrop(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    """Sky gradient above the horizon and a darker-towards-the-camera ground below it."""
    top, low = (np.array(_jitter(rng, c, 15), float) for c in _SKIES[rng.choice(list(_SKIES))])
    ground = np.array(_jitter(rng, _GROUNDS[rng.integers(len(_GROUNDS))], 15), float)
    ys = np.arange(h, dtype=float)[:, None]
    t_sky = np.clip(ys / max(horizon, 1), 0, 1)
    sky = top * (1 - t_sky) + low * t_sky
    t_gnd = np.clip((ys - horizon) / max(h - horizon, 1), 0, 1)
    gnd = ground * (1.05 - 0.35 * t_gnd)
    col = np.where(ys < horizon, sky, gnd)
    return Image.fromarray(np.repeat(col[:, None, :], w, axis=1).clip(0, 255).astype(np.uint8))


def _clouds(d: Draw, rng: np.random.Generator, w: int, horizon: int) -> None:
    """A few soft cloud clusters in the sky: large bright shapes a model must learn to ignore."""
    for _ in range(int(rng.integers(1, 5))):
        cx, cy, s = rng.uniform(0, w), rng.uniform(0.05, 0.6) * horizon, rng.uniform(0.04, 0.12) * w
        shade = int(rng.integers(215, 256))
        for _ in range(5):
            ox, oy, r = rng.normal(0, s), rng.normal(0, s * 0.25), s * rng.uniform(0.5, 1.0)
            d.ellipse([cx + ox - r, cy + oy - r * 0.5, cx + ox + r, cy + oy + r * 0.5], fill=(shade,) * 3 + (170,))


def _hills(d: Draw, rng: np.random.Generator, w: int, horizon: int) -> None:
    """A distant hill line rising just above the horizon."""
    amp, freq, phase = rng.uniform(0.03, 0.12) * horizon, rng.uniform(1.0, 4.0), rng.uniform(0, 6.3)
    xs = np.linspace(0, w, 40)
    ys = horizon - amp * (1 + np.sin(freq * xs / w * 2 * math.pi + phase)) / 2 - amp * 0.3
    col = _jitter(rng, (85, 105, 95), 20)
    d.polygon([(0, horizon + 2)] + list(zip(xs.tolist(), ys.tolist())) + [(w, horizon + 2)], fill=col)


def _trees(d: Draw, rng: np.random.Generator, w: int, h: int, horizon: int) -> None:
    """Foreground trees (round or conifer) that may partly hide a structure's base."""
    for _ in range(int(rng.integers(1, 5))):
        tx, base = rng.uniform(0, w), rng.uniform(horizon, h)
        th = rng.uniform(0.08, 0.22) * h * (0.6 + 0.6 * (base - horizon) / max(h - horizon, 1))
        leaf = _jitter(rng, (45, 95, 45), 20)
        d.rectangle([tx - th * 0.05, base - th * 0.4, tx + th * 0.05, base], fill=(80, 55, 35))
        if rng.random() < 0.5:
            d.ellipse([tx - th * 0.3, base - th, tx + th * 0.3, base - th * 0.35], fill=leaf)
        else:
            d.polygon(
                [(tx - th * 0.25, base - th * 0.25), (tx, base - th), (tx + th * 0.25, base - th * 0.25)], fill=leaf
            )


def _clutter(d: Draw, rng: np.random.Generator, w: int, h: int) -> None:
    """Non-landmark subjects for "no landmark" photos: coloured blobs and/or a face-like circle."""
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(3, 9))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.15) * h
            d.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=tuple(rng.integers(0, 256, 3)))
    if rng.random() < 0.5:
        r = rng.uniform(0.15, 0.3) * h
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        d.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r * 1.2], fill=_jitter(rng, (225, 185, 150), 30))
        for sx in (-1, 1):
            d.ellipse(
                [cx + sx * 0.4 * r - 0.1 * r, cy - 0.35 * r, cx + sx * 0.4 * r + 0.1 * r, cy - 0.15 * r],
                fill=(40, 30, 30),
            )
        d.arc(
            [cx - 0.45 * r, cy + 0.1 * r, cx + 0.45 * r, cy + 0.6 * r],
            20,
            160,
            fill=(150, 50, 50),
            width=max(2, int(0.06 * r)),
        )


def _structure(canvas: Image.Image, shape: str, rng: np.random.Generator, base: float, height: float) -> None:
    """Draw one structure on its own RGBA layer (so holes show the scene behind) and composite it."""
    fn, family, aspect = _STRUCTURES[shape]
    w = canvas.width
    half_w = min(aspect * height / 2, w / 2)
    x = rng.uniform(half_w * 0.6, w - half_w * 0.6) if half_w < w / 2 else w / 2 + rng.uniform(-0.1, 0.1) * w
    layer = Image.new("RGBA", canvas.size, CLEAR)
    fn(ImageDraw.Draw(layer), x, base, height, _jitter(rng, family), rng)
    canvas.paste(layer, (0, 0), layer)


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera-like variation: brightness/contrast/colour-cast jitter, sensor noise, sometimes slight blur."""
    arr = np.asarray(img, dtype=np.float32)
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-25, 25)
    gain = rng.uniform(0.93, 1.07, 3).astype(np.float32)
    arr = ((arr - 128) * contrast + 128 + brightness) * gain
    arr += rng.normal(0, rng.uniform(1.5, 5.0), arr.shape).astype(np.float32)
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    return out


def render_scene(shape: str | None, rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """One RGB outdoor photo of ``shape`` (a member of SHAPES) or, for ``None``, a scene with no structure.

    The structure stands on the ground at 35-80% of the image height, at a random horizontal position.
    """
    if shape is not None and shape not in _STRUCTURES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    w, h = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    height = rng.uniform(0.35, 0.8) * h
    base = rng.uniform(max(0.6 * h, height + 0.05 * h), 0.95 * h)
    horizon = int(max(0.45 * h, base - rng.uniform(0, 0.08) * h))
    canvas = _backdrop(rng, w, h, horizon)
    d = ImageDraw.Draw(canvas, "RGBA")
    if rng.random() < 0.7:
        _clouds(d, rng, w, horizon)
    if rng.random() < 0.5:
        _hills(d, rng, w, horizon)
    if shape is not None:
        _structure(canvas, shape, rng, base, height)
    elif rng.random() < 0.6:
        _clutter(d, rng, w, h)
    if rng.random() < 0.4:
        _trees(d, rng, w, h, horizon)
    return _finish(canvas.resize(size, Image.Resampling.BOX), rng)


# ----------------------------------------------------------------------------------------------------- dataset


def folder_name(idx: int, shape: str) -> str:
    """Class folder in the usual 'NN.Name' style, e.g. (0, 'tower') -> '00.Tower'."""
    return f"{idx:02d}.{shape.capitalize()}"


def class_coords(folder: str) -> dict[str, float]:
    """A fixed, made-up location for a class: spread over the globe by the folder's index, nudged by its name.

    Indices follow a golden-angle sequence, so the first few classes already cover N/S and E/W (00 is south-west).
    """
    m = re.match(r"^(\d+)", folder)
    idx = int(m.group(1)) if m else zlib.crc32(folder.encode())
    nudge = (zlib.crc32(folder.encode()) % 1000) / 1000 - 0.5  # in [-0.5, 0.5): different names, different points
    lat = -50 + ((idx * 0.6180339887 + 0.15) % 1.0) * 115 + 4 * nudge
    lon = ((idx * 137.50776 + 20 + 6 * nudge) % 360) - 180
    return {"lat": round(lat, 5), "lon": round(lon, 5)}


def _dms(value: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    """|value| degrees as EXIF (degrees, minutes, seconds) rationals, seconds to 1/100."""
    total = round(abs(value) * 360000)
    return (
        TiffImagePlugin.IFDRational(total // 360000, 1),
        TiffImagePlugin.IFDRational(total // 6000 % 60, 1),
        TiffImagePlugin.IFDRational(total % 6000, 100),
    )


def _gps_exif(exif: Image.Exif, lat: float, lon: float, taken: str) -> None:
    """GPS position in the GPS IFD and the capture time as DateTimeOriginal in the Exif IFD."""
    gps = exif.get_ifd(EXIF_GPS_IFD)
    gps[1], gps[2] = ("N" if lat >= 0 else "S"), _dms(lat)
    gps[3], gps[4] = ("E" if lon >= 0 else "W"), _dms(lon)
    exif.get_ifd(EXIF_IFD)[EXIF_DATETIME_ORIGINAL] = taken


def _timestamp(rng: np.random.Generator) -> str:
    """A capture time in EXIF's 'YYYY:MM:DD HH:MM:SS' form, somewhere in 2015-2024."""
    y, mo, d, hh, mm, ss = (
        int(rng.integers(lo, hi)) for lo, hi in ((2015, 2025), (1, 13), (1, 29), (0, 24), (0, 60), (0, 60))
    )
    return f"{y:04d}:{mo:02d}:{d:02d} {hh:02d}:{mm:02d}:{ss:02d}"


def _image_size(rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int]:
    """About ``size`` (±20% per side), and portrait one time in five, as phone photos are."""
    w, h = (int(round(s * rng.uniform(0.8, 1.2))) for s in size)
    return (h, w) if rng.random() < 0.2 else (w, h)


def _stream(seed: int, purpose: str, split_id: int, c: int = 0, i: int = 0) -> np.random.Generator:
    """An independent RNG per (purpose, split, class, image). Keys have a fixed length because SeedSequence
    treats [a, b, c] and [a, b, c, 0] alike, which would silently alias streams."""
    return np.random.default_rng([seed, _PURPOSES.index(purpose), split_id, c, i])


def _pick(rng: np.random.Generator, n: int, fraction: float) -> set[int]:
    """Exactly round(fraction * n) of range(n), so a split has a predictable number of tagged files."""
    return set(rng.permutation(n)[: int(round(fraction * n))].tolist())


def _save_jpeg(img: Image.Image, path: Path, exif: Image.Exif | None = None) -> None:
    """Baseline JPEG at a camera-like quality; EXIF only when there is something to say."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=JPEG_QUALITY, **({"exif": exif} if exif is not None else {}))


def _write_split(
    root: Path,
    split_id: int,
    folders: Sequence[str],
    shapes: Sequence[str],
    per_class: int,
    image_size: tuple[int, int],
    seed: int,
    gps_fraction: float,
    rotated_fraction: float,
) -> int:
    """Write one split. Each image has its own RNG stream, and GPS/rotation choices have theirs, so changing
    the fractions never changes a scene's pixels."""
    n = len(folders) * per_class
    gps_set = _pick(_stream(seed, "gps", split_id), n, gps_fraction)
    rot_set = _pick(_stream(seed, "rotation", split_id), n, rotated_fraction)
    for c, (folder, shape) in enumerate(zip(folders, shapes)):
        home = class_coords(folder)
        for i in range(per_class):
            k = c * per_class + i
            scene_rng = _stream(seed, "scene", split_id, c, i)
            meta_rng = _stream(seed, "exif", split_id, c, i)
            img = render_scene(shape, scene_rng, _image_size(scene_rng, image_size))
            exif = Image.Exif() if k in gps_set or k in rot_set else None
            if k in gps_set:
                dlat, dlon = meta_rng.uniform(-0.01, 0.01, 2)
                _gps_exif(exif, home["lat"] + dlat, home["lon"] + dlon, _timestamp(meta_rng))
            if k in rot_set:
                orientation = int(meta_rng.choice(list(STORE_ROTATED)))
                img = img.transpose(STORE_ROTATED[orientation])
                exif[EXIF_ORIENTATION] = orientation
            _save_jpeg(img, root / SPLITS[split_id] / folder / f"{i:04d}.jpg", exif)
    return n


def generate_dataset(
    root: str | Path,
    *,
    shapes: Sequence[str] | None = None,
    n_classes: int = 6,
    train_per_class: int = 30,
    test_per_class: int = 10,
    val_per_class: int = 0,
    image_size: tuple[int, int] = (320, 240),
    seed: int = 0,
    gps_fraction: float = 0.3,
    rotated_fraction: float = 0.15,
) -> dict:
    """Write an ImageFolder-style dataset (root/{train,test[,val]}/NN.Shape/*.jpg) plus root/coords.json.

    Returns {"root", "classes", "counts": {split: files}, "coords": {folder: {"lat", "lon", "country"}}}.
    """
    chosen = list(shapes or SHAPES)[:n_classes]
    if len(chosen) < n_classes:
        raise ValueError(f"asked for {n_classes} classes but only {len(chosen)} shapes are available")
    root = Path(root)
    folders = [folder_name(i, s) for i, s in enumerate(chosen)]
    per_split = {"train": train_per_class, "test": test_per_class, "val": val_per_class}
    counts = {}
    for split_id, split in enumerate(SPLITS):
        counts[split] = (
            0
            if per_split[split] <= 0
            else _write_split(
                root, split_id, folders, chosen, per_split[split], image_size, seed, gps_fraction, rotated_fraction
            )
        )
    coords = {f: class_coords(f) for f in folders}
    root.mkdir(parents=True, exist_ok=True)
    (root / "coords.json").write_text(
        json.dumps({f: {**coords[f], "name": s.capitalize()} for f, s in zip(folders, chosen)}, indent=2)
    )
    return {
        "root": str(root),
        "classes": folders,
        "counts": counts,
        "coords": {f: {**coords[f], "country": None} for f in folders},
    }


def generate_unknown(
    root: str | Path, n: int = 40, *, seed: int = 1, image_size: tuple[int, int] = (320, 240)
) -> list[Path]:
    """Write ``n`` photos with no structure at all (root/unknown_NNNN.jpg), for "no landmark" / open-set tests."""
    root = Path(root)
    paths = []
    for i in range(n):
        rng = _stream(seed, "unknown", 0, 0, i)
        path = root / f"unknown_{i:04d}.jpg"
        _save_jpeg(render_scene(None, rng, _image_size(rng, image_size)), path)
        paths.append(path)
    return paths


def generate_negatives(
    root: str | Path,
    *,
    shapes: Sequence[str],
    scenes: int = 20,
    per_shape: int = 10,
    seed: int = 2,
    image_size: tuple[int, int] = (320, 240),
) -> dict:
    """Photos of no catalog landmark, as a service sees them: root/scenes/ (no structure at all) and
    root/<shape>/ for each of ``shapes`` (structures of other kinds: look-alikes of a catalog's landmarks).
    Returns {"root", "folders": {folder: n_photos}}."""
    root = Path(root)
    folders = {}
    for c, shape in enumerate([None, *shapes]):
        folder = "scenes" if shape is None else shape
        n = scenes if shape is None else per_shape
        for i in range(n):
            rng = _stream(seed, "unknown", 1, c, i)
            _save_jpeg(render_scene(shape, rng, _image_size(rng, image_size)), root / folder / f"{folder}_{i:04d}.jpg")
        folders[folder] = n
    return {"root": str(root), "folders": folders}


# -------------------------------------------------------------------------------------------------- bad corpus


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with a correct CRC, so the file is rejected for its size and not for a checksum."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png(width: int, height: int) -> bytes:
    """A few hundred bytes of well-formed PNG whose IHDR claims width x height 8-bit grey: a decompression bomb
    header. The IDAT holds only a few rows, so nothing huge is ever stored on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 2, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _with_broken_exif(jpeg: bytes) -> bytes:
    """Insert, right after SOI, an APP1 'Exif' segment whose TIFF header points its IFD far past the data."""
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 0x7FFFFFF0) + b"\xff\x13garbage\x00\x01"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    """The file bytes of ``img`` saved as ``fmt`` (the name on disk may lie about the format)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _gradient(size: tuple[int, int], peak: int) -> np.ndarray:
    """A ramp from 0 to ``peak`` with a distinct value per pixel (for 16-bit): a decode that drops bits shows."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    return (xs * h + ys) * peak // (w * h - 1)


def write_bad_corpus(dest: str | Path) -> dict[str, str | None]:
    """Write the awkward files a photo decoder meets and return {filename: expected error kind or None}.

    Kinds: "empty", "not_an_image", "truncated", "too_large", "unsupported"; None means the file must decode.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    scene = render_scene("arch", rng, (320, 240))
    small = scene.resize((64, 48))
    full = _encoded(scene, "JPEG", quality=JPEG_QUALITY)
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.fromarray(_gradient(small.size, 255).astype(np.uint8)))
    palette = small.quantize(16)
    palette.info["transparency"] = 0
    frames = [Image.new("RGB", (32, 32), c) for c in ((220, 30, 30), (30, 200, 40), (40, 60, 220))]
    files: dict[str, tuple[bytes, str | None]] = {
        "truncated.jpg": (full[: int(len(full) * 0.4)], "truncated"),
        "zero_bytes.jpg": (b"", "empty"),
        "text.jpg": (b"This is not a JPEG, just text with a .jpg name.\n" * 4, "not_an_image"),
        "webp_named.jpg": (_encoded(small, "WEBP", quality=80), None),
        "huge_header.png": (_huge_png(50000, 50000), "too_large"),
        "png16.png": (_encoded(Image.fromarray(_gradient((64, 48), 65535).astype(np.uint16)), "PNG"), None),
        "cmyk.jpg": (_encoded(small.convert("CMYK"), "JPEG", quality=JPEG_QUALITY), None),
        "animated.gif": (
            _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
            None,
        ),
        "broken_exif.jpg": (_with_broken_exif(_encoded(small, "JPEG", quality=JPEG_QUALITY)), None),
        "palette_alpha.png": (_encoded(palette, "PNG", transparency=0), None),
        "la.png": (_encoded(rgba.convert("LA"), "PNG"), None),
        "rgba.png": (_encoded(rgba, "PNG"), None),
        "tiny.bmp": (_encoded(small.resize((8, 6)), "BMP"), None),
        "image.tiff": (_encoded(small, "TIFF"), None),
    }
    for name, (data, _) in files.items():
        (dest / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


# ---------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> dict:
    """python -m landmark_core.synthetic DEST [--classes N] [--train-per-class N] [--test-per-class N] [--seed S]
    [--bad]: write a synthetic dataset (and with --bad the bad-file corpus in DEST/bad/)."""
    p = argparse.ArgumentParser(prog="python -m landmark_core.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("dest", type=Path)
    p.add_argument("--classes", type=int, default=6, help=f"number of classes (max {len(SHAPES)})")
    p.add_argument("--train-per-class", type=int, default=30)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--val-per-class", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad", action="store_true", help="also write the bad-file corpus to DEST/bad/")
    a = p.parse_args(argv)
    summary = write_dataset(
        a.dest,
        n_classes=a.classes,
        train_per_class=a.train_per_class,
        test_per_class=a.test_per_class,
        val_per_class=a.val_per_class,
        seed=a.seed,
        bad=a.bad,
    )
    print(json.dumps(summary, indent=2))
    return summary


def write_dataset(dest: str | Path, *, bad: bool = False, **kwargs) -> dict:
    """generate_dataset(dest, **kwargs), and with ``bad`` the bad-file corpus in DEST/bad/; its summary."""
    summary = generate_dataset(dest, **kwargs)
    if bad:
        summary["bad"] = write_bad_corpus(Path(dest) / "bad")
    return summary


if __name__ == "__main__":
    main()
