"""`landmark bench store`: the tag store's query paths against raw DuckDB on the same data files.

For each --rows size, a synthetic store in TAGS_SCHEMA (runs of --rows-per-run rows, one a night: new uploads
under a per-night prefix, plus a few re-tags of older photos -- failed ones retried, changed ones re-read; 50
landmarks with a skewed popularity, scores, statuses and coordinates as the tag job writes them) is built once
(kept under --dir), then each measurement runs in a fresh process (its peak RSS, VmHWM, is the process's own;
the seconds start after importing pyarrow.dataset, deltalake and duckdb, a fixed cost the same for every size),
--runs times (the median seconds is reported):

    filter_limit    landmark query --landmark X --min-score 0.9 --limit 5
    summary         landmark query --summary
    near            landmark query --near LAT,LON --radius-km 5 (X's location)
    current_count   landmark query --sql "SELECT count(*) FROM tags"
    skip_check      the tag job's skip check (tagging.pending) for --listed photos (most already tagged)

each through our path (`landmark query` / tagging.pending: the Delta snapshot, the superseded table, catch-up
check, DuckDB) and through raw DuckDB on the same Parquet files our path reads (read_parquet of the history's and
the superseded table's file lists, the same SQL: the history minus the superseded keys); and, for scale, raw DuckDB
over the history's files alone with the SQL an analyst without the superseded table writes (the newest row per
uri). The row counts must agree. ratio = ours / raw DuckDB on the same files.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from landmark_core.status import FAILED, NO_LANDMARK, TAGGED

FORMS = ("filter_limit", "summary", "near", "current_count", "skip_check")
PATHS = ("landmark", "duckdb", "duckdb_history")
MODEL_ID = "lm-bench0001"
START = datetime(2026, 1, 1, 3, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------- the synthetic store


def _catalog():
    from landmark_core.catalog import UDACITY_50

    return list(UDACITY_50)


def night_rows(night: int, n: int, rng: np.random.Generator, retag_uris: list[str]) -> pa.Table:
    """One night's rows: ``n - len(retag_uris)`` new uploads under the night's prefix plus the re-tags."""
    from landmark_core.tagstore import TAG_STRUCT, TAGS_SCHEMA

    day = START + timedelta(days=night)
    new = [
        f"s3://photos/uploads/{day:%Y-%m-%d}/u{u:05d}/{night:04d}-{i:07d}.jpg"
        for i, u in enumerate(rng.integers(0, 20_000, n - len(retag_uris)))
    ]
    uris = new + retag_uris
    lms = _catalog()
    weights = 1.0 / np.arange(1, len(lms) + 1) ** 0.8
    top = rng.choice(len(lms), size=(n, 5), p=weights / weights.sum())
    status = rng.choice(np.array([TAGGED, NO_LANDMARK, FAILED]), size=n, p=[0.8, 0.17, 0.03])
    score = np.where(status == TAGGED, rng.beta(8, 2, n), rng.beta(2, 5, n)).astype(np.float32)
    tagged = status == TAGGED
    ok = status != FAILED
    lat = np.array([lms[i].lat for i in top[:, 0]])
    lon = np.array([lms[i].lon for i in top[:, 0]])
    tag_scores = np.sort(rng.dirichlet(np.ones(5), n).astype(np.float32), axis=1)[:, ::-1]
    tag_scores[:, 0] = score
    flat = pa.StructArray.from_arrays(
        [
            pa.array([lms[i].name for i in top.ravel()]),
            pa.array(tag_scores.ravel()),
            pa.array([lms[i].lat for i in top.ravel()]),
            pa.array([lms[i].lon for i in top.ravel()]),
        ],
        fields=list(TAG_STRUCT),
    )
    offsets = pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32))
    tags = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~ok))
    return pa.table(
        {
            "uri": uris,
            "size_bytes": rng.integers(200_000, 8_000_000, n),
            "etag": pa.array(np.char.add("e", (np.arange(n) + night * 10_000_000).astype(str))),
            "sha256": pa.nulls(n, pa.string()),
            "status": status,
            "error": pa.array(np.where(ok, None, "read: ConnectionResetError"), pa.string()),
            "width": pa.array(np.where(ok, 4032, 0), pa.int32()),
            "height": pa.array(np.where(ok, 3024, 0), pa.int32()),
            "exif_lat": pa.nulls(n, pa.float64()),
            "exif_lon": pa.nulls(n, pa.float64()),
            "exif_time": pa.nulls(n, pa.timestamp("us")),
            "landmark": pa.array(np.where(tagged, [lms[i].name for i in top[:, 0]], None), pa.string()),
            "score": pa.array(score, mask=~ok),
            "lat": pa.array(lat, mask=~tagged),
            "lon": pa.array(lon, mask=~tagged),
            "tags": tags,
            "model_id": pa.array([MODEL_ID] * n),
            "run_id": pa.array([f"night{night:04d}"] * n),
            "tagged_at": pa.array([day] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=TAGS_SCHEMA,
    )


def build_store(root: Path, rows: int, rows_per_run: int, seed: int = 0) -> dict:
    """The store at ``root`` (reused when it was built with the same parameters)."""
    from landmark_core import tagstore

    params = {"rows": rows, "rows_per_run": rows_per_run, "seed": seed, "version": 1}
    marker = root / "_bench.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())
    if root.exists():
        import shutil

        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    recent: list[str] = []
    nights = max(1, rows // rows_per_run)
    for night in range(nights):
        n = rows_per_run if night < nights - 1 else rows - rows_per_run * (nights - 1)
        retag = rng.choice(recent, size=min(len(recent), n // 50), replace=False).tolist() if recent else []
        table = night_rows(night, n, rng, retag)
        recent = table.column("uri").to_pylist()[: n - len(retag)][::7] + recent[:200_000]
        tagstore.append_run(
            str(root),
            table,
            {"run_id": f"night{night:04d}", "rows": n, "model_id": MODEL_ID, "counts": {"total": n}},
            dt=f"{START + timedelta(days=night):%Y-%m-%d}",
            rows_per_file=rows_per_run,
        )
    info = {"params": params, "nights": nights, "build_seconds": round(time.time() - t0, 1)}
    marker.write_text(json.dumps(info))
    return info


def up_to_date(root: Path) -> float:
    """The superseded table brought up to the history's latest version (each run's commit did that already,
    unless the store was built before the table existed); returns the seconds it took."""
    from landmark_core import tagstore

    t = time.perf_counter()
    tagstore.refresh_superseded(str(root))
    return round(time.perf_counter() - t, 2)


def listing(root: Path, n: int, seed: int = 1) -> Path:
    """--listed photos for the skip check: 90% already tagged (sampled from the history), 10% new."""
    from landmark_core import tagstore

    path = root.parent / f"{root.name}-listing-{n}.parquet"
    if path.exists():
        return path
    con = tagstore.connect(str(root))
    old = con.sql(f"SELECT uri, size_bytes, etag FROM tags_history USING SAMPLE {int(n * 0.9)} ROWS").to_arrow_table()
    new = pa.table(
        {
            "uri": [f"s3://photos/uploads/new/{i:07d}.jpg" for i in range(n - old.num_rows)],
            "size_bytes": pa.array([1] * (n - old.num_rows), pa.int64()),
            "etag": [f"n{i}" for i in range(n - old.num_rows)],
        }
    )
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables([old, new.cast(old.schema)]), path)
    con.close()
    return path


# ---------------------------------------------------------------- one measurement (a fresh process)


def measure(form: str, path: str, root: str, listing_path: str) -> dict:
    """Runs one form through one path; returns seconds, result rows and this process's peak RSS."""
    import deltalake  # noqa: F401  imports before the clock: a fixed cost, the same for every size
    import duckdb  # noqa: F401
    import pyarrow.dataset  # noqa: F401

    from jobs import query as q
    from landmark_core.catalog import UDACITY_50

    x = UDACITY_50[0]
    listed = None
    if form == "skip_check":
        import pyarrow.parquet as pq

        listed = pq.read_table(listing_path)
    t0 = time.perf_counter()
    if path == "landmark":
        if form == "filter_limit":
            n = q.run(
                q.QueryConfig(tags=root, landmark=x.name, min_score=0.9, limit=5, columns=q.TABLE_COLUMNS)
            ).num_rows
        elif form == "summary":
            n = q.run_summary(q.QueryConfig(tags=root, summary=True))["photos"]
        elif form == "near":
            n = q.run(q.QueryConfig(tags=root, near=(x.lat, x.lon), radius_km=5, columns=q.TABLE_COLUMNS)).num_rows
        elif form == "current_count":
            n = q.sql(root, "SELECT count(*) AS n FROM tags").column("n")[0].as_py()
        else:
            from landmark_core import storage
            from landmark_core.tagging import pending

            n = pending(listed, root, MODEL_ID, storage.S3Options()).todo.num_rows
    else:
        n = _raw(form, path, root, x, listed)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "rows": n, "rss_mb": round(_peak_rss_kb() / 1024, 1)}


