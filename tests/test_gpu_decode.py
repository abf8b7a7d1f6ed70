"""`landmark tag --gpu-decode`: JPEGs read and header-parsed in the CPU tasks, decoded in the GPU actor.

No GPU here: the actor's decode path runs on the CPU device (torchvision.io.decode_jpeg, the same call nvJPEG
serves on CUDA), in-process and through a real Ray Data pipeline, and must give the rows the CPU path gives.
What a GPU alone would show (nvJPEG itself, its speed) is not tested here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_core import storage
from landmark_core.predictor import Predictor
from landmark_core.tagging import decode_deferred, predict_batch, read_and_decode, to_tag_rows
from tests.cli_asserts import assert_error_names

NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def listing(synthetic_data, bad_corpus) -> dict:
    corpus_dir, _ = bad_corpus
    uris = synthetic_data["files"][:12] + sorted(str(p) for p in Path(corpus_dir).iterdir())
    return {
        "uri": np.array(uris, dtype=object),
        "etag": np.array(["e"] * len(uris), dtype=object),
        "size_bytes": np.array([None] * len(uris), dtype=object),
    }


def _rows(predictor: Predictor, decoded: dict):
    return to_tag_rows(predict_batch(predictor, decoded), predictor, run_id="r", tagged_at=NOW).to_pylist()


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            if k in ("score", "tags"):
                continue
            assert x[k] == y[k], (x["uri"], k, x[k], y[k])
        if x["status"] != "failed":
            assert x["score"] == pytest.approx(y["score"], abs=0.02), x["uri"]
            assert [t["name"] for t in x["tags"]][:1] == [t["name"] for t in y["tags"]][:1], x["uri"]


def test_deferred_jpegs_decoded_on_the_actor_device_give_the_cpu_paths_rows(listing, tiny_artifact):
    predictor = Predictor(tiny_artifact.path, runtime="torch", threads=1)
    kw = dict(preset=predictor.preset, opts=storage.S3Options(), max_pixels=64_000_000)
    cpu = read_and_decode(listing, **kw)
    deferred = read_and_decode(listing, **kw, defer_jpeg=True)
    names = [Path(u).name for u in listing["uri"]]
    deferred_uris = {listing["uri"][i] for i, d in enumerate(deferred["jpeg"]) if d}
    sent = {Path(u).name for u in deferred_uris}
    # every RGB/grey JPEG goes to the actor as bytes (truncated.jpg too: its header is fine); the rest are decoded
    # (or failed) in the CPU task as before
    assert set(listing["uri"][:12]) <= deferred_uris  # the synthetic photos: all RGB JPEGs
    assert "truncated.jpg" in sent and "broken_exif.jpg" in sent
    assert not sent & {"cmyk.jpg", "text.jpg", "zero_bytes.jpg", "webp_named.jpg", "huge_header.png"}
    assert not deferred["ok"][[n in sent for n in names]].any()  # not decoded yet

    on_device = decode_deferred(deferred, preset=predictor.preset, device="cpu", max_pixels=64_000_000)
    assert "jpeg" not in on_device and tuple(on_device["image"].shape) == cpu["image"].shape
    assert list(on_device["ok"]) == list(cpu["ok"]) and list(on_device["error"]) == list(cpu["error"])
    diff = np.abs(on_device["image"].numpy().astype(int) - cpu["image"].astype(int))[cpu["ok"]]
    assert diff.mean() < 2.0, diff.mean()  # torchvision's antialiased resize vs Pillow's: a level or two at most
    _same_rows(_rows(predictor, on_device), _rows(predictor, cpu))
    failed = {Path(r["uri"]).name: r["error"] for r in _rows(predictor, on_device) if r["status"] == "failed"}
    assert failed["truncated.jpg"].startswith("decode: truncated")  # refused on the device, failed as on the CPU


@pytest.mark.slow
def test_deferred_jpegs_cross_ray_data_to_the_model_stage(ray_local, listing, tiny_artifact):
    import ray

    predictor = Predictor(tiny_artifact.path, runtime="torch", threads=1)
    preset = predictor.preset

    def model_stage(batch: dict):
        p = Predictor(tiny_artifact.path, runtime="torch", threads=1)
        return to_tag_rows(
            predict_batch(p, decode_deferred(batch, preset=preset, device="cpu")), p, run_id="r", tagged_at=NOW
        )

    ds = ray.data.from_items([{"uri": u, "etag": "e", "size_bytes": None} for u in listing["uri"]])
    ds = ds.map_batches(
        read_and_decode,
        batch_size=8,
        batch_format="numpy",
        fn_kwargs={"preset": preset, "opts": storage.S3Options(), "defer_jpeg": True},
    )
    got = sorted(ds.map_batches(model_stage, batch_size=8, batch_format="numpy").take_all(), key=lambda r: r["uri"])
    want = sorted(
        _rows(predictor, read_and_decode(listing, preset=preset, opts=storage.S3Options())), key=lambda r: r["uri"]
    )
    assert [r["uri"] for r in got] == [w["uri"] for w in want]  # one row per photo, none extra, none lost
    _same_rows([{k: r[k] for k in w} for r, w in zip(got, want)], want)


def test_gpu_decode_without_gpu_actors_is_refused_naming_the_flags(tiny_artifact, tmp_path, capsys):
    from jobs import tag

    base = dict(input=str(tmp_path), output=str(tmp_path / "o"), model=tiny_artifact.path, gpu_decode=True)
    with pytest.raises(tag.ConfigError, match="--gpu-decode .* --gpus-per-actor > 0"):
        tag.TagConfig(**base).check()
    tag.TagConfig(**base, gpus_per_actor=1).check()  # torch on GPU actors: accepted
    with pytest.raises(SystemExit) as ei:
        tag.main(
            ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--model", tiny_artifact.path, "--gpu-decode"]
        )
    assert ei.value.code == 2
    assert_error_names(capsys.readouterr().err, "--gpu-decode")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_gpu_decode_actor_without_cuda_refuses_to_start(tiny_artifact):
    from jobs import _tag_worker
    from landmark_core.preprocess import GpuDecodeError

    # an actor that holds no CUDA device says so when it starts, rather than decoding on its CPU
    with pytest.raises(GpuDecodeError, match="--gpu-decode .* CUDA"):
        _tag_worker.TagActor(
            model=tiny_artifact.path,
            k=3,
            min_score=None,
            accept_rate=None,
            s3_endpoint=None,
            run_id="r",
            threads=1,
            tagged_at=NOW,
            runtime="torch",
            gpu_decode=True,
        )
