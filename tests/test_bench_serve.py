"""`landmark bench serve` end to end on synthetic photos: every measurement runs, the load test checks each answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import bench
from landmark_core.predictor import default_threads


@pytest.mark.slow
def test_bench_serve_runs_inprocess_http_and_the_mixed_load(ray_local, synthetic_data, tiny_artifact, capsys):
    root = Path(synthetic_data["files"][0]).parents[2]
    assert (
        bench.main(
            [
                "serve",
                "--images",
                str(root),
                "--model",
                tiny_artifact.path,
                "--clients",
                "1,4",
                "--seconds",
                "1",
                "--max-batch-size",
                "4",
                "--rounds",
                "2",
                "--load",
                "200",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    r = json.loads(printed.strip().splitlines()[-1])
    assert r["photos"] == len(synthetic_data["files"]) and r["inprocess_ips"] > 0
    for label in ("batched", "unbatched"):
        for c in (1, 4):
            m = r[f"{label}_{c}"]
            assert m["requests"] > 0 and m["errors"] == 0 and m["statuses"] == {"200": m["requests"]}
            assert 0 < m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"]
    assert r["ratio_table"] == round(r["batched_4"]["rps"] / r["inprocess_ips"], 3)
    assert len(r["pairs"]) == 2 and all(s > 0 and p > 0 for s, p, _ in r["pairs"])
    ratios = sorted(x[2] for x in r["pairs"])
    assert r["ratio"] == pytest.approx((ratios[0] + ratios[1]) / 2)  # the median of the two pairs
    load = r["load"]
    assert load["requests"] == 200 and load["errors"] == 0  # every answer had the status it must have
    assert {"200", "413", "415", "422"} <= set(load["statuses"])
    assert load["replicas_same"] and load["replicas_before"] == default_threads()  # one replica per core