def _peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM: per address space, so not the parent's, as ru_maxrss is after exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# Raw DuckDB over the history only (no superseded table), as an analyst without our code writes it: the current
# rows matching {where} are the matches whose (tagged_at, run_id) is their uri's newest.
RAW_CURRENT = """
WITH cand AS MATERIALIZED (SELECT uri, status, landmark, score, lat, lon, tagged_at, run_id FROM tags_history
                           WHERE {where}),
newest AS (SELECT uri, max(struct_pack(t := tagged_at, r := run_id)) AS k FROM tags_history
           WHERE uri IN (SELECT uri FROM cand) GROUP BY uri)
SELECT cand.uri, cand.status, cand.landmark, cand.score, cand.lat, cand.lon FROM cand JOIN newest USING (uri)
WHERE cand.tagged_at = newest.k.t AND cand.run_id = newest.k.r ORDER BY uri
"""
HISTORY_CURRENT_VIEW = """
CREATE VIEW tags AS SELECT h.* FROM tags_history h
ANTI JOIN tags_history n
    ON n.uri = h.uri AND (n.tagged_at > h.tagged_at OR (n.tagged_at = h.tagged_at AND n.run_id > h.run_id))
"""


def _raw(form: str, path: str, root: str, x, listed) -> int:
    """The same question in SQL on DuckDB's own Parquet reader: "duckdb" over the files our path reads (the
    history's and the superseded table's, as of their snapshots), "duckdb_history" over the history's only."""
    import duckdb
    from deltalake import DeltaTable

    from jobs import query as q
    from landmark_core import tagstore
    from landmark_core.tagging import SKIP_SQL

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = sorted(DeltaTable(root).file_uris())  # in the order our path reads them (tagstore.Store)
    con.execute(f"CREATE VIEW tags_history AS SELECT * FROM read_parquet({files!r})")
    with_table = path == "duckdb"
    if with_table:
        sfiles = DeltaTable(tagstore.superseded_uri(root)).file_uris()
        con.execute(f"CREATE VIEW _superseded AS SELECT * FROM read_parquet({sfiles!r})")
        con.execute(f"CREATE VIEW tags AS {tagstore.current_sql('tags_history')}")
    else:
        con.execute(HISTORY_CURRENT_VIEW)
    con.execute(tagstore.MACROS)
    cols = "uri, status, landmark, score, lat, lon"
    if form == "filter_limit":
        where = "lower(landmark) = ? AND score >= CAST(? AS FLOAT)"
        sql = f"SELECT {cols} FROM tags WHERE {where} ORDER BY uri" if with_table else RAW_CURRENT.format(where=where)
        return len(con.execute(sql + " LIMIT 5", [x.name.lower(), 0.9]).fetchall())
    if form == "near":
        lat_min, lat_max, [(lo, hi)] = q.bounding_box(x.lat, x.lon, 5.0)
        where = "lat BETWEEN ? AND ? AND lon BETWEEN ? AND ? AND haversine_km(?, ?, lat, lon) <= 5.0"
        sql = f"SELECT {cols} FROM tags WHERE {where} ORDER BY uri" if with_table else RAW_CURRENT.format(where=where)
        return con.sql(sql, params=[lat_min, lat_max, lo, hi, x.lat, x.lon]).to_arrow_table().num_rows
    if form == "summary":
        counts = con.sql(
            "WITH r AS MATERIALIZED (SELECT status, landmark FROM tags) SELECT 'status', status, "
            "count(*) FROM r GROUP BY 2 UNION ALL SELECT 'landmark', landmark, count(*) FROM r "
            "WHERE landmark IS NOT NULL GROUP BY 2"
        ).fetchall()
        return sum(n for kind, _, n in counts if kind == "status")
    if form == "current_count":
        return con.execute("SELECT count(*) FROM tags").fetchone()[0]
    con.register("listing", listed.append_column("_i", pa.array(range(listed.num_rows), pa.int64())))
    # the skip check needs no superseded table (it reads every row of the listed uris): both read the history
    rows = "(SELECT * FROM tags_history WHERE uri IN (SELECT uri FROM listing))"
    sql = f"SELECT * FROM ({SKIP_SQL.format(current=tagstore.newest_sql(rows))}) WHERE _settled IS NULL"
    return con.sql(sql, params=[FAILED, [MODEL_ID]]).to_arrow_table().num_rows


