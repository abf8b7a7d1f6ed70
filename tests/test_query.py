"""`landmark query` and its Python API against tag stores built by hand (pyarrow only, no Ray)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import query as q
from landmark_core import tagstore
from landmark_core.catalog import haversine_km
from tests.cli_asserts import assert_error_names

EIFFEL = ("Eiffel Tower", 48.8584, 2.2945)
BIG_BEN = ("Big Ben", 51.5007, -0.1246)
OPERA = ("Sydney Opera House", -33.8568, 151.2153)
GOLDEN_GATE = ("Golden Gate Bridge", 37.8199, -122.4783)
FIJI = ("Fiji Reef", -17.0, 179.95)  # just west of the antimeridian


# ------------------------------------------------------------------------------------------ store builders


def tag_row(
    uri: str,
    run_id: str,
    *,
    status: str = "tagged",
    place=None,
    score: float | None = None,
    error: str | None = None,
    tagged_at: datetime,
    model_id: str = "lm-aaaa",
) -> dict:
    name, lat, lon = place if place else (None, None, None)
    if status == "failed":
        tags = None
    else:
        tags = [
            {"name": name or "Big Ben", "score": score, "lat": lat, "lon": lon},
            {"name": "Other Place", "score": 0.01, "lat": 1.0, "lon": 2.0},
        ]
    return {
        "uri": uri,
        "size_bytes": 1234,
        "etag": "e-" + uri[-5:],
        "sha256": None,
        "status": status,
        "error": error,
        "width": None if status == "failed" else 320,
        "height": None if status == "failed" else 240,
        "exif_lat": None,
        "exif_lon": None,
        "exif_time": datetime(2026, 7, 1, 12, 0, 0),
        "landmark": name if status == "tagged" else None,
        "score": score,
        "lat": lat if status == "tagged" else None,
        "lon": lon if status == "tagged" else None,
        "tags": tags,
        "model_id": model_id,
        "run_id": run_id,
        "tagged_at": tagged_at,
    }


def write_run(
    root: Path,
    dt: str,
    run_id: str,
    rows: list[dict],
    *,
    committed_at: str | None,
    model_id: str = "lm-aaaa",
    **write_kw,
) -> str:
    """One run appended to the Delta table at ``root``; ``committed_at=None`` writes its file but never commits
    it (as a killed run leaves it). Returns the run's data file."""
    counts = {s: sum(r["status"] == s for r in rows) for s in tagstore.STATUSES}
    summary = {
        "run_id": run_id,
        "committed_at": committed_at,
        "model_id": model_id,
        "counts": {**counts, "total": len(rows)},
        "rows": len(rows),
        "config": {},
        "timings": {},
    }
    tagstore.append_run(
        str(root),
        pa.Table.from_pylist(rows, schema=tagstore.TAGS_SCHEMA),
        summary,
        dt=dt,
        commit=committed_at is not None,
        **write_kw,
    )
    return tagstore.run_files_dir(str(Path(root).resolve()), dt, run_id) + "/part-00000.parquet"


T1 = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
T2 = datetime(2026, 11, 22, 6, 0, tzinfo=timezone.utc)
T3 = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> str:
    root = tmp_path / "tags"
    write_run(
        root,
        "2026-11-20",
        "r1",
        [
            tag_row("photos/a.jpg", "r1", place=EIFFEL, score=0.95, tagged_at=T1),
            # re-tagged by r2 as no_landmark: this old row matches --landmark 'big ben', --status tagged and
            # --min-score 0.8, and must never come back
            tag_row("photos/b.jpg", "r1", place=BIG_BEN, score=0.9, tagged_at=T1),
            tag_row("photos/c.jpg", "r1", status="failed", error="decode: truncated JPEG", tagged_at=T1),
            tag_row("photos/d.jpg", "r1", place=OPERA, score=0.7, tagged_at=T1),
        ],
        committed_at="2026-11-20T06:30:00+00:00",
    )
    write_run(
        root,
        "2026-11-22",
        "r2",
        [
            tag_row("photos/b.jpg", "r2", status="no_landmark", score=0.3, tagged_at=T2, model_id="lm-bbbb"),
            tag_row("photos/e.jpg", "r2", place=GOLDEN_GATE, score=0.85, tagged_at=T2, model_id="lm-bbbb"),
            tag_row("photos/f.jpg", "r2", place=EIFFEL, score=0.6, tagged_at=T2, model_id="lm-bbbb"),
            tag_row("photos/g.jpg", "r2", place=FIJI, score=0.8, tagged_at=T2, model_id="lm-bbbb"),
        ],
        committed_at="2026-11-22T06:30:00+00:00",
        model_id="lm-bbbb",
    )
    # died (or still running): its file is written but never committed, so invisible — would re-tag a.jpg and add z.jpg
    write_run(
        root,
        "2026-11-23",
        "r3",
        [
            tag_row("photos/a.jpg", "r3", status="failed", error="boom", tagged_at=T3),
            tag_row("photos/z.jpg", "r3", place=BIG_BEN, score=0.99, tagged_at=T3),
        ],
        committed_at=None,
    )
    return str(root)


def set_superseded(root: str, state: str) -> None:
    """The superseded table up to date ("table"), complete only for version 1 ("behind": as after runs whose
    refresh did not happen; r1 alone superseded nothing), or gone ("full")."""
    import shutil

    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties, Transaction

    if state == "table":
        return
    shutil.rmtree(Path(root) / tagstore.SUPERSEDED_DIR)
    if state == "behind":
        write_deltalake(
            tagstore.superseded_uri(root),
            tagstore.KEYS_SCHEMA.empty_table(),
            commit_properties=CommitProperties(app_transactions=[Transaction(tagstore.SUPERSEDED_APP, 1)]),
        )


def uris(table: pa.Table) -> list[str]:
    return [u.rsplit("/", 1)[1] for u in table.column("uri").to_pylist()]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = q.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------ visibility & latest


def test_committed_runs_only_latest_per_uri(store):
    t = q.run(q.QueryConfig(tags=store))
    assert t.schema == tagstore.TAGS_SCHEMA
    assert uris(t) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]  # no z.jpg (uncommitted)
    rows = {u: r for u, r in zip(uris(t), t.to_pylist())}
    assert rows["a.jpg"]["status"] == "tagged" and rows["a.jpg"]["run_id"] == "r1"  # r3's 'failed' is invisible
    assert rows["b.jpg"]["status"] == "no_landmark" and rows["b.jpg"]["run_id"] == "r2"


