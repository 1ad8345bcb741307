"""Volume operators: 2-D operators applied slice by slice to volumes ``[B, C, D, H, W]``.

A volume is ``D`` axial slices ``x[:, :, d]`` of shape ``[B, C, H, W]``. :class:`SliceStack`
applies one 2-D linear operator to every slice (a *shared* operator) or one operator per slice
(e.g. per-slice MRI masks); its measurement is ``[B, D, *meas2d]`` (slice d's measurement at
``y[:, d]``). The operator is block diagonal, ``A = diag(A_0, …, A_{D−1})``, so

* ``Aᵀ``, ``A⁺`` and ``prox_l2`` (``(AᵀA + ρI)⁻¹``) act slice by slice and are exact whenever the
  slices' are (closed forms where the slices have them, their conjugate gradients otherwise);
* the SVD is the slices' SVDs side by side (``V`` maps a volume to coefficients of the same
  shape, ``singular_values`` broadcasts to ``[B, C, D, H, W]``), present when every slice has one;
* ``capabilities`` is the intersection of the slices' capabilities, and ``closed_form`` that of
  their closed forms.

Two ready-made volumes (their ``to_dict`` is flat, like a 2-D operator's):

* :class:`VolumeParallelBeamCT` — every axial slice a :class:`~operators.ParallelBeamCT` with the
  same angles: exact for parallel-beam geometry, where rays never leave their axial plane
  (cone-beam CT is not slice-separable and is not modelled here).
* :class:`VolumeSingleCoilMRI` — every slice a :class:`~operators.SingleCoilMRI` with its own
  Cartesian mask, drawn slice after slice from one seeded generator (2-D Cartesian sampling of a
  stack of slices; 3-D k-space sampling is not slice-separable).

Slice operators must accept any batch size (a 2-D operator holding per-image parameters, such as an
:class:`~operators.Inpainting` with ``batch_size``, is refused).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .base import LinearOperator, from_dict
from .ct import ParallelBeamCT
from .kernels import seeded
from .mri import SingleCoilMRI


def _slice_batch(x: Tensor) -> Tensor:
    """``[B, C, D, H, W]`` → ``[B·D, C, H, W]`` (slice d of volume b at row ``b·D + d``)."""
    B, C, D = x.shape[:3]
    return x.movedim(2, 1).reshape(B * D, C, *x.shape[3:])


def _volume(t: Tensor, B: int, D: int) -> Tensor:
    """``[B·D, C, H, W]`` → ``[B, C, D, H, W]`` (inverse of :func:`_slice_batch`)."""
    return t.reshape(B, D, *t.shape[1:]).movedim(1, 2)


class _SliceEngine(torch.nn.Module):
    """The block-diagonal maths on whole tensors (see :class:`LinearOperator` for the engine API)."""

    def __init__(self, ops: Sequence[LinearOperator], depth: int):
        super().__init__()
        self.ops = torch.nn.ModuleList(ops)  # one (shared) or `depth` operators
        self.depth = int(depth)
        self.has_svd = all("svd" in op.capabilities for op in ops)

    @property
    def shared(self) -> bool:
        return len(self.ops) == 1

    # images [B, C, D, H, W] -> measurements [B, D, *m] (and back) -------------------------------
    def _image_to_meas(self, method: str, x: Tensor) -> Tensor:
        B, D = x.shape[0], self.depth
        if self.shared:
            out = getattr(self.ops[0], method)(_slice_batch(x))
            return out.reshape(B, D, *out.shape[1:])
        return torch.stack([getattr(op, method)(x[:, :, d]) for d, op in enumerate(self.ops)], 1)

    def _meas_to_image(self, method: str, y: Tensor) -> Tensor:
        B, D = y.shape[0], self.depth
        if self.shared:
            return _volume(getattr(self.ops[0], method)(y.reshape(B * D, *y.shape[2:])), B, D)
        return torch.stack([getattr(op, method)(y[:, d]) for d, op in enumerate(self.ops)], 2)

    def _image_to_image(self, method: str, x: Tensor) -> Tensor:
        B, D = x.shape[0], self.depth
        if self.shared:
            return _volume(getattr(self.ops[0], method)(_slice_batch(x)), B, D)
        return torch.stack([getattr(op, method)(x[:, :, d]) for d, op in enumerate(self.ops)], 2)

    def forward(self, x: Tensor) -> Tensor:
        return self._image_to_meas("A", x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._meas_to_image("A_adjoint", y)

    def pinv(self, y: Tensor, rtol: float) -> Tensor:  # (each slice with its own pinv_rtol, kept equal)
        return self._meas_to_image("A_dagger", y)

    def prox_l2(self, z: Tensor, y: Tensor, rho: Tensor) -> Tensor:
        B, D = z.shape[0], self.depth
        rho = torch.as_tensor(rho, dtype=z.dtype, device=z.device)
        per_volume = rho.ndim > 0 and rho.numel() > 1
        gamma = 1.0 / rho.reshape(-1) if per_volume else float(1.0 / rho.reshape(-1)[0])
        if self.shared:
            g = gamma.repeat_interleave(D) if per_volume else gamma
            out = self.ops[0].prox_l2(_slice_batch(z), y.reshape(B * D, *y.shape[2:]), g)
            return _volume(out, B, D)
        return torch.stack([op.prox_l2(z[:, :, d], y[:, d], gamma) for d, op in enumerate(self.ops)], 2)

    # SVD ----------------------------------------------------------------------------------------
    def V_adjoint(self, x: Tensor) -> Tensor:
        return self._image_to_image("V_adjoint", x)

    def V(self, z: Tensor) -> Tensor:
        return self._image_to_image("V", z)

    def U(self, z: Tensor) -> Tensor:
        return self._image_to_meas("U", z)

    def U_adjoint(self, y: Tensor) -> Tensor:
        return self._meas_to_image("U_adjoint", y)

    def singular_values(self) -> Tensor:
        """``[C, D | 1, H, W]``: each slice's singular values at its depth (broadcast over a shared one)."""
        def full(op) -> Tensor:  # [C, H, W] (slice operators hold no per-image parameters: a batch dim is 1)
            s = op.singular_values
            while s.ndim > 3:
                s = s[0]
            return torch.broadcast_to(s, op.img_size)

        if self.shared:
            return full(self.ops[0]).unsqueeze(-3)
        return torch.stack([full(op) for op in self.ops], -3)