def child_main(spec: str) -> None:
    print(json.dumps(measure(**json.loads(spec))), flush=True)


def _in_child(form: str, path: str, root: Path, listing_path: Path) -> dict:
    spec = json.dumps({"form": form, "path": path, "root": str(root), "listing_path": str(listing_path)})
    done = subprocess.run(
        [sys.executable, "-m", "jobs._bench_store", spec],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ},
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{form}/{path} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the bench


def run(sizes: list[int], *, runs: int, rows_per_run: int, listed: int, work: Path, say) -> dict:
    out: dict = {"sizes": {}, "runs": runs, "rows_per_run": rows_per_run, "listed": listed}
    for rows in sizes:
        root = work / f"store-{rows}-{rows_per_run}"
        info = build_store(root, rows, rows_per_run)
        say(f"store {rows:,} rows in {info['nights']} runs at {root} (built in {info['build_seconds']} s)")
        refresh = up_to_date(root)
        say(f"superseded table up to date ({refresh} s)")
        lst = listing(root, listed)
        _warm_page_cache(root)
        res: dict = {"nights": info["nights"]}
        for form in FORMS:
            r = {}
            for path in PATHS:
                samples = [_in_child(form, path, root, lst) for _ in range(runs)]
                r[path] = {
                    "seconds": statistics.median(s["seconds"] for s in samples),
                    "rss_mb": max(s["rss_mb"] for s in samples),
                    "rows": samples[0]["rows"],
                }
            r["ratio"] = round(r["landmark"]["seconds"] / max(r["duckdb"]["seconds"], 1e-6), 2)
            r["ratio_to_history_only"] = round(r["landmark"]["seconds"] / max(r["duckdb_history"]["seconds"], 1e-6), 2)
            for path in PATHS[1:]:
                if r["landmark"]["rows"] != r[path]["rows"]:
                    raise RuntimeError(
                        f"{form}: our path returned {r['landmark']['rows']} rows, {path} {r[path]['rows']}"
                    )
            res[form] = r
            say(
                f"{rows:>11,} {form:<14} ours {r['landmark']['seconds']:7.3f} s {r['landmark']['rss_mb']:6.0f} MB"
                f" | raw DuckDB {r['duckdb']['seconds']:7.3f} s {r['duckdb']['rss_mb']:6.0f} MB | ratio "
                f"{r['ratio']:.2f} | raw, history only {r['duckdb_history']['seconds']:7.3f} s "
                f"{r['duckdb_history']['rss_mb']:6.0f} MB | {r['landmark']['rows']} rows"
            )
        out["sizes"][str(rows)] = res
    out["targets"] = targets(out, sizes)
    for k, v in out["targets"].items():
        say(f"target {k}: {v}")
    return out


