"""This test session's own processes: the fault tests find the Ray workers they kill here."""

from __future__ import annotations

import os

from landmark_core import proctree


def own_process_titles() -> dict[int, str]:
    """{pid: process title} of this process and its descendants (Ray retitles its workers ``ray::...``)."""
    return proctree.titles(proctree.descendants(os.getpid()))


def create_table_when_told(root: str, ready, go) -> None:
    """A child process (spawned: delta-rs's runtime does not survive fork) that creates the tag table at ``root``
    once ``go`` is set, as a tag run starting on a new output does; ``ready`` once it has imported what it needs."""
    from landmark_core import tagstore

    ready.set()
    go.wait()
    tagstore.ensure_table(root)


def live_in_session(sid: int) -> list[int]:
    """The processes (zombies aside) of session ``sid``: a job started with start_new_session and all it started."""
    from pathlib import Path

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getsid(int(d)) == sid and state != "Z":
                    pids.append(int(d))
            except (OSError, IndexError):
                continue
    return pids
