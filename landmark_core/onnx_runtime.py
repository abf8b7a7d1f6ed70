"""CPU inference runtimes for the Predictor: torch (the reference, and the GPU path), ONNX Runtime fp32, ONNX
Runtime int8.

    torch      the LandmarkNet itself; on CUDA with autocast fp16 + channels_last. Scores equal training's eval.
    onnx       the same network exported to ONNX, run by ONNX Runtime on the CPU (same numbers to ~1e-5).
    onnx-int8  that graph statically quantised to int8 (QDQ, per-channel weights; its first two convolutions stay
               float), calibrated on a fixed set of synthetic scenes (below); EfficientNet-Lite0 is built for this
               (ReLU6, no squeeze-excite).
    auto       torch on a GPU; on a CPU the measured best (CPU_DEFAULT).

The ONNX graph takes the decoded photos as they leave preprocessing, (N, S, S, 3) uint8, normalises them itself
(mean/std of the artifact's preset) and outputs ``logits`` and ``embedding`` (the abstention scores need both).

Where the .onnx comes from: it is *derived* from the artifact (weights + preset), never stored in it. It is built
at first use (torch export, int8 calibration) and cached in ``cache_dir()`` under the artifact's model_id, the
runtime and RECIPE (bump it when the export or quantisation changes). Why not at save time: artifacts written
before this runtime existed, and every artifact on s3://, keep working unchanged; the artifact stays one weights
file whose sha256 is part of model_id; and the calibration set must not depend on the training photos, which the
artifact cannot carry and the tag job does not have. The tag job builds the model once in the driver and ships
its bytes to its workers, which neither import torch nor export anything (a cluster node needs no cache).
ONNX is protobuf, never pickle.

int8 calibration: ``calibration_images`` renders CALIBRATION_COUNT synthetic outdoor scenes
(landmark_core.synthetic, fixed seeds): deterministic, available everywhere, no photos needed.

Each runtime's speed and accuracy, with the commands that measured them: README, "Throughput". Dynamic int8
quantisation is not offered: it ran slower than torch fp32.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
ONNX_RUNTIMES = ("onnx", "onnx-int8")
CPU_DEFAULT = "onnx-int8"  # the fastest CPU runtime, top-1 unchanged (README: "Throughput")
RECIPE = 3  # version of export + quantisation below: part of the cache key
FLOAT_CONVS = 2  # the first convolutions, kept in float by the int8 recipe (quantize_int8)
CALIBRATION_COUNT = 64
OPSET = 17
CACHE_ENV = "LANDMARK_CACHE_DIR"


class RuntimeChoiceError(ValueError):
    pass


class StaleFitWarning(UserWarning):
    """An artifact's runtime fit was made on another RECIPE's model than this code builds (``stale_fit``)."""


def stale_fit(fit: dict, runtime: str) -> str | None:
    """Why ``fit`` (an open-world artifact's score and threshold fitted on ``runtime``'s features) was made on
    another build of that runtime's model than this code makes, or None. Fits record their RECIPE; an
    artifact's fit without one was made by recipe 1."""
    if not fit or runtime not in ONNX_RUNTIMES:
        return None
    made = int(fit.get("recipe", 1))
    if made == RECIPE:
        return None
    return (
        f"this model's {runtime} score and threshold were fitted on quantisation recipe {made}; this version "
        f"builds recipe {RECIPE} (README: 'int8 on CPUs without VNNI'), whose scores can differ by a few points: "
        f"the wrong-tag rate it was fitted for is not guaranteed; train the model again to refit them"
    )


def check_runtime(name: str | None, flag: str = "--runtime") -> str:
    """The runtime name, or a RuntimeChoiceError naming ``flag`` and the choices."""
    if name not in RUNTIMES:
        raise RuntimeChoiceError(f"{flag} must be one of {', '.join(RUNTIMES)}; got {name!r}")
    return name


def resolve_runtime(name: str, device: str, flag: str = "--runtime") -> str:
    """``auto`` -> torch on CUDA, CPU_DEFAULT on CPU; ONNX runtimes are CPU-only here (no CUDA provider)."""
    check_runtime(name, flag)
    on_gpu = not str(device).startswith("cpu")
    if name == "auto":
        return "torch" if on_gpu else CPU_DEFAULT
    if on_gpu and name in ONNX_RUNTIMES:
        raise RuntimeChoiceError(f"{flag} {name} runs on the CPU only; on a GPU use {flag} torch (or auto)")
    return name


# ---------------------------------------------------------------- building the ONNX model


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "landmark-tagger"
    )
    return Path(root) / "onnx"


