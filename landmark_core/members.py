"""Bagged open-world members of a frozen-backbone model (`landmark train --freeze-backbone --members K`).

With a frozen backbone a photo's embedding does not depend on which photos trained the head, so every known
photo outside the test split can validate some split. Each extra member re-splits the known photos and the
negatives (seeded), fits a linear head on their embeddings (cross-entropy plus outlier exposure), its own banks,
score and threshold; the tag decision pools the trained model with the members by the mean log-odds of their
scores against the mean log-odds of their thresholds. One split's threshold rests on a few dozen validation
photos and the few held-back look-alikes that happen to fall in it (README "Open world"); the pool does not.

Member tensors live in the artifact's extra tensors as ``member{i}.{name}``; the rest in ``abstain["members"]``.
"""

from __future__ import annotations

import numpy as np

from . import abstention, openworld
from .calibration import fit_temperature, softmax, threshold_at_accept_rate

PREFIX = "member"
TENSORS = ("weight", "bias", "center", "bank", "bank_labels", "distractors")
# the head's fit on cached embeddings: full batch, as measured on the shared photos (README "Open world")
HEAD_EPOCHS, HEAD_LR, HEAD_WEIGHT_DECAY = 300, 1e-2, 1e-3


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def pool(values) -> np.ndarray:
    """Scores (or thresholds) of the members -> one: the sigmoid of their mean log-odds."""
    return 1.0 / (1.0 + np.exp(-np.mean([logit(v) for v in values], axis=0)))


def split(labels: np.ndarray, groups: np.ndarray, *, seed: int, val_fraction: float, fit_fraction: float):
    """Seeded index split of known photos (per class) and negatives (per group): (train, val, neg_train, neg_fit).
    Every class or group with two or more photos keeps one on each side, as the training split does."""
    rng = np.random.default_rng(seed)

    def halves(keys, fraction):
        a, b = [], []
        for k in np.unique(keys):
            idx = rng.permutation(np.flatnonzero(keys == k))
            n = min(max(int(round(len(idx) * fraction)), 1 if len(idx) >= 2 else 0), max(len(idx) - 1, 0))
            b += idx[:n].tolist()
            a += idx[n:].tolist()
        return np.sort(np.asarray(a, dtype=np.int64)), np.sort(np.asarray(b, dtype=np.int64))

    return (*halves(np.asarray(labels), val_fraction), *halves(np.asarray(groups), fit_fraction))


def fit_head(emb, labels, neg_emb, n_classes: int, *, seed: int, outlier_weight: float) -> tuple[np.ndarray, ...]:
    """A linear head on frozen embeddings: cross-entropy on the known photos, and (outlier exposure) the mean
    cross-entropy of the negatives against the uniform distribution. Returns (weight, bias) as numpy."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(np.asarray(emb, np.float32)), torch.from_numpy(np.asarray(labels, np.int64))
    xn = torch.from_numpy(np.asarray(neg_emb, np.float32))
    head = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        bound = 1.0 / np.sqrt(x.shape[1])
        head.weight.uniform_(-bound, bound, generator=g), head.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.AdamW(head.parameters(), lr=HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)
    for _ in range(HEAD_EPOCHS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y)
        if outlier_weight and len(xn):
            loss = loss - outlier_weight * torch.log_softmax(head(xn), dim=1).mean()
        loss.backward()
        opt.step()
    return head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()


def logits(tensors: dict, emb: np.ndarray) -> np.ndarray:
    return np.asarray(emb, np.float32) @ tensors["weight"].T + tensors["bias"]


def features(member: dict, emb: np.ndarray) -> np.ndarray:
    t = member["tensors"]
    return openworld.features(logits(t, emb), emb, temperature=member["temperature"], extra=t)


def fit(
    emb: np.ndarray,
    labels: np.ndarray,
    neg_emb: np.ndarray,
    neg_groups: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    val_fraction: float,
    fit_fraction: float,
    outlier_weight: float,
    max_wrong_rate: float,
) -> dict:
    """One member on the driver's fp32 embeddings: its split, head, banks, temperature, score and threshold."""
    tr, va, ntr, nfit = split(labels, neg_groups, seed=seed, val_fraction=val_fraction, fit_fraction=fit_fraction)
    weight, bias = fit_head(emb[tr], labels[tr], neg_emb[ntr], n_classes, seed=seed, outlier_weight=outlier_weight)
    t = {"weight": weight, "bias": bias}
    t.update(abstention.reference_tensors("knn", emb[tr].astype(np.float32), labels[tr], n_classes, seed=seed))
    t["distractors"] = openworld.distractor_bank(neg_emb[ntr], t["center"])
    val_logits = logits(t, emb[va])
    member = {"seed": seed, "tensors": t, "temperature": fit_temperature(val_logits, labels[va]), "split": (va, nfit)}
    member.update(refit(member, emb, labels, neg_emb, neg_groups, max_wrong_rate))
    return member


