"""The tag store: a Delta Lake table (delta-rs, no JVM), queried with DuckDB: a local table through DuckDB's own
Parquet reader on the snapshot's file list, one on S3 through deltalake's pyarrow dataset.

    <root>/_delta_log/*.json                 the table's log: one commit per tag run, the run's summary (counts,
                                             model_id, config, timings) in the commit's metadata under RUN_KEY
    <root>/runs/<dt>/<run_id>/*.parquet      the run's data files (TAGS_SCHEMA), written by Ray Data
    <root>/_superseded/                      a second Delta table: keys of the rows a newer row replaced

A run is one atomic commit: its files are invisible until the commit that adds them lands, so a run killed
before its commit leaves nothing visible (``landmark store vacuum`` deletes its files). Runs are appended, never
rewritten: ``tags_history`` is every committed row; ``tags`` (the current view) is the latest row per uri, by
(tagged_at, run_id) -- every row of a run has the run's tagged_at -- read as the history minus the superseded
keys. Concurrent runs are safe: Delta's optimistic concurrency (blind appends never conflict; the commit retries
on the next version), each commit file written with put-if-absent (S3 If-None-Match, a no-replace rename on
local disks).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage
from .catalog import EARTH_RADIUS_KM
from .status import STATUSES  # noqa: F401  (the values of the status column)

RUN_KEY = "landmark.run"  # commit metadata key holding a tag run's summary

TAG_STRUCT = pa.struct([("name", pa.string()), ("score", pa.float32()), ("lat", pa.float64()), ("lon", pa.float64())])
TAGS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("etag", pa.string()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("exif_lat", pa.float64()),
        ("exif_lon", pa.float64()),
        ("exif_time", pa.timestamp("us")),
        ("landmark", pa.string()),
        ("score", pa.float32()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("tags", pa.list_(TAG_STRUCT)),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
        ("tagged_at", pa.timestamp("us", tz="UTC")),
    ]
)
# Per-file min/max in the commit (file skipping for readers): flat columns whose Parquet statistics are exact.
_STATS_COLUMNS = (
    "uri",
    "size_bytes",
    "status",
    "width",
    "height",
    "landmark",
    "score",
    "lat",
    "lon",
    "model_id",
    "run_id",
    "tagged_at",
)

# The current view is the history minus the superseded rows: those of a uri that has a newer committed row. They
# are few (a photo is re-tagged only when it failed or changed), so a small Delta table beside the history keeps
# their keys, SUPERSEDED_DIR, brought up to date after each run's commit (refresh_superseded). Its app transaction
# SUPERSEDED_APP says which history version it is complete for; commits after that one are caught up by the reader
# from the log (only the uris those commits added can have new superseded rows). The history stays the source of
# truth: a missing or unusable superseded table only costs the full computation.
SUPERSEDED_DIR = "_superseded"
SUPERSEDED_APP = "landmark.superseded"
KEYS = ["uri", "tagged_at", "run_id"]  # what decides the current row of a uri (unique per committed row)
KEYS_SCHEMA = pa.schema([TAGS_SCHEMA.field(k) for k in KEYS])

# The keys of the rows in {rows} that are not their uri's newest (by tagged_at, then run_id).
SUPERSEDED_SQL = """
SELECT uri, tagged_at, run_id FROM (
    SELECT uri, tagged_at, run_id, row_number() OVER (PARTITION BY uri ORDER BY tagged_at DESC, run_id DESC) AS _n
    FROM {rows})
