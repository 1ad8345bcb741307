"""One device per operator and prior: built from tensors on a device, an operator lives there;
``.to()`` moves all of it; a solver refuses a prior or operator on another device than y, once,
before any work. The CUDA tests are skipped without a GPU (CI) and must pass with one
(``benchmarks/results/cuda_tests.md``); the refusals are checked here with the ``meta`` device.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import operators as O
from invdiff import api, solvers
from invdiff.apps import app, common
from invdiff.priors import GaussianPrior
from operator_registry import ALL, BATCH

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SHAPE = (1, 8, 8)


def test_an_operator_split_over_two_devices_is_refused():
    op = O.Inpainting(torch.ones(SHAPE), SHAPE)
    assert op.device == torch.device("cpu")
    assert O.PhaseRetrieval(SHAPE).device is None  # no tensors: any device
    op.engine.mask = op.engine.mask.to("meta")
    with pytest.raises(ValueError, match="holds tensors on cpu, meta.*one device"):
        op.device
    y = torch.zeros(2, *SHAPE, dtype=torch.float64)
    prior = GaussianPrior(torch.full(SHAPE, 0.5), 0.1, shape=SHAPE)
    with pytest.raises(ValueError, match="solver 'ddrm': the operator holds tensors on cpu, meta"):
        solvers.ddrm(y, op, prior, sigma_y=0.05, steps=2)


def test_tensor_arguments_on_two_devices_are_refused_before_building():
    maps = O.birdcage_maps(4, 16, 16).to("meta")
    with pytest.raises(ValueError, match="MultiCoilMRI: its tensor arguments are on cpu, meta"):
        O.MultiCoilMRI(torch.ones(16, 16), maps, (1, 16, 16))


def test_a_prior_on_another_device_is_refused_before_any_work():
    y = torch.zeros(2, *SHAPE, dtype=torch.float64)
    op = O.Inpainting(torch.ones(SHAPE), SHAPE)
    prior = GaussianPrior(torch.full(SHAPE, 0.5), 0.1, shape=SHAPE).to("meta")
    with pytest.raises(ValueError, match="y is on cpu but the prior is on meta"):
        solvers.ddrm(y, op, prior, sigma_y=0.05, steps=2)


# ------------------------------------------------------------------------------------------------
# on a GPU
# ------------------------------------------------------------------------------------------------
def _params_on(op, device):
    """The operator's saved constructor arguments with every array as a tensor on ``device``."""
    d = op.to_dict()
    return {k: torch.from_numpy(np.asarray(v)).to(device) if isinstance(v, np.ndarray) else v
            for k, v in d["params"].items()}, type(op)


