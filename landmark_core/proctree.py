"""This machine's process tree from Linux /proc: a process's descendants, their titles and resident memory."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (one scan of /proc; processes that exit meanwhile are skipped)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += children.get(pid, [])
    return out


def titles(pids: list[int]) -> dict[int, str]:
    """{pid: process title} (Ray retitles its workers ``ray::...``)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            pass
    return out


def resident_bytes(pids: list[int]) -> dict[int, int]:
    """{pid: resident memory in bytes}."""
    out, page = {}, os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        try:
            out[pid] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return out
