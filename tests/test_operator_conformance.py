"""Every registered operator through the same mathematical checks (float64, odd sizes)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import operators as O
from operator_registry import ALL, BATCH, REGISTRY


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def op(request):
    """Linear operators: the whole suite."""
    return REGISTRY[request.param]()


@pytest.fixture(scope="module", params=sorted(ALL))
def any_op(request):
    """Linear and nonlinear operators: the checks that do not need linearity."""
    return ALL[request.param]()


def rand(shape, seed=0, dtype=torch.float64):
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dot(a, b):
    return float((a * b).sum())


def dense(fn, in_shape):
    """The matrix of a linear map on a single item (column j = fn(e_j))."""
    d = int(np.prod(in_shape))
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *in_shape)
    cols = torch.cat([fn(eye[i : i + BATCH]) for i in range(0, d, BATCH)] if d % BATCH == 0 else
                     [fn(torch.cat([eye[i : i + 1]] * BATCH))[:1] for i in range(d)])
    return cols.reshape(d, -1).T.numpy()


def per_image(op):
    return isinstance(op, O.Inpainting) and op.mask.shape[0] > 1


def test_shapes_and_capability_declaration(any_op):
    op = any_op
    x = rand(op.img_size)
    y = op.A(x)
    assert tuple(y.shape) == (BATCH, *op.meas_size)
    assert op.capabilities <= set(O.CAPABILITIES) and "forward" in op.capabilities
    if "linear" in op.capabilities:
        assert {"linear", "adjoint", "pinv", "prox_l2", "differentiable"} <= op.capabilities
        assert ("svd" in op.capabilities) == op.has_svd
    else:
        assert op.capabilities in ({"differentiable", "forward"}, {"forward"})  # nonlinear, or a black box
        with pytest.raises(O.CapabilityError, match="'linear'"):
            O.require(op, "ddrm", ["linear"])
    # batch items independent: changing one item leaves the others' measurements unchanged
    x2 = x.clone()
    x2[1] = x2[1] * 0.5
    assert torch.allclose(op.A(x2)[0], y[0], rtol=1e-12, atol=1e-12)


def test_adjointness(op):
    x, y = rand(op.img_size, 1), rand(op.meas_size, 2)
    lhs, rhs = dot(op.A(x), y), dot(x, op.A_adjoint(y))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + op.A(x).norm().item() * y.norm().item())


def test_float32_matches_float64(any_op):
    op = any_op
    x = rand(op.img_size, 3)
    y64, y32 = op.A(x), op.A(x.float())
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y64, atol=1e-5 * (1 + y64.abs().max().item()))


def test_gradcheck(any_op):
    op = any_op
    if "differentiable" not in op.capabilities:  # a black box: no autograd path at all
        assert not op.A(rand(op.img_size, 4).requires_grad_(True)).requires_grad
        return
    x = rand(op.img_size, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)


def test_batch_items_independent(op):
    x, y, z = rand(op.img_size, 5), rand(op.meas_size, 6), rand(op.img_size, 7)
    x2, y2, z2 = x.clone(), y.clone(), z.clone()
    x2[1] *= -3.0
    y2[1] += 1.0
    z2[1] *= 2.0
    for f, a, b in [
        (op.A, (x,), (x2,)),
        (op.A_adjoint, (y,), (y2,)),
        (op.A_dagger, (y,), (y2,)),
        (lambda z_, y_: op.prox_l2(z_, y_, 0.5), (z, y), (z2, y2)),
    ]:
        out, out2 = f(*a), f(*b)
        for i in (0, 2):
            assert torch.allclose(out[i], out2[i], rtol=1e-12, atol=1e-12)
    if not per_image(op):
        for i in range(BATCH):
            assert torch.allclose(op.A(x)[i : i + 1], op.A(x[i : i + 1]), rtol=1e-12, atol=1e-14)


def test_svd_identities(op):
    if not op.has_svd:
        with pytest.raises(O.CapabilityError, match="no exact SVD"):
            op.V_adjoint(rand(op.img_size))
        return
    x, y, z = rand(op.img_size, 8), rand(op.meas_size, 9), rand(op.img_size, 10)
    s = op.singular_values
    assert s.dtype == torch.float64 and bool((s >= 0).all())
    nz = (s > 0).to(torch.float64).expand_as(z)
    # A = U diag(s) Vᵀ
    assert torch.allclose(op.U(s * op.V_adjoint(x)), op.A(x), atol=1e-12)
    # V orthonormal (square): VᵀV = I, norm preserved, V Vᵀ = I
    assert torch.allclose(op.V_adjoint(op.V(z)), z, atol=1e-12)
    assert torch.allclose(op.V(op.V_adjoint(x)), x, atol=1e-12)
    assert abs(op.V_adjoint(x).norm() - x.norm()) < 1e-12 * x.norm()
    # U orthonormal on the components with s > 0, and U, U_adjoint adjoint to each other
    assert torch.allclose(op.U_adjoint(op.U(z)), nz * z, atol=1e-12)
    assert abs(dot(op.U(z), y) - dot(z, op.U_adjoint(y))) < 1e-11 * z.norm() * y.norm()
    ax = op.A(x)
    assert torch.allclose(op.U(op.U_adjoint(ax)), ax, atol=1e-12)
    # Aᵀ = V diag(s) Uᵀ
    assert torch.allclose(op.V(s * op.U_adjoint(y)), op.A_adjoint(y), atol=1e-12)


def test_singular_values_match_dense_svd(op):
    if not op.has_svd or per_image(op):
        pytest.skip("no SVD, or one SVD per image")
    M = dense(op.A, op.img_size)
    expected = np.sort(np.linalg.svd(M, compute_uv=False))[::-1]
    got = np.sort(op.singular_values.expand(1, *op.img_size).flatten().numpy())[::-1][: expected.size]
    np.testing.assert_allclose(got, expected, atol=1e-12 * expected.max())


def test_pinv(op):
    x = rand(op.img_size, 11)
    ax = op.A(x)
    xp = op.A_dagger(ax)
    if op.has_svd:
        # Penrose conditions (the truncation only touches singular values < pinv_rtol · max s)
        assert (op.A(xp) - ax).norm() <= 1e-5 * ax.norm()
        assert torch.allclose(op.A_dagger(op.A(xp)), xp, atol=1e-9 * xp.norm().item())
        if not per_image(op):
            Mp = np.linalg.pinv(dense(op.A, op.img_size), rcond=op.pinv_rtol)
            np.testing.assert_allclose(dense(op.A_dagger, op.meas_size), Mp, atol=1e-9 * np.abs(Mp).max())
    else:
        # CG on the normal equations: an iterative, regularising pseudo-inverse for ill-conditioned
        # blurs (exactness on a well-conditioned kernel: test_cg_pinv_is_min_norm_least_squares).
        assert (op.A(xp) - ax).norm() <= 0.05 * ax.norm()
        assert op.closed_form == frozenset()


@pytest.mark.parametrize("padding", ["reflect", "valid", "zeros"])
def test_cg_pinv_is_min_norm_least_squares(padding):
    g = torch.Generator().manual_seed(1)
    kernel = 0.15 * torch.rand(3, 4, generator=g, dtype=torch.float64)
    kernel[1, 2] += 1.0  # well conditioned, not separable
    op = O.Blur(kernel, (1, 9, 7), padding, cg_tol=1e-13, cg_max_iter=500)
    assert not op.has_svd
    M = dense(op.A, op.img_size)
    y = rand(op.meas_size, 3)
    expected = np.linalg.lstsq(M, y.reshape(BATCH, -1).T.numpy(), rcond=None)[0].T
    np.testing.assert_allclose(op.A_dagger(y).reshape(BATCH, -1).numpy(), expected, atol=1e-9)


def test_prox_l2_optimality(op):
    z, y = rand(op.img_size, 12), rand(op.meas_size, 13)
    target = op if op.has_svd else O.from_dict(op.to_dict())
    if not op.has_svd:
        target.cg_tol, target.cg_max_iter = 1e-13, 3000
    for gamma in (0.3, torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)):
        p = target.prox_l2(z, y, gamma)
        rho = 1.0 / torch.as_tensor(gamma, dtype=torch.float64).reshape(-1, *[1] * len(op.img_size))
        grad = target.A_adjoint(target.A(p) - y) + rho * (p - z)
        assert grad.norm() <= 1e-9 * (target.A_adjoint(y).norm() + (rho * z).norm())
    with pytest.raises(ValueError, match="gamma must be > 0"):
        op.prox_l2(z, y, 0.0)


def test_roundtrip_through_saved_params(any_op, tmp_path):
    op = any_op
    if isinstance(op, O.BlackBoxOperator):  # a callable is code, not data
        with pytest.raises(TypeError, match="not data"):
            op.to_dict()
        return
    d = op.to_dict()
    arrays = {k: v for k, v in d["params"].items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in d["params"].items() if not isinstance(v, np.ndarray)}
    np.savez(tmp_path / "p.npz", **arrays)
    meta = json.loads(json.dumps({"type": d["type"], "params": plain}))
    with np.load(tmp_path / "p.npz") as f:
        meta["params"].update({k: f[k] for k in f.files})
    rebuilt = O.from_dict(meta)
    x = rand(op.img_size, 14)
    assert torch.equal(rebuilt.A(x), op.A(x))
    assert rebuilt.capabilities == op.capabilities


def test_bad_input_is_refused(any_op):
    op = any_op
    with pytest.raises(ValueError, match="must have shape"):
        op.A(torch.zeros(2, *[s + 1 for s in op.img_size], dtype=torch.float64))
    if "adjoint" in op.capabilities:
        with pytest.raises(ValueError, match="must have shape"):
            op.A_adjoint(torch.zeros(*op.meas_size, dtype=torch.float64))
    x = rand(op.img_size)
    x[0].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        op.measure(x, O.GaussianNoise(0.1), generator=torch.Generator().manual_seed(0))


def test_measure_is_seeded_and_leaves_global_rng_alone(any_op):
    op = any_op
    x = rand(op.img_size, 15)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    y1 = op.measure(x, O.GaussianNoise(0.1), generator=torch.Generator().manual_seed(3))
    y2 = op.measure(x, O.GaussianNoise(0.1), generator=torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    assert torch.allclose(op.restrict_to_range(y1), y1)


def test_declared_flags_match_the_old_class_name_rule():
    """``op.modality`` and ``op.complex_image`` replace the apps' tests of class names
    (``"MRI" in type(op).__name__`` and that with ``img_size[0] == 2``): the same answers for every
    operator class that ``operators`` exports (each built by some registry entry), real and complex,
    and for tile operators."""
    from operators.base import OperatorMixin

    ops = [make() for make in ALL.values()]
    ops.append(O.Blur(O.MotionKernel(5, 0.5), (1, 32, 32), seed=0).restrict(8, 8, 16, 16)[0])
    exported = {n for n in O.__all__ if isinstance(getattr(O, n), type) and issubclass(getattr(O, n), OperatorMixin)}
    assert exported - {type(op).__name__ for op in ops} <= {"LinearOperator", "NonlinearOperator"}
    for op in ops:
        name = type(op).__name__
        is_mri = "MRI" in name
        assert (op.modality == "mri") == is_mri, name
        assert op.complex_image == (is_mri and tuple(op.img_size)[0] == 2), name
        assert op.modality == ("mri" if is_mri else "ct" if name.endswith("CT") else None), name
    assert any(op.complex_image for op in ops) and not all(op.complex_image for op in ops if op.modality == "mri")
    for name in exported:  # a class attribute: readable without an instance
        assert getattr(O, name).modality == ("mri" if "MRI" in name else "ct" if name.endswith("CT") else None)


def test_tileable_operators_restrict_and_the_others_refuse(any_op):
    """``op.tileable`` says whether ``op.restriction()`` exists; the others refuse in one paragraph
    (the tile problems themselves are tested against the whole-image posterior in test_tiling)."""
    op = any_op
    if not op.tileable:
        with pytest.raises(ValueError, match=f"tiling: {type(op).__name__} couples distant pixels"):
            op.restriction()
        return
    _, H, W = op.img_size
    r = op.restriction()
    th, tw = H - H % r.step, W - W % r.step  # the largest tile on the operator's grid
    if th < r.step or (r.kernel is not None and max(r.kernel) >= min(th, tw)) or H % r.step or W % r.step:
        return  # (too small an image for a tile: refused by the layout)
    tile, box, margin, key = r.restrict(0, 0, th, tw)
    again = r.restrict(0, 0, th, tw)
    assert again[0] is tile and again[3] == key  # equal tiles share one operator
    assert op.restrict(0, 0, th, tw)[1:3] == (box, margin) == r.box(0, 0, th, tw)
    assert tuple(tile.img_size) == (op.img_size[0], th, tw)
