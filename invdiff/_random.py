"""Randomness through ``torch.Generator`` only: one generator for the batch, or one per item.

With a list of generators, item i's noise depends only on generator i, so a sample does not
depend on which batch computed it (DESIGN.md). ``None`` uses torch's default generator.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def check_generator(generator: GeneratorArg, batch: int) -> None:
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}; pass one per item or a single one")


def randn(shape, generator: GeneratorArg, *, dtype=torch.float64, device=None) -> Tensor:
    """Standard normal noise of ``shape`` (``[B, ...]``), drawn on the CPU generator's device or
    on ``device`` (a generator must live on the device it draws for)."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape, generator: GeneratorArg, *, dtype=torch.float64, device=None) -> Tensor:
    """Uniform [0, 1) draws of ``shape`` (``[B, ...]``), per item with a list of generators."""
    return _draw(torch.rand, shape, generator, dtype, device)


def _draw(fn, shape, generator: GeneratorArg, dtype, device) -> Tensor:
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        check_generator(generator, shape[0])
        return torch.cat([_one(fn, (1, *shape[1:]), g, dtype, device) for g in generator])
    return _one(fn, shape, generator, dtype, device)


def _one(fn, shape, g, dtype, device) -> Tensor:
    gen_device = g.device if g is not None else torch.device("cpu")
    return fn(shape, generator=g, dtype=dtype, device=gen_device).to(device or gen_device)