@pytest.mark.parametrize(
    "filters",
    [
        {"landmark": "big ben"},
        {"status": "tagged", "min_score": 0.8},
        {"min_score": 0.85},
        {"near": (51.5, -0.12), "radius_km": 10},
        {"since": "2026-11-19", "landmark": "Big Ben"},
    ],
)
@pytest.mark.parametrize("superseded", ["table", "behind", "full"])
def test_old_row_matching_a_filter_does_not_resurface(store, filters, superseded):
    set_superseded(store, superseded)
    s = tagstore.open_store(store)
    assert (s.superseded, s.covered) == {"table": ("table", 2), "behind": ("table", 1), "full": ("full", None)}[
        superseded
    ]
    s.close()
    assert "b.jpg" in uris(q.query(store, history=True, **filters))  # the filter does match b's old row
    want = {"status": ["a.jpg", "e.jpg", "g.jpg"], "min_score": ["a.jpg", "e.jpg"]}.get(next(iter(filters)), [])
    assert uris(q.query(store, **filters)) == want  # the current view: b has its newer row there, which fails it
    assert uris(q.query(store, min_score=0.0)) == ["a.jpg", "b.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]


def test_store_read_current_and_history(store):
    t = tagstore.read(store, columns=["uri", "run_id"], filter=pc.field("landmark") == "Big Ben")
    assert t.num_rows == 0  # b.jpg's r1 row is not current
    t = tagstore.read(store, history=True, columns=["uri", "run_id"])
    assert sorted(t.column("run_id").to_pylist()) == ["r1"] * 4 + ["r2"] * 4  # r3 never committed


def test_history_and_time_travel(store, capsys):
    t = q.query(store, history=True, columns="uri,run_id")
    assert list(zip(uris(t), t.column("run_id").to_pylist()))[:3] == [("a.jpg", "r1"), ("b.jpg", "r1"), ("b.jpg", "r2")]
    runs = tagstore.runs(store)
    assert [r["run_id"] for r in runs] == ["r1", "r2"] and [r["version"] for r in runs] == [1, 2]
    at_r1 = q.query(store, version=1)
    assert uris(at_r1) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"] and at_r1.column("status")[1].as_py() == "tagged"
    assert uris(q.query(store, version=0)) == []  # the empty table, before any run
    # --as-of: the commit timestamps from the log
    from datetime import timedelta

    r1_time, r2_time = (datetime.fromtimestamp(r["timestamp"] / 1000, timezone.utc) for r in runs)
    assert r2_time - r1_time > timedelta(milliseconds=2)
    # between the two commits (not r1 + 1 ms: the log's file times and commitInfo may differ on a busy machine)
    assert uris(q.query(store, as_of=r1_time + (r2_time - r1_time) / 2)) == uris(at_r1)
    code, out, _ = cli(capsys, "--tags", store, "--version", "1", "--format", "csv", "--columns", "uri,run_id")
    assert code == 0 and out.splitlines()[2] == "photos/b.jpg,r1"
    code, out, err = cli(capsys, "--tags", store, "--version", "9")
    assert code == 2 and out == ""  # a bad argument, named
    assert_error_names(err, "--version", "no version 9", "its versions are 0 to 2")
    # a time before the table existed: said so (delta-rs loads the first version for any earlier time: 0 rows)
    code, out, err = cli(capsys, "--tags", store, "--as-of", "2020-01-01")
    assert code == 2 and out == ""
    assert_error_names(err, "--as-of", "no version as of 2020-01-01", "the table was created")


def test_sql_over_both_views(store, capsys):
    t = q.sql(
        store,
        "SELECT landmark, count(*) AS n FROM tags WHERE landmark IS NOT NULL GROUP BY 1 ORDER BY n DESC, landmark",
    )
    assert isinstance(t, pa.Table) and t.to_pylist()[0] == {"landmark": "Eiffel Tower", "n": 2}
    code, out, _ = cli(
        capsys,
        "--tags",
        store,
        "--sql",
        "SELECT uri, count(*) AS runs FROM tags_history GROUP BY uri HAVING count(*) > 1",
        "--format",
        "json",
    )
    assert code == 0 and [json.loads(x) for x in out.splitlines()] == [{"uri": "photos/b.jpg", "runs": 2}]
    code, out, err = cli(capsys, "--tags", store, "--sql", "SELECT nope FROM tags")
    assert code == 2 and err.startswith("landmark query: --sql: ") and "nope" in err


def test_sql_reads_the_tags_and_nothing_else(store, capsys, tmp_path):
    """--sql is one SELECT of the snapshot: statements that write or change are refused before the table is read,
    and a SELECT cannot read or write another file (the DuckDB connection's external access is off and locked)."""
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    written = tmp_path / "out.csv"
    refused = {
        f"COPY (SELECT * FROM tags) TO '{written}'": "COPY",
        "DROP VIEW tags": "DROP",
        "SELECT 1; SELECT 2": "SELECT + SELECT",
        "ATTACH 'x.duckdb'": "ATTACH",
        "SET enable_external_access = true": "SET",
    }
    for statement, kinds in refused.items():
        with pytest.raises(SystemExit) as e:
            q.main(["--tags", store, "--sql", statement])
        captured = capsys.readouterr()
        assert e.value.code == 2 and captured.out == "", statement
        assert_error_names(captured.err, "--sql", f"got {kinds}")
    for statement in (
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT count(*) FROM tags UNION ALL SELECT count(*) FROM read_parquet('{written}')",
    ):
        code, out, err = cli(capsys, "--tags", store, "--sql", statement)
        assert code == 2 and "hunter2" not in out + err and "disabled" in err, (statement, err)
    assert not written.exists()
    code, out, _ = cli(capsys, "--tags", store, "--sql", "EXPLAIN SELECT count(*) FROM tags")
    assert code == 0 and "physical_plan" in out


def test_sql_cannot_write_over_the_tables_own_files(store, capsys):
    """The connection may open the table's own Parquet files (DuckDB's allowed paths), to read and to write:
    EXPLAIN ANALYZE runs the statement it explains, so a COPY inside it overwrote a committed run's file. Refused
    before anything runs; every file of the table is unchanged."""
    import hashlib

    def digests():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(store).rglob("*") if p.is_file()}

    before = digests()
    own = next(p for p in before if p.suffix == ".parquet" and "_superseded" not in p.parts)
    copy = f"COPY (SELECT * FROM tags LIMIT 1) TO '{own}' (FORMAT parquet, USE_TMP_FILE false)"
    refused = {
        f"EXPLAIN ANALYZE {copy}": "EXPLAIN ANALYZE runs the statement",
        f"/* a plan */ explain  analyse {copy}": "EXPLAIN ANALYZE runs the statement",
        f"EXPLAIN (ANALYZE) {copy}": "EXPLAIN ANALYZE runs the statement",
        f"EXPLAIN {copy}": "EXPLAIN takes one SELECT over the views tags and tags_history, got COPY",  # a plan of one
    }
    for statement, said in refused.items():
        with pytest.raises(SystemExit) as e:
            q.main(["--tags", store, "--sql", statement])
        captured = capsys.readouterr()
        assert e.value.code == 2 and captured.out == "", statement
        assert_error_names(captured.err, "--sql", said)
    assert digests() == before
    code, out, _ = cli(capsys, "--tags", store, "--sql", "-- a plan\nEXPLAIN (FORMAT json) SELECT count(*) FROM tags")
    assert code == 0 and out.strip(), out


