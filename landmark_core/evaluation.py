"""Open-world evaluation: how often a model's tags are right, missing or wrong on labelled photos.

Known photos (of catalog landmarks) are right (tagged with their landmark), abstained ("no landmark") or wrong
(tagged with another landmark); unknown photos (of no catalog landmark) are either left alone or tagged, which
is always a wrong location. Used by `landmark eval` and by `landmark train` for its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN = -1


@dataclass(frozen=True)
class Outcomes:
    """One entry per photo: its folder, true class index (UNKNOWN for photos of no catalog landmark), the
    top-1 class index, the score, and whether it was tagged."""

    group: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    score: np.ndarray
    tagged: np.ndarray

    @classmethod
    def of(cls, group, label, pred, score, tagged) -> "Outcomes":
        n = len(label)
        group = np.asarray(group, dtype=object) if not isinstance(group, str) else np.full(n, group, dtype=object)
        return cls(
            group,
            np.asarray(label, np.int64),
            np.asarray(pred, np.int64),
            np.asarray(score, np.float64),
            np.asarray(tagged, bool),
        )

    @classmethod
    def concat(cls, parts: list["Outcomes"]) -> "Outcomes":
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("group", "label", "pred", "score", "tagged"))
        )

    @property
    def known(self) -> np.ndarray:
        return self.label != UNKNOWN

    @property
    def right(self) -> np.ndarray:
        return self.tagged & self.known & (self.pred == self.label)


def folder_rows(o: Outcomes, names: list[str] | None = None) -> list[dict]:
    """Per folder: photos, and the share right / abstained / wrong (known) or tagged (unknown). With the catalog's
    ``names``: ``wrong_as``, how many of its wrong tags went to each landmark, most first (which look-alike)."""
    rows = []
    for g in dict.fromkeys(o.group.tolist()):
        m = o.group == g
        known = bool(o.known[m].any())
        row = {"folder": g, "kind": "known" if known else "unknown", "photos": int(m.sum())}
        if names is not None:
            wrong = m & o.tagged & (o.pred != o.label)
            counts = np.bincount(o.pred[wrong].astype(np.int64), minlength=len(names))
            row["wrong_as"] = {names[i]: int(counts[i]) for i in np.argsort(-counts, kind="stable") if counts[i]}
        if known:
            row.update(
                right=_share(o.right[m]),
                abstained=_share(~o.tagged[m]),
                wrong=_share(o.tagged[m] & (o.pred[m] != o.label[m])),
            )
        else:
            row.update(tagged=_share(o.tagged[m]))
        rows.append(row)
    return rows


def wrong_as(row: dict, top: int = 3) -> str:
    """A folder row's wrong tags by landmark, most first: "Hoi An Ancient Town 11, Hue Imperial City 2"."""
    return ", ".join(f"{name} {n}" for name, n in list(row.get("wrong_as", {}).items())[:top])


def summary(o: Outcomes, *, bins: int = 10, names: list[str] | None = None) -> dict:
    """The headline numbers: known right/abstained/wrong, unknown tagged (all photos, and mean over folders),
    the open-world calibration of the score among tagged photos (ECE), and the folders' rows."""
    k, u = o.known, ~o.known
    unknown_rates = [r["tagged"] for r in folder_rows(o) if r["kind"] == "unknown"]
    rel = reliability(o.score[o.tagged], (o.right[o.tagged]).astype(np.float64), bins=bins)
    return {
        "known_photos": int(k.sum()),
        "unknown_photos": int(u.sum()),
        "known_right": _share(o.right[k]),
        "known_right_interval": wilson_interval(int(o.right[k].sum()), int(k.sum())),
        "known_abstained": _share(~o.tagged[k]),
        "known_wrong": _share(o.tagged[k] & (o.pred[k] != o.label[k])),
        "unknown_tagged": _share(o.tagged[u]),
        "unknown_tagged_mean_over_folders": float(np.mean(unknown_rates)) if unknown_rates else None,
        "tagged_right": _share(o.right[o.tagged]),
        "ece_tagged": rel["ece"],
        "ece_if_calibrated": ece_if_calibrated(o.score[o.tagged], bins=bins),
        "reliability": rel,
        "folders": folder_rows(o, names),
    }


