"""`landmark query`: read the tag store (a Delta table) with DuckDB: committed runs only, current rows by default.

Every flag becomes SQL over the view ``tags`` (the latest committed row per photo) or, with ``--history``,
``tags_history`` (every committed row). The filters and the columns go into the scan (DuckDB's own Parquet
reader for a local table, deltalake's pyarrow dataset on S3): row groups whose statistics rule a filter out are
never decoded. The current view (the history minus the superseded rows) does not depend on the filters: an older
run's row that matches never comes back when the newer row for that photo does not. ``--near`` is a bounding box
on lat/lon (pushed down) plus the exact haversine distance. ``--sql`` runs any SELECT over both views;
``--version N`` / ``--as-of TIME`` read the table as it was then.

Python API (Arrow tables)::

    from jobs.query import query, sql, QueryConfig, run, summarize
    table = query("s3://bucket/tags", landmark="eiffel tower", min_score=0.8, s3_endpoint="http://...")
    table = run(QueryConfig(tags="/data/tags", near=(48.86, 2.29), radius_km=5, since="2026-11-01"))
    table = sql("/data/tags", "SELECT landmark, count(*) n FROM tags GROUP BY 1 ORDER BY n DESC")
    summarize(table)  # {"photos": n, "by_status": {...}, "by_landmark": {...}}

No Ray here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs._cli import ConfigError, check_output_file, checks_config, run_cli
from landmark_core import storage, tagstore
from landmark_core.catalog import EARTH_RADIUS_KM

FORMATS = ("table", "csv", "json", "parquet")
TABLE_COLUMNS = ("uri", "status", "landmark", "score", "lat", "lon")
ALL_COLUMNS = tuple(tagstore.TAGS_SCHEMA.names)


QueryError = ConfigError  # a bad query argument; the message starts with the flag it is about


@dataclass(frozen=True)
class QueryConfig:
    tags: str
    landmark: str | None = None
    min_score: float | None = None
    status: str | None = None
    near: tuple[float, float] | None = None  # (lat, lon), degrees
    radius_km: float | None = None
    since: str | date | datetime | None = None  # YYYY-MM-DD or ISO datetime; on tagged_at; naive means UTC
    limit: int | None = None
    columns: tuple[str, ...] | None = None  # None: every column of TAGS_SCHEMA
    format: str = "table"
    out: str | None = None
    summary: bool = False
    s3_endpoint: str | None = None
    sql: str | None = None  # a SELECT over the views tags and tags_history, instead of the filter flags
    history: bool = False  # every committed row (tags_history), not only the current one per photo
    version: int | None = None  # time travel: the table at this version
    as_of: str | datetime | None = None  # time travel: the table as of this time (naive means UTC)

    def check(self) -> None:
        """Validate every field before anything is read; each error names its command-line flag."""
        if not self.tags or not str(self.tags).strip():
            raise QueryError("--tags is required (a local path or s3://bucket/prefix)")
        try:
            storage.check_uri(str(self.tags))
        except storage.StorageError as e:
            raise QueryError(f"--tags: {e}") from None
        self.s3_options().check()  # its message already names --s3-endpoint
        self._check_filters()
        self._check_output()
        self._check_sql()
        self._check_time_travel()

    def _check_filters(self) -> None:
        """--landmark, --min-score, --status, --near/--radius-km, --since."""
        if self.landmark is not None and not str(self.landmark).strip():
            raise QueryError("--landmark must not be empty")
        if self.min_score is not None:
            if not _is_number(self.min_score) or not 0.0 <= float(self.min_score) <= 1.0:
                raise QueryError(f"--min-score must be in [0, 1], got {self.min_score!r}")
        if self.status is not None and self.status not in tagstore.STATUSES:
            raise QueryError(f"--status must be one of {', '.join(tagstore.STATUSES)}, got {self.status!r}")
        if self.near is not None:
            if len(self.near) != 2 or not all(_is_number(v) for v in self.near):
                raise QueryError(f"--near must be LAT,LON in degrees, got {self.near!r}")
            lat, lon = map(float, self.near)
            if not -90.0 <= lat <= 90.0:
                raise QueryError(f"--near latitude must be in [-90, 90], got {lat:g}")
            if not -180.0 <= lon <= 180.0:
                raise QueryError(f"--near longitude must be in [-180, 180], got {lon:g}")
            if self.radius_km is None:
                raise QueryError("--near requires --radius-km")
        if self.radius_km is not None:
            if self.near is None:
                raise QueryError("--radius-km requires --near LAT,LON")
            if not _is_number(self.radius_km) or not float(self.radius_km) > 0:
                raise QueryError(f"--radius-km must be a number > 0, got {self.radius_km!r}")
        if self.since is not None:
            self.since_utc()

    def _check_output(self) -> None:
        """--limit, --columns, --out, --format, --summary."""
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise QueryError(f"--limit must be an integer >= 1, got {self.limit!r}")
        if self.columns is not None:
            if isinstance(self.columns, str) or not self.columns:
                raise QueryError("--columns must name at least one column, e.g. --columns uri,landmark,score")
            unknown = [c for c in self.columns if c not in ALL_COLUMNS]
            if unknown:
                raise QueryError(
                    f"--columns: unknown column(s) {', '.join(map(repr, unknown))}; known: {', '.join(ALL_COLUMNS)}"
                )
        if self.out is not None:
            check_output_file("--out", self.out)
        if self.format not in FORMATS:
            raise QueryError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.summary and self.format == "parquet":
            raise QueryError("--summary prints a small table: use --format table, json or csv")

    def _check_sql(self) -> None:
        """--sql: one SELECT, and none of the flags it replaces."""
        if self.sql is not None:
            if not str(self.sql).strip():
                raise QueryError("--sql must not be empty")
            check_one_select(self.sql)
            used = [
                f
                for f, v in (
                    ("--landmark", self.landmark),
                    ("--min-score", self.min_score),
                    ("--status", self.status),
                    ("--near", self.near),
                    ("--since", self.since),
                    ("--limit", self.limit),
                    ("--summary", self.summary or None),
                    ("--history", self.history or None),
                    ("--columns", self.columns),
                )
                if v is not None
            ]
            if used:
                raise QueryError(
                    f"--sql is a whole query: it does not go with {', '.join(used)} "
                    f"(write them into the SQL; the views are tags and tags_history)"
                )

    def _check_time_travel(self) -> None:
        """--version or --as-of, at most one."""
        if self.version is not None:
            if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
                raise QueryError(f"--version must be an integer >= 0, got {self.version!r}")
            if self.as_of is not None:
                raise QueryError("give at most one of --version and --as-of")
        if self.as_of is not None:
            self.as_of_utc()

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint or None)

    def since_utc(self) -> datetime | None:
        """``since`` as an aware UTC datetime (a bare date means its midnight UTC)."""
        return _utc(self.since, "--since")

    def as_of_utc(self) -> datetime | None:
        return _utc(self.as_of, "--as-of")


def _utc(v, flag: str) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime(v.year, v.month, v.day)
    else:
        s = str(v).strip()
        try:
            dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
        except ValueError:
            raise QueryError(
                f"{flag} must be a date YYYY-MM-DD or an ISO datetime (e.g. 2026-11-24T06:30:00Z), got {v!r}"
            ) from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))


# ----------------------------------------------------------------------------------------------- the scan


def filter_expression(cfg: QueryConfig) -> pc.Expression | None:
    """The filters that run inside the Parquet scan of deltalake's pyarrow dataset (None when there are none):
    files and row groups whose statistics rule them out are never decoded."""
    parts: list[pc.Expression] = []
    if cfg.landmark is not None:
        name = pc.utf8_lower(pa.scalar(str(cfg.landmark).strip(), pa.string())).as_py()
        parts.append(pc.utf8_lower(pc.field("landmark")) == pa.scalar(name, pa.string()))
    if cfg.min_score is not None:
        # score is float32: compare in float32 so --min-score 0.7 keeps a stored 0.7 (0.69999999 as float64)
        parts.append(pc.field("score") >= pa.scalar(float(cfg.min_score), pa.float32()))
    if cfg.status is not None:
        parts.append(pc.field("status") == pa.scalar(cfg.status, pa.string()))
    if cfg.since is not None:
        parts.append(pc.field("tagged_at") >= pa.scalar(cfg.since_utc(), pa.timestamp("us", tz="UTC")))
    if cfg.near is not None:
        parts.append(bbox_expression(*map(float, cfg.near), float(cfg.radius_km)))
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr


def bounding_box(lat: float, lon: float, radius_km: float) -> tuple[float, float, list[tuple[float, float]]]:
    """(lat_min, lat_max, [(lon_min, lon_max), ...]) holding every point within ``radius_km`` of (lat, lon).

    Exact for a sphere: the latitude span is +-radius, the longitude half-width asin(sin(d) / cos(lat)); a
    circle over a pole spans every longitude; one across the antimeridian gives two longitude ranges.
    """
    d = radius_km / EARTH_RADIUS_KM  # angular radius, radians
    pad = 1e-9  # degrees; the exact haversine test runs afterwards anyway
    if d >= math.pi:
        return -90.0, 90.0, [(-180.0, 180.0)]
    lat_min, lat_max = lat - math.degrees(d) - pad, lat + math.degrees(d) + pad
    if lat_max >= 90.0 or lat_min <= -90.0:
        return max(lat_min, -90.0), min(lat_max, 90.0), [(-180.0, 180.0)]
    dlon = math.degrees(math.asin(min(1.0, math.sin(d) / math.cos(math.radians(lat))))) + pad
    if dlon >= 180.0:
        return lat_min, lat_max, [(-180.0, 180.0)]
    lo, hi = lon - dlon, lon + dlon
    if lo < -180.0:
        ranges = [(lo + 360.0, 180.0), (-180.0, hi)]
    elif hi > 180.0:
        ranges = [(lo, 180.0), (-180.0, hi - 360.0)]
    else:
        ranges = [(lo, hi)]
    return lat_min, lat_max, ranges


def bbox_expression(lat: float, lon: float, radius_km: float) -> pc.Expression:
    lat_min, lat_max, ranges = bounding_box(lat, lon, radius_km)
    expr = (pc.field("lat") >= lat_min) & (pc.field("lat") <= lat_max)
    lon_expr = None
    for lo, hi in ranges:
        if (lo, hi) == (-180.0, 180.0):
            part = pc.field("lon").is_valid()
        else:
            part = (pc.field("lon") >= lo) & (pc.field("lon") <= hi)
        lon_expr = part if lon_expr is None else lon_expr | part
    return expr & lon_expr


def _read_columns(cfg: QueryConfig) -> list[str] | None:
    if cfg.columns is None:
        return None
    cols = list(dict.fromkeys(cfg.columns))
    extra = ["uri"] + (["lat", "lon"] if cfg.near is not None else [])
    return cols + [c for c in extra if c not in cols]


def filter_sql(cfg: QueryConfig) -> tuple[str | None, list]:
    """The same filters as filter_expression, as a SQL condition with its parameters (None when there are none),
    for DuckDB's own Parquet reader: it evaluates them inside the scan, skipping row groups their statistics rule
    out, and decodes the other columns only for the rows that pass."""
    parts, params = [], []
    if cfg.landmark is not None:
        parts.append("lower(landmark) = lower(?)")
        params.append(str(cfg.landmark).strip())
    if cfg.min_score is not None:  # float32, as in filter_expression
        parts.append("score >= CAST(? AS FLOAT)")
        params.append(float(cfg.min_score))
    if cfg.status is not None:
        parts.append("status = ?")
        params.append(cfg.status)
    if cfg.since is not None:
        parts.append("tagged_at >= ?")
        params.append(cfg.since_utc())
    if cfg.near is not None:
        lat_min, lat_max, ranges = bounding_box(*map(float, cfg.near), float(cfg.radius_km))
        lon = ["lon IS NOT NULL" if (lo, hi) == (-180.0, 180.0) else "(lon >= ? AND lon <= ?)" for lo, hi in ranges]
        parts.append(f"lat >= ? AND lat <= ? AND ({' OR '.join(lon)})")
        params += [lat_min, lat_max] + [v for r in ranges if r != (-180.0, 180.0) for v in r]
    return (" AND ".join(f"({p})" for p in parts) or None), params


def _rows(store: tagstore.Store, cfg: QueryConfig, columns: list[str] | None) -> tuple[str, list]:
    """The relation holding the rows the filters select: the current ones (or every committed one with
    --history), the filters inside the scan; and its SQL parameters."""
    view = "tags_history" if cfg.history else "tags"
    if store.native:
        where, params = filter_sql(cfg)
        return (view, []) if where is None else (f"(SELECT * FROM {view} WHERE {where})", params)
    expr = filter_expression(cfg)  # DuckDB pushes no float comparison into a pyarrow scan: pyarrow filters
    if expr is None:
        return view, []
    if cfg.history:
        store.con.register("matching", store.dataset.filter(expr))
    else:
        store.con.register("matching", tagstore.current_rows(store, columns, expr))
    return "matching", []


def select_sql(cfg: QueryConfig, relation: str, params: list) -> tuple[str, list]:
    """What ``run`` executes over ``relation`` (see _rows): the exact --near distance, order, columns, limit."""
    cols = list(dict.fromkeys(cfg.columns)) if cfg.columns is not None else None
    sql, params = f"SELECT {tagstore.quoted(cols)} FROM {relation}", list(params)
    if cfg.near is not None:  # the bounding box ran in the scan; this is the exact great-circle distance
        sql += " WHERE haversine_km(?, ?, lat, lon) <= ?"
        params += [float(cfg.near[0]), float(cfg.near[1]), float(cfg.radius_km)]
    sql += " ORDER BY uri" + (", tagged_at, run_id" if cfg.history else "")
    if cfg.limit is not None:
        sql += f" LIMIT {int(cfg.limit)}"
    return sql, params


def _open(cfg: QueryConfig) -> tagstore.Store | None:
    try:
        return tagstore.open_store(cfg.tags, cfg.s3_options(), version=cfg.version, as_of=cfg.as_of_utc())
    except tagstore.NoSuchVersion as e:  # a bad argument: exit 2 naming it, as for the others
        raise QueryError(f"{'--version' if cfg.version is not None else '--as-of'}: {e}") from None


def check_one_select(statement: str) -> None:
    """--sql is one SELECT (or EXPLAIN of one): a query of the tags, not a way to change or write anything."""
    statements = _parsed(statement)
    kinds = [s.type.name for s in statements]
    if len(kinds) != 1 or kinds[0] not in ("SELECT", "EXPLAIN"):
        raise QueryError(f"--sql takes one SELECT over the views tags and tags_history, got {' + '.join(kinds)}")
    if kinds[0] == "EXPLAIN":
        _check_explains_a_select(statements[0].query)


def _parsed(sql: str) -> list:
    """DuckDB's statements of ``sql`` (parsed, not run); one that does not parse is an error naming --sql."""
    import duckdb

    try:
        return duckdb.connect().extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"--sql: {tagstore.error_text(e, 300)}") from None


