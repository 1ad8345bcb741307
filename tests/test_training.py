"""invdiff-train: phantoms, data loaders, EDM training that resumes bit for bit (also after a
SIGKILL of a real subprocess), export to the prior format and reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from invdiff import phantoms as P
from invdiff.data.training_data import ArrayData, PhantomData, load_images
from invdiff.priors import load
from invdiff.apps.train_app import run, settings_of
from invdiff.training import Trainer

TINY = ["settings.batch=2", "settings.log_every=2", "settings.ckpt_every=2", "sample_grid=4", "data.size=16",
        "settings.warmup=2", "settings.arch={width: 8, mults: [1, 2], blocks: 1, emb: 32, patch: 2}"]


def cfg(tmp_path, *overrides):
    with initialize_config_module("invdiff.configs.train", version_base=None):
        return compose("config", overrides=[f"out={tmp_path}", *TINY, *overrides])


def test_phantoms_are_seeded_in_range_and_the_held_out_set_is_never_drawn():
    a, b = P.phantom(123, 32), P.phantom(123, 32)
    assert np.array_equal(a, b) and not np.array_equal(a, P.phantom(124, 32))
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    seeds = P.training_seeds(torch.Generator().manual_seed(0), 10000)
    assert max(seeds) < min(P.EVAL_SEEDS)
    held = P.held_out(64, 4)
    assert held.shape == (4, 1, 64, 64) and float(held.max()) <= 1
    # Shepp–Logan comes first and is not a generated phantom
    assert not any(torch.equal(held[0], P.phantoms([s], 64)[0]) for s in P.EVAL_SEEDS[:3])


def test_training_resumes_bit_for_bit_and_exports_a_loadable_prior(tmp_path):
    run(cfg(tmp_path / "a", "settings.steps=6"))
    c = cfg(tmp_path / "b", "settings.steps=6")
    s = settings_of(c)
    t = Trainer(PhantomData(16), tmp_path / "b", s, progress=False)
    t.train(until=4)  # "killed" after the step-4 checkpoint
    del t
    with open(tmp_path / "b" / "log.csv", "a") as f:  # ... having logged step 5 before it died
        f.write("5,9.999,0.0005,1.0\n")
    resumed = run(c)  # the same command again
    assert resumed.step == 6
    steps = [int(r.split(",")[0]) for r in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    ref_steps = [int(r.split(",")[0]) for r in (tmp_path / "a" / "log.csv").read_text().splitlines()[1:]]
    assert steps == ref_steps and "9.999" not in (tmp_path / "b" / "log.csv").read_text()  # the lost step is gone
    ref = Trainer(PhantomData(16), tmp_path / "a", s, progress=False)  # reloads a's final checkpoint
    for k, v in ref.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    for name in ("prior.safetensors", "loss.png", "samples.png", "log.csv", "config.yaml"):
        assert (tmp_path / "b" / name).is_file(), name
    prior = load(tmp_path / "b" / "prior.safetensors")
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(prior.denoiser(x, 0.7), resumed.prior().denoiser(x, 0.7))
    assert prior.checkpoint["format"] == "invdiff" and prior.shape == (1, 16, 16)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    run(cfg(tmp_path, "settings.steps=2"))
    with pytest.raises(Exception, match="resume with the same settings"):
        run(cfg(tmp_path, "settings.steps=4", "settings.arch.width=16"))


def test_a_killed_training_process_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "invdiff.apps.train_app", f"out={out}", *TINY, "settings.steps=100000",
           "settings.ckpt_every=3", "threads=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.safetensors").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    c = cfg(out, "settings.steps=100000")
    s = settings_of(c)
    t = Trainer(PhantomData(16), out, s, progress=False)  # removes a temporary file the kill left
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert t.step >= 3 and t.step % 3 == 0
    start = t.step
    t.train(until=start + 3)
    assert t.step == start + 3 and len(t.losses) >= 1


def test_training_data_from_files(tmp_path):
    from skimage.io import imsave

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        imsave(folder / f"{i}.png", (rng.uniform(size=(20, 24)) * 255).astype(np.uint8), check_contrast=False)
    d = load_images(folder, 16)
    assert d.images.shape == (3, 1, 16, 16) and float(d.images.max()) <= 1
    np.save(tmp_path / "a.npy", rng.normal(size=(5, 16, 16)))
    assert load_images(tmp_path / "a.npy", 16).images.shape == (5, 1, 16, 16)
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = rng.uniform(size=(4, 32, 32))
        f["y"] = rng.uniform(size=(2, 32, 32))
        f["reconstruction_rss"] = rng.uniform(size=(6, 32, 32))
    assert load_images(f"{tmp_path / 'a.h5'}:y", 16).images.shape == (2, 1, 16, 16)
    assert load_images(tmp_path / "a.h5", 16, fastmri=True).images.shape == (6, 1, 16, 16)
    with pytest.raises(ValueError, match="name one"):
        load_images(tmp_path / "a.h5", 16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_images(empty, 16)
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could not read"):
        load_images(folder, 16)
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "missing", 16)
    with pytest.raises(ValueError, match="NaN"):
        ArrayData(torch.full((2, 1, 4, 4), float("nan")))


def test_data_parallel_training_under_torchrun(tmp_path):
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "invdiff.apps.train_app", f"out={out}", *TINY, "settings.steps=4", "threads=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    from invdiff.priors.checkpoints import safe_safetensors_load

    _, meta = safe_safetensors_load(out / "checkpoint.safetensors")
    info = json.loads(meta["invdiff_train"])
    assert info["world_size"] == 2 and info["step"] == 4
    assert load(out / "prior.safetensors").shape == (1, 16, 16)


def test_patch_data_is_seeded_varied_and_never_shows_the_held_out_images():
    from invdiff.data.training_data import HELD_OUT_IMAGES, PATCH_IMAGES, PatchData, _skimage_gray

    assert not set(PATCH_IMAGES) & set(HELD_OUT_IMAGES)
    with pytest.raises(ValueError, match="held out"):
        _skimage_gray("camera")
    d = PatchData(["coins", "lfw_subset"], size=32)
    assert len(d.groups) == 2 and len(d.groups[1]) == 200  # 200 faces count as one dataset
    a = d.sample(64, torch.Generator().manual_seed(0))
    assert a.shape == (64, 1, 32, 32) and a.dtype == torch.float32 and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, d.sample(64, torch.Generator().manual_seed(0)))
    # coins (303×384) has pyramid levels from full resolution down to the whole image at short side 32
    coins = d.groups[0][0]
    assert min(coins[0].shape) == 303 and min(coins[-1].shape) == 32
    stds = a.flatten(1).std(1)
    assert float(stds.std()) > 0.02  # flat crops and textured ones: scales differ
