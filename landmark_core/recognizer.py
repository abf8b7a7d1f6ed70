"""Recognition by retrieval beside the classifier head: which landmark a photo shows, as probabilities.

    head     softmax(logits / T): the trained classes only
    gallery  k-nearest-neighbour vote over the artifact's gallery (reference photos' embeddings + landmark ids),
             each neighbour weighted by exp(cosine / tau): any landmark with gallery photos, enrolled ones too
    both     the gallery decides how much of the mass goes to the head's classes at all (its vote for them);
             within them it is shared between the head's softmax and the gallery's vote (ALPHA each). A landmark
             with no head column (enrolled by `landmark catalog add`) can therefore only come from the gallery.

The gallery is stored as the abstention bank is (abstention.py): embeddings centred on the training mean
(``center``), unit length, float32, as artifact extra tensors ``gallery`` (G, D) and ``gallery_labels`` (G,).
Search is exact: one matrix product per batch (cosine = dot product of unit vectors), fine up to tens of
thousands of gallery photos; a larger gallery would want an approximate index (faiss, usearch).

Which recognizer an artifact uses is measured, not assumed: ``choose`` scores each on held-out photos with known
landmarks (the validation split, plus photos held back at enrollment) and the artifact records the winner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .calibration import softmax

RECOGNIZERS = ("head", "gallery", "both")
GALLERY, GALLERY_LABELS = "gallery", "gallery_labels"
# Held-out photos with known landmarks, kept in the artifact so that every later enrollment can measure again.
VAL_EMB, VAL_LABELS, VAL_LOGITS = "val_emb", "val_labels", "val_logits"  # raw embeddings
TAUS = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2)  # kNN weight temperatures tried by fit_tau
ALPHA = 0.5  # 'both': the head's share of the mass the gallery gives to the head's classes


class RecognizerError(ValueError):
    pass


@dataclass(frozen=True)
class Recognizer:
    mode: str = "head"
    k: int = 10  # neighbours voting
    tau: float = 0.05  # weight of a neighbour: exp(cosine / tau)
    alpha: float = ALPHA

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "Recognizer":
        r = cls(**(d or {}))
        if r.mode not in RECOGNIZERS:
            raise RecognizerError(f"recognizer must be one of {', '.join(RECOGNIZERS)}, got {r.mode!r}")
        return r


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gallery_embeddings(emb: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Raw backbone embeddings -> the gallery's (and abstention bank's) form: centred, unit length, float32."""
    return unit(np.asarray(emb, np.float32) - center).astype(np.float32)


def gallery_vote(
    query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, n_classes: int, *, k: int, tau: float
) -> np.ndarray:
    """(N, n_classes) probabilities from the k nearest gallery photos of each (centred, unit) query."""
    n = len(query)
    out = np.zeros((n, n_classes), np.float64)
    if n == 0 or len(gallery) == 0:
        return out
    with _one_blas_thread():
        sims = query @ gallery.T
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / tau)
    np.add.at(out, (np.repeat(np.arange(n), k), labels[idx].ravel()), w.ravel())
    return out / out.sum(axis=1, keepdims=True)


_BLAS = None


def _one_blas_thread():
    """The search on one BLAS thread: the tag job runs a model per core already, and OpenBLAS's threads on a busy
    machine made a small gallery's product far slower (pyproject.toml). One controller: inspecting the loaded
    libraries per call would cost more than the product."""
    global _BLAS
    from threadpoolctl import ThreadpoolController

    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def probabilities(
    rec: Recognizer, logits: np.ndarray, emb: np.ndarray, *, temperature: float, extra: dict, n_classes: int
) -> np.ndarray:
    """(N, n_classes) probabilities of ``rec`` from the network's logits and raw embeddings."""
    head = softmax(logits, temperature)
    if rec.mode == "head":
        if n_classes != head.shape[1]:
            raise RecognizerError(
                f"the head knows {head.shape[1]} landmarks but the catalog has {n_classes}: "
                "enrolled landmarks need the gallery or both recognizer"
            )
        return head
    if GALLERY not in extra:
        raise RecognizerError(f"recognizer {rec.mode!r} needs a gallery, and this artifact has none")
    query = gallery_embeddings(emb, extra.get("center", 0.0))
    g = gallery_vote(query, extra[GALLERY], extra[GALLERY_LABELS], n_classes, k=rec.k, tau=rec.tau)
    if rec.mode == "gallery":
        return g
    h = head.shape[1]
    out = g.copy()
    out[:, :h] = rec.alpha * g[:, :h].sum(axis=1, keepdims=True) * head + (1.0 - rec.alpha) * g[:, :h]
    return out


def top1_accuracy(rec: Recognizer, logits, emb, labels, *, temperature: float, extra: dict, n_classes: int) -> float:
    p = probabilities(rec, logits, emb, temperature=temperature, extra=extra, n_classes=n_classes)
    return float((p.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def fit_tau(val_unit: np.ndarray, labels: np.ndarray, extra: dict, n_classes: int, k: int) -> float:
    """The kNN weight temperature with the lowest log loss on held-out photos (a grid: no optimiser needed)."""
    if not len(labels):
        return Recognizer.tau

    def nll(tau):
        p = gallery_vote(val_unit, extra[GALLERY], extra[GALLERY_LABELS], n_classes, k=k, tau=tau)
        return -np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-6)).mean()

    return float(min(TAUS, key=nll))


def choose(
    logits: np.ndarray,
    emb: np.ndarray,
    labels: np.ndarray,
    *,
    temperature: float,
    extra: dict,
    n_classes: int,
    n_head: int,
    forced: str | None = None,
    k: int = Recognizer.k,
) -> tuple[Recognizer, dict]:
    """The recognizer with the best top-1 on held-out photos (ties: head, then both, then gallery: cheapest and
    longest-proven first), and every candidate's top-1. ``forced`` picks one instead, still measured.

    ``emb`` are raw embeddings of the held-out photos; ``labels`` their catalog ids.
    """
    candidates = ["head", "both", "gallery"] if GALLERY in extra else ["head"]
    if n_classes > n_head:  # enrolled landmarks: the head cannot name them
        candidates.remove("head")
    if forced is not None and forced not in candidates:
        raise RecognizerError(
            f"--recognizer {forced}: not possible here (possible: {', '.join(candidates)}; "
            + (
                "the head has no column for enrolled landmarks)"
                if n_classes > n_head
                else "the artifact has no gallery)"
            )
        )
    tau = Recognizer.tau
    if GALLERY in extra:
        tau = fit_tau(gallery_embeddings(emb, extra.get("center", 0.0)), labels, extra, n_classes, k)
    scores = {
        m: top1_accuracy(
            Recognizer(m, k=k, tau=tau), logits, emb, labels, temperature=temperature, extra=extra, n_classes=n_classes
        )
        for m in candidates
    }
    if forced is not None:
        best = forced
    else:
        best = max(candidates, key=lambda m: (np.nan_to_num(scores[m], nan=-1.0), -candidates.index(m)))
    return Recognizer(best, k=k, tau=tau), {"val_top1": scores, "n_val": int(len(labels)), "tau": tau}


def gallery_tensors(
    emb: np.ndarray, labels: np.ndarray, center: np.ndarray, n_classes: int, *, per_class: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """A gallery from labelled embeddings: at most ``per_class`` photos of each landmark (seeded choice)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(n_classes)] or [np.zeros(0, int)]
        )
    )
    return {
        GALLERY: gallery_embeddings(np.asarray(emb, np.float32)[keep], center),
        GALLERY_LABELS: labels[keep].astype(np.int64),
    }
