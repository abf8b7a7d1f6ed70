"""`landmark eval`: a model's open-world numbers on labelled photos, through the Predictor the tag job uses.

known DIR (class folders named as the catalog's) + unknown DIR... (any photos, each folder on its own)
  -> decode + Predictor (the tag job's preprocessing, score and threshold)
  -> per folder: right / abstained / wrong, or tagged; calibration among tagged photos; the coverage curve;
     an open-world model's shares at other --max-wrong-rate values (RATES)
  -> one row per photo (its outcome: right / abstained / wrong, tagged / no_landmark, or failed; the mistakes
     in the result, every row in photos.csv)
  -> an open-world model's catalog look-alikes: each known folder scored as if its landmark were not in the catalog
  -> near-copies: the photos that are copies of the ones the model learned from or fitted on (nearcopy)
  -> --compare-model: the same photos through a second model, compared photo by photo (McNemar)
  -> printed table | --json | --out DIR (eval.json, photos.csv, curve.png, reliability.png, report.html)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from jobs._cli import ConfigError, check_output_dir, check_threshold_flags, checks_config, fields_of, run_cli
from landmark_core import storage
from landmark_core.onnx_runtime import RUNTIMES
from landmark_core.status import FAILED, TAGGED


@dataclass(frozen=True)
class EvalConfig:
    model: str
    compare_model: str | None = None
    known: str | None = None
    unknown: tuple[str, ...] = ()
    out: str | None = None
    as_json: bool = False
    runtime: str = "auto"
    batch_size: int = 32
    min_score: float | None = None
    accept_rate: float | None = None
    max_wrong_rate: float | None = None
    copy_check: bool = True
    s3_endpoint: str | None = None

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint)

    def check(self) -> None:
        if not self.known and not self.unknown:
            raise ConfigError("--known or --unknown: give at least one folder of photos")
        for flag, d in [("--known", self.known)] + [("--unknown", u) for u in self.unknown]:
            if d and not storage.is_s3(d) and not Path(d).is_dir():
                raise ConfigError(f"{flag} {d}: no such directory")
        try:
            self.s3_options().check()
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_threshold_flags(self.min_score, self.accept_rate, self.max_wrong_rate)
        _check_folders_apart(self.known, self.unknown)
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.out:  # written at the end: a folder that cannot be would cost the whole evaluation
            check_output_dir("--out", self.out)


def _check_folders_apart(known: str | None, unknown: tuple[str, ...]) -> None:
    """Each photo in one row: an --unknown folder given twice (however spelt: ./u, u/, a link), or inside another
    folder given (or holding it), --known's included, would count its photos twice, as known and unknown alike."""
    folders = [("--known", known)] * bool(known) + [("--unknown", u) for u in unknown]
    where = [storage.absolute(f) for _, f in folders]
    for i, j in itertools.combinations(range(len(folders)), 2):
        (fa, a), (fb, b) = folders[i], folders[j]
        if where[i] == where[j]:
            raise ConfigError(f"{fb} {b}: the folder of {fa} {a} again, so its photos would count twice")
        if storage.inside(where[i], where[j]) or storage.inside(where[j], where[i]):
            raise ConfigError(f"{fb} {b} and {fa} {a}: one holds the other, so its photos would count twice")


