"""A forward model that can only be evaluated: a simulator, an instrument's code, a scipy routine.

:class:`BlackBoxOperator` wraps any Python callable ``x -> y`` (numpy or torch, one item or a
whole batch per call) as an invdiff operator with the one capability ``"forward"`` (DESIGN.md,
"Operators that cannot be differentiated"). Derivative-free solvers (EnKG) accept it; every solver
that needs a gradient, an adjoint, an SVD, a pseudo-inverse or a proximal map is refused by
:func:`operators.require` before any work, with the usual message naming what is missing.

Its ``A(x)``:

1. checks that ``x`` is ``[B, *img_size]``;
2. ``array="numpy"``: hands the callable float64 numpy arrays (a copy on the CPU);
   ``array="torch"``: hands it the tensor itself, detached (same dtype and device);
3. ``batched=False``: calls it once per item (``[*img_size] -> [*meas_size]``);
   ``batched=True``: once on the whole batch (``[B, *img_size] -> [B, *meas_size]``);
4. checks the output's shape, that it is real and finite (errors name the callable and the item);
5. returns a tensor of ``x``'s dtype on ``x``'s device, with no autograd graph: the call runs under
   :func:`torch.no_grad` on a detached input, so ``A(x).backward()`` fails and nothing can
   differentiate through the callable, even a torch one.

Which kind of callable it is (numpy or torch, per item or batched) is stated by the caller through
``array`` and ``batched``; it is not guessed, because guessing means calling the black box on
made-up input (it may be slow, or have side effects).

A black-box operator cannot be saved with :meth:`to_dict`: a callable is code, not data. Save the
code (or the configuration) that builds it; ``to_dict`` raises :class:`TypeError` saying so.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from deepinv.physics import Physics
from torch import Tensor

from .base import CapabilityError, OperatorMixin


def callable_name(fn: Callable) -> str:
    """A readable name of a callable: its qualified name (with its module when not ``__main__``), or
    its repr for objects without one (a ``functools.partial``, a callable instance)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return name if module in (None, "__main__", "builtins") else f"{module}.{name}"


