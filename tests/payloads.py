"""Test helpers for the pickle-refusal tests (test_models, test_reliability)."""

from __future__ import annotations

import pathlib


class Payload:
    """A pickled object whose unpickling has a visible side effect: it creates a marker file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))