@checks_config
def run(cfg: EvalConfig) -> dict:
    from landmark_core import evaluation

    predictor = _predictor(cfg, cfg.model, "--model")
    other = _predictor(cfg, cfg.compare_model, "--compare-model") if cfg.compare_model else None
    listed = _listed(cfg)
    sets = _labelled(cfg, listed, predictor, "--model")
    other_sets = _labelled(cfg, listed, other, "--compare-model") if other else None
    provenance = predictor.artifact.provenance
    reference, unlisted = _training_listing(cfg, provenance)
    held_in = not_held_out(cfg, provenance)
    held_in += linked_training_photos(_by_flag(cfg, listed), reference, named=held_in)
    for line in held_in:
        print(f"[eval] warning: {line}", file=sys.stderr, flush=True)
    known_features = {}
    outcomes, decision, failed, photos = _measure(cfg, predictor, sets, known_features)
    summary = _summary(predictor, outcomes, failed)
    copies = _near_copies(cfg, reference, unlisted, photos) if cfg.copy_check else None
    result = {
        "model_id": predictor.model_id,
        "threshold": predictor.threshold,
        "runtime": predictor.runtime,  # an open-world model's threshold is fitted per runtime: say whose
        "method": predictor.method,
        "stale_fit": predictor.stale_fit,  # why the threshold may not keep its wrong-tag rate, or None
        "not_held_out": held_in,  # folders the model learned from or fitted on: their numbers flatter it
        "near_copies": copies,  # photos that are copies of those: theirs too (None: not checked)
        "failed_photos": len(failed),
        "failed": failed,
        "summary": summary,
        "mistakes": _mistakes(photos),
        "curve": evaluation.coverage_curve(outcomes, decision=decision),
        "rates": _at_rates(predictor, outcomes, decision),
        "catalog_look_alikes": _catalog_look_alikes(predictor, sets, known_features),
    }
    if other is not None:
        other_outcomes, _, other_failed, other_photos = _measure(cfg, other, other_sets)
        result["compare"] = {
            "model_id": other.model_id,
            "threshold": other.threshold,
            "summary": _summary(other, other_outcomes, other_failed),
            **evaluation.paired(photos, other_photos),
        }
    if cfg.out:
        _write(cfg.out, result, photos)
    return result


def _summary(predictor, outcomes, failed: list[dict]) -> dict:
    """The per-folder shares of one model's outcomes, its failed photos' folders included."""
    from landmark_core import evaluation

    summary = evaluation.summary(outcomes, names=list(predictor.catalog.names))
    _add_failed(summary["folders"], failed)
    return summary


def _predictor(cfg: EvalConfig, model: str, flag: str):
    from landmark_core.artifact import ArtifactError
    from landmark_core.predictor import Predictor

    try:
        return Predictor.for_command(
            "[eval]",
            model,
            runtime=cfg.runtime,
            min_score=cfg.min_score,
            accept_rate=cfg.accept_rate,
            max_wrong_rate=cfg.max_wrong_rate,
            storage_options=cfg.s3_options(),
        )
    except ArtifactError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _measure(cfg: EvalConfig, predictor, sets: list, known_features: dict | None = None):
    """Every folder's photos (``_labelled`` sets) through ``predictor``: (outcomes of the photos read, their
    decision scores, the failed ones, one row per photo). ``known_features``, if given, gets each known folder's
    (logits, embeddings) of the photos read, in order, for the catalog look-alikes to score without reading them
    again."""
    import numpy as np

    from landmark_core import evaluation
    from landmark_core.predict import predict_paths

    names = predictor.catalog.names
    index = {name: i for i, name in enumerate(names)}
    recorded = _DecisionScores(predictor)
    parts, decisions, failed, photos = [], [], [], []
    for group, paths, labels in sets:
        # files, not photos: the table's photos column counts those read, its failed column the rest
        print(f"[eval] {group}: {len(paths)} files", file=sys.stderr, flush=True)
        kind = "unknown" if labels[0] == evaluation.UNKNOWN else "known"
        pred, score, tagged, keep, results = [], [], [], [], []
        recorded.batches.clear()
        recorded.features.clear()
        recorded.keep_features = known_features is not None and kind == "known"  # unknown folders' are not scored again
        for i, r in enumerate(predict_paths(paths, recorded, batch_size=cfg.batch_size, opts=cfg.s3_options())):
            results.append(r)
            if r.status == FAILED:  # not in the shares: named, with its reason, here and in the result
                print(f"[eval] failed: {r.path}: {r.error}", file=sys.stderr, flush=True)
                failed.append({"folder": group, "kind": kind, "path": r.path, "error": r.error})
                continue
            keep.append(i)
            pred.append(index[r.tags[0]["name"]])
            score.append(r.score)
            tagged.append(r.status == TAGGED)
        parts.append(evaluation.Outcomes.of(group, np.asarray(labels)[keep], pred, score, tagged))
        decision = np.concatenate(recorded.batches)
        decisions.append(decision[keep])
        if recorded.keep_features:
            known_features[group] = recorded.stacked_features()
        photos += [
            _photo_row(group, kind, r, names[y] if y != evaluation.UNKNOWN else None, d)
            for r, y, d in zip(results, labels, decision)
        ]
    return evaluation.Outcomes.concat(parts), np.concatenate(decisions), failed, photos