_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)
_EXPLAIN = re.compile(
    r"EXPLAIN\b\s*(?:\((?P<options>[^()]*)\)\s*)?(?P<analyze>ANALY[SZ]E\b)?(?P<inner>.*)\Z", re.I | re.S
)


def _check_explains_a_select(text: str) -> None:
    """EXPLAIN of one SELECT, the plan only: EXPLAIN ANALYZE runs the statement it explains (a COPY inside it
    would write over the table's own files, the only files the connection may open)."""
    m = _EXPLAIN.match(text, _LEADING_COMMENTS.match(text).end())
    if m is None or m["analyze"] or "analy" in (m["options"] or "").lower():
        raise QueryError("--sql: EXPLAIN ANALYZE runs the statement it explains; EXPLAIN SELECT ... shows the plan")
    inner = [s.type.name for s in _parsed(m["inner"])]
    if inner != ["SELECT"]:
        raise QueryError(
            f"--sql: EXPLAIN takes one SELECT over the views tags and tags_history, got {' + '.join(inner)}"
        )


@checks_config
def run(cfg: QueryConfig) -> pa.Table:
    """The matching current rows (every committed row with ``history``), sorted by uri, then --limit; or the
    result of --sql. An Arrow table (TAGS_SCHEMA types for the store's columns)."""
    store = _open(cfg)
    if store is None:
        return tagstore.empty(list(dict.fromkeys(cfg.columns)) if cfg.columns and cfg.sql is None else None)
    try:
        if cfg.sql is not None:
            store.read_only()
            return arrow_safe(store.con.sql(cfg.sql)).to_arrow_table()
        statement, params = select_sql(cfg, *_rows(store, cfg, _read_columns(cfg)))
        return tagstore.to_schema(store.con.sql(statement, params=params or None).to_arrow_table())
    finally:
        store.close()