WHERE _n > 1
"""


def current_sql(rows: str) -> str:
    """The current rows among the committed rows ``rows`` (a relation): those whose key is not superseded. An
    ANTI JOIN: DuckDB pushes filters on its result into the scan of ``rows``."""
    return (
        f"SELECT r.* FROM {rows} r ANTI JOIN _superseded s "
        "ON s.uri = r.uri AND s.tagged_at = r.tagged_at AND s.run_id = r.run_id"
    )


def newest_sql(rows: str) -> str:
    """The current rows among ``rows``, a relation holding EVERY committed row of each of its uris: their newest per
    uri (memory bounded by ``rows``; for a few uris cheaper than reading the superseded table)."""
    return f"SELECT * FROM {rows} QUALIFY row_number() OVER (PARTITION BY uri ORDER BY tagged_at DESC, run_id DESC) = 1"


def current_rows(store: "Store", columns: list[str] | None, filter: pc.Expression) -> pa.Table:
    """``columns`` of the current rows that match the pyarrow ``filter`` (inside the dataset's scan)."""
    cols = list(columns or TAGS_SCHEMA.names)
    store.con.register("_cand", store.dataset.to_table(columns=list(dict.fromkeys(cols + KEYS)), filter=filter))
    try:
        return to_schema(store.con.sql(f"SELECT {quoted(cols)} FROM ({current_sql('_cand')})").to_arrow_table())
    finally:
        store.con.unregister("_cand")


def quoted(columns: list[str] | None, table: str | None = None) -> str:
    """Column names quoted for SQL (they come from TAGS_SCHEMA, checked by the callers); * for all."""
    prefix = f"{table}." if table else ""
    return ", ".join(f'{prefix}"{c}"' for c in columns) if columns else f"{prefix}*"


# Great-circle distance in km (catalog.haversine_km's formula and radius), NULL if a point is NULL.
MACROS = f"""
CREATE MACRO _haversine_a(lat1, lon1, lat2, lon2) AS
    pow(sin(radians(lat2 - lat1) / 2), 2)
    + cos(radians(lat1)) * cos(radians(lat2)) * pow(sin(radians(lon2 - lon1) / 2), 2);
CREATE MACRO haversine_km(lat1, lon1, lat2, lon2) AS
    2 * {EARTH_RADIUS_KM} * asin(sqrt(CASE WHEN _haversine_a(lat1, lon1, lat2, lon2) > 1 THEN 1.0
                                   ELSE _haversine_a(lat1, lon1, lat2, lon2) END));
"""


class StoreError(RuntimeError):
    """The tag store cannot be read or written; the message names the location."""


class NoSuchVersion(StoreError):
    """A --version or --as-of the table does not have: the caller's argument, not the store, is wrong."""


def error_text(e: BaseException, limit: int = 300) -> str:
    """One line for a delta-rs/DuckDB error (theirs span lines and carry terminal colours), secrets redacted."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    text = "; ".join(p.strip(" ↳") for p in text.splitlines() if p.strip(" ↳"))
    return storage.redact(text)[:limit]


# ---------------------------------------------------------------- locations


def table_uri(root: str) -> str:
    return root.rstrip("/") if storage.is_s3(root) else str(Path(root).resolve())


def storage_options(root: str, opts: storage.S3Options = storage.S3Options()) -> dict[str, str] | None:
    """delta-rs options for ``root``: credentials stay in the standard AWS environment (delta-rs reads it too).

    Commits on S3 are written with put-if-absent (If-None-Match: *; delta-rs's default, said here explicitly):
    concurrent writers are safe on any store that honours it (AWS S3, SeaweedFS), without a DynamoDB lock and
    without AWS_S3_ALLOW_UNSAFE_RENAME.
    """
    if not storage.is_s3(root):
        return None
    so = {
        "AWS_REGION": opts.region or storage._region(),
        "AWS_CONDITIONAL_PUT": "etag",
        "connect_timeout": f"{int(opts.connect_timeout)}s",
        "timeout": f"{int(opts.read_timeout)}s",
    }
    if opts.endpoint:
        so["AWS_ENDPOINT_URL"] = opts.endpoint
        so["AWS_ALLOW_HTTP"] = "true" if urlparse(opts.endpoint).scheme == "http" else "false"
    return so


def run_files_dir(root_path: str, dt: str, run_id: str) -> str:
    """Where a run's data files go, inside the table (path within the run's pyarrow filesystem)."""
    return f"{root_path.rstrip('/')}/runs/{dt}/{run_id}"


# ---------------------------------------------------------------- writing


def is_table(root: str, opts: storage.S3Options = storage.S3Options()) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(root), storage_options=storage_options(root, opts))


def ensure_table(root: str, opts: storage.S3Options = storage.S3Options()) -> None:
    """Create the empty table at ``root`` if there is none (two runs creating it at once: one wins, both go on).

    No commit retries: delta-rs would retry a creation that lost the race for version 0 as version 1, a second
    CREATE TABLE with another table id (seen in 12 of 20 two-process races); without them the loser fails and
    finds the winner's table."""
    from deltalake import CommitProperties, DeltaTable

    if is_table(root, opts):
        return
    try:
        DeltaTable.create(
            table_uri(root),
            schema=TAGS_SCHEMA,
            mode="ignore",
            name="landmark_tags",
            description="landmark-tagger tags: one commit per tag run",
            storage_options=storage_options(root, opts),
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except Exception:
        if not is_table(root, opts):
            raise


def commit_run(
    root: str,
    fs,
    files: list[str],
    summary: dict,
    opts: storage.S3Options = storage.S3Options(),
    *,
    refresh: bool = True,
) -> int:
    """Add ``files`` (paths in ``fs`` under the table) to the table in ONE commit carrying ``summary``, then bring
    the superseded table up to date (``refresh``; best effort: the run is committed either way, and readers
    catch up from the log).

    Returns the committed version. Concurrent commits are retried by delta-rs on the next version (blind appends
    do not conflict)."""
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties

    base = _fs_root(root)
    actions = [_add_action(fs, f, base) for f in files]
    dt = DeltaTable(table_uri(root), storage_options=storage_options(root, opts))
    read_version = dt.version()
    meta = json.loads(json.dumps(summary, default=str))
    dt.create_write_transaction(
        actions,
        mode="append",
        schema=TAGS_SCHEMA,
        commit_properties=CommitProperties(custom_metadata={RUN_KEY: meta}, max_commit_retries=50),
    )
    version = _version_of_run(root, opts, read_version, summary["run_id"])
    if refresh:
        try:
            refresh_superseded(root, opts)
        except Exception as e:
            print(
                f"[tagstore] {root}: the superseded table was not brought up to date ({error_text(e)}); readers "
                "catch up from the log, the next run or `landmark store optimize` brings it up to date",
                file=sys.stderr,
            )
    return version


def append_run(
    root: str,
    table: pa.Table,
    summary: dict,
    *,
    dt: str,
    opts: storage.S3Options = storage.S3Options(),
    commit: bool = True,
    refresh: bool = True,
    rows_per_file: int = 1_000_000,
    **parquet_kw,
) -> int | None:
    """Write ``table`` (TAGS_SCHEMA rows of one run) as the run's data files and commit them as one run; without
    ``commit`` the files are written and left uncommitted (invisible), as a killed run leaves them; without
    ``refresh`` the run commits but leaves the superseded table behind, as a run killed right after its commit."""
    fs, path = storage.arrow_fs(root, opts)
    ensure_table(root, opts)
    d = run_files_dir(path, dt, summary["run_id"])
    if not storage.is_s3(root):  # on S3 a "directory" would be an empty marker object
        fs.create_dir(d, recursive=True)
    files, parquet_kw = [], {"compression": "zstd", **parquet_kw}
    for i in range(0, max(table.num_rows, 1), rows_per_file):
        files.append(f"{d}/part-{len(files):05d}.parquet")
        pq.write_table(table.slice(i, rows_per_file).cast(TAGS_SCHEMA), files[-1], filesystem=fs, **parquet_kw)
    return commit_run(root, fs, files, summary, opts, refresh=refresh) if commit else None


def _version_of_run(root: str, opts: storage.S3Options, after: int, run_id: str) -> int:
    """The version our commit got: the first log entry after the version the commit was based on that carries
    this run. (DeltaTable.history() numbers its entries from a snapshot, which is off by the commits that land
    while it reads; the log's own file names are not.)"""
    fs, path = storage.arrow_fs(root, opts)
    for v in range(after + 1, after + 10_000):
        try:
            with fs.open_input_stream(f"{path}/_delta_log/{v:020d}.json") as f:
                entries = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        except (FileNotFoundError, OSError):
            break
        info = next((e["commitInfo"] for e in entries if "commitInfo" in e), {})
        if (info.get(RUN_KEY) or {}).get("run_id") == run_id:
            return v
    raise StoreError(f"{root}: the commit of run {run_id} is not in the log after version {after}")


def _fs_root(root: str) -> str:
    return storage.arrow_fs(root)[1].rstrip("/")


def _add_action(fs, path: str, base: str):
    from deltalake.transaction import AddAction

    info = fs.get_file_info(path)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    rel = path[len(base) :].lstrip("/")
    mtime = info.mtime.timestamp() if info.mtime is not None else datetime.now(timezone.utc).timestamp()
    return AddAction(
        path=rel,
        size=int(info.size),
        partition_values={},
        modification_time=int(mtime * 1000),
        data_change=True,
        stats=json.dumps(file_stats(meta)),
    )


def file_stats(meta: pq.FileMetaData) -> dict:
    """Delta per-file statistics from a Parquet footer: numRecords, and exact min/max/nullCount where known."""
    stats: dict = {"numRecords": meta.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    for col in _STATS_COLUMNS:
        if col not in names:
            continue
        i, lo, hi, nulls = names.index(col), None, None, 0
        for rg in range(meta.num_row_groups):
            s = meta.row_group(rg).column(i).statistics
            if s is None or s.null_count is None:
                nulls = None
                break
            nulls += s.null_count
            if s.has_min_max:
                lo = s.min if lo is None else min(lo, s.min)
                hi = s.max if hi is None else max(hi, s.max)
            elif s.null_count != meta.row_group(rg).num_rows:
                lo = hi = None  # a row group with values but no min/max: no bounds for the file
                break
        if nulls is not None:
            stats["nullCount"][col] = nulls
        if lo is None or hi is None or (isinstance(lo, float) and (math.isnan(lo) or math.isnan(hi))):
            continue
        if isinstance(lo, datetime):  # Delta stats keep milliseconds: round the max up so it stays an upper bound
            lo, hi = _ms_iso(lo, up=False), _ms_iso(hi, up=True)
        stats["minValues"][col], stats["maxValues"][col] = lo, hi
    return stats


def _ms_iso(t: datetime, *, up: bool) -> str:
    t = t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)
    if up and t.microsecond % 1000:
        t += timedelta(microseconds=1000 - t.microsecond % 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------- reading


def open_table(
    root: str,
    opts: storage.S3Options = storage.S3Options(),
    *,
    version: int | None = None,
    as_of: datetime | str | None = None,
):
    """The DeltaTable at ``root`` (at ``version`` or as of a time), or None when there is no table yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(root), storage_options=storage_options(root, opts))
    except TableNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{root}: {error_text(e)}") from None
    latest = dt.version()
    try:
        if version is not None:
            dt.load_as_version(int(version))
        elif as_of is not None:
            dt.load_as_version(as_of)
    except Exception as e:
        said = f"version {version}" if version is not None else f"version as of {as_of}"
        raise NoSuchVersion(
            f"{root}: no {said}: its versions are 0 to {latest} (landmark store history; {error_text(e, 120)})"
        ) from None
    if as_of is not None and dt.version() == 0 and (created := _commit_time(root, opts, 0)) > _as_utc(as_of):
        # delta-rs gives the first version for any earlier time: the table did not exist then
        raise NoSuchVersion(f"{root}: no version as of {as_of}: the table was created {created.isoformat()}")
    return dt


def _commit_time(root: str, opts: storage.S3Options, version: int) -> datetime:
    """When ``version`` was committed (its log entry's commitInfo timestamp)."""
    fs, path = storage.arrow_fs(root, opts)
    with fs.open_input_stream(f"{path}/_delta_log/{version:020d}.json") as f:
        entries = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    ms = next(e["commitInfo"]["timestamp"] for e in entries if "commitInfo" in e)
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _as_utc(t: datetime | str) -> datetime:
    t = datetime.fromisoformat(t) if isinstance(t, str) else t
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def dataset(dt, root: str, opts: storage.S3Options = storage.S3Options()):
    """The table's committed files as a pyarrow dataset in TAGS_SCHEMA (per-file stats as fragment guarantees),
    read with pyarrow's own filesystems (deltalake's default wraps its Rust store in a Python filesystem: every
    read crosses into Python), with our endpoint, timeouts and retries on S3."""
    import pyarrow.fs as pafs

    fs, path = storage.arrow_fs(root, opts)
    return dt.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(path, fs), schema=TAGS_SCHEMA)


class Store:
    """One snapshot of the table: a DuckDB connection with the views ``tags_history`` (every committed row),
    ``_superseded`` (keys of the rows a newer row of their uri replaced) and ``tags`` (current: the history minus
    those), and the macro ``haversine_km(lat1, lon1, lat2, lon2)``. A local table is read by DuckDB's own Parquet
    reader from the snapshot's file list (``native``); one on S3 through the pyarrow dataset (``dataset``).

    ``superseded_table``: the superseded table's snapshot, opened BEFORE ``dt`` (so every history version its
    commits were computed from is in ``dt``), or None. ``superseded``: "table" (that table, caught up from the log
    where it is behind) or "full" (computed from the whole history: no usable table)."""

    def __init__(self, dt, root: str, opts: storage.S3Options, superseded_table=None):
        import duckdb

        self.table, self.root, self.opts = dt, root, opts
        self.version = dt.version()
        self.native = not storage.is_s3(root)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self._files: list[str] = []  # the local Parquet files the views read (read_only allows only these)
        # in path order, runs/<day>/<run_id>: oldest first. Photo keys mostly sort like their upload day, so
        # an ORDER BY uri LIMIT's running threshold (a filter DuckDB pushes into the scan) then skips later files
        self._register("tags_history", sorted(dt.file_uris()), lambda: self.dataset)
        self.superseded, self.covered = self._superseded_view(superseded_table)
        self.con.execute(f"CREATE VIEW tags AS {current_sql('tags_history')}")
        self.con.execute(MACROS)

    def read_only(self) -> None:
        """From here on, SQL on this connection reads this snapshot and nothing else: no other file (read_csv,
        COPY ... TO, ATTACH, INSTALL), and no setting can undo it. For SQL that is the user's text (--sql)."""
        if self._files:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in self._files)
            self.con.execute(f"SET allowed_paths = [{listed}]")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    @functools.cached_property
    def dataset(self):
        """The snapshot as a pyarrow dataset (made when first used: the local path reads without it)."""
        return dataset(self.table, self.root, self.opts)

    def _register(self, name: str, files: list[str], arrow_data) -> None:
        """``name`` as a view over ``files`` (DuckDB's reader, local) or ``arrow_data()`` (S3, or no files).

        The log's file URIs are percent-encoded (a table under "my tags/" lists "my%20tags/..."): DuckDB wants the
        paths themselves, and reads a path as a glob pattern, so a path with glob characters goes through pyarrow."""
        paths = [unquote(f.removeprefix("file://")) for f in files] if self.native else []
        if paths and not any(c in p for p in paths for c in "*?[{"):
            self.con.read_parquet(paths).create_view(name)
            self._files += paths
        else:
            self.con.register(name, arrow_data())

    def _superseded_view(self, sdt) -> tuple[str, int | None]:
        covered = None if sdt is None else sdt.transaction_version(SUPERSEDED_APP)
        added, self.rows_removed = None, False
        if covered is not None and covered <= self.version:
            try:
                added = added_files(self.root, self.opts, covered, self.version)
            except RowsRemoved:
                self.rows_removed = True
        if added is None:  # no usable table: every uri's rows decide
            self.con.execute(f"CREATE VIEW _superseded AS {SUPERSEDED_SQL.format(rows='tags_history')}")
            return "full", None
        self._register(
            "_superseded_table", sdt.file_uris(), lambda: dataset_of(sdt, superseded_uri(self.root), self.opts)
        )
        self._catch_up(added)
        self.con.execute(
            "CREATE VIEW _superseded AS SELECT uri, tagged_at, run_id FROM _superseded_table "
            "UNION ALL SELECT * FROM _superseded_new"
        )
        return "table", covered

    def _catch_up(self, added: list[str]) -> None:
        """The view ``_superseded_new``: the keys superseded among the rows of the uris that ``added`` (the files
        of the commits the superseded table does not cover yet) hold."""
        if not added:
            self.con.register("_superseded_new", KEYS_SCHEMA.empty_table())
            return
        fs, base = storage.arrow_fs(self.root, self.opts)
        new_uris = pq.read_table([f"{base}/{f}" for f in added], columns=["uri"], filesystem=fs)
        self.con.register("_new_uris", new_uris)
        if self.native:  # DuckDB's reader takes the semi join into the scan (a dynamic filter on uri)
            rows = "(SELECT uri, tagged_at, run_id FROM tags_history WHERE uri IN (SELECT uri FROM _new_uris))"
        else:
            isin = pc.field("uri").isin(new_uris.column("uri").combine_chunks())
            self.con.register("_new_keys", self.dataset.to_table(columns=KEYS, filter=isin))
            rows = "_new_keys"
        self.con.execute(f"CREATE VIEW _superseded_new AS {SUPERSEDED_SQL.format(rows=rows)}")

    def close(self) -> None:
        self.con.close()


def superseded_uri(root: str) -> str:
    return f"{table_uri(root)}/{SUPERSEDED_DIR}"


def open_superseded(root: str, opts: storage.S3Options = storage.S3Options()):
    """The superseded table beside the history (None if there is none yet, or it cannot be read: then the current
    rows are computed from the history, whose own read reports a store that is down)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        return DeltaTable(superseded_uri(root), storage_options=storage_options(root, opts))
    except (DeltaError, OSError):
        return None


def dataset_of(dt, uri: str, opts: storage.S3Options):
    import pyarrow.fs as pafs

    fs, path = storage.arrow_fs(uri, opts)
    return dt.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(path, fs))


class RowsRemoved(StoreError):
    """A commit removed rows from the history (not one of ours: runs only append, optimize rewrites files with
    the same rows): a row could be current again, which the superseded table, only ever growing, cannot say."""


def added_files(root: str, opts: storage.S3Options, after: int, upto: int) -> list[str] | None:
    """Data files (relative to the table) that the commits after..upto added with new rows; None when the log no
    longer has one of those entries. Raises RowsRemoved when one of them removed rows."""
    fs, path = storage.arrow_fs(root, opts)
    files = []
    for v in range(after + 1, upto + 1):
        try:
            with fs.open_input_stream(f"{path}/_delta_log/{v:020d}.json") as f:
                entries = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        except (FileNotFoundError, OSError):
            return None
        for e in entries:
            if "remove" in e and e["remove"].get("dataChange", True):
                raise RowsRemoved(f"{root}: version {v} removed rows from the history")
            if "add" in e and e["add"].get("dataChange", True):
                files.append(unquote(e["add"]["path"]))
    return files


def refresh_superseded(root: str, opts: storage.S3Options = storage.S3Options()) -> int:
    """Bring the superseded table up to the history's latest version: the keys the commits since the version it
    is complete for superseded, appended in one commit whose app transaction is that latest version. Concurrent
    refreshes are safe: the table only grows, and the set of superseded keys only grows with the history, so any
    refresh's rows stay right and the version it records is one it is complete for. Returns that version."""
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties, Transaction

    for attempt in range(5):
        store = open_store(root, opts)
        if store is None:
            return 0
        try:
            if store.covered == store.version:
                return store.version
            if store.rows_removed:
                raise RowsRemoved(
                    f"{root}: a commit removed rows from the history; rebuild the superseded table: delete "
                    f"{superseded_uri(root)} (with no tag run going) and run `landmark store optimize`"
                )
            keys = "SELECT DISTINCT * FROM _superseded"
            if store.superseded == "table":  # only the keys it does not have yet
                keys = "SELECT * FROM _superseded_new EXCEPT SELECT uri, tagged_at, run_id FROM _superseded_table"
            keys = store.con.sql(keys).to_arrow_table()
            version = store.version
        finally:
            store.close()
        try:
            write_deltalake(
                superseded_uri(root),
                keys.cast(KEYS_SCHEMA),
                mode="append",
                storage_options=storage_options(root, opts),
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(SUPERSEDED_APP, version)], max_commit_retries=50
                ),
            )
            return version
        except Exception:
            if attempt == 4:  # e.g. two refreshes creating the table at once: the loser reads it again
                raise
    return version


