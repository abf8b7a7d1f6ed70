"""`landmark report`: one self-contained HTML page about a tags location (committed runs, latest per photo).

    DIR/report.html     inline CSS, no scripts, no external resources
    DIR/landmarks.png   photos per landmark
    DIR/scores.png      top-1 score histogram split by status
    DIR/map.png         where the tagged photos' landmarks are (lon/lat fitted to them, plain axes, no basemap)
    DIR/thumbs/*.jpg    ~160 px thumbnails (at most --thumbs photos)
    DIR/model/*.png     the training report PNGs, copied when --model DIR is given

Every string that comes from the data (uris, errors, names, ids) is HTML-escaped. No Ray here.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from jobs._cli import ConfigError, check_output_dir, checks_config, fields_of, run_cli
from landmark_core import storage, tagstore
from landmark_core.status import FAILED, NO_LANDMARK, TAGGED
from landmark_core.training_report import plot_text

STATUS_COLOURS = {TAGGED: "#2e7d32", NO_LANDMARK: "#b26a00", FAILED: "#c62828"}
REPORT_COLUMNS = [
    "uri",
    "status",
    "error",
    "landmark",
    "score",
    "lat",
    "lon",
    "tags",
    "model_id",
    "run_id",
    "tagged_at",
]
MODEL_PNGS = ("curves.png", "confusion.png", "reliability.png")
MODEL_METRICS = (
    "model_id",
    "model",
    "epochs",
    "val_top1",
    "test_top1",
    "test_top5",
    "test_ece",
    "open_auroc",
    "open_reject_at_95",
    "abstain_method",
    "abstain_threshold",
    "n_train",
    "n_val",
    "n_test",
)
THUMB_PX = 160
DEFAULT_THUMBS = 200
TOP_TAGS = 3

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px 0;font-size:24px} h2{margin:28px 0 10px 0;font-size:18px;border-bottom:1px solid #ddd}
.muted{color:#666;font-size:13px} code{font-size:12px}
.stats{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.stat{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.stat b{display:block;font-size:22px}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-size:11px;font-weight:600}
.b-tagged{background:#2e7d32} .b-no_landmark{background:#b26a00} .b-failed{background:#c62828}
.b-other{background:#555}
.charts{display:flex;gap:16px;flex-wrap:wrap} .charts img{max-width:100%;background:#fff;border:1px solid #ddd}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;overflow:hidden}
.card.failed{border-color:#c62828}
.thumb{width:100%;height:130px;object-fit:cover;border-radius:4px;display:block;background:#eee}
.err{height:130px;overflow:auto;background:#fdecea;color:#8a1c1c;font-size:12px;padding:6px;border-radius:4px;
     box-sizing:border-box;word-break:break-word}
.uri{font-size:11px;color:#555;word-break:break-all;margin:6px 0 4px 0}
ul.tags{list-style:none;margin:4px 0 0 0;padding:0;font-size:12px}
ul.tags li{display:flex;justify-content:space-between}
table.kv{border-collapse:collapse;font-size:13px;background:#fff}
table.kv td,table.kv th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.warn{background:#fff4e5;border:1px solid #b26a00;border-radius:6px;padding:6px 10px;font-size:13px}
"""


def esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


# ------------------------------------------------------------------------------------------------ charts


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # the OO API: no pyplot state, no display, Agg canvas

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777")