PHOTO_FIELDS = ("folder", "kind", "path", "expected", "outcome", "top1", "score", "decision_score", "error", "copy_of")


def _photo_row(folder: str, kind: str, r, expected: str | None, decision: float) -> dict:
    """One photo as eval saw it. ``outcome``: right / abstained / wrong (a known photo), tagged / no_landmark (an
    unknown one), or failed; ``top1`` the model's first landmark, tagged or not; ``score`` the row's, as the tag
    job writes it; ``decision_score`` the one the threshold is compared with (the same for an open-world model,
    the kNN score for a model trained without negatives)."""
    top1 = r.tags[0]["name"] if r.tags else None
    if r.status == FAILED:
        outcome = "failed"
    elif kind == "unknown":
        outcome = "tagged" if r.status == TAGGED else "no_landmark"
    else:
        outcome = "abstained" if r.status != TAGGED else ("right" if top1 == expected else "wrong")
    ok = r.status != FAILED
    return {
        "folder": folder,
        "kind": kind,
        "path": r.path,
        "expected": expected,
        "outcome": outcome,
        "top1": top1,
        "score": float(r.score) if ok and r.score is not None else None,
        "decision_score": float(decision) if ok else None,
        "error": r.error if not ok else None,
        "copy_of": None,  # set by _near_copies: the training photo this one is a copy of
    }


def _mistakes(photos: list[dict]) -> list[dict]:
    """The photos to look at: known photos not right (lowest decision score first: the furthest from being
    tagged), then unknown photos tagged (highest first: the most confident wrong locations)."""
    missed = sorted((p for p in photos if p["outcome"] in ("abstained", "wrong")), key=lambda p: p["decision_score"])
    wrong = sorted((p for p in photos if p["outcome"] == "tagged"), key=lambda p: -p["decision_score"])
    return missed + wrong


def _training_inputs(provenance: dict) -> tuple[str | None, list[str]]:
    """The model's training --data and --negatives, absolute, from its ``provenance.inputs``; an older artifact's
    flags are taken as relative to here."""
    inputs = provenance.get("inputs")
    if inputs is None:  # an artifact from before they were recorded: its flags as given, relative to here
        config = provenance.get("config") or {}
        inputs = {
            "data": config.get("data") and storage.absolute(config["data"]),
            "negatives": [storage.absolute(n) for n in config.get("negatives") or []],
        }
    return inputs.get("data"), inputs.get("negatives") or []


def not_held_out(cfg: EvalConfig, provenance: dict) -> list[str]:
    """The folders asked for that the model learned from or fitted its score on (its training run's --data
    outside the test split, its --negatives), one line each: numbers measured there are not held out."""
    data, negatives = _training_inputs(provenance)
    lines = []
    if cfg.known and data:
        known = storage.absolute(cfg.known)
        if storage.inside(known, data) and not storage.inside(known, storage.join(data, "test")):
            lines.append(
                f"--known {cfg.known}: photos of the model's training data (--data {data}) outside its test split: "
                "they trained the model or fitted its score, so these numbers are not held out"
            )
    for u in cfg.unknown:
        where = storage.absolute(u)
        if clash := next((n for n in negatives if storage.inside(where, n) or storage.inside(n, where)), None):
            lines.append(
                f"--unknown {u}: the model trained on part of the photos of --negatives {clash} and fitted its "
                "score and threshold on the rest (held back), so this folder's share tagged is not held out"
            )
        elif data and storage.inside(where, data):
            lines.append(f"--unknown {u}: inside the model's --data {data}: photos of its own landmarks")
    return lines


def _training_listing(cfg: EvalConfig, provenance: dict) -> tuple[list[str], list[str]]:
    """(the photos the model learned from or fitted on, as the artifact records its --data and --negatives, that
    can be listed from here; the recorded folders that cannot: moved, another machine's paths, no access)."""
    data, negatives = _training_inputs(provenance)
    listed, unlisted = [], []
    for root in [r for r in [data, *negatives] if r]:
        found = _listed_or_none(root, cfg.s3_options())
        listed += found or []
        unlisted += [] if found else [root]
    return _training_photos(listed, data), unlisted