# Any type an analyst's SELECT can give, in every format: (SQL expression, its JSON value, its table/CSV cell).
# Bytes are lowercase hex; NaN and +-inf are null in JSON (strict JSON has neither); types Arrow does not carry
# faithfully (INTERVAL, TIMETZ, UHUGEINT, BIT, BIGNUM, UNION, VARIANT) are DuckDB's own text.
SQL_VALUES = {
    "blob": ("'\\x01\\xffab'::BLOB", "01ff6162", "01ff6162"),
    "blob_of_a_column": ("(SELECT uri::BLOB FROM tags ORDER BY uri LIMIT 1)", b"photos/a.jpg".hex(), None),
    "decimal": ("1.23::DECIMAL(10,2)", 1.23, "1.23"),
    "decimal_38": (
        "12345678901234567890.123456789::DECIMAL(38,9)",
        "12345678901234567890.123456789",
        "12345678901234567890.123456789",
    ),
    "hugeint": ("170141183460469231731687303715884105727::HUGEINT", 2**127 - 1, str(2**127 - 1)),
    "uhugeint": ("340282366920938463463374607431768211455::UHUGEINT", str(2**128 - 1), str(2**128 - 1)),
    "ubigint": ("18446744073709551615::UBIGINT", 2**64 - 1, str(2**64 - 1)),
    "bignum": ("(2::BIGNUM ** 200)::BIGNUM", None, None),  # its digits, checked below
    "date": ("DATE '2026-11-24'", "2026-11-24", "2026-11-24"),
    "timestamp": ("TIMESTAMP '2026-11-24 06:30:00.123456'", "2026-11-24T06:30:00.123456", "2026-11-24T06:30:00.123456"),
    "timestamptz": ("TIMESTAMPTZ '2026-11-24 06:30:00+00'", "2026-11-24T06:30:00+00:00", "2026-11-24T06:30:00+00:00"),
    "timestamp_ns": ("TIMESTAMP_NS '2026-11-24 06:30:00.123456789'", "2026-11-24T06:30:00.123456789", None),
    "time": ("TIME '06:30:00.5'", "06:30:00.500000", "06:30:00.500000"),
    "timetz": ("TIMETZ '06:30:00+02'", "06:30:00+02", "06:30:00+02"),
    "interval": ("INTERVAL '1 year 2 months 3 days 04:05:06.000007'", "1 year 2 months 3 days 04:05:06.000007", None),
    "uuid": ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None),
    "list": ("[1, 2, 3]", [1, 2, 3], "[1, 2, 3]"),
    "struct": ("{'a': 1, 'b': 'x'}", {"a": 1, "b": "x"}, '{"a": 1, "b": "x"}'),
    "map": ("MAP {'k': 1, 'j': 2}", {"k": 1, "j": 2}, '{"k": 1, "j": 2}'),
    "map_int_keys": ("MAP {1: 'a'}", {"1": "a"}, '{"1": "a"}'),
    "list_of_blobs": ("['\\x00'::BLOB, NULL]", ["00", None], '["00", null]'),
    "nested_interval": ("{'d': [INTERVAL 1 DAY]}", {"d": ["1 day"]}, '{"d": ["1 day"]}'),
    "list_of_nan": ("['nan'::DOUBLE, 1.5]", [None, 1.5], "[null, 1.5]"),
    "nan": ("'nan'::DOUBLE", None, ""),
    "inf": ("'inf'::DOUBLE", None, "inf"),
    "minus_inf_float": ("'-inf'::FLOAT", None, "-inf"),
    "bit": ("'0101'::BIT", "0101", "0101"),
    "union": ("union_value(num := 2)::UNION(num INTEGER, str VARCHAR)", "2", "2"),
    "enum": ("'a'::ENUM('a', 'b')", "a", "a"),
    "null": ("NULL", None, ""),
    "variant": ("(SELECT typed_value FROM duckdb_settings() WHERE name = 'threads')", None, None),  # its text
}


def _check_parquet_row(row: dict) -> None:
    """SQL_VALUES as Parquet carries them: Arrow's own types where it has one, DuckDB's text where it has none."""
    import datetime as dt
    from decimal import Decimal

    utc = dt.timezone.utc
    want = {
        "blob": b"\x01\xffab",
        "blob_of_a_column": b"photos/a.jpg",
        "decimal": Decimal("1.23"),
        "decimal_38": Decimal("12345678901234567890.123456789"),
        "hugeint": Decimal(2**127 - 1),
        "uhugeint": str(2**128 - 1),
        "ubigint": 2**64 - 1,
        "bignum": str(2**200),
        "date": dt.date(2026, 11, 24),
        "timestamp": dt.datetime(2026, 11, 24, 6, 30, 0, 123456),
        "timestamptz": dt.datetime(2026, 11, 24, 6, 30, tzinfo=utc),
        "time": dt.time(6, 30, 0, 500000),
        "timetz": "06:30:00+02",
        "interval": "1 year 2 months 3 days 04:05:06.000007",
        "uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "list": [1, 2, 3],
        "struct": {"a": 1, "b": "x"},
        "map": [("k", 1), ("j", 2)],
        "map_int_keys": [(1, "a")],
        "list_of_blobs": [b"\x00", None],
        "nested_interval": {"d": ["1 day"]},
        "inf": math.inf,
        "minus_inf_float": -math.inf,
        "bit": "0101",
        "union": "2",
        "enum": "a",
        "null": None,
    }
    for case, value in want.items():
        assert row[case] == value, (case, row[case], value)
    assert str(row["timestamp_ns"]).startswith("2026-11-24 06:30:00.123456789"), row["timestamp_ns"]
    assert math.isnan(row["nan"]) and math.isnan(row["list_of_nan"][0]) and row["list_of_nan"][1] == 1.5
    assert isinstance(row["variant"], str) and row["variant"].isdigit(), row["variant"]