def landmarks_png(rows: list[dict], path: Path, top: int = 30) -> None:
    counts = Counter(r["landmark"] for r in rows if r.get("landmark") is not None)
    items = counts.most_common(top)
    fig = _figure(7, max(2.5, 0.28 * len(items) + 1.2))
    ax = fig.add_subplot()
    if items:
        names = [plot_text(n) for n, _ in items][::-1]
        ax.barh(names, [c for _, c in items][::-1], color=STATUS_COLOURS["tagged"])
        ax.set_xlabel("photos")
        ax.tick_params(axis="y", labelsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.set_yticks([])
        _no_data(ax, "no tagged photos")
    more = f" (top {top} of {len(counts)})" if len(counts) > top else ""
    ax.set_title("photos per landmark" + more)
    fig.savefig(path, format="png")


def scores_png(rows: list[dict], path: Path) -> None:
    fig = _figure(7, 3.2)
    ax = fig.add_subplot()
    bins = [i / 20 for i in range(21)]
    any_score = False
    for status in tagstore.STATUSES:
        scores = [
            float(r["score"])
            for r in rows
            if r.get("status") == status and r.get("score") is not None and not math.isnan(r["score"])
        ]
        if scores:
            any_score = True
            ax.hist(scores, bins=bins, alpha=0.65, color=STATUS_COLOURS[status], label=f"{status} ({len(scores)})")
    if any_score:
        ax.legend(fontsize=8)
        ax.yaxis.get_major_locator().set_params(integer=True)
    else:
        _no_data(ax, "no scores")
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 score")
    ax.set_ylabel("photos")
    ax.set_title("top-1 score by status")
    fig.savefig(path, format="png")


def map_extent(xs, ys) -> tuple[float, float, float, float]:
    """The points' box (lon0, lon1, lat0, lat1) with a margin: one city's landmarks fill the map instead of a dot
    on the whole world; at least 0.01 degrees each way, at most the world."""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad = max(0.01, 0.2 * max(x1 - x0, y1 - y0))
    return max(-180.0, x0 - pad), min(180.0, x1 + pad), max(-90.0, y0 - pad), min(90.0, y1 + pad)


def map_png(rows: list[dict], path: Path) -> None:
    fig = _figure(8, 4.3)
    ax = fig.add_subplot()
    points = Counter(
        (r["lon"], r["lat"], r.get("landmark"))
        for r in rows
        if r.get("status") == TAGGED
        and r.get("lat") is not None
        and r.get("lon") is not None
        and not (math.isnan(r["lat"]) or math.isnan(r["lon"]))
    )
    if points:
        xs, ys, sizes = zip(*((x, y, 18 + 10 * math.sqrt(n)) for (x, y, _), n in points.items()))
        ax.scatter(xs, ys, s=sizes, color=STATUS_COLOURS["tagged"], alpha=0.7, edgecolors="white", linewidths=0.5)
        for i, ((x, y, name), n) in enumerate(sorted(points.items(), key=lambda kv: -kv[1])[:12]):
            if name:  # right and left, staggered: the landmarks of one city are close together
                side = 1 if i % 2 == 0 else -1
                ax.annotate(
                    f"{plot_text(name)} ({n})",
                    (x, y),
                    xytext=(6 * side, 3 + 7 * (i % 3) * side),
                    textcoords="offset points",
                    ha="left" if side > 0 else "right",
                    fontsize=7,
                )
        x0, x1, y0, y1 = map_extent(xs, ys)
    else:
        _no_data(ax, "no tagged photos with a location")
        x0, x1, y0, y1 = -180, 180, -90, 90
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.grid(True, color="#ddd", linewidth=0.6)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title("landmark locations of tagged photos")
    fig.savefig(path, format="png")


# -------------------------------------------------------------------------------------------- thumbnails


def make_thumb(uri: str, dest: Path, opts: storage.S3Options) -> str | None:
    """Write a JPEG thumbnail of ``uri`` to ``dest``; the reason as a string when it cannot."""
    from landmark_core.preprocess import decode_image

    try:
        decoded = decode_image(storage.read_bytes(uri, opts), draft_to=THUMB_PX)
        im = decoded.image
        im.thumbnail((THUMB_PX, THUMB_PX))
        im.save(dest, format="JPEG", quality=80)
        return None
    except Exception as e:  # missing since tagged, unreadable, ...: the card says so instead of failing the report
        return storage.redact(f"{type(e).__name__}: {e}")[:300]


def _thumbs(rows: list[dict], thumbs_dir: Path, opts: storage.S3Options) -> list[str | None]:
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, r) for i, r in enumerate(rows) if r.get("status") != "failed"]
    problems: list[str | None] = [None] * len(rows)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for (i, _), problem in zip(
            jobs, pool.map(lambda ir: make_thumb(ir[1]["uri"], thumbs_dir / f"{ir[0]:05d}.jpg", opts), jobs)
        ):
            problems[i] = problem
    return problems


