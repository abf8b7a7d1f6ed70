"""This test session's own processes, from /proc: the fault tests find the Ray workers they kill here."""

from __future__ import annotations

import os
from pathlib import Path


def own_process_titles() -> dict[int, str]:
    """{pid: process title} of every descendant of this process (Ray retitles its workers ``ray::...``)."""
    parent, titles = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                pass

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parent.get(pid, 1)
        return False

    return {p: t for p, t in titles.items() if ours(p)}
