"""The tag store's Delta table without Ray: commits, the current view, concurrency, maintenance, migration,
and a reader that is not ours."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import store as st
from landmark_core import storage, tagstore
from landmark_core.tagging import LISTING_SCHEMA, Pending, pending
from tests.cli_asserts import assert_error_names

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)


def rows(uris: list[str], run_id: str, tagged_at: datetime, *, status="tagged", etag="e1", model_id="lm-a"):
    return pa.Table.from_pylist(
        [
            {
                "uri": u,
                "etag": etag,
                "status": status,
                "error": None if status != "failed" else "read: boom",
                "landmark": "Big Ben" if status == "tagged" else None,
                "score": 0.9 if status == "tagged" else None,
                "lat": 51.5,
                "lon": -0.12,
                "model_id": model_id,
                "run_id": run_id,
                "tagged_at": tagged_at,
            }
            for u in uris
        ],
        schema=tagstore.TAGS_SCHEMA,
    )


def append(root, table, run_id, *, commit=True, refresh=True, opts=storage.S3Options()):
    return tagstore.append_run(
        str(root),
        table,
        {"run_id": run_id, "rows": table.num_rows, "model_id": "lm-a", "counts": {"total": table.num_rows}},
        dt="2026-11-20",
        opts=opts,
        commit=commit,
        refresh=refresh,
    )


@pytest.fixture
def table(tmp_path) -> str:
    root = str(tmp_path / "tags")
    append(root, rows(["a", "b", "c"], "r1", T0), "r1")
    append(root, rows(["b"], "r2", T0 + timedelta(days=1), status="failed"), "r2")
    append(root, rows(["c", "d"], "r3", T0 + timedelta(days=2), etag="e2"), "r3")
    return root


def test_one_commit_per_run_with_its_summary_and_the_current_view(table):
    runs = tagstore.runs(table)
    assert [(r["run_id"], r["version"], r["rows"]) for r in runs] == [("r1", 1, 3), ("r2", 2, 1), ("r3", 3, 2)]
    cur = tagstore.read(table, columns=["uri", "run_id", "status"]).to_pylist()
    assert cur == [
        {"uri": "a", "run_id": "r1", "status": "tagged"},
        {"uri": "b", "run_id": "r2", "status": "failed"},
        {"uri": "c", "run_id": "r3", "status": "tagged"},
        {"uri": "d", "run_id": "r3", "status": "tagged"},
    ]
    assert tagstore.read(table, history=True).num_rows == 6


def test_uncommitted_files_are_invisible_and_vacuum_deletes_them(table, capsys):
    append(table, rows(["a", "z"], "killed", T0 + timedelta(days=3), status="failed"), "killed", commit=False)
    assert [r["uri"] for r in tagstore.read(table, columns=["uri"]).to_pylist()] == ["a", "b", "c", "d"]
    assert "killed" not in {r["run_id"] for r in tagstore.runs(table)}
    assert st.main(["vacuum", "--table", table, "--retain-hours", "1", "--dry-run"]) == 0
    assert "would delete 0 file(s)" in capsys.readouterr().out  # younger than an hour: may be a run in flight
    assert st.main(["vacuum", "--table", table, "--retain-hours", "0", "--json"]) == 0
    deleted = json.loads(capsys.readouterr().out)
    assert deleted == ["runs/2026-11-20/killed/part-00000.parquet"]
    assert not (Path(table) / deleted[0]).exists() and tagstore.read(table).num_rows == 4


def test_skip_check_is_an_anti_join_on_the_current_row(table):
    listing = pa.table([["a", "b", "c", "d", "new"], [1] * 5, ["e1", "e1", "e1", "e2", "e1"]], schema=LISTING_SCHEMA)
    p = pending(listing, table, "lm-a", storage.S3Options())
    todo, skipped = p.todo, p.skipped
    # a: same etag and model; b: current row failed (retried); c: its current row has etag e2 (changed);
    # d: same; new: never tagged. The listing's order is kept.
    assert todo.column("uri").to_pylist() == ["b", "c", "new"] and skipped == 2 and todo.schema == LISTING_SCHEMA
    p = pending(listing, table, "lm-other", storage.S3Options())
    todo, skipped = p.todo, p.skipped
    assert todo.num_rows == 5 and skipped == 0
    assert pending(listing, str(Path(table).parent / "none"), "lm-a", storage.S3Options()) == Pending(listing)


def undecodable(uris: list[str], run_id: str, tagged_at: datetime, **kw) -> pa.Table:
    """Failed rows as the decode stage writes them (rows() fails them at the read)."""
    t = rows(uris, run_id, tagged_at, status="failed", **kw)
    errors = pa.array(["decode: truncated: image file is truncated"] * len(uris), pa.string())
    return t.set_column(t.schema.get_field_index("error"), "error", errors)


def test_a_photo_that_failed_to_decode_is_not_read_again_until_its_bytes_change(tmp_path):
    """The same bytes decode the same way: an unchanged undecodable photo is settled (not one more failed row
    every night), unless --retry-failed; a failed read is retried; a changed one (new etag) is read again."""
    root = str(tmp_path / "tags")
    append(root, undecodable(["bad", "fixed"], "r1", T0), "r1")
    append(root, rows(["gone"], "r1b", T0, status="failed"), "r1b")  # "read: boom"
    listing = pa.table([["bad", "fixed", "gone"], [1] * 3, ["e1", "e2", "e1"]], schema=LISTING_SCHEMA)
    p = pending(listing, root, "lm-a", storage.S3Options())
    assert p.todo.column("uri").to_pylist() == ["fixed", "gone"] and (p.skipped, p.undecodable) == (1, 1)
    p = pending(listing, root, "lm-a", storage.S3Options(), retry_failed=True)
    assert p.todo.column("uri").to_pylist() == ["bad", "fixed", "gone"] and (p.skipped, p.undecodable) == (0, 0)
    assert pending(listing, root, "lm-other", storage.S3Options()).todo.num_rows == 3  # another model reads all


def test_concurrent_commits_all_land_and_no_uri_is_current_twice(tmp_path):
    root = str(tmp_path / "tags")
    tagstore.ensure_table(root)

    def one(i):
        return append(root, rows([f"u{j}" for j in range(i, i + 10)], f"w{i}", T0 + timedelta(minutes=i)), f"w{i}")

    with ThreadPoolExecutor(6) as pool:
        versions = list(pool.map(one, range(12)))
    assert sorted(versions) == list(range(1, 13))
    assert tagstore.read(root, history=True).num_rows == 120
    cur = tagstore.read(root, columns=["uri", "run_id"])
    assert cur.num_rows == 21 and len(set(cur.column("uri").to_pylist())) == 21
    assert dict(zip(*cur.to_pydict().values()))["u11"] == "w11"  # the latest tagged_at wins


def test_two_processes_creating_the_table_at_once_make_one_table(tmp_path):
    """Two tag runs starting on a new output race to create the table: one CREATE TABLE commit, both go on (delta-rs
    retried the loser's creation as version 1, a second table id, in about half of such races)."""
    import multiprocessing

    from tests.procs import create_table_when_told

    ctx = multiprocessing.get_context("spawn")  # not fork: delta-rs's runtime in this process does not survive it
    for trial in range(8):
        root = str(tmp_path / f"t{trial}")
        go, ready = ctx.Event(), [ctx.Event(), ctx.Event()]
        procs = [ctx.Process(target=create_table_when_told, args=(root, r, go)) for r in ready]
        for p in procs:
            p.start()
        assert all(r.wait(60) for r in ready), trial  # both imported and waiting: they start together
        go.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0], trial
        commits = sorted(Path(root, "_delta_log").glob("*.json"))
        assert [c.name for c in commits] == ["00000000000000000000.json"], (trial, commits)