# ------------------------------------------------------------------------------------------------- HTML


def _badge(status) -> str:
    cls = f"b-{status}" if status in STATUS_COLOURS else "b-other"
    return f'<span class="badge {cls}">{esc(status)}</span>'


def _card(i: int, r: dict, problem: str | None) -> str:
    status = r.get("status")
    uri = r.get("uri") or ""
    short = uri if len(uri) <= 90 else "…" + uri[-89:]
    if status == "failed":
        picture = f'<div class="err">{esc(r.get("error") or "failed (no error recorded)")}</div>'
    elif problem:
        picture = f'<div class="err">thumbnail unavailable: {esc(problem)}</div>'
    else:
        picture = f'<img class="thumb" src="thumbs/{i:05d}.jpg" alt="{esc(uri)}" loading="lazy">'
    tags = r.get("tags") or []
    items = "".join(
        f"<li><span>{esc(t.get('name'))}</span><span>{_score(t.get('score'))}</span></li>" for t in tags[:TOP_TAGS]
    )
    tag_list = f'<ul class="tags">{items}</ul>' if items else ""
    return (
        f'<div class="card {esc(status)}">{picture}<div class="uri" title="{esc(uri)}">{esc(short)}</div>'
        f"{_badge(status)}{tag_list}</div>"
    )


def _score(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.2f}"


def _members_rows(members: dict | None) -> list[str]:
    """A pooled model (--members K): how many runs, and the pooled decision on the test split (the threshold
    above is the pooled one; the first member's head names the landmark, so test_top1 is the pool's too)."""
    if not isinstance(members, dict):
        return []
    rows = [("members (seeds)", f"{members.get('count')} ({', '.join(map(str, members.get('seeds', [])))})")]
    by_runtime = members.get("test_by_runtime") or ({"torch": members["test"]} if members.get("test") else {})
    for runtime, test in by_runtime.items():  # int8's decision is the CPU tag job's: its own fit, a photo apart
        shares = ", ".join(f"{k} {100 * test[k]:.1f}%" for k in ("right", "abstained", "wrong") if k in test)
        on = "fp32" if runtime == "torch" else runtime
        rows.append((f"test, pooled decision ({on})", f"{shares} of {test.get('photos')} photos"))
    # (test_ece and reliability.png describe the first member's head alone, not the pooled score)
    rows.append(("test_ece, reliability.png", "the first member's head (fp32); the pooled decision is above"))
    return [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows]


def _runs_threshold(model_dir: str, model_id, runs: list[dict] | None, opts: storage.S3Options) -> str | None:
    """The threshold the newest tag run of this model applied: its override, else the artifact's threshold for
    the runtime it ran (an open-world model fits one per runtime: int8's differs from the fp32 one in metrics)."""
    run = next((r for r in reversed(runs or []) if r.get("model_id") == model_id and r.get("runtime")), None)
    if run is None:
        return None
    runtime, config = run["runtime"], run.get("config") or {}
    if config.get("min_score") is not None:
        return f"{config['min_score']} (--min-score of run {run.get('run_id')}, on {runtime})"
    for flag in ("max_wrong_rate", "accept_rate"):
        if config.get(flag) is not None:
            return f"at --{flag.replace('_', '-')} {config[flag]} (run {run.get('run_id')}, on {runtime})"
    try:
        abstain = json.loads(storage.read_bytes(storage.join(model_dir, "artifact.json"), opts)).get("abstain", {})
    except Exception:
        return None
    t = abstain.get("runtimes", {}).get(runtime, {}).get("threshold", abstain.get("threshold"))
    return None if t is None else f"{float(t):.4f} (on {runtime}, as run {run.get('run_id')} applied it)"


