"""`landmark report`: the HTML report over a hand-built tag store with real JPEG photos (no Ray)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs import report as rep
from landmark_core import tagstore
from landmark_core.synthetic import render_scene
from tests.browser import rendered_dom, require_chromium, screenshot
from tests.cli_asserts import assert_error_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T1 = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
T2 = datetime(2026, 11, 22, 6, 0, tzinfo=timezone.utc)
PLACES = {
    "tower": ("Eiffel Tower", 48.8584, 2.2945),
    "bridge": ("Golden Gate Bridge", 37.8199, -122.4783),
    "dome": ("St Peter's Basilica", 41.9022, 12.4539),
}
EVIL = '<script>alert("x")</script>&'


def tag_row(
    uri: str, run_id: str, *, status: str, place=None, score=None, error=None, tagged_at=T1, model_id="lm-aaaa"
) -> dict:
    name, lat, lon = place if place else (None, None, None)
    tags = (
        None
        if status == "failed"
        else [
            {"name": name or "Eiffel Tower", "score": score, "lat": lat, "lon": lon},
            {"name": "Big Ben", "score": 0.02, "lat": 51.5007, "lon": -0.1246},
        ]
    )
    return {
        "uri": uri,
        "size_bytes": 1,
        "etag": None,
        "sha256": None,
        "status": status,
        "error": error,
        "width": 320,
        "height": 240,
        "exif_lat": None,
        "exif_lon": None,
        "exif_time": None,
        "landmark": name if status == "tagged" else None,
        "score": score,
        "lat": lat if status == "tagged" else None,
        "lon": lon if status == "tagged" else None,
        "tags": tags,
        "model_id": model_id,
        "run_id": run_id,
        "tagged_at": tagged_at,
    }


def write_run(root: Path, dt: str, run_id: str, rows: list[dict], *, committed_at: str | None, model_id: str) -> None:
    """One run appended to the Delta table at ``root``; ``committed_at=None`` leaves it uncommitted."""
    counts = {s: sum(r["status"] == s for r in rows) for s in tagstore.STATUSES}
    summary = {
        "run_id": run_id,
        "dt": dt,
        "committed_at": committed_at,
        "model_id": model_id,
        "counts": {**counts, "total": len(rows)},
        "rows": len(rows),
        "config": {},
        "timings": {},
    }
    tagstore.append_run(
        str(root), pa.Table.from_pylist(rows, schema=tagstore.TAGS_SCHEMA), summary, dt=dt, commit=bool(committed_at)
    )


def save_photo(path: Path, shape: str | None, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_scene(shape, np.random.default_rng(seed)).save(path, format="JPEG", quality=85)
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Photos and a tag store, built once for this module (tests write their reports elsewhere)."""
    tmp_path = tmp_path_factory.mktemp("report-store")
    photos = tmp_path / "photos"
    tower = save_photo(photos / "tower.jpg", "tower", 0)
    bridge = save_photo(photos / "bridge.jpg", "bridge", 1)
    dome = save_photo(photos / "dome.jpg", "dome", 2)
    plain = save_photo(photos / "plain.jpg", None, 3)
    evil = save_photo(photos / f"{EVIL}.jpg", "tower", 4)  # a file name that must be escaped in the HTML
    root = tmp_path / "tags"
    write_run(
        root,
        "2026-11-20",
        "r1",
        [
            tag_row(tower, "r1", status="tagged", place=PLACES["tower"], score=0.93),
            tag_row(bridge, "r1", status="tagged", place=PLACES["tower"], score=0.55),  # re-tagged by r2
            tag_row(plain, "r1", status="no_landmark", score=0.21),
        ],
        committed_at="2026-11-20T06:30:00+00:00",
        model_id="lm-aaaa",
    )
    write_run(
        root,
        "2026-11-22",
        "r2",
        [
            tag_row(
                bridge, "r2", status="tagged", place=PLACES["bridge"], score=0.88, tagged_at=T2, model_id="lm-bbbb"
            ),
            tag_row(dome, "r2", status="tagged", place=PLACES["dome"], score=0.76, tagged_at=T2, model_id="lm-bbbb"),
            tag_row(evil, "r2", status="tagged", place=PLACES["tower"], score=0.81, tagged_at=T2, model_id="lm-bbbb"),
            tag_row(
                str(photos / "gone.jpg"),
                "r2",
                status="failed",
                error=f"decode: truncated {EVIL}",
                tagged_at=T2,
                model_id="lm-bbbb",
            ),
        ],
        committed_at="2026-11-22T06:30:00+00:00",
        model_id="lm-bbbb",
    )
    write_run(
        root,
        "2026-11-23",
        "r3",
        [  # uncommitted: invisible
            tag_row(tower, "r3", status="failed", error="never shown", tagged_at=T2)
        ],
        committed_at=None,
        model_id="lm-cccc",
    )
    return {"root": str(root)}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    (d / "report").mkdir(parents=True)
    for name in rep.MODEL_PNGS:
        Image.new("RGB", (40, 30), (200, 30, 30)).save(d / "report" / name)
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "model_id": "lm-bbbb",
                "model": "efficientnet_lite0",
                "test_top1": 0.9321,
                "epochs": 8,
                "secret_stuff": "no",
                "members": {"count": 3, "seeds": [0, 1, 2], "test": {"photos": 125, "right": 0.968, "wrong": 0.008}},
            }
        )
    )
    return d


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()


