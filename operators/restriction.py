"""Exact restrictions of an operator to a tile of its image, for solving images larger than a prior.

A tile's problem is exact: its measurement is the part of y that depends only on the tile's pixels
(the image's own padding included where the tile touches the image border), and its operator is
the full operator restricted to it, so no pixel of a tile's y is explained by pixels outside the
tile. An operator that has one declares ``tileable = True`` and builds it with
``op.restriction()``; :func:`restriction_of` refuses the others (operators that couple all pixels:
MRI, CT, phase retrieval, nonlinear models). :mod:`invdiff.tiling` lays the tiles out, solves and
blends them.

* :class:`MaskRestriction` — :class:`~operators.Inpainting` (masks, clouds, denoising with an
  all-ones mask): the crop of the mask; y cropped to the tile.
* :class:`SeparableRestriction` — a :class:`~operators.Blur` with a separable kernel (any padding)
  and :class:`~operators.Downsampling` by ``f`` (tiles on the ``f``-grid): the rows of the 1-D
  matrices whose support lies in the tile, so each tile keeps an exact SVD (DDRM, DDNM, ... work).
* :class:`ConvRestriction` — a :class:`~operators.Blur` with any other kernel: y cropped to the
  outputs whose kernel support lies in the tile (a kernel radius inside inner tile edges, up to the
  image border at outer ones); a gather + valid convolution (gradient-based solvers).

With ``circular`` padding the measurements whose kernel wraps around the image depend on pixels at
both borders, so no tile uses them: image borders are then a little less constrained than with the
other paddings.

A restriction computes each axis's restriction once per tile start and each tile operator once per
distinct restriction (tiles with equal keys get the same operator object), so the interior tiles of
a large image share one operator (and its SVD). ``op.restrict(top, left, h, w)`` builds one tile's
problem; keep ``op.restriction()`` to share that work between tiles.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import Tensor

from ._engines import ConvEngine, SeparableEngine
from .base import LinearOperator, untileable
from .linalg import conv_padding, pad_index

#: a tile problem: (tile operator, y box (top, left, height, width) in measurement pixels, margin, key)
TileProblem = tuple[LinearOperator, tuple[int, int, int, int], int, object]


def restriction_of(op) -> "Restriction":
    """``op.restriction()``, or the one-paragraph refusal for an operator that cannot be tiled
    (an invdiff operator without a restriction, or any other object)."""
    if not getattr(op, "tileable", False):
        raise untileable(op)
    return op.restriction()


class TileOperator(LinearOperator):
    """The exact restriction of a blur or downsampling to a tile: the measurements that see only
    the tile's pixels (image-border padding included), as a function of the tile."""

    def __init__(self, engine: torch.nn.Module, img_size, meas_size, what: str, **solver_options):
        super().__init__(engine, img_size, meas_size, **solver_options)
        self.what = what

    def _describe_params(self) -> str:
        return f"tile of {self.what}, img_size={list(self.img_size)}, meas_size={list(self.meas_size)}"

    def config(self) -> dict:
        raise NotImplementedError("tile operators are built by invdiff.tiling and not saved; save the full operator")


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() + str(tuple(t.shape))


