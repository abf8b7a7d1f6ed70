"""Photo-like test pictures and copies of them as another site would hold them (test_nearcopy, test_split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def photo(dest: Path, seed: int, *, size=(320, 240), orientation: int | None = None) -> Path:
    """A photo-like picture (smooth random colours: a photo's 17x16 thumbnail is smooth too, unlike the synthetic
    landmarks' noise). ``orientation``: stored turned, with the EXIF tag that turns it upright again."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if orientation == 6:  # "rotate 90 CW to view": the stored pixels are the upright ones turned 90 CCW
        exif = Image.Exif()
        exif[0x0112] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(dest, quality=90, exif=exif)
    else:
        im.save(dest, quality=90)
    return dest


def copy(src: Path, dest: Path, *, scale: float = 1.0, crop: float = 0.0, quality: int = 70) -> Path:
    """``src`` as another site would hold it: upright, resized, cropped by ``crop`` of each side, recompressed."""
    im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
    w, h = im.size
    im = im.crop((int(crop * w), int(crop * h), w - int(crop * w), h - int(crop * h)))
    im = im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))), Image.BILINEAR)
    dest.parent.mkdir(parents=True, exist_ok=True)
    im.save(dest, quality=quality)
    return dest