def _warm_page_cache(root: Path) -> None:
    """Read every file of the store once, untimed: otherwise the first path measured pays the disk, the second
    finds the files in the page cache."""
    for f in root.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def targets(out: dict, sizes: list[int]) -> dict:
    """The issue's targets, evaluated on the largest size (and the RSS growth from the smallest)."""
    big, small = out["sizes"][str(max(sizes))], out["sizes"][str(min(sizes))]
    t = {
        "every_form_within_2x_of_raw": all(big[f]["ratio"] <= 2.0 for f in FORMS),
        "filter_limit_under_1s": big["filter_limit"]["landmark"]["seconds"] < 1.0,
        "skip_check_under_5s": big["skip_check"]["landmark"]["seconds"] < 5.0,
    }
    if len(sizes) > 1:
        for f in ("filter_limit", "skip_check"):
            growth = big[f]["landmark"]["rss_mb"] / small[f]["landmark"]["rss_mb"]
            out.setdefault("rss_growth", {})[f] = round(growth, 2)
            t[f"{f}_rss_within_1.3x_of_smallest"] = growth <= 1.3
        out["rss_growth"].update(
            {f: round(big[f]["landmark"]["rss_mb"] / small[f]["landmark"]["rss_mb"], 2) for f in FORMS}
        )
    return t


