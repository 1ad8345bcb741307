"""Machinery every posterior sampler goes through: call shape, capability refusal before any work,
exact NFE, determinism, batch independence, callbacks, the NaN guard, bad input, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

import operators
from invdiff import solvers
from invdiff.priors import CountingPrior, GaussianPrior, Prior
from invdiff.priors.base import per_sample_sigma
from invdiff.solvers import SolverDivergedError

from invdiff.priors.analytic import smooth_cov

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 5)
PRIOR = GaussianPrior(torch.full((20,), 0.1), smooth_cov(4, 5, var=0.5), shape=SHAPE,
                      data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
INPAINT = operators.Inpainting(operators.masks.RandomPixelMask(0.5), SHAPE, seed=0)
REFLECT_BLUR = operators.Blur(torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 2.0], [1.0, 2.0, 1.5]]), SHAPE, padding="reflect")

# solver -> (kwargs for a short run, expected NFE for those kwargs)
CALLS = {
    "ddrm": (dict(steps=7), 7),
    "ddrm-simplified": (dict(steps=6, mode="simplified"), 6),
    "ddnm": (dict(steps=9), 9),
    "ddnm-travel": (dict(steps=10, travel_length=3, travel_repeat=2), 10 + 1 * 3 * 3),
    "ddnm-simplified": (dict(steps=5, mode="simplified"), 5),
    "pigdm": (dict(steps=6), 6),
    "pigdm-cg": (dict(steps=4, op=REFLECT_BLUR), 4),
    "pigdm-posterior": (dict(steps=5, guidance="posterior"), 5),
    "score_sde": (dict(steps=6), 12),
    "score_sde-nocorrector": (dict(steps=6, corrector_steps=0, noisy_projection=True), 6),
    "score_sde-cg": (dict(steps=4, corrector_steps=2, op=REFLECT_BLUR), 12),
    "dps": (dict(steps=7), 7),
    "dps-poisson": (dict(steps=5, likelihood="poisson", residual="physical"), 5),
    "mcg": (dict(steps=6), 6),
    "mcg-cg": (dict(steps=4, op=REFLECT_BLUR), 4),
    "reddiff": (dict(steps=8), 8),
    "tmpd": (dict(steps=5), 5),
    "tmpd-diagonal": (dict(steps=5, covariance="diagonal"), 5),
    "tmpd-blur": (dict(steps=4, op=REFLECT_BLUR), 4),
    "diffpir": (dict(steps=8), 8),
    "diffpir-cg": (dict(steps=5, op=REFLECT_BLUR), 5),
    # DAPS: levels × ODE steps; the Langevin steps call the operator only
    "daps": (dict(steps=4, ode_steps=2, langevin_steps=3, lr=1e-4), 8),
    "daps-hmc": (dict(steps=3, ode_steps=1, langevin_steps=2, mc="hmc", tau=None), 3),
    "daps-blur": (dict(steps=3, ode_steps=2, langevin_steps=2, op=REFLECT_BLUR), 6),
    # PnP-DM: per iteration, the grid levels below ρ_k (10-level grid 80 → 0.002: 7, 6, 6 below 10, 9, 8.1)
    "pnpdm": (dict(steps=3, prior_steps=10), 7 + 6 + 6),
    "pnpdm-prox": (dict(steps=2, prior_steps=10, rho=0.5, rho_min=0.5, likelihood="prox", prior_sampler="ode"), 4 + 4),
    "pnpdm-cg": (dict(steps=2, prior_steps=10, rho=0.5, rho_min=0.5, op=REFLECT_BLUR), 4 + 4),
    "pnpdm-langevin": (dict(steps=2, prior_steps=10, rho=0.01, rho_min=0.01, likelihood="langevin", langevin_steps=3), 1 + 1),
    # MCGdiff: one call per step on batch × particles states (chunk: ⌈2·4/3⌉ = 3 calls per step)
    "mcgdiff": (dict(steps=5, particles=4), 5),
    "mcgdiff-chunk": (dict(steps=3, particles=4, chunk=3), 9),
    "mcgdiff-systematic": (dict(steps=4, particles=3, resample="systematic", resample_threshold=0.5, eta=0.7), 4),
    # flow solvers: FlowDPS one call per step; D-Flow (steps + 1) solves of n ODE steps × k calls (Euler 1,
    # midpoint 2) with the graph, plus n calls of the blend initialisation's inversion
    "ot_ode": (dict(steps=6), 6),
    "ot_ode-cg": (dict(steps=4, op=REFLECT_BLUR), 4),
    "pnp_flow": (dict(steps=5, num_samples=2), 10),
    "ictm": (dict(steps=4, iters=2), 12),
    "flowdps": (dict(steps=6), 6),
    "dflow": (dict(steps=3, ode_steps=2, ode="euler"), 4 * 2 + 2),
    "dflow-midpoint": (dict(steps=2, ode_steps=2, ode="midpoint", init="noise"), 3 * 2 * 2),
    # consistency-model solvers: one call per step
    "cm4ir": (dict(steps=4), 4),
    "cm4ir-zeta": (dict(steps=3, zeta=3.0, deltas=[0.1, 0.0, 0.2]), 3),
    "pnp_cm": (dict(steps=4), 4),
    "pnp_cm-cg": (dict(steps=3, data_step="cg", op=REFLECT_BLUR), 3),
    # frontier solvers (issue 29): DDS, FPS-SMC (on batch × particles states) and LGD one call per step;
    # SITCOM without early stopping N·(K + 1) (K inner steps with the graph, then x̂₀); EnKG
    # N + updates·Σ K_i calls on batch × ensemble states (invdiff.solvers.enkg.enkg_cost)
    "dds": (dict(steps=6), 6),
    "dds-cg": (dict(steps=4, op=REFLECT_BLUR), 4),
    "fps_smc": (dict(steps=5, particles=3), 5),
    "lgd": (dict(steps=6, mc_samples=3), 6),
    "sitcom": (dict(steps=3, inner_steps=2, early_stop=False), 3 * 3),
    "enkg": (dict(steps=6, ensemble=4), None),
}


def tol(key):
    """Batch results agree to float tolerance; through a CG solve (tolerance 1e-5–1e-6) a 1e-9
    batch difference in the network can change a sample's iteration count, so to the CG tolerance
    (amplified over the steps) there."""
    cg = "op" in CALLS[key][0] or key.startswith("tmpd")  # TMPD solves by CG on every operator
    return dict(rtol=1e-4, atol=1e-4) if cg else dict(rtol=1e-7, atol=1e-8)


def solver_of(key):
    return getattr(solvers, key.split("-")[0])


class Counting(CountingPrior):
    """Counts network calls; optionally returns NaN from call ``nan_at`` on."""

    def __init__(self, inner, nan_at=None):
        super().__init__(inner)
        self.nan_at = nan_at

    def denoiser(self, x, sigma):
        out = super().denoiser(x, sigma)
        if self.nan_at is not None and self.calls >= self.nan_at:
            out = out * float("nan")
        return out


def measurement(op=INPAINT, n=3, seed=0, sigma_y=0.05):
    op = op_of(op) if isinstance(op, str) else op
    g = torch.Generator().manual_seed(seed)
    x = PRIOR.sample(n, g)
    return op.measure(x, operators.GaussianNoise(sigma_y), generator=g)


def op_of(key):
    return CALLS[key][0].get("op", INPAINT)


def run(key, y, prior=PRIOR, op=None, generator=None, sigma_y=0.05, **extra):
    kw = {k: v for k, v in CALLS[key][0].items() if k != "op"}
    op = op_of(key) if op is None else op
    return solver_of(key)(y, op, prior, sigma_y=sigma_y, generator=generator, **{**kw, **extra})


# the posterior samplers of the registry (the baselines pinv, tv, dpir: tests/test_baselines.py)
# (the volume solvers: tests/test_diffusionmbir.py, as they take volume operators only)
SAMPLERS = sorted(set(solvers.SOLVERS) - solvers.BASELINES - solvers.VOLUME_SOLVERS)


def test_every_solver_is_covered():
    assert {k.split("-")[0] for k in CALLS} == set(SAMPLERS)


@pytest.mark.parametrize("key", sorted(CALLS))
def test_nfe_is_exactly_documented(key):
    prior = Counting(PRIOR)
    run(key, measurement(key, n=2), prior=prior, generator=torch.Generator().manual_seed(0))
    expected = CALLS[key][1]
    if key == "enkg":  # counted by the solver's own cost function
        from invdiff.solvers.enkg import enkg_cost

        expected = enkg_cost(steps=6, ensemble=4)["network_calls"]
    assert prior.calls == expected


@pytest.mark.parametrize("key", sorted(CALLS))
def test_deterministic_given_the_generator(key):
    y = measurement(key)
    a = run(key, y, generator=torch.Generator().manual_seed(7))
    b = run(key, y, generator=torch.Generator().manual_seed(7))
    c = run(key, y, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, *SHAPE) and a.dtype == y.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("key", sorted(CALLS))
def test_batch_items_are_independent(key):
    y = measurement(key, n=3)
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    batch = run(key, y, generator=gens)
    alone = run(key, y[1:2], generator=[torch.Generator().manual_seed(12)])
    torch.testing.assert_close(batch[1:2], alone, **tol(key))


@pytest.mark.parametrize("key", sorted(CALLS))
def test_callback_sees_every_step(key):
    seen = []
    run(key, measurement(key, n=2), generator=torch.Generator().manual_seed(0),
        callback=lambda i, x, x0: seen.append((i, x.shape, x0.shape)))
    assert len(seen) >= 1 and [s[0] for s in seen] == list(range(len(seen)))
    assert all(s[1] == (2, *SHAPE) and s[2] == (2, *SHAPE) for s in seen)


@pytest.mark.parametrize("key", sorted(CALLS))
def test_nan_from_the_network_stops_with_a_clear_error(key):
    prior = Counting(PRIOR, nan_at=2)
    with pytest.raises(SolverDivergedError, match=key.split("-")[0] + r".*step"):
        run(key, measurement(key, n=2), prior=prior, generator=torch.Generator().manual_seed(0))


NONLINEAR_OK = {"dps", "reddiff", "daps", "pnpdm", "pnp_flow", "flowdps", "dflow", "pnp_cm", "lgd", "sitcom", "enkg"}
#: solvers that only evaluate the forward map (operators.BlackBoxOperator): they accept operators without gradients
DERIVATIVE_FREE = {"enkg"}
# shorter inner loops where a test runs a solver's defaults (the paper's 100-level grid and 100
# Langevin steps per iteration/level change nothing these tests check)
FAST = {"pnpdm": dict(prior_steps=10, langevin_steps=20), "daps": dict(langevin_steps=20),
        "dflow": dict(ode_steps=2, init="noise")}


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - NONLINEAR_OK))
def test_nonlinear_operator_is_refused_before_any_work(name):
    op = operators.HDR(SHAPE)
    prior = Counting(PRIOR)
    y = op.A(PRIOR.sample(2, torch.Generator().manual_seed(0)))
    with pytest.raises(operators.CapabilityError, match=name):
        solvers.SOLVERS[name](y, op, prior, sigma_y=0.05, steps=3)
    assert prior.calls == 0


@pytest.mark.parametrize("name", sorted(NONLINEAR_OK))
@pytest.mark.parametrize("op", [operators.HDR(SHAPE), operators.PhaseRetrieval(SHAPE, oversampling=1.5)],
                         ids=["hdr", "phase_retrieval"])
def test_gradient_solvers_run_on_nonlinear_operators(name, op):
    g = torch.Generator().manual_seed(0)
    y = op.A(PRIOR.sample(2, g))
    out = solvers.SOLVERS[name](y, op, PRIOR, sigma_y=0.05, steps=4, generator=g, **FAST.get(name, {}))
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()


class NotDifferentiable:
    capabilities = frozenset({"linear", "adjoint"})
    img_size = meas_size = SHAPE

    def describe(self):
        return "NotDifferentiable()"


class NotDifferentiableNonlinear(NotDifferentiable):
    capabilities = frozenset()

    def describe(self):
        return "NotDifferentiableNonlinear()"


@pytest.mark.parametrize("name", sorted(NONLINEAR_OK - DERIVATIVE_FREE))
def test_an_operator_without_gradients_is_refused(name):
    # a linear operator with Aᵀ serves the Langevin steps of DAPS and PnP-DM without autograd
    ops = [NotDifferentiableNonlinear()] + ([NotDifferentiable()] if name in ("dps", "reddiff") else [])
    for op in ops:
        with pytest.raises(operators.CapabilityError, match="differentiable"):
            solvers.SOLVERS[name](measurement(n=1), op, PRIOR, sigma_y=0.05, steps=2)


def test_ddrm_svd_mode_needs_an_svd_and_auto_falls_back():
    y = REFLECT_BLUR.A(PRIOR.sample(2, torch.Generator().manual_seed(0)))
    with pytest.raises(operators.CapabilityError, match="svd"):
        solvers.ddrm(y, REFLECT_BLUR, PRIOR, sigma_y=0.05, steps=3, mode="svd")
    out = solvers.ddrm(y, REFLECT_BLUR, PRIOR, sigma_y=0.05, steps=3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SAMPLERS)
def test_bad_input_is_refused_before_any_work(name):
    f = solvers.SOLVERS[name]
    y = measurement(n=2)
    prior = Counting(PRIOR)
    bad = [
        (dict(y=y[:, :, :3]), ValueError, "shape"),
        (dict(y=torch.where(y > 0.3, float("nan"), y)), ValueError, "NaN"),
        (dict(sigma_y=-0.1), ValueError, "sigma_y"),
        (dict(sigma_y=torch.tensor([0.1, 0.2, 0.3])), ValueError, "sigma_y"),
        (dict(steps=0), ValueError, "steps"),
        (dict(generator=[torch.Generator()]), ValueError, "generators"),
        (dict(y=y.to(torch.complex128)), ValueError, "real"),
    ]
    for override, err, match in bad:
        kw = dict(y=y, sigma_y=0.05, steps=3, generator=None) | override
        with pytest.raises(err, match=match):
            f(kw.pop("y"), INPAINT, prior, **kw)
    other = GaussianPrior(torch.zeros(16), 1.0, shape=(1, 4, 4))
    with pytest.raises(ValueError, match="prior models"):
        f(y, INPAINT, other, sigma_y=0.05, steps=3)
    assert prior.calls == 0


@pytest.mark.parametrize("key", sorted(CALLS))
def test_per_sample_sigma_y_equals_separate_runs(key):
    y = measurement(key, n=2)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    both = run(key, y, sigma_y=torch.tensor([0.05, 0.2]), generator=gens())
    second = run(key, y[1:], sigma_y=0.2, generator=gens()[1:])
    torch.testing.assert_close(both[1:], second, **tol(key))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key", sorted(CALLS))
def test_follows_the_input_device(key):
    prior = GaussianPrior(PRIOR.means[0], PRIOR.cov_matrices()[0], shape=SHAPE).cuda()
    y = measurement(n=2).cuda()
    op = operators.Inpainting(INPAINT.mask.cuda(), SHAPE)
    out = run(key, y, prior=prior, op=op, generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda"


SOLVER_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "solver").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(set(SOLVER_CONFIGS) - solvers.VOLUME_SOLVERS))
def test_solver_config_instantiates_alone_and_runs_two_steps(name):
    text = (ROOT / "configs" / "solver" / f"{name}.yaml").read_text()
    assert text.lstrip().startswith("#"), "solver configs start with their source comment"
    cfg = OmegaConf.load(ROOT / "configs" / "solver" / f"{name}.yaml")
    cfg.pop("steps", None)
    solver = instantiate(cfg)
    y = measurement(n=2)
    prior, kw = PRIOR, FAST.get(name, {})
    if name in solvers.BRIDGE_SOLVERS:  # a bridge solver runs a (here untrained, tiny) bridge prior
        from invdiff.priors.bridge import BridgePrior, BrownianBridge
        from invdiff.priors.unet import build_unet
        from invdiff.training.bridge import family_spec

        torch.manual_seed(0)
        prior = BridgePrior(build_unet(width=8, mults=(1,), emb=16), BrownianBridge(0.15), sigma_1=0.3,
                            spec=family_spec("mri", sigma_y=0.05), shape=SHAPE)
        kw = dict(allow_shift=True)  # the inpainting operator is not the bridge's family
    out = solver(y, INPAINT, prior, sigma_y=0.05, steps=2, generator=torch.Generator().manual_seed(0), **kw)
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_compose(name):
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=[f"experiment={name}"])
    assert cfg.solver._target_.startswith("invdiff.solvers.") and cfg.solver._partial_
    assert callable(instantiate(cfg.solver))



class TinyNet(Prior):
    """A small conv denoiser that records the dtype its convolution ran in."""

    def __init__(self):
        super().__init__(SHAPE, data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.seen = []

    def denoiser(self, x, sigma):  # σ: a float or [B] (the compiled path passes a tensor)
        s = per_sample_sigma(sigma, x)
        h = self.conv(x.float() / (1 + s.float()))
        self.seen.append(h.dtype)
        return (x / (1 + s**2) + 0.01 * h).to(x.dtype)


def test_autocast_setting_runs_the_network_in_bfloat16():
    from invdiff import reconstruct

    net = TinyNet()
    y = measurement(n=2)
    with solvers.runtime(autocast=True):
        out = solvers.ddrm(y, INPAINT, net, sigma_y=0.05, steps=3, generator=torch.Generator().manual_seed(0))
    assert set(net.seen) == {torch.bfloat16} and out.dtype == y.dtype and torch.isfinite(out).all()
    net.seen.clear()
    solvers.ddrm(y, INPAINT, net, sigma_y=0.05, steps=3, generator=torch.Generator().manual_seed(0))
    assert set(net.seen) == {torch.float32}
    net.seen.clear()
    reconstruct(y, INPAINT, net, "ddrm", sigma_y=0.05, steps=3, autocast=True)  # the API's keyword
    assert set(net.seen) == {torch.bfloat16}
    net.seen.clear()
    with solvers.runtime(autocast=True):  # None keeps the enclosing setting; False turns it off inside
        reconstruct(y, INPAINT, net, "ddrm", sigma_y=0.05, steps=3)
        assert set(net.seen) == {torch.bfloat16}
        net.seen.clear()
        reconstruct(y, INPAINT, net, "ddrm", sigma_y=0.05, steps=3, autocast=False)
        assert set(net.seen) == {torch.float32}


def test_compile_setting_gives_the_same_result():
    net = TinyNet()
    y = measurement(n=2)
    kw = dict(sigma_y=0.05, steps=3, generator=None)
    eager = solvers.diffpir(y, INPAINT, net, **(kw | {"generator": torch.Generator().manual_seed(0)}))
    with solvers.runtime(compile=True):
        compiled = solvers.diffpir(y, INPAINT, net, **(kw | {"generator": torch.Generator().manual_seed(0)}))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


class BlockNet(Prior):
    """A denoiser made of a ModuleList of conv blocks (the shape gradient checkpointing targets)."""

    def __init__(self):
        super().__init__(SHAPE, data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), torch.nn.SiLU()) for i in range(4))
        self.out = torch.nn.Conv2d(8, 1, 3, padding=1)

    def denoiser(self, x, sigma):
        h = x.float() / (1 + float(sigma))
        for block in self.blocks:
            h = block(h)
        return (x / (1 + float(sigma) ** 2) + 0.01 * self.out(h)).to(x.dtype)


def saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_gradient_checkpointing_saves_activation_memory_and_changes_nothing():
    from invdiff.solvers.network import Network

    net = BlockNet()
    x = torch.randn(2, *SHAPE, dtype=torch.float64, requires_grad=True)
    plain = saved_bytes(lambda: Network(net).with_grad(x, 0.5))
    ckpt = saved_bytes(lambda: Network(net, checkpoint=True).with_grad(x, 0.5))
    assert ckpt < 0.6 * plain
    assert "forward" not in vars(net.blocks[0])  # the patch is undone
    y = measurement(n=2)
    for name in ("dps", "pigdm", "tmpd", "mcg"):
        kw = dict(sigma_y=0.05, steps=3)
        a = solvers.SOLVERS[name](y, INPAINT, net, generator=torch.Generator().manual_seed(0), **kw)
        with solvers.runtime(checkpoint=True):
            b = solvers.SOLVERS[name](y, INPAINT, net, generator=torch.Generator().manual_seed(0), **kw)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class GradRecorder(Prior):
    def __init__(self, inner):
        super().__init__(inner.shape, data_range=inner.data_range, model_range=inner.model_range)
        self.inner, self.grad_mode = inner, []

    def denoiser(self, x, sigma):
        self.grad_mode.append(torch.is_grad_enabled() and x.requires_grad)
        return self.inner.denoiser(x, sigma)


@pytest.mark.parametrize("name", SAMPLERS)
def test_gradients_flow_only_where_needed(name):
    # only solvers that take a vector–Jacobian product through the network call it with a graph
    needs_graph = {"dps", "mcg", "pigdm", "tmpd", "ot_ode", "ictm", "dflow", "lgd"}
    prior = GradRecorder(PRIOR)
    solvers.SOLVERS[name](measurement(n=2), INPAINT, prior, sigma_y=0.05, steps=3, generator=torch.Generator().manual_seed(0),
                          **FAST.get(name, {}))
    # D-Flow differentiates through every ODE solve but its last one, which makes the returned image;
    # ICTM through its local optimisation, not through the Euler step along the trajectory
    # SITCOM through its inner optimisation of the network's input, not through the final x̂₀ call
    expected = {True, False} if name in ("dflow", "ictm", "sitcom") else ({True} if name in needs_graph else {False})
    assert set(prior.grad_mode) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_prior_or_operator_on_another_device_is_refused():
    y = measurement(n=2)
    with pytest.raises(ValueError, match="device"):
        solvers.ddrm(y, INPAINT, GaussianPrior(PRIOR.means[0], 1.0, shape=SHAPE).cuda(), sigma_y=0.05, steps=2)
    with pytest.raises(ValueError, match="device"):
        solvers.ddrm(y, operators.Inpainting(INPAINT.mask.cuda(), SHAPE), PRIOR, sigma_y=0.05, steps=2)


@pytest.mark.parametrize("name", ["dps", "mcg", "pigdm", "tmpd"])
def test_a_prior_without_gradients_is_refused_before_any_work(name):
    prior = Counting(PRIOR)
    prior.differentiable = False
    with pytest.raises(ValueError, match=f"'{name}'.*not differentiable"):
        solvers.SOLVERS[name](measurement(n=1), INPAINT, prior, sigma_y=0.05, steps=2)
    assert prior.calls == 0


def test_sampling_solvers_refuse_what_they_cannot_do_before_any_work():
    prior = Counting(PRIOR)
    y = measurement(n=2)
    with pytest.raises(operators.CapabilityError, match="svd"):
        solvers.mcgdiff(REFLECT_BLUR.A(PRIOR.sample(2, torch.Generator().manual_seed(0))), REFLECT_BLUR, prior,
                        sigma_y=0.05, steps=3)
    with pytest.raises(ValueError, match="tau"):
        solvers.daps(y, INPAINT, prior, sigma_y=0.0, steps=3, tau=None)
    small = GaussianPrior(PRIOR.means[0], 1.0, shape=SHAPE)
    small.sigma_max = 5.0  # a network trained up to σ = 5
    with pytest.raises(ValueError, match="sigma_max"):
        solvers.pnpdm(y, INPAINT, small, sigma_y=0.05, steps=3, rho=10.0)
    with pytest.raises(ValueError, match="Langevin"):
        solvers.pnpdm(y, INPAINT, prior, sigma_y=0.0, steps=3, likelihood="langevin")
    with pytest.raises(ValueError, match="eta"):
        solvers.mcgdiff(y, INPAINT, prior, sigma_y=0.05, steps=3, eta=0.0)
    assert prior.calls == 0


def test_daps_takes_a_per_entry_sigma_y():
    y = measurement(n=2)
    sig = torch.full_like(y, 0.05)
    sig[..., :2] = 0.2  # e.g. two noisier bands
    kw = dict(steps=3, ode_steps=1, langevin_steps=5, tau=None)
    a = solvers.daps(y, INPAINT, PRIOR, sigma_y=sig, generator=torch.Generator().manual_seed(0), **kw)
    b = solvers.daps(y, INPAINT, PRIOR, sigma_y=0.05, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.isfinite(a).all() and not torch.equal(a, b)


def test_score_sde_warns_when_its_projection_amplifies_noise():
    """On a blur (singular values spanning 10⁶) the hard projection A⁺(y − Ax) blows up y's noise
    (5 dB on patches64_deblur): score_sde says so; on a mask it stays silent."""
    import warnings

    import operators as O
    from invdiff.priors.analytic import smooth_gaussian
    from invdiff.solvers import score_sde

    prior = smooth_gaussian((1, 16, 16))
    blur = O.Blur(O.GaussianKernel(9, 1.5), img_size=(1, 16, 16), padding="reflect")
    with pytest.warns(UserWarning, match="amplifies the measurement noise"):
        score_sde(blur.A(prior.sample(1, torch.Generator().manual_seed(0))), blur, prior, sigma_y=0.01, steps=2)
    mask = O.Inpainting(O.masks.RandomPixelMask(0.5), (1, 16, 16), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_sde(mask.A(prior.sample(1, torch.Generator().manual_seed(0))), mask, prior, sigma_y=0.01, steps=2)


@pytest.mark.parametrize("op", [INPAINT, REFLECT_BLUR, operators.HDR(SHAPE)], ids=["inpaint", "blur", "hdr"])
def test_the_problem_is_seen_in_model_space(op):
    """``pb.y``, ``pb.forward`` and ``pb.residual`` are the model-space measurement model for
    linear and nonlinear operators alike: ``y_m ≈ forward(x_m)`` and ``residual = y_m − forward``."""
    from invdiff.solvers._common import setup

    x = PRIOR.sample(2, torch.Generator().manual_seed(0))
    y = op.A(x)  # noiseless
    pb = setup("test", y, op, PRIOR, sigma_y=0.05, steps=1, generator=None)
    x_m = PRIOR.to_model(x)
    torch.testing.assert_close(pb.forward(x_m), pb.y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pb.residual(x_m), torch.zeros_like(pb.y), rtol=0, atol=1e-12)
    z = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pb.residual(z), pb.y - pb.forward(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pb.residual(z), PRIOR.scale * pb.residual(z, physical=True))
    torch.testing.assert_close(pb.sigma_y, 0.05 * PRIOR.scale * torch.ones(2, dtype=torch.float64))
