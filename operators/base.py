"""The operator contract: capabilities, the clear refusal, and the linear-operator base class.

Every invdiff operator is a :class:`deepinv.physics.LinearPhysics` (or ``Physics``) built
*noiseless*. It declares what it offers in ``op.capabilities`` (a frozenset of
:data:`CAPABILITIES`); a solver calls :func:`require` before any work, which raises
:class:`CapabilityError` naming the operator, the solver and what is missing.

A linear operator is an engine (the maths on the last two or one dimensions) plus its shapes and
parameters. Engines with an exact SVD give closed-form ``A_dagger`` and ``prox_l2``; the others
solve with batched conjugate gradients (per-sample stopping, so batch items never interact).

SVD convention (deepinv's names): ``A = U ∘ diag(s) ∘ Vᵀ`` with ``V_adjoint`` mapping an image to
a *real orthonormal* coefficient tensor of the same shape as the image, ``singular_values`` a
tensor broadcastable to that shape (zeros where A has no component), ``U`` mapping coefficients to
measurements (components with s = 0 are ignored) and ``U_adjoint`` its adjoint (zeros there).
"""

from __future__ import annotations

import functools
import importlib
import itertools
from typing import Any, Iterable

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from .linalg import per_sample, conjugate_gradient

CAPABILITIES = {
    "linear": "a linear forward map",
    "adjoint": "an exact adjoint Aᵀ",
    "svd": "an exact singular value decomposition (U, V, singular_values)",
    "pinv": "a pseudo-inverse A⁺ (A_dagger)",
    "prox_l2": "the proximal map of ½‖Ax − y‖² (prox_l2)",
    "differentiable": "a forward map differentiable by autograd",
    "forward": "a forward map y = A(x) that can be evaluated (no gradient, adjoint or inverse)",
}


class CapabilityError(ValueError):
    """A solver asked an operator for something the operator does not provide."""


def require(op: Any, solver_name: str, needs: Iterable[str | tuple[str, ...]]) -> None:
    """Refuse, before any work, an operator that lacks a capability the solver needs.

    ``needs`` lists capability names; an entry may be a tuple of alternatives (any one suffices),
    e.g. ``require(op, "ddrm", [("svd", "pinv")])``.
    """
    caps = getattr(op, "capabilities", None)
    if caps is None:
        raise CapabilityError(
            f"solver '{solver_name}' was given {type(op).__name__}, which is not an invdiff operator "
            "(it has no `.capabilities`). Build operators from the `operators` package."
        )
    missing = []
    for need in needs:
        options = (need,) if isinstance(need, str) else tuple(need)
        for name in options:
            if name not in CAPABILITIES:
                raise ValueError(f"unknown capability {name!r}; known: {sorted(CAPABILITIES)}")
        if not any(name in caps for name in options):
            missing.append(" or ".join(f"'{n}' ({CAPABILITIES[n]})" for n in options))
    if missing:
        desc = op.describe() if hasattr(op, "describe") else type(op).__name__
        raise CapabilityError(
            f"solver '{solver_name}' needs {'; '.join(missing)}, which operator {desc} does not "
            f"provide (it provides: {', '.join(sorted(caps)) or 'nothing'}). Choose another solver, "
            "or an operator variant that has it (e.g. circular padding or a separable kernel for "
            "an exact blur SVD)."
        )


def untileable(op: Any) -> ValueError:
    """The refusal of an operator that has no exact restriction to a tile of its image."""
    return ValueError(f"tiling: {type(op).__name__} couples distant pixels and cannot be tiled; tiling works "
                      "for Inpainting (masks, clouds, denoising), Blur and Downsampling")


def _check_shape(t: Tensor, expected: tuple[int, ...], what: str, op: "LinearOperator") -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op.describe()}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != len(expected) + 1 or tuple(t.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{op.describe()}: {what} must have shape [B, {', '.join(map(str, expected))}], "
            f"got {list(t.shape)}"
        )


def module_device(module: torch.nn.Module, what: str | None = None) -> torch.device | None:
    """The one device holding all of ``module``'s parameters and buffers (``None`` when it holds
    none: it then works on any device). A module split over two devices is refused."""
    devices = {t.device for t in itertools.chain(module.parameters(), module.buffers())}
    if len(devices) > 1:
        name = what or type(module).__name__  # not describe(): it may read the misplaced tensors
        raise ValueError(f"{name} holds tensors on {', '.join(sorted(map(str, devices)))}; an operator or prior "
                         "lives on one device: move all of it with .to(device)")
    return next(iter(devices), None)