def compact_superseded(root: str, opts: storage.S3Options = storage.S3Options()) -> dict:
    """Compact the superseded table's files (one per run) after a refresh; its app transaction stays."""
    refresh_superseded(root, opts)
    sdt = open_superseded(root, opts)
    return {} if sdt is None else sdt.optimize.compact()


def vacuum_superseded(root: str, opts: storage.S3Options, retention_hours: float, dry_run: bool) -> list[str]:
    sdt = open_superseded(root, opts)
    if sdt is None:
        return []
    files = sdt.vacuum(
        retention_hours=int(retention_hours), dry_run=dry_run, enforce_retention_duration=False, full=True
    )
    return [f"{SUPERSEDED_DIR}/{f}" for f in files]


def open_store(
    root: str,
    opts: storage.S3Options = storage.S3Options(),
    *,
    version: int | None = None,
    as_of: datetime | str | None = None,
    superseded: bool = True,
) -> Store | None:
    """The table at ``root`` opened for reading (None when there is no table yet). Time travel computes the current
    rows from that version's history: the superseded table may hold keys superseded only after it. Without
    ``superseded`` the view ``tags`` is the full computation (for a caller that reads only a few uris' rows)."""
    latest = version is None and as_of is None
    sdt = open_superseded(root, opts) if latest and superseded else None  # before the history: see Store
    dt = open_table(root, opts, version=version, as_of=as_of)
    return None if dt is None else Store(dt, root, opts, sdt)


