"""`landmark ... | head`: a command whose reader went away ends quietly (no BrokenPipeError traceback)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

# `landmark ... | head`: the reader had what it wanted. Exit 0, as `landmark query | head` has (its one write
# finishes before the reader goes), so that `set -o pipefail` scripts do not fail on a shortened listing.
CLOSED_PIPE_EXIT = 0


def quiet_on_closed_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """Makes a command's ``main`` end quietly (CLOSED_PIPE_EXIT, no traceback) when the reader of its stdout goes
    away (`| head -1`). stdout is flushed inside, where the error can be caught: left to the interpreter's exit,
    a closed pipe prints "Exception ignored ... BrokenPipeError". A BrokenPipeError of anything else (a socket)
    is not this and is raised."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            # what is left in stdout's buffer goes to devnull: the interpreter's last flush cannot raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return CLOSED_PIPE_EXIT

    return wrapped


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone: poll reports an error on its write end."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # stdout replaced (a test's capture), closed, or no poll
        return False
