"""The open-world score: the probability that a photo's top-1 tag is right, and the threshold that caps wrong tags.

Most photos show no catalog landmark, so a softmax among catalog landmarks says nothing about whether to tag. The
score here is a logistic model over open-set features (similarity to the catalog's training photos, to photos of
*no* catalog landmark — the distractor bank —, the softmax's confidence and margin), fitted on a mix of known
validation photos (right or wrong top-1) and held-back negatives. The threshold caps the share of held-back
negatives that would get a tag (``max_wrong_rate``), per negatives group, the strictest group deciding.
"""

from __future__ import annotations

import numpy as np

from .calibration import softmax

FEATURES = ("knn", "class_knn", "distractor", "msp", "margin")
KNN_K, CLASS_KNN_K = 5, 3


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _kth_largest(sims: np.ndarray, k: int) -> np.ndarray:
    if sims.shape[1] == 0:
        return np.full(len(sims), -1.0, dtype=sims.dtype)
    k = min(k, sims.shape[1])
    return -np.partition(-sims, k - 1, axis=1)[:, k - 1]


def features(logits: np.ndarray, embeddings: np.ndarray, *, temperature: float, extra: dict) -> np.ndarray:
    """(N, len(FEATURES)) open-set features. ``extra`` holds the artifact's banks: ``center``, ``bank`` (known
    training embeddings, unit, centred), ``bank_labels`` and ``distractors`` (negatives, unit, centred)."""
    q = _unit(embeddings.astype(np.float32) - extra["center"])
    sims = q @ extra["bank"].T
    probs = softmax(logits, temperature)
    top = probs.argmax(axis=1)
    same_class = extra["bank_labels"][None, :] == top[:, None]
    class_sims = np.where(same_class, sims, -1.0)
    distractors = extra.get("distractors")
    dis = _kth_largest(q @ distractors.T, 1) if distractors is not None and len(distractors) else np.full(len(q), -1.0)
    ranked = np.sort(probs, axis=1)
    margin = ranked[:, -1] - (ranked[:, -2] if probs.shape[1] > 1 else 0.0)
    cols = [_kth_largest(sims, KNN_K), _kth_largest(class_sims, CLASS_KNN_K), dis, probs.max(axis=1), margin]
    return np.stack(cols, axis=1).astype(np.float64)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, weights: np.ndarray | None = None, l2: float = 1e-2, iters: int = 50
) -> dict:
    """Weighted L2 logistic regression by Newton's method on standardised features; returns the calibrator."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    beta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2 * w.sum())
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        grad = z.T @ (w * (p - y)) + reg * beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(beta)), grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return {
        "features": list(FEATURES),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": beta[:-1].tolist(),
        "intercept": float(beta[-1]),
    }


def prob_right(x: np.ndarray, calibrator: dict) -> np.ndarray:
    z = (x - np.asarray(calibrator["mean"])) / np.asarray(calibrator["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(calibrator["coef"]) + calibrator["intercept"])))


def wrong_rate(negative_scores: dict[str, np.ndarray], threshold: float) -> float:
    """Mean over the negatives groups of the share of photos that would be tagged (score >= threshold)."""
    rates = [float((np.asarray(v) >= threshold).mean()) for v in negative_scores.values() if len(v)]
    return float(np.mean(rates)) if rates else 0.0


def threshold_for_wrong_rate(negative_scores: dict[str, np.ndarray], max_wrong_rate: float) -> float:
    """The lowest threshold at which held-back negatives are tagged at most ``max_wrong_rate`` of the time, the
    rate being the mean over their groups (each folder counts alike: a large folder of everyday photos must
    not hide a small folder of look-alike landmarks). A tag needs score >= threshold."""
    if not 0.0 <= max_wrong_rate < 1.0:
        raise ValueError(f"max_wrong_rate must be in [0, 1), got {max_wrong_rate}")
    scores = np.concatenate([np.asarray(v, dtype=np.float64) for v in negative_scores.values()] or [np.zeros(0)])
    if not len(scores):
        return float("-inf")
    for t in np.unique(np.nextafter(scores, np.inf)):  # ascending: the first that meets the rate is the lowest
        if wrong_rate(negative_scores, t) <= max_wrong_rate:
            return float(t)
    return float(np.nextafter(scores.max(), np.inf))


def tag_scores(top_p: np.ndarray, p_right: np.ndarray) -> np.ndarray:
    """Top-k scores on the open-world scale: the first is P(top-1 right); the others keep their softmax
    proportions, scaled so that the k scores never sum above 1."""
    p0 = np.maximum(top_p[:, :1], 1e-12)
    rest = np.maximum(1.0 - top_p[:, :1], 1e-12)
    scale = np.minimum(1.0, np.minimum(p_right[:, None] / p0, (1.0 - p_right[:, None]) / rest))
    out = (top_p * scale).astype(np.float32)
    out[:, 0] = p_right
    return out
