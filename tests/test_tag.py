"""The nightly tag job on real Ray Data: local and S3 (SeaweedFS), exactly once, reruns, kills, bad files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.tag import TagConfig, main as tag_main, run as tag_run
from landmark_core import storage, tagstore
from tests.cli_asserts import assert_error_names
from tests.procs import live_in_session
from tests.tag_asserts import assert_exactly_once

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path, synthetic_data, bad_corpus):
    """A day of uploads: synthetic photos in nested folders, upper-case extensions, plus every bad file."""
    d = tmp_path / "uploads"
    for i, f in enumerate(synthetic_data["files"]):
        dest = d / f"user{i % 3}" / (Path(f).stem + (".JPG" if i % 4 == 0 else ".jpg"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    bad_dir, expected = bad_corpus
    shutil.copytree(bad_dir, d / "bad")
    (d / "notes.txt").write_text("not a photo: not listed")
    return d, expected


@pytest.mark.slow
def test_local_run_one_row_per_photo_then_rerun_tags_nothing(ray_local, photos, tiny_artifact, tmp_path, capsys):
    src, expected_bad = photos
    out = str(tmp_path / "tags")
    cfg = TagConfig(
        input=str(src), output=out, model=tiny_artifact.path, k=3, batch_size=8, decode_batch=4, stage_times=True
    )
    summary = tag_run(cfg)
    listed = {
        str(p.resolve())
        for p in src.rglob("*")
        if p.suffix.lower() in (".jpg", ".png", ".gif", ".bmp", ".tiff", ".webp")
    }
    table = assert_exactly_once(out, listed)
    assert table.schema.equals(tagstore.TAGS_SCHEMA)
    c = summary["counts"]
    assert c["total"] == table.num_rows == c["tagged"] + c["no_landmark"] + c["failed"]
    rows = {Path(r["uri"]).name: r for r in table.to_pylist()}
    for name, kind in expected_bad.items():
        r = rows[name]
        if kind is None:
            assert r["status"] != "failed", (name, r["error"])
            assert r["width"] > 0 and len(r["tags"]) == 3
        else:
            assert r["status"] == "failed" and kind in r["error"], (name, r["error"])
            assert r["landmark"] is None and r["tags"] is None
    good = [r for r in table.to_pylist() if r["status"] != "failed"]
    assert all(len(r["sha256"]) == 64 and r["model_id"] == summary["model_id"] for r in good)
    assert any(r["exif_lat"] is not None for r in good) and any(r["exif_time"] is not None for r in good)
    for r in good:
        if r["status"] == "tagged":
            assert r["landmark"] == r["tags"][0]["name"] and r["lat"] == r["tags"][0]["lat"]
        else:
            assert r["landmark"] is None and r["lat"] is None
    success = tagstore.runs(out)[-1]  # the run's summary, from its Delta commit
    assert success["run_id"] == summary["run_id"] and success["version"] == summary["version"] == 1
    assert success["counts"] == c and success["model_id"] == summary["model_id"]
    assert len(success["files"]) == 1  # one file for the run, not one per batch
    assert (Path(out) / success["files"][0]).is_file() and (Path(out) / "_delta_log").is_dir()
    printed = capsys.readouterr().out
    assert "committed run" in printed and "images/s" in printed and "stages (summed over workers)" in printed
    # what is not a photo by name gets no row, and the run says so (notes.txt)
    others = [f for f in src.rglob("*") if f.is_file() and str(f.resolve()) not in listed]
    assert summary["not_photos_by_name"] == success["not_photos_by_name"] == {".txt": 1} and len(others) == 1
    assert "1 object(s) under --input are not photos by name, not tagged (.txt 1)" in printed
    stages = summary["timings"]["stages"]  # time per stage, every photo through each
    assert {k: v["photos"] for k, v in stages.items()} == {"read+decode": c["total"], "model+rows": c["total"]}
    assert all(v["seconds"] > 0 for v in stages.values()) and success["timings"]["stages"] == stages

    again = tag_run(cfg)
    # nothing is read twice: the broken files failed to decode, and their bytes have not changed
    assert again["skipped"] == len(listed) and again["skipped_undecodable"] == c["failed"] > 0
    assert again["counts"] == {"tagged": 0, "no_landmark": 0, "failed": 0, "total": 0}
    assert (
        f"({c['failed']} of them failed to decode before and are unchanged: --retry-failed" in capsys.readouterr().out
    )
    retried = tag_run(TagConfig(**{**cfg.__dict__, "retry_failed": True}))  # read again on request (and fail again)
    assert retried["skipped"] == len(listed) - c["failed"] and retried["skipped_undecodable"] == 0
    assert retried["counts"] == {"tagged": 0, "no_landmark": 0, "failed": c["failed"], "total": c["failed"]}

    new = src / "user9" / "new.jpg"
    new.parent.mkdir()
    shutil.copy(next(iter(sorted(src.rglob("*.jpg")))), new)
    third = tag_run(cfg)
    assert set(_latest_run_uris(out, third["run_id"])) == {str(new.resolve())}
    assert_exactly_once(out, listed | {str(new.resolve())})

    forced = tag_run(TagConfig(**{**cfg.__dict__, "retag": True, "stage_times": False}))
    assert forced["counts"]["total"] == len(listed) + 1
    assert "stages" not in forced["timings"]  # the stage clock is opt-in (it costs start-up)


def _latest_run_uris(out: str, run_id: str) -> list[str]:
    t = tagstore.read(out, history=True)
    return [u for u, r in zip(t.column("uri").to_pylist(), t.column("run_id").to_pylist()) if r == run_id]


@pytest.mark.slow
def test_s3_input_and_output(ray_local, s3, s3_bucket, monkeypatch, synthetic_data, bad_corpus, tiny_artifact, capsys):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    keys = []
    for i, f in enumerate(synthetic_data["files"][:8]):
        key = f"uploads/2026-11-24/u{i}/photo {i} é.jpg"  # spaces and unicode in keys
        client.put_object(Bucket=s3_bucket, Key=key, Body=Path(f).read_bytes())
        keys.append(key)
    bad_dir, expected = bad_corpus
    for name in expected:
        client.put_object(Bucket=s3_bucket, Key=f"uploads/2026-11-24/bad/{name}", Body=(bad_dir / name).read_bytes())
        keys.append(f"uploads/2026-11-24/bad/{name}")
    out = f"s3://{s3_bucket}/tags"
    cfg = TagConfig(
        input=f"s3://{s3_bucket}/uploads/2026-11-24",
        output=out,
        model=tiny_artifact.path,
        s3_endpoint=s3.endpoint,
        batch_size=8,
        decode_batch=4,
    )
    summary = tag_run(cfg)
    opts = storage.S3Options(endpoint=s3.endpoint)
    table = assert_exactly_once(out, {f"s3://{s3_bucket}/{k}" for k in keys}, opts=opts)
    etags = {f"s3://{s3_bucket}/{k}": client.head_object(Bucket=s3_bucket, Key=k)["ETag"].strip('"') for k in keys}
    assert all(r["etag"] == etags[r["uri"]] for r in table.to_pylist())
    assert summary["counts"]["failed"] == sum(1 for v in expected.values() if v is not None)
    again = tag_run(cfg)  # nothing read again: the broken objects are unchanged (same etags)
    assert again["counts"]["total"] == 0 and again["skipped_undecodable"] == summary["counts"]["failed"] > 0

    # a changed object (new etag) is tagged again
    client.put_object(Bucket=s3_bucket, Key=keys[0], Body=Path(synthetic_data["files"][-1]).read_bytes())
    third = tag_run(cfg)
    assert f"s3://{s3_bucket}/{keys[0]}" in _latest_run_uris_s3(out, third["run_id"], opts)

    # a day with no uploads commits an empty run into the S3 table (it was a pyarrow ArrowTypeError, nothing
    # committed), into an existing table and into a new one
    for table_uri in (out, f"s3://{s3_bucket}/fresh-tags"):
        empty = tag_run(
            TagConfig(**{**cfg.__dict__, "input": f"s3://{s3_bucket}/uploads/2026-11-25/", "output": table_uri})
        )
        assert empty["counts"]["total"] == 0 and empty["run_id"] in {
            r["run_id"] for r in tagstore.runs(table_uri, opts=opts)
        }
    # an object given as --input is one photo, not a prefix: refused before any work, pointing to --manifest
    one = f"s3://{s3_bucket}/{keys[1]}"
    argv = ["--input", one, "--output", f"s3://{s3_bucket}/other", "--model", tiny_artifact.path]
    assert tag_main([*argv, "--s3-endpoint", s3.endpoint]) == 2
    assert_error_names(capsys.readouterr().err, f"--input {one} is an object", "--manifest")
    assert not client.list_objects_v2(Bucket=s3_bucket, Prefix="other/").get("Contents")


def _latest_run_uris_s3(out, run_id, opts):
    t = tagstore.read(out, opts=opts, history=True)
    return [u for u, r in zip(t.column("uri").to_pylist(), t.column("run_id").to_pylist()) if r == run_id]


@pytest.mark.slow
def test_manifest_csv_and_parquet(ray_local, synthetic_data, tiny_artifact, tmp_path, capsys):
    nameless = tmp_path / "upload-3f2a9c"  # an upload kept under an id, no extension: --input would not list it
    shutil.copy(synthetic_data["files"][0], nameless)
    files = synthetic_data["files"][:5] + [str(tmp_path / "missing.jpg"), str(nameless)]
    (tmp_path / "m.csv").write_text("uri\n" + "\n".join(files) + "\n")
    tag_run(TagConfig(manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "t1"), model=tiny_artifact.path))
    t = assert_exactly_once(str(tmp_path / "t1"), set(files))
    rows = {Path(r["uri"]).name: r for r in t.to_pylist()}
    assert rows["missing.jpg"]["status"] == "failed" and "not found" in rows["missing.jpg"]["error"]
    assert rows[nameless.name]["status"] != "failed" and rows[nameless.name]["width"] > 0  # read by content
    again = tag_run(TagConfig(manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "t1"), model=tiny_artifact.path))
    assert again["counts"] == {"tagged": 0, "no_landmark": 0, "failed": 1, "total": 1}  # a failed read: retried
    import pyarrow as pa

    # a uri listed twice is tagged once (the run's own check refused to commit two rows of one photo)
    (tmp_path / "twice.csv").write_text("uri\n" + "\n".join([*files[:3], files[1]]) + "\n")
    tag_run(TagConfig(manifest=str(tmp_path / "twice.csv"), output=str(tmp_path / "t3"), model=tiny_artifact.path))
    assert_exactly_once(str(tmp_path / "t3"), set(files[:3]))
    assert f"--manifest {tmp_path / 'twice.csv'}: 1 row(s) repeat an earlier row's uri" in capsys.readouterr().out

    pq.write_table(pa.table({"uri": files[:3]}), tmp_path / "m.parquet")
    tag_run(TagConfig(manifest=str(tmp_path / "m.parquet"), output=str(tmp_path / "t2"), model=tiny_artifact.path))
    assert tagstore.read(str(tmp_path / "t2")).num_rows == 3


def _tag_cmd(src: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.tag",
        "--input",
        str(src),
        "--output",
        str(out),
        "--model",
        model,
        "--decode-batch",
        "2",
        "--batch-size",
        "4",
        *extra,
    ]


def test_verify_refuses_a_run_whose_files_are_not_one_row_per_input(tmp_path):
    """The guard before every commit: rows counted in the files actually written, against the inputs. A photo
    written twice, one missing, one that was no input, or a duplicate hiding a missing one: no commit."""
    from pyarrow import fs as pafs

    from jobs.tag import _verify

    todo = pa.table({"uri": ["a", "b", "c"]})

    def written(name: str, uris: list[str]) -> str:
        d = tmp_path / name
        d.mkdir()
        half = len(uris) // 2  # two files, as a run writes several
        for i, part in enumerate((uris[:half], uris[half:])):
            pq.write_table(pa.table({"uri": part, "status": ["tagged"] * len(part)}), d / f"part-{i}.parquet")
        return str(d)

    fs = pafs.LocalFileSystem()
    counts, files = _verify(fs, written("ok", ["a", "b", "c"]), todo)
    assert counts["tagged"] == counts["total"] == 3 and len(files) == 2
    bad = {"twice": ["a", "b", "c", "c"], "missing": ["a", "b"], "foreign": ["a", "b", "x"], "hidden": ["a", "a", "b"]}
    for name, uris in bad.items():
        with pytest.raises(RuntimeError, match="refusing to commit"):
            _verify(fs, written(name, uris), todo)


@pytest.mark.slow
def test_job_killed_mid_run_commits_nothing_and_rerun_is_exactly_once(tiny_artifact, tmp_path):
    from landmark_core.synthetic import generate_dataset

    generate_dataset(
        tmp_path / "src", n_classes=3, train_per_class=150, test_per_class=0, image_size=(320, 240), seed=5
    )
    src = tmp_path / "src" / "train"
    n = len(list(src.rglob("*.jpg")))
    out = tmp_path / "tags"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    # --rows-per-file 2: each finished batch is written as its own Parquet file at once (the default, 250000 rows,
    # writes nothing before the end), so the killed run leaves files behind for vacuum to list
    proc = subprocess.Popen(
        _tag_cmd(src, out, tiny_artifact.path, "--rows-per-file", "2"),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = threading.Event()

    def watch():
        for line in proc.stdout:
            if "Running Dataset" in line or "Starting execution" in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(240), "the Ray Data pipeline never started"
    deadline = time.time() + 240  # mid-run: photos are being decoded, tagged and written, not yet committed
    while not list((out / "runs").rglob("*.parquet")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert list((out / "runs").rglob("*.parquet")), "the run wrote no Parquet file before the kill"
    assert proc.poll() is None, "the run finished before it could be killed; give it more photos"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ray's workers have process groups of their own: the kill does not reach them, and a writer busy when the
    # driver died still finishes its file (seen: 1 file at the kill, 3 half a second later). They all leave once
    # they find the driver gone; only then is what the killed run wrote known.
    deadline = time.time() + 120
    while live_in_session(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not live_in_session(proc.pid), "the killed run's Ray processes never went away"
    assert tagstore.runs(str(out)) == [], "a killed run must not commit"
    assert tagstore.read(str(out)).num_rows == 0  # invisible to readers
    from jobs import store

    left = [p for p in (out / "runs").rglob("*") if p.is_file()]
    written = [p for p in left if p.suffix == ".parquet"]
    assert written, f"the killed run left no Parquet file: {left}"  # else the vacuum check compares [] with []
    assert sorted(store.run(store.StoreConfig("vacuum", str(out), retain_hours=0, dry_run=True))) == sorted(
        str(p.relative_to(out)) for p in left
    )  # what the killed run wrote, and only that (vacuum lists in no particular order)
    done = subprocess.run(
        _tag_cmd(src, out, tiny_artifact.path), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the run's own warm-up tasks hold the CPUs as it starts: no "will hang unless more CPUs are freed" for that
    assert "available CPUs" not in done.stdout + done.stderr, done.stderr[-3000:]
    t = assert_exactly_once(str(out), {str(p.resolve()) for p in src.rglob("*.jpg")})
    assert t.num_rows == n


@pytest.mark.slow
def test_two_runs_at_once_do_not_corrupt_each_other(tiny_artifact, synthetic_data, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in synthetic_data["files"]:
        shutil.copy(f, src / Path(f).name.replace(".jpg", f"_{Path(f).parent.name}.jpg"))
    out = tmp_path / "tags"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    procs = [
        subprocess.Popen(
            _tag_cmd(src, out, tiny_artifact.path, "--run-id", f"concurrent{i}"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    photos = {str(p.resolve()) for p in src.glob("*.jpg")}
    runs = tagstore.runs(str(out))
    assert sorted(r["run_id"] for r in runs) == ["concurrent0", "concurrent1"]
    assert sorted(r["version"] for r in runs) == [1, 2]  # one commit each, neither lost
    for r, text in zip(sorted(runs, key=lambda r: r["run_id"]), outs):
        assert f"committed run {r['run_id']} (table version {r['version']})" in text, text[-3000:]
        # at the same time, not one after the other: each listed before the other committed, so each tagged every
        # photo (a second run started after the first's commit would skip them all as already tagged)
        assert (r["listed"], r["skipped"], r["rows"]) == (len(photos), 0, len(photos)), r
    everything = tagstore.read(str(out), history=True)
    per_run = {r["run_id"]: r["rows"] for r in runs}
    assert everything.num_rows == sum(per_run.values()) == 2 * len(photos)
    for run_id in per_run:  # each run's rows are all there, one per photo, none lost to the other's commit
        mine = [
            u
            for u, r in zip(everything.column("uri").to_pylist(), everything.column("run_id").to_pylist())
            if r == run_id
        ]
        assert sorted(mine) == sorted(photos), run_id
    current = assert_exactly_once(str(out), photos)
    assert set(current.column("run_id").to_pylist()) <= set(per_run)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["-k", "0"], "-k"),
        (["--actors", "2,1"], "--actors"),
        (["--actors", "x"], "--actors"),
        (["--batch-size", "0"], "--batch-size"),
        (["--output", "s3://x/y"], "--output"),
        (["--dt", "24-11-2026"], "--dt"),
        (["--s3-endpoint", "ftp://h"], "--s3-endpoint"),
        (["--min-score", "0.5", "--accept-rate", "0.9"], "--accept-rate"),
        (["--threads-per-actor", "0"], "--threads-per-actor must be >= 1"),  # was taken as 1 (`or 1`)
        (["--threads-per-actor", "-1"], "--threads-per-actor must be >= 1"),
        (["--cpus-per-actor", "nan"], "--cpus-per-actor must be > 0"),
    ],
)
def test_bad_arguments_fail_fast(argv, needle, tiny_artifact, tmp_path, capsys):
    base = ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--model", tiny_artifact.path]
    with pytest.raises(SystemExit) as e:
        tag_main(base + argv)
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, needle)


def test_actor_flags_with_the_model_in_tasks_are_named_in_a_warning(tmp_path, capsys):
    """--cpus-per-actor (and --actors, --batch-size) do nothing when the model runs in the decode tasks (--compute
    auto resolves to tasks for an ONNX runtime on CPUs): one warning line each, before any work; unset, none."""
    base = dict(input=str(tmp_path), output=str(tmp_path / "o"), model=str(tmp_path / "no-model"))
    assert TagConfig(**base, cpus_per_actor=8.0).ignored_flags() == [
        "--cpus-per-actor 8.0 has no effect with --compute auto (tasks: an ONNX runtime on CPUs): no actor pool, "
        "the model runs in the decode tasks (1 CPU each, a --decode-batch block per call)"
    ]
    assert [w.split(" has")[0] for w in TagConfig(**base, actors=(2, 3), compute="tasks").ignored_flags()] == [
        "--actors 2,3"
    ]
    assert TagConfig(**base).ignored_flags() == [] == TagConfig(**base, retry_failed=True).ignored_flags()
    assert TagConfig(**base, retry_failed=True, retag=True).ignored_flags() == [
        "--retry-failed has no effect with --retag (it reads every photo)"
    ]
    assert TagConfig(**base, cpus_per_actor=8.0, runtime="torch").ignored_flags() == []  # actors: used
    argv = ["--input", base["input"], "--output", base["output"], "--model", base["model"], "--cpus-per-actor", "8"]
    assert tag_main(argv) == 2  # no model there: refused next, after the warning
    out, err = capsys.readouterr()
    assert "[tag] warning: --cpus-per-actor 8.0 has no effect with --compute auto" in out and "--model" in err


def test_input_that_is_a_file_points_to_manifest(tiny_artifact, tmp_path, capsys):
    """A file given as --input said "no such directory": it is one, only not a folder."""
    listing = tmp_path / "photos.csv"
    listing.write_text("uri\n/x.jpg\n")
    with pytest.raises(SystemExit) as e:
        tag_main(["--input", str(listing), "--output", str(tmp_path / "o"), "--model", tiny_artifact.path])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, f"--input {listing}", "folder", "s3://", "--manifest")
    assert not (tmp_path / "o").exists()


def test_an_empty_input_folder_commits_an_empty_run_and_says_so(tiny_artifact, tmp_path, capsys, monkeypatch):
    """A night with no uploads is a normal run (committed, no Ray started), but not a silent one."""
    monkeypatch.setattr("jobs._ray.init_ray", lambda *a, **k: pytest.fail("Ray started for a run with no photos"))
    (tmp_path / "in").mkdir()
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--model", tiny_artifact.path]
    assert tag_main(argv) == 0
    out = capsys.readouterr().out
    assert f"[tag] no photos under --input {tmp_path / 'in'}: an empty run is committed" in out, out
    assert "[tag] committed run" in out and "(0 rows;" in out
    (run,) = tagstore.runs(str(tmp_path / "o"))  # committed: in the table's log, as one run of no rows
    assert run["rows"] == 0 and run["counts"]["total"] == 0
    assert tagstore.read(str(tmp_path / "o")).num_rows == 0


def test_a_min_score_outside_the_models_score_range_fails_before_the_table_exists(tiny_artifact, tmp_path, capsys):
    """--min-score 2 on a model whose score is a probability used to commit a run of all `no_landmark` rows, which
    later runs then skipped as settled."""
    out = tmp_path / "tags"
    code = tag_main(["--input", str(tmp_path), "--output", str(out), "--model", tiny_artifact.path, "--min-score", "2"])
    assert code == 2 and not out.exists()
    assert_error_names(capsys.readouterr().err, "--min-score 2", "lies in [0, 1]")


def test_missing_model_and_unwritable_output(tiny_artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LANDMARK_MODEL", raising=False)
    with pytest.raises(SystemExit) as exit_:
        tag_main(["--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert_error_names(capsys.readouterr().err, "--model")
    assert tag_main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert_error_names(capsys.readouterr().err, "--model")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.time()
    assert tag_main(["--input", str(tmp_path), "--output", str(blocker / "tags"), "--model", tiny_artifact.path]) == 2
    assert_error_names(capsys.readouterr().err, f"--output {blocker / 'tags'}", "not writable")
    assert time.time() - t0 < 10