# DuckDB types that Arrow does not carry faithfully, or that Parquet cannot store: an INTERVAL (Arrow's
# month_day_nano, which Parquet refuses), a UNION (likewise), a TIMETZ (its offset dropped), a UHUGEINT (wrapped into
# a decimal128: 2**128-1 read back as -1), a BIT (its packed bytes), a BIGNUM (opaque bytes), a VARIANT (its binary
# encoding). --sql results get them as DuckDB's own text (e.g. '1 year 2 months', '0101'), nested ones too.
_AS_TEXT = {"interval", "union", "time with time zone", "uhugeint", "bit", "bignum", "varint", "variant"}


def _safe_type(t) -> str | None:
    """The type to cast a DuckDB column type ``t`` to so that its Arrow form is faithful and Parquet writes it: None
    when ``t`` already is; VARCHAR in the place of each _AS_TEXT type, at any depth of a LIST, ARRAY, STRUCT or MAP."""
    if t.id in _AS_TEXT:
        return "VARCHAR"
    kids = dict(t.children) if t.id in ("list", "array", "map") else None
    if t.id in ("list", "array"):
        child = _safe_type(kids["child"])
        return None if child is None else f"{child}[]" if t.id == "list" else f"{child}[{kids['size']}]"
    if t.id == "map":
        key, value = _safe_type(kids["key"]), _safe_type(kids["value"])
        if key is None and value is None:
            return None
        return f"MAP({key or kids['key']}, {value or kids['value']})"
    if t.id == "struct":
        fields = [(name, ft, _safe_type(ft)) for name, ft in t.children]
        if all(safe is None for _, _, safe in fields):
            return None
        return "STRUCT(" + ", ".join(f"{_ident(n)} {safe or ft}" for n, ft, safe in fields) + ")"
    return None


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def arrow_safe(rel):
    """``rel`` (a DuckDB relation: the result of --sql) with the columns of a type _safe_type changes cast to it;
    the columns' names and order stay (duplicate names too: they are addressed by position)."""
    casts = [_safe_type(t) for t in rel.types]
    if all(c is None for c in casts):
        return rel
    cols = [f"_c{i}" for i in range(len(casts))]
    select = ", ".join(
        f"{c if safe is None else f'CAST({c} AS {safe})'} AS {_ident(name)}"
        for c, safe, name in zip(cols, casts, rel.columns)
    )
    return rel.query("_q", f"SELECT {select} FROM _q AS _t({', '.join(cols)})")


