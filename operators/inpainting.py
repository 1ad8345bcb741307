"""Inpainting: ``y = m ⊙ x`` with a {0, 1} mask (1 = observed), y the size of x (deepinv's
convention), zero at missing pixels. The SVD is trivial: ``U = V = I`` and ``s = m``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._engines import DiagonalEngine
from .base import LinearOperator
from .kernels import seeded
from .restriction import MaskRestriction


class Inpainting(LinearOperator):
    """Pixel masking.

    :param mask: a tensor/array ``[H, W]``, ``[C|1, H, W]`` or ``[B|1, C|1, H, W]``, or a mask
        generator (:class:`BoxMask`, :class:`RandomPixelMask`, :class:`HalfMask`,
        :class:`FreeFormMask`, :class:`MaskFile`) drawn with ``generator`` or ``seed``.
    :param img_size: ``(C, H, W)``.
    :param batch_size: with a generator, draw one mask per image for this many images (the
        operator then only accepts batches of that size); ``None`` draws one shared mask.

    Example::

        >>> import torch, operators
        >>> op = operators.Inpainting(operators.BoxMask(128), img_size=(3, 256, 256))
        >>> float(op.mask.mean())  # 1 - 128²/256²
        0.75
    """

    tileable = True

    def __init__(self, mask: Tensor | Callable, img_size=(1, 64, 64), *, batch_size: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None, **solver_options):
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 3:
            raise ValueError(f"Inpainting: img_size must be (C, H, W), got {img_size}")
        if callable(mask) and not isinstance(mask, Tensor):
            mask = mask(img_size, n=1 if batch_size is None else int(batch_size), generator=seeded(generator, seed))
        elif seed is not None or generator is not None or batch_size is not None:
            raise ValueError("Inpainting: seed/generator/batch_size apply only to a mask generator")
        mask = torch.as_tensor(mask, dtype=torch.float64)
        while mask.ndim < 4:
            mask = mask[None]
        C, H, W = img_size
        if mask.ndim != 4 or mask.shape[-2:] != (H, W) or mask.shape[1] not in (1, C):
            raise ValueError(f"Inpainting: mask of shape {tuple(mask.shape)} does not fit img_size {img_size}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("Inpainting: mask values must be 0 (missing) or 1 (observed)")
        super().__init__(DiagonalEngine(mask), img_size, img_size, **solver_options)
        self._solver_options = solver_options

    @property
    def mask(self) -> Tensor:
        return self.engine.mask

    def _check(self, t: Tensor, expected: tuple[int, ...], what: str) -> None:
        super()._check(t, expected, what)
        if self.mask.shape[0] > 1 and t.shape[0] != self.mask.shape[0]:
            raise ValueError(f"{self.describe()}: this operator holds {self.mask.shape[0]} per-image masks "
                             f"but got a batch of {t.shape[0]}")

    def restrict_to_range(self, y: Tensor) -> Tensor:
        return self.mask.to(y) * y

    def restriction(self) -> MaskRestriction:
        """Exact tile problems: the crop of the mask (:mod:`operators.restriction`)."""
        return MaskRestriction(self, Inpainting)

    def _describe_params(self) -> str:
        return (f"{self.mask.shape[0]} mask(s), {100 * (1 - float(self.mask.mean())):.1f}% missing, "
                f"img_size={list(self.img_size)}")

    def config(self) -> dict:
        return dict(mask=self.mask, img_size=self.img_size, **self._solver_options)
