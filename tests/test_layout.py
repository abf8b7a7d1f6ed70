"""The layering the README describes: the library (landmark_core) imports no Ray; the jobs do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports_ray(package: str) -> bool:
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        f"for m in pkgutil.iter_modules(pkg.__path__): importlib.import_module({package!r} + '.' + m.name)\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1] == "True"


def test_landmark_core_imports_no_ray():
    assert not _imports_ray("landmark_core")


def test_the_check_sees_ray_where_it_is():  # the same check on jobs/, whose Ray Train/Data/Serve jobs import Ray
    assert _imports_ray("jobs")
