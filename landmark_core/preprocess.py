"""One source of image decoding and transforms for training, tagging and predict.

The eval path is split in two so that the tag job can run its halves in different Ray stages while giving
exactly the tensors that training's evaluation sees:

    decode_image(bytes) -> Decoded (PIL RGB, EXIF facts)        # CPU task
    EvalPreset.to_uint8(pil) -> HxWx3 uint8 (resize + centre crop)  # CPU task, small to ship
    normalize_batch(uint8 NHWC) -> float NCHW tensor            # on the model's device

Every decode failure is a ``DecodeError`` with a short ``kind`` (empty, not_an_image, truncated, too_large,
unsupported) and a reason; nothing else escapes ``decode_image``.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pillow's own bomb guard is global state; we check our own bound per call and keep Pillow's out of the way.
DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: larger than any phone photo, far below a decompression bomb

register_heif_opener()  # HEIC/HEIF, the iPhone's photo format, opens like any other
# Pillow warns of a corrupt EXIF block on stderr; _read_exif already treats what it cannot read as absent, and a
# nightly job's log should not carry a warning per such photo.
warnings.filterwarnings("ignore", message=r"(Possibly )?[Cc]orrupt EXIF", category=UserWarning, module=r"PIL\.")

DECODE_ERROR_KINDS = ("empty", "not_an_image", "truncated", "too_large", "unsupported")


class DecodeError(Exception):
    """A photo that cannot be turned into pixels; ``kind`` is one of DECODE_ERROR_KINDS."""

    def __init__(self, kind: str, reason: str):
        assert kind in DECODE_ERROR_KINDS, kind
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass
class Decoded:
    image: Image.Image  # RGB, upright (EXIF orientation applied), possibly draft-reduced
    width: int  # the photo's own size, upright, before any draft reduction
    height: int
    format: str | None = None
    exif_lat: float | None = None
    exif_lon: float | None = None
    exif_time: datetime | None = None


@dataclass(frozen=True)
class EvalPreset:
    """Resize the short side to ``resize``, centre-crop ``size``, ImageNet mean/std."""

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "EvalPreset":
        return cls(size=int(d["size"]), resize=int(d["resize"]), mean=tuple(d["mean"]), std=tuple(d["std"]))

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL RGB -> (size, size, 3) uint8: resize short side, centre crop."""
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return np.array(image, dtype=np.uint8)  # writable: torch.from_numpy warns on read-only arrays

    def tensor(self, image: Image.Image):
        """One photo through the whole eval path: (3, size, size) float tensor."""
        return normalize_batch(self.to_uint8(image)[None], self.mean, self.std)[0]

    def draft_target(self) -> int:
        """Smallest short side the decoder may reduce to without losing detail for this preset."""
        return self.resize


@dataclass(frozen=True)
class TrainPreset:
    """Augmentation for training: random resized crop, flip, mild colour jitter, then the eval normalisation."""

    size: int = 224
    scale: tuple[float, float] = (0.35, 1.0)
    flip: bool = True
    jitter: float = 0.2
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

    def transform(self):
        """A torchvision transform PIL -> float tensor (C, H, W)."""
        import torch
        from torchvision.transforms import v2 as T

        ops = [T.PILToTensor(), T.RandomResizedCrop(self.size, scale=self.scale, antialias=True)]
        if self.flip:
            ops.append(T.RandomHorizontalFlip())
        if self.jitter:
            ops.append(T.ColorJitter(self.jitter, self.jitter, self.jitter))
        ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]
        return T.Compose(ops)


CROP_FRACTION = 0.875  # the ImageNet convention: 224 of 256


def presets_for(size: int = 224, crop_fraction: float = CROP_FRACTION) -> tuple[TrainPreset, EvalPreset]:
    """The train/eval pair for an input size: the eval crop is ``crop_fraction`` of the resized short side."""
    return TrainPreset(size=size), EvalPreset(size=size, resize=round(size / crop_fraction))