@checks_config
def run_summary(cfg: QueryConfig) -> dict:
    """summarize() of the rows run(cfg) would return, computed by DuckDB (no rows leave the engine)."""
    store = _open(cfg)
    if store is None:
        return summarize(tagstore.empty(["status", "landmark"]))
    try:
        relation, params = _rows(store, cfg, ["uri", "status", "landmark"] + (["lat", "lon"] if cfg.near else []))
        rows = f"SELECT status, landmark FROM {relation}"
        if cfg.near is not None:
            rows += " WHERE haversine_km(?, ?, lat, lon) <= ?"
            params = params + [float(cfg.near[0]), float(cfg.near[1]), float(cfg.radius_km)]
        counts = store.con.sql(
            f"""WITH r AS MATERIALIZED ({rows})
            SELECT 'status' AS kind, status AS name, count(*) AS n FROM r GROUP BY status
            UNION ALL SELECT 'landmark', landmark, count(*) FROM r WHERE landmark IS NOT NULL GROUP BY landmark""",
            params=params or None,
        ).fetchall()
    finally:
        store.close()
    by_status = {s: 0 for s in tagstore.STATUSES}
    by_status.update({(k if k is not None else "(null)"): n for kind, k, n in counts if kind == "status"})
    by_landmark = dict(sorted(((k, n) for kind, k, n in counts if kind == "landmark"), key=lambda kv: (-kv[1], kv[0])))
    return {"photos": sum(by_status.values()), "by_status": by_status, "by_landmark": by_landmark}


