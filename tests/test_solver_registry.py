"""One solver registry (issue 24, item 6): ``invdiff.solvers.SOLVERS`` is what ``invdiff.reconstruct``
looks names up in, and what the app's ``configs/solver/<name>.yaml`` target — the baselines included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_method
from omegaconf import OmegaConf

import operators as O
from invdiff import reconstruct, solvers
from invdiff.priors import GaussianPrior

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: p for p in sorted((ROOT / "configs" / "solver").glob("*.yaml"))}
# config file name -> registered name, where they differ (none today: a config is named after its solver)
CONFIG_NAME_TO_SOLVER: dict[str, str] = {}

SHAPE = (1, 4, 4)
PRIOR = GaussianPrior(torch.full((16,), 0.5), 0.1, shape=SHAPE)
OP = O.Inpainting(O.masks.RandomPixelMask(0.5), SHAPE, seed=0)  # every capability a solver may need
# shorter inner loops than the paper defaults (nothing here depends on them)
FAST = {"pnpdm": dict(prior_steps=10, langevin_steps=5), "daps": dict(langevin_steps=5), "mcgdiff": dict(particles=4)}


def measurement():
    x = PRIOR.sample(2, torch.Generator().manual_seed(0))
    return OP.measure(x, O.GaussianNoise(0.05), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_solver_config_targets_the_solver_of_its_name(config):
    target = OmegaConf.load(CONFIGS[config])._target_
    name = CONFIG_NAME_TO_SOLVER.get(config, config)
    every = {**solvers.SOLVERS, **solvers.BRIDGE_SOLVERS}
    assert name in every, f"configs/solver/{config}.yaml: '{name}' is not in invdiff.solvers.SOLVERS or BRIDGE_SOLVERS"
    assert get_method(target) is every[name], f"configs/solver/{config}.yaml targets {target}"


def test_every_registered_solver_has_a_config():
    configured = {CONFIG_NAME_TO_SOLVER.get(c, c) for c in CONFIGS}
    assert set(solvers.SOLVERS) | set(solvers.BRIDGE_SOLVERS) <= configured
    assert not set(solvers.SOLVERS) & set(solvers.BRIDGE_SOLVERS)
    assert solvers.BASELINES <= set(solvers.SOLVERS)


def test_registered_names_are_the_functions_names():
    """Results record ``solver_name`` (the function's ``__name__``): the registry uses the same name."""
    assert all(f.__name__ == name for name, f in {**solvers.SOLVERS, **solvers.BRIDGE_SOLVERS}.items())


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_reconstruct_accepts_every_registered_name(name):
    if name in solvers.VOLUME_SOLVERS:  # a volume of 2 slices of the same 4×4 images
        op = O.SliceStack(OP, depth=2)
        x = PRIOR.sample(4, torch.Generator().manual_seed(0)).reshape(2, 1, 2, 4, 4)
        rec = reconstruct(op.A(x), op, PRIOR, name, sigma_y=0.05, seed=0, steps=2)
        assert rec.samples.shape == (2, 1, 1, 2, 4, 4) and torch.isfinite(rec.samples).all()
        return
    y = measurement()
    rec = reconstruct(y, OP, PRIOR, name, sigma_y=0.05, seed=0, **({} if name == "pinv" else {"steps": 2}),
                      **FAST.get(name, {}))
    assert rec.samples.shape == (2, 1, *SHAPE) and torch.isfinite(rec.samples).all()


def test_an_unknown_name_is_refused_in_one_paragraph_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown solver 'pnp_dm'\. Choose one of: .*Did you mean 'pnpdm'\?") as err:
        reconstruct(measurement(), OP, PRIOR, "pnp_dm", sigma_y=0.05)
    msg = str(err.value)
    assert "\n" not in msg and all(name in msg for name in (*solvers.SOLVERS, *solvers.BRIDGE_SOLVERS))