def _tensor_devices(values) -> set:
    out = set()
    for v in values:
        if isinstance(v, Tensor):
            out.add(v.device)
        elif isinstance(v, (list, tuple)):
            out |= _tensor_devices(v)
    return out


def _on_cpu(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.cpu()
    if isinstance(v, (list, tuple)) and any(isinstance(e, Tensor) for e in v):
        return type(v)(_on_cpu(e) for e in v)
    return v


def _placed(init):
    """Wrap an operator's ``__init__``: an operator built from tensors on a device lives on that
    device. The tensor arguments are taken to the CPU, the operator is built there (SVDs, index maps,
    float64 set-up), then all of it is moved with ``.to(device)``; tensors on two devices are
    refused. Inner ``super().__init__`` calls of the same object pass straight through."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if self.__dict__.get("_placing", False):
            return init(self, *args, **kwargs)
        devices = _tensor_devices(args) | _tensor_devices(kwargs.values())
        if len(devices) > 1:
            raise ValueError(f"{type(self).__name__}: its tensor arguments are on {', '.join(sorted(map(str, devices)))}; "
                             "build an operator from tensors on one device")
        self.__dict__["_placing"] = True
        try:
            init(self, *(_on_cpu(a) for a in args), **{k: _on_cpu(v) for k, v in kwargs.items()})
        finally:
            self.__dict__["_placing"] = False
        target = next(iter(devices), None)  # (random parameters are drawn with CPU generators only)
        if target is not None and target.type != "cpu":
            self.to(target)

    return __init__


def _to_plain(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach().cpu().numpy()
    if isinstance(v, tuple):
        return list(v)
    return v


class OperatorMixin:
    """What every invdiff operator shares: description, shape checks, simulation, persistence, and
    one device: an operator built from tensors on a device lives there (see :func:`_placed`, applied
    to every subclass's ``__init__``), ``op.to(device)`` moves all of it, ``op.device`` tells where.

    Declared properties, for code that treats some operators differently (figures, baselines): ask
    these, never the class name.

    * ``modality`` (class attribute): the imaging modality whose conventions the operator follows,
      ``"mri"`` (the MRI operators), ``"ct"`` (the CT operators) or ``None`` (generic operators).
    * ``complex_image``: True when the operator's images are complex, stored as 2 real channels
      (real, imaginary): the MRI operators with ``img_size[0] == 2``; False elsewhere.
    * ``tileable`` and :meth:`restriction`: whether the operator can be restricted exactly to a
      tile of its image (:mod:`operators.restriction`), and the object that does it.
    """

    #: "mri", "ct" or None (a generic operator); see the class docstring
    modality: str | None = None
    #: whether :meth:`restriction` gives exact tile problems (see :mod:`operators.restriction`)
    tileable: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _placed(cls.__dict__["__init__"])

    @property
    def device(self) -> torch.device | None:
        """The device of the operator's tensors (``None`` for an operator without tensors, which
        works on any device). Refuses an operator split over two devices."""
        return module_device(self)

    @device.setter
    def device(self, value) -> None:
        self.to(value)

    @property
    def complex_image(self) -> bool:
        """True when the images are complex, stored as 2 real channels (real, imaginary): the MRI
        operators with ``img_size[0] == 2``."""
        return self.modality == "mri" and int(tuple(self.img_size)[0]) == 2

    def restriction(self):
        """The operator's exact tile problems, an :class:`operators.restriction.Restriction` (for
        operators with ``tileable = True``; the others couple distant pixels and are refused)."""
        raise untileable(self)

    def restrict(self, top: int, left: int, h: int, w: int, *, item: int = 0):
        """(tile operator, y box, margin, key) of the tile ``[top : top + h, left : left + w]``
        (:meth:`operators.restriction.Restriction.restrict`); ``item`` picks the mask of an
        inpainting operator that holds one mask per image. Each call starts afresh: to share
        work and tile operators between tiles, keep one ``op.restriction()``."""
        return self.restriction().restrict(top, left, h, w, item=item)

    def describe(self) -> str:
        return f"{type(self).__name__}({self._describe_params()})"

    def _describe_params(self) -> str:
        return f"img_size={list(self.img_size)}"

    def __repr__(self) -> str:
        return self.describe()

    def _check(self, t: Tensor, expected: tuple[int, ...], what: str) -> None:
        """Refuse a tensor that is not ``[B, *expected]``."""
        _check_shape(t, expected, what, self)

    def _no_kwargs(self, kwargs: dict, method: str) -> None:
        if kwargs:
            raise TypeError(f"{self.describe()}.{method} got unexpected arguments {sorted(kwargs)}")

    def measure(self, x: Tensor, noise_model=None, generator: torch.Generator | None = None) -> Tensor:
        """Simulate ``y = N(A x)``: the noiseless map, then the (separate) noise model."""
        self._check(x, self.img_size, "x")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.describe()}.measure: x contains NaN or Inf")
        y = self.A(x)
        if noise_model is not None:
            y = self.restrict_to_range(noise_model(y, generator=generator))
        return y

    def restrict_to_range(self, y: Tensor) -> Tensor:
        """Zero the entries of ``y`` the instrument does not measure (identity by default)."""
        return y

    def config(self) -> dict:
        """Constructor arguments that rebuild this exact operator (tensors included)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """``{"type": "operators.Name", "params": {...}}`` with numpy arrays for tensors; rebuild
        with :func:`operators.from_dict`."""
        return {
            "type": f"operators.{type(self).__name__}",
            "params": {k: _to_plain(v) for k, v in self.config().items()},
        }


