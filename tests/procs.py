"""This test session's own processes: the fault tests find the Ray workers they kill here."""

from __future__ import annotations

import os

from landmark_core import proctree


def own_process_titles() -> dict[int, str]:
    """{pid: process title} of this process and its descendants (Ray retitles its workers ``ray::...``)."""
    return proctree.titles(proctree.descendants(os.getpid()))
