"""Growing and shrinking a model's catalog without training (`landmark catalog add | remove | list`).

A landmark is enrolled by embedding a handful of its photos with the model's own backbone: most go into the
gallery (and into the kNN abstention bank, so its photos are not "no landmark"), the rest are held back with the
artifact's validation photos to measure the recognizers and to set the abstain threshold again. The network's
weights are untouched; the new artifact gets a new model_id because its predictions change.

Numpy only (the job wires it to Ray Data when there are many photos); the Artifact's tensors may be numpy or torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from . import abstention, storage
from .artifact import Artifact
from .calibration import threshold_at_accept_rate
from .catalog import Catalog, CatalogError, Landmark
from .modelspec import ModelSpec
from .recognizer import (
    GALLERY,
    GALLERY_LABELS,
    VAL_EMB,
    VAL_LABELS,
    VAL_LOGITS,
    choose,
    gallery_embeddings,
    gallery_tensors,
    unit,
)
from .tagging import read_and_decode

DEFAULT_HOLDOUT = 0.2  # share of each new landmark's photos held back to measure and to set the threshold


class EnrollError(ValueError):
    pass


@dataclass
class Embedded:
    """Photos through the network: head logits and raw embeddings of the ones that decoded, and why others failed."""

    uris: list[str]
    logits: np.ndarray
    emb: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class NewLandmark:
    name: str
    folder: str
    lat: float | None
    lon: float | None
    country: str | None
    photos: Embedded


def embed_uris(
    predictor, uris: list[str], opts: storage.S3Options = storage.S3Options(), *, batch_size: int = 32
) -> Embedded:
    """Read + decode exactly as the tag job does (tagging.read_and_decode), then the Predictor's network."""
    logits, embs, good, failed = [], [], [], {}
    for s in range(0, len(uris), batch_size):
        chunk = uris[s : s + batch_size]
        dec = read_and_decode(
            {"uri": chunk, "etag": [None] * len(chunk), "size_bytes": [None] * len(chunk)},
            preset=predictor.preset,
            opts=opts,
        )
        ok = dec["ok"]
        failed.update({u: e for u, e, o in zip(chunk, dec["error"], ok) if not o})
        if ok.any():
            z, e = predictor.logits_and_embeddings(dec["image"][ok])
            logits.append(z)
            embs.append(e)
            good += [u for u, o in zip(chunk, ok) if o]
    return _embedded(good, logits, embs, failed)


def _embedded(uris, logits, embs, failed) -> Embedded:
    if not logits:
        return Embedded([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), failed)
    return Embedded(
        list(uris), np.concatenate(logits).astype(np.float32), np.concatenate(embs).astype(np.float32), failed
    )


def slug(name: str) -> str:
    """A folder-like key for a landmark given by name: 'Ponte Luis I' -> 'ponte_luis_i'."""
    s = re.sub(r"[^0-9a-zA-Z]+", "_", name.strip()).strip("_").lower()
    if not s:
        raise EnrollError(f"--name {name!r}: needs at least one letter or digit")
    return s


def numpy_extras(art: Artifact) -> dict[str, np.ndarray]:
    return {k: _np(v) for k, v in art.extra_tensors.items()}


def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def with_gallery(
    art: Artifact, train: Embedded, train_labels: np.ndarray, val: Embedded, val_labels: np.ndarray
) -> Artifact:
    """An artifact trained before the gallery existed, given one: its own landmarks' training photos as the
    gallery, their validation photos as the held-out set (`landmark catalog upgrade`)."""
    ex = numpy_extras(art)
    if GALLERY in ex:
        raise EnrollError("this artifact already has a gallery")
    center = ex.get("center", train.emb.mean(axis=0).astype(np.float32))
    ex.update({"center": center, **gallery_tensors(train.emb, train_labels, center, len(art.catalog))})
    ex.update(_held_out(val.logits, val.emb, val_labels))
    return _finish(
        art, ex, action={"upgrade": {"gallery_photos": int(len(train_labels)), "val_photos": int(len(val_labels))}}
    )