class SliceStack(LinearOperator):
    """A stack of 2-D linear operators applied slice by slice along D: ``y[:, d] = A_d x[:, :, d]``.

    :param operators: one 2-D linear operator (shared by all ``depth`` slices), or a sequence of D
        of them (slice d gets ``operators[d]``), each acting on ``[B, C, H, W]`` with the same
        ``img_size`` and ``meas_size``; a saved ``op.to_dict()`` is accepted in place of an operator
        (how :func:`operators.from_dict` rebuilds a stack).
    :param depth: number of slices D — required with a shared operator, optional (checked) with a
        sequence.

    Images are ``[B, C, D, H, W]`` (``img_size = (C, D, H, W)``), measurements ``[B, D, *meas2d]``
    (``meas_size = (D, *meas2d)``). ``op.slices[d]`` is slice d's operator; ``op.shared`` tells
    whether one operator serves every slice (then the D slices of a batch go through it as one
    batch of ``B·D`` images). The conjugate-gradient settings (``cg_tol``, ``cg_max_iter``,
    ``pinv_rtol``) are the slices': setting them on the stack sets them on every slice.
    ``op.modality`` is the slices' common modality (``None`` when they differ).

    Example::

        >>> import operators
        >>> ct = operators.SliceStack(operators.ParallelBeamCT((1, 32, 32), angles=8), depth=16)
        >>> ct.img_size, ct.meas_size[:2]
        ((1, 16, 32, 32), (16, 1))
    """

    def __init__(self, operators, depth: int | None = None):
        ops = self._operators(operators, depth)
        C, H, W = ops[0].img_size
        D = len(ops) if depth is None else int(depth)
        # (the CG settings passed here are the slices' own: setting them on the stack sets the slices')
        super().__init__(_SliceEngine(ops, D), (C, D, H, W), (D, *ops[0].meas_size),
                         pinv_rtol=ops[0].pinv_rtol, cg_tol=ops[0].cg_tol, cg_max_iter=ops[0].cg_max_iter)
        modalities = {op.modality for op in ops}
        self.modality = modalities.pop() if len(modalities) == 1 else None

    @staticmethod
    def _operators(operators, depth) -> list:
        if isinstance(operators, dict):
            operators = from_dict(operators)
        shared = not isinstance(operators, (list, tuple))
        ops = [operators] if shared else [from_dict(o) if isinstance(o, dict) else o for o in operators]
        if not ops:
            raise ValueError("SliceStack: got no slice operator")
        if depth is not None and (isinstance(depth, bool) or int(depth) != depth or depth < 1):
            raise ValueError(f"SliceStack: depth must be a positive integer, got {depth!r}")
        if shared and depth is None:
            raise ValueError("SliceStack: give depth (the number of slices D) with a shared operator")
        if not shared and depth is not None and int(depth) != len(ops):
            raise ValueError(f"SliceStack: {len(ops)} slice operators but depth={depth}")
        first = ops[0]
        for d, op in enumerate(ops):
            caps = getattr(op, "capabilities", None)
            if caps is None or not isinstance(op, LinearOperator) or "linear" not in caps:
                what = op.describe() if hasattr(op, "describe") else type(op).__name__
                raise ValueError(f"SliceStack: slice {d} is {what}, not a linear invdiff operator; a stack holds "
                                 "linear 2-D operators (nonlinear slice stacks are not supported)")
            if len(op.img_size) != 3:
                raise ValueError(f"SliceStack: slice operators act on 2-D images [C, H, W]; slice {d} ({op.describe()}) "
                                 f"acts on {list(op.img_size)}")
            if tuple(op.img_size) != tuple(first.img_size) or tuple(op.meas_size) != tuple(first.meas_size):
                raise ValueError(f"SliceStack: every slice needs the same img_size and meas_size; slice 0 has "
                                 f"{list(first.img_size)} → {list(first.meas_size)}, slice {d} has "
                                 f"{list(op.img_size)} → {list(op.meas_size)}")
            held = getattr(op, "mask", None)
            if isinstance(held, Tensor) and held.ndim == 4 and held.shape[0] > 1:
                raise ValueError(f"SliceStack: slice {d} ({op.describe()}) holds per-image masks for a fixed batch; "
                                 "slice operators must accept any batch")
        return ops

    # -- the slices ----------------------------------------------------------------------------
    @property
    def slices(self) -> list:
        """Slice d's operator at index d (the same object D times for a shared operator)."""
        ops = list(self.engine.ops)
        return ops * self.depth if self.shared else ops

    @property
    def shared(self) -> bool:
        return self.engine.shared

    @property
    def depth(self) -> int:
        return self.engine.depth

    @property
    def capabilities(self) -> frozenset:
        """The intersection of the slices' capabilities (exact slice-wise: A is block diagonal)."""
        return frozenset.intersection(*(frozenset(op.capabilities) for op in self.engine.ops))

    @property
    def closed_form(self) -> frozenset:
        return frozenset.intersection(*(frozenset(op.closed_form) for op in self.engine.ops))

    def restrict_to_range(self, y: Tensor) -> Tensor:
        """Each slice's measurement restricted to what that slice's instrument measures."""
        if self.shared:
            return self.engine.ops[0].restrict_to_range(y.reshape(-1, *y.shape[2:])).reshape(y.shape)
        return torch.stack([op.restrict_to_range(y[:, d]) for d, op in enumerate(self.engine.ops)], 1)

    # -- the slices' solver settings -----------------------------------------------------------
    def _slice_setting(self, name: str):
        return getattr(self.engine.ops[0], name)

    def _set_slices(self, name: str, value) -> None:
        for op in self.engine.ops:
            setattr(op, name, value)

    cg_tol = property(lambda self: self._slice_setting("cg_tol"), lambda self, v: self._set_slices("cg_tol", float(v)))
    cg_max_iter = property(lambda self: self._slice_setting("cg_max_iter"),
                           lambda self, v: self._set_slices("cg_max_iter", int(v)))
    pinv_rtol = property(lambda self: self._slice_setting("pinv_rtol"),
                         lambda self, v: self._set_slices("pinv_rtol", float(v)))

    # -- description and persistence ----------------------------------------------------------
    def _describe_params(self) -> str:
        ops = self.engine.ops
        what = f"one {ops[0].describe()}" if self.shared else f"per-slice {type(ops[0]).__name__}s"
        return f"{self.depth} slices, {what}, img_size={list(self.img_size)}"

    def config(self) -> dict:
        if self.shared:
            return dict(operators=self.engine.ops[0].to_dict(), depth=self.depth)
        return dict(operators=[op.to_dict() for op in self.engine.ops])


