"""Inference runtimes (landmark_core.onnx_runtime): the ONNX export reproduces torch (top-1, probabilities, embeddings),
the int8 model runs and stays close, the cache, clear refusals (bad --runtime, ONNX on a GPU, --gpu-decode without
CUDA), the torch-free ONNX predictor, and the GPU path pieces that can be checked on a CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_core import artifact as artifact_mod, onnx_runtime as rt
from landmark_core.calibration import softmax
from landmark_core.predictor import Predictor
from landmark_core.preprocess import EvalPreset, GpuDecodeError, check_gpu_decode, decode_image
from landmark_core.synthetic import SHAPES, render_scene
from tests.cli_asserts import assert_error_names

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
SMALL = EvalPreset(size=64, resize=73)  # the scratch net is fully convolutional: small inputs keep tests fast


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(autouse=True)
def onnx_cache(cache_root, monkeypatch):
    """One ONNX cache for this module (built models are reused across its tests), never the user's."""
    monkeypatch.setenv(rt.CACHE_ENV, str(cache_root))


def _images(preset: EvalPreset, n: int = 8, seed: int = 0) -> np.ndarray:
    return np.stack(
        [
            preset.to_uint8(render_scene(SHAPES[i % len(SHAPES)], np.random.default_rng([seed, i]), (96, 72)))
            for i in range(n)
        ]
    )


@pytest.fixture(scope="module")
def sharp(make_tiny_artifact):
    """Scratch 3-class artifact with a scaled-up head (varied, confident classes), threshold 0, small preset."""
    return make_tiny_artifact(head_scale=40.0, abstain={"method": "msp", "threshold": 0.0}, preset=SMALL)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return _images(SMALL, 8)


# ---------------------------------------------------------------------------------------------- numbers


def test_onnx_gives_the_same_top1_and_probabilities_as_torch(sharp, images):
    ref = Predictor(sharp, k=3, runtime="torch")
    fast = Predictor(sharp, k=3, runtime="onnx")
    assert fast.runtime == "onnx" and fast.net is None
    a, b = ref.predict_arrays(images), fast.predict_arrays(images)
    assert np.array_equal(a["topk_idx"][:, 0], b["topk_idx"][:, 0])
    np.testing.assert_allclose(a["topk_score"], b["topk_score"], atol=1e-4)
    assert list(a["status"]) == list(b["status"])
    (la, ea), (lb, eb) = ref.logits_and_embeddings(images), fast.logits_and_embeddings(images)
    np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-3 * np.abs(la).max())
    np.testing.assert_allclose(eb, ea, rtol=1e-4, atol=1e-4 * np.abs(ea).max())
    assert len(set(a["topk_idx"][:, 0])) > 1  # the check means something: the photos do not all get one class