def add(
    art: Artifact,
    new: list[NewLandmark],
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    recognizer: str | None = None,
) -> Artifact:
    """The artifact with ``new`` landmarks in its catalog, gallery and abstention references."""
    ex = numpy_extras(art)
    _check_can_grow(art, new)
    center = ex["center"]
    landmarks = list(art.catalog)
    gal, gal_y, val_z, val_e, val_y = [], [], [], [], []
    for lm in new:
        cid = len(landmarks)
        landmarks.append(Landmark(id=cid, folder=lm.folder, name=lm.name, lat=lm.lat, lon=lm.lon, country=lm.country))
        keep, held = _holdout_split(len(lm.photos.uris), holdout, seed + cid)
        gal.append(gallery_embeddings(lm.photos.emb[keep], center))
        gal_y.append(np.full(len(keep), cid, np.int64))
        val_z.append(lm.photos.logits[held])
        val_e.append(lm.photos.emb[held])
        val_y.append(np.full(len(held), cid, np.int64))
    rows, labels = np.concatenate(gal), np.concatenate(gal_y)
    ex[GALLERY] = np.concatenate([ex[GALLERY], rows])
    ex[GALLERY_LABELS] = np.concatenate([ex[GALLERY_LABELS], labels])
    _grow_abstention(art.abstain.get("method"), ex, rows, labels)
    ex[VAL_LOGITS] = np.concatenate([ex[VAL_LOGITS], *val_z])
    ex[VAL_EMB] = np.concatenate([ex[VAL_EMB], *val_e])
    ex[VAL_LABELS] = np.concatenate([ex[VAL_LABELS], *val_y])
    catalog = Catalog(landmarks, name=art.catalog.name)
    summary = [
        {
            "name": lm.name,
            "folder": lm.folder,
            "photos": len(lm.photos.uris),
            "held_back": int((ex[VAL_LABELS] == catalog.find(lm.folder).id).sum()),
            "failed": len(lm.photos.failed),
        }
        for lm in new
    ]
    return _finish(replace(art, catalog=catalog), ex, recognizer=recognizer, action={"added": summary})


def remove(art: Artifact, key: str) -> Artifact:
    """The artifact without the landmark ``key`` (name or folder). An enrolled landmark leaves the gallery; a
    trained one also loses its head column (softmax over the others: exactly the head without that class)."""
    try:
        lm = art.catalog.find(key)
    except CatalogError as e:
        raise EnrollError(f"--name: {e}") from None
    if len(art.catalog) == 1:
        raise EnrollError(f"--name {key!r}: it is the catalog's only landmark")
    if art.abstain.get("members"):
        raise EnrollError(
            f"--name {key!r}: this model pools its tag decision over --members runs whose heads all know the "
            "landmark; train again without it"
        )
    if art.abstain.get("method") == "openworld":  # its P(right) and threshold were fitted with every landmark
        raise EnrollError(
            f"--name {key!r}: this model's open-world score and threshold were fitted with every landmark "
            "(trained with --negatives); train again without it"
        )
    c, n_head = lm.id, art.spec.num_classes
    ex = numpy_extras(art)
    _check_has_gallery(ex)
    state, spec = art.state_dict, art.spec
    if c < n_head:
        if n_head == 1:
            raise EnrollError(f"--name {key!r}: the head's only landmark; the network needs at least one")
        if "bank" in ex and ("bank_labels" not in ex or (ex["bank_labels"] < 0).any()):
            raise EnrollError(
                f"--name {key!r}: this artifact's abstention bank does not say which photos show it "
                "(trained before bank labels), so they cannot be taken out; retrain without it"
            )
        state, spec = _drop_head_column(state, c), ModelSpec(**{**spec.to_json(), "num_classes": n_head - 1})
        ex[VAL_LOGITS] = np.delete(ex[VAL_LOGITS], c, axis=1)
    if "prototypes" in ex:  # one per landmark, in catalog order
        ex["prototypes"] = np.delete(ex["prototypes"], c, axis=0)
    for rows, labels in ((GALLERY, GALLERY_LABELS), ("bank", "bank_labels"), ((VAL_LOGITS, VAL_EMB), VAL_LABELS)):
        if labels in ex:
            _drop_label(ex, rows if isinstance(rows, tuple) else (rows,), labels, c)
    landmarks = [replace(x, id=i) for i, x in enumerate(y for y in art.catalog if y.id != c)]
    out = replace(art, catalog=Catalog(landmarks, name=art.catalog.name), state_dict=state, spec=spec)
    return _finish(
        out, ex, action={"removed": {"name": lm.name, "folder": lm.folder, "was": "head" if c < n_head else "gallery"}}
    )