def _by_flag(cfg: EvalConfig, listed: list) -> dict[str, list[str]]:
    """The photos of each folder flag given ("--known DIR" or "--unknown DIR"), from ``_listed``'s sets."""
    known = [p for _, paths, folder in listed if folder is not None for p in paths]
    unknown = [paths for _, paths, folder in listed if folder is None]
    folders = {f"--known {cfg.known}": known} if known else {}
    return folders | {f"--unknown {u}": ps for u, ps in zip(cfg.unknown, unknown)}


def linked_training_photos(folders: dict[str, list[str]], reference: list[str], *, named=()) -> list[str]:
    """One line for each folder (``{flag value: its photos}``) holding local files that are photos the model
    learned from or fitted on, reached through a link (symbolic or hard) from another folder: the folder rule
    of ``not_held_out`` compares paths and does not see them. Folders ``named`` by a line already are skipped."""
    ids = {i for i in map(_file_id, reference) if i is not None}
    lines = []
    for flag, paths in folders.items():
        if not ids or any(line.startswith(f"{flag}: ") for line in named):
            continue
        if n := sum(_file_id(p) in ids for p in paths):
            lines.append(
                f"{flag}: {n} of its {len(paths)} photos are files the model learned from or fitted on, reached "
                "through links, so these numbers are not held out"
            )
    return lines


def _file_id(uri: str) -> tuple[int, int] | None:
    """A local file's identity, links followed (device and inode); None for s3:// or a file that is gone."""
    if storage.is_s3(uri):
        return None
    try:
        st = os.stat(uri)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _near_copies(cfg: EvalConfig, reference: list[str], unlisted: list[str], photos: list[dict]) -> dict | None:
    """The photos evaluated that are near-copies (landmark_core.nearcopy) of a photo the model learned from or
    fitted on (``reference``, from ``_training_listing``): its --data outside the test split and its --negatives,
    as the artifact records them. Each one's row gets ``copy_of``; the known right and unknown tagged shares are
    also given without them. None, said on stderr, when none of those photos can be listed from here (moved,
    another machine's paths, no access) or the artifact does not say where they are."""
    from landmark_core import nearcopy

    opts = cfg.s3_options()
    if unlisted:  # a folder of another machine, or gone: the numbers stand, unchecked against it
        print(
            f"[eval] note: near-copies not checked against {', '.join(unlisted)}: the model trained or fitted on "
            "photos there, and no photo there can be listed from here",
            file=sys.stderr,
            flush=True,
        )
    if not reference:
        if not unlisted:  # an artifact from before its inputs were recorded
            print(
                "[eval] note: near-copies not checked: the model does not record its training photos", file=sys.stderr
            )
        return None
    read = [p["path"] for p in photos if p["outcome"] != "failed"]
    print(
        f"[eval] near-copies: {len(read)} photos against the model's {len(reference)} training photos",
        file=sys.stderr,
        flush=True,
    )
    ref_hashes, ref_uris = nearcopy.hash_uris(reference, opts)
    if unread := len(reference) - len(ref_uris):  # no photo (or gone since): it cannot have trained the model
        print(f"[eval] note: near-copies: {unread} of the training photos could not be read", file=sys.stderr)
    hashes, uris = nearcopy.hash_uris(read, opts)
    found = {uris[i]: (ref_uris[j], bits) for i, (j, bits) in nearcopy.copies(hashes, ref_hashes).items()}
    rows = []
    for p in photos:
        if p["path"] in found:
            p["copy_of"], bits = found[p["path"]]
            rows.append(
                {"folder": p["folder"], "kind": p["kind"], "path": p["path"], "copy_of": p["copy_of"], "bits": bits}
            )
    result = {
        "reference_photos": len(ref_uris),
        "reference_unreadable": len(reference) - len(ref_uris),
        "max_bits": nearcopy.MAX_BITS,
        "photos": rows,
        "known_right_without_copies": _share_of(photos, KNOWN_OUTCOMES, "right", skip=found),
        "unknown_tagged_without_copies": _share_of(photos, UNKNOWN_OUTCOMES, "tagged", skip=found),
        "not_checked": unlisted,  # training folders that could not be listed from here
    }
    result["warning"] = copies_line(result, photos) if rows else None
    if rows:
        print(f"[eval] warning: {result['warning']}", file=sys.stderr, flush=True)
    return result


