"""Headless Chromium (Debian's) for the pages the project serves or writes: one binary, one set of flags."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
# no network of its own, no first-run or sync work: only what the page asks for
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_chromium() -> None:
    """Skip without Debian's chromium, except under CI, where `make test` must have installed it."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium missing under CI: `make test` should have installed it")
        pytest.skip("/usr/bin/chromium not installed")


@contextlib.contextmanager
def chromium_env():
    """The environment of one Chromium: its temporary files (the singleton socket's folder among them, left
    behind when the browser is killed) in a folder of their own, removed after. A short path under /tmp: the
    socket's path must fit a Unix socket's 108 bytes, which a pytest tmp_path does not."""
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as tmp:
        yield {**os.environ, "TMPDIR": tmp}


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    try:
        with chromium_env() as env:
            return subprocess.run(
                [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                env=env,
                check=False,
                timeout=60,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish within 60 s")
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(url: str, tmp_path: Path, size: tuple[int, int] = (1280, 2000)) -> np.ndarray:
    """The page as Chromium paints it: (H, W) grey pixels."""
    from PIL import Image

    shot = tmp_path / "shot.png"
    _run([f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", url], tmp_path / "chromium-profile")
    assert shot.is_file() and shot.stat().st_size > 0, "chromium wrote no screenshot"
    with Image.open(shot) as im:
        assert im.size == size
        return np.asarray(im.convert("L"), dtype=np.float32)


def rendered_dom(url: str, tmp_path: Path) -> str:
    """The DOM after Chromium has loaded the page and run its scripts."""
    return _run(["--dump-dom", url], tmp_path / "chromium-dom").stdout.decode("utf-8", "replace")
