"""Crash-safety check shared by the app and benchmark tests: run a command as a subprocess, SIGKILL
it (its whole process group: a torchrun agent and its workers too) once ``at_least`` sample files
exist, check the finished files are whole, rerun it and check it completes the rest without
touching them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from invdiff.data.results import is_complete


def kill_and_resume(cmd: list[str], samples: Path, total: int, at_least: int = 2, timeout: float = 180) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(samples.glob("*.h5"))) < at_least:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)  # the group's other processes die with it
    done = sorted(samples.glob("*.h5"))
    assert at_least <= len(done) < total, "the run finished before it could be killed: make it longer"
    assert all(is_complete(p) for p in done)  # finished samples are whole; nothing half-written under a final name
    first = {p.name: p.read_bytes() for p in done}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, f"the resumed run exited {rerun.returncode}:\n{rerun.stdout[-3000:]}\n{rerun.stderr[-6000:]}"
    assert len(list(samples.glob("*.h5"))) == total and not list(samples.glob(".*"))
    assert all((samples / n).read_bytes() == b for n, b in first.items())  # kept, not recomputed