def describe(art: Artifact) -> list[dict]:
    """One row per landmark: id, name, folder, location, source (head | enrolled), gallery photos."""
    ex = numpy_extras(art)
    counts = np.bincount(ex[GALLERY_LABELS], minlength=len(art.catalog)) if GALLERY_LABELS in ex else None
    return [
        {
            **lm.to_dict(),
            "source": "head" if lm.id < art.spec.num_classes else "enrolled",
            "gallery_photos": int(counts[lm.id]) if counts is not None else 0,
        }
        for lm in art.catalog
    ]


# ---------------------------------------------------------------- internals


def _check_has_gallery(ex: dict) -> None:
    if GALLERY not in ex or VAL_EMB not in ex:
        raise EnrollError(
            "this artifact has no gallery yet (trained before it existed): give it one first with "
            "`landmark catalog upgrade --model DIR --data TRAINING_DATA --output NEW_DIR`"
        )


def check_can_enroll(art: Artifact) -> None:
    """The model-level reasons `catalog add` cannot work, before any photo is embedded."""
    method = art.abstain.get("method")
    if method == "openworld":  # --abstain-method knn would be refused with --negatives: say what does work
        raise EnrollError(
            "this model's open-world score and threshold were fitted on its trained landmarks and held-back "
            "negatives (trained with --negatives), and would not know an enrolled landmark: train again with the "
            "new landmark's photos in --data, or enroll into a model trained without --negatives"
        )
    _check_has_gallery(numpy_extras(art))
    if method not in ("knn", "proto"):
        raise EnrollError(
            f"the abstention method {method!r} scores the head's logits, which know nothing of an "
            "enrolled landmark; enrollment needs knn or proto (`landmark train --abstain-method knn`)"
        )


def _check_can_grow(art: Artifact, new: list[NewLandmark]) -> None:
    check_can_enroll(art)
    if not new:
        raise EnrollError("no landmarks to add")
    seen = {k for lm in art.catalog for k in (lm.folder.lower(), lm.name.lower())}
    for lm in new:
        for key in {lm.folder.lower(), lm.name.lower()}:
            if key in seen:
                raise EnrollError(
                    f"{lm.name!r}: {key!r} is already in the catalog (remove it first, or use another --name)"
                )
            seen.add(key)
        if len(lm.photos.uris) < 2:
            raise EnrollError(
                f"{lm.name!r}: {len(lm.photos.uris)} usable photo(s); enrollment needs at least 2 "
                f"(one for the gallery, one held back)" + _failures(lm.photos)
            )


def _failures(e: Embedded) -> str:
    return "" if not e.failed else "; failed: " + ", ".join(f"{u} ({r})" for u, r in list(e.failed.items())[:5])