class Restriction:
    """The tile problems of one operator (module docstring).

    What a layout needs, declared by the operator through its restriction:

    * ``step``: tile starts and sizes, and the image size, are multiples of it (a downsampling's
      factor; 1 elsewhere);
    * ``kernel``: the shape of a kernel that every tile must exceed (``None`` without one);
    * ``per_tile``: whether tiles have operators of their own (a mask that is not all ones), to be
      solved together through :meth:`stack` rather than grouped by equal operators.
    """

    step = 1
    kernel: tuple[int, int] | None = None
    per_tile = False

    def __init__(self, op):
        self.op, self.C = op, int(op.img_size[0])
        self.options = {k: getattr(op, k) for k in ("pinv_rtol", "cg_tol", "cg_max_iter") if hasattr(op, k)}
        self._ops: dict = {}

    def check(self, th: int, tw: int) -> None:
        """Refuse tiles of ``th × tw`` pixels this operator cannot be restricted to."""
        _, H, W = (int(s) for s in self.op.img_size)
        s = self.step
        if th % s or tw % s or H % s or W % s:
            raise ValueError(f"tiling: ×{s} downsampling needs tile and image sizes divisible by {s}")
        if self.kernel is not None and max(self.kernel) >= min(th, tw):
            raise ValueError(f"tiling: a {self.kernel} kernel leaves no measurement inside a {th}×{tw} "
                             "tile; tiles must be larger than the kernel")

    def box(self, top: int, left: int, th: int, tw: int) -> tuple[tuple[int, int, int, int], int]:
        """(y box, margin) of the tile ``[top : top + th, left : left + tw]``, without building its
        operator: the measurements the tile keeps, and the most pixels at an edge of the tile that
        some measurement the tile lacks also depends on."""
        raise NotImplementedError

    def restrict(self, top: int, left: int, th: int, tw: int, *, item: int = 0) -> TileProblem:
        """(operator, y box, margin, key) of the tile ``[top : top + th, left : left + tw]``; tiles
        with equal keys have the same operator. ``item`` picks the mask of an inpainting operator
        that holds one mask per image."""
        raise NotImplementedError

    def _cached(self, key, make: Callable[[], LinearOperator]) -> LinearOperator:
        if key not in self._ops:
            self._ops[key] = make()
        return self._ops[key]


class MaskRestriction(Restriction):
    """Inpainting: the crop of the mask (of mask ``item`` for per-image masks); y cropped to the
    tile. ``build(mask, img_size, **options)`` makes the tile operators."""

    def __init__(self, op, build: Callable[..., LinearOperator]):
        super().__init__(op)
        self.build = build

    @property
    def per_tile(self) -> bool:
        return not bool((self.op.mask == 1).all())

    def box(self, top, left, th, tw):
        return (top, left, th, tw), 0

    def restrict(self, top, left, th, tw, *, item=0):
        mask = self.op.mask[item:item + 1] if self.op.mask.shape[0] > 1 else self.op.mask
        sub = mask[..., top:top + th, left:left + tw].cpu()
        key = ("mask", _digest(sub))  # equal masks (denoising: all ones) share one operator
        o = self._cached(key, lambda: self.build(sub, (self.C, th, tw), **self.options))
        return o, (top, left, th, tw), 0, key

    def stack(self, ops: list[LinearOperator], repeats: int) -> LinearOperator:
        """One operator holding the masks of the tile operators ``ops``, each ``repeats`` times in a
        row (a solver call on tiles × draws, in that order)."""
        masks = torch.cat([o.mask for o in ops])
        return self.build(masks.repeat_interleave(repeats, 0), tuple(ops[0].img_size), **self.options)


def _contiguous(ok: Tensor, size: int) -> tuple[int, int]:
    rows = ok.nonzero().flatten().tolist()
    if not rows or rows != list(range(rows[0], rows[0] + len(rows))):
        raise ValueError(f"tiling: no contiguous block of measurements lies inside a {size}-px tile; use larger tiles")
    return rows[0], len(rows)


def _axis(D: Tensor, start: int, size: int) -> tuple[int, int, int]:
    """Along one axis, with ``D[i, j]`` = measurement i depends on pixel j: (first, count) of the
    measurements that depend only on pixels of [start, start + size), and the tile's margin (the
    most pixels at an end of the tile that some measurement outside that block also depends on)."""
    outside = torch.ones(D.shape[1], dtype=torch.bool)
    outside[start:start + size] = False
    first, count = _contiguous(~D[:, outside].any(1) & D.any(1), size)
    unseen = D[:, start:start + size].clone()
    unseen[first:first + count] = False
    partial = unseen.any(0).tolist()  # pixels some of whose measurements the tile lacks
    lead = next((k for k, v in enumerate(partial) if not v), size)
    trail = next((k for k, v in enumerate(reversed(partial)) if not v), size)
    return first, count, max(lead, trail)


