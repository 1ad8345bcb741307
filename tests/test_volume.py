"""Volume operators (operators/volume.py): a stack of 2-D operators applied slice by slice.

Each stack is checked against its own slices applied one at a time, and through the mathematics the
conformance suite asks of 2-D operators (adjointness on odd sizes in float64, SVD, pseudo-inverse
and prox identities, persistence), plus the shape refusals.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import operators as O

C, D, H, W = 1, 5, 9, 7  # odd, non-square slices
B = 2


def rand(shape, seed=0, dtype=torch.float64):
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dot(a, b):
    return float((a * b).sum())


def dense(fn, in_shape):
    """The matrix of a linear map on a single item (column j = fn(e_j))."""
    d = int(np.prod(in_shape))
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *in_shape)
    return torch.cat([fn(eye[i : i + 1]) for i in range(d)]).reshape(d, -1).T.numpy()


def _per_slice_inpainting():
    g = torch.Generator().manual_seed(3)
    return O.SliceStack([O.Inpainting(O.RandomPixelMask(0.5), (2, H, W), generator=g) for _ in range(D)])


STACKS = {
    "ct-shared": lambda: O.VolumeParallelBeamCT((C, D, 11, 11), angles=5),
    "mri-per-slice-real": lambda: O.VolumeSingleCoilMRI(O.RandomLinesMask(3, 0.1), (1, D, H, W), seed=0),
    "mri-per-slice-complex": lambda: O.VolumeSingleCoilMRI(O.RandomLinesMask(3, 0.1), (2, D, H, W), seed=1),
    "mri-shared": lambda: O.SliceStack(O.SingleCoilMRI(O.RandomLinesMask(3, 0.1), (1, H, W), seed=2), depth=D),
    "blur-shared-svd": lambda: O.SliceStack(O.Blur(O.GaussianKernel(3, 1.0), (2, H, W), "circular"), depth=3),
    "blur-shared-cg": lambda: O.SliceStack(O.Blur(torch.rand(3, 4, generator=torch.Generator().manual_seed(1),
                                                             dtype=torch.float64), (1, H, W), "reflect"), depth=3),
    "inpaint-per-slice": _per_slice_inpainting,
}


@pytest.fixture(scope="module", params=sorted(STACKS))
def stack(request):
    return STACKS[request.param]()


def by_slice(op, method, t, axis):
    """Apply slice d's operator to slice d of ``t`` (``axis`` 2 for images, 1 for measurements)."""
    outs = [getattr(s, method)(t.select(axis, d)) for d, s in enumerate(op.slices)]
    out_axis = 1 if method in ("A", "U") else 2
    return torch.stack(outs, out_axis)


# ---------------------------------------------------------------------------------------------
# the contract: equal to the slices, adjoint, SVD, pinv, prox
# ---------------------------------------------------------------------------------------------
def test_equals_slice_by_slice_application(stack):
    op = stack
    x, y, z = rand(op.img_size, 1), rand(op.meas_size, 2), rand(op.img_size, 3)
    assert op.img_size[1] == op.meas_size[0] == op.depth == len(op.slices)
    assert tuple(op.A(x).shape) == (B, *op.meas_size)
    assert torch.allclose(op.A(x), by_slice(op, "A", x, 2), atol=1e-12)
    assert torch.allclose(op.A_adjoint(y), by_slice(op, "A_adjoint", y, 1), atol=1e-12)
    a, b = op.A_dagger(y), by_slice(op, "A_dagger", y, 1)
    if op.has_svd or hasattr(op.slices[0].engine, "pinv"):
        assert torch.allclose(a, b, atol=1e-9)
    else:
        # min-norm CG on an ill-conditioned blur stops at cg_max_iter (normal-equation residual ≈ 2 %):
        # the stacked batch and the slices run the same iterations, but round-off in batched
        # convolutions of other sizes grows over 100 unconverged steps — equal to CG's own accuracy
        ne = lambda v: float((op.A_adjoint(op.A(v)) - op.A_adjoint(y)).norm() / op.A_adjoint(y).norm())  # noqa: E731
        assert ne(a) <= 1.01 * ne(b) + 1e-12
        assert float((a - b).norm() / b.norm()) < 1e-3
    expected = torch.stack([s.prox_l2(z[:, :, d], y[:, d], 0.7) for d, s in enumerate(op.slices)], 2)
    assert torch.allclose(op.prox_l2(z, y, 0.7), expected, atol=1e-9)
    if op.has_svd:
        assert torch.allclose(op.V_adjoint(x), by_slice(op, "V_adjoint", x, 2), atol=1e-12)
        assert torch.allclose(op.U_adjoint(y), by_slice(op, "U_adjoint", y, 1), atol=1e-12)


