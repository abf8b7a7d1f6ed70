"""Framework-neutral training pieces (no Ray): datasets over URIs, feature caching, schedules, a checkpoint format.

jobs/train.py wires these into Ray Train workers; they also run in a single process (tests, debugging).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import storage
from .datasets import NEGATIVE_SAMPLINGS
from .preprocess import DecodeError, EvalPreset, TrainPreset, decode_image


def cache_side_for(image_size: int) -> int:
    """The short side a training photo is cached at: room for TrainPreset's random crops at ``image_size``."""
    return round(image_size * 1.5)


class UriImageDataset(torch.utils.data.Dataset):
    """(uri, label) pairs -> (tensor, label). Decoded photos are cached shrunk, so later epochs skip decoding.

    The cache keeps each photo at short side ``cache_side`` (enough for a random crop at the training size)
    and stops growing at ``cache_mb``. A photo that fails to decode is replaced by a black image with label -100
    (ignored by the loss) so one bad file cannot stop a training run; the count is reported.
    """

    def __init__(
        self, uris, labels, transform, *, opts: storage.S3Options, draft_to: int, cache_side: int, cache_mb: int = 1024
    ):
        self.uris, self.labels, self.transform = list(uris), list(labels), transform
        self.opts, self.draft_to, self.cache_side = opts, draft_to, cache_side
        self.cache: dict[int, object] = {}
        self.cache_budget = cache_mb * 2**20
        self.cache_bytes = 0
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.uris)

    def image(self, i: int):
        from PIL import Image

        if i in self.cache:
            return self.cache[i]
        if i in self.bad:  # read and warned of once: every view and epoch would otherwise say it again
            return None
        try:
            im = decode_image(storage.read_bytes(self.uris[i], self.opts), draft_to=self.draft_to).image
        except (DecodeError, OSError) as e:
            self.bad.add(i)
            print(f"warning: skipping {self.uris[i]}: {e}", flush=True)
            return None
        w, h = im.size
        if min(w, h) > self.cache_side:
            s = self.cache_side / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        size = im.size[0] * im.size[1] * 3
        if self.cache_bytes + size <= self.cache_budget:
            self.cache[i] = im
            self.cache_bytes += size
        return im

    def __getitem__(self, i: int):
        im = self.image(i)
        if im is None:
            from PIL import Image

            return self.transform(Image.new("RGB", (self.cache_side, self.cache_side))), -100
        return self.transform(im), self.labels[i]


def eval_arrays(uris, opts: storage.S3Options, preset: EvalPreset) -> tuple[np.ndarray, np.ndarray]:
    """The exact eval/tag path for each URI: (N, S, S, 3) uint8 and an ok mask."""
    out = np.zeros((len(uris), preset.size, preset.size, 3), dtype=np.uint8)
    ok = np.zeros(len(uris), dtype=bool)
    for i, uri in enumerate(uris):
        try:
            d = decode_image(storage.read_bytes(uri, opts), draft_to=preset.draft_target())
            out[i] = preset.to_uint8(d.image)
            ok[i] = True
        except (DecodeError, OSError) as e:
            print(f"warning: skipping {uri}: {e}", flush=True)
    return out, ok