def model_id_of(model_dir: str, opts: storage.S3Options = storage.S3Options()) -> str | None:
    """The model_id of the model at ``model_dir``: its metrics.json's, else its artifact.json's (None: neither)."""
    for name in ("metrics.json", "artifact.json"):
        try:
            model_id = json.loads(storage.read_bytes(storage.join(model_dir, name), opts)).get("model_id")
        except Exception:
            continue
        if model_id:
            return str(model_id)
    return None


def untagged_note(model_id: str | None, table_model_ids, runs: list[dict] | None) -> str | None:
    """When the model given (--model) tagged none of the rows and none of the runs (their recorded model_id), what
    to say: its numbers and threshold are then not those of these tags. None when it did, or nothing tells."""
    if not model_id:
        return None
    used = {m for m in table_model_ids if m} | {r["model_id"] for r in runs or [] if r.get("model_id")}
    if not used or model_id in used:
        return None
    return f"this model ({model_id}) tagged none of these rows; the table's runs used {', '.join(sorted(used))}"


def _model_section(
    model_dir: str, out: Path, opts: storage.S3Options, runs: list[dict] | None = None, note: str | None = None
) -> str:
    parts = [f'<h2>Model</h2><p class="muted">from <code>{esc(model_dir)}</code></p>']
    if note:
        parts.append(f'<p class="warn"><b>Not the model of these tags:</b> {esc(note)}</p>')
    try:
        metrics = json.loads(storage.read_bytes(storage.join(model_dir, "metrics.json"), opts))
    except Exception as e:
        metrics = None
        parts.append(f'<p class="muted">metrics.json unavailable: {esc(type(e).__name__)}</p>')
    if isinstance(metrics, dict):
        rows = []
        for k in MODEL_METRICS:
            if k in metrics:
                v = metrics[k]
                v = f"{v:.4f}" if isinstance(v, float) else v
                label = f"{k} (training, fp32)" if k in ("abstain_threshold", "test_ece") else k
                rows.append(f"<tr><th>{esc(label)}</th><td>{esc(v)}</td></tr>")
        if applied := _runs_threshold(model_dir, metrics.get("model_id"), runs, opts):
            rows.append(f"<tr><th>threshold of the tag runs</th><td>{esc(applied)}</td></tr>")
        rows += _members_rows(metrics.get("members"))
        if rows:
            parts.append(f'<table class="kv">{"".join(rows)}</table>')
    imgs = []
    (out / "model").mkdir(exist_ok=True)
    for name in MODEL_PNGS:
        try:
            data = storage.read_bytes(storage.join(model_dir, "report", name), opts)
        except Exception:
            continue
        (out / "model" / name).write_bytes(data)
        imgs.append(f'<a href="model/{name}"><img src="model/{name}" alt="{name}" style="max-width:520px"></a>')
    if imgs:
        parts.append(f'<div class="charts">{"".join(imgs)}</div>')
    else:
        parts.append('<p class="muted">no training report PNGs found under report/</p>')
    return "".join(parts)