def normalize_batch(batch_uint8: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=None):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 tensor, normalised; on ``device`` when given.

    Normalising after the transfer moves a quarter of the bytes a float tensor would (matters on GPU).
    """
    import torch

    if isinstance(batch_uint8, torch.Tensor):  # already a tensor (e.g. decoded on the GPU): stays where it is
        t = batch_uint8 if device is None else batch_uint8.to(device)
    else:
        t = torch.from_numpy(np.ascontiguousarray(batch_uint8))
        if device is not None and str(device) != "cpu":  # pinned host memory: an async DMA copy to the GPU
            t = t.pin_memory().to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    return t.sub_(m).div_(s)


# ---------------------------------------------------------------- decoding on the GPU (optional)


class GpuDecodeError(ValueError):
    """--gpu-decode asked for where it cannot run (no CUDA, or a runtime that does not run on the GPU)."""


def check_gpu_decode(device: str, flag: str = "--gpu-decode") -> None:
    """Refuse GPU decoding clearly unless ``device`` is a CUDA device that torch can use."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise GpuDecodeError(
            f"{flag} decodes JPEGs with nvJPEG on a CUDA GPU (torchvision.io.decode_jpeg("
            f"device='cuda')), and there is none here (device {device!r}, "
            f"torch.cuda.is_available() {torch.cuda.is_available()}); drop {flag}"
        )


def decode_jpegs_to_uint8(datas: list[bytes], preset: EvalPreset, device: str = "cuda"):
    """JPEG bytes -> the eval crops, decoded by torchvision.io.decode_jpeg on ``device`` (nvJPEG on a GPU).

    Returns (an (M, S, S, 3) uint8 tensor on ``device`` of the M photos it decoded, in input order, or None;
    one ok flag per input). Not ok (the caller's CPU path takes them): not a JPEG, CMYK or other unusual modes,
    or a batch nvJPEG refused. Same steps as the CPU path: EXIF orientation (read from the header), short side
    resized to ``preset.resize`` (bilinear, antialiased), centre crop ``preset.size``. Small photos come out
    identical to the Pillow path (tests, on the CPU device); large ones differ slightly, since the CPU path
    decodes them DCT-scaled (draft) and resamples with Pillow.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    ok, tensors, orient = [], [], []
    for data in datas:
        o = None
        try:
            im = _open(data)
            good = im.format == "JPEG" and im.mode in ("RGB", "L")
            o = _read_exif(im).get("orientation") if good else None
        except Exception:
            good = False
        ok.append(good)
        if good:
            tensors.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            orient.append(o)
    if not tensors:
        return None, ok
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one undecodable photo fails the batch: every JPEG of it takes the CPU path
        return None, [False] * len(datas)
    out = []
    for img, o in zip(decoded, orient):  # img: (3, H, W) uint8 on device
        img = _orient_chw(img, o)
        h, w = img.shape[-2:]
        scale = preset.resize / min(w, h)
        nh, nw = max(preset.size, round(h * scale)), max(preset.size, round(w * scale))
        img = F.resize(img, [nh, nw], antialias=True)
        top, left = (nh - preset.size) // 2, (nw - preset.size) // 2  # as EvalPreset.to_uint8 crops
        out.append(img[:, top : top + preset.size, left : left + preset.size].permute(1, 2, 0))
    return torch.stack(out), ok


def jpeg_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded | None:
    """For GPU decoding: a JPEG that ``decode_jpegs_to_uint8`` takes (RGB or grey, within ``max_pixels``), with its
    upright size and EXIF and no pixels decoded; None for anything else, which the CPU path then decodes (and
    reports, if broken), so both paths give the same rows."""
    try:
        im = _open(data)
        w, h = im.size
        if im.format != "JPEG" or im.mode not in ("RGB", "L") or w <= 0 or h <= 0 or w * h > max_pixels:
            return None
        exif = _read_exif(im)
    except Exception:
        return None
    width, height = (h, w) if exif.get("orientation") in (5, 6, 7, 8) else (w, h)
    return Decoded(None, width, height, "JPEG", exif.get("lat"), exif.get("lon"), exif.get("time"))


def _orient_chw(img, orientation: int | None):
    """EXIF orientation 2-8 on a (C, H, W) tensor, exactly as ImageOps.exif_transpose on a PIL image."""
    import torch

    t = lambda x: x.transpose(-2, -1)  # noqa: E731  (PIL's TRANSPOSE: across the main diagonal)
    ops = {
        2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
        3: lambda x: x.flip(-1).flip(-2),  # ROTATE_180
        4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
        5: t,  # TRANSPOSE
        6: lambda x: torch.rot90(x, k=-1, dims=(-2, -1)),  # ROTATE_270 (90 degrees clockwise)
        7: lambda x: t(x).flip(-1).flip(-2),  # TRANSVERSE
        8: lambda x: torch.rot90(x, k=1, dims=(-2, -1)),  # ROTATE_90 (counter-clockwise)
    }
    return ops[orientation](img) if orientation in ops else img


# ---------------------------------------------------------------- decoding


def decode_image(data: bytes, *, draft_to: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Bytes -> upright RGB image plus EXIF GPS/time; raises only DecodeError.

    ``draft_to``: the short side the caller needs; JPEGs much larger are decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), which is several times faster and never goes below ``draft_to``.
    """
    if not data:
        raise DecodeError("empty", "zero bytes")
    try:
        return _decode(data, draft_to, max_pixels)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise DecodeError("not_an_image", "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in msg.lower() or isinstance(e, EOFError) else "unsupported"
        raise DecodeError(kind, msg[:200]) from None
    except Exception as e:  # a decoder plugin bug must not kill a nightly job: report it as a bad file
        raise DecodeError("unsupported", f"{type(e).__name__}: {str(e)[:200]}") from None


_OPEN_LOCK = threading.Lock()


def _open(data: bytes) -> Image.Image:
    """Image.open (header only) with Pillow's global bomb guard lifted: ``max_pixels`` is the one bound.

    The guard is process-global state, so it is lifted under a lock for the few microseconds of the header parse.
    """
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode(data: bytes, draft_to: int | None, max_pixels: int) -> Decoded:
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    im = _open(data)
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeError("unsupported", f"bad dimensions {w}x{h}")
    if w * h > max_pixels:
        raise DecodeError("too_large", f"{w}x{h} = {w * h / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP bound")
    fmt = im.format
    exif = _read_exif(im)
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated: first frame
    if draft_to and fmt == "JPEG" and min(w, h) >= 2 * draft_to:
        im.draft("RGB", _draft_request(w, h, draft_to))
    im.load()
    im = _upright(im, exif.get("orientation"))
    rgb = to_rgb(im)
    width, height = (h, w) if exif.get("orientation") in (5, 6, 7, 8) else (w, h)
    return Decoded(rgb, width, height, fmt, exif.get("lat"), exif.get("lon"), exif.get("time"))


def _draft_request(w: int, h: int, short_side: int) -> tuple[int, int]:
    """Pillow's draft picks the largest reduction whose result is still at least the requested size."""
    scale = short_side / min(w, h)
    return max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))