def model_bytes(artifact, runtime: str, *, use_cache: bool = True) -> bytes:
    """The ONNX model of ``artifact`` for ``runtime`` (onnx | onnx-int8): from the cache, else built and cached."""
    if runtime not in ONNX_RUNTIMES:
        raise RuntimeChoiceError(f"no ONNX model for runtime {runtime!r}")
    path = _cache_path(artifact.model_id or _content_key(artifact), runtime)
    if use_cache and path.is_file():
        return path.read_bytes()
    fp32 = export_onnx(artifact)
    blob = fp32 if runtime == "onnx" else quantize_int8(fp32, calibration_images(artifact.preprocess))
    if use_cache:
        _write_cache_file(path, blob)
    return blob


def _cache_path(model_id: str, runtime: str) -> Path:
    name = f"{model_id}-{runtime}-r{RECIPE}.onnx"
    if Path(name).name != name or name.startswith("."):  # (a loaded artifact's id is checked: lm- and hex)
        raise ValueError(f"model_id {model_id!r} cannot name a cache file")
    return cache_dir() / name


def cache_model(model_id: str, runtime: str, blob: bytes) -> None:
    """Cache ``blob`` as the ONNX model of ``model_id`` (an artifact whose network is another's, e.g. after
    `landmark catalog add`: same weights, new model_id)."""
    _write_cache_file(_cache_path(model_id, runtime), blob)


def cached_model(model_id: str, runtime: str) -> bytes | None:
    """The cached ONNX model of ``model_id`` for ``runtime``, or None."""
    path = _cache_path(model_id, runtime)
    return path.read_bytes() if path.is_file() else None


def _content_key(artifact) -> str:
    """An unsaved artifact has no model_id: hash its weights and preset instead."""
    h = hashlib.sha256(repr(artifact.preprocess.to_json()).encode())
    for k in sorted(artifact.state_dict):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(artifact.state_dict[k])).tobytes())
    return "unsaved-" + h.hexdigest()[:16]


def _write_cache_file(path: Path, blob: bytes) -> None:
    """storage.write_bytes (atomic, each writer its own temp file: processes may build the same model at once);
    a read-only home is not an error, the model is just not cached."""
    from .storage import write_bytes

    try:
        write_bytes(str(path), blob)
    except OSError:
        pass


def export_onnx(artifact) -> bytes:
    """The artifact's network as ONNX: uint8 (N, S, S, 3) -> logits (N, C), embedding (N, D); dynamic N.

    The export is checked against torch on synthetic photos: a mismatch raises instead of tagging wrongly.
    """
    import torch

    from .artifact import build_network

    art = artifact
    if any(not isinstance(v, torch.Tensor) for v in art.state_dict.values()):  # loaded as numpy
        from dataclasses import replace

        art = replace(art, state_dict={k: torch.from_numpy(np.asarray(v).copy()) for k, v in art.state_dict.items()})
    try:
        return export_network(build_network(art), art.preprocess, name=art.spec.name)
    except ExportMismatch as e:  # the Predictor's path: torch is the way round it
        raise ExportMismatch(f"{e}; use --runtime torch") from None


def export_network(net, preset, *, name: str = "the network") -> bytes:
    """``net`` as ONNX over uint8 photos of ``preset`` (normalised inside): (N, S, S, 3) -> logits, embedding;
    dynamic N. Checked against torch on synthetic photos: a mismatch raises. ``net``'s train/eval mode is kept."""
    probe = calibration_images(preset, n=4)
    blob, (ref, _) = _export(_uint8_model(net, preset.mean, preset.std), net, probe, "image", ["logits", "embedding"])
    _check_export(OrtModel(blob, threads=1)(probe)[0], ref, name)
    return blob


def backbone_embedder(net, size: int, *, threads: int | None = None) -> "OrtEmbedder":
    """``net``'s embedding of normalised (N, 3, size, size) float photos, exported to ONNX and run by ONNX Runtime
    fp32: the frozen backbone's one pass over the training photos, about 5x torch's speed on a CPU core here
    (README: "Throughput"). Checked against torch on two probe inputs: a mismatch raises."""
    import torch

    class Embed(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.embed(x)

    probe = np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32)
    blob, (ref,) = _export(Embed(net), net, probe, "x", ["embedding"])
    embedder = OrtEmbedder(blob, threads=threads)
    _check_export(embedder(probe), ref, "the backbone")
    return embedder


class ExportMismatch(RuntimeError):
    """An ONNX export whose outputs are not torch's on the probe inputs."""