def merge_vs_append(src: str) -> dict:
    """The design choice, measured: one more night upserted (MERGE on uri) into a current-only copy of the store
    at ``src``, against our append of the same night to a copy of the store. ``python -m jobs._bench_store
    merge-vs-append STORE``."""
    import shutil
    import tempfile

    from deltalake import DeltaTable, write_deltalake

    from landmark_core import tagstore

    rng = np.random.default_rng(5)
    cur = tagstore.read(src)
    tmp = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(src, tmp / "append")
        write_deltalake(str(tmp / "merge"), cur)
        recent = cur.column("uri").to_pylist()[-200_000:]
        night = night_rows(9999, 50_000, rng, rng.choice(recent, 1000, replace=False).tolist())
        t = time.perf_counter()
        m = (
            DeltaTable(str(tmp / "merge"))
            .merge(night, predicate="t.uri = s.uri", source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        t_merge = time.perf_counter() - t
        t = time.perf_counter()
        tagstore.append_run(
            str(tmp / "append"), night, {"run_id": "night9999", "rows": night.num_rows}, dt="2026-12-01"
        )
        return {
            "current_rows": cur.num_rows,
            "merge_seconds": round(t_merge, 2),
            "append_seconds": round(time.perf_counter() - t, 2),
            "merge_rows_rewritten": m.get("num_target_rows_copied"),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_and_refresh(src: str) -> dict:
    """What the superseded table costs a run: one more night (50,000 rows, 1,000 re-tags) appended to a copy of the
    store at ``src``, then the refresh after its commit, timed apart. ``python -m jobs._bench_store
    append-refresh STORE``."""
    import shutil
    import tempfile

    from landmark_core import tagstore

    tmp = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(src, tmp / "t")
        root = str(tmp / "t")
        tagstore.refresh_superseded(root)
        recent = tagstore.read(root, columns=["uri"]).column("uri").to_pylist()[-200_000:]
        rng = np.random.default_rng(5)
        night = night_rows(9999, 50_000, rng, rng.choice(recent, 1000, replace=False).tolist())
        t = time.perf_counter()
        tagstore.append_run(root, night, {"run_id": "night9999", "rows": 50_000}, dt="2026-12-01", refresh=False)
        t_append = time.perf_counter() - t
        t = time.perf_counter()
        tagstore.refresh_superseded(root)
        t_refresh = time.perf_counter() - t
        added = pa.table(tagstore.open_superseded(root).to_pyarrow_dataset().to_table()).num_rows
        return {"append_seconds": round(t_append, 2), "refresh_seconds": round(t_refresh, 2), "superseded_rows": added}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_delta_vs_commit(repeats: int = 2) -> dict:
    """The other choice, measured: Ray 2.60's Dataset.write_delta against write_parquet + our one commit, on the
    blocks the tag job makes of 150 photos (--decode-batch 16). ``python -m jobs._bench_store write-delta``."""
    import shutil
    import tempfile

    import pyarrow.fs as pafs
    import ray
    from deltalake import DeltaTable

    from landmark_core import tagstore

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = night_rows(0, 150, np.random.default_rng(0), [])
    blocks = [rows.slice(i, 16) for i in range(0, 150, 16)]
    out = {}
    try:
        for name in ("write_delta", "write_parquet+commit"):
            for rep in range(repeats):
                d = tempfile.mkdtemp()
                ds = ray.data.from_blocks(blocks)
                t = time.perf_counter()
                if name == "write_delta":
                    ds.write_delta(f"{d}/t")
                else:
                    tagstore.ensure_table(f"{d}/t")
                    ds.write_parquet(f"{d}/t/runs/x/r", min_rows_per_file=250_000)
                    tagstore.commit_run(
                        f"{d}/t",
                        pafs.LocalFileSystem(),
                        [f"{d}/t/runs/x/r/{f}" for f in os.listdir(f"{d}/t/runs/x/r")],
                        {"run_id": "r"},
                    )
                seconds = time.perf_counter() - t
                adds = pa.table(DeltaTable(f"{d}/t").get_add_actions(flatten=True)).to_pylist()
                out[f"{name}#{rep}"] = {
                    "seconds": round(seconds, 2),
                    "files": len(adds),
                    "min_max_stats": any(k.startswith("min.") and a[k] is not None for a in adds for k in a),
                }
                shutil.rmtree(d, ignore_errors=True)
    finally:
        ray.shutdown()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "write-delta":
        print(json.dumps(write_delta_vs_commit()))
    elif sys.argv[1] == "append-refresh":
        print(json.dumps(append_and_refresh(sys.argv[2])))
    elif sys.argv[1] == "merge-vs-append":
        print(json.dumps(merge_vs_append(sys.argv[2])))
    else:
        child_main(sys.argv[1])
