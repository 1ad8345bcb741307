"""Property-based checks (hypothesis) over operator shapes and parameters, and over config overrides.

test_operator_conformance.py runs every registered operator configuration at one fixed odd size;
here the same identities are checked over drawn sizes (odd and even, 1 or 3 channels, complex MRI
images), drawn kernels, masks, factors and paddings:

* adjointness ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ of every linear operator;
* the SVD, ``A x = U(s ⊙ Vᵀ x)``, ``Aᵀ y = V(s ⊙ Uᵀ y)`` and ``Vᵀ V = I``, where there is one;
* the pseudo-inverse, ``A A⁺ A = A``, where it is exact (an SVD);
* ``to_dict`` → JSON + arrays → ``from_dict`` rebuilds the same operator;

and over the app's config groups: drawn operator × solver (× noise × data) choices compose and pass
the override check; drawn unknown names and keys always get a one-paragraph message from
``explain_overrides`` that names them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import operators as O
from invdiff.apps.app import config
from invdiff.apps.common import GROUPS, choices
from invdiff.apps.cli import explain_overrides
from operator_registry import BATCH
from test_operator_conformance import dot, per_image

FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PADDINGS = ("reflect", "symmetric", "replicate", "circular", "zeros", "valid")

sizes = st.integers(4, 13)  # odd and even
channels = st.sampled_from([1, 3])
seeds = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# operators drawn with their sizes and parameters
# ---------------------------------------------------------------------------------------------
@st.composite
def blurs(draw, svd_only=False):
    C, H, W = draw(channels), draw(sizes), draw(sizes)
    kh, kw = draw(st.integers(1, min(5, H))), draw(st.integers(1, min(5, W)))  # "valid" needs kernel <= image
    kind = draw(st.sampled_from(["random", "separable", "gaussian"]))
    padding = draw(st.sampled_from(PADDINGS))
    g = gen(draw(seeds))
    if kind == "random":
        kernel = torch.randn(kh, kw, generator=g, dtype=torch.float64)
    elif kind == "separable":
        kernel = torch.outer(torch.rand(kh, generator=g, dtype=torch.float64) + 0.1,
                             torch.randn(kw, generator=g, dtype=torch.float64))
    else:
        kernel = O.GaussianKernel(2 * ((min(kh, kw) - 1) // 2) + 1, draw(st.floats(0.3, 2.0)))()  # odd, fits
    if svd_only:
        assume(padding == "circular" or kind != "random")
    return O.Blur(kernel, (C, H, W), padding)


@st.composite
def inpaintings(draw):
    C, H, W = draw(channels), draw(sizes), draw(sizes)
    frac = draw(st.floats(0.0, 1.0))
    per = draw(st.sampled_from(["shared", "per-channel", "per-image"]))
    g = gen(draw(seeds))
    if per == "per-image":
        return O.Inpainting(O.RandomPixelMask(frac, exact=False), (C, H, W), batch_size=BATCH, generator=g)
    mask = (torch.rand(C if per == "per-channel" else 1, H, W, generator=g) >= frac).double()
    return O.Inpainting(mask, (C, H, W))


@st.composite
def downsamplings(draw):
    f = draw(st.sampled_from([2, 3, 4]))
    C, h, w = draw(channels), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    filt = draw(st.sampled_from(["average", "bicubic", "gaussian"]))
    padding = draw(st.sampled_from([p for p in PADDINGS if p != "valid"]))
    return O.Downsampling(f, (C, f * h, f * w), filt, padding=padding)


@st.composite
def single_coil_mris(draw, oversampled=True):
    C, H, W = draw(st.sampled_from([1, 2])), draw(st.integers(6, 13)), draw(st.integers(8, 14))
    mask = O.RandomLinesMask(draw(st.sampled_from([2, 3, 4])), draw(st.sampled_from([0.15, 0.25])))
    # an oversampled readout (k-space taller than the image) has no SVD
    pad = draw(st.integers(0, 3)) if oversampled else 0
    return O.SingleCoilMRI(mask, (C, H, W), kspace_size=(H + pad, W), seed=draw(seeds))


@st.composite
def multi_coil_mris(draw):
    C, H, W = draw(st.sampled_from([1, 2])), draw(st.integers(6, 11)), draw(st.integers(8, 12))
    maps = O.birdcage_maps(draw(st.integers(2, 3)), H, W)
    return O.MultiCoilMRI(O.RandomLinesMask(2, 0.25), maps, (C, H, W), seed=draw(seeds))


@st.composite
def cts(draw):
    n = draw(st.integers(5, 12))
    limited = draw(st.sampled_from([None, (0, 90), (30, 150)]))
    return O.ParallelBeamCT((1, n, n), angles=draw(st.integers(3, 9)), limited_angle=limited)


@st.composite
def matrices(draw):
    m, n = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    return O.MatrixOperator(torch.randn(m, n, generator=gen(draw(seeds)), dtype=torch.float64))


@st.composite
def nonlinear(draw):
    C, H, W = draw(channels), draw(sizes), draw(sizes)
    if draw(st.booleans()):
        return O.PhaseRetrieval((C, H, W), oversampling=draw(st.sampled_from([1.0, 1.5, 2.0])))
    return O.HDR((C, H, W), scale=draw(st.floats(1.0, 4.0)))


svd_operators = st.one_of(blurs(svd_only=True), inpaintings(), downsamplings(), single_coil_mris(oversampled=False),
                          matrices())
linear_operators = st.one_of(blurs(), inpaintings(), downsamplings(), single_coil_mris(), multi_coil_mris(), cts(),
                             matrices())


def rand(shape, seed):
    return torch.randn(BATCH, *shape, generator=gen(seed), dtype=torch.float64)


def assert_close(a, b, scale, rtol=1e-9):
    err = float((a - b).abs().max())
    assert err <= rtol * max(scale, 1e-300), (err, scale)


@FAST
@given(linear_operators, seeds)
def test_adjointness(op, seed):
    x, y = rand(op.img_size, seed), rand(op.meas_size, seed + 1)
    ax, aty = op.A(x), op.A_adjoint(y)
    assert ax.shape == (BATCH, *op.meas_size) and aty.shape == (BATCH, *op.img_size)
    lhs, rhs = dot(ax, y), dot(x, aty)
    assert abs(lhs - rhs) <= 1e-10 * (float(ax.norm() * y.norm()) + float(x.norm() * aty.norm()) + 1e-300)


@FAST
@given(svd_operators, seeds)
def test_svd_identities(op, seed):
    assert op.has_svd and "svd" in op.capabilities
    x, y, z = rand(op.img_size, seed), rand(op.meas_size, seed + 1), rand(op.img_size, seed + 2)
    s = op.singular_values
    assert s.dtype == torch.float64 and bool((s >= 0).all())
    smax = float(s.max())
    ax = op.A(x)
    assert_close(op.U(s * op.V_adjoint(x)), ax, smax * float(x.abs().max()) * x[0].numel())
    assert_close(op.V(s * op.U_adjoint(y)), op.A_adjoint(y), smax * float(y.abs().max()) * y[0].numel())
    assert_close(op.V_adjoint(op.V(z)), z, float(z.abs().max()) * z[0].numel())  # V orthonormal
    nz = (s > 0).to(torch.float64).expand_as(z)
    assert_close(op.U_adjoint(op.U(z)), nz * z, float(z.abs().max()) * z[0].numel())  # U too, where s > 0


@FAST
@given(svd_operators, seeds)
def test_pinv_reproduces_the_range(op, seed):
    """A A⁺ A = A, to the truncation of singular values below ``pinv_rtol · max s``."""
    x = rand(op.img_size, seed)
    ax = op.A(x)
    aapa = op.A(op.A_dagger(ax))
    s = op.singular_values
    cut = float(s.max()) * op.pinv_rtol  # the part of A that A⁺ ignores
    bound = 10 * cut * float(x.norm()) + 1e-9 * float(ax.norm()) + 1e-12
    for i in range(BATCH):
        assert float((aapa[i] - ax[i]).norm()) <= bound, (float((aapa[i] - ax[i]).norm()), bound)


@FAST
@given(st.one_of(linear_operators, nonlinear()), seeds)
def test_to_dict_from_dict_round_trip(op, seed):
    d = op.to_dict()
    arrays = {k: v for k, v in d["params"].items() if isinstance(v, np.ndarray)}
    plain = json.loads(json.dumps({k: v for k, v in d["params"].items() if k not in arrays}))
    rebuilt = O.from_dict({"type": d["type"], "params": {**plain, **{k: a.copy() for k, a in arrays.items()}}})
    assert type(rebuilt) is type(op) and rebuilt.capabilities == op.capabilities
    assert tuple(rebuilt.img_size) == tuple(op.img_size) and tuple(rebuilt.meas_size) == tuple(op.meas_size)
    x = rand(op.img_size, seed)
    assert torch.equal(rebuilt.A(x), op.A(x))
    if not per_image(op):
        assert torch.equal(rebuilt.A(x[:1]), op.A(x[:1]))
    assert rebuilt.to_dict()["type"] == d["type"]


# ---------------------------------------------------------------------------------------------
# config overrides
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def group_config(group: str, name: str):
    return OmegaConf.load(resources.files("invdiff.configs") / group / f"{name}.yaml")


@functools.lru_cache(maxsize=None)
def default_keys(parent: str) -> frozenset:
    """The keys of the default config at ``parent`` (the top level for "")."""
    node = OmegaConf.select(config(), parent) if parent else config()
    return frozenset(str(k) for k in node.keys())


CHOICES = {g: choices(g) for g in GROUPS}
RESERVED = {"true", "false", "null", "none", "nan", "inf"}
names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(lambda s: s not in RESERVED)


@settings(max_examples=8, deadline=None, database=None)
@given(st.sampled_from(CHOICES["operator"]), st.lists(st.sampled_from(CHOICES["solver"]), min_size=1, max_size=2,
                                                     unique=True),
       st.sampled_from(CHOICES["noise"]), st.sampled_from(["phantoms", "sample_image", "image_views"]),
       st.integers(1, 1000), st.integers(0, 2**31 - 1))
def test_valid_operator_solver_choices_compose(operator, solvers, noise, data, steps, seed):
    overrides = [f"operator={operator}", f"solver={','.join(solvers)}", f"noise={noise}", f"data={data}",
                 f"seed={seed}"]
    with_steps = all("steps" in group_config("solver", s) for s in solvers)
    if with_steps:
        overrides.append(f"solver.steps={steps}")
    assert explain_overrides(overrides) is None, overrides
    for solver in solvers:  # each value of the sweep, as Hydra would compose it
        cfg = config(*[o if not o.startswith("solver=") else f"solver={solver}" for o in overrides])
        assert cfg.operator._target_ == group_config("operator", operator)._target_
        assert cfg.solver._target_ == group_config("solver", solver)._target_
        assert cfg.noise._target_ == group_config("noise", noise)._target_ and cfg.seed == seed
        if with_steps:
            assert cfg.solver.steps == steps


@settings(max_examples=12, deadline=None, database=None)
@given(st.sampled_from(GROUPS), names, st.booleans())
def test_unknown_group_choices_are_named(group, name, in_a_sweep):
    assume(name not in CHOICES[group])
    value = f"{CHOICES[group][0]},{name}" if in_a_sweep else name
    msg = explain_overrides([f"{group}={value}"])
    assert msg is not None and "\n" not in msg and "Traceback" not in msg
    assert msg.startswith(f"unknown {group} '{name}'. Choose one of: {', '.join(CHOICES[group])}."), msg


@settings(max_examples=8, deadline=None, database=None)
@given(st.sampled_from(["", "solver", "operator", "noise", "data", "prior", "operator.mask"]), names,
       st.sampled_from(["1", "0.5", "abc", "[1,2]"]))
def test_unknown_keys_are_named(parent, key, value):
    assume(key not in default_keys(parent))
    full = f"{parent}.{key}" if parent else key
    msg = explain_overrides([f"{full}={value}"])
    assert msg is not None and "\n" not in msg and "Traceback" not in msg
    assert f"'{full}'" in msg, msg
