"""Training report PNGs: curves, confusion matrix, reliability diagram (matplotlib, Agg, no display)."""

from __future__ import annotations

import io

import numpy as np

from .calibration import reliability, softmax


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_text(text: str) -> str:
    """A name as matplotlib shows it literally: a landmark named with two $ would be parsed as maths (and one
    that does not parse stops the whole figure)."""
    return str(text).replace("$", r"\$")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_png(history: list[dict]) -> bytes:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend()
    b.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    b.plot(ep, [h["val_acc"] for h in history], "o-", label="validation")
    b.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy", ylim=(0, 1.02))
    b.legend()
    return _png(fig)


def confusion_png(logits: np.ndarray, labels: np.ndarray, names: list[str], title: str) -> bytes:
    plt = _plt()
    n = len(names)
    cm = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(labels, logits.argmax(axis=1)):
        cm[t, p] += 1
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.22 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    tick_labels = [plot_text(x) for x in names]
    ax.set_xticklabels(tick_labels, rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_yticklabels(tick_labels, fontsize=7 if n > 20 else 9)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        cm[i, j],
                        ha="center",
                        va="center",
                        color="white" if norm[i, j] > 0.5 else "black",
                        fontsize=8,
                    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def reliability_png(logits: np.ndarray, labels: np.ndarray, temperature: float, title: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for t, label in ((1.0, "uncalibrated"), (temperature, f"temperature {temperature:.2f}")):
        rel = reliability(softmax(logits, t), labels)
        xs = [c for c, k in zip(rel["confidence"], rel["count"]) if k]
        ys = [a for a, k in zip(rel["accuracy"], rel["count"]) if k]
        ax.plot(xs, ys, "o-", label=label)
    ax.set(xlabel="confidence (top-1 score)", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper left")
    return _png(fig)


def training_report_pngs(history: list[dict], ev: dict, temperature: float, names: list[str]) -> dict[str, bytes]:
    split = "test" if len(ev.get("test_labels", [])) else "val"
    out = {}
    if history:
        out["curves.png"] = curves_png(history)
    if len(ev[f"{split}_labels"]):
        out["confusion.png"] = confusion_png(
            ev[f"{split}_logits"], ev[f"{split}_labels"], names, f"Confusion matrix ({split})"
        )
        out["reliability.png"] = reliability_png(
            ev[f"{split}_logits"], ev[f"{split}_labels"], temperature, f"Reliability ({split})"
        )
    return out