@pytest.mark.parametrize("fmt", q.FORMATS)
def test_sql_any_result_type_in_every_format(store, capsys, tmp_path, fmt):
    """Every type of SQL_VALUES in one SELECT, a column each (named by its case): each value reads back as its
    format says (strict JSON, the CSV cell, the table's cell, Parquet's column)."""
    select = "SELECT " + ", ".join(f"{expr} AS {case}" for case, (expr, _, _) in SQL_VALUES.items())
    out_file = tmp_path / "out.parquet"
    extra = ["--out", str(out_file)] if fmt == "parquet" else []
    code, out, err = cli(capsys, "--tags", store, "--sql", select, "--format", fmt, *extra)
    assert code == 0 and err == "", err
    if fmt == "parquet":
        t = pq.read_table(out_file)
        assert t.column_names == list(SQL_VALUES) and t.num_rows == 1
        _check_parquet_row(t.to_pylist()[0])
        return
    values = _the_one_row(out, fmt)
    assert list(values) == list(SQL_VALUES), out
    for case, (_, as_json, as_text) in SQL_VALUES.items():
        value = values[case]
        if case == "bignum":
            assert value == str(2**200), value
        elif case == "variant":
            assert isinstance(value, str) and value.isdigit(), value
        else:
            want = as_json if fmt == "json" or as_text is None else as_text
            assert value == want, (case, value, want)


def _the_one_row(out: str, fmt: str) -> dict:
    """column -> value of a one-row answer: JSON parsed strictly, CSV by its reader, the table by its columns
    (two spaces apart, as wide as the dashes under their names)."""
    if fmt == "json":
        (line,) = out.splitlines()
        return json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    if fmt == "csv":
        import csv

        header, row = list(csv.reader(io.StringIO(out)))
        return dict(zip(header, row))
    head, dashes, row, count = out.splitlines()
    assert count == "(1 row)", out
    values, at = {}, 0
    for width in (len(d) for d in dashes.split("  ")):
        values[head[at : at + width].strip()] = row[at : at + width].strip()
        at += width + 2
    return values


@pytest.mark.parametrize("fmt", q.FORMATS)
def test_sql_duckdb_settings_and_columns_of_one_name(store, capsys, tmp_path, fmt):
    """The user's two commands (a BLOB of a column; DuckDB's settings, whose typed_value is a VARIANT), and two
    result columns of one name (a join's), in every format."""
    extra = ["--out", str(tmp_path / "o")] if fmt == "parquet" else []
    for statement in (
        "SELECT sha256::BLOB b FROM tags LIMIT 1",
        "SELECT * FROM duckdb_settings() LIMIT 1",
        "SELECT * FROM duckdb_settings()",
    ):
        code, out, err = cli(capsys, "--tags", store, "--sql", statement, "--format", fmt, *extra)
        assert code == 0 and err == "", (statement, err)
        if fmt == "json":
            assert all(isinstance(json.loads(x), dict) for x in out.splitlines())
    code, out, _ = cli(capsys, "--tags", store, "--sql", "SELECT 1 AS a, INTERVAL 1 DAY AS a", "--format", fmt, *extra)
    assert code == 0
    if fmt == "csv":
        assert out.splitlines() == ["a,a", "1,1 day"]
    elif fmt == "table":
        assert out.splitlines()[2].split() == ["1", "1", "day"]
    elif fmt == "parquet":
        assert pq.ParquetFile(tmp_path / "o").metadata.num_rows == 1  # (pyarrow reads no two columns of a name)


# ---------------------------------------------------------------------------------------------- filters


def test_landmark_case_insensitive(store):
    assert uris(q.query(store, landmark="EIFFEL tower")) == ["a.jpg", "f.jpg"]
    assert uris(q.query(store, landmark="  eiffel tower ")) == ["a.jpg", "f.jpg"]
    assert uris(q.query(store, landmark="eiffel")) == []  # exact name, not a substring