def connect(
    root: str,
    opts: storage.S3Options = storage.S3Options(),
    *,
    version: int | None = None,
    as_of: datetime | str | None = None,
):
    """The DuckDB connection of ``open_store`` (None when there is no table)."""
    store = open_store(root, opts, version=version, as_of=as_of)
    return None if store is None else store.con


def empty(columns: list[str] | None = None) -> pa.Table:
    t = TAGS_SCHEMA.empty_table()
    return t if columns is None else t.select(columns)


def to_schema(table: pa.Table) -> pa.Table:
    """DuckDB's Arrow result cast back to TAGS_SCHEMA's types for the columns it has."""
    fields = [TAGS_SCHEMA.field(n) if n in TAGS_SCHEMA.names else table.schema.field(n) for n in table.column_names]
    return table.cast(pa.schema(fields))


def read(
    root: str,
    *,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
    history: bool = False,
    opts: storage.S3Options = storage.S3Options(),
    version: int | None = None,
    as_of: datetime | str | None = None,
) -> pa.Table:
    """Current rows (or every committed row with ``history``) matching ``filter``, sorted by uri."""
    store = open_store(root, opts, version=version, as_of=as_of)
    if store is None:
        return empty(columns)
    try:
        if history:
            rows = store.dataset.to_table(columns=columns, filter=filter)
        elif filter is not None:
            rows = current_rows(store, columns, filter)
        else:
            rows = store.con.sql(f"SELECT {quoted(columns)} FROM tags").to_arrow_table()
        order = [c for c in ("uri", "tagged_at", "run_id") if c in rows.column_names][: 3 if history else 1]
        return to_schema(rows).sort_by([(c, "ascending") for c in order])
    finally:
        store.close()


def runs(root: str, opts: storage.S3Options = storage.S3Options()) -> list[dict]:
    """Committed tag runs from the table's log, oldest first: each its summary plus ``version`` and ``timestamp``."""
    dt = open_table(root, opts)
    if dt is None:
        return []
    out = []
    for c in reversed(dt.history()):
        run = c.get(RUN_KEY)
        if isinstance(run, dict):
            out.append({**run, "version": c["version"], "timestamp": c.get("timestamp")})
    return out
