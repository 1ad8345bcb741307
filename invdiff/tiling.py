"""Images larger than the prior: solve prior-sized tiles and blend them over their overlaps.

A 2048×2048 satellite scene with cloud gaps, a blurred micrograph or a low-resolution tile is
restored with a 64- or 256-pixel prior by cutting the *measurement* into tiles, solving each tile
as its own inverse problem at the prior's size, and blending the tiles' reconstructions with
weights that fall smoothly to (nearly) zero at tile edges inside the image:

    out = invdiff.tiling.reconstruct_tiled(y, op, prior, "ddnm", sigma_y=0.01, overlap=16, num_samples=4)

Which operators can be tiled, and how each tile's problem is built, is the operators' own
knowledge (:mod:`operators.restriction`): a tile's measurement is the part of y that depends only
on the tile's pixels and its operator the full operator restricted to it — exactly — for
:class:`operators.Inpainting` (masks, clouds, denoising), :class:`operators.Blur` and
:class:`operators.Downsampling` (tiles on its factor's grid). Operators that couple all pixels
(MRI, CT, phase retrieval, nonlinear models) are refused before any work. This module lays the
tiles out, solves them and blends them; it asks the operator's restriction what a layout needs
(the grid step, the kernel a tile must exceed, the measurements and margin of each tile).

Blending. Along each axis, tile starts spread evenly from 0 to L − T (T the tile size) with
overlaps of at least ``overlap`` pixels. Each tile's weight is separable; along an axis it is 1
except over the ``overlap`` pixels next to an edge that lies inside the image, where it follows a
sin² ramp from ~0 to 1 (edges on the image border keep weight 1). Where two tiles overlap by
exactly ``overlap`` pixels the rising and falling ramps sum to exactly 1; in general the result is
normalised by the summed weights, so the weights form a partition of unity and a constant image
stays constant (tested). Every tile is solved with its own seeds, derived from (seed, sample id,
tile position), so results do not depend on batching; tiles that share one operator (the
interior tiles of a blur or downsampling) are solved as one batch. A blended draw combines independent draws of the tiles:
it is a sample of each tile's posterior away from the overlaps, an average of two in them (the
per-pixel spread is slightly lower there).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from operators.restriction import restriction_of

from .api import OutOfMemory, Reconstruction, batch_items, reconstruct


@dataclass(frozen=True)
class Tile:
    """A tile's box in image pixels (top, left, height, width) and in measurement pixels."""

    top: int
    left: int
    height: int
    width: int
    y_box: tuple[int, int, int, int]
    margin: int = 0  # pixels next to an inner edge given weight 0 (half of those the tile's y sees in part)

    @property
    def name(self) -> str:
        return f"tile{self.top}_{self.left}"


def starts(length: int, tile: int, overlap: int, step: int = 1) -> list[int]:
    """Tile starts along one axis: evenly spread from 0 to ``length - tile`` on multiples of
    ``step``, with consecutive tiles overlapping by at least ``overlap`` pixels."""
    if tile > length:
        raise ValueError(f"tiling: the tile ({tile} px) is larger than the image ({length} px)")
    if not 0 <= overlap < tile:
        raise ValueError(f"tiling: overlap must be in [0, {tile}) pixels, got {overlap}")
    if length == tile:
        return [0]
    if tile - overlap < step:
        raise ValueError(f"tiling: tiles on a {step}-px grid need overlap <= {tile - step} px ({tile}-px tiles), "
                         f"got {overlap}")
    if (length - tile) % step:
        raise ValueError(f"tiling: an image of {length} px cannot be covered by {tile}-px tiles on a {step}-px grid")
    span = (length - tile) // step
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    while True:  # rounding to the grid may widen a gap: add tiles until every overlap is wide enough
        out = [step * round(i * span / (n - 1)) for i in range(n)]
        if all(b - a <= tile - overlap for a, b in zip(out, out[1:])):
            return out
        n += 1


def ramp(length: int, overlap: int, rise: bool, fall: bool, margin: int = 0, dtype=torch.float64) -> Tensor:
    """The 1-D blend weight of a tile: on a ``rise`` (``fall``) side, 0 over the first (last)
    ``margin`` pixels, then a sin² ramp up to 1 over ``overlap - 2 margin`` pixels; 1 elsewhere. A
    rising and a falling ramp of tiles overlapping by exactly ``overlap`` pixels sum to 1."""
    w = torch.ones(length, dtype=dtype)
    width = overlap - 2 * margin
    if overlap > 0 and width < 1:
        raise ValueError(f"tiling: overlap {overlap} leaves no blend ramp beside the {margin}-px margins the operator "
                         f"needs; use overlap >= {2 * margin + 1}")
    if overlap > 0:
        t = torch.cat([torch.zeros(margin, dtype=dtype),
                       torch.sin(0.5 * math.pi * (torch.arange(width, dtype=dtype) + 0.5) / width) ** 2])
        n = t.numel()
        if rise:
            w[:n] = torch.minimum(w[:n], t)
        if fall:
            w[length - n:] = torch.minimum(w[length - n:], t.flip(0))
    return w