class LinearOperator(OperatorMixin, LinearPhysics):
    """Base of invdiff's linear operators: an engine plus shapes, capabilities and parameters.

    :param engine: module with ``forward``/``adjoint`` (and, if ``engine.has_svd``, ``V``,
        ``V_adjoint``, ``U``, ``U_adjoint``, ``singular_values``) acting on whole tensors.
    :param img_size: signal shape without batch, e.g. ``(C, H, W)``.
    :param meas_size: measurement shape without batch.
    :param pinv_rtol: singular values below ``pinv_rtol · max(s)`` are treated as zero by
        ``A_dagger`` (a truncated-SVD pseudo-inverse; the exact SVD is unaffected).
    :param cg_tol, cg_max_iter: stopping rule of the conjugate-gradient fallback.
    """

    exact_capabilities = frozenset({"linear", "adjoint", "pinv", "prox_l2", "differentiable", "forward"})

    def __init__(self, engine: torch.nn.Module, img_size, meas_size, *, pinv_rtol: float = 1e-6,
                 cg_tol: float = 1e-6, cg_max_iter: int = 100):
        img_size = tuple(int(s) for s in img_size)
        super().__init__(img_size=img_size, max_iter=max(cg_max_iter, 20), tol=cg_tol)
        self.engine = engine
        self.meas_size = tuple(int(s) for s in meas_size)
        self.pinv_rtol = float(pinv_rtol)
        self.cg_tol = float(cg_tol)
        self.cg_max_iter = int(cg_max_iter)

    # -- contract ---------------------------------------------------------------------------
    @property
    def has_svd(self) -> bool:
        return bool(getattr(self.engine, "has_svd", False))

    @property
    def capabilities(self) -> frozenset:
        return self.exact_capabilities | ({"svd"} if self.has_svd else set())

    @property
    def closed_form(self) -> frozenset:
        """Which of ``pinv``/``prox_l2`` are exact closed forms (the others use CG)."""
        return frozenset({"pinv", "prox_l2"}) if self.has_svd else frozenset()

    # -- the linear map -----------------------------------------------------------------------
    def A(self, x: Tensor, **kwargs) -> Tensor:
        """Noiseless forward map. ``x``: ``[B, *img_size]`` real, physical units."""
        self._no_kwargs(kwargs, "A")
        self._check(x, self.img_size, "x")
        return self.engine.forward(x)

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        """Exact adjoint. ``y``: ``[B, *meas_size]``."""
        self._no_kwargs(kwargs, "A_adjoint")
        self._check(y, self.meas_size, "y")
        return self.engine.adjoint(y)

    def A_adjoint_A(self, x: Tensor, **kwargs) -> Tensor:
        return self.A_adjoint(self.A(x, **kwargs))

    def A_A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        return self.A(self.A_adjoint(y, **kwargs))

    # -- SVD ------------------------------------------------------------------------------------
    def _svd_engine(self, what: str):
        if not self.has_svd:
            raise CapabilityError(
                f"{self.describe()} has no exact SVD, so it has no {what}; "
                f"it provides: {', '.join(sorted(self.capabilities))}"
            )
        return self.engine

    def V_adjoint(self, x: Tensor) -> Tensor:
        """Image ``[B, *img_size]`` -> real orthonormal coefficients of the same shape."""
        self._check(x, self.img_size, "x")
        return self._svd_engine("V_adjoint").V_adjoint(x)

    def V(self, z: Tensor) -> Tensor:
        """Coefficients ``[B, *img_size]`` -> image."""
        self._check(z, self.img_size, "coefficients")
        return self._svd_engine("V").V(z)

    def U(self, z: Tensor) -> Tensor:
        """Coefficients ``[B, *img_size]`` -> measurements ``[B, *meas_size]``."""
        self._check(z, self.img_size, "coefficients")
        return self._svd_engine("U").U(z)

    def U_adjoint(self, y: Tensor) -> Tensor:
        """Measurements -> coefficients (zero where the singular value is zero)."""
        self._check(y, self.meas_size, "y")
        return self._svd_engine("U_adjoint").U_adjoint(y)

    @property
    def singular_values(self) -> Tensor:
        """float64 tensor broadcastable to ``[B, *img_size]`` (a leading batch dim only for
        per-image operators)."""
        return self._svd_engine("singular_values").singular_values()

    # -- pseudo-inverse and proximal map -------------------------------------------------------
    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        """Pseudo-inverse: truncated SVD (``pinv_rtol``) when exact, else min-norm CG."""
        self._no_kwargs(kwargs, "A_dagger")
        self._check(y, self.meas_size, "y")
        if hasattr(self.engine, "pinv"):  # an engine's faster closed form of the same formula
            return self.engine.pinv(y, self.pinv_rtol)
        if self.has_svd:
            s = self.singular_values.to(y)
            keep = s > self.pinv_rtol * s.max()
            inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
            return self.V(inv * self.U_adjoint(y))
        rhs = self.A_adjoint(y)
        return conjugate_gradient(self.A_adjoint_A, rhs, tol=self.cg_tol, max_iter=self.cg_max_iter)

    def prox_l2(self, z: Tensor, y: Tensor, gamma, **kwargs) -> Tensor:
        """``argmin_x ½‖Ax − y‖² + 1/(2γ)‖x − z‖² = (AᵀA + ρI)⁻¹(Aᵀy + ρz)`` with ``ρ = 1/γ``.

        ``gamma``: float or ``[B]`` tensor, > 0 (deepinv's convention).
        """
        self._no_kwargs(kwargs, "prox_l2")
        self._check(z, self.img_size, "z")
        self._check(y, self.meas_size, "y")
        gamma_t = torch.as_tensor(gamma, dtype=z.dtype, device=z.device)
        if not bool((gamma_t > 0).all()):
            raise ValueError(f"{self.describe()}.prox_l2: gamma must be > 0, got {gamma}")
        rho = per_sample(1.0 / gamma_t, z)
        if hasattr(self.engine, "prox_l2"):
            return self.engine.prox_l2(z, y, rho)
        if self.has_svd:
            s = self.singular_values.to(z)
            return self.V((s * self.U_adjoint(y) + rho * self.V_adjoint(z)) / (s * s + rho))
        rhs = self.A_adjoint(y) + rho * z
        return conjugate_gradient(lambda v: self.A_adjoint_A(v) + rho * v, rhs, z,
                                  tol=self.cg_tol, max_iter=self.cg_max_iter)


def from_dict(d: dict) -> LinearOperator:
    """Rebuild an operator saved by ``op.to_dict()``. Only classes exported by ``operators``
    are accepted (nothing else is imported)."""
    kind = d.get("type", "")
    module, _, name = kind.rpartition(".")
    ops = importlib.import_module("operators")
    cls = getattr(ops, name, None) if module == "operators" else None
    if cls is None or name not in ops.OPERATORS:
        raise ValueError(f"unknown operator type {kind!r}; known: {sorted('operators.' + n for n in ops.OPERATORS)}")
    params = {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v)
              for k, v in d.get("params", {}).items()}
    return cls(**params)