def test_adjointness_on_odd_sizes(stack):
    op = stack
    x, y = rand(op.img_size, 4), rand(op.meas_size, 5)
    lhs, rhs = dot(op.A(x), y), dot(x, op.A_adjoint(y))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + op.A(x).norm().item() * y.norm().item())


def test_capabilities_are_the_slices_intersection(stack):
    op = stack
    caps = frozenset.intersection(*(frozenset(s.capabilities) for s in op.slices))
    assert op.capabilities == caps and op.capabilities <= set(O.CAPABILITIES)
    assert {"linear", "adjoint", "pinv", "prox_l2", "differentiable"} <= op.capabilities
    assert ("svd" in op.capabilities) == op.has_svd == all(s.has_svd for s in op.slices)
    assert op.closed_form == frozenset.intersection(*(frozenset(s.closed_form) for s in op.slices))
    O.require(op, "a 3-D solver", ["linear", "adjoint", ("svd", "pinv")])


def test_one_slice_without_svd_removes_svd_from_the_stack():
    kernel = torch.rand(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with_svd = O.Blur(kernel, (1, H, W), "circular")
    without = O.Blur(kernel, (1, H, W), "reflect")
    assert with_svd.has_svd and not without.has_svd
    op = O.SliceStack([with_svd, without, with_svd])
    assert "svd" not in op.capabilities and not op.has_svd and op.closed_form == frozenset()
    with pytest.raises(O.CapabilityError, match="no exact SVD"):
        op.V_adjoint(rand(op.img_size))
    with pytest.raises(O.CapabilityError, match="'svd'"):
        O.require(op, "ddrm", ["svd"])


def test_svd_identities(stack):
    op = stack
    if not op.has_svd:
        pytest.skip("no SVD")
    x, y, z = rand(op.img_size, 8), rand(op.meas_size, 9), rand(op.img_size, 10)
    s = op.singular_values
    assert s.dtype == torch.float64 and bool((s >= 0).all())
    assert torch.broadcast_shapes(s.shape, (B, *op.img_size)) == (B, *op.img_size)
    nz = (s > 0).to(torch.float64).expand_as(z)
    assert torch.allclose(op.U(s * op.V_adjoint(x)), op.A(x), atol=1e-12)
    assert torch.allclose(op.V_adjoint(op.V(z)), z, atol=1e-12)
    assert torch.allclose(op.V(op.V_adjoint(x)), x, atol=1e-12)
    assert torch.allclose(op.U_adjoint(op.U(z)), nz * z, atol=1e-12)
    assert abs(dot(op.U(z), y) - dot(z, op.U_adjoint(y))) < 1e-11 * z.norm() * y.norm()
    assert torch.allclose(op.V(s * op.U_adjoint(y)), op.A_adjoint(y), atol=1e-12)


@pytest.mark.parametrize("name", ["mri-per-slice-real", "mri-per-slice-complex", "blur-shared-svd"])
def test_singular_values_and_pinv_match_the_dense_matrix(name):
    op = STACKS[name]()
    M = dense(op.A, op.img_size)
    expected = np.sort(np.linalg.svd(M, compute_uv=False))[::-1]
    got = np.sort(op.singular_values.expand(1, *op.img_size).flatten().numpy())[::-1][: expected.size]
    np.testing.assert_allclose(got, expected, atol=1e-12 * expected.max())
    Mp = np.linalg.pinv(M, rcond=op.pinv_rtol)
    np.testing.assert_allclose(dense(op.A_dagger, op.meas_size), Mp, atol=1e-9 * np.abs(Mp).max())


def test_pinv(stack):
    op = stack
    x = rand(op.img_size, 11)
    ax = op.A(x)
    xp = op.A_dagger(ax)
    if op.has_svd:
        assert (op.A(xp) - ax).norm() <= 1e-5 * ax.norm()
        assert torch.allclose(op.A_dagger(op.A(xp)), xp, atol=1e-9 * xp.norm().item())
    else:
        assert (op.A(xp) - ax).norm() <= 0.05 * ax.norm()


def test_prox_l2_optimality_with_per_volume_gamma(stack):
    op = O.from_dict(stack.to_dict())
    if not op.has_svd:  # the slices' conjugate gradients, tightened through the stack
        op.cg_tol, op.cg_max_iter = 1e-13, 3000
        assert all(s.cg_tol == 1e-13 and s.cg_max_iter == 3000 for s in op.slices)
    z, y = rand(op.img_size, 12), rand(op.meas_size, 13)
    for gamma in (0.3, torch.tensor([0.1, 10.0], dtype=torch.float64)):
        p = op.prox_l2(z, y, gamma)
        rho = 1.0 / torch.as_tensor(gamma, dtype=torch.float64).reshape(-1, *[1] * len(op.img_size))
        grad = op.A_adjoint(op.A(p) - y) + rho * (p - z)
        assert grad.norm() <= 1e-9 * (op.A_adjoint(y).norm() + (rho * z).norm())
    with pytest.raises(ValueError, match="gamma must be > 0"):
        op.prox_l2(z, y, 0.0)


def test_batch_items_and_float32(stack):
    op = stack
    x, y = rand(op.img_size, 14), rand(op.meas_size, 15)
    x2, y2 = x.clone(), y.clone()
    x2[1] *= -3.0
    y2[1] += 1.0
    assert torch.allclose(op.A(x2)[0], op.A(x)[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(op.A_dagger(y2)[0], op.A_dagger(y)[0], rtol=1e-12, atol=1e-12)
    y32 = op.A(x.float())
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), op.A(x), atol=1e-5 * (1 + op.A(x).abs().max().item()))


def test_gradcheck():
    op = STACKS["mri-per-slice-real"]()
    x = rand(op.img_size, 16).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)


