"""Network adapters, checked against analytic priors expressed as ε/x₀/v/score networks."""

from __future__ import annotations

import pytest
import torch

from invdiff.priors import EDMSchedule, GaussianMixturePrior, NetworkPrior, VESchedule, VPSchedule

SHAPE = (2, 2, 2)


def analytic():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 8, generator=g, dtype=torch.float64) * 2
    covs = torch.rand(3, 8, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixturePrior(means, [0.2, 0.5, 0.3], covs, shape=SHAPE)


class AsNetwork(torch.nn.Module):
    """The analytic denoiser disguised as a network of the given parameterisation."""

    def __init__(self, prior, parameterization, schedule, conditioning, learned_sigma=False, dtype=torch.float64):
        super().__init__()
        self.prior, self.param, self.schedule, self.cond = prior, parameterization, schedule, conditioning
        self.learned_sigma = learned_sigma
        self.weight = torch.nn.Parameter(torch.zeros((), dtype=dtype))  # sets the network dtype
        self.seen = []

    def sigma_of(self, c):
        c = c.to(torch.float64)
        if self.cond in ("timestep", "t"):
            return self.schedule.sigma(c)
        return {"sigma": c, "log_sigma": c.exp(), "edm": (4 * c).exp()}[self.cond]

    def forward(self, x_in, c):
        assert x_in.dtype == self.weight.dtype and c.dtype == self.weight.dtype
        self.seen.append(c.detach().clone())
        sigma = self.sigma_of(c).reshape(-1, 1, 1, 1)
        s = 1 / torch.sqrt(1 + sigma**2) if isinstance(self.schedule, VPSchedule) else torch.ones_like(sigma)
        x = x_in.to(torch.float64) / s
        D = self.prior.denoiser(x, sigma.flatten())
        out = {
            "eps": (x - D) / sigma,
            "x0": D,
            "v": s * (x - D) / sigma - s * sigma * D,
            "score": (D - x) / (sigma**2 * s),
        }[self.param]
        if self.learned_sigma:
            out = torch.cat([out, torch.full_like(out, 123.0)], 1)
        return out.to(x_in.dtype)


CASES = [
    ("eps", VPSchedule("linear"), "timestep"),
    ("eps", VPSchedule("cosine"), "timestep"),
    ("x0", VPSchedule("linear"), "timestep"),
    ("v", VPSchedule("cosine"), "timestep"),
    ("score", VPSchedule("linear"), "timestep"),
    ("score", VESchedule(0.01, 50.0), "sigma"),
    ("eps", VESchedule(0.01, 50.0), "t"),
    ("x0", EDMSchedule(), "edm"),
    ("eps", EDMSchedule(), "log_sigma"),
]


@pytest.mark.parametrize("param,schedule,cond", CASES, ids=[f"{p}-{s!r}-{c}" for p, s, c in CASES])
def test_adapter_reproduces_the_exact_denoiser(param, schedule, cond):
    truth = analytic()
    net = AsNetwork(truth, param, schedule, cond)
    prior = NetworkPrior(net, param, schedule, shape=SHAPE, conditioning=cond)
    g = torch.Generator().manual_seed(1)
    lo, hi = schedule.sigma_min, min(schedule.sigma_max, 80.0)
    sigma = torch.exp(torch.empty(6, dtype=torch.float64).uniform_(float(torch.tensor(lo).log()),
                                                                   float(torch.tensor(hi).log()), generator=g))
    x0 = truth.sample(6, g)
    x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(6, *SHAPE, generator=g, dtype=torch.float64)
    assert torch.allclose(prior.denoiser(x, sigma), truth.denoiser(x, sigma), atol=1e-9, rtol=1e-9)
    assert prior.sigma_min == schedule.sigma_min and prior.sigma_max == schedule.sigma_max


def test_learned_sigma_outputs_are_cut_to_the_first_channels():
    truth, sched = analytic(), VPSchedule()
    x = truth.sample(3, torch.Generator().manual_seed(2)) + 0.5
    for learned in ("auto", True):
        net = AsNetwork(truth, "eps", sched, "timestep", learned_sigma=True)
        prior = NetworkPrior(net, "eps", sched, shape=SHAPE, learned_sigma=learned)
        assert torch.allclose(prior.denoiser(x, 0.5), truth.denoiser(x, 0.5), atol=1e-9)
    wrong = NetworkPrior(AsNetwork(truth, "eps", sched, "timestep", learned_sigma=True), "eps", sched,
                         shape=SHAPE, learned_sigma=False)
    with pytest.raises(ValueError, match="4 channels, expected 2"):
        wrong.denoiser(x, 0.5)


def test_snapping_uses_training_steps_and_is_exact_on_them():
    truth, sched = analytic(), VPSchedule()
    net = AsNetwork(truth, "eps", sched, "timestep")
    prior = NetworkPrior(net, "eps", sched, shape=SHAPE, snap=True)
    x = truth.sample(4, torch.Generator().manual_seed(3))
    on_grid = sched.sigmas[torch.tensor([0, 10, 500, 999])]
    assert torch.allclose(prior.denoiser(x, on_grid), truth.denoiser(x, on_grid), atol=1e-9)
    prior.denoiser(x, torch.tensor([0.0123, 0.5, 3.3, 40.0], dtype=torch.float64))
    assert torch.equal(net.seen[-1], net.seen[-1].round())
    interp = NetworkPrior(AsNetwork(truth, "eps", sched, "timestep"), "eps", sched, shape=SHAPE)
    interp.denoiser(x, torch.tensor([0.0123, 0.5, 3.3, 40.0], dtype=torch.float64))
    assert not torch.equal(interp.net.seen[-1], interp.net.seen[-1].round())


def test_float32_network_under_float64_state():
    truth, sched = analytic(), EDMSchedule()
    net = AsNetwork(truth, "x0", sched, "sigma", dtype=torch.float32)
    prior = NetworkPrior(net, "x0", sched, shape=SHAPE)
    x = truth.sample(4, torch.Generator().manual_seed(4))
    out = prior.denoiser(x, 0.7)
    assert out.dtype == torch.float64
    assert torch.allclose(out, truth.denoiser(x, 0.7), atol=1e-4)


def test_affine_map_and_gradients():
    truth, sched = analytic(), EDMSchedule()
    prior = NetworkPrior(AsNetwork(truth, "x0", sched, "sigma"), "x0", sched, shape=SHAPE,
                         data_range=(0.0, 255.0), model_range=(-1.0, 1.0))
    phys = torch.tensor([0.0, 127.5, 255.0], dtype=torch.float64)
    assert torch.allclose(prior.to_model(phys), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(prior.to_physical(prior.to_model(phys)), phys)
    assert abs(prior.sigma_to_physical(0.1) - 12.75) < 1e-12
    x = truth.sample(2, torch.Generator().manual_seed(5)).requires_grad_(True)
    prior.denoiser(x, 1.0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_adapter_arguments():
    net = torch.nn.Identity()
    with pytest.raises(ValueError, match="unknown parameterization"):
        NetworkPrior(net, "epsilon", VPSchedule(), shape=SHAPE)
    with pytest.raises(ValueError, match="VP schedules only"):
        NetworkPrior(net, "v", EDMSchedule(), shape=SHAPE)
    with pytest.raises(ValueError, match="needs a VPSchedule"):
        NetworkPrior(net, "eps", EDMSchedule(), shape=SHAPE, conditioning="timestep")
    prior = NetworkPrior(lambda x, c: x[:, :1], "x0", EDMSchedule(), shape=SHAPE)
    with pytest.raises(ValueError, match="1 channels, expected 2"):
        prior.denoiser(torch.zeros(1, *SHAPE), 1.0)
