"""Exactly once, checked where a duplicate would show.

The current view is one row per uri by construction when it is computed from the whole history (the newest row
of each uri), so a run that wrote a photo twice would pass a check of the current view alone. The history keeps
every committed row: each run's rows must name each of its photos once.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from landmark_core import storage, tagstore


def assert_exactly_once(root: str, uris: set[str], *, opts: storage.S3Options = storage.S3Options()) -> pa.Table:
    """No committed run has two rows of one uri, and the current view has one row for each of ``uris`` and no
    other; returns the current view."""
    history = tagstore.read(str(root), history=True, columns=["run_id", "uri"], opts=opts)
    per_run = Counter(zip(history.column("run_id").to_pylist(), history.column("uri").to_pylist()))
    twice = [key for key, n in per_run.items() if n > 1]
    assert not twice, f"{len(twice)} (run_id, uri) pairs written more than once, e.g. {twice[:3]}"
    current = tagstore.read(str(root), opts=opts)
    got = current.column("uri").to_pylist()
    assert len(got) == len(set(got)) == len(uris), (len(got), len(set(got)), len(uris))
    assert set(got) == set(uris)
    return current
