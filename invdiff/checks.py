"""Shared checkers of user input: one home for the checks the API, the solvers and the apps make.

Each checker either answers a question (:func:`whole_number`) or refuses bad input with a
one-paragraph error that names the problem and what is accepted (:func:`check_measurement`,
:func:`check_sigma_y`), before any work. ``invdiff.reconstruct`` checks at its boundary, the
solvers' ``setup`` covers direct solver calls, and the apps keep only config-level checks.

The module depends on ``torch`` only, so every layer (solvers, API, apps) may import it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["whole_number", "check_measurement", "check_sigma_y"]


def whole_number(value, minimum: float = 1) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``, not a float such as ``2.0``) and ``>= minimum``.

    ``whole_number(steps)`` for a positive count, ``whole_number(v, 0)`` for a count that may be 0,
    ``whole_number(v, -math.inf)`` for any integer.
    """
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _who(name: str | None) -> str:
    return f"solver '{name}': " if name else ""


def check_measurement(name: str, y, operator) -> None:
    """Refuse a measurement that is not a real floating tensor ``[B, *meas]`` (the operator's
    ``meas_size`` when it states one) of finite values.

    :param name: the solver's name, for the message (``"solver 'dps': y must …"``).
    :param y: the measurement to check.
    :param operator: the operator that produced y (its ``meas_size`` and ``describe()`` are used).
    :raises TypeError: y is not a ``torch.Tensor``.
    :raises ValueError: y is complex or integer, has the wrong shape, or holds NaN/Inf.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"solver '{name}': y must be a torch.Tensor, got {type(y).__name__}")
    if y.is_complex() or not y.is_floating_point():
        raise ValueError(f"solver '{name}': y must be a real floating tensor (complex data as 2 real "
                         f"channels), got dtype {y.dtype}")
    meas = tuple(getattr(operator, "meas_size", ()))
    if (meas and (y.ndim != len(meas) + 1 or tuple(y.shape[1:]) != meas)) or y.ndim < 1:
        want = f"[B, {', '.join(map(str, meas))}]" if meas else "[B, ...] (a batch)"
        raise ValueError(f"solver '{name}': y must have shape {want} for "
                         f"{operator.describe() if hasattr(operator, 'describe') else type(operator).__name__}, "
                         f"got {list(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"solver '{name}': y contains NaN or Inf")


def check_sigma_y(sigma_y, batch: int, *, y_shape=None, name: str | None = None, device=None) -> Tensor:
    """The measurement noise σ_y as a float64 tensor, checked: finite and ``>= 0``, one value for
    the batch or one per item (and, with ``y_shape``, one per entry of y).

    :param sigma_y: a float, a sequence or tensor of ``batch`` values, or (only when ``y_shape`` is
        given) a tensor shaped like y.
    :param batch: the number of items B.
    :param y_shape: y's shape ``[B, *meas]`` when a per-entry σ_y is accepted (the solvers' view);
        ``None`` accepts a float or ``[B]`` only (``invdiff.reconstruct``'s view).
    :param name: the solver's name, prefixed to the messages (``"solver 'dps': sigma_y …"``).
    :param device: where the returned tensor lives (default CPU).
    :returns: ``[B]`` (a float is repeated B times), or the y-shaped tensor as given.
    :raises TypeError: σ_y is not a number or numbers.
    :raises ValueError: σ_y has another shape, or a value that is NaN, Inf or negative.
    """
    who = _who(name)
    try:
        s = torch.as_tensor(sigma_y, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{who}sigma_y must be a float or one value per item, got {sigma_y!r}") from err
    if s.ndim == 0:
        s = s.expand(batch).clone()
    elif y_shape is not None and s.ndim > 1 and tuple(s.shape) == tuple(y_shape):
        pass
    elif s.ndim != 1 or s.shape[0] != batch:
        if y_shape is None:
            raise ValueError(f"{who}sigma_y must be a float or one value per item ([{batch}]), got shape {list(s.shape)}")
        raise ValueError(f"{who}sigma_y must be a float, a [B] tensor with B={batch} or a tensor shaped like y "
                         f"{list(y_shape)}; got shape {list(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"{who}sigma_y must be finite and >= 0, got {sigma_y}")
    return s