@torch.inference_mode()
def forward_uint8(
    net, images: np.ndarray, preset: EvalPreset, device, *, batch_size: int = 64, amp: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of uint8 photos, in batches, in eval mode."""
    from .preprocess import normalize_batch

    was_training = net.training
    net.eval()
    logits, embs = [], []
    for s in range(0, len(images), batch_size):
        x = normalize_batch(images[s : s + batch_size], preset.mean, preset.std, device=device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            e = net.embed(x)
            z = net.head(e)
        logits.append(z.float().cpu().numpy())
        embs.append(e.float().cpu().numpy())
    net.train(was_training)
    if not logits:
        return np.zeros((0, net.head.out_features), np.float32), np.zeros((0, net.embed_dim), np.float32)
    return np.concatenate(logits), np.concatenate(embs)


def network_runner(net, preset: EvalPreset, device, *, amp: bool = False, batch_size: int = 64):
    """``run(images) -> (logits, embeddings)`` of uint8 photos with ``net`` as it is now: on a CPU the network
    exported once to ONNX Runtime fp32 (the same numbers to ~1e-5, about 5x torch's speed for Lite0), on a GPU
    torch (``forward_uint8``). For passes over many photos with fixed weights, such as a run's final one."""
    if torch.device(device).type != "cpu" or amp:
        return lambda images: forward_uint8(net, images, preset, device, batch_size=batch_size, amp=amp)
    from .onnx_runtime import OrtModel, export_network

    model = OrtModel(export_network(net, preset), threads=torch.get_num_threads())

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(images):
            return np.zeros((0, net.head.out_features), np.float32), np.zeros((0, net.embed_dim), np.float32)
        parts = [model(images[s : s + batch_size]) for s in range(0, len(images), batch_size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return run


@torch.inference_mode()
def cached_features(
    net,
    dataset: UriImageDataset,
    device,
    *,
    views: int,
    eval_preset: EvalPreset,
    train_preset: TrainPreset,
    batch_size: int = 64,
    amp: bool = False,
    progress=None,
    runtime: str = "auto",
) -> np.ndarray:
    """Frozen-backbone embeddings computed once: view 0 is the eval crop, views 1.. are augmented crops.

    Returns (views, N, D). Epochs then train the head on these, never running the backbone again.
    ``progress(done, total)``, if given, is called after each batch (photo-views done of views x N).
    ``runtime``: the backbone's forward, ``auto`` (ONNX Runtime on a CPU, torch on a GPU), ``torch`` or ``onnx``.
    """
    from PIL import Image

    net.eval()
    aug = train_preset.transform()
    embed = _embedder(net, device, amp, eval_preset.size, runtime)
    feats = []
    for v in range(views):
        rows = []
        for s in range(0, len(dataset), batch_size):
            batch = []
            for i in range(s, min(s + batch_size, len(dataset))):
                im = dataset.image(i) or Image.new("RGB", (eval_preset.size, eval_preset.size))
                batch.append(eval_preset.tensor(im) if v == 0 else aug(im))
            rows.append(embed(torch.stack(batch)))
            if progress is not None:
                progress(v * len(dataset) + s + len(batch), views * len(dataset))
        feats.append(torch.cat(rows).numpy() if rows else np.zeros((0, net.embed_dim), np.float32))
    return np.stack(feats)


def _embedder(net, device, amp: bool, size: int, runtime: str = "auto"):
    """The backbone's forward for the feature pass: on a CPU, ONNX Runtime fp32 (the same embeddings to ~1e-5,
    about 5x torch's speed on Lite0's depthwise convolutions: `landmark bench train`); on a GPU, torch (fp16
    autocast with ``amp``)."""
    if runtime not in ("auto", "torch", "onnx"):
        raise ValueError(f"runtime must be auto, torch or onnx; got {runtime!r}")
    on_cpu = torch.device(device).type == "cpu" and not amp
    if runtime == "onnx" or (runtime == "auto" and on_cpu):
        if not on_cpu:
            raise ValueError("the onnx feature pass runs on the CPU, without amp")
        from .onnx_runtime import backbone_embedder

        ort = backbone_embedder(net, size, threads=torch.get_num_threads())
        return lambda x: torch.from_numpy(ort(x.numpy()))

    def on_device(x):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            return net.embed(x.to(device)).float().cpu()

    return on_device


def every(seconds: float, report, *, clock=time.monotonic):
    """``report(done, total)`` at most once per ``seconds`` (and always at the end): a progress callback for a
    long loop that should speak up now and then, not at every step."""
    last = [clock()]

    def progress(done: int, total: int) -> None:
        now = clock()
        if done >= total or now - last[0] >= seconds:
            last[0] = now
            report(done, total)

    return progress


def draw_negatives(uris: list[str], n: int, generator: torch.Generator, *, sampling: str = "balanced") -> torch.Tensor:
    """Indices of ``n`` negatives for one epoch. ``balanced``: every folder is drawn alike (with replacement), so a
    small folder of look-alike landmarks is seen as often as a large one of everyday photos; ``uniform``: every
    photo alike, without replacement (a large folder dominates)."""
    if sampling not in NEGATIVE_SAMPLINGS:
        raise ValueError(f"sampling must be one of {NEGATIVE_SAMPLINGS}, got {sampling!r}")
    if not uris or n <= 0:
        return torch.zeros(0, dtype=torch.long)
    if sampling == "uniform":
        return torch.randperm(len(uris), generator=generator)[:n]
    folders = [u.rsplit("/", 1)[0] for u in uris]
    size = Counter(folders)
    weights = torch.tensor([1.0 / size[f] for f in folders], dtype=torch.double)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LambdaLR factor: linear warm-up, then cosine decay to zero."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: adamw, sgd")


def param_groups(net, lr: float, backbone_lr_mult: float):
    """Pretrained backbones learn slower than the new head (discriminative learning rates)."""
    head = [p for n, p in net.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    body = [p for n, p in net.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    groups = [{"params": head, "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_mult})
    return groups


# ---------------------------------------------------------------- checkpoint directory format


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list | None = None
    resumed_after: list | None = None  # epochs after which a restarted worker group resumed

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["best_val_loss"] = None if not math.isfinite(self.best_val_loss) else self.best_val_loss
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainState":
        d = dict(d)
        d["best_val_loss"] = float("inf") if d.get("best_val_loss") is None else d["best_val_loss"]
        return cls(**d)


def save_checkpoint_dir(
    path: Path,
    *,
    net_state: dict,
    best_state: dict,
    optim_state: dict | None,
    sched_state: dict | None,
    state: TrainState,
    scaler_state: dict | None = None,
    rng_states: list | None = None,
) -> None:
    """Weights as safetensors; optimiser, scheduler, AMP GradScaler state and every worker's random state (``rng``:
    one uint8 tensor per rank) through torch.save (plain tensors and numbers, loaded weights_only). The scaler's loss
    scale is kept so a resumed mixed-precision run goes on with it; the random states so that it draws the
    augmentations and dropout masks the uninterrupted run would have."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net_state.items()}, str(path / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in best_state.items()}, str(path / "best.safetensors"))
    if optim_state is not None:
        torch.save(
            {"optimizer": optim_state, "scheduler": sched_state, "scaler": scaler_state or {}, "rng": rng_states or []},
            path / "optim.pt",
        )
    (path / "state.json").write_text(json.dumps(state.to_json()))


def load_checkpoint_dir(path: Path) -> tuple[dict, dict, dict | None, TrainState]:
    """(weights, best weights, {"optimizer", "scheduler", "scaler", "rng"} or None for a final checkpoint,
    TrainState). A checkpoint written before "rng" was kept has none: ``optim.get("rng")``."""
    from safetensors.torch import load_file

    optim = None
    if (path / "optim.pt").exists():
        optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    state = TrainState.from_json(json.loads((path / "state.json").read_text()))
    return load_file(str(path / "model.safetensors")), load_file(str(path / "best.safetensors")), optim, state


def smoothed_ce(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing, ignore_index=-100)


def to_bytes_npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
