"""The jobs' command-line runner (parse -> frozen config -> check once -> run -> exit code) and their ConfigError."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

from landmark_core.cli_errors import brief_errors
from landmark_core.closed_pipe import quiet_on_closed_pipe
from landmark_core.storage import StorageError, is_s3


class ConfigError(ValueError):
    """A bad argument, or what it points at (a missing model, an unwritable output); the message names the flag."""


def checks_config(execute: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Makes a job's ``run(cfg)`` check ``cfg`` before anything else. ``run.after_check`` is the body alone: the
    CLI runner calls it, having checked ``cfg`` itself (so a bad flag gets argparse's usage line and exit 2)."""

    @functools.wraps(execute)
    def run(cfg):
        cfg.check()
        return execute(cfg)

    run.after_check = execute
    return run


def check_threshold_flags(min_score: float | None, accept_rate: float | None, max_wrong_rate: float | None) -> None:
    """The tag decision's overrides, as tag and eval take them: at most one, each in its range."""
    import math

    if min_score is not None and not math.isfinite(min_score):
        raise ConfigError(f"--min-score must be a finite number, got {min_score}")
    if sum(v is not None for v in (min_score, accept_rate, max_wrong_rate)) > 1:
        raise ConfigError("give at most one of --min-score, --accept-rate and --max-wrong-rate")
    if max_wrong_rate is not None:
        check_max_wrong_rate(max_wrong_rate)
    if accept_rate is not None:
        check_accept_rate(accept_rate)


def check_accept_rate(rate: float) -> None:
    """--accept-rate: the share of known validation photos a threshold accepts."""
    if not 0 < rate <= 1:
        raise ConfigError(f"--accept-rate must be in (0, 1], got {rate}")


def check_max_wrong_rate(rate: float) -> None:
    """--max-wrong-rate: the share of held-back negatives a threshold may tag."""
    if not 0 <= rate < 1:
        raise ConfigError(f"--max-wrong-rate must be in [0, 1), got {rate}")


def check_output_dir(flag: str, path: str) -> None:
    """A local output folder the job creates (or writes into, if it exists) can be: no file in its place or in
    place of a parent, and creatable and writable. Creating is tried, and undone, so that a bad flag fails here,
    before any work, and a check that fails later leaves nothing behind."""
    if is_s3(path):
        raise ConfigError(f"{flag} {path}: give a local folder (s3:// is not written here)")
    out = Path(os.path.abspath(path))  # "a/../b" is b: mkdir and rmdir below walk the real folders
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir():
        where = "a file is there" if parent == out else f"{parent} is a file"
        raise ConfigError(f"{flag} {path}: {where}, not a folder; give a folder")
    if parent != out:
        _try_mkdir(flag, path, out, parent)
    elif not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in this folder (permission denied)")


def check_output_file(flag: str, path: str) -> None:
    """A local file the job writes (its folder made if missing): not a folder, under a folder that can be."""
    if is_s3(path):
        raise ConfigError(f"{flag} {path}: give a local file (s3:// is not written here)")
    out = Path(os.path.abspath(path))
    if out.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: name a file, e.g. {Path(path) / 'tags.csv'}")
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def _try_mkdir(flag: str, path: str, out: Path, parent: Path) -> None:
    """Creates ``out`` and its missing parents below ``parent``, then removes them again."""
    try:
        out.mkdir(parents=True)
    except OSError as e:  # /proc/x, a read-only disk, no permission: what mkdir says
        raise ConfigError(f"{flag} {path}: cannot create it ({e.strerror or e})") from None
    for made in (out, *out.parents):
        if made == parent:
            return
        try:
            made.rmdir()
        except OSError:  # something else wrote there meanwhile: leave it
            return


@quiet_on_closed_pipe
def run_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    config: Callable[[argparse.Namespace], Any],
    run: Callable[[Any], Any],
    show: Callable[[Any, Any], int | None] | None = None,
    failures: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (),
    prog: Callable[[Any], str] | None = None,
) -> int:
    """Runs one job from its command line and returns the exit code.

    ``config(ns)`` builds the frozen config and its ``check()`` runs once, here: a ConfigError (or a StorageError,
    a malformed URI) is argparse's error (``<prog>: error: ...`` and where the flags are listed, exit 2).
    ``run(cfg)`` (its ``after_check`` body when it has one) does the work; a ConfigError it raises (pre-flight:
    loading the model, probing the output) is one ``<prog>: error:`` line and exit 2, each ``(exception types,
    code)`` of ``failures`` one such line and that code. ``show(result, cfg)`` prints the result and may return the exit
    code; without ``show``, an int result is the exit code.
    """
    brief_errors(parser, sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    try:
        cfg = config(ns)
        cfg.check()
    except (ConfigError, StorageError) as e:  # a malformed URI or endpoint is a bad argument too
        _chosen_parser(parser, ns).error(str(e))  # exits 2
    name = prog(cfg) if prog else parser.prog
    codes = ((ConfigError, 2),) + failures
    caught = tuple(t for types, _ in codes for t in (types if isinstance(types, tuple) else (types,)))
    try:
        result = getattr(run, "after_check", run)(cfg)
    except caught as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return next(code for types, code in codes if isinstance(e, types))
    code = show(result, cfg) if show else result if isinstance(result, int) else 0
    return int(code or 0)


def _chosen_parser(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's own parser (`landmark catalog add`), whose usage line and name an error should carry,
    as argparse's own errors do; the parser itself for a command without subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(ns, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(ns, action.dest)], ns)
    return parser


def fields_of(config_type: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """``config_type`` from the namespace's entries that are its fields (flags it does not hold are skipped)."""
    names = config_type.__dataclass_fields__
    return config_type(**{**{k: v for k, v in vars(ns).items() if k in names}, **overrides})