# ---------------------------------------------------------------------------------------------
# the ready-made volumes
# ---------------------------------------------------------------------------------------------
def test_volume_ct_is_the_2d_ct_on_every_axial_slice():
    op = O.VolumeParallelBeamCT((1, 4, 16, 16), angles=8)
    ct = O.ParallelBeamCT((1, 16, 16), angles=8)
    assert op.shared and op.modality == "ct" and not op.complex_image
    assert torch.equal(op.angles, ct.angles) and tuple(op.meas_size) == (4, *ct.meas_size)
    x = rand(op.img_size, 17)
    for d in range(4):
        assert torch.allclose(op.A(x)[:, d], ct.A(x[:, :, d]), atol=1e-12)


def test_volume_mri_draws_one_mask_per_slice_from_its_seed():
    mask = O.FastMRIMask("random", [0.08], [4])
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    op = O.VolumeSingleCoilMRI(mask, (1, 8, 16, 64), seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state) and np.random.get_state()[1].tolist() == np_state[1].tolist()
    again = O.VolumeSingleCoilMRI(mask, (1, 8, 16, 64), seed=5)
    other = O.VolumeSingleCoilMRI(mask, (1, 8, 16, 64), seed=6)
    assert op.mask.shape == (8, 16, 64) and torch.equal(op.mask, again.mask) and not torch.equal(op.mask, other.mask)
    assert len({tuple(m[0].tolist()) for m in op.mask}) == 8  # every slice its own mask
    # the D masks are the generator's D draws, slice 0 first
    g = torch.Generator().manual_seed(5)
    for d in range(8):
        assert torch.equal(op.mask[d], mask((16, 64), generator=g))
    assert 3.0 < op.acceleration < 5.5 and op.modality == "mri" and not op.complex_image
    assert O.VolumeSingleCoilMRI(mask, (2, 8, 16, 64), seed=5).complex_image
    # given masks
    fixed = O.VolumeSingleCoilMRI(op.mask, (1, 8, 16, 64))
    x = rand(fixed.img_size, 18)
    assert torch.equal(fixed.A(x), op.A(x))
    lines = O.VolumeSingleCoilMRI(op.mask[:, 0], (1, 8, 16, 64))  # [D, W]: one line pattern per slice
    assert torch.equal(lines.mask, op.mask)


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ct-shared", "mri-per-slice-real", "mri-per-slice-complex"])
def test_flat_roundtrip_through_json_and_npz(name, tmp_path):
    op = STACKS[name]()
    d = op.to_dict()
    arrays = {k: v for k, v in d["params"].items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in d["params"].items() if not isinstance(v, np.ndarray)}
    np.savez(tmp_path / "p.npz", **arrays)
    meta = json.loads(json.dumps({"type": d["type"], "params": plain}))
    with np.load(tmp_path / "p.npz") as f:
        meta["params"].update({k: f[k] for k in f.files})
    rebuilt = O.from_dict(meta)
    x = rand(op.img_size, 19)
    assert type(rebuilt) is type(op) and torch.equal(rebuilt.A(x), op.A(x))
    assert rebuilt.capabilities == op.capabilities