def test_concurrent_commits_on_s3(s3, s3_bucket, monkeypatch, capsys):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    opts = storage.S3Options(endpoint=s3.endpoint)
    root = f"s3://{s3_bucket}/tags"
    tagstore.ensure_table(root, opts)
    with ThreadPoolExecutor(6) as pool:  # the 6 commits at once
        versions = list(
            pool.map(
                lambda i: append(
                    root, rows([f"u{i}", "shared"], f"w{i}", T0 + timedelta(minutes=i)), f"w{i}", opts=opts
                ),
                range(6),
            )
        )
    assert sorted(versions) == list(range(1, 7))  # each its own version, none lost
    by_version = {v: f"w{i}" for i, v in enumerate(versions)}
    assert {r["version"]: r["run_id"] for r in tagstore.runs(root, opts)} == by_version
    history = tagstore.read(root, columns=["uri", "run_id"], opts=opts, history=True)
    assert history.num_rows == 12  # every row of every commit
    assert sorted(zip(*history.to_pydict().values())) == sorted(
        [(f"u{i}", f"w{i}") for i in range(6)] + [("shared", f"w{i}") for i in range(6)]
    )
    cur = tagstore.read(root, columns=["uri", "run_id"], opts=opts)
    assert cur.num_rows == 7 and cur.column("uri").to_pylist().count("shared") == 1
    current = dict(zip(*cur.to_pydict().values()))
    assert current["shared"] == "w5"  # the latest tagged_at wins, whatever the commit order
    assert {u: r for u, r in current.items() if u != "shared"} == {f"u{i}": f"w{i}" for i in range(6)}
    capsys.readouterr()
    assert st.main(["history", "--table", root, "--s3-endpoint", s3.endpoint, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["version"] for c in listed] == list(range(6, -1, -1))  # newest first, down to the CREATE TABLE
    assert {c["version"]: c["run"]["run_id"] for c in listed if c["run"]} == by_version
    assert listed[-1]["run"] is None


def test_history_optimize_and_time_travel(table, capsys):
    assert st.main(["history", "--table", table]) == 0
    out = capsys.readouterr().out
    assert "r3" in out.splitlines()[1] and "CREATE TABLE" in out.splitlines()[-1]
    before = tagstore.read(table)
    n_files = len(tagstore.open_table(table).file_uris())
    assert st.main(["optimize", "--table", table, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["numFilesRemoved"] == n_files == 3 and metrics["numFilesAdded"] == 1
    assert tagstore.read(table).equals(before)  # rows keep run_id and tagged_at: the same current view
    assert tagstore.read(table, version=2, columns=["uri"]).num_rows == 3  # time travel still works
    assert st.main(["history", "--table", table, "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["operation"] == "OPTIMIZE"


def write_old_run(root: Path, dt: str, run_id: str, table: pa.Table, committed_at: str | None) -> None:
    d = root / f"dt={dt}" / f"run={run_id}"
    d.mkdir(parents=True)
    pq.write_table(table, d / "part-0.parquet")
    if committed_at:
        (d / "_SUCCESS").write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "dt": dt,
                    "committed_at": committed_at,
                    "model_id": "lm-a",
                    "counts": {"total": table.num_rows},
                    "rows": table.num_rows,
                }
            )
        )


def test_migrate_imports_committed_runs_in_order(tmp_path, capsys):
    old = tmp_path / "old"
    write_old_run(old, "2026-11-20", "o1", rows(["a", "b"], "o1", T0), "2026-11-20T07:00:00+00:00")
    write_old_run(old, "2026-11-21", "o2", rows(["b", "c"], "o2", T0 + timedelta(days=1)), "2026-11-21T07:00:00")
    write_old_run(old, "2026-11-22", "dead", rows(["a"], "dead", T0 + timedelta(days=2)), None)
    new = str(tmp_path / "tags")
    assert st.main(["migrate", "--from", str(old), "--to", new, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"runs": 2, "imported": 2, "already_there": 0, "rows": 4}
    assert [(r["run_id"], r["committed_at"]) for r in tagstore.runs(new)] == [
        ("o1", "2026-11-20T07:00:00+00:00"),
        ("o2", "2026-11-21T07:00:00"),
    ]
    cur = tagstore.read(new, columns=["uri", "run_id"]).to_pylist()
    assert cur == [{"uri": "a", "run_id": "o1"}, {"uri": "b", "run_id": "o2"}, {"uri": "c", "run_id": "o2"}]
    assert st.main(["migrate", "--from", str(old), "--to", new, "--json"]) == 0  # a rerun adds nothing
    assert json.loads(capsys.readouterr().out)["imported"] == 0 and len(tagstore.runs(new)) == 2


def test_migrate_refuses_when_the_current_row_would_change(tmp_path, capsys):
    old = tmp_path / "old"  # o2 committed last but its rows say they were tagged before o1's
    write_old_run(old, "2026-11-20", "o1", rows(["a"], "o1", T0 + timedelta(days=1)), "2026-11-20T07:00:00")
    write_old_run(old, "2026-11-21", "o2", rows(["a"], "o2", T0), "2026-11-21T07:00:00")
    assert st.main(["migrate", "--from", str(old), "--to", str(tmp_path / "tags")]) == 1
    assert "Not migrated" in capsys.readouterr().err and not (tmp_path / "tags").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["vacuum", "--table", "x"], "--retain-hours"),
        (["vacuum", "--table", "x", "--retain-hours", "-1"], "--retain-hours must be >= 0"),
        (["optimize", "--table", "x", "--target-mb", "0"], "--target-mb"),
        (["history", "--table", "ftp://x/y"], "--table"),
        (["migrate", "--from", "gs://b/old", "--to", "x"], "--from"),
    ],
)
def test_bad_arguments_name_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        st.main(argv)
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, needle)