def test_write_report(store, model_dir, tmp_path):
    table = tagstore.read(store["root"])
    out = tmp_path / "report"
    path = rep.write_report(
        table, out, model_dir=str(model_dir), runs=tagstore.runs(store["root"]), tags_uri=store["root"]
    )
    assert path == out / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")

    # one thumbnail <img> per photo that is not failed; the failed row shows its (escaped) error instead
    thumbs = re.findall(r'<img class="thumb" src="(thumbs/\d+\.jpg)"', page)
    non_failed = [r for r in table.to_pylist() if r["status"] != "failed"]
    assert len(thumbs) == len(non_failed) == 5
    for src in thumbs:
        with Image.open(out / src) as im:
            assert im.format == "JPEG" and max(im.size) <= rep.THUMB_PX and min(im.size) > 50
    assert page.count('class="card ') == table.num_rows == 6
    assert "decode: truncated &lt;script&gt;" in page

    # everything from the data is escaped: no live <script> anywhere
    assert "<script" not in page.lower()
    assert html_escaped(EVIL) in page

    # header: counts by status, runs, model ids; the uncommitted run is nowhere
    assert re.search(r"<b>4</b><span class=\"badge b-tagged\">tagged</span>", page)
    assert re.search(r"<b>1</b><span class=\"badge b-no_landmark\">no_landmark</span>", page)
    assert re.search(r"<b>1</b><span class=\"badge b-failed\">failed</span>", page)
    assert "<b>2</b>committed runs" in page
    assert "lm-aaaa" in page and "lm-bbbb" in page and "lm-cccc" not in page and "never shown" not in page
    # the latest run wins: bridge.jpg shows r2's Golden Gate Bridge, not r1's Eiffel Tower
    bridge_card = next(c for c in page.split('<div class="card ') if "bridge.jpg" in c)
    assert "Golden Gate Bridge" in bridge_card and "0.88" in bridge_card

    # charts and the model's PNGs
    for name in ("landmarks.png", "scores.png", "map.png"):
        assert_png(out / name)
        assert f'src="{name}"' in page
    for name in rep.MODEL_PNGS:
        assert_png(out / "model" / name)
        assert f'src="model/{name}"' in page
    assert "0.9321" in page and "efficientnet_lite0" in page and "secret_stuff" not in page
    assert "3 (0, 1, 2)" in page and "right 96.8%, wrong 0.8% of 125 photos" in page  # a pooled model says so
    # self-contained: inline CSS, no external resources
    assert "<style>" in page and "http://" not in page and "https://" not in page


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_thumbs_limit_and_missing_photo(store, tmp_path):
    table = tagstore.read(store["root"])
    # a photo deleted since it was tagged (sorts among the first two by uri): its card says so, the report is still
    # written
    gone = tag_row(
        str(Path(store["root"]).parent / "photos" / "aaa-deleted.jpg"),
        "r2",
        status="tagged",
        place=PLACES["dome"],
        score=0.9,
    )
    table = pa.concat_tables([table, pa.Table.from_pylist([gone], schema=tagstore.TAGS_SCHEMA)])
    out = tmp_path / "small"
    page = rep.write_report(table, out, thumbs=2).read_text()
    assert page.count('class="card ') == 2 and "first 2 of 7" in page
    assert len(list((out / "thumbs").glob("*.jpg"))) == 1
    assert "<b>7</b>photos" in page  # the header still counts every photo
    gone_card = next(c for c in page.split('<div class="card ')[1:] if "aaa-deleted.jpg" in c)
    assert "thumbnail unavailable" in gone_card and "FileNotFoundError" in gone_card and "<img" not in gone_card