@pytest.mark.parametrize("name", sorted(STACKS))
def test_nested_roundtrip_through_a_result_file(name, tmp_path):
    """A generic stack saves its slices' dicts (nested): rebuilt in-process and through the result
    files' tree writer (arrays as HDF5 datasets)."""
    import h5py

    from invdiff.data.results import read_tree, write_tree

    op = STACKS[name]()
    x = rand(op.img_size, 20)
    assert torch.equal(O.from_dict(op.to_dict()).A(x), op.A(x))
    with h5py.File(tmp_path / "op.h5", "w") as f:
        write_tree(f.create_group("operator"), op.to_dict())
    with h5py.File(tmp_path / "op.h5", "r") as f:
        rebuilt = O.from_dict(read_tree(f["operator"]))
    assert torch.equal(rebuilt.A(x), op.A(x)) and rebuilt.shared == op.shared


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------
def test_shape_errors_are_refused():
    op = STACKS["mri-per-slice-real"]()
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 5, 9, 7\]"):
        op.A(torch.zeros(B, 1, 9, 7, dtype=torch.float64))  # a 2-D image
    with pytest.raises(ValueError, match="must have shape"):
        op.A(torch.zeros(B, 1, 4, 9, 7, dtype=torch.float64))  # wrong depth
    with pytest.raises(ValueError, match="y must have shape"):
        op.A_adjoint(torch.zeros(B, 4, 2, 9, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        x = rand(op.img_size)
        x[0, 0, 2, 0, 0] = float("nan")
        op.measure(x, O.GaussianNoise(0.1), generator=torch.Generator().manual_seed(0))


def test_bad_stacks_are_refused():
    mri = O.SingleCoilMRI(O.RandomLinesMask(3, 0.1), (1, H, W), seed=0)
    with pytest.raises(ValueError, match="give depth"):
        O.SliceStack(mri)
    with pytest.raises(ValueError, match="3 slice operators but depth=4"):
        O.SliceStack([mri, mri, mri], depth=4)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        O.SliceStack(mri, depth=0)
    with pytest.raises(ValueError, match="same img_size and meas_size"):
        O.SliceStack([mri, O.SingleCoilMRI(O.RandomLinesMask(3, 0.1), (1, H, W + 2), seed=0)])
    with pytest.raises(ValueError, match="not a linear invdiff operator"):
        O.SliceStack(O.PhaseRetrieval((1, H, W)), depth=2)
    with pytest.raises(ValueError, match="act on 2-D images"):
        O.SliceStack(O.SliceStack(mri, depth=2), depth=3)
    with pytest.raises(ValueError, match="per-image masks"):
        O.SliceStack(O.Inpainting(O.RandomPixelMask(0.5), (1, H, W), batch_size=2, seed=0), depth=2)
    with pytest.raises(ValueError, match="got no slice operator"):
        O.SliceStack([])
    with pytest.raises(ValueError, match=r"img_size must be \(C, D, N, N\)"):
        O.VolumeParallelBeamCT((1, 16, 16))
    with pytest.raises(ValueError, match="masks must be"):
        O.VolumeSingleCoilMRI(torch.ones(3, H, W), (1, D, H, W))
    with pytest.raises(ValueError, match="seed/generator apply only"):
        O.VolumeSingleCoilMRI(torch.ones(D, H, W), (1, D, H, W), seed=0)


def test_described_and_named_for_the_apps():
    op = STACKS["mri-per-slice-real"]()
    assert "5 real slices" in op.describe() and "per-slice masks" in op.describe()
    generic = STACKS["blur-shared-svd"]()
    assert generic.modality is None and "3 slices, one Blur" in generic.describe()
    assert O.SliceStack.modality is None and O.VolumeSingleCoilMRI.modality == "mri"
    assert O.VolumeParallelBeamCT.modality == "ct"
    assert STACKS["mri-shared"]().modality == "mri"  # a generic stack takes its slices' modality
    assert not op.tileable