def sql(tags: str, statement: str, **options) -> pa.Table:
    """``sql("s3://b/tags", "SELECT ... FROM tags ...", s3_endpoint=..., version=3)``: any SELECT over the views
    ``tags`` and ``tags_history``, as an Arrow table."""
    return run(QueryConfig(tags=tags, sql=statement, **options))


def query(tags: str, **filters) -> pa.Table:
    """``query("s3://b/tags", landmark="Big Ben", min_score=0.5, near=(51.5, -0.12), radius_km=3)``.

    Keyword arguments are the fields of QueryConfig: landmark, min_score, status, near, radius_km, since,
    limit, columns, s3_endpoint, history, version, as_of. Raises QueryError (a ValueError) for a bad argument.
    """
    if "columns" in filters and isinstance(filters["columns"], str):
        filters["columns"] = _split_columns(filters["columns"])
    elif filters.get("columns") is not None:
        filters["columns"] = tuple(filters["columns"])
    if filters.get("near") is not None:
        filters["near"] = tuple(filters["near"])
    return run(QueryConfig(tags=tags, **filters))


def summarize(table: pa.Table) -> dict:
    """{"photos": n, "by_status": {status: n}, "by_landmark": {name: n}} (landmarks most photos first)."""
    missing = [c for c in ("status", "landmark") if c not in table.column_names]
    if missing:
        raise ValueError(f"summarize needs the column(s) {', '.join(missing)}")
    by_status = {s: 0 for s in tagstore.STATUSES}
    for s, n in _counts(table.column("status")):
        by_status[s if s is not None else "(null)"] = n
    by_landmark = dict(
        sorted(((k, n) for k, n in _counts(table.column("landmark")) if k is not None), key=lambda kv: (-kv[1], kv[0]))
    )
    return {"photos": table.num_rows, "by_status": by_status, "by_landmark": by_landmark}


