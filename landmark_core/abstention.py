"""How sure the model is that a photo shows a catalog landmark at all (open-set "no landmark" score).

Each method maps (logits, embeddings) to a known-ness score, higher = more like the catalog's training photos.
The threshold is set on known validation photos (calibration.threshold_at_accept_rate); below it the answer is
"no landmark". Methods that need reference embeddings keep them in the artifact as extra tensors.
"""

from __future__ import annotations

import numpy as np

from .calibration import softmax

METHODS = ("msp", "energy", "proto", "knn")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_tensors(
    method: str, embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *, bank_per_class: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """What ``method`` needs at predict time, built from training embeddings.

    Embeddings are centred on the training mean before the cosine (measured: it helps kNN on both real
    open-set pairs, see README), so the mean is stored too.
    """
    if method not in ("proto", "knn"):
        return {}
    center = embeddings.mean(axis=0).astype(np.float32)
    embeddings = embeddings - center
    if method == "proto":
        e = _unit(embeddings)
        protos = np.stack(
            [e[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(e.shape[1]) for c in range(n_classes)]
        )
        return {"prototypes": _unit(protos).astype(np.float32), "center": center}
    if method == "knn":
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:bank_per_class] for c in range(n_classes)])
        keep = np.sort(keep)  # bank_labels: which landmark each row shows (`landmark catalog remove` needs it)
        return {
            "bank": _unit(embeddings[keep]).astype(np.float32),
            "bank_labels": labels[keep].astype(np.int64),
            "center": center,
        }


# where each method's score lies: a --min-score outside tags every photo or none (energy is unbounded)
SCORE_RANGES = {"msp": (0.0, 1.0), "openworld": (0.0, 1.0), "knn": (-1.0, 1.0), "proto": (-1.0, 1.0)}


def check_min_score(method: str, value: float) -> None:
    """Refuses a raw threshold outside the range of the model's score, naming the flag users set it with."""
    lo, hi = SCORE_RANGES.get(method, (float("-inf"), float("inf")))
    if not lo <= value <= hi:
        would = "no photo" if value > hi else "every photo"
        raise ValueError(
            f"--min-score {value:g}: this model's score ({method}) lies in [{lo:g}, {hi:g}]; it would tag {would}"
        )


def known_score(
    method: str, logits: np.ndarray, embeddings: np.ndarray | None, *, temperature: float, extra: dict, k: int = 5
) -> np.ndarray:
    if method == "msp":
        return softmax(logits, temperature).max(axis=1)
    if method == "energy":
        z = logits / temperature
        m = z.max(axis=1)
        return temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))
    if method == "proto":
        return (_unit(embeddings - extra.get("center", 0.0)) @ extra["prototypes"].T).max(axis=1)
    if method == "knn":
        return kth_largest(_unit(embeddings - extra.get("center", 0.0)) @ extra["bank"].T, k)
    raise ValueError(f"unknown abstention method {method!r}; known: {', '.join(METHODS)}")


def kth_largest(sims: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k-th largest similarity (the last when a row has fewer; -1 when it has none)."""
    if sims.shape[1] == 0:
        return np.full(len(sims), -1.0, dtype=sims.dtype)
    k = min(k, sims.shape[1])
    return -np.partition(-sims, k - 1, axis=1)[:, k - 1]