def _conv_support(idx: Tensor, K: int, n: int) -> Tensor:
    """``D[i, j]``: output i of a convolution reading padded samples ``idx[i : i + K]`` (image
    indices, -1 for zeros) depends on pixel j."""
    win = idx.unfold(0, K, 1)
    D = torch.zeros(win.shape[0], n + 1, dtype=torch.bool)
    D.scatter_(1, torch.where(win < 0, n, win), True)
    return D[:, :n]


class _SupportRestriction(Restriction):
    """A separable measurement support ``D = (D_h, D_w)`` (``D[i, j]``: measurement i depends on
    pixel j along that axis): a tile keeps the block of measurements that see only its pixels."""

    D: tuple[Tensor, Tensor]

    def __init__(self, op):
        super().__init__(op)
        self._axes: dict = {}

    def _axis(self, k: int, start: int, size: int) -> tuple[int, int, int]:
        key = (k, start, size)
        if key not in self._axes:
            self._axes[key] = _axis(self.D[k], start, size)
        return self._axes[key]

    def box(self, top, left, th, tw):
        (r0, nr, mh), (c0, nc, mw) = self._axis(0, top, th), self._axis(1, left, tw)
        return (r0, c0, nr, nc), max(mh, mw)


class SeparableRestriction(_SupportRestriction):
    """``Y = A_h X A_wᵀ`` with the full 1-D matrices ``factors = (A_h, A_w)``: the rows that see
    only the tile, with an exact SVD per tile. ``step``: the tile grid (a downsampling's factor);
    ``kernel``: the shape of a blur kernel the tiles must exceed."""

    def __init__(self, op, factors: tuple[Tensor, Tensor], *, step: int = 1, kernel: tuple[int, int] | None = None):
        super().__init__(op)
        self.M = tuple(f.cpu() for f in factors)
        self.D = (self.M[0] != 0, self.M[1] != 0)
        self.step, self.kernel = int(step), kernel

    def restrict(self, top, left, th, tw, *, item=0):
        (r0, c0, nr, nc), margin = self.box(top, left, th, tw)
        A_h, A_w = self.M[0][r0:r0 + nr, top:top + th], self.M[1][c0:c0 + nc, left:left + tw]
        key = (_digest(A_h), _digest(A_w))
        o = self._cached(key, lambda: TileOperator(SeparableEngine(A_h, A_w), (self.C, th, tw), (self.C, nr, nc),
                                                   type(self.op).__name__, **self.options))
        return o, (r0, c0, nr, nc), margin, key


class ConvRestriction(_SupportRestriction):
    """A 2-D convolution with any kernel and padding: the convolution's own index maps (padding
    included), restricted to the outputs whose support lies in the tile; no SVD."""

    def __init__(self, op, kernel: Tensor, padding: str):
        super().__init__(op)
        _, H, W = (int(s) for s in op.img_size)
        self.weights, self.padding = kernel.cpu(), padding
        self.kernel = K = tuple(int(k) for k in kernel.shape)
        mode = "zeros" if padding == "valid" else padding
        self.idx = tuple(pad_index(n, *conv_padding(k, padding), mode) for n, k in zip((H, W), K))
        self.D = tuple(_conv_support(i, k, n) for i, k, n in zip(self.idx, K, (H, W)))

    def restrict(self, top, left, th, tw, *, item=0):
        (r0, c0, nr, nc), margin = self.box(top, left, th, tw)
        (Kh, Kw), (idx_h, idx_w) = self.kernel, self.idx
        ih, iw = idx_h[r0:r0 + nr + Kh - 1], idx_w[c0:c0 + nc + Kw - 1]
        ih, iw = torch.where(ih < 0, ih, ih - top), torch.where(iw < 0, iw, iw - left)
        key = (tuple(ih.tolist()), tuple(iw.tolist()))
        o = self._cached(key, lambda: TileOperator(ConvEngine(self.weights, th, tw, self.padding, index=(ih, iw)),
                                                   (self.C, th, tw), (self.C, nr, nc), "Blur", **self.options))
        return o, (r0, c0, nr, nc), margin, key