def _upright(im: Image.Image, orientation: int | None) -> Image.Image:
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(im)
        except Exception:  # broken EXIF: keep the pixels as stored
            return im
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. 16-bit grey is scaled, not clipped; alpha is composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


# ---------------------------------------------------------------- EXIF

_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769


def _read_exif(im: Image.Image) -> dict:
    """Orientation, GPS lat/lon (signed degrees) and capture time; anything broken is just absent."""
    out: dict = {}
    try:
        exif = im.getexif()
    except Exception:
        return out
    try:
        o = exif.get(274)
        if isinstance(o, int) and 1 <= o <= 8:
            out["orientation"] = o
    except Exception:
        pass
    try:
        gps = exif.get_ifd(_GPS_IFD)
        lat = _gps_degrees(gps.get(2), gps.get(1), "S")
        lon = _gps_degrees(gps.get(4), gps.get(3), "W")
        if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
            out["lat"], out["lon"] = lat, lon
    except Exception:
        pass
    try:
        raw = exif.get_ifd(_EXIF_IFD).get(0x9003) or exif.get(306)
        if raw:
            out["time"] = datetime.strptime(str(raw).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except Exception:
        pass
    return out


def _gps_degrees(dms, ref, negative_ref: str) -> float | None:
    if dms is None:
        return None
    parts = [float(x) for x in dms]
    if len(parts) != 3 or any(np.isnan(parts)) or any(p < 0 for p in parts):
        return None
    value = parts[0] + parts[1] / 60.0 + parts[2] / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() == negative_ref:
        value = -value
    return round(value, 7)