def reliability(score: np.ndarray, right: np.ndarray, *, bins: int = 10) -> dict:
    """Among tagged photos: per score bin, mean score vs share right; ECE = their count-weighted gap."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = _bin_of(score, edges)
    conf, acc, count = [], [], []
    for b in range(bins):
        m = idx == b
        count.append(int(m.sum()))
        conf.append(float(score[m].mean()) if m.any() else None)
        acc.append(float(right[m].mean()) if m.any() else None)
    return {
        "edges": edges.tolist(),
        "confidence": conf,
        "accuracy": acc,
        "count": count,
        "ece": _ece(idx, right, np.bincount(idx, weights=score, minlength=bins)) if len(score) else None,
    }


def _bin_of(score: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(score, edges[1:-1], right=True), 0, len(edges) - 2)


def _ece(idx: np.ndarray, right: np.ndarray, expected: np.ndarray) -> float:
    """Count-weighted gap between share right and mean score per bin: sum over bins of |right - sum of scores| / n
    (``expected``: the sum of scores per bin)."""
    hits = np.bincount(idx, weights=np.asarray(right, dtype=np.float64), minlength=len(expected))
    return float(np.abs(hits - expected).sum() / len(idx))


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95% Wilson score interval of a share ``hits / n``: how far a rate measured on few photos can be
    from the rate on all photos like them (55 photos: 50 right is 80-96%)."""
    if n == 0:
        return None
    p, d = hits / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float(max(0.0, mid - half)), float(min(1.0, mid + half))]


def ece_if_calibrated(score: np.ndarray, *, bins: int = 10, draws: int = 1000, seed: int = 0) -> dict | None:
    """The ECE a perfectly calibrated score would show on these photos (each right with probability its score;
    seeded draws): median and 90th percentile. On a hundred tagged photos it is far from 0, so an ECE is read
    against it, not against 0."""
    if not len(score):
        return None
    # reliability()'s ECE with the bins computed once: the scores stay, only the draws change (and no draw is
    # kept: a large evaluation would hold draws x photos floats)
    idx = _bin_of(score, np.linspace(0.0, 1.0, bins + 1))
    expected = np.bincount(idx, weights=score, minlength=bins)
    rng = np.random.default_rng(seed)
    eces = [_ece(idx, rng.random(len(score)) < score, expected) for _ in range(draws)]
    return {"median": float(np.median(eces)), "p90": float(np.quantile(eces, 0.9))}


def coverage_curve(o: Outcomes, points: int = 200, *, decision: np.ndarray | None = None) -> dict:
    """As the threshold moves over the scores: coverage (share of known photos tagged right) against the
    wrong-tag rate (share of unknown photos tagged, mean over unknown folders; plus known photos tagged wrong).
    ``decision``: the score the threshold applies to, one per photo, when it is not the row's score."""
    s = o.score if decision is None else np.asarray(decision, np.float64)
    thresholds = np.unique(np.quantile(s, np.linspace(0, 1, points))) if len(s) else np.zeros(0)
    at = at_thresholds(o, thresholds, decision=s)
    return {"threshold": thresholds.tolist(), **{k: [p[k] for p in at] for k in AT_THRESHOLD}}


AT_THRESHOLD = ("coverage", "unknown_tagged_mean_over_folders", "known_wrong")


def at_thresholds(o: Outcomes, thresholds, *, decision: np.ndarray | None = None) -> list[dict]:
    """For each threshold, the photos tagged at it (``decision`` >= threshold): coverage (share of known photos
    tagged right), the wrong-tag rate (share of unknown photos tagged, mean over unknown folders) and the known
    photos tagged wrong."""
    s = o.score if decision is None else np.asarray(decision, np.float64)
    folders = [g for g in dict.fromkeys(o.group[~o.known].tolist())]
    out = []
    for t in thresholds:
        tagged = s >= t
        rates = [float(tagged[o.group == g].mean()) for g in folders]
        # (the summary's mean over folders, not its pooled "unknown_tagged": one folder of many photos would
        # otherwise set it)
        out.append(
            {
                "coverage": _share((tagged & (o.pred == o.label))[o.known]),
                "unknown_tagged_mean_over_folders": float(np.mean(rates)) if rates else 0.0,
                "known_wrong": _share((tagged & (o.pred != o.label))[o.known]),
            }
        )
    return out


