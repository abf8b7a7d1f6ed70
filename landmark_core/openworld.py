"""The open-world score: the probability that a photo's top-1 tag is right, and the threshold that caps wrong tags.

Most photos show no catalog landmark, so a softmax among catalog landmarks says nothing about whether to tag. The
score here is a logistic model over open-set features (similarity to the catalog's training photos, to photos of
*no* catalog landmark — the distractor bank —, the softmax's confidence and margin), fitted on a mix of known
validation photos (right or wrong top-1) and held-back negatives: weighted so that both sides count alike (the
ranking), then rescaled on the mix as it is (Platt), so that the probability holds where most photos show no
catalog landmark. The threshold caps the share of held-back negatives that would get a tag (``max_wrong_rate``),
the mean over the negatives' folders.
"""

from __future__ import annotations

import numpy as np

from .abstention import _unit, kth_largest
from .calibration import softmax

FEATURES = ("knn", "class_knn", "distractor", "msp", "margin")
KNN_K, CLASS_KNN_K = 5, 3


def distractor_bank(negative_embeddings: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Training negatives' embeddings, centred like the catalog bank and unit-normed: the distractor bank."""
    return _unit(negative_embeddings.astype(np.float32) - center).astype(np.float32)


def scores_by_group(scores: np.ndarray, groups: np.ndarray, names: list[str] | None = None) -> dict:
    """Held-back negatives' scores per folder (keyed by name when ``names`` is given, else by group index)."""
    groups = np.asarray(groups)
    keys = range(len(names)) if names is not None else np.unique(groups).tolist()
    return {(names[g] if names is not None else g): scores[groups == g] for g in keys if (groups == g).any()}


def without(logits: np.ndarray, extra: dict, absent: int) -> tuple[np.ndarray, dict]:
    """Logits and banks as if landmark ``absent`` were not in the catalog: its head column and its bank photos
    dropped, the later landmarks' indices moved down one. Its photos then score as a look-alike of it would."""
    labels = np.asarray(extra["bank_labels"])
    keep = labels != absent
    kept = labels[keep]
    banks = {**extra, "bank": np.asarray(extra["bank"])[keep], "bank_labels": kept - (kept > absent)}
    return np.delete(logits, absent, axis=1), banks


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
    dis = kth_largest(q @ distractors.T, 1) if distractors is not None and len(distractors) else np.full(len(q), -1.0)
    ranked = np.sort(probs, axis=1)
    margin = ranked[:, -1] - (ranked[:, -2] if probs.shape[1] > 1 else 0.0)
    cols = [kth_largest(sims, KNN_K), kth_largest(class_sims, CLASS_KNN_K), dis, probs.max(axis=1), margin]
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


def fit_calibrator(x_known: np.ndarray, right: np.ndarray, x_negative: np.ndarray) -> dict:
    """P(top-1 right) from known validation photos (``right``: their top-1 is right) and held-back negatives.

    The logistic model is fitted with both sides weighted alike, so that the few known photos shape the ranking
    as much as the many negatives; its logit is then rescaled (Platt: slope and intercept) on the mix unweighted,
    because balanced weights alone would claim a 50:50 world and overstate every score."""
    x = np.concatenate([x_known, x_negative])
    y = np.concatenate([np.asarray(right, dtype=np.float64), np.zeros(len(x_negative))])
    weights = np.concatenate([np.full(len(x_known), len(x_negative) / max(1, len(x_known))), np.ones(len(x_negative))])
    cal = fit_logistic(x, y, weights=weights)
    platt = fit_logistic(_logit(x, cal)[:, None], y, l2=1e-4)
    cal["platt"] = [
        platt["coef"][0] / platt["scale"][0],
        platt["intercept"] - platt["coef"][0] * platt["mean"][0] / platt["scale"][0],
    ]
    return cal


def _logit(x: np.ndarray, calibrator: dict) -> np.ndarray:
    z = (x - np.asarray(calibrator["mean"])) / np.asarray(calibrator["scale"])
    return z @ np.asarray(calibrator["coef"]) + calibrator["intercept"]


def prob_right(x: np.ndarray, calibrator: dict) -> np.ndarray:
    t = _logit(x, calibrator)
    if "platt" in calibrator:
        slope, intercept = calibrator["platt"]
        t = slope * t + intercept
    return 1.0 / (1.0 + np.exp(-t))


def wrong_rate(negative_scores: dict[str, np.ndarray], threshold: float) -> float:
    """Mean over the negatives groups of the share of photos that would be tagged (score >= threshold)."""
    rates = [float((np.asarray(v) >= threshold).mean()) for v in negative_scores.values() if len(v)]
    return float(np.mean(rates)) if rates else 0.0


def threshold_for_wrong_rate(negative_scores: dict[str, np.ndarray], max_wrong_rate: float) -> float:
    """The lowest threshold at which held-back negatives are tagged at most ``max_wrong_rate`` of the time, the
    rate being the mean over their groups (each folder counts alike: a large folder of everyday photos must
    not hide a small folder of look-alike landmarks). A tag needs score >= threshold.

    Rows carry float32 scores and the Predictor compares those, so each candidate is the next float32 above a
    score: a float64 step would round back onto the score it was meant to exclude."""
    if not 0.0 <= max_wrong_rate < 1.0:
        raise ValueError(f"max_wrong_rate must be in [0, 1), got {max_wrong_rate}")
    scores = np.concatenate([np.asarray(v, dtype=np.float64) for v in negative_scores.values()] or [np.zeros(0)])
    if not len(scores):
        return float("-inf")
    above = np.nextafter(scores.astype(np.float32), np.float32(np.inf)).astype(np.float64)
    for t in np.unique(above):  # ascending: the first that meets the rate is the lowest
        if wrong_rate(negative_scores, t) <= max_wrong_rate:
            return float(t)
    return float(above.max())


def tag_scores(top_p: np.ndarray, p_right: np.ndarray) -> np.ndarray:
    """Top-k scores on the open-world scale: the first is P(top-1 right); the others keep their softmax
    proportions, scaled so that the k scores never sum above 1."""
    p0 = np.maximum(top_p[:, :1], 1e-12)
    rest = np.maximum(1.0 - top_p[:, :1], 1e-12)
    scale = np.minimum(1.0, np.minimum(p_right[:, None] / p0, (1.0 - p_right[:, None]) / rest))
    out = (top_p * scale).astype(np.float32)
    out[:, 0] = p_right
    return out


def fit(
    x_known: np.ndarray, right: np.ndarray, x_negative: np.ndarray, negative_groups: np.ndarray, max_wrong_rate: float
) -> dict:
    """Calibrator, the held-back negatives' scores and the threshold at ``max_wrong_rate``, for one runtime's
    features (an int8 model's features differ from fp32's enough to move the threshold)."""
    cal = fit_calibrator(x_known, right, x_negative)
    neg_scores = prob_right(x_negative, cal)
    return {
        "calibrator": cal,
        "neg_fit_scores": neg_scores,
        "threshold": threshold_for_wrong_rate(scores_by_group(neg_scores, negative_groups), max_wrong_rate),
    }
