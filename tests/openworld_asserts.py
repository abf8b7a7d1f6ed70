"""A model without one of its landmarks, built by hand: what `landmark eval`'s catalog look-alikes must match."""

from __future__ import annotations

import numpy as np


def banks_without(banks: dict, absent: int) -> dict:
    """Banks rebuilt without one landmark's photos, the later landmarks renumbered: what a model that never had
    it would hold."""
    keep = np.asarray(banks["bank_labels"]) != absent
    labels = np.asarray(banks["bank_labels"])[keep]
    return {
        **banks,
        "bank": np.asarray(banks["bank"])[keep],
        "bank_labels": np.where(labels > absent, labels - 1, labels),
    }
