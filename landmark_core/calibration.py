"""Calibrated scores and the abstain threshold.

Temperature scaling (Guo et al., 2017) on the validation split makes the softmax's top-1 probability mean what it
says; expected calibration error (ECE) measures how far it still is. The abstain threshold is set on known
validation photos: the score that accepts ``accept_rate`` of them (default 95%).
"""

from __future__ import annotations

import numpy as np


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on held-out data."""
    import torch

    if len(labels) == 0:
        return 1.0
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Per-bin confidence, accuracy and count of the top-1 prediction (for ECE and the diagram)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    rel = reliability(probs, labels, bins)
    n = max(1, len(labels))
    return float(sum(c * abs(a - f) for c, a, f in zip(rel["count"], rel["accuracy"], rel["confidence"]) if c) / n)


def threshold_at_accept_rate(known_scores: np.ndarray, accept_rate: float) -> float:
    """Split-conformal threshold: a new known photo scores >= it with probability >= ``accept_rate``.

    With n known validation scores sorted ascending, the threshold is the k-th smallest, k = floor((1 - rate)
    (n + 1)). Rounding down rejects fewer known photos than 1 - rate, except where k would be 0 (n + 1 <
    1 / (1 - rate): fewer than 19 photos at 0.95): the lowest score is kept as the threshold rather than none,
    which rejects about 1 / (n + 1) of new known photos, more than 1 - rate: too few photos for that rate.
    """
    if not 0.0 < accept_rate <= 1.0:
        raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate}")
    s = np.sort(np.asarray(known_scores, dtype=np.float64))
    if len(s) == 0:
        return float("-inf")
    k = max(1, int(np.floor((1.0 - accept_rate) * (len(s) + 1))))
    return float(s[min(k, len(s)) - 1])


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> list[float | None]:
    pred = probs.argmax(axis=1)
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else None for c in range(n_classes)]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