class VolumeParallelBeamCT(SliceStack):
    """Parallel-beam CT of a volume: every axial slice a :class:`~operators.ParallelBeamCT` with the
    same angles (one shared operator; exact for parallel beams, whose rays stay in their slice).

    :param img_size: ``(C, D, N, N)`` — D square slices.
    :param angles, limited_angle, circle: as :class:`~operators.ParallelBeamCT` (e.g. ``angles=8``:
        8 views over [0°, 180°), DiffusionMBIR's sparse-view setting).

    Measurements ``[B, D, C, n_detectors, n_angles]`` (one sinogram per slice).
    """

    modality = "ct"

    def __init__(self, img_size=(1, 64, 64, 64), angles=30, limited_angle=None, circle: bool = False,
                 **solver_options):
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 4:
            raise ValueError(f"VolumeParallelBeamCT: img_size must be (C, D, N, N), got {img_size}")
        C, D, H, W = img_size
        super().__init__(ParallelBeamCT((C, H, W), angles, limited_angle, circle, **solver_options), depth=D)
        self._solver_options = solver_options

    @property
    def angles(self) -> Tensor:
        return self.engine.ops[0].angles

    def _describe_params(self) -> str:
        a = self.angles
        return (f"{self.depth} slices, {a.numel()} views in [{float(a.min()):.0f}°, {float(a.max()):.0f}°], "
                f"img_size={list(self.img_size)}")

    def config(self) -> dict:
        ct = self.engine.ops[0]
        return dict(img_size=self.img_size, angles=ct.angles.tolist(), circle=ct.circle, **self._solver_options)


