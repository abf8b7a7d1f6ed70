"""`landmark store`: look after the tag store's Delta table (no Ray).

    landmark store history --table T [--limit N] [--json]     runs (and other commits) from the table's log
    landmark store optimize --table T [--target-mb 256]       compact small files into larger ones (one commit);
                                                              bring the superseded table up to date, compact it
    landmark store vacuum --table T --retain-hours N [--dry-run]
                                                              delete files no version within N hours references:
                                                              files of killed runs, files optimize replaced
    landmark store migrate --from OLD_ROOT --to T             import a store of the old layout (dt=/run=/ dirs,
                                                              _SUCCESS per run): committed runs only, one commit each

Each is a commit of its own (or none): a tag run committing at the same time is not disturbed -- compaction only
rewrites files (the rows keep their run_id and tagged_at, so the current view is unchanged), and a blind append
does not conflict with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import pyarrow as pa

from jobs._cli import ConfigError, checks_config, fields_of, run_cli
from landmark_core import storage, tagstore

ACTIONS = ("history", "optimize", "vacuum", "migrate")


@dataclass(frozen=True)
class StoreConfig:
    action: str
    table: str
    source: str | None = None  # migrate --from
    retain_hours: float | None = None  # vacuum
    dry_run: bool = False
    target_mb: int = 256  # optimize
    limit: int | None = None  # history
    json: bool = False
    s3_endpoint: str | None = None

    def check(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"the action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        flag = "--to" if self.action == "migrate" else "--table"
        if not self.table or not str(self.table).strip():
            raise ConfigError(f"{flag} is required (the Delta table: a local path or s3://bucket/prefix)")
        try:
            storage.check_locations({flag: self.table, "--from": self.source}, self.s3_options())
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None
        if self.action == "migrate" and not self.source:
            raise ConfigError("--from OLD_ROOT is required (a store of dt=/run=/ directories)")
        if self.action == "vacuum":
            if self.retain_hours is None:
                raise ConfigError(
                    "--retain-hours N is required: files younger than N hours are kept "
                    "(a tag run still writing has uncommitted files; make N longer than a run)"
                )
            if not self.retain_hours >= 0:
                raise ConfigError(f"--retain-hours must be >= 0, got {self.retain_hours}")
        if self.target_mb <= 0:
            raise ConfigError(f"--target-mb must be > 0, got {self.target_mb}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")

    def s3_options(self) -> storage.S3Options:
        return storage.S3Options(endpoint=self.s3_endpoint or None)


def require_table(root: str, opts: storage.S3Options, flag: str):
    """The DeltaTable at ``root``; where there is none (no _delta_log: a mistyped path, not an empty store) a
    ConfigError naming ``flag``, exit 2 as for any bad argument. query and report use it too."""
    dt = tagstore.open_table(root, opts)
    if dt is None:
        raise ConfigError(f"{flag} {root}: no tag table there (no _delta_log; a tag run creates it): check {flag}")
    return dt


def _table(cfg: StoreConfig):
    return require_table(cfg.table, cfg.s3_options(), "--table")


def history(cfg: StoreConfig) -> list[dict]:
    """Every commit, newest first: version, time, operation, and a tag run's summary where it is one."""
    out = []
    for c in _table(cfg).history(limit=cfg.limit):
        run = c.get(tagstore.RUN_KEY) if isinstance(c.get(tagstore.RUN_KEY), dict) else None
        out.append(
            {
                "version": c["version"],
                "timestamp": c.get("timestamp"),
                "operation": c.get("operation"),
                "run": run,
                "metrics": c.get("operationMetrics"),
            }
        )
    return out


def optimize(cfg: StoreConfig) -> dict:
    """The history's files compacted (its metrics), then the superseded table brought up to date (built from the
    history if it is missing) and compacted (its metrics under "superseded")."""
    metrics = _table(cfg).optimize.compact(target_size=cfg.target_mb * 1024 * 1024)
    return {**metrics, "superseded": tagstore.compact_superseded(cfg.table, cfg.s3_options())}


