"""Hydra configs (each file alone, and composed in-process) and the `invdiff` app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import operators as O
from invdiff.apps.app import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OPERATOR_CONFIGS = sorted(p.stem for p in (CONFIGS / "operator").glob("*.yaml"))
NOISE_CONFIGS = sorted(p.stem for p in (CONFIGS / "noise").glob("*.yaml"))


@pytest.fixture
def user_files(tmp_path):
    def fill(name, cfg, shape):
        if name == "kernel_file_blur":
            np.save(tmp_path / "psf.npy", O.GaussianKernel(5, 1.0)().numpy())
            cfg.kernel.path = str(tmp_path / "psf.npy")
        if name == "nonlinear_blur":
            if not (tmp_path / "blur.safetensors").exists():
                O.save_blur_net(O.BlurNet(channels=shape[0], features=4, latent_dim=4), tmp_path / "blur.safetensors")
            cfg.checkpoint = str(tmp_path / "blur.safetensors")
        if name == "mask_file_inpainting":
            np.save(tmp_path / "mask.npy", np.arange(shape[1] * shape[2]).reshape(shape[1:]) % 2)
            cfg.mask.path = str(tmp_path / "mask.npy")
        if name == "mri_mask_file":
            np.save(tmp_path / "cols.npy", np.arange(shape[2]) % 3 == 0)
            cfg.mask.path = str(tmp_path / "cols.npy")
        return cfg

    return fill


@pytest.mark.parametrize("name", OPERATOR_CONFIGS)
def test_operator_config_instantiates_alone(name, user_files):
    cfg = user_files(name, OmegaConf.load(CONFIGS / "operator" / f"{name}.yaml"), (1, 64, 64))
    op = instantiate(cfg)
    assert isinstance(op, (O.LinearOperator, O.NonlinearOperator)) and op.img_size[1:] == (64, 64)
    x = torch.rand(2, *op.img_size, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(op.A(x)).all()


@pytest.mark.parametrize("name", NOISE_CONFIGS)
def test_noise_config_instantiates_alone(name):
    noise = instantiate(OmegaConf.load(CONFIGS / "noise" / f"{name}.yaml"))
    y = torch.full((1, 4), 0.5)
    assert noise(y, generator=torch.Generator().manual_seed(0)).shape == y.shape


def test_every_config_has_a_source_comment():
    for path in list((CONFIGS / "operator").glob("*.yaml")) + list((CONFIGS / "noise").glob("*.yaml")):
        assert path.read_text().lstrip().startswith("#"), f"{path} lacks its explanatory comment"


@pytest.mark.parametrize("name", OPERATOR_CONFIGS)
def test_operator_configs_compose_with_a_shared_shape(name, user_files):
    # MRI images have 1 (real) or 2 (complex) channels; CT images are square
    shape = (2, 32, 48) if name.startswith("mri") else (1, 32, 32) if name.startswith("ct") else (3, 32, 48)
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=[f"operator={name}", f"shape=[{','.join(map(str, shape))}]",
                                           "operator_seed=3"])
    op = instantiate(user_files(name, cfg.operator, shape))
    assert op.img_size == shape
    again = instantiate(user_files(name, cfg.operator, shape))
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(op.A(x), again.A(x))  # same operator_seed, same random parameters


def test_unknown_operator_name_lists_the_choices():
    with initialize_config_module("invdiff.configs", version_base=None):
        with pytest.raises(MissingConfigException) as err:
            compose("config", overrides=["operator=gausian_blur"])
    assert "gaussian_blur" in str(err.value)


def test_app_refuses_bad_input_before_writing(tmp_path):
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["operator=sr_average", "shape=[1,30,30]", "prior=gaussian"])
    with pytest.raises(ValueError, match="divisible"):
        run(cfg, tmp_path)
    assert not (tmp_path / "samples").exists()


def test_non_editable_install_ships_the_configs(tmp_path):
    """Build a wheel, install it alone into a directory and run the app from there."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheel_dir)],
                   check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("invdiff-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    code = (
        "import invdiff, operators, sys; from pathlib import Path\n"
        f"assert Path(invdiff.__file__).is_relative_to({str(target)!r}), invdiff.__file__\n"
        "from hydra import compose, initialize_config_module\n"
        "from invdiff.apps.app import run\n"
        "from invdiff.priors.shipped import shipped_prior_path\n"
        "assert shipped_prior_path('phantom64').stat().st_size > 10**6\n"
        "with initialize_config_module('invdiff.configs.train', version_base=None):\n"
        "    assert compose('config').name == 'phantom64'\n"
        "with initialize_config_module('invdiff.configs', version_base=None):\n"
        "    cfg = compose('config', overrides=['data.n=1', 'num_samples=1', 'solver.steps=2', 'progress=false'])\n"
        f"print(run(cfg, {str(tmp_path / 'out')!r})['summary']['psnr'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    assert (tmp_path / "out" / "samples" / "shepp_logan.h5").is_file()