class VolumeSingleCoilMRI(SliceStack):
    """Single-coil Cartesian MRI of a stack of slices, each slice with its own mask:
    ``y[:, d] = M_d · fft2c(x[:, :, d])`` (:class:`~operators.SingleCoilMRI` per slice).

    :param mask: a mask generator (:class:`FastMRIMask`, :class:`RandomLinesMask`, …) drawn once per
        slice, slice 0 first, from ``generator`` — or from a fresh generator seeded with ``seed``,
        so a seed gives the same D masks on every machine; or the masks themselves, a ``[D, H, W]``
        tensor (or ``[D, W]``: one phase-encode pattern per slice).
    :param img_size: ``(1, D, H, W)`` (real slices) or ``(2, D, H, W)`` (complex slices).
    :param kspace_size: as :class:`~operators.SingleCoilMRI` (readout oversampling).

    Measurements ``[B, D, 2, H, W]``; ``op.mask`` is ``[D, H, W]``; an exact SVD (slice-wise).
    """

    modality = "mri"

    def __init__(self, mask: Tensor | Callable, img_size=(1, 64, 64, 64), *, kspace_size=None, seed: int | None = None,
                 generator: torch.Generator | None = None, **solver_options):
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 4:
            raise ValueError(f"VolumeSingleCoilMRI: img_size must be (C, D, H, W), got {img_size}")
        C, D, H, W = img_size
        if callable(mask) and not isinstance(mask, Tensor):
            g = seeded(generator, seed)
            ops = [SingleCoilMRI(mask, (C, H, W), kspace_size=kspace_size, generator=g, **solver_options)
                   for _ in range(D)]
        else:
            if seed is not None or generator is not None:
                raise ValueError("VolumeSingleCoilMRI: seed/generator apply only to a mask generator, not to given masks")
            masks = torch.as_tensor(mask)
            if masks.ndim not in (2, 3) or masks.shape[0] != D:
                raise ValueError(f"VolumeSingleCoilMRI: masks must be [D, H, W] or [D, W] with D = {D} slices, got "
                                 f"{list(masks.shape)}")
            ops = [SingleCoilMRI(masks[d], (C, H, W), kspace_size=kspace_size, **solver_options) for d in range(D)]
        super().__init__(ops)
        self._solver_options = dict(solver_options, kspace_size=tuple(ops[0].mask.shape))

    @property
    def mask(self) -> Tensor:
        """``[D, H, W]``: slice d's mask at index d."""
        return torch.stack([op.mask for op in self.engine.ops])

    @property
    def acceleration(self) -> float:
        """The volume's acceleration (k-space locations ÷ sampled ones, over all slices)."""
        m = self.mask
        return float(m.numel() / m.sum())

    def _describe_params(self) -> str:
        kind = "complex" if self.img_size[0] == 2 else "real"
        return f"{self.depth} {kind} slices, per-slice masks, R={self.acceleration:.2f}, img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(mask=self.mask, img_size=self.img_size, **self._solver_options)
