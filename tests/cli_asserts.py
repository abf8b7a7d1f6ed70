"""The one-line error a command prints (``<prog>: error: <message>``), for tests of bad arguments.

argparse prints its usage line, which lists every flag, before the error: a test that looks for a flag anywhere
in stderr passes whatever the message says. These helpers look at the error line alone.
"""

from __future__ import annotations

import re

_ERROR = re.compile(r"^[\w. -]+: error: (.*)$", re.M)


def error_line(output: str) -> str:
    """The message of the first ``<prog>: error: ...`` line in ``output`` (fails the test if there is none)."""
    m = _ERROR.search(output)
    assert m, f"no '<prog>: error:' line in:\n{output[-3000:]}"
    return m.group(1)


def assert_error_names(output: str, *needles: str) -> str:
    """Asserts that the error line (not the usage line) contains every needle; returns the line."""
    line = error_line(output)
    missing = [n for n in needles if n not in line]
    assert not missing, f"{missing} not in the error line {line!r}"
    return line
