"""Batch sizes: the seed guarantee (draws do not depend on the batch) and out-of-memory handling."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

import operators as O
from invdiff import api, priors, solvers
from invdiff.apps import app, common
from invdiff.api import OutOfMemory, reconstruct


@pytest.fixture(scope="module")
def problem():
    prior = priors.load("phantom64")
    op = O.Inpainting(O.masks.RandomPixelMask(0.6), (1, 64, 64), seed=0)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    y = op.measure(x, O.GaussianNoise(0.05), generator=torch.Generator().manual_seed(1))
    return prior, op, y


@pytest.mark.parametrize("name", ["ddrm", "dps"])
def test_draws_do_not_depend_on_the_batch_size_with_a_network(problem, name):
    """DESIGN.md, "Seeds": the same (seed, id, draw) gives the same draw in any batch, to float
    tolerance (the network may pick other kernels for other batch sizes)."""
    prior, op, y = problem
    runs = [reconstruct(y, op, prior, name, sigma_y=0.05, num_samples=3, seed=7, ids=["a", "b"], steps=4,
                        batch_size=b) for b in (1, 4, None, "auto")]
    for r in runs[1:]:
        torch.testing.assert_close(r.samples, runs[0].samples, rtol=1e-5, atol=1e-5)
    assert runs[0].seeds == runs[1].seeds


def _oom_above(limit: int, cuda_type: bool = True):
    """A solver that runs out of memory for batches larger than ``limit``, like the allocators do."""
    seen = []

    def solver(y, operator, prior, *, sigma_y, generator=None, callback=None, **kw):
        seen.append(y.shape[0])
        prior.denoiser(torch.zeros(1, *prior.shape, dtype=torch.float64), 1.0)  # a call before failing
        if y.shape[0] > limit:
            if cuda_type:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return solvers.ddrm(y, operator, prior, sigma_y=sigma_y, generator=generator, callback=callback, steps=3)

    return solver, seen


@pytest.mark.parametrize("cuda_type", [True, False])
def test_batch_size_auto_halves_until_it_fits_and_changes_nothing(problem, cuda_type, caplog):
    prior, op, y = problem
    solver, seen = _oom_above(2, cuda_type)
    with caplog.at_level(logging.INFO, logger="invdiff"):
        auto = reconstruct(y, op, prior, solver, sigma_y=0.05, num_samples=3, seed=3, ids=["a", "b"], batch_size="auto")
    assert seen[:3] == [6, 3, 1] and max(seen[2:]) <= 2 and "trying 3" in caplog.text
    ref = reconstruct(y, op, prior, functools.partial(solvers.ddrm, steps=3), sigma_y=0.05, num_samples=3, seed=3,
                      ids=["a", "b"], batch_size=1)
    torch.testing.assert_close(auto.samples, ref.samples, rtol=1e-5, atol=1e-5)
    assert auto.nfe == 3 + 1  # ddrm's 3 + the probe call of the attempt that fitted; failed attempts not counted


def test_out_of_memory_with_a_fixed_batch_names_the_batch_size_to_try(problem):
    prior, op, y = problem
    solver, _ = _oom_above(2)
    with pytest.raises(OutOfMemory, match=r"solving 6 draws at once.*batch_size=3 \(or batch_size=auto"):
        reconstruct(y, op, prior, solver, sigma_y=0.05, num_samples=3, seed=3, ids=["a", "b"], batch_size=6)
    solver, _ = _oom_above(0)
    with pytest.raises(OutOfMemory, match="single draw.*tile it"):
        reconstruct(y, op, prior, solver, sigma_y=0.05, num_samples=1, batch_size="auto")
    with pytest.raises(ValueError, match="batch_size must be"):
        reconstruct(y, op, prior, "ddrm", sigma_y=0.05, batch_size="big")


def test_other_runtime_errors_are_not_taken_for_memory(problem):
    prior, op, y = problem

    def broken(y, operator, prior, **kw):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        reconstruct(y, op, prior, broken, sigma_y=0.05, batch_size="auto")
    assert not api.is_out_of_memory(RuntimeError("shapes cannot be multiplied"))


def test_app_takes_batch_size_auto_and_reruns_it(tmp_path):
    cfg = app.config("data.n=1", "num_samples=2", "solver.steps=3", "batch_size=auto", "progress=false", "figures=false")
    app.run(cfg, tmp_path)
    path = next((tmp_path / "samples").glob("*.h5"))
    from invdiff.data.results import read_sample

    rec = read_sample(path)
    assert rec["batch_size"] == "auto"
    again = app.rerun(path)
    torch.testing.assert_close(again.samples[0].float().cpu(), torch.from_numpy(rec["samples"]).float())
    with pytest.raises(common.AppError, match="positive integer or auto"):
        app.setup(app.config("batch_size=0"))
