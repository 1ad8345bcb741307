"""The compiled network call: traced once per input shape, never once per noise level.

Counted with a counting dynamo backend (no inductor code generation, so it is quick on a CPU):
every frame dynamo compiles, recompilations included, adds one to ``frame_count``. Before σ
reached the compiled denoiser as a tensor, each noise level was a new guard (``sigma == 41.1…``)
and a new compilation, until dynamo's recompile limit (8) gave up compiling at all.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import operators as O
from invdiff import reconstruct, solvers
from invdiff.priors import CountingPrior, GaussianPrior, NetworkPrior, VESchedule, VPSchedule
from invdiff.solvers import network

SHAPE = (1, 8, 8)
OP = O.Inpainting(O.masks.RandomPixelMask(0.5), SHAPE, seed=0)


class TinyEps(torch.nn.Module):
    """An ε-network with a sinusoidal timestep embedding, as guided-diffusion's UNets have."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.out = torch.nn.Conv2d(4, 1, 3, padding=1)
        for p in self.parameters():
            p.data = 0.1 * torch.randn(p.shape, generator=g)

    def forward(self, x, t):
        freqs = torch.arange(1, 5, dtype=x.dtype, device=x.device)[None, :, None, None]
        emb = torch.sin(t[:, None, None, None] / 1000.0 * freqs)
        return self.out(torch.tanh(self.conv(x) + emb))


@pytest.fixture
def counter(monkeypatch):
    """``runtime(compile=True)`` through a counting backend; dynamo's caches cleared around."""
    torch._dynamo.reset()
    cnt = CompileCounter()
    monkeypatch.setattr(network, "_torch_compile", functools.partial(torch.compile, backend=cnt))
    yield cnt
    torch._dynamo.reset()


def vp_prior(**kw):
    return NetworkPrior(TinyEps(), "eps", VPSchedule("linear", 1000), shape=SHAPE, **kw)


def measurement(n=2):
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return OP.measure(x, O.GaussianNoise(0.05), generator=torch.Generator().manual_seed(2))


def gens(n=2):
    return [torch.Generator().manual_seed(10 + i) for i in range(n)]


@pytest.mark.parametrize("name", ["ddrm", "dps", "diffpir"])
def test_one_compilation_for_every_noise_level(counter, name):
    prior, y = vp_prior(), measurement()
    solver = solvers.SOLVERS[name]
    eager = solver(y, OP, prior, sigma_y=0.05, steps=12, generator=gens())
    with solvers.runtime(compile=True):
        compiled = solver(y, OP, prior, sigma_y=0.05, steps=12, generator=gens())
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
        assert counter.frame_count == 1, f"{counter.frame_count} compilations for 12 noise levels"
        # another solve with other noise levels, the same shapes: nothing new to compile
        solver(y, OP, prior, sigma_y=0.05, steps=5, generator=gens())
        assert counter.frame_count == 1
        # a new batch size is a new shape (dynamic=False): one more, once
        solver(y[:1], OP, prior, sigma_y=0.05, steps=5, generator=gens(1))
        solver(y[:1], OP, prior, sigma_y=0.05, steps=7, generator=gens(1))
    assert counter.frame_count == 2


@pytest.mark.parametrize("make", [lambda: NetworkPrior(TinyEps(), "eps", VESchedule(0.01, 50.0), shape=SHAPE),
                                  lambda: vp_prior(snap=True),
                                  lambda: GaussianPrior(torch.full(SHAPE, 0.5), 0.1, shape=SHAPE)],
                         ids=["ve", "vp-snapped", "gaussian"])
def test_other_priors_compile_once_and_agree(counter, make):
    prior, y = make(), measurement()
    eager = solvers.ddrm(y, OP, prior, sigma_y=0.05, steps=9, generator=gens())
    with solvers.runtime(compile=True):
        compiled = solvers.ddrm(y, OP, prior, sigma_y=0.05, steps=9, generator=gens())
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1


def test_the_runtime_context_compiles_and_a_bad_mode_is_refused(counter):
    prior, y = vp_prior(), measurement()
    with solvers.runtime(compile=True):
        solvers.ddnm(y, OP, prior, sigma_y=0.05, steps=4, generator=gens())
    assert counter.frame_count == 1
    solvers.ddnm(y, OP, prior, sigma_y=0.05, steps=4, generator=gens())  # outside: eager
    assert counter.frame_count == 1
    with pytest.raises(ValueError, match="compile must be"):
        with solvers.runtime(compile="fastest"):
            pass
    with pytest.raises(ValueError, match="compile must be"):
        reconstruct(y, OP, prior, "ddnm", sigma_y=0.05, steps=4, compile="fastest")
    assert counter.frame_count == 1


def test_a_wrapper_overriding_the_denoiser_is_not_bypassed(counter):
    """A subclass that alters ``denoiser`` (here: NaN from the third call) is called on the
    compiled path too, so its behaviour (and the solver's NaN guard) is kept."""

    class Poisoned(CountingPrior):
        def denoiser(self, x, sigma):
            out = super().denoiser(x, sigma)
            return out * float("nan") if self.calls >= 3 else out

    prior = Poisoned(vp_prior())
    counting = CountingPrior(vp_prior())  # a plain counting wrapper counts compiled calls too
    with solvers.runtime(compile=True):
        with pytest.raises(solvers.SolverDivergedError, match="step 2"):
            solvers.ddrm(measurement(), OP, prior, sigma_y=0.05, steps=6, generator=gens())
        solvers.ddrm(measurement(), OP, counting, sigma_y=0.05, steps=6, generator=gens())
    assert counting.calls == 6


def test_checks_stay_outside_the_compiled_region(counter):
    prior = vp_prior()
    with pytest.raises(ValueError, match="expected x of shape"):
        network.Network(prior, compile=True)(torch.zeros(2, 1, 8, 9, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        network.Network(prior, compile=True)(torch.zeros(2, *SHAPE, dtype=torch.float64), 0.0)
    assert counter.frame_count == 0  # refused before anything was traced


def test_channels_last_keeps_values():
    prior, y = vp_prior(), measurement()
    plain = solvers.ddrm(y, OP, prior, sigma_y=0.05, steps=5, generator=gens())
    with solvers.runtime(channels_last=True):
        cl = solvers.ddrm(y, OP, prior, sigma_y=0.05, steps=5, generator=gens())
    assert prior.net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, plain, rtol=1e-5, atol=1e-6)


def test_reconstruct_calls_share_one_compilation(counter):
    """``invdiff.reconstruct(..., compile=True)`` compiles the network call. It wraps the prior in a
    new counting wrapper per call (one per image in the app): the wrapped prior's compilation is
    reused and the network calls are still counted."""
    prior, y = vp_prior(), measurement()
    runs = [reconstruct(y, OP, prior, "ddrm", sigma_y=0.05, seed=s, steps=5, compile=True) for s in range(3)]
    assert counter.frame_count == 1 and all(r.nfe == 5 for r in runs)
    eager = reconstruct(y, OP, prior, "ddrm", sigma_y=0.05, seed=2, steps=5)
    torch.testing.assert_close(runs[2].samples, eager.samples, rtol=1e-5, atol=1e-6)


def test_solvers_have_no_run_time_flags():
    """Run-time settings belong to the network call (``runtime`` / ``reconstruct``), not to a
    paper's signature (issue 24, item 7)."""
    import inspect

    from invdiff.solvers._common import setup

    for f in (*solvers.SOLVERS.values(), setup):
        assert not {"autocast", "compile", "checkpoint", "channels_last"} & set(inspect.signature(f).parameters), f