def _training_photos(listed: list[str], data: str | None) -> list[str]:
    """Of the photos listed under the training roots, those training read: under --data, its train/ and val/
    when it has train/ (as datasets.load_labelled reads it; a GLDv2 root's images are in train/ too), else all
    but a test/ made since (load_labelled refuses a root with test/ or val/ but no train/); every photo under a
    --negatives root."""
    if not data:
        return listed
    train, val, test = (storage.join(data, part) for part in ("train", "val", "test"))
    has_train = any(storage.inside(u, train) for u in listed)
    return [
        u
        for u in listed
        if not storage.inside(u, data)
        or (storage.inside(u, train) or storage.inside(u, val) if has_train else not storage.inside(u, test))
    ]


def _listed_or_none(root: str, opts: storage.S3Options) -> list[str] | None:
    from landmark_core.datasets import list_files

    if not storage.is_s3(root) and not Path(root).is_dir():
        return None
    try:
        return list_files(root, opts) or None
    except Exception:  # no access, no such bucket: said by the caller, with the other roots
        return None


KNOWN_OUTCOMES, UNKNOWN_OUTCOMES = ("right", "abstained", "wrong"), ("tagged", "no_landmark")


def _share_of(photos: list[dict], outcomes: tuple, which: str, *, skip=()) -> float | None:
    rows = [p for p in photos if p["outcome"] in outcomes and p["path"] not in skip]
    return sum(p["outcome"] == which for p in rows) / len(rows) if rows else None


def copies_line(copies: dict, photos: list[dict]) -> str:
    """What the near-copies do to the headline shares, in one line (printed, and in report.html)."""
    from landmark_core.evaluation import share_text

    by_kind = Counter(r["kind"] for r in copies["photos"])
    by_folder = Counter(r["folder"] for r in copies["photos"])
    read = Counter(p["kind"] for p in photos if p["outcome"] != "failed")
    shares = [
        f"{label} {share_text(_share_of(photos, outcomes, which))}, {share_text(copies[key])} without them"
        for kind, label, outcomes, which, key in (
            ("known", "known right", KNOWN_OUTCOMES, "right", "known_right_without_copies"),
            ("unknown", "unknown tagged", UNKNOWN_OUTCOMES, "tagged", "unknown_tagged_without_copies"),
        )
        if by_kind[kind]
    ]
    folders = ", ".join(f"{f} {n}" for f, n in by_folder.most_common(5)) + (" and more" if len(by_folder) > 5 else "")
    counts = " and ".join(f"{by_kind[k]} of the {read[k]} {k} photos" for k in ("known", "unknown") if read[k])
    return (
        f"{counts} are near-copies of photos the model learned from or fitted on ({folders}; a difference hash "
        f"within {copies['max_bits']} of 256 bits: eval.json near_copies, photos.csv copy_of): " + "; ".join(shares)
    )


RATES = (0.005, 0.01, 0.02, 0.05)  # --max-wrong-rate values shown beside the one evaluated


def _at_rates(predictor, outcomes, decision) -> list[dict] | None:
    """An open-world model at other --max-wrong-rate values (RATES): each one's threshold, from the held-back
    scores in the artifact as `landmark tag --max-wrong-rate` computes it, and what it does on these photos. None
    for a model trained without negatives (no rate to set)."""
    from landmark_core import evaluation

    if "neg_fit_scores" not in predictor.extra:
        return None
    try:
        thresholds = [predictor.threshold_at(max_wrong_rate=r) for r in RATES]
    except ValueError as e:  # (an artifact without this runtime's held-back scores: said, the rest stands)
        print(f"[eval] no other rates: {e}", file=sys.stderr, flush=True)
        return None
    points = evaluation.at_thresholds(outcomes, thresholds, decision=decision)
    return [{"max_wrong_rate": r, "threshold": t, **p} for r, t, p in zip(RATES, thresholds, points)]


