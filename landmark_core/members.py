"""A frozen-backbone model pooled over seeded training runs (`landmark train --freeze-backbone --members K`).

Each run (a member) draws its own validation split, held-back negatives and training order, and trains its own
head, banks, open-world score and threshold (int8 fit included); with the backbone frozen they share one network up
to the embedding, so the pool costs a few small matrix products per photo, not K networks. One run's threshold
rests on a few dozen validation photos and the few held-back look-alikes that fall in its split (README "Open
world"); the pool's does not. The decision: tagged when the mean log-odds of the members' scores reaches the mean
log-odds of their thresholds; the first member's head names the landmark.

The pooled artifact is the first member's, its thresholds the pooled ones (every member's own beside them, as
``member_thresholds``), with ``abstain["members"]`` (each other member's temperature,
calibrator, threshold and per-runtime fits) and extra tensors ``member{i}.{name}`` (its head, banks, and the stored
scores that move its threshold when a rate is given at tag time).
"""

from __future__ import annotations

import numpy as np

from . import openworld
from .calibration import threshold_at_accept_rate

PREFIX = "member"
TENSORS = ("weight", "bias", "center", "bank", "bank_labels", "distractors")
STORED = ("neg_fit_scores", "neg_fit_groups", "val_scores")
HEAD = ("head.weight", "head.bias")


class MembersError(ValueError):
    pass


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def pool(values) -> np.ndarray:
    """Scores (or thresholds) of the members -> one: the sigmoid of their mean log-odds."""
    return 1.0 / (1.0 + np.exp(-np.mean([logit(v) for v in values], axis=0)))


# ---------------------------------------------------------------- building the pooled artifact (training driver)


def combine(arts: list):
    """Trained open-world artifacts (torch tensors) of the same frozen backbone -> one pooled Artifact: the first
    one, its thresholds replaced by the pooled ones, the others' heads, banks and fits added."""
    import torch

    base = arts[0]
    for i, a in enumerate(arts):
        _check_member(base, a, i, torch)
    blocks, tensors = [], {}
    for i, a in enumerate(arts[1:], start=1):
        runtimes = a.abstain.get("runtimes", {})
        blocks.append(
            {
                "model_id": a.model_id,
                "seed": a.provenance.get("config", {}).get("seed"),
                "temperature": float(a.temperature),
                "calibrator": a.abstain["calibrator"],
                "threshold": float(a.abstain["threshold"]),
                "runtimes": {
                    rt: {"calibrator": f["calibrator"], "threshold": float(f["threshold"])}
                    for rt, f in runtimes.items()
                },
            }
        )
        t = {"weight": a.state_dict["head.weight"], "bias": a.state_dict["head.bias"]}
        t.update({k: a.extra_tensors[k] for k in TENSORS[2:] + STORED})
        own = (f"{k}@{rt}" for rt in runtimes for k in STORED)
        t.update({k: a.extra_tensors[k] for k in own if k in a.extra_tensors})
        tensors.update({f"{PREFIX}{i}.{k}": v.detach().clone() for k, v in t.items()})
    abstain = dict(base.abstain, members=blocks)
    own = [float(a.abstain["threshold"]) for a in arts]
    abstain.update(threshold=float(pool(own)), member_thresholds=own)
    abstain["runtimes"] = {}
    for rt, fit in base.abstain.get("runtimes", {}).items():
        own = [float(fit["threshold"])] + [b["runtimes"][rt]["threshold"] for b in blocks]
        abstain["runtimes"][rt] = {**fit, "threshold": float(pool(own)), "member_thresholds": own}
    from dataclasses import replace

    return replace(base, abstain=abstain, extra_tensors={**base.extra_tensors, **tensors}, model_id="")


def _check_member(base, a, i: int, torch) -> None:
    if a.abstain.get("method") != "openworld" or "calibrator" not in a.abstain:
        raise MembersError(f"member {i}: not an open-world model (trained without --negatives)")
    if a.abstain.get("members"):
        raise MembersError(f"member {i}: already a pooled model")
    same = (a.spec == base.spec, a.catalog.to_json() == base.catalog.to_json(), a.preprocess == base.preprocess)
    if not all(same):
        raise MembersError(f"member {i}: not the same architecture, catalog and preprocessing as member 0")
    if set(a.abstain.get("runtimes", {})) != set(base.abstain.get("runtimes", {})):
        raise MembersError(f"member {i}: fitted on other runtimes than member 0")
    backbone = [k for k in base.state_dict if k not in HEAD]
    if set(a.state_dict) != set(base.state_dict) or not all(
        torch.equal(a.state_dict[k], base.state_dict[k]) for k in backbone
    ):
        raise MembersError(f"member {i}: its backbone differs from member 0's (members need --freeze-backbone)")


# ---------------------------------------------------------------- scoring (Predictor)


def from_artifact(abstain: dict, extra: dict, runtime: str) -> list[dict]:
    """The members as the Predictor scores them on ``runtime`` (their own fit on it where they have one)."""
    out = []
    for i, block in enumerate(abstain.get("members") or [], start=1):
        fit = block.get("runtimes", {}).get(runtime)
        key = f"@{runtime}" if fit else ""
        fit = fit or block
        m = {
            "temperature": float(block["temperature"]),
            "tensors": {k: np.asarray(extra[f"{PREFIX}{i}.{k}"]) for k in TENSORS},
            "calibrator": fit["calibrator"],
            "threshold": float(fit["threshold"]),
        }
        # this runtime's held-back and validation scores (validation: fp32's in artifacts from before they had both)
        m.update({k: np.asarray(extra.get(f"{PREFIX}{i}.{k}{key}", extra[f"{PREFIX}{i}.{k}"])) for k in STORED})
        out.append(m)
    return out


def score(member: dict, emb: np.ndarray, *, absent: int | None = None) -> np.ndarray:
    """The member's P(its top-1 is right) for raw embeddings: its head's logits, its banks, its calibrator
    (``absent``: as if that landmark were not in the catalog, openworld.without)."""
    t = member["tensors"]
    emb = np.asarray(emb, np.float32)
    logits = emb @ t["weight"].T + t["bias"]
    if absent is not None:
        logits, t = openworld.without(logits, t, absent)
    x = openworld.features(logits, emb, temperature=member["temperature"], extra=t)
    return openworld.prob_right(x, member["calibrator"])


def threshold(member: dict, *, accept_rate=None, max_wrong_rate=None) -> float:
    """One member's threshold: its fitted one, or again from its stored scores at the caller's rate."""
    if max_wrong_rate is not None:
        scores = openworld.scores_by_group(member["neg_fit_scores"], member["neg_fit_groups"])
        return openworld.threshold_for_wrong_rate(scores, max_wrong_rate)
    if accept_rate is not None:
        return threshold_at_accept_rate(member["val_scores"], accept_rate)
    return float(member["threshold"])