def test_no_committed_runs_writes_an_empty_report(tmp_path, capsys):
    out = tmp_path / "r"
    tagstore.ensure_table(str(tmp_path / "empty"))  # a table, but no run committed to it yet
    assert rep.main(["--tags", str(tmp_path / "empty"), "--out", str(out)]) == 0
    assert "no committed runs" in capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert "no photos" in page and "<b>0</b>photos" in page and "<b>0</b>committed runs" in page
    for name in ("landmarks.png", "scores.png", "map.png"):
        assert_png(out / name)


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--thumbs", "-1"], "--thumbs"),
        (["--s3-endpoint", "nope"], "--s3-endpoint"),
        (["--model", "ftp://x/y"], "--model"),
    ],
)
def test_report_cli_bad_arguments(store, capsys, argv, flag, tmp_path):
    with pytest.raises(SystemExit) as e:
        rep.main(["--tags", store["root"], "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, flag)


def test_the_model_section_shows_the_threshold_the_tag_runs_applied(model_dir, tmp_path):
    """An open-world model has one threshold per runtime: the report names the one its newest run applied (int8's
    on a CPU), or that run's override, beside the training (fp32) numbers, which it labels as such."""
    (model_dir / "artifact.json").write_text(
        json.dumps({"abstain": {"threshold": 0.1842, "runtimes": {"onnx-int8": {"threshold": 0.2848}}}})
    )
    metrics = json.loads((model_dir / "metrics.json").read_text())
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "abstain_threshold": 0.1842}))
    empty = tagstore.empty()
    runs = [
        {"run_id": "r1", "model_id": "lm-bbbb", "runtime": "torch", "config": {}},
        {"run_id": "r2", "model_id": "lm-bbbb", "runtime": "onnx-int8", "config": {}},
        {"run_id": "r3", "model_id": "lm-other", "runtime": "torch", "config": {}},
    ]
    page = rep.write_report(empty, tmp_path / "a", model_dir=str(model_dir), runs=runs).read_text()
    assert "threshold of the tag runs</th><td>0.2848 (on onnx-int8, as run r2 applied it)" in page
    assert "abstain_threshold (training, fp32)" in page and "the first member&#x27;s head" in page
    runs.append({"run_id": "r4", "model_id": "lm-bbbb", "runtime": "onnx-int8", "config": {"min_score": 0.5}})
    page = rep.write_report(empty, tmp_path / "b", model_dir=str(model_dir), runs=runs).read_text()
    assert "threshold of the tag runs</th><td>0.5 (--min-score of run r4, on onnx-int8)" in page