def vacuum(cfg: StoreConfig) -> list[str]:
    """Files no version within --retain-hours references, deleted (listed only, with --dry-run): uncommitted files
    of killed runs too (a full vacuum lists the directory, not only the log); the superseded table's likewise."""
    # a full vacuum on S3 also lists (and deletes) the empty folder objects: no file of the user's, not reported
    markers = storage.folder_markers(cfg.table, cfg.s3_options())
    files = _table(cfg).vacuum(
        retention_hours=int(cfg.retain_hours), dry_run=cfg.dry_run, enforce_retention_duration=False, full=True
    )
    files += tagstore.vacuum_superseded(cfg.table, cfg.s3_options(), cfg.retain_hours, cfg.dry_run)
    return [f for f in files if f.rstrip("/") not in markers]


# ---------------------------------------------------------------- migrate: the only reader of the old layout


def old_committed_runs(root: str, opts: storage.S3Options) -> list[tuple[dict, list[str]]]:
    """The old layout's committed runs, oldest first (by committed_at, then run_id): (_SUCCESS JSON, files)."""
    import pyarrow.fs as pafs

    fs, base = storage.arrow_fs(root, opts)
    runs = []
    for dt_dir in _subdirs(fs, base, "dt="):
        for run_dir in _subdirs(fs, dt_dir, "run="):
            if fs.get_file_info(f"{run_dir}/_SUCCESS").type != pafs.FileType.File:
                continue  # never committed: invisible then, not imported now
            with fs.open_input_stream(f"{run_dir}/_SUCCESS") as f:
                success = json.loads(f.read())
            success.setdefault("run_id", run_dir.rsplit("run=", 1)[1])
            success.setdefault("dt", dt_dir.rsplit("dt=", 1)[1])
            infos = fs.get_file_info(pafs.FileSelector(run_dir, recursive=True))
            runs.append((success, sorted(i.path for i in infos if i.path.endswith(".parquet"))))
    return sorted(runs, key=lambda r: (r[0].get("committed_at", ""), r[0]["run_id"]))