def _holdout_split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded: round(holdout * n) photos held back, at least one, and at least one left for the gallery."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(max(1, int(round(holdout * n))), n - 1)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def _grow_abstention(method: str, ex: dict, rows: np.ndarray, labels: np.ndarray) -> None:
    """The new photos become known to the open-set score: kNN bank rows, or a prototype per new landmark."""
    if method == "knn":
        bank_labels = ex.get("bank_labels", np.full(len(ex["bank"]), -1, np.int64))  # -1: a head landmark, unknown
        ex["bank"] = np.concatenate([ex["bank"], rows]).astype(np.float32)
        ex["bank_labels"] = np.concatenate([bank_labels, labels])
    elif method == "proto":
        protos = [unit(rows[labels == c].mean(axis=0, keepdims=True))[0] for c in np.unique(labels)]
        ex["prototypes"] = np.concatenate([ex["prototypes"], np.stack(protos)]).astype(np.float32)


def _held_out(logits, emb, labels) -> dict:
    return {
        VAL_LOGITS: np.asarray(logits, np.float32),
        VAL_EMB: np.asarray(emb, np.float32),
        VAL_LABELS: np.asarray(labels, np.int64),
    }


def _drop_label(ex: dict, rows: tuple[str, ...], labels: str, c: int) -> None:
    keep = ex[labels] != c
    for r in rows:
        ex[r] = ex[r][keep]
    y = ex[labels][keep]
    ex[labels] = np.where(y > c, y - 1, y)


def _drop_head_column(state: dict, c: int) -> dict:
    out = dict(state)
    for k in ("head.weight", "head.bias"):
        v = state[k]
        keep = [i for i in range(v.shape[0]) if i != c]
        out[k] = v[keep].clone() if hasattr(v, "clone") else np.ascontiguousarray(np.asarray(v)[keep])
    return out


def _finish(art: Artifact, ex: dict, *, action: dict, recognizer: str | None = None) -> Artifact:
    """Measure the recognizers on the held-out photos, set the abstain threshold again on them, and return the
    new artifact (model_id is set when it is saved)."""
    n, n_head = len(art.catalog), art.spec.num_classes
    val_z, val_e, val_y = ex[VAL_LOGITS], ex[VAL_EMB], ex[VAL_LABELS]
    rec, rec_metrics = choose(
        val_z, val_e, val_y, temperature=art.temperature, extra=ex, n_classes=n, n_head=n_head, forced=recognizer
    )
    method, accept_rate = art.abstain.get("method", "msp"), float(art.abstain.get("accept_rate", 0.95))
    scores = abstention.known_score(
        method, val_z, val_e, temperature=art.temperature, extra=ex, k=int(art.abstain.get("k", 5))
    )
    threshold = threshold_at_accept_rate(scores, accept_rate)
    ex["val_scores"] = np.sort(scores).astype(np.float32)
    parent = art.metrics.get("parent_metrics", art.metrics) if art.metrics.get("catalog_changes") else art.metrics
    metrics = {
        "recognizer": rec.mode,
        "recognizer_val_top1": rec_metrics["val_top1"],
        "n_val": rec_metrics["n_val"],
        "recognizer_tau": rec_metrics["tau"],
        "abstain_method": method,
        "abstain_threshold": threshold,
        "val_false_abstain": float((scores < threshold).mean()) if len(scores) else 0.0,
        "catalog_changes": art.metrics.get("catalog_changes", []) + [action],
        "parent_model_id": art.model_id,
        "parent_metrics": parent,
    }
    # lineage: the models this one was made from without training, nearest first; the tag job does not re-tag
    # what they settled unless asked (--retag)
    provenance = {
        **art.provenance,
        "parent_model_id": art.model_id,
        "catalog_change": action,
        "lineage": [art.model_id, *art.provenance.get("lineage", [])],
    }
    provenance.pop("created_at", None)
    return replace(
        art,
        extra_tensors=_like(art, ex),
        recognizer=rec.to_json(),
        abstain={**art.abstain, "threshold": threshold},
        metrics=metrics,
        provenance=provenance,
        model_id="",
    )


def _like(art: Artifact, ex: dict) -> dict:
    """Extra tensors in the artifact's own tensor type (artifact.save writes torch tensors)."""
    if any(hasattr(v, "detach") for v in list(art.state_dict.values())[:1]):
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ex.items()}
    return dict(ex)