def test_a_model_that_tagged_none_of_the_rows_is_warned_of_and_said_in_the_page(store, model_dir, tmp_path, capsys):
    """--model of another model than the table's runs used: its training numbers and threshold are not those of
    these tags. One warning line naming --model and the runs' model_ids, and the same beside the Model section."""
    metrics = json.loads((model_dir / "metrics.json").read_text())
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "model_id": "lm-zzzz"}))
    out = tmp_path / "other"
    assert rep.main(["--tags", store["root"], "--out", str(out), "--model", str(model_dir), "--thumbs", "0"]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.splitlines()
    assert warning.startswith(f"landmark report: warning: --model {model_dir}: "), warning
    note = "this model (lm-zzzz) tagged none of these rows; the table&#x27;s runs used lm-aaaa, lm-bbbb"
    assert note.replace("&#x27;", "'") in warning and "lm-cccc" not in warning  # not the uncommitted run's
    page = (out / "report.html").read_text()
    model_section = page[page.index("<h2>Model</h2>") :]
    assert note in model_section[: model_section.index("<table")], model_section[:600]
    assert "threshold of the tag runs" not in page
    # the model of the newest run: no warning, no note
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    assert rep.main(["--tags", store["root"], "--out", str(out), "--model", str(model_dir), "--thumbs", "0"]) == 0
    assert capsys.readouterr().err == "" and "tagged none of these rows" not in (out / "report.html").read_text()
    # a bare artifact (no metrics.json): its artifact.json's model_id tells
    (model_dir / "metrics.json").unlink()
    (model_dir / "artifact.json").write_text(json.dumps({"model_id": "lm-yyyy", "abstain": {}}))
    assert rep.main(["--tags", store["root"], "--out", str(out), "--model", str(model_dir), "--thumbs", "0"]) == 0
    assert "--model" in capsys.readouterr().err and "this model (lm-yyyy)" in (out / "report.html").read_text()


def test_missing_table_existing_file_and_missing_model_fail_fast_naming_the_flag(store, model_dir, tmp_path, capsys):
    """Exit 2 and one error line naming the flag, before anything is written: --tags where there is no table,
    --out an existing file (or under one) or where no folder can be made, --model where there is no model (the
    --out probe, made before it, is undone)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    out = tmp_path / "o"
    for argv, needles in (
        (["--tags", str(tmp_path / "nowhere"), "--out", str(out)], ("--tags", "_delta_log")),
        (["--tags", store["root"], "--out", str(a_file)], ("--out", str(a_file))),
        (["--tags", store["root"], "--out", str(a_file / "sub")], ("--out", str(a_file))),
        (["--tags", store["root"], "--out", "/proc/x"], ("--out /proc/x", "cannot create it")),  # was a traceback
        (["--tags", store["root"], "--out", str(out), "--model", str(tmp_path / "no-model")], ("--model",)),
        (["--tags", store["root"], "--out", str(out), "--model", str(tmp_path)], ("--model", "metrics.json")),
    ):
        try:
            code = rep.main(argv)
        except SystemExit as e:  # a check of the config: argparse's usage line, then the error
            code = e.code
        assert code == 2, argv
        assert_error_names(capsys.readouterr().err, *needles)
        assert not out.exists() and a_file.read_text() == "not a directory", argv
    assert rep.main(["--tags", store["root"], "--out", str(out), "--model", str(model_dir), "--thumbs", "0"]) == 0


def test_report_renders_in_headless_chromium(store, model_dir, tmp_path):
    """The report as a browser shows it (not Chromium's error page): its heading, charts, model PNGs and photo
    thumbnails in the rendered DOM, and a painted page."""
    require_chromium()
    table = tagstore.read(store["root"])
    page = rep.write_report(table, tmp_path / "shot-report", model_dir=str(model_dir))
    dom = rendered_dom(page.as_uri(), tmp_path)
    assert "<h1>Landmark tags report</h1>" in dom, dom[:2000]
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom)
    charts = ["landmarks.png", "scores.png", "map.png"]
    models = [f"model/{name}" for name in rep.MODEL_PNGS]
    thumbs = [s for s in srcs if s.startswith("thumbs/")]
    assert [s for s in srcs if s in charts] == charts and [s for s in srcs if s in models] == models, srcs
    shown = [r for r in table.to_pylist() if r["status"] != "failed"]
    assert len(thumbs) == len(shown) > 0, (thumbs, len(shown))
    assert all((page.parent / s).is_file() for s in charts + models + thumbs)  # the images the DOM points at
    pixels = screenshot(page.as_uri(), tmp_path, size=(1200, 1600))
    assert pixels.std() > 20, f"the report painted blank (std {pixels.std():.1f})"


def test_the_map_fits_the_tagged_landmarks_not_the_whole_world():
    from jobs.report import map_extent

    porto = ([-8.6146, -8.6307, -8.64, -8.61], [41.1457, 41.1589, 41.147, 41.14])  # one city's landmarks
    x0, x1, y0, y1 = map_extent(*porto)
    assert x0 < -8.64 and x1 > -8.61 and y0 < 41.14 and y1 > 41.1589  # all inside
    assert x1 - x0 < 0.2 and y1 - y0 < 0.2  # and the city fills it
    assert map_extent([-170, 170], [-80, 80]) == (-180.0, 180.0, -90.0, 90.0)  # never beyond the world


def test_a_landmark_name_with_dollar_signs_is_drawn_as_written(tmp_path):
    """matplotlib parses $...$ as maths: a name that does not parse stopped the whole report (and a training
    report's confusion matrix); names are drawn literally."""
    import numpy as np

    from landmark_core.training_report import confusion_png

    names = [r"Mont $\frac{$ St", "Cash $ Tower $"]
    rows = [
        {"status": "tagged", "landmark": n, "lat": 48.6 + i, "lon": -1.5, "score": 0.9} for i, n in enumerate(names)
    ]
    rep.landmarks_png(rows, tmp_path / "landmarks.png")
    rep.map_png(rows, tmp_path / "map.png")
    for name in ("landmarks.png", "map.png"):
        assert_png(tmp_path / name)
    png = confusion_png(np.eye(2), np.array([0, 1]), names, "confusion")
    assert png[:8] == PNG_MAGIC
    # "Cash $ Tower $" parses as maths and would not crash: what the figures get is matplotlib's literal text
    from matplotlib import cbook
    from matplotlib.text import Text

    from landmark_core.training_report import plot_text

    for n in names:
        assert cbook.is_math_text(n) and not cbook.is_math_text(plot_text(n))
        assert Text(text=plot_text(n))._preprocess_math(plot_text(n)) == (n, False)  # drawn as written


def test_a_pooled_model_s_test_decision_is_shown_per_runtime():
    """The CPU tag job decides on int8's own fit: the page names each runtime's pooled decision, not one
    unlabelled fp32 share (a model from before test_by_runtime shows its fp32 one, labelled)."""
    fp32 = {"photos": 40, "right": 0.9, "abstained": 0.1, "wrong": 0.0}
    int8 = {"photos": 40, "right": 0.85, "abstained": 0.125, "wrong": 0.025}
    rows = rep._members_rows(
        {"count": 5, "seeds": [0, 1, 2, 3, 4], "test": fp32, "test_by_runtime": {"torch": fp32, "onnx-int8": int8}}
    )
    assert "<th>test, pooled decision (fp32)</th><td>right 90.0%, abstained 10.0%, wrong 0.0% of 40 photos" in rows[1]
    assert "<th>test, pooled decision (onnx-int8)</th><td>right 85.0%, abstained 12.5%, wrong 2.5% of 40" in rows[2]
    older = rep._members_rows({"count": 3, "seeds": [0, 1, 2], "test": fp32})
    assert "test, pooled decision (fp32)" in older[1] and len(older) == 3
