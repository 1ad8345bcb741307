"""Data-parallel runs under torchrun (gloo, 2 CPU processes) equal single-process runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from invdiff import distributed
from invdiff.apps import app, bench
from invdiff.data.processes import host_tag
from invdiff.data.results import write_sample
from crash import kill_and_resume

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
APP_ARGS = ["data.n=5", "num_samples=2", "solver.steps=4", "batch_size=2", "progress=false", "figures=false"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


#: torchrun's own launch failures (its rendezvous store or a worker's gloo socket losing a race for a
#: free port to another process on the machine): the launch is retried once; any other failure is ours.
PORT_RACE = ("EADDRINUSE", "address already in use", "DistNetworkError")


def _torchrun(args: list[str], cwd: Path) -> None:
    for attempt in (1, 2):
        done = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
        if done.returncode == 0 or attempt == 2 or not any(p in done.stderr for p in PORT_RACE):
            break
        for d in ("outputs", "multirun"):  # the failed launch's partial run directory
            shutil.rmtree(cwd / d, ignore_errors=True)
    assert done.returncode == 0, f"torchrun exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _arrays(run_dir: Path) -> dict:
    out = {}
    for f in sorted((run_dir / "samples").glob("*.h5")):
        with h5py.File(f, "r") as h:
            out[f.stem] = {k: h[k][()] for k in ("x_hat", "samples", "y")} | {
                "rank": int(h.attrs.get("rank", -1)), "metrics": json.loads(h.attrs["metrics"])}
    return out


def _single_process(fn, cfg, out):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun workers run with OMP_NUM_THREADS=1: same arithmetic
    try:
        return fn(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _same(one: dict, two: dict) -> None:
    assert one.keys() == two.keys()
    for k in one:
        for a in ("x_hat", "samples", "y"):
            np.testing.assert_array_equal(one[k][a], two[k][a], err_msg=f"{k}/{a}")
        for m, v in one[k]["metrics"].items():
            if m not in ("seconds", "peak_memory_mb"):
                assert v == pytest.approx(two[k]["metrics"][m], rel=1e-9, nan_ok=True), (k, m)


def test_shard_covers_every_item_once():
    items = list(range(11))
    parts = [distributed.shard(items, distributed.Context(r, 3, r)) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6, 9]
    assert distributed.shard(items) == items  # outside torchrun: everything


def test_pending_shards_before_dropping_finished(tmp_path, monkeypatch):
    folder = tmp_path / "samples"
    for i in ("a", "c"):
        write_sample(folder / f"{i}.h5", {"x_hat": np.zeros(2), "metrics": "{}"})
    dead = subprocess.Popen(["true"])
    dead.wait()  # a killed run's temporary (its writer's pid is gone) and an old version's, 7 hours old
    (folder / ".invdiff-tmp").mkdir()
    (folder / ".invdiff-tmp" / f"{dead.pid}@{host_tag()}@abc@b.h5.tmp").write_bytes(b"half")
    (folder / ".b.h5.abc.tmp").write_bytes(b"half")
    os.utime(folder / ".b.h5.abc.tmp", (time.time() - 7 * 3600,) * 2)
    ids = ["a", "b", "c", "d"]
    assert distributed.pending(ids, folder, resume=True) == ["b", "d"]
    assert not list(folder.glob(".*"))  # the killed runs' temporaries are gone
    assert distributed.pending(ids, folder, resume=False) == ids
    # as rank 1 of 2 (no process group needed for the part under test): the assignment ignores what is done
    monkeypatch.setattr(distributed, "init", lambda: distributed.Context(1, 2, 1))
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    monkeypatch.setattr(distributed, "context", lambda: distributed.Context(1, 2, 1))
    assert distributed.pending(ids, folder, resume=True) == ["b", "d"]
    assert distributed.pending(ids, folder, resume=False) == ["b", "d"]


def test_context_reads_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.context() == distributed.Context(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        distributed.context()


def test_hydra_overrides_give_every_rank_rank_0s_run_directory(monkeypatch):
    assert distributed.hydra_overrides(["seed=1"], {"hydra.run.dir": "outputs/{time}"}) == []  # no torchrun
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "context", lambda rank=rank: distributed.Context(rank, 2, rank))
        monkeypatch.setattr(distributed, "init", lambda rank=rank: distributed.Context(rank, 2, rank))
        monkeypatch.setattr(distributed, "broadcast", lambda obj: "2026-01-02/03-04-05")  # rank 0's time
        extra = distributed.hydra_overrides(["seed=1", "hydra.sweep.dir=mine"],
                                            {"hydra.run.dir": "outputs/{time}", "hydra.sweep.dir": "multirun/{time}"})
        assert extra[0] == "hydra.run.dir=outputs/2026-01-02/03-04-05" and not any("sweep" in e for e in extra)
        assert (("hydra.output_subdir=null" in extra) and ("hydra/job_logging=stdout" in extra)) == (rank == 1)


@pytest.mark.xdist_group("torchrun")  # never beside the other torchrun test (with --dist loadgroup)
def test_torchrun_app_equals_one_process(tmp_path):
    """Two gloo ranks share the samples (both solve some), write one run directory (rank 0's time,
    though the user gave none), and every array equals a one-process run bit for bit."""
    _torchrun(["-m", "invdiff.apps.cli", *APP_ARGS], cwd=tmp_path)
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs
    two = _arrays(runs[0])
    assert len(two) == 5 and {v["rank"] for v in two.values()} == {0, 1}
    summary = json.loads((runs[0] / "metrics.json").read_text())
    assert summary["summary"]["psnr"]["n"] == 5
    _single_process(app.run, app.config(*APP_ARGS), tmp_path / "one")
    _same(_arrays(tmp_path / "one"), two)


@pytest.mark.xdist_group("torchrun")
def test_a_killed_torchrun_benchmark_resumes_and_equals_one_process(tmp_path):
    """SIGKILL to the torchrun agent and both workers mid-run: the finished records are whole and
    kept byte for byte; the same command resumes, each rank finishes its share, and every record
    equals a one-process run's bit for bit."""
    args = ["benchmark=smoke", "data.n=6", "solver.steps=20", "progress=false", "figures=false"]
    cmd = [*TORCHRUN, "-m", "invdiff.apps.bench", *args, f"hydra.run.dir={tmp_path / 'two'}"]
    kill_and_resume(cmd, tmp_path / "two" / "samples", total=6)
    two = _arrays(tmp_path / "two")
    assert {v["rank"] for v in two.values()} == {0, 1}
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    s1 = _single_process(bench.run, bench.config(*args), tmp_path / "one")
    _same(_arrays(tmp_path / "one"), two)
    assert s2["images"] == 6 and s1["metrics"]["psnr"]["mean"] == pytest.approx(s2["metrics"]["psnr"]["mean"], rel=1e-12)



