"""Grow the catalog without retraining: `landmark catalog add | remove | list | upgrade | eval`.

    add      photos of a new landmark (or class folders of many) -> the model's backbone (Ray Data when there
             are many) -> gallery + abstention bank + catalog -> abstain threshold and recognizer measured again
             on held-back photos -> a new artifact (new model_id) at --output
    remove   a landmark out of the catalog (enrolled: out of the gallery; trained: also its head column)
    list     the catalog: id, name, location, head or enrolled, gallery photos
    upgrade  an artifact trained before the gallery existed gets one, from its own training data
    eval     top-1 on class folders of photos, and how many photos of no catalog landmark get a tag

The network is never trained: enrolling five landmarks takes seconds to a minute on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from jobs._cli import ConfigError, check_accept_rate, checks_config, fields_of, run_cli
from landmark_core import enroll, storage
from landmark_core.artifact import ArtifactError, load as load_artifact, save as save_artifact
from landmark_core.catalog import (
    Catalog,
    CatalogError,
    coords_file_beside,
    coords_file_note,
    load_coords,
    no_location_note,
)
from landmark_core.datasets import DatasetError, _class_split, list_files, load_labelled
from landmark_core.onnx_runtime import RUNTIMES, RuntimeChoiceError, check_runtime
from landmark_core.recognizer import RECOGNIZERS
from landmark_core.status import TAGGED

ACTIONS = ("add", "remove", "list", "upgrade", "eval")


@dataclass(frozen=True)
class CatalogConfig:
    action: str
    model: str
    output: str | None = None
    name: str | None = None  # add: the new landmark's name; remove: the landmark (name or folder)
    lat: float | None = None
    lon: float | None = None
    country: str | None = None
    photos: str | None = None  # add: a directory or s3:// prefix of one landmark's photos
    from_folders: str | None = None  # add: class folders, one landmark each
    coords: str | None = None  # CSV/JSON of folder -> lat, lon, country (else the known table)
    max_photos: int | None = None  # add: at most this many photos per landmark (seeded choice)
    holdout: float = enroll.DEFAULT_HOLDOUT
    recognizer: str | None = None  # None: measured (best top-1 on the held-out photos)
    data: str | None = None  # upgrade: the model's training data (class folders)
    unknown: tuple[str, ...] = ()  # eval: folders of photos of no catalog landmark
    accept_rate: float | None = None  # eval: the abstain threshold from this share of held-out photos
    runtime: str = "auto"
    batch_size: int = 32
    ray_min_photos: int = 400  # embed with Ray Data from this many photos on
    seed: int = 0
    as_json: bool = False
    s3_endpoint: str | None = None
    ray_address: str | None = None

    def check(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if not self.model:
            raise ConfigError("--model is required")
        if self.action in ("add", "remove", "upgrade") and not self.output:
            raise ConfigError(f"--output is required for `catalog {self.action}` (the new artifact's directory)")
        if self.output and _same_place(self.output, self.model):
            raise ConfigError("--output must differ from --model: the old artifact stays as it is")
        if self.action == "add":
            self._check_add()
        if self.action == "remove" and not self.name:
            raise ConfigError("--name is required for `catalog remove` (the landmark's name or folder)")
        if self.action == "upgrade" and not self.data:
            raise ConfigError("--data is required for `catalog upgrade` (the model's training data)")
        if self.action == "eval" and not (self.photos or self.unknown):
            raise ConfigError("`catalog eval` needs --photos CLASS_FOLDERS and/or --unknown DIR")
        for flag, v in (("--batch-size", self.batch_size), ("--ray-min-photos", self.ray_min_photos)):
            if v <= 0:
                raise ConfigError(f"{flag} must be > 0, got {v}")
        if self.seed < 0:  # else numpy's "expected non-negative integer", after the model and photos are read
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.accept_rate is not None:
            check_accept_rate(self.accept_rate)
        if self.recognizer is not None and self.recognizer not in RECOGNIZERS:
            raise ConfigError(f"--recognizer must be one of {', '.join(RECOGNIZERS)}, got {self.recognizer!r}")
        try:
            check_runtime(self.runtime)
            storage.check_locations(
                {
                    "--model": self.model,
                    "--output": self.output,
                    "--photos": self.photos,
                    "--from-folders": self.from_folders,
                    "--data": self.data,
                },
                self.s3_options(),
            )
        except (RuntimeChoiceError, storage.StorageError) as e:
            raise ConfigError(str(e)) from None
        for flag, path in (
            ("--photos", self.photos),
            ("--from-folders", self.from_folders),
            ("--data", self.data),
            *(("--unknown", u) for u in self.unknown),
        ):
            if path and not storage.is_s3(path) and not _is_dir(path):
                raise ConfigError(f"{flag} {path}: no such directory")
        if self.coords and not _is_file(self.coords):
            raise ConfigError(f"--coords {self.coords}: no such file")

    def _check_add(self) -> None:
        if bool(self.photos) == bool(self.from_folders):
            raise ConfigError("give exactly one of --photos DIR (with --name) and --from-folders DIR")
        if self.photos and not self.name:
            raise ConfigError("--photos needs --name (the new landmark's name)")
        if self.from_folders and (self.name or self.lat is not None or self.lon is not None):
            raise ConfigError(
                "--from-folders takes names and coordinates from the folders (--coords CSV or the "
                "known table), not --name/--lat/--lon"
            )
        if (self.lat is None) != (self.lon is None):
            raise ConfigError("give both --lat and --lon, or neither")
        if self.lat is not None and not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            raise ConfigError(f"--lat/--lon out of range: {self.lat}, {self.lon}")
        if self.country is not None and not (
            len(self.country) == 2 and self.country.isascii() and self.country.isalpha()
        ):
            raise ConfigError(f"--country must be an ISO 3166-1 alpha-2 code such as PT or VN, got {self.country!r}")
        if self.max_photos is not None and self.max_photos < 2:
            raise ConfigError(f"--max-photos must be >= 2 (one for the gallery, one held back), got {self.max_photos}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"--holdout must be in (0, 1), got {self.holdout}")

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint)


def _is_dir(p: str) -> bool:
    from pathlib import Path

    return Path(p).is_dir()


def _same_place(a: str, b: str) -> bool:
    """The same directory however it is spelled (./m, m/, /abs/m, through a link); s3:// URIs by text."""
    from pathlib import Path

    if storage.is_s3(a) or storage.is_s3(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _is_file(p: str) -> bool:
    from pathlib import Path

    return Path(p).is_file()


# ---------------------------------------------------------------- actions


@checks_config
def run(cfg: CatalogConfig) -> dict:
    t0 = time.perf_counter()
    # numpy tensors load faster and are all that listing and the ONNX runtimes need; the torch runtime needs torch's
    numpy_ok = cfg.action == "list" or (cfg.action == "eval" and cfg.runtime in ("onnx", "onnx-int8"))
    art = _load(cfg, tensors="numpy" if numpy_ok else "torch")
    if cfg.action == "list":
        rows = enroll.describe(art)
        _print_rows(rows, cfg.as_json)
        return {"landmarks": rows, "model_id": art.model_id}
    if cfg.action == "eval":
        return _evaluate(cfg, art)
    if cfg.action == "remove":
        new = enroll.remove(art, cfg.name)
        return _write(cfg, new, t0, {})
    if cfg.action == "add":
        enroll.check_can_enroll(art)  # before minutes of embedding photos
    predictor = _predictor(cfg, art)
    if cfg.action == "upgrade":
        new, timings = _upgrade(cfg, art, predictor)
    else:
        landmarks, timings = _new_landmarks(cfg, art, predictor)
        new = enroll.add(art, landmarks, holdout=cfg.holdout, seed=cfg.seed, recognizer=cfg.recognizer)
    return _write(cfg, new, t0, timings, onnx_of=predictor)


def _load(cfg: CatalogConfig, tensors: str):
    try:
        return load_artifact(cfg.model, storage_options=cfg.s3_options(), tensors=tensors)
    except ArtifactError as e:
        raise ConfigError(f"--model: {e}") from None


def _predictor(cfg: CatalogConfig, art, accept_rate: float | None = None):
    from landmark_core.predictor import Predictor, default_threads

    return Predictor(art, k=1, runtime=cfg.runtime, threads=default_threads(), accept_rate=accept_rate)


def _write(cfg: CatalogConfig, art, t0: float, timings: dict, onnx_of=None) -> dict:
    try:
        model_id = save_artifact(art, cfg.output, storage_options=cfg.s3_options())
    except Exception as e:
        raise ConfigError(
            f"--output {cfg.output}: could not write the artifact ({storage.redact(str(e))[:200]})"
        ) from None
    if onnx_of is not None and onnx_of._onnx is not None:
        _reuse_onnx(onnx_of, art)
    m = art.metrics
    summary = {
        "model_id": model_id,
        "output": cfg.output,
        "parent_model_id": m["parent_model_id"],
        "change": m["catalog_changes"][-1],
        "landmarks": len(art.catalog),
        "recognizer": m["recognizer"],
        "recognizer_val_top1": m["recognizer_val_top1"],
        "n_val": m["n_val"],
        "abstain_threshold": m["abstain_threshold"],
        "val_false_abstain": m["val_false_abstain"],
        "seconds": round(time.perf_counter() - t0, 2),
        **timings,
    }
    print(
        f"[catalog] wrote {cfg.output} (model_id {model_id}, from {m['parent_model_id']}): "
        f"{len(art.catalog)} landmarks; recognizer {m['recognizer']} (val top-1 "
        + ", ".join(f"{k} {v:.3f}" for k, v in m["recognizer_val_top1"].items())
        + f" on {m['n_val']} held-out photos); abstain threshold {m['abstain_threshold']:.4f}; "
        f"{summary['seconds']}s",
        flush=True,
    )
    print(
        f"[catalog] photos tagged by the old model are not re-tagged by `landmark tag` unless asked: rerun it "
        f"with --model {cfg.output} --retag (or on the photos you want re-tagged)",
        flush=True,
    )
    return summary


def _reuse_onnx(predictor, art) -> None:
    """The network did not change (unless a head column was removed): the new model_id's ONNX model is the old
    one's, so the first tag run need not export and quantise it again."""
    from landmark_core.onnx_runtime import cache_model, model_bytes

    if art.spec.num_classes == predictor.artifact.spec.num_classes:
        cache_model(art.model_id, predictor.runtime, model_bytes(predictor.artifact, predictor.runtime))


def _upgrade(cfg: CatalogConfig, art, predictor) -> tuple:
    try:
        data = load_labelled(cfg.data, seed=cfg.seed, opts=cfg.s3_options())
    except DatasetError as e:
        raise ConfigError(str(e)) from None
    if data.catalog.folders != art.catalog.folders:
        raise ConfigError(
            f"--data {cfg.data}: its classes {data.catalog.folders} are not the model's {art.catalog.folders}"
        )
    t = time.perf_counter()
    train = _embed(cfg, predictor, data.train.uris)
    val = _embed(cfg, predictor, data.val.uris)
    labels = dict(zip(data.train.uris + data.val.uris, data.train.labels + data.val.labels))
    new = enroll.with_gallery(
        art, train, np.array([labels[u] for u in train.uris]), val, np.array([labels[u] for u in val.uris])
    )
    return new, {"embed_seconds": round(time.perf_counter() - t, 2), "photos": len(train.uris) + len(val.uris)}


def _new_landmarks(cfg: CatalogConfig, art, predictor) -> tuple[list, dict]:
    opts = cfg.s3_options()
    if cfg.photos:
        key = enroll.slug(cfg.name)
        groups = {key: _photos(cfg, list_files(cfg.photos, opts), cfg.photos)}
        info = {key: {"name": cfg.name, "lat": cfg.lat, "lon": cfg.lon, "country": cfg.country and cfg.country.upper()}}
    else:
        root = cfg.from_folders.rstrip("/")
        by_class = _class_split(list_files(root, opts), root)
        if not by_class:
            raise ConfigError(f"--from-folders {root}: no class folders with photos in it")
        groups = {f: _photos(cfg, fs, f"{root}/{f}") for f, fs in sorted(by_class.items())}
        coords_path = cfg.coords or coords_file_beside(root)  # as train reads one at --data's root
        flag = "--coords" if cfg.coords else f"--from-folders {root}:"
        try:
            coords = load_coords(coords_path) if coords_path else None
            cat = Catalog.from_folders(groups, coords=coords)
        except (CatalogError, ValueError, OSError) as e:
            raise ConfigError(f"{flag} {e}") from None
        if note := coords_file_note(coords, cat, f"{flag} {coords_path}", "class folder of --from-folders"):
            print(f"[catalog] warning: {note}", file=sys.stderr, flush=True)
        info = {lm.folder: {"name": lm.name, "lat": lm.lat, "lon": lm.lon, "country": lm.country} for lm in cat}
    _warn_without_location(cfg, info)
    t = time.perf_counter()
    everything = [u for fs in groups.values() for u in fs]
    embedded = _embed(cfg, predictor, everything)
    seconds = round(time.perf_counter() - t, 2)
    out = []
    for folder, uris in groups.items():
        sub = _subset(embedded, set(uris))
        out.append(enroll.NewLandmark(folder=folder, photos=sub, **info[folder]))
        for u, why in sub.failed.items():
            print(f"[catalog] warning: {u} skipped: {why}", file=sys.stderr, flush=True)
    return out, {"embed_seconds": seconds, "photos": len(everything)}


def _warn_without_location(cfg: CatalogConfig, info: dict) -> None:
    missing = [v["name"] for v in info.values() if v["lat"] is None or v["lon"] is None]
    how = "--lat and --lon" if cfg.photos else "--coords FILE (CSV: folder,lat,lon[,country])"
    if note := no_location_note(missing, len(info), what="new landmarks", how=how):
        print(f"[catalog] {note}", file=sys.stderr, flush=True)


def _photos(cfg: CatalogConfig, uris: list[str], where: str) -> list[str]:
    if not uris:
        raise ConfigError(f"{where}: no photos found")
    if cfg.max_photos is not None and len(uris) > cfg.max_photos:
        pick = np.random.default_rng(cfg.seed).permutation(len(uris))[: cfg.max_photos]
        uris = [uris[i] for i in sorted(pick)]
    return uris


def _subset(e: enroll.Embedded, uris: set[str]) -> enroll.Embedded:
    idx = [i for i, u in enumerate(e.uris) if u in uris]
    return enroll.Embedded(
        [e.uris[i] for i in idx], e.logits[idx], e.emb[idx], {u: r for u, r in e.failed.items() if u in uris}
    )


def _embed(cfg: CatalogConfig, predictor, uris: list[str]) -> enroll.Embedded:
    """In this process for a handful of photos; Ray Data tasks (one per core) when there are many."""
    if len(uris) < cfg.ray_min_photos:
        return enroll.embed_uris(predictor, uris, cfg.s3_options(), batch_size=cfg.batch_size)
    return _embed_with_ray(cfg, predictor, uris)


def _embed_with_ray(cfg: CatalogConfig, predictor, uris: list[str]) -> enroll.Embedded:
    import ray

    from jobs._ray import init_ray

    init_ray(cfg.ray_address, worker_env=None)
    onnx = None if predictor._onnx is None else ray.put(_onnx_bytes(predictor))
    spec = {
        "model": cfg.model,
        "model_id": predictor.model_id,
        "k": 1,
        "min_score": None,
        "accept_rate": None,
        "s3_endpoint": cfg.s3_endpoint,
        "runtime": predictor.runtime,
        "onnx_model": onnx,
        "threads": 1,
    }
    ds = ray.data.from_items([{"uri": u} for u in uris]).map_batches(
        embed_task,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={"predictor": spec, "opts": cfg.s3_options()},
    )
    rows = ds.take_all()
    ok = [r for r in rows if not r["error"]]
    failed = {r["uri"]: r["error"] for r in rows if r["error"]}
    order = {u: i for i, u in enumerate(uris)}
    ok.sort(key=lambda r: order[r["uri"]])
    return enroll._embedded(
        [r["uri"] for r in ok],
        [np.stack([r["logits"] for r in ok])] if ok else [],
        [np.stack([r["emb"] for r in ok])] if ok else [],
        failed,
    )


def _onnx_bytes(predictor) -> bytes:
    from landmark_core.onnx_runtime import model_bytes

    return model_bytes(predictor.artifact, predictor.runtime)


def embed_task(batch: dict, *, predictor: dict, opts) -> dict:
    """Ray Data task: uris -> logits and embeddings (the tag job's per-worker Predictor cache)."""
    from jobs._tag_worker import _worker_predictor

    p = _worker_predictor(predictor)
    uris = [str(u) for u in batch["uri"]]
    e = enroll.embed_uris(p, uris, opts, batch_size=len(uris))
    h = p.artifact.spec.num_classes
    d = e.emb.shape[1] if len(e.uris) else 1
    logits, emb = np.zeros((len(uris), h), np.float32), np.zeros((len(uris), d), np.float32)
    where = {u: i for i, u in enumerate(e.uris)}
    for i, u in enumerate(uris):
        if u in where:
            logits[i], emb[i] = e.logits[where[u]], e.emb[where[u]]
    return {
        "uri": np.array(uris, dtype=object),
        "error": np.array([e.failed.get(u, "") for u in uris], dtype=object),
        "logits": logits,
        "emb": emb,
    }


def _evaluate(cfg: CatalogConfig, art) -> dict:
    """Top-1 (whatever the abstention says), tagged-and-right, abstained, on class folders; tags on unknowns."""
    predictor = _predictor(cfg, art, accept_rate=cfg.accept_rate)
    out = {"model_id": art.model_id, "threshold": predictor.threshold}
    if cfg.photos:
        root = cfg.photos.rstrip("/")
        by_class = _class_split(list_files(root, cfg.s3_options()), root)
        try:
            labels = {f: art.catalog.find(f).id for f in by_class}
        except CatalogError as e:
            raise ConfigError(f"--photos {root}: {e}") from None
        uris = [u for f in sorted(by_class) for u in by_class[f]]
        y = np.array([labels[f] for f in sorted(by_class) for _ in by_class[f]])
        pred = _predict(cfg, predictor, uris)
        top1 = pred["topk_idx"][:, 0] == y
        tagged = pred["status"] == TAGGED
        out["known"] = {
            "photos": len(uris),
            "top1": float(top1.mean()),
            "tagged_right": float((top1 & tagged).mean()),
            "abstained": float((~tagged).mean()),
            "per_landmark": {f: float(top1[y == labels[f]].mean()) for f in sorted(by_class)},
        }
    for u in cfg.unknown:
        pred = _predict(cfg, predictor, list_files(u, cfg.s3_options()))
        out.setdefault("unknown", {})[u] = {
            "photos": int(len(pred["status"])),
            "tagged": float((pred["status"] == TAGGED).mean()),
        }
    print(json.dumps(out) if cfg.as_json else _eval_text(out), flush=True)
    return out


def _eval_text(out: dict) -> str:
    """`catalog eval` for a person: the shares in percent, a line per landmark and per unknown folder."""
    lines = [f"model {out['model_id']} (threshold {out['threshold']:.4g})"]
    if known := out.get("known"):
        lines.append(
            f"known: {known['photos']} photos, top-1 {100 * known['top1']:.1f}%, tagged and right "
            f"{100 * known['tagged_right']:.1f}%, abstained {100 * known['abstained']:.1f}%"
        )
        lines += [f"  {f}: top-1 {100 * v:.1f}%" for f, v in known["per_landmark"].items()]
    for u, r in (out.get("unknown") or {}).items():
        lines.append(f"unknown {u}: {r['photos']} photos, tagged (a wrong location) {100 * r['tagged']:.1f}%")
    return "\n".join(lines)


def _predict(cfg: CatalogConfig, predictor, uris: list[str]) -> dict:
    from landmark_core.tagging import predict_batch, read_and_decode

    cols = []
    for s in range(0, len(uris), cfg.batch_size):
        chunk = uris[s : s + cfg.batch_size]
        dec = read_and_decode(
            {"uri": chunk, "etag": [None] * len(chunk), "size_bytes": [None] * len(chunk)},
            preset=predictor.preset,
            opts=cfg.s3_options(),
        )
        cols.append(predict_batch(predictor, dec))
    return {k: np.concatenate([c[k] for c in cols]) for k in ("status", "topk_idx")}


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return
    print(f"{'id':>3}  {'name':<32} {'lat':>9} {'lon':>10} {'cc':<3} {'source':<8} gallery")
    for r in rows:
        lat = "" if r["lat"] is None else f"{r['lat']:.4f}"
        lon = "" if r["lon"] is None else f"{r['lon']:.4f}"
        print(
            f"{r['id']:>3}  {r['name'][:32]:<32} {lat:>9} {lon:>10} {r['country'] or '':<3} {r['source']:<8} "
            f"{r['gallery_photos']}"
        )


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="landmark catalog", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    # each action takes the flags it uses, no others: a flag it would ignore is refused by name
    common = _flags(
        ("--model", dict(required=True, help="model artifact dir or s3:// URI")),
        ("--s3-endpoint", dict(default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")),
    )
    embeds = _flags(
        ("--runtime", dict(choices=RUNTIMES, default="auto", help="runtime that embeds the photos")),
        ("--batch-size", dict(type=int, default=32, help="photos per model call (default 32)")),
    )
    many = _flags(
        (
            "--ray-min-photos",
            dict(
                type=int,
                default=CatalogConfig.ray_min_photos,
                help="embed with Ray Data from this many photos on (default 400)",
            ),
        ),
        (
            "--ray-address",
            dict(default=None, help="the Ray cluster for those (default: $RAY_ADDRESS, else a local Ray)"),
        ),
    )
    writes = _flags(("--output", dict(required=True, help="directory (or s3://) of the new artifact")))
    a = sub.add_parser("add", parents=[common, embeds, many, writes], help="enroll new landmarks from photos")
    a.add_argument("--name", help="the new landmark's name (with --photos)")
    a.add_argument("--lat", type=float, help="the new landmark's latitude in degrees (with --lon)")
    a.add_argument("--lon", type=float, help="the new landmark's longitude in degrees (with --lat)")
    a.add_argument("--country", help="ISO 3166-1 alpha-2 code")
    a.add_argument("--photos", help="directory or s3:// prefix of the new landmark's photos")
    a.add_argument(
        "--from-folders", help="class folders, one new landmark each (names/locations from --coords or the known table)"
    )
    a.add_argument("--coords", help="CSV/JSON: folder|name, lat, lon[, country]")
    a.add_argument("--max-photos", type=int, help="use at most N photos of each landmark (seeded choice)")
    a.add_argument(
        "--holdout",
        type=float,
        default=enroll.DEFAULT_HOLDOUT,
        help="share of each landmark's photos held back to measure and set the threshold (default 0.2)",
    )
    a.add_argument(
        "--recognizer",
        choices=RECOGNIZERS,
        default=None,
        help="head | gallery | both (default: the best top-1 on the held-out photos)",
    )
    a.add_argument("--seed", type=int, default=0, help="the --max-photos choice and the held-out photos (default 0)")
    r = sub.add_parser("remove", parents=[common, writes], help="take a landmark out of the catalog")
    r.add_argument("--name", required=True, help="the landmark's name or folder")
    ls = sub.add_parser("list", parents=[common], help="show the catalog")
    ls.add_argument("--json", dest="as_json", action="store_true", help="one JSON object per landmark and line")
    u = sub.add_parser(
        "upgrade",
        parents=[common, embeds, many, writes],
        help="give an artifact trained before the gallery existed its gallery",
    )
    u.add_argument("--data", required=True, help="the model's training data (class folders)")
    u.add_argument("--seed", type=int, default=0, help="the training run's --seed: its validation split (default 0)")
    e = sub.add_parser("eval", parents=[common, embeds], help="top-1 on class folders; tags on photos of no landmark")
    e.add_argument("--photos", help="class folders named like the catalog's landmarks")
    e.add_argument("--unknown", action="append", default=[], help="photos of no catalog landmark (repeatable)")
    e.add_argument(
        "--accept-rate",
        type=float,
        default=None,
        help="abstain threshold accepting this share of the held-out photos (as `landmark tag`)",
    )
    e.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="print the result as one line of JSON (default: text, a line per landmark and folder)",
    )
    return p


def _flags(*flags: tuple[str, dict]) -> argparse.ArgumentParser:
    """A parent parser holding ``flags``, for the actions that use them."""
    p = argparse.ArgumentParser(add_help=False)
    for flag, kwargs in flags:
        p.add_argument(flag, **kwargs)
    return p


def config_from_args(ns: argparse.Namespace) -> CatalogConfig:
    return fields_of(CatalogConfig, ns, **({"unknown": tuple(ns.unknown)} if "unknown" in vars(ns) else {}))


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        build_parser(),
        argv,
        config=config_from_args,
        run=run,
        failures=(((enroll.EnrollError, CatalogError), 2),),
        prog=lambda cfg: f"landmark catalog {cfg.action}",
    )


if __name__ == "__main__":
    sys.exit(main())