def test_no_old_store_at_from_is_a_bad_argument(tmp_path, capsys):
    """migrate --from a folder that is not there, or holds no committed run: exit 2 naming --from, nothing made."""
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "nothing", tmp_path / "empty"):
        assert st.main(["migrate", "--from", str(source), "--to", str(tmp_path / "tags")]) == 2
        assert_error_names(capsys.readouterr().err, "--from", "no committed runs")
        assert not (tmp_path / "tags").exists()


@pytest.mark.parametrize(
    "action,extra", [("history", []), ("optimize", []), ("vacuum", ["--retain-hours", "1", "--dry-run"])]
)
def test_no_table_is_one_line(tmp_path, capsys, action, extra):
    """A table that is not there is a bad --table: exit 2, as for the other config errors, in one line."""
    assert st.main([action, "--table", str(tmp_path / "nothing"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"landmark store {action}: error: --table") and len(err.splitlines()) == 1
    assert_error_names(err, "--table", "_delta_log")


def test_a_reader_that_is_not_ours_reads_the_table(table):
    """A plain script with deltalake + DuckDB (and Polars when installed), without our code on its path."""
    script = textwrap.dedent(f"""
        import json, duckdb
        from deltalake import DeltaTable
        dt = DeltaTable({table!r})
        con = duckdb.connect()
        con.register("h", dt.to_pyarrow_dataset())
        cur = con.sql("SELECT uri, arg_max(status, tagged_at) AS status FROM h GROUP BY uri ORDER BY uri").fetchall()
        out = {{"version": dt.version(), "current": cur}}
        try:
            import polars as pl
        except ImportError:
            pl = None
        if pl is not None:
            df = pl.read_delta({table!r})
            out["polars_rows"] = df.height
            out["polars_runs"] = sorted(df["run_id"].unique().to_list())
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["version"] == 3
    assert out["current"] == [["a", "tagged"], ["b", "failed"], ["c", "tagged"], ["d", "tagged"]]
    if "polars_rows" in out:
        assert out["polars_rows"] == 6 and out["polars_runs"] == ["r1", "r2", "r3"]


def test_killed_run_on_s3_is_invisible_the_rerun_is_exactly_once_and_vacuum_cleans_up(s3, s3_bucket, monkeypatch):
    """What a run killed between its Parquet write and its commit leaves on S3 (the Ray kill test does this
    locally): files no reader sees; the skip check still lists those photos; the rerun's one commit makes each
    current once; vacuum deletes the dead files and nothing else."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    opts = storage.S3Options(endpoint=s3.endpoint)
    root = f"s3://{s3_bucket}/tags"
    append(root, rows(["a", "b"], "r1", T0), "r1", opts=opts)
    uris = ["a", "b", "c", "d"]
    append(root, rows(uris, "killed", T0 + timedelta(days=1), etag="e2"), "killed", commit=False, opts=opts)
    assert tagstore.read(root, opts=opts, history=True).num_rows == 2
    listing = pa.table([uris, [1] * 4, ["e1", "e1", "e1", "e1"]], schema=LISTING_SCHEMA)
    p = pending(listing, root, "lm-a", opts)
    todo, skipped = p.todo, p.skipped
    assert todo.column("uri").to_pylist() == ["c", "d"] and skipped == 2
    append(root, rows(["c", "d"], "rerun", T0 + timedelta(days=2)), "rerun", opts=opts)
    cur = tagstore.read(root, opts=opts, columns=["uri", "run_id"])
    assert cur.column("uri").to_pylist() == uris and cur.column("run_id").to_pylist() == ["r1", "r1", "rerun", "rerun"]
    before = tagstore.read(root, opts=opts, history=True)
    fs, base = storage.arrow_fs(root, opts)
    fs.create_dir(f"{base}/runs/2026-11-20/killed", recursive=True)  # what the tag job's Ray Data writer does first
    dead = ["runs/2026-11-20/killed/part-00000.parquet"]
    # only the dead file: not the empty "folder/" objects pyarrow's create_dir leaves on S3 (listed before)
    assert st.run(st.StoreConfig("vacuum", root, retain_hours=0, dry_run=True, s3_endpoint=s3.endpoint)) == dead
    assert st.run(st.StoreConfig("vacuum", root, retain_hours=0, s3_endpoint=s3.endpoint)) == dead
    assert tagstore.read(root, opts=opts, history=True).equals(before) and before.num_rows == 4


# ---------------------------------------------------------------- the superseded table beside the history


def current_both_ways(root, opts=storage.S3Options()) -> tuple[str, int | None, list[tuple]]:
    """The current rows through the superseded table (its mode and the version it covers) -- asserted equal to
    the current rows computed from the whole history, with every uri current once."""
    views = []
    for use in (True, False):
        sdt = tagstore.open_superseded(root, opts) if use else None
        s = tagstore.Store(tagstore.open_table(root, opts), root, opts, sdt)
        try:
            views.append(s.con.sql("SELECT uri, run_id, status FROM tags ORDER BY uri").fetchall())
            mode, covered, version = s.superseded, s.covered, s.version
        finally:
            s.close()
        if use:
            got = (mode, covered, version)
    assert views[0] == views[1]
    assert len({u for u, _, _ in views[0]}) == len(views[0])
    return got[0], got[1], views[0]


def test_superseded_table_follows_the_history(table):
    mode, covered, cur = current_both_ways(table)
    assert (mode, covered) == ("table", 3) and [u for u, _, _ in cur] == ["a", "b", "c", "d"]
    sup = tagstore.open_superseded(table)
    keys = sorted((r["uri"], r["run_id"]) for r in pa.table(sup.to_pyarrow_dataset().to_table()).to_pylist())
    assert keys == [("b", "r1"), ("c", "r1")]  # replaced by r2 and r3
    # a run committed late with an older tagged_at: its rows are the superseded ones where a newer row exists
    append(table, rows(["a", "d", "e"], "late", T0 - timedelta(days=1), status="failed"), "late")
    mode, covered, cur = current_both_ways(table)
    assert (mode, covered) == ("table", 4)
    assert {u: r for u, r, _ in cur} == {"a": "r1", "b": "r2", "c": "r3", "d": "r3", "e": "late"}


def test_run_killed_after_its_commit_is_caught_up_by_readers_and_the_next_run(table):
    append(table, rows(["a", "x"], "r4", T0 + timedelta(days=3), etag="e4"), "r4", refresh=False)
    append(table, rows(["a"], "dead", T0 + timedelta(days=4)), "dead", commit=False)  # killed before its commit
    mode, covered, cur = current_both_ways(table)
    assert (mode, covered) == ("table", 3)  # behind: the reader catches up from the log
    assert {u: r for u, r, _ in cur}["a"] == "r4" and "x" in {u for u, _, _ in cur}
    listing = pa.table([["a", "x"], [1, 1], ["e4", "e1"]], schema=LISTING_SCHEMA)
    assert pending(listing, table, "lm-a", storage.S3Options()).todo.column("uri").to_pylist() == ["x"]
    append(table, rows(["b"], "r5", T0 + timedelta(days=5)), "r5")
    mode, covered, cur = current_both_ways(table)
    assert (mode, covered) == ("table", 5) and {u: r for u, r, _ in cur}["b"] == "r5"


def test_a_failed_superseded_refresh_leaves_the_run_committed_and_readers_right(table, capsys):
    """The refresh after a commit is best effort: here the superseded table's log is damaged (a next version that is
    not JSON), so the refresh fails for real; the run is committed all the same, the failure is one stderr line,
    and readers compute the current rows from the history."""
    log = Path(tagstore.superseded_uri(table)) / "_delta_log"
    latest = max(int(p.stem) for p in log.glob("*.json"))
    (log / f"{latest + 1:020d}.json").write_text("not a delta log entry\n")
    version = append(table, rows(["a", "y"], "r4", T0 + timedelta(days=3), etag="e4"), "r4")
    err = capsys.readouterr().err
    assert "the superseded table was not brought up to date" in err, err
    assert [r["run_id"] for r in tagstore.runs(table)][-1] == "r4" and version == 4
    cur = {r["uri"]: r["run_id"] for r in tagstore.read(table, columns=["uri", "run_id"]).to_pylist()}
    assert cur == {"a": "r4", "b": "r2", "c": "r3", "d": "r3", "y": "r4"}


def test_concurrent_runs_keep_the_superseded_table_right(tmp_path):
    root = str(tmp_path / "tags")
    tagstore.ensure_table(root)

    def one(i):  # every run re-tags "shared"; their tagged_at order is not their commit order
        when = T0 + timedelta(minutes=(7 * i) % 12)
        return append(root, rows([f"u{i}", "shared"], f"w{i:02d}", when), f"w{i:02d}")

    with ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(one, range(12))) == list(range(1, 13))
    mode, covered, cur = current_both_ways(root)
    assert mode == "table" and covered is not None and covered <= 12
    assert dict((u, r) for u, r, _ in cur)["shared"] == "w05"  # (7 * 5) % 12 = 11: the latest tagged_at
    assert tagstore.refresh_superseded(root) == 12
    assert current_both_ways(root)[:2] == ("table", 12)


def test_optimize_vacuum_and_time_travel_keep_the_current_view(table, capsys):
    before = current_both_ways(table)[2]
    assert st.main(["optimize", "--table", table, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["numFilesAdded"] == 1 and "superseded" in out
    mode, covered, cur = current_both_ways(table)
    assert (mode, covered, cur) == ("table", 4, before)  # optimize's commit adds no rows: nothing to catch up
    old = tagstore.open_store(table, version=1)
    try:  # older than what the superseded table covers: computed from that version's history
        assert old.superseded == "full" and old.con.sql("SELECT count(*) FROM tags").fetchall() == [(3,)]
    finally:
        old.close()
    assert st.main(["vacuum", "--table", table, "--retain-hours", "0", "--json"]) == 0
    assert any(f.startswith("runs/") for f in json.loads(capsys.readouterr().out))  # the files optimize replaced
    assert current_both_ways(table)[1:] == (4, before)
    from jobs import query

    assert query.main(["--tags", table, "--version", "1"]) == 1  # its files are gone: said so, no raw reader error
    err = capsys.readouterr().err
    assert "version 1" in err and "vacuum" in err and "No files found" not in err, err


def test_time_travel_after_vacuum_on_s3_says_so_as_locally(s3, s3_bucket, monkeypatch, capsys):
    """On S3 the vacuumed version's files are missing to pyarrow's scan inside DuckDB (an Invalid Input Error
    wrapping "IOError: Path does not exist"): the same message and exit code as the local table gives."""
    from jobs import query

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    opts = storage.S3Options(endpoint=s3.endpoint)
    root = f"s3://{s3_bucket}/landmarks"
    append(root, rows(["a", "b", "c"], "r1", T0), "r1", opts=opts)
    append(root, rows(["b"], "r2", T0 + timedelta(days=1), status="failed"), "r2", opts=opts)
    append(root, rows(["c", "d"], "r3", T0 + timedelta(days=2), etag="e2"), "r3", opts=opts)
    endpoint = ["--s3-endpoint", s3.endpoint]
    assert query.main(["--tags", root, "--version", "2", "--summary", *endpoint]) == 0
    capsys.readouterr()
    assert st.main(["optimize", "--table", root, *endpoint]) == 0
    assert st.main(["vacuum", "--table", root, "--retain-hours", "0", *endpoint]) == 0
    capsys.readouterr()
    for extra in (["--summary"], [], ["--sql", "SELECT count(*) FROM tags_history"]):
        assert query.main(["--tags", root, "--version", "2", *extra, *endpoint]) == 1, extra
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert f"cannot read version 2 of {root}: its files were deleted by `landmark store vacuum`" in err, err
        assert "Path does not exist" not in err and "Invalid Input" not in err, err
    assert query.main(["--tags", root, "--summary", *endpoint]) == 0  # the latest version reads as before
    assert capsys.readouterr().out.startswith("4 photos")


def test_superseded_table_gone_or_wrong_falls_back_to_the_history(table, capsys):
    import shutil

    from deltalake import DeltaTable

    expected = current_both_ways(table)[2]
    shutil.rmtree(Path(table) / tagstore.SUPERSEDED_DIR)
    assert current_both_ways(table)[:2] == ("full", None)
    assert st.main(["optimize", "--table", table]) == 0  # rebuilds it from the history
    out = capsys.readouterr().out.splitlines()  # two lines for a person (the metrics: --json)
    assert len(out) == 2 and out[0].startswith("history: ") and "compacted into 1" in out[0], out
    assert out[1].startswith("superseded table: ") and "{" not in "".join(out), out
    assert current_both_ways(table) == ("table", 4, expected)
    # a delete outside our tools: c's r3 row goes, its r1 row is current again; the table cannot say that
    DeltaTable(table).delete("run_id = 'r3'")
    mode, _, cur = current_both_ways(table)
    assert mode == "full" and ("c", "r1", "tagged") in cur and "d" not in {u for u, _, _ in cur}
    with pytest.raises(tagstore.RowsRemoved, match="rebuild the superseded table"):
        tagstore.refresh_superseded(table)


def test_superseded_table_on_s3_after_a_run_killed_after_its_commit(s3, s3_bucket, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    opts = storage.S3Options(endpoint=s3.endpoint)
    root = f"s3://{s3_bucket}/tags-superseded"
    append(root, rows(["a", "b"], "r1", T0), "r1", opts=opts)
    append(root, rows(["b", "c"], "r2", T0 + timedelta(days=1), etag="e2"), "r2", opts=opts)
    assert current_both_ways(root, opts)[:2] == ("table", 2)
    append(root, rows(["a"], "r3", T0 + timedelta(days=2), status="failed"), "r3", opts=opts, refresh=False)
    mode, covered, cur = current_both_ways(root, opts)
    assert (mode, covered, cur) == ("table", 2, [("a", "r3", "failed"), ("b", "r2", "tagged"), ("c", "r2", "tagged")])
    append(root, undecodable(["d"], "r4", T0 + timedelta(days=3)), "r4", opts=opts, refresh=False)
    listing = pa.table([["a", "b", "c", "d"], [1] * 4, ["e1", "e2", "e2", "e1"]], schema=LISTING_SCHEMA)
    p = pending(listing, root, "lm-a", opts)  # a: its read failed, retried; d: undecodable, settled
    assert p.todo.column("uri").to_pylist() == ["a"] and p.undecodable == 1
    assert tagstore.refresh_superseded(root, opts) == 4 and current_both_ways(root, opts)[:2] == ("table", 4)


def test_a_refresh_landing_late_with_an_older_version_keeps_reads_right(table):
    """Two refreshes at once, the one computed at an older version committing last: the table then holds keys
    superseded after the version its app transaction names. Latest reads catch up from that version; time travel
    never uses the table."""
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties, Transaction

    expected = current_both_ways(table)[2]
    write_deltalake(  # what a refresh computed at version 1 (nothing superseded yet) writes
        tagstore.superseded_uri(table),
        tagstore.KEYS_SCHEMA.empty_table(),
        mode="append",
        commit_properties=CommitProperties(app_transactions=[Transaction(tagstore.SUPERSEDED_APP, 1)]),
    )
    assert current_both_ways(table) == ("table", 1, expected)
    at2 = tagstore.read(table, version=2, columns=["uri", "run_id"]).to_pylist()
    assert [(r["uri"], r["run_id"]) for r in at2] == [("a", "r1"), ("b", "r2"), ("c", "r1")]  # c: r3 not yet
    assert tagstore.refresh_superseded(table) == 3 and current_both_ways(table) == ("table", 3, expected)


@pytest.mark.parametrize("name", ["tags é 日本 x", "tags {a}*?"])  # ([ ] ^ | \\ : delta-rs refuses them)
def test_a_table_under_a_path_with_spaces_unicode_or_glob_characters_reads_and_grows(tmp_path, name):
    """The log lists data files percent-encoded and DuckDB reads a path as a glob: a second run, a query and the
    skip check used to fail on such a table ("No files found that match the pattern .../tags%20...")."""
    root = str(tmp_path / name)
    append(root, rows(["a", "b"], "r1", T0), "r1")
    append(root, rows(["b", "c"], "r2", T0 + timedelta(days=1)), "r2")  # its refresh reads the table
    mode, _, cur = current_both_ways(root)
    assert {u: r for u, r, _ in cur} == {"a": "r1", "b": "r2", "c": "r2"}
    assert tagstore.read(root, history=True).num_rows == 4
    listing = pa.table([["a", "d"], [1, 1], ["e1", "e1"]], schema=LISTING_SCHEMA)
    assert pending(listing, root, "lm-a", storage.S3Options()).todo.column("uri").to_pylist() == ["d"]


def test_a_table_on_s3_with_the_endpoint_only_in_the_environment(s3, s3_bucket, monkeypatch):
    """The endpoint the dev server prints (AWS_ENDPOINT_URL_S3) and no --s3-endpoint: boto3 used it while delta-rs
    and pyarrow went to AWS ("Could not resolve host: tags.s3.us-east-1.amazonaws.com"); every reader and writer
    now takes the same store."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    opts = storage.S3Options()  # what a job builds without --s3-endpoint
    assert opts.endpoint == s3.endpoint
    root = f"s3://{s3_bucket}/tags-env"
    append(root, rows(["a", "b"], "r1", T0), "r1", opts=opts)
    append(root, rows(["b"], "r2", T0 + timedelta(days=1)), "r2", opts=opts)
    cur = tagstore.read(root, columns=["uri", "run_id"], opts=storage.S3Options()).to_pylist()
    assert cur == [{"uri": "a", "run_id": "r1"}, {"uri": "b", "run_id": "r2"}]
    assert storage.S3Options(endpoint="http://other:1").endpoint == "http://other:1"  # the flag wins
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "localhost:9000")
    with pytest.raises(storage.StorageError, match="AWS_ENDPOINT_URL_S3 .*must look like"):
        storage.S3Options().check()


def test_history_into_a_reader_that_closes_after_the_first_line_ends_quietly(tmp_path):
    """`landmark store history --table T | head -1`: the header line, then exit 0 and no BrokenPipeError on
    stderr, with stdout buffered (the rest meets the closed pipe at the end) or not (at the next line). Before:
    a BrokenPipeError traceback, exit 1 (or "Exception ignored ... BrokenPipeError", exit 120)."""
    import os

    from tests.test_predict_cli import first_line_then_close

    root = str(tmp_path / "tags")
    for i in range(80):  # ~5.5 KiB of history: more than the reader's 4 KiB pipe holds
        append(root, rows([f"u{i}"], f"r{i}", T0 + timedelta(hours=i)), f"r{i}", refresh=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for unbuffered in ({}, {"PYTHONUNBUFFERED": "1"}):
        argv = [sys.executable, "-m", "jobs.store", "history", "--table", root]
        line, code, err = first_line_then_close(argv, {**env, **unbuffered})
        assert line.split() == [b"version", b"committed", b"(UTC)", b"operation", b"run_id", b"/", b"details"], err
        assert "Traceback" not in err and "BrokenPipeError" not in err, (unbuffered, err[-3000:])
        assert code == 0, (unbuffered, err[-3000:])


def test_a_misspelt_flag_is_suggested_from_the_chosen_action_only(tmp_path, capsys):
    """`landmark store optimize --retain-hour`: vacuum has --retain-hours, optimize has not, so nothing is
    suggested; `--traget-mb` is close to one of optimize's own and is."""
    for argv, hint in (
        (["optimize", "--table", str(tmp_path), "--retain-hour", "3"], None),
        (["optimize", "--table", str(tmp_path), "--traget-mb", "9"], "(--traget-mb: did you mean --target-mb?)"),
    ):
        with pytest.raises(SystemExit) as e:
            st.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "landmark store optimize: error: unrecognized arguments" in err, err
        assert "(landmark store optimize --help lists its flags)" in err, err
        assert ("did you mean" in err) == bool(hint) and (hint is None or hint in err), err
