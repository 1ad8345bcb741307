"""Processes on this host: who this process is and whether another one is still alive.

The temporaries of :func:`invdiff.data.results.atomic_path` carry their writer in their name
(``{pid}@{host}@…``, :func:`host_tag`), and the claims of :mod:`invdiff.data.claims` hold their
owner's host, pid and start time; both are judged abandoned with :func:`pid_alive`. This module
imports nothing else of the package, so both can use it.

"Same host" means the same host name and process-id space (not, e.g., two containers that share a
host name but not their pids).
"""

from __future__ import annotations

import os
import re
import socket

#: This host's name.
HOST = socket.gethostname()


def host_tag(host: str = HOST) -> str:
    """The host name as it appears in file names (no ``@``, ``/`` or other odd characters)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", host) or "_"


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc``), ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


#: This process's start time (:func:`process_start`): with its pid, what tells it from a later
#: process that reuses the pid.
START = process_start(os.getpid())


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` of this host exists (and, when both are known, started at ``start``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:  # the pid was reused
            return False
    return True