def _share(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if len(mask) else None


def curve_png(curve: dict, *, operating: dict | None = None) -> bytes:
    """Wrong-tag rate against coverage as the threshold moves; the deployed threshold marked."""
    from .training_report import _plt, _png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(
        curve["coverage"],
        curve["unknown_tagged_mean_over_folders"],
        "-",
        label="photos of no catalog landmark tagged (mean over folders)",
    )
    ax.plot(curve["coverage"], curve["known_wrong"], "--", label="known photos tagged wrong")
    if operating:
        ax.plot(
            [operating["known_right"]],
            [operating["unknown_tagged_mean_over_folders"] or 0.0],
            "o",
            color="crimson",
            label="the model's threshold",
        )
    ax.set(
        xlabel="coverage: known photos tagged right",
        ylabel="share tagged wrong",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title="Wrong tags against coverage",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def reliability_png(rel: dict) -> bytes:
    """Among tagged photos: share right against the score, per bin (the diagonal is a score that means what it
    says)."""
    from .training_report import _plt, _png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    pts = [(c, a, n) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n]
    ax.plot([0, 1], [0, 1], ":", color="grey")
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[20 + 4 * np.sqrt(p[2]) for p in pts])
    ece = rel.get("ece")
    ax.set(
        xlabel="score",
        ylabel="share of tags right",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        title="Open-world calibration" + (f" (ECE {ece:.3f})" if ece is not None else ""),
    )
    return _png(fig)


def share_text(v) -> str:
    """A share as the report shows it: one decimal, "-" where no photo counts towards it."""
    return "-" if v is None else f"{100 * v:.1f}%"


def html_report(result: dict, pngs: dict[str, bytes]) -> str:
    """One self-contained page (no external resources): the headline numbers, the folders, the two plots."""
    import base64
    import html

    s = result["summary"]
    lo_hi, floor = s.get("known_right_interval"), s.get("ece_if_calibrated")
    heads = [
        (
            "known photos right" + (f" (95%: {share_text(lo_hi[0])}-{share_text(lo_hi[1])})" if lo_hi else ""),
            share_text(s["known_right"]),
        ),
        ("known abstained", share_text(s["known_abstained"])),
        ("known wrong", share_text(s["known_wrong"])),
        ("unknown tagged (all photos)", share_text(s["unknown_tagged"])),
        ("unknown tagged (mean over folders: the curve)", share_text(s["unknown_tagged_mean_over_folders"])),
        (
            "ECE (tagged)" + (f"; a calibrated score: {floor['median']:.3f}" if floor else ""),
            "-" if s["ece_tagged"] is None else f"{s['ece_tagged']:.3f}",
        ),
    ]
    cards = "".join(f"<div class=card><b>{v}</b><span>{html.escape(k)}</span></div>" for k, v in heads)
    rows = "".join(
        f"<tr><td>{html.escape(r['folder'])}</td><td>{r['kind']}</td><td>{r['photos']}</td>"
        f"<td>{share_text(r.get('right'))}</td><td>{share_text(r.get('abstained'))}</td><td>{share_text(r.get('wrong'))}</td>"
        f"<td>{share_text(r.get('tagged'))}</td><td>{r.get('failed', 0)}</td><td>{html.escape(wrong_as(r))}</td></tr>"
        for r in s["folders"]
    )
    rates = "".join(
        f"<tr><td>{r['max_wrong_rate']:g}</td><td>{r['threshold']:.4g}</td><td>{share_text(r['coverage'])}</td>"
        f"<td>{share_text(r['unknown_tagged_mean_over_folders'])}</td><td>{share_text(r['known_wrong'])}</td></tr>"
        for r in result.get("rates") or []
    )
    if rates:
        rates = (
            "<h2>At other wrong-tag rates</h2><p>the threshold <code>landmark tag --max-wrong-rate R</code> would "
            "apply, from the held-back negatives' scores in the model</p><table><tr><th>--max-wrong-rate</th>"
            "<th>threshold</th><th>known right</th><th>unknown tagged (mean over folders)</th><th>known wrong</th></tr>"
            f"{rates}</table>"
        )
    rates += _look_alikes_html(result.get("catalog_look_alikes") or [])
    warnings = [*(result.get("not_held_out") or []), (result.get("near_copies") or {}).get("warning")]
    warned = "".join(f"<li>{html.escape(w)}</li>" for w in warnings if w)
    warned = f"<h2>Not held out</h2><ul class=warn>{warned}</ul>" if warned else ""
    imgs = "".join(
        f"<img alt='{html.escape(n)}' src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
        for n, b in pngs.items()
    )
    imgs += _mistakes_html(result.get("mistakes") or [])
    if result.get("compare"):
        text = html.escape("\n".join(compare_lines(result["compare"])))
        imgs += f"<h2>Compared with another model</h2><pre>{text}</pre>"
    return f"""<!doctype html><html><head><meta charset=utf-8><title>Open-world evaluation</title><style>
body{{font-family:sans-serif;margin:2em;color:#222}} .card{{display:inline-block;border:1px solid #ccc;
border-radius:6px;padding:.6em 1em;margin:.3em}} .card b{{display:block;font-size:1.4em}} table{{border-collapse:
collapse;margin:1em 0}} td,th{{border:1px solid #ddd;padding:.3em .7em;text-align:right}} td:first-child{{text-align:
left}} img{{max-width:48%;margin:.5em}} .warn{{color:#a40}}</style></head><body>
<h1>Open-world evaluation</h1><p>model {html.escape(str(result.get("model_id")))}, on
{html.escape(str(result.get("runtime")))}, threshold {result.get("threshold")}</p>{warned}{cards}
<table><tr><th>folder</th><th>kind</th><th>photos</th><th>right</th><th>abstained</th><th>wrong</th><th>tagged</th>
<th>failed</th><th>wrong tags as</th></tr>
{rows}</table>{rates}{imgs}</body></html>"""


def _look_alikes_html(rows: list[dict]) -> str:
    """The catalog look-alikes (`landmark eval`): each known folder as if its landmark were not in the catalog."""
    import html

    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{html.escape(r['folder'])}</td><td>{r['photos']}</td><td>{share_text(r['tagged'])}</td>"
        f"<td>{html.escape(', '.join(f'{k} {n}' for k, n in r['as'].items()))}</td></tr>"
        for r in rows
    )
    return (
        "<h2>Catalog look-alikes</h2><p>each known folder scored as if its landmark were not in the catalog: a high "
        "share says two catalog landmarks look alike to the model, and other sights like them will be tagged; a "
        "low one clears no sight outside the catalog</p><table><tr><th>folder</th><th>photos</th>"
        f"<th>tagged as another</th><th>as</th></tr>{body}</table>"
    )