def _catalog_look_alikes(predictor, sets: list, known_features: dict) -> list[dict] | None:
    """Each known folder scored as if its landmark were not in the catalog (Predictor.open_world_scores with
    ``absent``): the share of its photos tagged as another catalog landmark, and as which. A high share says two
    catalog landmarks look alike to the model, and a sight like them that no folder shows will be tagged too; a
    low one clears nothing, since it sees only look-alikes inside the catalog. An open-world model's only (None
    otherwise), on the features ``_measure`` kept of the photos it read (``known_features``)."""
    import numpy as np

    from landmark_core.evaluation import UNKNOWN

    if predictor.method != "openworld" or len(predictor.catalog) < 2:
        return None
    names, rows = predictor.catalog.names, []
    for group, _paths, labels in sets:
        absent = labels[0]
        if absent == UNKNOWN:
            continue
        others = [n for i, n in enumerate(names) if i != absent]
        logits, emb = known_features[group]
        shown = len(logits)
        tagged = Counter()
        if shown:
            score = predictor.open_world_scores(logits, emb, absent=absent)
            named = np.delete(logits, absent, axis=1).argmax(axis=1)
            tagged.update(others[i] for i in named[score.astype(np.float32) >= predictor.threshold])  # as rows carry it
        rows.append(
            {
                "folder": group,
                "landmark": names[absent],
                "photos": shown,
                "tagged": sum(tagged.values()) / shown if shown else None,
                "as": dict(tagged.most_common()),
            }
        )
    return rows


class _DecisionScores:
    """The Predictor, keeping each batch's decision score (``abstain_score``, one per photo, failed ones too): the
    curve moves the threshold on what the model decides on, which for a model trained without negatives is not
    the row's score (its kNN score against the softmax). While ``keep_features`` is set (``_measure`` sets it per
    folder), also the (logits, embeddings) of each batch's decoded photos."""

    def __init__(self, predictor):
        self._predictor, self.batches, self.features, self.keep_features = predictor, [], [], False

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def __call__(self, batch: dict) -> dict:
        out = self._predictor(batch, features=self.keep_features)
        self.batches.append(out["abstain_score"])
        if self.keep_features and (kept := out.pop("features")) is not None:
            self.features.append(kept)
        return out

    def stacked_features(self):
        """The kept batches' (logits, embeddings), one row per decoded photo in order; empty arrays if none."""
        import numpy as np

        if not self.features:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return tuple(np.concatenate([f[i] for f in self.features]) for i in (0, 1))


def _add_failed(rows: list[dict], failed: list[dict]) -> None:
    """Each folder's row gets its count of unreadable photos; a folder none of whose photos could be read gets a
    row of its own (0 photos), so that it shows in the table rather than vanish."""
    by_folder = Counter((f["folder"], f["kind"]) for f in failed)
    for row in rows:
        row["failed"] = by_folder.pop((row["folder"], row["kind"]), 0)
    rows += [{"folder": g, "kind": k, "photos": 0, "failed": n} for (g, k), n in by_folder.items()]


def _listed(cfg: EvalConfig) -> list[tuple[str, list[str], str | None]]:
    """(folder name, paths, its class folder or None for an unknown folder): every folder listed once, before
    a photo is read."""
    from landmark_core.datasets import _class_split, list_files

    sets = []
    if cfg.known:
        by_class = _class_split(list_files(cfg.known, cfg.s3_options()), cfg.known.rstrip("/"))
        if not by_class:
            raise ConfigError(f"--known {cfg.known}: no class folders with photos (expected <folder>/<landmark>/*.jpg)")
        sets += [(folder, paths, folder) for folder, paths in sorted(by_class.items())]
    known = {folder for _, _, folder in sets}  # an unknown folder's row must not be a landmark's
    for u, label in zip(cfg.unknown, folder_labels(cfg.unknown, taken=known)):
        paths = list_files(u, cfg.s3_options())
        if not paths:
            raise ConfigError(f"--unknown {u}: no photos found")
        sets.append((label, paths, None))
    return sets


def _parts(folder: str) -> list[str]:
    """A folder's path parts, an s3:// bucket kept whole with its scheme ("s3://b", "x", "test")."""
    scheme, sep, rest = folder.rstrip("/").rpartition("://")
    parts = [p for p in rest.split("/") if p]
    return [f"{scheme}{sep}{parts[0]}", *parts[1:]] if sep and parts else parts


SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "images", "photos", "data"}


def folder_labels(folders: list[str], *, taken: set[str] = frozenset()) -> list[str]:
    """Each --unknown folder's name in the rows: its last path part, with as many parent parts as it takes to tell
    it from the others and from the ``taken`` names (the known folders' rows), and to say more than a split's name
    ("porto/test", not "test")."""
    parts = [_parts(f) for f in folders]
    depth = [1] * len(parts)

    def label(i: int) -> str:
        return "/".join(parts[i][-depth[i] :])

    while True:
        labels = [label(i) for i in range(len(parts))]
        vague = [
            i
            for i, lab in enumerate(labels)
            if depth[i] < len(parts[i])
            and (labels.count(lab) > 1 or lab in taken or parts[i][-depth[i]].lower() in SPLIT_NAMES)
        ]
        if not vague:
            return labels
        for i in vague:
            depth[i] += 1