def refit(member: dict, emb, labels, neg_emb, neg_groups, max_wrong_rate: float) -> dict:
    """The member's calibrator, held-back scores and threshold on these embeddings (fp32, or a runtime's own):
    its head and banks stay; its validation photos and held-back negatives are the member's own split."""
    va, nfit = member["split"]
    x_val, x_neg = features(member, emb[va]), features(member, neg_emb[nfit])
    right = softmax(logits(member["tensors"], emb[va]), member["temperature"]).argmax(axis=1) == labels[va]
    fitted = openworld.fit(x_val, right, x_neg, neg_groups[nfit], max_wrong_rate)
    return {
        "calibrator": fitted["calibrator"],
        "threshold": float(fitted["threshold"]),
        "neg_fit_scores": fitted["neg_fit_scores"].astype(np.float32),
        "neg_fit_groups": np.asarray(neg_groups[nfit], np.int32),
        "val_scores": np.sort(openworld.prob_right(x_val, fitted["calibrator"])).astype(np.float32),
    }


def score(member: dict, calibrator: dict, emb: np.ndarray) -> np.ndarray:
    return openworld.prob_right(features(member, emb), calibrator)


def threshold(block: dict, *, min_score=None, accept_rate=None, max_wrong_rate=None) -> float:
    """One member's threshold: its fitted one, or again from its stored scores at the caller's rate."""
    if max_wrong_rate is not None:
        scores = openworld.scores_by_group(block["neg_fit_scores"], block["neg_fit_groups"])
        return openworld.threshold_for_wrong_rate(scores, max_wrong_rate)
    if accept_rate is not None:
        return threshold_at_accept_rate(block["val_scores"], accept_rate)
    return float(block["threshold"])


# ---------------------------------------------------------------- the artifact's form


STORED = ("neg_fit_scores", "neg_fit_groups", "val_scores")


def to_artifact(members: list[dict], runtime_fits: dict[str, list[dict]]) -> tuple[list[dict], dict, dict]:
    """(abstain["members"], {runtime: [per-member calibrator and threshold]}, extra tensors)."""
    blocks, tensors = [], {}
    for i, m in enumerate(members, start=1):
        blocks.append(
            {
                "seed": m["seed"],
                "temperature": m["temperature"],
                "calibrator": m["calibrator"],
                "threshold": m["threshold"],
            }
        )
        tensors.update({f"{PREFIX}{i}.{k}": np.asarray(v) for k, v in m["tensors"].items()})
        tensors.update({f"{PREFIX}{i}.{k}": np.asarray(m[k]) for k in STORED})
        for name, fits in runtime_fits.items():
            tensors.update({f"{PREFIX}{i}.{k}@{name}": np.asarray(fits[i - 1][k]) for k in STORED})
    runtimes = {
        name: [{"calibrator": f["calibrator"], "threshold": f["threshold"]} for f in fits]
        for name, fits in runtime_fits.items()
    }
    return blocks, runtimes, tensors


def from_artifact(abstain: dict, extra: dict, runtime: str) -> list[dict]:
    """The members as the Predictor scores them on ``runtime`` (its own fit where the artifact has one)."""
    out = []
    for i, block in enumerate(abstain.get("members") or [], start=1):
        fits = (abstain.get("runtimes", {}).get(runtime) or {}).get("members")
        fit = fits[i - 1] if fits else block
        key = f"@{runtime}" if fits else ""
        m = {
            "temperature": float(block["temperature"]),
            "tensors": {k: np.asarray(extra[f"{PREFIX}{i}.{k}"]) for k in TENSORS},
            "calibrator": fit["calibrator"],
            "threshold": float(fit["threshold"]),
        }
        m.update({k: np.asarray(extra[f"{PREFIX}{i}.{k}{key}"]) for k in STORED})
        out.append(m)
    return out
