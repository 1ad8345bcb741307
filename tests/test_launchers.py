"""Sweeps through Hydra launcher plugins: submitit (SLURM config; local executor run for real) and
joblib (config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from invdiff.apps import app

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


def _launcher(config_name: str, *overrides: str):
    with initialize_config_module("invdiff.configs", version_base=None):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True).hydra.launcher


@pytest.mark.parametrize("config_name", ["config", "bench"])
def test_slurm_launcher_config_has_gpu_defaults_and_takes_overrides(config_name):
    ln = _launcher(config_name, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30")
    assert ln._target_.endswith("SlurmLauncher")
    assert (ln.gpus_per_node, ln.tasks_per_node, ln.nodes, ln.partition, ln.timeout_min) == (1, 1, 1, "gpu", 30)
    launcher = instantiate(ln)  # builds without a cluster (sbatch is only needed to submit)
    assert type(launcher).__name__ == "SlurmLauncher"
    with pytest.raises(Exception, match="gpus_per_nod"):  # a typo is caught by the plugin's schema
        _launcher(config_name, "hydra/launcher=slurm", "hydra.launcher.gpus_per_nod=2")


def test_joblib_launcher_config():
    ln = _launcher("config", "hydra/launcher=processes", "hydra.launcher.n_jobs=3")
    assert ln._target_.endswith("JoblibLauncher") and ln.n_jobs == 3 and ln.prefer == "processes"
    assert type(instantiate(ln)).__name__ == "JoblibLauncher"


def test_joblib_sweep_runs_in_worker_processes(tmp_path):
    """A benchmark sweep through joblib's process pool: each run finishes and the sweep's table
    (the SweepTable callback, run once in the parent) lists both solvers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "invdiff.apps.bench", "-m", "hydra/launcher=processes", "benchmark=smoke",
                    "solver=ddrm,ddnm", "data.n=1", "solver.steps=3", "progress=false", "figures=false",
                    f"results_dir={tmp_path}"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    table = (tmp_path / "smoke" / "table.md").read_text()
    assert "ddrm" in table and "ddnm" in table
    assert sorted(p.parent.parent.name for p in (tmp_path / "smoke").glob("*/*/summary.json")) == ["ddnm", "ddrm"]


def test_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path):
    """What runs on SLURM, run by submitit's local executor: both runs of the sweep finish, the
    sweep summary covers them, and each equals the same run done in-process."""
    args = ["data.n=1", "num_samples=2", "solver.steps=3", "progress=false", "figures=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "invdiff.apps.cli", "-m", "hydra/launcher=local",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=0,1", *args],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    sweep = tmp_path / "sweep"
    assert (sweep / ".submitit").is_dir()  # submitit's job files: it really went through the executor
    summary = json.loads((sweep / "metrics.json").read_text())
    assert len(summary["samples"]) == 2 and {r["seed"] for r in summary["samples"]} == {0, 1}
    app.run(app.config("seed=1", *args), tmp_path / "here")
    (one,) = (tmp_path / "here" / "samples").glob("*.h5")
    with h5py.File(one) as a, h5py.File(sweep / "1" / "samples" / one.name) as b:
        np.testing.assert_allclose(a["samples"][()], b["samples"][()], rtol=1e-5, atol=1e-6)