@cuda
@pytest.mark.parametrize("name", sorted(ALL))
def test_operators_built_from_cuda_tensors_live_on_cuda_and_agree_with_the_cpu(name):
    ref = ALL[name]()
    params, cls = _params_on(ref, "cuda")
    tensor_args = any(isinstance(v, torch.Tensor) for v in params.values())
    built = cls(**params)
    moved = ALL[name]().to("cuda")
    x = torch.randn(BATCH, *ref.img_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for op in ((built, moved) if tensor_args else (moved,)):
        assert op.device is None or op.device.type == "cuda", op.device
        torch.testing.assert_close(op.A(x.cuda()).cpu(), ref.A(x), rtol=1e-9, atol=1e-9)
        if "linear" in ref.capabilities:
            y = ref.A(x)
            torch.testing.assert_close(op.A_adjoint(y.cuda()).cpu(), ref.A_adjoint(y), rtol=1e-9, atol=1e-9)
            got, want = op.A_dagger(y.cuda()).cpu(), ref.A_dagger(y)
            if "pinv" in ref.closed_form:
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
            else:  # conjugate gradients to rtol 1e-6: other summation orders end elsewhere within it
                assert float((got - want).norm() / want.norm()) < 1e-4
        if "svd" in ref.capabilities:
            torch.testing.assert_close(op.V_adjoint(x.cuda()).cpu(), ref.V_adjoint(x), rtol=1e-9, atol=1e-9)
    assert moved.cpu().device in (None, torch.device("cpu"))


@cuda
def test_cuda_without_an_index_is_the_current_device():
    from invdiff.solvers._common import same_device

    assert same_device(torch.device("cuda"), torch.device("cuda", torch.cuda.current_device()))
    assert common.resolve_device("cuda").index is not None and common.resolve_device("auto").type == "cuda"
    prior = GaussianPrior(torch.full(SHAPE, 0.5), 0.1, shape=SHAPE).to("cuda")  # "cuda", no index
    op = O.Inpainting(torch.ones(SHAPE, device="cuda"), SHAPE)
    y = op.measure(torch.rand(2, *SHAPE, device="cuda", dtype=torch.float64))
    assert solvers.ddrm(y, op, prior, sigma_y=0.05, steps=3).device.type == "cuda"


@cuda
def test_noise_is_drawn_on_the_device_and_reproducible_there():
    prior = GaussianPrior(torch.full(SHAPE, 0.5), 0.1, shape=SHAPE).cuda()
    op = O.Inpainting(O.masks.RandomPixelMask(0.5), SHAPE, seed=0).cuda()
    y = op.measure(torch.rand(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).cuda())
    runs = [api.reconstruct(y, op, prior, "ddrm", sigma_y=0.05, num_samples=2, seed=3, steps=5, batch_size=b)
            for b in (None, None, 1)]
    assert runs[0].samples.device.type == "cuda"
    assert torch.equal(runs[0].samples, runs[1].samples)  # same device, same batches: bit for bit
    torch.testing.assert_close(runs[2].samples, runs[0].samples, rtol=1e-6, atol=1e-6)


@cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_and_cuda_graph_network_calls_agree_on_cuda(mode, monkeypatch):
    from test_compile import OP, TinyEps
    from invdiff.priors import NetworkPrior, VPSchedule
    from invdiff.solvers.network import Network

    # IEEE float32 in both paths: TF32 (on by default for cuDNN convolutions) differs by ~5e-4
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    prior = NetworkPrior(TinyEps(), "eps", VPSchedule(), shape=SHAPE).cuda()
    op = copy.deepcopy(OP).to("cuda")  # the CPU tests share OP
    y = op.measure(torch.rand(2, *SHAPE, dtype=torch.float64, device="cuda"))
    g = lambda: torch.Generator(device="cuda").manual_seed(0)  # noqa: E731
    for name in ("ddrm", "dps"):
        eager = solvers.SOLVERS[name](y, op, prior, sigma_y=0.05, steps=6, generator=g())
        with solvers.runtime(compile=mode):
            compiled = solvers.SOLVERS[name](y, op, prior, sigma_y=0.05, steps=6, generator=g())
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    # bf16 + channels-last: one network call against fp32 (8 mantissa bits: ~0.4 % of the ε output)
    x = torch.randn(2, *SHAPE, dtype=torch.float64, device="cuda", generator=g())
    ref = Network(prior)(x, 0.5)
    with solvers.runtime(autocast=True, channels_last=True):
        solvers.ddrm(y, op, prior, sigma_y=0.05, steps=6, generator=g())  # the whole path runs
    low = Network(prior, autocast=True, channels_last=True)(x, 0.5)
    assert float((low - ref).abs().max()) < 0.02 * (1 + float(ref.abs().max()))


def test_operators_draw_their_parameters_with_cpu_generators():
    """A seed gives the same mask on every machine: a generator on another device is refused."""
    with pytest.raises(ValueError, match="CPU generator.*op.to\\(device\\)"):
        O.Inpainting(O.masks.RandomPixelMask(0.5), SHAPE, generator=SimpleNamespace(device=torch.device("meta")))


def test_a_network_prior_lives_on_its_networks_device():
    """Wrapping a network that is already on a device puts the σ → timestep table there too."""
    from test_compile import TinyEps
    from invdiff.priors import NetworkPrior, VPSchedule

    prior = NetworkPrior(TinyEps().to("meta"), "eps", VPSchedule(), shape=SHAPE)
    assert prior._log_sigmas.device.type == "meta" and O.base.module_device(prior).type == "meta"
    cast = NetworkPrior(TinyEps(), "eps", VPSchedule(), shape=SHAPE).to(torch.float32)  # the network in float32
    assert cast._log_sigmas.dtype == torch.float64  # the table keeps its precision