def _subdirs(fs, path: str, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


def migrate(cfg: StoreConfig) -> dict:
    """Each committed old run becomes one commit of the table (its _SUCCESS as the summary), in commit order;
    runs already in the table (by run_id) are skipped, so a migration that died is finished by a rerun. Refused
    before anything is written if the table's current view would differ from the old latest-per-uri."""
    import pyarrow.parquet as pq

    opts = cfg.s3_options()
    fs, _ = storage.arrow_fs(cfg.source, opts)
    old = old_committed_runs(cfg.source, opts)
    if not old:
        # a mistyped --from (or no such folder): a bad argument, exit 2 as for a missing --table
        raise ConfigError(f"--from {cfg.source}: no committed runs (dt=*/run=*/_SUCCESS) there")
    tables = [
        pq.read_table(files, filesystem=fs, schema=tagstore.TAGS_SCHEMA) if files else tagstore.empty()
        for _, files in old
    ]
    _check_order_preserved(tables)
    done = {r["run_id"] for r in tagstore.runs(cfg.table, opts)}
    imported = 0
    for (success, _), table in zip(old, tables):
        if success["run_id"] in done:
            continue
        summary = {**success, "migrated_from": cfg.source}
        tagstore.append_run(cfg.table, table, summary, dt=str(success["dt"]), opts=opts)
        imported += 1
    return {
        "runs": len(old),
        "imported": imported,
        "already_there": len(old) - imported,
        "rows": sum(t.num_rows for t in tables),
    }


def _check_order_preserved(tables: list[pa.Table]) -> None:
    """The old store's latest committed run per uri (by commit order) must be the row the table's current view
    picks (latest by tagged_at, then run_id)."""
    import duckdb

    keys = pa.concat_tables(
        [
            t.select(["uri", "run_id", "tagged_at"]).append_column("_order", pa.array([i] * t.num_rows, pa.int64()))
            for i, t in enumerate(tables)
        ]
    )
    con = duckdb.connect()
    con.register("keys", keys)
    bad = con.sql("""
        SELECT uri, arg_max(run_id, _order) AS old, arg_max(run_id, struct_pack(t := tagged_at, r := run_id)) AS new
        FROM keys GROUP BY uri HAVING old <> new LIMIT 3""").fetchall()
    if bad:
        raise tagstore.StoreError(
            f"--from: for {', '.join(u for u, _, _ in bad)} the last committed run ({bad[0][1]}) is not the one with "
            f"the latest tagged_at ({bad[0][2]}); the table would show another row as current. Not migrated"
        )


# ---------------------------------------------------------------- CLI


@checks_config
def run(cfg: StoreConfig):
    return {"history": history, "optimize": optimize, "vacuum": vacuum, "migrate": migrate}[cfg.action](cfg)


def _run_naming_the_table(cfg: StoreConfig):
    """run(cfg) for the CLI: delta-rs and storage errors become one StoreError naming the table."""
    try:
        return run.after_check(cfg)
    except (tagstore.StoreError, ConfigError):
        raise
    except Exception as e:
        raise tagstore.StoreError(f"{cfg.table}: {tagstore.error_text(e)}") from None


def _print(cfg: StoreConfig, result) -> None:
    if cfg.json:
        print(json.dumps(result, default=str))
        return
    if cfg.action == "history":
        print(f"{'version':>7}  {'committed (UTC)':<19}  {'operation':<12}  run_id / details")
        for c in result:
            from datetime import datetime, timezone

            when = (
                datetime.fromtimestamp(c["timestamp"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                if c["timestamp"]
                else "?"
            )
            r = c["run"]
            detail = (
                f"{r.get('run_id')}  model {r.get('model_id')}  {_counts(r.get('counts'))}"
                if r
                else json.dumps(c["metrics"] or {}, default=str)[:100]
            )
            print(f"{c['version']:>7}  {when:<19}  {c['operation'] or '?':<12}  {detail}")
    elif cfg.action == "vacuum":
        print(f"{'would delete' if cfg.dry_run else 'deleted'} {len(result)} file(s)")
        for f in result[:50]:
            print(f"  {f}")
    elif cfg.action == "optimize":
        print(f"history: {_compacted(result)}")
        print(f"superseded table: {_compacted(result.get('superseded') or {})}")
    else:
        print(json.dumps(result, default=str, indent=2))


def _compacted(m: dict) -> str:
    """delta-rs's compaction metrics in a line (all of them: --json)."""
    if not m:
        return "none yet (made by the next run or optimize)"
    if not m.get("numFilesRemoved"):
        return f"nothing to compact ({m.get('totalConsideredFiles', 0)} file(s) considered)"
    return f"{m['numFilesRemoved']} file(s) compacted into {m.get('numFilesAdded', '?')} (one commit)"


def _counts(c: dict | None) -> str:
    if not c:
        return ""
    return ", ".join(f"{k} {v}" for k, v in c.items() if k != "total") + f" ({c.get('total', '?')} rows)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="landmark store",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:11]),
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    h = sub.add_parser("history", parents=[common], help="commits of the table, newest first")
    h.add_argument("--table", required=True, metavar="URI", help="the tags Delta table (path or s3://)")
    h.add_argument("--limit", type=int, metavar="N", help="only the latest N commits")
    o = sub.add_parser("optimize", parents=[common], help="compact small files")
    o.add_argument("--table", required=True, metavar="URI", help="the tags Delta table (path or s3://)")
    o.add_argument("--target-mb", type=int, default=256, metavar="MB", help="target file size (default 256)")
    v = sub.add_parser("vacuum", parents=[common], help="delete files no recent version references")
    v.add_argument("--table", required=True, metavar="URI", help="the tags Delta table (path or s3://)")
    v.add_argument(
        "--retain-hours",
        type=float,
        required=True,
        metavar="N",
        help="keep files younger than N hours, and what versions of the last N hours reference; time "
        "travel to older versions needs the files this deletes",
    )
    v.add_argument("--dry-run", action="store_true", help="list the files, delete nothing")
    m = sub.add_parser("migrate", parents=[common], help="import a store of the old dt=/run=/_SUCCESS layout")
    m.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="OLD_ROOT",
        help="the old store: dt=/run=/ directories, _SUCCESS per committed run (path or s3://)",
    )
    m.add_argument(
        "--to", dest="table", required=True, metavar="TABLE", help="the Delta table to import into (path or s3://)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        build_parser(),
        argv,
        config=lambda ns: fields_of(StoreConfig, ns),
        run=_run_naming_the_table,
        show=lambda result, cfg: _print(cfg, result),
        failures=((tagstore.StoreError, 1),),
        prog=lambda cfg: f"landmark store {cfg.action}",
    )


if __name__ == "__main__":
    sys.exit(main())