def _mistakes_html(mistakes: list[dict], cap: int = 200) -> str:
    """The report's photos to look at: known photos not right, unknown photos tagged (the first ``cap`` of each,
    in the order eval.json lists them)."""
    import html

    out = []
    for title, kind in (("Known photos not right", "known"), ("Unknown photos tagged", "unknown")):
        rows = [m for m in mistakes if m["kind"] == kind]
        if not rows:
            continue
        body = "".join(
            f"<tr><td title='{html.escape(m['path'])}'>{html.escape(m['path'].rsplit('/', 1)[-1])}</td>"
            f"<td>{html.escape(m['folder'])}</td><td>{m['outcome']}</td><td>{html.escape(m['top1'] or '-')}</td>"
            f"<td>{m['decision_score']:.3f}</td></tr>"
            for m in rows[:cap]
        )
        more = f"<p>and {len(rows) - cap} more in photos.csv</p>" if len(rows) > cap else ""
        out.append(
            f"<h2>{title} ({len(rows)})</h2><table><tr><th>photo</th><th>folder</th><th>outcome</th>"
            f"<th>top-1 landmark</th><th>decision score</th></tr>{body}</table>{more}"
        )
    return "".join(out)


def paired(photos: list[dict], other: list[dict]) -> dict:
    """Two models on the same photos (`landmark eval` rows), photo by photo: per kind, how many each gets right
    (known: right; unknown: tagged, a wrong location), how many only one of them does, and the exact McNemar
    p-value of that split (the chance of one at least as uneven were the two as good); ``differ``: the photos
    they decide differently (another outcome, or a wrong tag to another landmark)."""
    theirs = {(p["folder"], p["path"]): p for p in other}
    pairs = [(p, theirs[(p["folder"], p["path"])]) for p in photos]
    pairs = [(a, b) for a, b in pairs if "failed" not in (a["outcome"], b["outcome"])]
    out = {}
    for kind, counted in (("known", "right"), ("unknown", "tagged")):
        both = [(a["outcome"] == counted, b["outcome"] == counted) for a, b in pairs if a["kind"] == kind]
        only = [sum(x and not y for x, y in both), sum(y and not x for x, y in both)]
        out[kind] = {
            "photos": len(both),
            counted: [sum(x for x, _ in both), sum(y for _, y in both)],
            "only": only,
            "p_value": mcnemar_p(*only),
        }
    out["differ"] = [
        {"folder": a["folder"], "path": a["path"], "outcome": a["outcome"], "compare_outcome": b["outcome"]}
        for a, b in pairs
        if a["outcome"] != b["outcome"] or (a["outcome"] in ("wrong", "tagged") and a["top1"] != b["top1"])
    ]
    return out


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: how likely a split of the discordant photos at least this uneven is when each
    goes either way as a fair coin would."""
    from math import comb

    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n)


def compare_lines(c: dict) -> list[str]:
    """`landmark eval --compare-model`: the two models' counts on the same photos, what only one of them gets."""
    lines = [f"compared with {c['model_id']} (threshold {c['threshold']:.4g}) on the same photos:"]
    for kind, counted, what in (("known", "right", "known photos right"), ("unknown", "tagged", "unknown tagged")):
        k = c[kind]
        if k["photos"]:
            (a, b), (x, y) = k[counted], k["only"]
            lines.append(
                f"  {what}: {a} against {b} of {k['photos']} (only this model {x}, only the other {y}; "
                f"exact McNemar p = {k['p_value']:.2g})"
            )
    lines.append(f"  {len(c['differ'])} photo(s) decided differently (eval.json's compare.differ)")
    return lines