def _labelled(cfg: EvalConfig, sets: list, predictor, flag: str) -> list[tuple[str, list[str], list[int]]]:
    """``sets`` with each photo's class in ``predictor``'s catalog (UNKNOWN for unknown folders); a class folder
    its catalog lacks is refused, naming the model's flag, before a photo is read."""
    from landmark_core.evaluation import UNKNOWN

    # a class folder is a landmark's folder as the model was trained on it, or its name
    folders = {n: i for i, n in enumerate(predictor.catalog.names)}
    folders.update({f: i for i, f in enumerate(predictor.catalog.folders)})
    known = [folder for _, _, folder in sets if folder is not None]
    if "test" in known and "test" not in folders:  # the data set's root, not its test split
        raise ConfigError(
            f"--known {cfg.known}: holds splits; give the test split, --known {cfg.known.rstrip('/')}/test"
        )
    if "train" in known and "train" not in folders and _is_gldv2_root(cfg):
        raise ConfigError(
            f"--known {cfg.known}: a GLDv2 root (train.csv, train/a/b/c/<id>.jpg) has no test split and no class "
            f"folders; make both with `landmark data split {cfg.known} --dest DIR` (before training on DIR) and "
            "give --known DIR/test"
        )
    if stray := next((f for f in known if f not in folders), None):
        raise ConfigError(
            f"--known {cfg.known}: folder {stray!r} is not a landmark of the catalog of {flag} "
            f"({', '.join(predictor.catalog.folders)})"
        )
    return [(group, paths, [UNKNOWN if c is None else folders[c]] * len(paths)) for group, paths, c in sets]


def _is_gldv2_root(cfg: EvalConfig) -> bool:
    try:
        return storage.exists(storage.join(cfg.known, "train.csv"), cfg.s3_options())
    except Exception:  # unreachable: the plain "not a landmark" error says enough
        return False