class BlackBoxOperator(OperatorMixin, Physics):
    """An evaluate-only forward map ``y = fn(x)`` with capabilities ``{"forward"}``.

    :param fn: the callable. ``array="numpy"``: takes and returns numpy arrays (float64 in; any real
        numeric array out). ``array="torch"``: takes a tensor and returns a tensor (or anything
        ``torch.as_tensor`` accepts). ``batched=False``: one item ``[*img_size] -> [*meas_size]``;
        ``batched=True``: ``[B, *img_size] -> [B, *meas_size]``.
    :param img_size: signal shape without batch, e.g. ``(1, 64, 64)``.
    :param meas_size: measurement shape without batch.
    :param array: ``"numpy"`` (default) or ``"torch"``: what the callable takes.
    :param batched: whether one call handles a whole batch (default: one call per item).
    :param name: how messages and :meth:`describe` name the callable (default: its qualified name).

    Example (phase retrieval ``|F x|`` computed by scipy, no autograd anywhere)::

        >>> import numpy as np, scipy.fft, torch
        >>> op = BlackBoxOperator(lambda x: np.abs(scipy.fft.fft2(x, norm="ortho")), (1, 8, 8), (1, 8, 8))
        >>> op.capabilities
        frozenset({'forward'})
        >>> op.A(torch.ones(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    capabilities = frozenset({"forward"})
    closed_form = frozenset()

    def __init__(self, fn: Callable, img_size, meas_size, *, array: str = "numpy", batched: bool = False,
                 name: str | None = None):
        if not callable(fn):
            raise TypeError(f"BlackBoxOperator: fn must be callable, got {type(fn).__name__}")
        if array not in ("numpy", "torch"):
            raise ValueError(f"BlackBoxOperator: array must be 'numpy' or 'torch' (what the callable takes), "
                             f"got {array!r}")
        if not isinstance(batched, bool):
            raise TypeError(f"BlackBoxOperator: batched must be True or False, got {batched!r}")
        super().__init__()
        self.img_size = tuple(int(s) for s in img_size)
        self.meas_size = tuple(int(s) for s in meas_size)
        if not self.img_size or not self.meas_size or min(self.img_size + self.meas_size) < 1:
            raise ValueError(f"BlackBoxOperator: img_size and meas_size must be non-empty positive shapes, "
                             f"got {list(self.img_size)}, {list(self.meas_size)}")
        self.fn = fn  # (a torch.nn.Module callable becomes a submodule: .to(device) moves it)
        self.array, self.batched = array, batched
        self.name = str(name) if name is not None else callable_name(fn)

    # -- the forward map --------------------------------------------------------------------------
    def A(self, x: Tensor, **kwargs) -> Tensor:
        """``fn(x)``: ``x`` ``[B, *img_size]`` real -> ``[B, *meas_size]`` in x's dtype and device,
        without an autograd graph."""
        self._no_kwargs(kwargs, "A")
        self._check(x, self.img_size, "x")
        if x.is_complex() or not x.is_floating_point():
            raise ValueError(f"{self.describe()}: x must be a real floating tensor, got dtype {x.dtype}")
        with torch.no_grad():
            # a copy: a callable that writes into its input cannot alter the caller's x
            x_in = x.detach().to("cpu", torch.float64).numpy().copy() if self.array == "numpy" else x.detach().clone()
            if self.batched:
                out = self._output(self.fn(x_in), (x.shape[0], *self.meas_size), "the batch")
            else:
                out = torch.stack([self._output(self.fn(x_in[i]), self.meas_size, f"item {i}")
                                   for i in range(x.shape[0])])
        return out.to(dtype=x.dtype, device=x.device)

    def _output(self, out: Any, shape: tuple[int, ...], what: str) -> Tensor:
        """The callable's output as a real finite tensor of ``shape``, or a clear error."""
        who = f"{self.describe()}: the callable {self.name!r}"
        try:
            t = torch.from_numpy(np.array(out)) if isinstance(out, np.ndarray) else torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{who} returned {type(out).__name__} for {what}, not an array or tensor ({err})") from None
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{who} returned {t.dtype} values for {what}; it must return real numbers "
                             "(complex data as 2 real channels)")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{who} returned shape {list(t.shape)} for {what}; expected {list(shape)} "
                             f"(meas_size={list(self.meas_size)}, batched={self.batched})")
        t = t.detach()
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if not bool(torch.isfinite(t).all()):
            bad = "" if not self.batched else " (items " + ", ".join(
                map(str, (~torch.isfinite(t.reshape(t.shape[0], -1))).any(1).nonzero().flatten().tolist())) + ")"
            raise ValueError(f"{who} returned NaN or Inf for {what}{bad}")
        return t

    # -- what it does not have ---------------------------------------------------------------------
    def _missing(self, what: str) -> CapabilityError:
        return CapabilityError(f"{self.describe()} is a black box: it has no {what} "
                               f"(capabilities: {', '.join(sorted(self.capabilities))})")

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        raise self._missing("adjoint")

    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        raise self._missing("pseudo-inverse")

    def A_vjp(self, x: Tensor, v: Tensor) -> Tensor:
        raise self._missing("vector–Jacobian product (it is not differentiable)")

    def prox_l2(self, z: Tensor, y: Tensor, gamma, **kwargs) -> Tensor:
        raise self._missing("proximal map")

    # -- description and persistence -------------------------------------------------------------
    def _describe_params(self) -> str:
        how = "batched" if self.batched else "per item"
        return (f"{self.name}, {self.array} {how}, img_size={list(self.img_size)}, "
                f"meas_size={list(self.meas_size)}")

    def config(self) -> dict:
        raise TypeError(f"{self.describe()} cannot be saved with to_dict: it wraps the Python callable "
                        f"{self.name!r}, which is code, not data. Save the code or configuration that builds "
                        "the callable, and rebuild the operator from it.")