def test_min_score_compares_in_float32(store):
    # d.jpg stores 0.7 as float32 (0.69999998...): --min-score 0.7 must keep it
    assert uris(q.query(store, min_score=0.7)) == ["a.jpg", "d.jpg", "e.jpg", "g.jpg"]
    assert uris(q.query(store, min_score=0.0)) == ["a.jpg", "b.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]
    assert uris(q.query(store, min_score=1.0)) == []


@pytest.mark.parametrize(
    "status,expected",
    [
        ("tagged", ["a.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]),
        ("no_landmark", ["b.jpg"]),
        ("failed", ["c.jpg"]),
    ],
)
def test_status(store, status, expected):
    assert uris(q.query(store, status=status)) == expected


def test_near_radius(store):
    assert uris(q.query(store, near=EIFFEL[1:], radius_km=1)) == ["a.jpg", "f.jpg"]
    # Paris from London is ~340 km
    assert uris(q.query(store, near=BIG_BEN[1:], radius_km=300)) == []
    assert uris(q.query(store, near=BIG_BEN[1:], radius_km=400)) == ["a.jpg", "f.jpg"]


def test_near_exact_distance_after_bounding_box(store):
    # a centre whose 5 km box contains the Eiffel Tower (a box corner) but whose 5 km circle does not
    centre = (EIFFEL[1] + 0.04, EIFFEL[2] + 0.06)
    lat_min, lat_max, [(lo, hi)] = q.bounding_box(*centre, 5.0)
    assert lat_min <= EIFFEL[1] <= lat_max and lo <= EIFFEL[2] <= hi
    assert haversine_km(*centre, *EIFFEL[1:]) > 5.0
    assert uris(q.query(store, near=centre, radius_km=5)) == []
    assert uris(q.query(store, near=centre, radius_km=6.5)) == ["a.jpg", "f.jpg"]


def test_near_across_the_antimeridian(store):
    # Fiji Reef is at lon 179.95; a centre at -179.9 is ~16 km east across the date line
    assert uris(q.query(store, near=(-17.0, -179.9), radius_km=50)) == ["g.jpg"]
    assert uris(q.query(store, near=(-17.0, -179.9), radius_km=10)) == []


def test_bounding_box_edges():
    # over a pole: every longitude
    lat_min, lat_max, ranges = q.bounding_box(89.5, 10.0, 200.0)
    assert lat_max == 90.0 and ranges == [(-180.0, 180.0)]
    # antimeridian: two ranges
    _, _, ranges = q.bounding_box(0.0, 179.9, 100.0)
    assert len(ranges) == 2 and ranges[0][1] == 180.0 and ranges[1][0] == -180.0
    # bigger than half the earth: everything
    assert q.bounding_box(10.0, 10.0, 30000.0) == (-90.0, 90.0, [(-180.0, 180.0)])
    # the box is tight: a point just outside the radius due north is outside the box
    lat_min, lat_max, [(lo, hi)] = q.bounding_box(45.0, 0.0, 111.0)
    assert math.isclose(lat_max - 45.0, math.degrees(111.0 / q.EARTH_RADIUS_KM), rel_tol=1e-6)
    assert haversine_km(45.0, 0.0, 45.0, hi) >= 111.0 - 1e-6  # the box's side at the centre's latitude


def test_sql_haversine_matches_catalog(store):
    con = tagstore.connect(store)
    distance = "SELECT haversine_km(?, ?, lat, lon) FROM (SELECT ?::DOUBLE AS lat, ?::DOUBLE AS lon)"
    for lat, lon in (EIFFEL[1:], OPERA[1:], FIJI[1:], (-BIG_BEN[1], BIG_BEN[2] + 180)):
        got = con.execute(distance, [BIG_BEN[1], BIG_BEN[2], lat, lon]).fetchone()[0]
        assert math.isclose(got, haversine_km(*BIG_BEN[1:], lat, lon), rel_tol=1e-9)
    assert con.execute(distance, [1.0, 1.0, None, 0.0]).fetchone()[0] is None
    con.close()


@pytest.mark.parametrize(
    "since,expected",
    [
        ("2026-11-21", ["b.jpg", "e.jpg", "f.jpg", "g.jpg"]),
        ("2026-11-22T06:00:00Z", ["b.jpg", "e.jpg", "f.jpg", "g.jpg"]),  # inclusive
        ("2026-11-22T07:00:00+01:00", ["b.jpg", "e.jpg", "f.jpg", "g.jpg"]),  # = 06:00 UTC
        ("2026-11-22T06:00:01", []),  # naive = UTC
        ("2026-11-01", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]),
        (datetime(2026, 11, 21, tzinfo=timezone.utc), ["b.jpg", "e.jpg", "f.jpg", "g.jpg"]),
    ],
)
def test_since(store, since, expected):
    assert uris(q.query(store, since=since)) == expected


def test_limit_and_columns(store):
    t = q.query(store, limit=2, columns="uri,score")
    assert t.column_names == ["uri", "score"] and uris(t) == ["a.jpg", "b.jpg"]
    t = q.query(store, near=EIFFEL[1:], radius_km=1, columns=["landmark"])  # lat/lon read, then dropped
    assert t.column_names == ["landmark"] and t.column("landmark").to_pylist() == ["Eiffel Tower"] * 2


def test_filters_combine(store):
    t = q.query(store, status="tagged", min_score=0.65, since="2026-11-21")
    assert uris(t) == ["e.jpg", "g.jpg"]


# ---------------------------------------------------------------------------------------------- pushdown


def test_filter_expression_is_a_compute_expression(store):
    cfg = q.QueryConfig(
        tags=store,
        landmark="Big Ben",
        min_score=0.5,
        status="tagged",
        since="2026-11-01",
        near=(51.5, -0.12),
        radius_km=10,
    )
    expr = q.filter_expression(cfg)
    assert isinstance(expr, pc.Expression)
    text = str(expr)
    for col in ("landmark", "score", "status", "tagged_at", "lat", "lon"):
        assert col in text
    assert q.filter_expression(q.QueryConfig(tags=store)) is None
    assert uris(q.query(store, landmark="x' OR '1'='1")) == []  # a value, never SQL


def test_run_hands_the_filter_to_the_scan(store):
    cfg = q.QueryConfig(tags=store, min_score=0.9, landmark="eiffel tower", columns=("uri",))
    where, params = q.filter_sql(cfg)
    assert "score" in where and "landmark" in where and params == ["eiffel tower", 0.9]
    s = tagstore.open_store(store)
    relation, params = q._rows(s, cfg, ["uri"])
    plan = s.con.sql(f"EXPLAIN {q.select_sql(cfg, relation, params)[0]}", params=params).fetchall()[0][1]
    s.close()
    assert "PARQUET_SCAN" in plan and "Filters:" in plan  # the conditions are the scan's, no Filter above it
    assert "lower(landmark) = 'eiffel tower'" in plan and "score >= 0.9" in plan and "─ Filter ─" not in plan
    assert uris(q.query(store, min_score=0.9, columns="uri")) == ["a.jpg"]


def test_pushdown_skips_row_groups_it_rules_out(tmp_path):
    """Corrupt the score column of a row group whose statistics say max score 0.2: a query with
    --min-score 0.5 still works because that row group is never decoded; reading without pushdown fails."""
    root = tmp_path / "tags"
    rows = [
        tag_row(f"p/{i}.jpg", "r1", place=EIFFEL, score=s, tagged_at=T1)
        for i, s in enumerate([0.9, 0.8, 0.95, 0.7, 0.1, 0.2, 0.05, 0.15])
    ]
    f = write_run(
        root, "2026-11-20", "r1", rows, committed_at="2026-11-20T06:30:00+00:00", row_group_size=4, compression="none"
    )
    meta = pq.ParquetFile(f).metadata
    assert meta.num_row_groups == 2
    chunk = meta.row_group(1).column(tagstore.TAGS_SCHEMA.get_field_index("score"))
    assert chunk.statistics.max < 0.5
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    with open(f, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\xff" * chunk.total_compressed_size)

    assert uris(q.query(str(root), min_score=0.5)) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    # the same query filtered after reading would have to decode the bad pages
    with pytest.raises(duckdb.Error):  # the corrupt pages: a Thrift error from DuckDB's Parquet reader
        tagstore.read(str(root)).filter(pc.field("score") >= 0.5)


# ----------------------------------------------------------------------------------------------- formats


def test_table_format_default_columns(store, capsys):
    code, out, err = cli(capsys, "--tags", store, "--landmark", "eiffel tower")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == list(q.TABLE_COLUMNS)
    assert "photos/a.jpg" in lines[2] and "Eiffel Tower" in lines[2] and "0.950" in lines[2]
    assert "48.8584" in lines[2] and "2.2945" in lines[2]
    assert lines[-1] == "(2 photos)"


def test_csv_format_all_columns_tags_as_json(store, capsys):
    import csv

    code, out, _ = cli(capsys, "--tags", store, "--format", "csv", "--status", "tagged", "--limit", "1")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(q.ALL_COLUMNS) and len(rows) == 1
    r = rows[0]
    assert r["uri"] == "photos/a.jpg" and r["score"] == "0.95" and r["error"] == ""
    assert r["tagged_at"] == "2026-11-20T06:00:00+00:00"
    tags = json.loads(r["tags"])
    assert tags[0] == {"name": "Eiffel Tower", "score": 0.95, "lat": 48.8584, "lon": 2.2945}


def test_json_format_lines(store, capsys):
    code, out, _ = cli(capsys, "--tags", store, "--format", "json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["uri"] for r in rows] == [f"photos/{c}.jpg" for c in "abcdefg"]
    a, c = rows[0], rows[2]
    assert set(a) == set(q.ALL_COLUMNS)
    assert a["tagged_at"] == "2026-11-20T06:00:00+00:00" and a["exif_time"] == "2026-07-01T12:00:00"
    assert isinstance(a["tags"], list) and a["tags"][0]["name"] == "Eiffel Tower" and a["tags"][0]["score"] == 0.95
    assert c["status"] == "failed" and c["tags"] is None and c["score"] is None and c["error"]


def test_json_with_columns(store, capsys):
    code, out, _ = cli(capsys, "--tags", store, "--format", "json", "--columns", "uri,tags", "--status", "failed")
    assert code == 0 and [json.loads(x) for x in out.splitlines()] == [{"uri": "photos/c.jpg", "tags": None}]


def test_parquet_to_file_and_to_a_pipe(store, capsysbinary, tmp_path):
    out = tmp_path / "sel.parquet"
    assert q.main(["--tags", store, "--format", "parquet", "--out", str(out), "--min-score", "0.8"]) == 0
    t = pq.read_table(out)
    assert t.schema == tagstore.TAGS_SCHEMA and uris(t) == ["a.jpg", "e.jpg", "g.jpg"]
    capsysbinary.readouterr()
    # stdout is not a terminal here (captured): binary Parquet goes to stdout
    assert q.main(["--tags", store, "--format", "parquet", "--columns", "uri,score"]) == 0
    data = capsysbinary.readouterr().out
    t = pq.read_table(io.BytesIO(data))
    assert t.column_names == ["uri", "score"] and t.num_rows == 7


def test_parquet_refuses_a_terminal(store, monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdout", Tty())
    with pytest.raises(SystemExit) as e:
        q.main(["--tags", store, "--format", "parquet"])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, "--out")


def test_out_file_for_text(store, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    assert q.main(["--tags", store, "--format", "json", "--out", str(out), "--status", "failed"]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["uri"] == "photos/c.jpg"


# ----------------------------------------------------------------------------------------------- summary


def test_summary_table_and_json(store, capsys):
    code, out, _ = cli(capsys, "--tags", store, "--summary")
    assert code == 0
    assert out.startswith("7 photos")
    assert any(line.split() == ["tagged", "5"] for line in out.splitlines())
    assert any(line.split() == ["Eiffel", "Tower", "2"] for line in out.splitlines())

    code, out, _ = cli(capsys, "--tags", store, "--summary", "--format", "json", "--since", "2026-11-21")
    assert code == 0
    s = json.loads(out)
    assert s == {
        "photos": 4,
        "by_status": {"tagged": 3, "no_landmark": 1, "failed": 0},
        "by_landmark": {"Eiffel Tower": 1, "Fiji Reef": 1, "Golden Gate Bridge": 1},
    }


def test_summary_csv(store, capsys):
    code, out, _ = cli(capsys, "--tags", store, "--summary", "--format", "csv", "--status", "failed")
    assert code == 0
    assert out.splitlines() == ["kind,name,photos", "status,tagged,0", "status,no_landmark,0", "status,failed,1"]


def test_summarize_python(store):
    s = q.summarize(q.query(store))
    assert s["photos"] == 7 and s["by_status"] == {"tagged": 5, "no_landmark": 1, "failed": 1}
    assert list(s["by_landmark"].items())[0] == ("Eiffel Tower", 2)
    with pytest.raises(ValueError, match="status"):
        q.summarize(q.query(store, columns="uri"))


# ------------------------------------------------------------------------------------ no committed runs


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_no_committed_runs(tmp_path, capsys, fmt):
    root = tmp_path / "tags"
    write_run(
        root, "2026-11-23", "r9", [tag_row("p/a.jpg", "r9", place=EIFFEL, score=0.9, tagged_at=T3)], committed_at=None
    )
    code, out, err = cli(capsys, "--tags", str(root), "--format", fmt)
    assert code == 0
    assert f"no committed runs under {root}" in err
    if fmt == "table":
        assert out == f"no committed runs under {root}\n"
    else:
        assert out == ""


@pytest.mark.parametrize("extra", [[], ["--summary"], ["--sql", "SELECT * FROM tags"]])
def test_a_location_with_no_table_is_an_error_naming_tags(tmp_path, capsys, extra):
    """A mistyped --tags (no _delta_log there) is exit 2 naming the flag, not an empty answer."""
    missing = tmp_path / "nowhere"
    code, out, err = cli(capsys, "--tags", str(missing), "--format", "json", *extra)
    assert code == 2 and out == ""
    line = assert_error_names(err, "--tags", str(missing), "_delta_log")
    assert "no committed runs" not in line and len(err.splitlines()) == 1


def test_no_match_is_not_no_runs(store, capsys):
    code, out, err = cli(capsys, "--tags", store, "--landmark", "Eiffel Tower", "--min-score", "0.99")
    assert code == 0 and err == "" and out.splitlines()[-1] == "(0 photos)"  # a name there: no hint
    code, out, err = cli(capsys, "--tags", store, "--landmark", "Atlantis")
    assert code == 0 and out.splitlines()[-1] == "(0 photos)" and "no landmark named 'Atlantis'" in err
    code, out, err = cli(capsys, "--tags", store, "--landmark", "Atlantis", "--format", "json")
    assert code == 0 and out == "" and len(err.splitlines()) == 1


def test_an_unknown_landmark_name_gets_a_hint_closest_first(tmp_path, capsys):
    """--landmark is an exact (case-insensitive) name: a short form matches nothing, and the hint names the
    landmarks the table has, the closest first, at most 10; the rows answered do not change."""
    root = tmp_path / "tags"
    names = ["Clerigos Tower", "Big Ben", "Eiffel Tower"] + [f"Place {i:02d}" for i in range(12)]
    rows = [tag_row(f"p/{i}.jpg", "r1", place=(n, 41.0, -8.6), score=0.9, tagged_at=T1) for i, n in enumerate(names)]
    write_run(root, "2026-11-20", "r1", rows, committed_at="2026-11-20T06:30:00+00:00")
    code, out, err = cli(capsys, "--tags", str(root), "--landmark", "clerigos", "--format", "json")
    assert code == 0 and out == ""
    (hint,) = err.splitlines()
    listed = hint.split(": ", 2)[-1].split(", ")
    assert listed[0] == "Clerigos Tower" and len(listed) == 10 and set(listed) <= set(names), hint
    code, out, err = cli(capsys, "--tags", str(root), "--landmark", "clerigos tower", "--format", "json")
    assert code == 0 and err == "" and [json.loads(r)["landmark"] for r in out.splitlines()] == ["Clerigos Tower"]


# ------------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--min-score", "1.5"], "--min-score must be in [0, 1]"),
        (["--min-score", "-0.1"], "--min-score"),
        (["--min-score", "nan"], "--min-score"),
        (["--min-score", "high"], "--min-score"),
        (["--status", "done"], "--status must be one of tagged, no_landmark, failed"),
        (["--near", "48.8,2.3"], "--near requires --radius-km"),
        (["--radius-km", "5"], "--radius-km requires --near"),
        (["--near", "91,2", "--radius-km", "5"], "--near latitude must be in [-90, 90]"),
        (["--near", "48,181", "--radius-km", "5"], "--near longitude must be in [-180, 180]"),
        (["--near", "paris", "--radius-km", "5"], "--near must be LAT,LON"),
        (["--near", "1,2,3", "--radius-km", "5"], "--near must be LAT,LON"),
        (["--near", "48,2", "--radius-km", "0"], "--radius-km must be a number > 0"),
        (["--near", "48,2", "--radius-km", "-3"], "--radius-km"),
        (["--since", "yesterday"], "--since must be a date YYYY-MM-DD"),
        (["--since", "2026-13-01"], "--since"),
        (["--limit", "0"], "--limit must be an integer >= 1"),
        (["--limit", "two"], "--limit"),
        (["--columns", "uri,colour"], "--columns: unknown column(s) 'colour'"),
        (["--columns", ","], "--columns must name at least one column"),
        (["--format", "xml"], "--format"),
        (["--format", "parquet", "--summary", "--out", "x.parquet"], "--summary"),
        (["--summary", "--columns", "uri"], "--columns and --summary"),
        (["--landmark", " "], "--landmark must not be empty"),
        (["--s3-endpoint", "localhost:9000"], "--s3-endpoint must look like http(s)://host[:port]"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(store, capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        q.main(["--tags", store, *argv])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, flag)


def test_table_columns_line_up_for_wide_letters_and_status_takes_any_case(tmp_path, capsys):
    """A name in CJK letters (two terminal columns each) or with combining marks keeps the columns in line; --status
    FAILED is --status failed, as --landmark takes any case."""
    root = tmp_path / "tags"
    names = ["東京タワー.jpg", "e\u0301glise.jpg", "plain.jpg"]
    rows = [tag_row(f"p/{n}", "r1", place=("Tokyo Tower", 35.6, 139.7), score=0.9, tagged_at=T1) for n in names]
    write_run(root, "2026-11-20", "r1", rows, committed_at="2026-11-20T06:30:00+00:00")
    code, out, _ = cli(capsys, "--tags", str(root), "--columns", "uri,status,score")
    assert code == 0
    lines = out.splitlines()[2:5]
    starts = {q._width(line[: line.index("tagged")]) for line in lines}
    assert len(starts) == 1, out  # the status column starts at the same terminal column in every row
    code, upper, _ = cli(capsys, "--tags", str(root), "--status", "TAGGED", "--format", "csv")
    code2, lower, _ = cli(capsys, "--tags", str(root), "--status", "tagged", "--format", "csv")
    assert code == code2 == 0 and upper == lower and len(upper.splitlines()) == 4


def test_control_characters_in_a_key_are_shown_not_sent_to_the_terminal(tmp_path, capsys):
    """An S3 key or file name may hold terminal escapes (retitle, recolour, move the cursor): the table shows them
    as \\xNN; CSV keeps the value as it is (data for programs), JSON escapes it as JSON does."""
    root = tmp_path / "tags"
    uri = "p/\x1b]0;pwned\x07\x1b[31mred\r.jpg"
    write_run(
        root,
        "2026-11-20",
        "r1",
        [tag_row(uri, "r1", score=0.9, tagged_at=T1)],
        committed_at="2026-11-20T06:30:00+00:00",
    )
    code, out, _ = cli(capsys, "--tags", str(root), "--columns", "uri,status")
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\r" not in out, repr(out)
    assert "p/\\x1b]0;pwned\\x07\\x1b[31mred\\x0d.jpg" in out, out
    code, out, _ = cli(capsys, "--tags", str(root), "--columns", "uri", "--format", "json")
    assert code == 0 and json.loads(out)["uri"] == uri and "\x1b" not in out


def test_out_must_be_a_writable_file_and_its_folder_is_made(store, capsys, tmp_path):
    """--out a folder, under a file or on S3: exit 2 naming --out before the table is read; under a missing folder:
    made."""
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for out, words in (
        (tmp_path, "is a folder"),
        (a_file / "t.csv", "is a file, not a folder"),
        ("s3://bucket/t.csv", "give a local file"),  # it made a folder "s3:" here and wrote into it
    ):
        with pytest.raises(SystemExit) as e:
            q.main(["--tags", store, "--format", "csv", "--out", str(out)])
        assert e.value.code == 2
        assert_error_names(capsys.readouterr().err, "--out", words)
    out = tmp_path / "new" / "dir" / "t.csv"
    assert q.main(["--tags", store, "--format", "csv", "--columns", "uri", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "uri"


@pytest.mark.parametrize("tags,flag", [("ftp://host/tags", "--tags"), ("s3://Bad_Bucket/tags", "--tags")])
def test_bad_tags_uri(capsys, tags, flag):
    with pytest.raises(SystemExit) as e:
        q.main(["--tags", tags])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, flag)


def test_tags_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        q.main([])
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, "--tags")


def test_negative_latitude_after_near(store, capsys):
    code, out, _ = cli(
        capsys, "--tags", store, "--near", "-33.86,151.21", "--radius-km", "5", "--format", "csv", "--columns", "uri"
    )
    assert code == 0 and out.splitlines() == ["uri", "photos/d.jpg"]


def test_python_api_validates_before_reading(store, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("read before validation")

    monkeypatch.setattr(tagstore, "connect", boom)
    with pytest.raises(q.QueryError, match=r"--min-score must be in \[0, 1\]"):
        q.query(store, min_score=2)
    with pytest.raises(q.QueryError, match="--near requires --radius-km"):
        q.query(store, near=(1, 2))
    with pytest.raises(q.QueryError, match="--limit"):
        q.query(store, limit=1.5)
    with pytest.raises(TypeError):
        q.query(store, colour="red")
    cfg = q.QueryConfig(tags=store, status="tagged")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.status = "failed"


def test_landmark_command_dispatches_to_query(store, capsys):
    from jobs import cli as landmark_cli

    assert (
        landmark_cli.main(["query", "--tags", store, "--status", "failed", "--format", "csv", "--columns", "uri,error"])
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ["uri,error", "photos/c.jpg,decode: truncated JPEG"]


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # "pkg.module.attr"
        return False


def test_no_ray_import():
    """jobs.query and jobs.report, and every project module they import (transitively), never import Ray."""
    import ast
    import importlib.util

    seen, todo = set(), ["jobs.query", "jobs.report"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = name.rsplit(".", node.level)[0]
                    base = f"{pkg}.{base}" if base else pkg
                mods = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] != "ray", f"{name} imports {m}"
                if m.split(".")[0] in ("jobs", "landmark_core") and _is_module(m):
                    todo.append(m)
    assert "landmark_core.tagstore" in seen and "landmark_core.preprocess" in seen


# -------------------------------------------------------------------------------------------------------- S3


def _upload_store(s3, s3_bucket, store, monkeypatch) -> None:
    """The local store's files under s3://BUCKET/tags, and the server's credentials in the environment."""
    client = s3.client()
    for p in Path(store).rglob("*"):
        if p.is_file():
            client.put_object(Bucket=s3_bucket, Key=f"tags/{p.relative_to(store).as_posix()}", Body=p.read_bytes())
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)


def test_query_on_s3(s3, s3_bucket, store, monkeypatch, capsys):
    """The same store uploaded to a real S3 server, read with --s3-endpoint and credentials from the env."""
    _upload_store(s3, s3_bucket, store, monkeypatch)
    code, out, _ = cli(
        capsys,
        "--tags",
        f"s3://{s3_bucket}/tags",
        "--s3-endpoint",
        s3.endpoint,
        "--format",
        "csv",
        "--columns",
        "uri,status",
        "--min-score",
        "0.3",
    )
    assert code == 0
    assert out.splitlines() == [
        "uri,status",
        "photos/a.jpg,tagged",
        "photos/b.jpg,no_landmark",
        "photos/d.jpg,tagged",
        "photos/e.jpg,tagged",
        "photos/f.jpg,tagged",
        "photos/g.jpg,tagged",
    ]
    # --sql on S3: read through pyarrow, which the read-only connection still reads
    sql = ["--sql", "SELECT count(*) AS n FROM tags", "--format", "csv"]
    code, out, _ = cli(capsys, "--tags", f"s3://{s3_bucket}/tags", "--s3-endpoint", s3.endpoint, *sql)
    assert code == 0 and out.splitlines() == ["n", str(q.run(q.QueryConfig(tags=store)).num_rows)]
    # a prefix of the bucket with no table under it: a bad --tags, as for a local path
    code, out, err = cli(capsys, "--tags", f"s3://{s3_bucket}/no-tags-here", "--s3-endpoint", s3.endpoint)
    assert code == 2 and out == ""
    assert_error_names(err, "--tags", "_delta_log")


def test_sql_on_s3_shows_no_credential(s3, s3_bucket, store, monkeypatch, capsys):
    """--sql may read DuckDB's own settings (duckdb_settings() and the like): harmless, as no secret is ever set in
    the connection; what would look on disk (stored secrets, extensions) is refused, as the connection has no file
    system. The S3 keys stay in the environment and pyarrow's filesystem, never in DuckDB."""
    _upload_store(s3, s3_bucket, store, monkeypatch)
    tags = ["--tags", f"s3://{s3_bucket}/tags", "--s3-endpoint", s3.endpoint]
    refused = "file system operations are disabled by configuration"
    for statement, want_code, want in (
        ("SELECT * FROM duckdb_settings()", 0, None),
        ("SELECT * FROM duckdb_variables()", 0, None),
        ("SELECT * FROM duckdb_extensions()", 2, refused),
        ("SELECT * FROM duckdb_secrets()", 2, refused),
        ("SELECT * FROM which_secret('s3://x/y', 's3')", 2, refused),
        ("SELECT current_setting('s3_secret_access_key')", 2, "httpfs"),  # not a setting without the extension
        ("SELECT count(*) FROM tags", 0, None),
    ):
        code, out, err = cli(capsys, *tags, "--sql", statement, "--format", "json")
        assert code == want_code, (statement, err)
        if want:  # one line naming the flag and DuckDB's reason
            assert err.startswith("landmark query: --sql: ") and want in err and len(err.splitlines()) == 1, err
        for key in (s3.access_key, s3.secret_key):
            assert key not in out + err, statement
        if "duckdb_settings" in statement:  # there to read, and no S3 setting among them (httpfs is not loaded)
            settings = [json.loads(line) for line in out.splitlines()]
            assert len(settings) > 50 and not [r["name"] for r in settings if r["name"].startswith("s3_")]
    assert out.splitlines() == [json.dumps({"count_star()": 7})]  # the table itself reads