TRAIN_SCRIPT = """
import sys
from pathlib import Path
from invdiff.data.training_data import PhantomData
from invdiff.training import Trainer, TrainSettings

out = Path(sys.argv[1])
s = TrainSettings(steps=6, batch=2, warmup=2, ckpt_every=2, log_every=1,
                  arch=dict(width=8, mults=[1, 2], blocks=1, emb=32, patch=2))
Trainer(PhantomData(16), out / "whole", s, progress=False).train()
Trainer(PhantomData(16), out / "split", s, progress=False).train(until=3)  # stopped after step 3
Trainer(PhantomData(16), out / "split", s, progress=False).train()  # a new trainer resumes from the checkpoint
"""


@pytest.mark.xdist_group("torchrun")
def test_a_data_parallel_training_run_resumes_bit_for_bit(tmp_path):
    """Two gloo ranks train; a run stopped at step 3 and resumed by a new trainer from its checkpoint
    ends with the weights, EMA and every rank's generator of the uninterrupted run — each rank
    continues its own batch stream (the checkpoint holds both generators), rank 1 never repeats rank
    0's. (One torchrun launch for the three trainers.)"""
    from invdiff.priors.native import read_tagged

    script = tmp_path / "train_ddp.py"
    script.write_text(TRAIN_SCRIPT)
    _torchrun([str(script), str(tmp_path)], cwd=tmp_path)
    whole, info = read_tagged(tmp_path / "whole" / "checkpoint.safetensors", "invdiff_train", "checkpoint")
    split, info2 = read_tagged(tmp_path / "split" / "checkpoint.safetensors", "invdiff_train", "checkpoint")
    assert info["world_size"] == info2["world_size"] == 2 and info["step"] == info2["step"] == 6
    assert whole.keys() == split.keys() and "rng.1" in whole
    for k, v in whole.items():
        assert torch.equal(v, split[k]), k
    assert not torch.equal(whole["rng"], whole["rng.1"])