def weights(tiles: list[Tile], image_hw: tuple[int, int], overlap: int) -> list[Tensor]:
    """``[h, w]`` blend weight of each tile (unnormalised; see :func:`blend`)."""
    H, W = image_hw
    out = []
    for t in tiles:
        wy = ramp(t.height, overlap, t.top > 0, t.top + t.height < H, t.margin)
        wx = ramp(t.width, overlap, t.left > 0, t.left + t.width < W, t.margin)
        out.append(wy[:, None] * wx[None, :])
    return out


def blend(parts: list[Tensor], tiles: list[Tile], image_shape: tuple[int, ...], overlap: int) -> Tensor:
    """Weighted average of tile images ``parts[i]`` (``[..., h, w]``) into ``[..., H, W]``."""
    H, W = image_shape[-2:]
    lead = parts[0].shape[:-2]
    acc = torch.zeros((*lead, H, W), dtype=parts[0].dtype, device=parts[0].device)
    total = torch.zeros((H, W), dtype=torch.float64, device=parts[0].device)
    for p, t, w in zip(parts, tiles, weights(tiles, (H, W), overlap)):
        w = w.to(p.device)
        acc[..., t.top:t.top + t.height, t.left:t.left + t.width] += w.to(p.dtype) * p
        total[t.top:t.top + t.height, t.left:t.left + t.width] += w
    if not bool((total > 0).all()):
        raise ValueError("tiling: the tiles do not cover the image")
    return acc / total.to(acc.dtype)


# --------------------------------------------------------------------------------------------
# the tile problems
# --------------------------------------------------------------------------------------------
class Restriction:
    """The tiles of one operator's image: the operator's own restriction
    (:func:`operators.restriction.restriction_of`, which refuses operators that cannot be tiled),
    laid out and grouped. Tile problems are computed once per distinct restriction, so the interior
    tiles of a large image share one operator (and its SVD)."""

    def __init__(self, op):
        self.op = op
        self.problems = restriction_of(op)

    def problem(self, top: int, left: int, th: int, tw: int, *, item: int = 0):
        """(operator, y box, margin, key) of the tile ``[top : top + th, left : left + tw]``; tiles
        with equal keys have the same operator. ``item`` picks the mask of an inpainting operator
        that holds one mask per image."""
        return self.problems.restrict(top, left, th, tw, item=item)

    def layout(self, tile_hw: tuple[int, int], overlap: int) -> list[Tile]:
        _, H, W = (int(s) for s in self.op.img_size)
        th, tw = (int(s) for s in tile_hw)
        if th > H or tw > W:
            raise ValueError(f"tiling: the prior's {th}×{tw} tiles are larger than the {H}×{W} image")
        self.problems.check(th, tw)
        step = self.problems.step
        rows, cols = starts(H, th, overlap, step), starts(W, tw, overlap, step)
        boxes = {(t, l): self.problems.box(t, l, th, tw) for t in rows for l in cols}  # noqa: E741
        # pixels whose measurements the tile lacks in part: the outer half of that band gets weight 0
        margin = math.ceil(max(m for _, m in boxes.values()) / 2)
        ramp(th, overlap, True, True, margin)  # raises when the overlap is too small for the margins
        return [Tile(t, l, th, tw, boxes[t, l][0], margin) for t in rows for l in cols]  # noqa: E741

    def groups(self, tiles: list[Tile]) -> list[tuple[object, list[int]]]:
        """Tiles that share one operator (the interior tiles of a blur, say), each group with it."""
        out: dict = {}
        for i, t in enumerate(tiles):
            o, _, _, key = self.problem(t.top, t.left, t.height, t.width)
            out.setdefault(key, (o, []))[1].append(i)
        return list(out.values())


def tile_problem(op, top: int, left: int, th: int, tw: int, *, item: int = 0):
    """(operator, y box, margin) of the tile ``[top : top + th, left : left + tw]``
    (:mod:`operators.restriction`); ``item`` picks the mask of an inpainting operator that holds one mask per image."""
    return restriction_of(op).restrict(top, left, th, tw, item=item)[:3]


def layout(op, tile_hw: tuple[int, int], overlap: int) -> list[Tile]:
    """The tiles of ``op``'s image for tiles of ``tile_hw`` pixels (raises for operators that
    cannot be tiled, before any work)."""
    return Restriction(op).layout(tile_hw, overlap)


def tile_operator(op, tile: Tile, *, item: int = 0):
    """The forward operator of one tile's problem."""
    return tile_problem(op, tile.top, tile.left, tile.height, tile.width, item=item)[0]


def crop_y(y: Tensor, tile: Tile) -> Tensor:
    t, l, h, w = tile.y_box
    return y[..., t:t + h, l:l + w]