def _counts(col: pa.ChunkedArray) -> list[tuple[str | None, int]]:
    vc = pc.value_counts(col)
    return list(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


# ------------------------------------------------------------------------------------------------ output


def _float32(v):
    return None if v is None or math.isnan(v) else float(str(np.float32(v)))  # shortest float32 repr: 0.9


def _float(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _finite(v):
    return v if v is None or math.isfinite(v) else None


def _plain_value(v):
    """A Python value of no JSON kind as text: bytes as lowercase hex, dates and times ISO 8601, others str()."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if hasattr(v, "isoformat"):  # date, time, datetime, pandas' Timestamp (nanoseconds)
        return v.isoformat()
    return str(v)  # e.g. a UUID


def _converter(t: pa.DataType, json_out: bool):
    """Turns a value of Arrow type ``t``, as ``to_pylist`` gives it, into JSON's kinds (None, bool, int, float, str,
    list, dict). ``json_out``: strict JSON, so NaN and +-inf become null (as JavaScript's JSON.stringify does) and a
    DECIMAL a number where that is exact (scale 0: an integer of any size; up to 15 digits: a float, whose shortest
    repr is the decimal) else its exact text; otherwise (a table or CSV cell) inf stays and a DECIMAL is its exact
    text. NaN is null either way. Nested values are always converted for JSON (a cell shows them as JSON)."""
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type  # what to_pylist gives is the storage's value, or an object _plain_value makes text
    if pa.types.is_dictionary(t):
        return _converter(t.value_type, json_out)
    if pa.types.is_floating(t):
        short = _float32 if pa.types.is_float32(t) else _float
        return (lambda v: _finite(short(v))) if json_out else short
    if pa.types.is_decimal(t):
        if not json_out:
            return lambda v: None if v is None else format(v, "f")
        if t.scale == 0:
            return lambda v: None if v is None else int(v)
        if t.precision <= 15:
            return lambda v: None if v is None else float(v)
        return lambda v: None if v is None else format(v, "f")
    if pa.types.is_map(t):  # to_pylist gives a list of (key, value) pairs: a JSON object, its keys as text
        key, item = _converter(t.key_type, True), _converter(t.item_type, True)
        return lambda v: None if v is None else {_key(key(k)): item(x) for k, x in v}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or _is_list_view(t):
        item = _converter(t.value_type, True)
        return lambda v: None if v is None else [item(x) for x in v]
    if pa.types.is_struct(t):
        fields = {t.field(i).name: _converter(t.field(i).type, True) for i in range(t.num_fields)}
        return lambda v: None if v is None else {k: fields.get(k, _plain_value)(x) for k, x in v.items()}
    return _plain_value


def _is_list_view(t: pa.DataType) -> bool:
    return any(getattr(pa.types, f"is_{kind}", lambda _: False)(t) for kind in ("list_view", "large_list_view"))


def _key(k) -> str:
    return k if isinstance(k, str) else json.dumps(k)


def _jsonable_rows(table: pa.Table, json_out: bool = True) -> list[dict]:
    """Rows as plain JSON values (see _converter): timestamps ISO strings, tags a list of objects, float32 kept
    short, bytes hex; any type an analyst's --sql can give. (Of two columns of one name the last is kept.)"""
    return [dict(zip(table.column_names, row)) for row in _value_rows(table, json_out)]


def _value_rows(table: pa.Table, json_out: bool) -> list[tuple]:
    """Each row's values (see _converter), every column in order: duplicate names too (SELECT 1 a, 2 a)."""
    columns = [list(map(_converter(f.type, json_out), table.column(i).to_pylist())) for i, f in enumerate(table.schema)]
    return list(zip(*columns)) if columns else [()] * table.num_rows


def _cell(name: str, v) -> str:
    if v is None:
        return ""
    if name == "tags" and isinstance(v, list):
        return ", ".join(
            f"{t['name']} {t['score']:.2f}"
            if isinstance(t, dict) and isinstance(t.get("score"), float)
            else str(t.get("name") if isinstance(t, dict) else t)
            for t in v
        )
    if isinstance(v, float) and name == "score":
        return f"{v:.3f}"
    if isinstance(v, float) and name in ("lat", "lon", "exif_lat", "exif_lon"):
        return f"{v:.4f}"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def format_table(table: pa.Table, noun: str = "photo") -> str:
    rows = [[_cell(c, v) for c, v in zip(table.column_names, r)] for r in _value_rows(table, json_out=False)]
    rows = [[_shown(s) for s in row] for row in rows]
    head = table.column_names
    widths = [max([len(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(head)]
    numeric = {
        i
        for i, c in enumerate(head)
        if c in ("score", "lat", "lon", "exif_lat", "exif_lon", "width", "height", "size_bytes")
    }

    def line(cells):
        pads = [" " * (w - _width(c)) for c, w in zip(cells, widths)]
        return "  ".join(p + c if i in numeric else c + p for i, (c, p) in enumerate(zip(cells, pads))).rstrip()

    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(f"({table.num_rows} {noun}{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out) + "\n"


# A file name or an S3 key may hold any character: in the table (for a terminal) a control character is shown as
# an escape, not sent, so a name cannot move the cursor, recolour or retitle the analyst's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _shown(text: str) -> str:
    """One table cell as a terminal shows it: line breaks and tabs as spaces, other control characters as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\n", " ").replace("\t", " "))


def _width(text: str) -> int:
    """Columns a terminal gives ``text``: East Asian wide and full-width letters take two, combining marks none."""
    import unicodedata

    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def format_csv(table: pa.Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    for r in _value_rows(table, json_out=False):  # a list or an object (tags, a LIST, STRUCT, MAP) as JSON text
        w.writerow(["" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v for v in r])
    return buf.getvalue()


def format_json(table: pa.Table) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _jsonable_rows(table))


def format_summary(summary: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(summary) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["kind", "name", "photos"])
        w.writerows(("status", k, n) for k, n in summary["by_status"].items())
        w.writerows(("landmark", k, n) for k, n in summary["by_landmark"].items())
        return buf.getvalue()
    lines = [f"{summary['photos']} photos", "", "status        photos", "------------  ------"]
    lines += [f"{k:<12}  {n:>6}" for k, n in summary["by_status"].items()]
    width = max([8] + [len(k) for k in summary["by_landmark"]])
    lines += ["", f"{'landmark':<{width}}  photos", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {n:>6}" for k, n in summary["by_landmark"].items()] or ["(none)"]
    return "\n".join(lines) + "\n"


def parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------- CLI


def _split_columns(s: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in s.split(",") if c.strip())


def parse_near(s: str) -> tuple[float, float]:
    parts = [p.strip() for p in str(s).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise QueryError(f"--near must be LAT,LON in decimal degrees (e.g. 48.8584,2.2945), got {s!r}") from None
    return lat, lon


HELP = """\
Read the tags (a Delta table) with DuckDB: committed runs only (a run is visible once its commit lands), the
latest committed row per photo (the view `tags`), or every committed row with --history (`tags_history`).
Filters run inside the Parquet scan; an older run's row never resurfaces when the newer row for that photo does
not match. --sql runs your own SELECT over both views; --version / --as-of read the table as it was.

output formats:
  table    aligned text; default columns uri,status,landmark,score,lat,lon
  csv      header + rows, all columns unless --columns; tags flattened to a JSON string
  json     one JSON object per line (JSON Lines); timestamps ISO 8601, tags a list of objects
  parquet  a Parquet file: written to --out FILE, or to stdout when stdout is redirected/piped (never to a
           terminal)
  Rows are sorted by uri. --out FILE writes any format to FILE instead of stdout.

examples:
  landmark query --tags s3://photos/tags --landmark "eiffel tower" --min-score 0.8
  landmark query --tags ./tags --near=48.8584,2.2945 --radius-km 2 --format json
  landmark query --tags ./tags --status failed --columns uri,error
  landmark query --tags ./tags --since 2026-11-01 --summary
  landmark query --tags ./tags --format parquet --out tagged.parquet
  landmark query --tags ./tags --sql "SELECT landmark, count(*) AS n FROM tags GROUP BY 1 ORDER BY n DESC"
  landmark query --tags ./tags --history --columns uri,status,run_id,tagged_at --format csv
  landmark query --tags ./tags --as-of 2026-11-20T07:00:00Z --summary      # or --version 3

S3 credentials come only from the standard AWS environment (env vars, ~/.aws, instance profile).
A tags location with no committed run prints a message on stderr and exits 0 (empty json/csv output); one with
no table at all (no _delta_log) is an error naming --tags (exit 2). A --landmark that is no landmark of the table
prints the table's closest names on stderr (the answer stays empty).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="landmark query", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tags", required=True, metavar="URI", help="tag store root: a local path or s3://bucket/prefix")
    f = p.add_argument_group("filters (all combined with AND)")
    f.add_argument("--landmark", metavar="NAME", help="top-1 landmark name, case-insensitive exact match")
    f.add_argument("--min-score", type=float, metavar="X", help="top-1 score >= X, X in [0, 1]")
    f.add_argument("--status", metavar="S", help=f"one of {', '.join(tagstore.STATUSES)}")
    f.add_argument(
        "--near",
        metavar="LAT,LON",
        help="the tagged landmark's location within --radius-km of LAT,LON (degrees), e.g. --near -33.86,151.21",
    )
    f.add_argument("--radius-km", type=float, metavar="R", help="radius for --near, km > 0")
    f.add_argument(
        "--since",
        metavar="DATE",
        help="tagged at or after DATE: YYYY-MM-DD (midnight UTC) or an ISO datetime (naive = UTC)",
    )
    f.add_argument("--limit", type=int, metavar="N", help="at most N rows (after sorting by uri)")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=FORMATS, default="table", help="table (default), csv, json, parquet")
    o.add_argument("--columns", metavar="a,b,c", help=f"columns to output; known: {', '.join(ALL_COLUMNS)}")
    o.add_argument(
        "--summary",
        action="store_true",
        help="instead of rows: photos per status and per landmark (a JSON object with --format json)",
    )
    o.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout (required for parquet to a TTY)")
    t = p.add_argument_group("SQL, history and time travel")
    t.add_argument(
        "--sql",
        metavar="SELECT",
        help="one SELECT (or EXPLAIN) over the views tags (current) and tags_history (every committed row), "
        "instead of the filter flags; it reads the table and no other file",
    )
    t.add_argument("--history", action="store_true", help="every committed row, not only the current one per photo")
    t.add_argument("--version", type=int, metavar="N", help="read the table at version N (landmark store history)")
    t.add_argument("--as-of", metavar="TIME", help="read the table as it was at TIME (ISO datetime, naive = UTC)")
    p.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    return p


def _fix_negative_near(argv: list[str]) -> list[str]:
    """Let `--near -33.8,151.2` work: argparse would take the negative value for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--near" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"--near={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def config_from_args(args: argparse.Namespace) -> QueryConfig:
    columns = _split_columns(args.columns) if args.columns is not None else None
    if columns is None and args.format == "table" and not args.summary and args.sql is None:
        columns = TABLE_COLUMNS
    if args.summary:
        columns = ("uri", "status", "landmark")
    return QueryConfig(
        tags=args.tags,
        landmark=args.landmark,
        min_score=args.min_score,
        status=args.status.lower() if args.status else args.status,  # any case, as --landmark
        near=parse_near(args.near) if args.near is not None else None,
        radius_km=args.radius_km,
        since=args.since,
        limit=args.limit,
        columns=columns,
        format=args.format,
        out=args.out,
        summary=args.summary,
        s3_endpoint=args.s3_endpoint,
        sql=args.sql,
        history=args.history,
        version=args.version,
        as_of=args.as_of,
    )


def cli_config(args: argparse.Namespace) -> QueryConfig:
    """The config of a command line, with the checks only the command line needs."""
    if args.columns is not None and args.summary:
        raise QueryError("--columns and --summary do not go together (the summary has its own columns)")
    if args.format == "parquet" and args.out is None and sys.stdout.isatty():
        raise QueryError("--format parquet writes binary: give --out FILE or redirect stdout")
    return config_from_args(args)


def main(argv: list[str] | None = None) -> int:
    argv = _fix_negative_near(list(sys.argv[1:] if argv is None else argv))
    return run_cli(build_parser(), argv, config=cli_config, run=answer)


def answer(cfg: QueryConfig) -> int:
    """Runs the query of a command line and prints it; returns the exit code."""
    try:
        if cfg.summary:
            summary = run_summary.after_check(cfg)  # the runner checked cfg
            found = summary["photos"] > 0
        else:
            table = run.after_check(cfg)
            found = table.num_rows > 0
        no_runs = not found and _no_runs(cfg)
        if not found and not no_runs and cfg.landmark is not None:
            _hint_landmark_names(cfg)
    except (OSError, storage.StorageError, tagstore.StoreError, *duckdb_errors()) as e:
        if _old_files_vacuumed(cfg, e):
            then = f"version {cfg.version}" if cfg.version is not None else f"the table as of {cfg.as_of}"
            print(
                f"landmark query: cannot read {then} of {cfg.tags}: its files were deleted by `landmark store "
                f"vacuum` (it keeps the files of the last --retain-hours); newer versions: landmark store history",
                file=sys.stderr,
            )
            return 1
        if why := storage.unreachable_reason("--tags", cfg.tags, cfg.s3_options()):
            print(f"landmark query: error: {why}", file=sys.stderr)  # the store's own error is a page of XML
            return 2
        if not isinstance(e, duckdb_errors()):
            print(f"landmark query: cannot read {cfg.tags}: {storage.redact(str(e))}", file=sys.stderr)
            return 1
        where = "--sql" if cfg.sql is not None else f"cannot read {cfg.tags}"
        print(f"landmark query: {where}: {tagstore.error_text(e, 500)}", file=sys.stderr)
        return 2 if cfg.sql is not None and not isinstance(e, OSError) else 1

    if no_runs:
        print(
            f"landmark query: no committed runs under {cfg.tags} (a run becomes visible once its commit lands)",
            file=sys.stderr,
        )
        if cfg.format == "table":
            _emit(f"no committed runs under {cfg.tags}\n", cfg)
        elif cfg.format == "parquet":
            _emit(parquet_bytes(table), cfg)  # an empty but valid file, so pipelines do not break
        else:
            _emit("", cfg)
        return 0

    if cfg.summary:
        _emit(format_summary(summary, cfg.format), cfg)
    elif cfg.format == "table":
        _emit(format_table(table, "row" if cfg.sql is not None else "photo"), cfg)
    elif cfg.format == "csv":
        _emit(format_csv(table), cfg)
    elif cfg.format == "json":
        _emit(format_json(table), cfg)
    else:
        _emit(parquet_bytes(table), cfg)
    return 0


# How a data file of the snapshot that is gone reads: DuckDB's own reader (a local table), pyarrow's scan (S3, or a
# local path DuckDB cannot take), which DuckDB reports inside its own error ("reading the stream registered as
# 'tags_history' failed: IOError: Path does not exist '...'. Detail: [errno 2] No such file or directory").
_MISSING_FILE = ("No files found that match", "Path does not exist", "No such file or directory")


def _old_files_vacuumed(cfg: QueryConfig, e: Exception) -> bool:
    """Time travel to a version whose files a vacuum deleted: DuckDB (local) or pyarrow (S3) finds a file missing."""
    if cfg.version is None and cfg.as_of is None:
        return False
    return isinstance(e, FileNotFoundError) or any(m in str(e) for m in _MISSING_FILE)


def _no_runs(cfg: QueryConfig) -> bool:
    """For an empty answer: whether the table has no committed run; where there is no table at all (a mistyped
    --tags), a ConfigError naming it. Asked only when nothing matched, so a query that finds rows pays nothing."""
    from jobs.store import require_table

    require_table(cfg.tags, cfg.s3_options(), "--tags")
    return not tagstore.runs(cfg.tags, cfg.s3_options())


def _hint_landmark_names(cfg: QueryConfig) -> None:
    """--landmark is an exact name ("Clerigos Tower", not "clerigos"): when it is no landmark of the table, one
    stderr line with up to 10 of the table's names, the closest first. The answer itself stays empty."""
    import difflib

    view = "tags_history" if cfg.history else "tags"
    store = _open(cfg)
    try:
        names = [
            n for (n,) in store.con.sql(f"SELECT DISTINCT landmark FROM {view} WHERE landmark IS NOT NULL").fetchall()
        ]
    finally:
        store.close()
    wanted = str(cfg.landmark).strip().lower()
    by_lower = {n.lower(): n for n in names}
    if not names or wanted in by_lower:
        return  # the name is there: the other filters ruled its rows out
    closest = difflib.get_close_matches(wanted, sorted(by_lower), n=10, cutoff=0)
    print(
        f"landmark query: no landmark named {cfg.landmark!r} in {cfg.tags}; names there, the closest first: "
        + ", ".join(by_lower[n] for n in closest),
        file=sys.stderr,
    )


def duckdb_errors() -> tuple[type, ...]:
    import duckdb

    return (duckdb.Error,)


def _emit(data: str | bytes, cfg: QueryConfig) -> None:
    if cfg.out is not None:
        mode, kw = ("wb", {}) if isinstance(data, bytes) else ("w", {"encoding": "utf-8", "newline": ""})
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.out, mode, **kw) as fh:
            fh.write(data)
        return
    if isinstance(data, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(data)
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