def _check_export(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """ONNX Runtime's ``got`` (of the export of ``what``) against torch's ``ref`` on the same probe, to 1e-3 of the
    largest value."""
    scale = float(np.abs(ref).max()) + 1e-6
    if not np.allclose(got, ref, atol=1e-3 * scale, rtol=1e-3):
        raise ExportMismatch(
            f"ONNX export of {what} does not reproduce torch (max difference {np.abs(got - ref).max():.3g})"
        )


def _export(wrapper, net, probe: np.ndarray, input_name: str, outputs: list[str]) -> tuple[bytes, tuple]:
    """``wrapper`` (a module around ``net``) as ONNX, batch size dynamic, and its torch outputs on ``probe`` in
    eval mode (numpy) to check the export against; ``net``'s train/eval mode is given back."""
    import io
    import warnings

    import torch

    was_training = net.training
    buf = io.BytesIO()
    x = torch.from_numpy(probe)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            wrapper.eval()
            torch.onnx.export(
                wrapper,
                (x,),
                buf,
                input_names=[input_name],
                output_names=outputs,
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={name: {0: "n"} for name in [input_name, *outputs]},
            )
            wrapper.eval()  # export restores the module's previous mode; the reference runs in eval mode
            ref = wrapper(x)
    finally:
        net.train(was_training)
    ref = ref if isinstance(ref, tuple) else (ref,)
    return buf.getvalue(), tuple(r.numpy() for r in ref)


def _uint8_model(net, mean, std):
    import torch

    class Uint8Model(torch.nn.Module):
        """uint8 NHWC photos -> normalised NCHW float -> (logits, embedding): the Predictor's whole forward."""

        def __init__(self, net, mean, std):
            super().__init__()
            self.net = net
            self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)))
            self.register_buffer(
                "shift",
                (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1),
            )

        def forward(self, image):
            x = image.permute(0, 3, 1, 2).float() * self.scale - self.shift
            emb = self.net.embed(x)
            return self.net.head(emb), emb

    return Uint8Model(net, mean, std)


def calibration_images(preset, n: int = CALIBRATION_COUNT, seed: int = 0) -> np.ndarray:
    """``n`` deterministic synthetic outdoor scenes (half with a structure), as the preset's uint8 crops."""
    from .synthetic import SHAPES, render_scene

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        shape = None if i % 4 == 3 else SHAPES[i % len(SHAPES)]
        out.append(preset.to_uint8(render_scene(shape, rng, (320, 240))))
    return np.stack(out)


def quantize_int8(fp32: bytes, calibration: np.ndarray, *, batch_size: int = 8) -> bytes:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, min/max calibration), the
    network's first FLOAT_CONVS convolutions left in float.

    Weights in 7 bits (reduce_range): x86 CPUs without VNNI (AVX2 only) multiply uint8 by int8 with an int16
    sum that saturates on full-range weights; measured on an AVX2 EPYC, real photos' int8 embeddings fell to a
    median cosine of 0.93 with fp32 (0.98 in 7 bits, at the same speed). uint8 weights do not saturate but ran
    5.5x slower there. The first convolutions (full resolution, a few channels) carry most of the remaining
    error and ran slower in int8 than in float there: with them in float the median cosine went 0.977 -> 0.990
    (min 0.93 -> 0.98) at 1.4x the photos per second (README: "int8 on CPUs without VNNI")."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{"image": calibration[s : s + batch_size]} for s in range(0, len(calibration), batch_size)]
            )

        def get_next(self):
            return next(self.batches, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs a warning per tensor it leaves in float
    try:
        with tempfile.TemporaryDirectory(prefix="landmark-int8-") as tmp:
            src, pre, dst = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
            Path(src).write_bytes(fp32)
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(
                pre,
                dst,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=True,
                nodes_to_exclude=_first_convs(pre, FLOAT_CONVS),
            )
            return Path(dst).read_bytes()
    finally:
        root.setLevel(level)


def _first_convs(path: str, n: int) -> list[str]:
    """The names of the first ``n`` Conv nodes of the ONNX model at ``path`` (nodes are in topological order)."""
    import onnx

    convs = [node.name for node in onnx.load(path).graph.node if node.op_type == "Conv"]
    return convs[:n]


# ---------------------------------------------------------------- running it


class OrtModel:
    """An ONNX Runtime session over uint8 photos: ``model(images) -> (logits, embeddings)`` as float32 numpy.

    ``threads`` intra-op threads; they do not spin while idle (spinning steals the CPU from the decode threads or
    tasks that share the machine).
    """

    def __init__(self, model: bytes | str, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeChoiceError(
                "the onnx runtimes need onnxruntime (pip install onnxruntime); or use --runtime torch"
            ) from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or 0)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(images_uint8, dtype=np.uint8)
        logits, emb = self.session.run(["logits", "embedding"], {self.input: x})
        return logits.astype(np.float32, copy=False), emb.astype(np.float32, copy=False)


class OrtEmbedder:
    """An ONNX Runtime session over normalised float photos (N, 3, S, S): ``model(x) -> embeddings`` (float32)."""

    def __init__(self, model: bytes, threads: int | None = None):
        self.session = OrtModel(model, threads=threads).session

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (emb,) = self.session.run(["embedding"], {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return emb.astype(np.float32, copy=False)