def test_onnx_batch_size_is_dynamic(sharp, images):
    fast = Predictor(sharp, k=3, runtime="onnx")
    one_by_one = np.concatenate([fast.logits_and_embeddings(images[i : i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(one_by_one, fast.logits_and_embeddings(images[:3])[0], rtol=1e-5, atol=1e-5)
    assert fast.predict_arrays(images[:0])["status"].shape == (0,)
    for runtime in ("onnx", "onnx-int8"):  # a batch whose photos all failed: empty outputs of the right widths
        logits, emb = Predictor(sharp, k=3, runtime=runtime).logits_and_embeddings(images[:0])
        assert logits.shape == (0, fast.logits_and_embeddings(images[:1])[0].shape[1]) and emb.shape[0] == 0
        assert emb.shape[1] == fast.logits_and_embeddings(images[:1])[1].shape[1] and emb.dtype == np.float32


def test_int8_runs_and_stays_close_to_fp32(sharp, images):
    ref = Predictor(sharp, k=3, runtime="torch")
    q = Predictor(sharp, k=3, runtime="onnx-int8")
    out = q.predict_arrays(images)
    assert out["topk_idx"].shape == (len(images), 3) and np.all(np.diff(out["topk_score"], axis=1) <= 0)
    (la, ea), (lq, eq) = ref.logits_and_embeddings(images), q.logits_and_embeddings(images)
    assert lq.shape == la.shape and eq.shape == ea.shape and lq.dtype == np.float32
    cos = np.sum(ea * eq, 1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eq, axis=1)
    assert cos.min() > 0.98, cos
    agree = np.mean(softmax(lq).argmax(1) == softmax(la).argmax(1))
    assert agree >= 0.75, agree


def test_int8_keeps_the_first_two_convolutions_in_float(sharp):
    """Recipe 3: the network's first FLOAT_CONVS convolutions take float weights and float inputs (no
    DequantizeLinear in front of them); every later convolution and the head run quantised."""
    import onnx

    graph = onnx.load_from_string(rt.model_bytes(sharp, "onnx-int8")).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    quantised = [all(made_by.get(x) == "DequantizeLinear" for x in node.input[:2]) for node in convs]
    assert rt.FLOAT_CONVS == 2 and len(convs) > 4
    assert quantised == [False] * 2 + [True] * (len(convs) - 2), [n.name for n in convs]
    first = convs[: rt.FLOAT_CONVS]
    assert all(made_by.get(x) != "DequantizeLinear" for node in first for x in node.input), [n.name for n in first]


def test_efficientnet_lite0_export_matches_torch():
    """The real architecture (TF 'same' padding, ReLU6, ImageNet weights shipped offline): fp32 ONNX == torch."""
    from landmark_core.artifact import Artifact
    from landmark_core.catalog import Catalog
    from landmark_core.models import ModelSpec, build_model

    spec = ModelSpec("efficientnet_lite0", 4, weights="imagenet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_model(spec)
    with torch.no_grad():
        net.head.weight.mul_(20)  # confident, varied classes
    art = Artifact(
        spec=ModelSpec("efficientnet_lite0", 4, weights="none"),
        catalog=Catalog.from_folders(["00.Tower", "01.Arch", "02.Dome", "03.Bridge"]),
        preprocess=EvalPreset(),
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
        temperature=1.0,
        abstain={"method": "msp", "threshold": 0.0},
    )
    imgs = _images(EvalPreset(), 6, seed=3)
    ref = Predictor(art, k=2, runtime="torch").logits_and_embeddings(imgs)
    fast = Predictor(art, k=2, runtime="onnx").logits_and_embeddings(imgs)
    assert np.array_equal(ref[0].argmax(1), fast[0].argmax(1))
    np.testing.assert_allclose(softmax(fast[0]), softmax(ref[0]), atol=1e-4)
    np.testing.assert_allclose(fast[1], ref[1], atol=1e-4 * np.abs(ref[1]).max())


# ---------------------------------------------------------------------------------------------- cache, loading


def test_model_is_built_once_and_cached_by_model_id(make_tiny_artifact, tmp_path, monkeypatch, images):
    art = make_tiny_artifact(seed=5, preset=SMALL)
    path = tmp_path / "model"
    model_id = artifact_mod.save(art, str(path))
    first = Predictor(str(path), runtime="onnx")
    cached = list(Path(rt.cache_dir()).glob(f"{model_id}-onnx-r{rt.RECIPE}.onnx"))
    assert len(cached) == 1
    monkeypatch.setattr(rt, "export_onnx", lambda *a, **k: pytest.fail("rebuilt despite the cache"))
    second = Predictor(str(path), runtime="onnx")
    np.testing.assert_array_equal(first.logits_and_embeddings(images)[0], second.logits_and_embeddings(images)[0])


def test_onnx_bytes_can_be_handed_in(sharp, images, monkeypatch):
    blob = rt.model_bytes(sharp, "onnx")
    monkeypatch.setattr(rt, "model_bytes", lambda *a, **k: pytest.fail("looked up although given"))
    p = Predictor(sharp, runtime="onnx", onnx_model=blob)
    assert p.predict_arrays(images)["topk_idx"].shape[0] == len(images)


def test_artifact_loads_as_numpy(tiny_artifact):
    t = artifact_mod.load(tiny_artifact.path)
    n = artifact_mod.load(tiny_artifact.path, tensors="numpy")
    assert n.model_id == t.model_id and set(n.state_dict) == set(t.state_dict)
    for k, v in n.state_dict.items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, t.state_dict[k].numpy())
    with pytest.raises(ValueError, match="tensors"):
        artifact_mod.load(tiny_artifact.path, tensors="jax")


def test_onnx_predictor_never_imports_torch(tiny_artifact, images):
    """Start-up of the tag job's workers: with the ONNX model built, loading and predicting needs no torch."""
    Predictor(tiny_artifact.path, runtime="onnx-int8")  # builds + caches (this process has torch anyway)
    code = (
        "import sys, numpy as np\n"
        "from landmark_core.predictor import Predictor\n"
        f"p = Predictor({tiny_artifact.path!r}, runtime='onnx-int8', threads=1)\n"
        "out = p.predict_arrays(np.zeros((2, 224, 224, 3), np.uint8))\n"
        "import jobs.tag\n"
        "assert len(out['status']) == 2\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- refusals


def test_bad_runtime_name_fails_naming_the_flag(sharp):
    with pytest.raises(rt.RuntimeChoiceError, match=r"--runtime must be one of auto, torch, onnx, onnx-int8"):
        Predictor(sharp, runtime="tensorrt")


def test_bad_runtime_on_the_commands_exits_2_naming_the_flag(tiny_artifact, tmp_path, capsys):
    from jobs import bench, tag
    from landmark_core import predict_cli

    for main, argv in (
        (
            tag.main,
            [
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
                "--model",
                tiny_artifact.path,
                "--runtime",
                "tflite",
            ],
        ),
        (predict_cli.main, ["--model", tiny_artifact.path, "--runtime", "tflite", "x.jpg"]),
        (bench.main, ["tag", "--images", str(tmp_path), "--model", tiny_artifact.path, "--runtime", "tflite"]),
    ):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2
        assert_error_names(capsys.readouterr().err, "--runtime")


def test_config_checks_name_the_flags(tiny_artifact, tmp_path):
    from jobs.tag import ConfigError, TagConfig

    base = dict(input=str(tmp_path), output=str(tmp_path / "o"), model=tiny_artifact.path)
    with pytest.raises(ConfigError, match="--runtime"):
        TagConfig(**base, runtime="fast").check()
    with pytest.raises(ConfigError, match="--runtime onnx runs on the CPU only"):
        TagConfig(**base, runtime="onnx", gpus_per_actor=1).check()
    with pytest.raises(ConfigError, match="--compute tasks needs an ONNX runtime"):
        TagConfig(**base, runtime="torch", compute="tasks").check()
    with pytest.raises(ConfigError, match="--compute"):
        TagConfig(**base, compute="threads").check()
    cfg = TagConfig(**base)
    assert (cfg.resolved_runtime(), cfg.resolved_compute()) == (rt.CPU_DEFAULT, "tasks")
    gpu = TagConfig(**base, gpus_per_actor=1)
    assert (gpu.resolved_runtime(), gpu.resolved_compute()) == ("torch", "actors")


def test_resolve_runtime():
    assert rt.resolve_runtime("auto", "cpu") == rt.CPU_DEFAULT
    assert rt.resolve_runtime("auto", "cuda:0") == "torch"
    assert rt.resolve_runtime("onnx", "cpu") == "onnx"
    with pytest.raises(rt.RuntimeChoiceError, match="on a GPU use --runtime torch"):
        rt.resolve_runtime("onnx-int8", "cuda")


# ---------------------------------------------------------------------------------------------- GPU path pieces


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_gpu_decode_is_refused_clearly_without_cuda(tiny_artifact, capsys):
    from landmark_core import predict_cli

    with pytest.raises(GpuDecodeError, match="--gpu-decode .*CUDA"):
        check_gpu_decode("cpu")
    with pytest.raises(SystemExit) as ei:
        predict_cli.main(["--gpu-decode", "--model", tiny_artifact.path, "x.jpg"])
    assert ei.value.code == 2
    assert_error_names(capsys.readouterr().err, "--gpu-decode", "CUDA")


def test_cuda_transfer_uses_pinned_memory_and_non_blocking_copies(monkeypatch):
    """normalize_batch (the Predictor's CUDA path): pinned host memory, then an asynchronous copy."""
    from landmark_core.preprocess import normalize_batch

    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: calls.append("pin") or self)
    real_to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            calls.append(("to", str(args[0]), kwargs.get("non_blocking")))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    x = normalize_batch(np.zeros((2, 8, 8, 3), np.uint8), device="cuda:0")
    assert calls == ["pin", ("to", "cuda:0", True)] and x.shape == (2, 3, 8, 8)


def test_tensor_decode_path_gives_the_cpu_path_pixels(synthetic_data):
    """decode_jpegs_to_uint8 (the --gpu-decode path) run on the CPU device: orientation, resize and crop as the
    Pillow path, up to resampling rounding. Some of these files are stored rotated with an EXIF orientation."""
    from landmark_core.preprocess import _open, _read_exif, decode_jpegs_to_uint8

    preset = EvalPreset(size=64, resize=73)
    files = synthetic_data["files"][:12]
    datas = [Path(f).read_bytes() for f in files]
    batch, ok = decode_jpegs_to_uint8(datas + [b"not a jpeg"], preset, device="cpu")
    assert ok == [True] * len(files) + [False]
    cpu = np.stack([preset.to_uint8(decode_image(d).image) for d in datas])
    per_photo = np.abs(batch.numpy().astype(int) - cpu.astype(int)).mean(axis=(1, 2, 3))
    assert batch.shape == cpu.shape and per_photo.max() < 2.0, per_photo  # a wrong orientation costs > 30
    assert any(_read_exif(_open(d)).get("orientation") in (5, 6, 7, 8) for d in datas)  # rotated ones are in


def test_tensor_orientation_is_pillows(tmp_path):
    """All eight EXIF orientations on the tensor path, against ImageOps.exif_transpose."""
    import io

    from PIL import Image, ImageOps

    from landmark_core.preprocess import _orient_chw

    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    for o in range(1, 9):
        im, buf = Image.fromarray(arr), io.BytesIO()
        exif = im.getexif()
        exif[274] = o
        im.save(buf, "PNG", exif=exif)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
        got = _orient_chw(torch.from_numpy(arr).permute(2, 0, 1), o).permute(1, 2, 0).numpy()
        assert np.array_equal(ref, got), o


def test_predict_paths_with_device_decode(sharp, synthetic_data):
    """`landmark predict --gpu-decode` plumbing, on the CPU device: same answers as the Pillow path."""
    from landmark_core.predict import predict_paths

    p = Predictor(sharp, k=1, runtime="torch")
    files = synthetic_data["files"][:6]
    a = list(predict_paths(files, p, batch_size=4))
    b = list(predict_paths(files, p, batch_size=4, gpu_decode=True))
    assert [r.status for r in a] == [r.status for r in b] == ["tagged"] * len(files)
    assert sum(x.landmark == y.landmark for x, y in zip(a, b)) >= len(files) - 1
    assert [r.exif_lat for r in a] == [r.exif_lat for r in b]


# ---------------------------------------------------------------------------------------------- the tag job


@pytest.mark.slow
def test_tag_job_tasks_and_actors_give_the_same_rows(ray_local, synthetic_data, bad_corpus, tiny_artifact, tmp_path):
    """--compute tasks (the CPU default: decode + model in one task per block) writes what the actor pool writes,
    failed rows included, and the run's commit records the runtime and compute that ran."""
    from jobs.tag import TagConfig, run as tag_run
    from landmark_core import tagstore

    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(synthetic_data["files"][:10]):
        (src / f"{i:02d}-{Path(f).name}").write_bytes(Path(f).read_bytes())
    bad_dir, expected = bad_corpus
    for name in sorted(n for n, kind in expected.items() if kind is not None)[:3]:  # files that must fail
        (src / name).write_bytes((Path(bad_dir) / name).read_bytes())
    tables = {}
    for compute in ("tasks", "actors"):
        out = str(tmp_path / compute)
        s = tag_run(
            TagConfig(
                input=str(src),
                output=out,
                model=tiny_artifact.path,
                runtime="onnx",
                compute=compute,
                decode_batch=4,
                batch_size=4,
            )
        )
        assert (s["runtime"], s["compute"], s["rows"]) == ("onnx", compute, s["listed"])
        tables[compute] = tagstore.read(out).sort_by("uri").select(["uri", "status", "landmark", "score", "error"])
    a, b = tables["tasks"].to_pylist(), tables["actors"].to_pylist()
    assert [(r["uri"], r["status"], r["landmark"], r["error"]) for r in a] == [
        (r["uri"], r["status"], r["landmark"], r["error"]) for r in b
    ]
    np.testing.assert_allclose([r["score"] or 0 for r in a], [r["score"] or 0 for r in b], atol=1e-6)
    assert sum(r["status"] == "failed" for r in a) == 3 and sum(r["status"] != "failed" for r in a) == 10
