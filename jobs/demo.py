"""`landmark demo` (what `make demo` runs): the whole product on this machine, with no cloud account.

1. photos: the synthetic landmark-like set (or --data DIR, a real class-folder set)
2. a local Ray; train EfficientNet-Lite0, frozen backbone, 2 workers (or --model DIR: a model already trained)
3. a "day of uploads" (held-out photos, some with EXIF GPS, some rotated, a few bad files) put in a local
   SeaweedFS S3 bucket started for the demo (--no-s3: a local folder)
4. the nightly tag job (and how many held-out photos got their own landmark); the same job again (nothing
   new to tag); a query; an HTML report
5. stop what it started
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs._cli import ConfigError, checks_config, fields_of, run_cli


@dataclass(frozen=True)
class DemoConfig:
    data: str | None = None
    out: str = "out/demo"
    classes: int = 6
    epochs: int = 6
    no_s3: bool = False
    model: str | None = None

    def check(self) -> None:
        if self.model and not Path(self.model, "artifact.json").is_file():
            raise ConfigError(f"--model {self.model}: no artifact.json there (train one with `landmark train`)")
        if self.data and not Path(self.data).is_dir():
            raise ConfigError(f"--data {self.data}: no such directory")
        if self.classes < 2 or self.epochs < 1:
            raise ConfigError("--classes must be >= 2 and --epochs >= 1")


def step(n: int, text: str) -> None:
    print(f"\n=== [{n}/6] {text}", flush=True)


def _photos(data: str | None, work: Path, classes: int) -> Path:
    if data:
        print(f"    using the photos in {data} (--data)")
        return Path(data)
    from landmark_core.synthetic import generate_dataset

    root = work / "photos"
    if not (root / "train").is_dir():
        info = generate_dataset(
            root,
            n_classes=classes,
            train_per_class=30,
            test_per_class=8,
            image_size=(320, 240),
            seed=0,
            gps_fraction=0.4,
            rotated_fraction=0.2,
        )
        print(
            f"    generated {info['counts']['train']} training and {info['counts']['test']} held-out photos "
            f"of {len(info['classes'])} synthetic landmarks in {root}"
        )
    return root


def _day_of_uploads(photos: Path, work: Path) -> Path:
    """Held-out photos in per-user folders, plus the bad-file corpus (they must come out as failed rows)."""
    from landmark_core.synthetic import write_bad_corpus

    day = work / "uploads" / "2026-11-24"
    if day.exists():
        shutil.rmtree(day)
    test = [f for f in sorted((photos / "test").rglob("*")) if f.is_file()] or [
        f for f in sorted((photos / "val").rglob("*")) if f.is_file()
    ]
    for i, f in enumerate(test):
        dest = day / f"user{i % 4}" / f"{f.parent.name}_{f.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    bad = write_bad_corpus(day / "user9")
    print(f"    {len(test)} held-out photos + {len(bad)} odd or broken files in {day}")
    return day


@checks_config
def run(cfg: DemoConfig) -> int:
    t0 = time.time()
    work = Path(cfg.out)
    work.mkdir(parents=True, exist_ok=True)
    step(1, "photos")
    photos = _photos(cfg.data, work, cfg.classes)

    step(
        2,
        "a local Ray"
        + (
            f" and the model in {cfg.model}"
            if cfg.model
            else "; train EfficientNet-Lite0 on it (frozen backbone, 2 workers)"
        ),
    )
    server = None
    if not cfg.no_s3:  # before Ray starts: its workers inherit the S3 keys from this process's environment
        server = _start_s3_server(work)
    try:
        model, tags = _train_tag_query(cfg, photos, work, server)
    finally:
        step(6, "stop what the demo started")
        if server is not None:
            server.stop()
        import ray

        ray.shutdown()
    again = (
        f" (on the S3 server the demo stopped; to query them again: python -m landmark_core.devs3 "
        f"{work / 'seaweedfs'}, then the variables it prints)"
        if server is not None
        else ""
    )
    print(
        f"\nDone in {time.time() - t0:.0f}s. Open {work / 'report' / 'report.html'}; model in {model}; "
        f"tags in {tags}{again}."
    )
    return 0


def _train_tag_query(cfg: "DemoConfig", photos: Path, work: Path, server):
    from jobs._ray import init_ray
    from jobs.train import TrainConfig, run as train

    init_ray(None)
    if cfg.model:
        model = Path(cfg.model)
        print(f"    skipped: using the trained model in {model}")
    else:
        model = work / "model"
        metrics = train(
            TrainConfig(
                data=str(photos),
                output=str(model),
                storage=str(work / "ray_results"),
                model="efficientnet_lite0",
                freeze_backbone=True,
                workers=2,
                epochs=cfg.epochs,
                feature_views=2,
            )
        )
        print(
            f"    test top-1 {metrics.get('test_top1', float('nan')):.3f}; model in {model}; "
            f"report PNGs in {model / 'report'}"
        )

    step(3, "a day of uploads" + ("" if server is None else " into a local SeaweedFS S3 bucket"))
    day = _day_of_uploads(photos, work)
    tags, src, endpoint = str(work / "tags"), str(day), None
    if server is not None:
        src, tags, endpoint = _upload(server, day)

    step(4, "the nightly tag job, then the same job again")
    from jobs.tag import TagConfig, run as tag

    cfg = TagConfig(input=src, output=tags, model=str(model), s3_endpoint=endpoint)
    first = tag(cfg)
    _print_accuracy(tags, str(model), endpoint, first["listed"])
    second = tag(cfg)
    print(
        f"    second run tagged {second['counts']['tagged'] + second['counts']['no_landmark']} photos "
        f"({second['skipped']} already tagged, {second['skipped_undecodable']} of them broken files not read again; "
        f"{second['counts']['failed']} failed)"
    )

    step(5, "query the tags and write the HTML report")
    from jobs.query import main as query_main
    from jobs.report import main as report_main

    extra = ["--s3-endpoint", endpoint] if endpoint else []
    query_main(["--tags", tags, "--summary"] + extra)
    query_main(["--tags", tags, "--status", "tagged", "--limit", "8"] + extra)
    report_main(["--tags", tags, "--out", str(work / "report"), "--model", str(model)] + extra)
    return model, tags


def _print_accuracy(tags: str, model: str, endpoint: str | None, listed: int) -> None:
    """How many held-out photos got their own landmark: an upload is named <class folder>_<file>."""
    from landmark_core import storage, tagstore
    from landmark_core.artifact import load

    folders = {lm.folder: lm.name for lm in load(model, storage_options=storage.S3Options(endpoint=endpoint)).catalog}
    rows = tagstore.read(tags, columns=["uri", "landmark"], opts=storage.S3Options(endpoint=endpoint))
    right = total = 0
    for uri, landmark in zip(rows.column("uri").to_pylist(), rows.column("landmark").to_pylist()):
        base = uri.rsplit("/", 1)[-1]
        matches = [f for f in folders if base.startswith(f + "_")]
        if matches:  # the longest folder that prefixes the name ("arch_bridge_1.jpg" is not "arch")
            total += 1
            right += landmark == folders[max(matches, key=len)]
    print(
        f"    {listed} objects, {rows.num_rows} rows; held-out photos given their own landmark: "
        f"{right}/{total} ({right / max(total, 1):.1%})"
    )


def _start_s3_server(work: Path):
    import os

    from landmark_core.devs3 import SeaweedS3

    shutil.rmtree(work / "seaweedfs", ignore_errors=True)
    server = SeaweedS3(work / "seaweedfs").start()
    env = {k: v for k, v in server.env().items() if k != "AWS_ENDPOINT_URL_S3"}  # jobs get --s3-endpoint
    os.environ.update(env)  # the demo's own throwaway keys, for boto3/pyarrow here and in Ray's workers
    print(f"    started SeaweedFS S3 at {server.endpoint} (credentials required, loopback only)")
    return server


def _upload(server, day: Path):
    server.make_bucket("uploads")
    server.make_bucket("tags")
    client = server.client()
    for f in sorted(day.rglob("*")):
        if f.is_file():
            client.put_object(Bucket="uploads", Key=f"2026-11-24/{f.relative_to(day)}", Body=f.read_bytes())
    print(f"    uploaded to s3://uploads/2026-11-24/ at {server.endpoint}")
    return "s3://uploads/2026-11-24", "s3://tags/landmarks", server.endpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark demo", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="a real class-folder dataset instead of the synthetic one")
    p.add_argument("--out", default="out/demo", help="where everything goes (default out/demo)")
    p.add_argument("--classes", type=int, default=6, help="synthetic landmarks (default 6)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs of the demo's model (default 6)")
    p.add_argument("--no-s3", action="store_true", help="keep the uploads and tags on local disk")
    p.add_argument("--model", default=None, help="tag with this trained model instead of training one")
    return run_cli(p, argv, config=lambda ns: fields_of(DemoConfig, ns), run=run)


if __name__ == "__main__":
    sys.exit(main())