def write_report(
    table: pa.Table,
    out_dir,
    *,
    model_dir: str | None = None,
    opts: storage.S3Options = storage.S3Options(),
    thumbs: int = DEFAULT_THUMBS,
    runs: list[dict] | None = None,
    tags_uri: str | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (plus its PNGs and thumbnails) for ``table`` (rows of TAGS_SCHEMA).

    ``runs``: the committed runs (for the header's run count and run list; default: the run_ids in
    ``table``). ``thumbs``: at most this many photo cards. Returns the path of report.html.
    """
    missing = [c for c in ("uri", "status") if c not in table.column_names]
    if missing:
        raise ValueError(f"write_report needs the column(s) {', '.join(missing)}")
    if thumbs < 0:
        raise ValueError(f"thumbs must be >= 0, got {thumbs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = table.select([c for c in REPORT_COLUMNS if c in table.column_names])
    if table.num_rows > 1:
        table = table.sort_by([("uri", "ascending")])
    rows = table.to_pylist()

    landmarks_png(rows, out / "landmarks.png")
    scores_png(rows, out / "scores.png")
    map_png(rows, out / "map.png")
    shown = rows[:thumbs]
    problems = _thumbs(shown, out / "thumbs", opts)

    parts = _header(rows, runs, tags_uri)
    parts += [
        "<h2>Charts</h2>",
        '<div class="charts">',
        '<img src="landmarks.png" alt="photos per landmark">',
        '<img src="scores.png" alt="top-1 score histogram by status">',
        '<img src="map.png" alt="landmark locations of tagged photos">',
        "</div>",
    ]
    if model_dir:
        note = untagged_note(model_id_of(model_dir, opts), {r.get("model_id") for r in rows}, runs)
        parts.append(_model_section(model_dir, out, opts, runs, note))
    note = f" (first {len(shown)} of {len(rows)}, by uri)" if len(shown) < len(rows) else ""
    parts.append(f"<h2>Photos{note}</h2>")
    if shown:
        parts.append('<div class="grid">' + "".join(_card(i, r, problems[i]) for i, r in enumerate(shown)) + "</div>")
    else:
        parts.append('<p class="muted">no photos</p>')
    parts.append("</body></html>\n")
    path = out / "report.html"
    storage.write_bytes(str(path), "\n".join(parts).encode("utf-8"))  # atomic: a reader never sees half a page
    return path


def _header(rows: list[dict], runs: list[dict] | None, tags_uri: str | None) -> list[str]:
    """The page's head and the report's opening: photos by status, runs, model ids, the last 20 runs."""
    by_status = Counter(r.get("status") for r in rows)
    stats = [f'<div class="stat"><b>{len(rows)}</b>photos</div>']
    for s in tagstore.STATUSES + tuple(sorted(k for k in by_status if k not in tagstore.STATUSES and k)):
        stats.append(f'<div class="stat"><b>{by_status.get(s, 0)}</b>{_badge(s)}</div>')
    run_ids = sorted({r["run_id"] for r in rows if r.get("run_id")})
    n_runs = len(runs) if runs is not None else len(run_ids)
    stats.append(f'<div class="stat"><b>{n_runs}</b>committed runs</div>')
    model_ids = sorted({r["model_id"] for r in rows if r.get("model_id")})
    if runs:
        model_ids = sorted(set(model_ids) | {r["model_id"] for r in runs if r.get("model_id")})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Landmark tags report{(' — ' + esc(tags_uri)) if tags_uri else ''}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Landmark tags report</h1>",
        f'<p class="muted">{("<code>" + esc(tags_uri) + "</code> · ") if tags_uri else ""}latest committed run '
        f"per photo · generated {esc(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}</p>",
        f'<div class="stats">{"".join(stats)}</div>',
        "<p>model_id(s): " + (", ".join(f"<code>{esc(m)}</code>" for m in model_ids) or "<i>none</i>") + "</p>",
    ]
    if runs:
        parts.append(_runs_table(runs))
    return parts


def _runs_table(runs: list[dict]) -> str:
    """The last 20 committed runs, newest first, folded."""
    trs = "".join(
        f"<tr><td><code>{esc(r.get('run_id'))}</code></td><td>{esc(r.get('version'))}</td><td>{esc(r.get('dt'))}</td>"
        f"<td>{esc(r.get('committed_at'))}</td><td><code>{esc(r.get('model_id'))}</code></td>"
        f"<td>{esc(_counts_text(r.get('counts')))}</td></tr>"
        for r in reversed(runs[-20:])
    )
    return (
        "<details><summary>runs (newest first"
        + (", last 20" if len(runs) > 20 else "")
        + ')</summary><table class="kv"><tr><th>run_id</th><th>version</th><th>dt</th><th>committed_at</th>'
        f"<th>model_id</th><th>counts</th></tr>{trs}</table></details>"
    )


def _counts_text(counts) -> str:
    if not isinstance(counts, dict):
        return ""
    return ", ".join(f"{k} {v}" for k, v in counts.items())


# -------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="landmark report",
        description="Write DIR/report.html about a tags location (committed runs, latest per photo): counts, "
        "charts (PNG files next to it), a thumbnail grid and, with --model, the training report.",
    )
    p.add_argument("--tags", required=True, metavar="URI", help="tag store root: a local path or s3://bucket/prefix")
    p.add_argument("--out", required=True, metavar="DIR", help="local output directory (created)")
    p.add_argument(
        "--model",
        metavar="DIR",
        help="model artifact dir with metrics.json and report/{curves,confusion,reliability}.png",
    )
    p.add_argument(
        "--thumbs",
        type=int,
        default=DEFAULT_THUMBS,
        metavar="N",
        help=f"at most N photo thumbnails (default {DEFAULT_THUMBS}; 0 = none)",
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    return p


@dataclass(frozen=True)
class ReportConfig:
    tags: str
    out: str
    model: str | None = None
    thumbs: int = DEFAULT_THUMBS
    s3_endpoint: str | None = None

    def check(self) -> None:
        try:
            self.s3_options().check()
            storage.check_uri(self.tags)
        except storage.StorageError as e:
            raise ConfigError(str(e) if str(e).startswith("--") else f"--tags: {e}") from None
        if self.thumbs < 0:
            raise ConfigError(f"--thumbs must be >= 0, got {self.thumbs}")
        check_output_dir("--out", self.out)  # a local folder: the PNGs and thumbnails are written with Path
        if self.model:
            try:
                storage.check_uri(self.model)
            except storage.StorageError as e:
                raise ConfigError(f"--model: {e}") from None

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint or None)


def _check_model(model: str | None, opts: storage.S3Options) -> None:
    """--model names the directory `landmark train` wrote: without its metrics.json (or, for a bare artifact, its
    artifact.json) the report's model section would be empty, so a wrong path fails here, before any work."""
    if not model:
        return
    try:
        found = any(storage.exists(storage.join(model, name), opts) for name in ("metrics.json", "artifact.json"))
    except Exception as e:  # S3 refusing or unreachable: still the --model location that is at fault
        raise ConfigError(f"--model {model}: cannot read it ({storage.redact(tagstore.error_text(e, 200))})") from None
    if not found:
        raise ConfigError(f"--model {model}: not a model directory (no metrics.json or artifact.json there)")


@checks_config
def run(cfg: ReportConfig) -> Path:
    """Writes the report of the store at ``cfg.tags``; returns the path of report.html."""
    from jobs.store import require_table

    opts = cfg.s3_options()
    _check_model(cfg.model, opts)
    try:
        runs = tagstore.runs(cfg.tags, opts)
        if not runs:  # an empty store gets an empty report; a mistyped --tags (no table there) an error
            require_table(cfg.tags, opts, "--tags")
        table = tagstore.read(cfg.tags, columns=REPORT_COLUMNS, opts=opts)
    except (OSError, storage.StorageError, tagstore.StoreError) as e:
        if why := storage.unreachable_reason("--tags", cfg.tags, opts):  # not the store's page of XML
            raise ConfigError(why) from None
        raise tagstore.StoreError(f"cannot read {cfg.tags}: {storage.redact(str(e))}") from None
    if not runs:
        print(f"landmark report: no committed runs under {cfg.tags}; writing an empty report", file=sys.stderr)
    if cfg.model and (note := untagged_note(model_id_of(cfg.model, opts), table.column("model_id").to_pylist(), runs)):
        print(f"landmark report: warning: --model {cfg.model}: {note}", file=sys.stderr)
    return write_report(table, cfg.out, model_dir=cfg.model, opts=opts, thumbs=cfg.thumbs, runs=runs, tags_uri=cfg.tags)


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        build_parser(),
        sys.argv[1:] if argv is None else argv,
        config=lambda ns: fields_of(ReportConfig, ns),
        run=run,
        show=lambda path, _cfg: print(path),
        failures=((tagstore.StoreError, 1),),
    )


if __name__ == "__main__":
    sys.exit(main())
