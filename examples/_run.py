"""Shared by the examples: run an invdiff command line in this Python and say where results went."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def args(doc: str, default_steps: int):
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--steps", type=int, default=default_steps, help="solver steps (the test runs 2)")
    p.add_argument("--out", default=None, help="run directory (default: outputs/examples/<name>)")
    return p.parse_args()


def invdiff(app: str, overrides: list[str], out: Path) -> None:
    """``invdiff`` (app="cli") or ``invdiff-bench`` (app="bench") with ``overrides``, into ``out``."""
    module = {"cli": "invdiff.apps.cli", "bench": "invdiff.apps.bench"}[app]
    key = "hydra.run.dir" if app == "cli" else "results_dir"
    cmd = [sys.executable, "-m", module, *overrides, f"{key}={out}"]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
