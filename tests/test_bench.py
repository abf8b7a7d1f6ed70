"""`landmark bench tag` end to end on synthetic photos: every measurement runs and the JSON line adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import bench
from tests.cli_asserts import assert_error_names

RATES = (
    "decode_ips",
    "model_ips",
    "limit_ips",
    "naive_ips",
    "pipeline_ips",
    "pipeline_cold_ips",
    "pipeline_scaled_ips",
)


@pytest.mark.slow
def test_bench_tag_runs_a_to_e_and_the_job_at_1x_and_scaled(ray_local, synthetic_data, tiny_artifact, capsys):
    files = synthetic_data["files"]
    root = Path(files[0]).parents[2]  # <root>/<split>/<class>/<photo>.jpg
    assert (
        bench.main(
            [
                "tag",
                "--images",
                str(root),
                "--model",
                tiny_artifact.path,
                "--batch-size",
                "8",
                "--decode-batch",
                "8",
                "--scale",
                "2",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    r = json.loads(printed.strip().splitlines()[-1])
    assert {
        "decode_ips",
        "model_ips",
        "limit_ips",
        "naive_ips",
        "pipeline_ips",
        "ratio_limit",
        "ratio_naive",
        "peak_rss_mb",
    } <= r.keys()  # the keys the issue names
    assert r["images"] == len(files) and r["rows_scaled"] == 2 * len(files)
    assert all(r[k] > 0 for k in RATES), {k: r[k] for k in RATES}
    assert r["ratio_limit"] == round(r["pipeline_ips"] / r["limit_ips"], 3)
    assert r["ratio_naive"] == round(r["pipeline_ips"] / r["naive_ips"], 3)
    assert r["peak_rss_mb"] > 50 and r["peak_rss_scaled_mb"] > 50  # the job's own driver and workers were seen
    assert abs(r["rss_ratio_scaled"] - r["peak_rss_scaled_mb"] / r["peak_rss_mb"]) < 0.01
    assert printed.count("[bench] [tag] committed run") == 3  # 1x twice in one fresh driver, then 2x in another
    assert "(e2x)" in printed and "ratio_limit (e/c)" in printed
    assert "has no effect" not in printed  # the bench gives the job no actor flag its tasks would not use


def test_bench_compares_models_of_different_input_sides_each_on_its_own_crops(
    make_tiny_artifact, synthetic_data, tmp_path
):
    """--compare-model with another input side (efficientnet_lite1's 240 against lite0's 224): each model is timed
    on photos cropped to its own side, and the seed-style loop crops to the model's side."""
    from argparse import Namespace

    from landmark_core import artifact as artifact_mod
    from landmark_core.models import build_model
    from landmark_core.predictor import Predictor
    from landmark_core.preprocess import EvalPreset

    paths = synthetic_data["files"][:6]
    models = {}
    for side in (64, 96):
        models[side] = str(tmp_path / f"m{side}")
        artifact_mod.save(make_tiny_artifact(preset=EvalPreset(size=side, resize=side + 8)), models[side])
    base, other = (Predictor(models[side], runtime="torch") for side in (64, 96))
    seen = {64: set(), 96: set()}
    for side, p in ((64, base), (96, other)):
        run = p.logits_and_embeddings
        p.logits_and_embeddings = lambda x, run=run, side=side: seen[side].add(x.shape[1:3]) or run(x)
    _, images = bench.bench_decode(paths, base.preset, 1)
    r = bench.bench_compare(
        Namespace(batch_size=4, compare_model=models[96]), base, other, paths, images, decode_threads=1, rounds=1
    )
    assert seen == {64: {(64, 64)}, 96: {(96, 96)}}
    assert r["compare_model_ips"] > 0 and r["compare_model_ips_base"] > 0
    net = build_model(artifact_mod.load(models[96]).spec)
    shapes = []
    net.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[2:])))
    assert bench.bench_naive(net.eval(), paths, other.preset) > 0
    assert set(shapes) == {(96, 96)}


def test_bench_store_measures_each_form_both_ways_and_the_answers_agree(tmp_path, capsys):
    assert (
        bench.main(
            ["store", "--rows", "12000", "--rows-per-run", "4000", "--listed", "1000", "--dir", str(tmp_path), "--json"]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r["sizes"]) == {"12000"} and r["sizes"]["12000"]["nights"] == 3
    for size in r["sizes"].values():
        for form in ("filter_limit", "summary", "near", "current_count", "skip_check"):
            m = size[form]
            assert m["landmark"]["rows"] == m["duckdb"]["rows"]  # the bench refuses to print disagreeing paths
            assert m["landmark"]["seconds"] > 0 and m["landmark"]["rss_mb"] > 50 and m["duckdb"]["rss_mb"] > 50
            assert m["ratio"] == round(m["landmark"]["seconds"] / m["duckdb"]["seconds"], 2)
    assert r["sizes"]["12000"]["filter_limit"]["landmark"]["rows"] == 5
    assert r["sizes"]["12000"]["skip_check"]["landmark"]["rows"] >= 100  # the 10% never tagged, at least
    assert set(r["targets"]) == {"every_form_within_2x_of_raw", "filter_limit_under_1s", "skip_check_under_5s"}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "{tmp}/nonexist"], "--data {tmp}/nonexist: no such directory"),
        (["train", "--data", "{tmp}", "--workers", "0"], "--workers must be > 0"),
        (["train", "--data", "{tmp}", "--workers", "1,0"], "--workers must be > 0"),
        (["train", "--data", "{tmp}", "--epochs", "0"], "--epochs must be > 0"),
        (["train", "--data", "{tmp}", "--model", "vgg_nonexistent"], "--model"),
    ],
)
def test_bench_train_bad_arguments_fail_before_ray(argv, needle, tmp_path, capsys, monkeypatch):
    """As `bench tag`'s and `landmark train`'s: one line under the subcommand's name, exit 2, before Ray starts
    (a missing --data started Ray and failed 8 s later, as `landmark bench: error:`)."""
    monkeypatch.setattr("jobs._ray.init_ray", lambda *a, **k: pytest.fail("reached Ray"))
    with pytest.raises(SystemExit) as e:
        bench.main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert_error_names(err, needle.format(tmp=tmp_path))
    assert "landmark bench train: error: " in err


def test_bench_serve_bad_arguments_are_told_under_its_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["serve", "--model", str(tmp_path), "--images", str(tmp_path / "nonexist")])
    assert e.value.code == 2
    assert "landmark bench serve: error: --images" in capsys.readouterr().err