def _write(out: str, result: dict, photos: list[dict]) -> None:
    from landmark_core import evaluation

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)  # an existing folder is written into: its five files replaced
    with open(d / "photos.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PHOTO_FIELDS)
        w.writeheader()
        w.writerows(photos)
    s = result["summary"]
    pngs = {
        "curve.png": evaluation.curve_png(result["curve"], operating=s),
        "reliability.png": evaluation.reliability_png(s["reliability"]),
    }
    for name, blob in pngs.items():
        (d / name).write_bytes(blob)
    (d / "eval.json").write_text(json.dumps(result, indent=2))
    (d / "report.html").write_text(evaluation.html_report(result, pngs))


def format_table(result: dict) -> str:
    from landmark_core import evaluation

    def pct(v):
        return "" if v is None else f"{100 * v:5.1f}%"

    s = result["summary"]
    lines = [
        f"model {result['model_id']} ({result['method']}, threshold {result['threshold']:.4g} on {result['runtime']})",
        f"{'folder':28s} {'photos':>6s} {'right':>7s} {'abstain':>7s} {'wrong':>7s} {'tagged':>7s} {'failed':>6s}"
        "  wrong tags as",
    ]
    for r in s["folders"]:
        lines.append(
            f"{r['folder'][:28]:28s} {r['photos']:6d} {pct(r.get('right')):>7s} "
            f"{pct(r.get('abstained')):>7s} {pct(r.get('wrong')):>7s} {pct(r.get('tagged')):>7s} {r['failed']:6d}"
            f"  {evaluation.wrong_as(r)}"
        )
    lines.append(
        "(right, abstain, wrong: shares of a known folder's photos; tagged: of an unknown folder's, each one a "
        "wrong location)"
    )

    def share(v):  # a headline figure: "-" where no photo counts towards it
        return "-" if v is None else pct(v).strip()

    ece, lo_hi, null = s["ece_tagged"], s["known_right_interval"], s["ece_if_calibrated"]
    lines.append(
        f"known right {share(s['known_right'])}"
        + (f" (95% interval {share(lo_hi[0])}-{share(lo_hi[1])})" if lo_hi else "")
        + f", abstained {share(s['known_abstained'])}, wrong {share(s['known_wrong'])}; unknown tagged "
        f"{share(s['unknown_tagged'])} (mean over folders {share(s['unknown_tagged_mean_over_folders'])}); "
        "ECE among tagged "
        + ("-" if ece is None else f"{ece:.3f}")
        + (f" (a calibrated score would show {null['median']:.3f}, 90% under {null['p90']:.3f})" if null else "")
    )
    if result.get("rates"):
        lines.append(
            "at other rates (landmark tag --max-wrong-rate R): rate, threshold, known right, "
            "unknown tagged (mean over folders)"
        )
        lines += [
            f"  {r['max_wrong_rate']:<6g} {r['threshold']:9.4g} {pct(r['coverage']):>7s} "
            f"{pct(r['unknown_tagged_mean_over_folders']):>7s}"
            for r in result["rates"]
        ]
    if result.get("catalog_look_alikes"):
        lines.append(
            "catalog look-alikes: each known folder as if its landmark were not in the catalog, tagged as another "
            "(high: those look alike, and sights like them get tagged; low clears no sight outside the catalog)"
        )
        lines += [
            f"  {r['folder'][:28]:28s} {pct(r['tagged']):>7s}  "
            + ", ".join(f"{name} {n}" for name, n in list(r["as"].items())[:3])
            for r in result["catalog_look_alikes"]
        ]
    lines += _mistake_lines(result["mistakes"])
    if result.get("compare"):
        lines += evaluation.compare_lines(result["compare"])
    if result["failed"]:
        lines.append(
            f"{len(result['failed'])} photo(s) could not be read and are in no share (each named above, and in "
            "eval.json's failed with its reason)"
        )
    return "\n".join(lines)


def _mistake_lines(mistakes: list[dict], show: int = 5) -> list[str]:
    """The known photos not right and the unknown photos tagged, the first few of each by name."""
    lines = []
    for what, kinds in (("known photos not right", "known"), ("unknown photos tagged", "unknown")):
        rows = [m for m in mistakes if m["kind"] == kinds]
        if rows:
            first = ", ".join(
                f"{Path(m['path']).name} ({m['outcome']}{'' if m['outcome'] == 'abstained' else ' as ' + m['top1']}, "
                f"{m['decision_score']:.3g})"
                for m in rows[:show]
            )
            more = f" and {len(rows) - show} more" if len(rows) > show else ""
            lines.append(f"{len(rows)} {what}: {first}{more} (all in eval.json's mistakes and --out's photos.csv)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model artifact directory or s3:// URI")
    p.add_argument(
        "--compare-model",
        default=None,
        help="a second model on the same photos: photo by photo, what only one of them gets right (McNemar)",
    )
    p.add_argument("--known", default=None, help="photos of catalog landmarks, in folders named as the catalog's")
    p.add_argument(
        "--unknown",
        action="append",
        default=[],
        metavar="DIR",
        help="photos of no catalog landmark (recursive; repeat: each folder is reported on its own)",
    )
    p.add_argument(
        "--out", default=None, help="write eval.json, photos.csv, curve.png, reliability.png and report.html here"
    )
    p.add_argument("--json", dest="as_json", action="store_true", help="print the result as JSON")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help="model runtime, as the tag job's (default auto)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per model call (default 32)")
    p.add_argument("--min-score", type=float, default=None, help="evaluate at this threshold instead")
    p.add_argument("--accept-rate", type=float, default=None, help="threshold by known validation photos")
    p.add_argument("--max-wrong-rate", type=float, default=None, help="threshold by held-back negatives")
    p.add_argument(
        "--no-copy-check",
        dest="copy_check",
        action="store_false",
        help="skip the search for near-copies of the model's training photos (it reads them once more)",
    )
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint for s3:// photos and --model")
    from landmark_core.artifact import ArtifactError

    return run_cli(
        p,
        argv,
        config=lambda ns: fields_of(EvalConfig, ns, unknown=tuple(ns.unknown)),
        run=run,
        show=lambda result, cfg: print(json.dumps(result) if cfg.as_json else format_table(result)),
        failures=(((ArtifactError, ValueError), 2),),
    )


if __name__ == "__main__":
    sys.exit(main())