def reconstruct_tiled(y: Tensor, operator, prior, solver="pigdm", *, sigma_y, overlap: int = 16,
                      num_samples: int = 1, seed: int = 0, ids=None, batch_size=None,
                      progress=None, **solver_kwargs) -> Reconstruction:
    """:func:`invdiff.reconstruct` for images larger than the prior: prior-sized tiles, blended.

    :param y: ``[B, *op.meas_size]`` measurements of images ``op.img_size`` (larger than the prior's).
    :param overlap: minimum overlap of neighbouring tiles, in image pixels (the blend ramp's width).
    Other parameters as :func:`invdiff.reconstruct`; tile ``(top, left)`` of item ``id`` draws with
    the seeds of the id ``"{id}/tile{top}_{left}"``. ``nfe`` is per tile and draw; ``seconds`` the total.
    ``batch_size`` caps the draws solved at once (tiles × draws); ``"auto"`` halves on out-of-memory.
    """
    C, th, tw = (int(s) for s in prior.shape)
    img = tuple(int(s) for s in operator.img_size)
    if img[0] != C:
        raise ValueError(f"tiling: the prior models {C} channel(s), the operator's images have {img[0]}")
    restriction = Restriction(operator)
    tiles = restriction.layout((th, tw), int(overlap))
    B = y.shape[0]
    ids, sig = batch_items(B, ids, sigma_y)
    if tuple(y.shape[1:]) != tuple(operator.meas_size):
        raise ValueError(f"tiling: y has shape {list(y.shape[1:])} per item, the operator measures {list(operator.meas_size)}")
    from .memory import refusal

    n_at_once = (len(tiles) * int(num_samples) if batch_size is None else  # (a bad batch_size: reconstruct says so)
                 batch_size if isinstance(batch_size, int) and not isinstance(batch_size, bool) else 1)
    msg = refusal(img, int(num_samples), max(1, n_at_once), tile_shape=(C, th, tw), device=y.device, items=B,
                  what=f"tiled reconstruction of {B} image(s) {list(img)}", can_tile=False)
    if msg:  # (before any tile is solved: every tile's draws are kept until they are blended)
        raise OutOfMemory(msg)
    t0 = time.perf_counter()
    masked = restriction.problems.per_tile  # (a mask that is not all ones: each tile has its own operator)
    groups = None if masked else [(o.to(y.device), idx) for o, idx in restriction.groups(tiles)]
    out, seeds, nfe = [], [], 0
    for b in range(B):
        names = [f"{ids[b]}/{t.name}" for t in tiles]
        kw = dict(num_samples=num_samples, seed=seed, batch_size=batch_size, progress=progress, **solver_kwargs)
        parts, tile_seeds = [None] * len(tiles), [None] * len(tiles)
        if not masked:  # tiles sharing an operator in one call (batch_size caps how many solve at once)
            for o, idx in groups:
                ys = torch.cat([crop_y(y[b:b + 1], tiles[i]) for i in idx])
                rec = reconstruct(ys, o, prior, solver, sigma_y=float(sig[b]), ids=[names[i] for i in idx], **kw)
                for i, smp, sd in zip(idx, rec.samples, rec.seeds):
                    parts[i], tile_seeds[i] = smp, sd
                nfe = rec.nfe
        else:  # one mask per tile: groups of tiles in one call, through an operator holding their masks
            n = int(num_samples)
            auto = batch_size == "auto"
            single = isinstance(batch_size, int) and batch_size < n  # fewer draws at once than one tile has
            group = 1 if single else max(1, batch_size // n) if isinstance(batch_size, int) else \
                (len(tiles) if batch_size is None else 8)
            g = 0
            while g < len(tiles):
                chunk = tiles[g:g + group]
                if single or (auto and group == 1):  # one tile, its draws chunked by reconstruct
                    o = restriction.problem(chunk[0].top, chunk[0].left, th, tw, item=b)[0].to(y.device)
                    rec = reconstruct(crop_y(y[b:b + 1], chunk[0]), o, prior, solver, sigma_y=float(sig[b]),
                                      ids=names[g:g + 1], **kw)
                else:  # one solver call: the operator's masks follow reconstruct's (tile, draw) order
                    tile_ops = [restriction.problem(t.top, t.left, th, tw, item=b)[0] for t in chunk]
                    o = restriction.problems.stack(tile_ops, n).to(y.device)
                    try:
                        rec = reconstruct(torch.cat([crop_y(y[b:b + 1], t) for t in chunk]), o, prior, solver,
                                          sigma_y=float(sig[b]), ids=names[g:g + len(chunk)], **{**kw, "batch_size": None})
                    except OutOfMemory:
                        if not auto:
                            raise
                        group = max(1, group // 2)  # fewer tiles per call, then one tile with halved draws
                        continue
                parts[g:g + len(chunk)], tile_seeds[g:g + len(chunk)] = list(rec.samples), rec.seeds
                nfe = rec.nfe
                g += len(chunk)
        out.append(blend(parts, tiles, img, int(overlap)))  # [N, C, H, W]
        seeds.append({t.name: s for t, s in zip(tiles, tile_seeds)})
    samples = torch.stack(out)
    std = samples.std(dim=1) if num_samples > 1 else None
    return Reconstruction(samples, samples.mean(dim=1), std, int(nfe), time.perf_counter() - t0, seeds)
