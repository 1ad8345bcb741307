"""Images larger than the prior: solve prior-sized tiles and blend them over their overlaps.

A 2048×2048 satellite scene with cloud gaps, a blurred micrograph or a low-resolution tile is
restored with a 64- or 256-pixel prior by cutting the *measurement* into tiles, solving each tile
as its own inverse problem at the prior's size, and blending the tiles' reconstructions with
weights that fall smoothly to (nearly) zero at tile edges inside the image:

    out = invdiff.tiling.reconstruct_tiled(y, op, prior, "ddnm", sigma_y=0.01, overlap=16, num_samples=4)

Which operators can be tiled (:func:`tile_problem`), and how each tile's problem is built — in
every case *exactly*: a tile's measurement is the part of y that depends only on the tile's pixels
(the image's own padding included where the tile touches the image border), and the tile's
operator is the full operator restricted to it, so no pixel of a tile's y is explained by pixels
outside the tile:

* :class:`operators.Inpainting` (masks, clouds, denoising with an all-ones mask): the crop of the
  mask; y cropped to the tile.
* :class:`operators.Blur`: y cropped to the outputs whose kernel support lies in the tile (a
  kernel radius inside inner tile edges, up to the image border at outer ones). Separable kernels
  keep an exact SVD per tile (DDRM, DDNM, ... work); other kernels give a gather + valid
  convolution (gradient-based solvers).
* :class:`operators.Downsampling` by ``f``: tiles on the ``f``-grid; the low-resolution pixels
  whose filter support lies in the tile (an exact SVD).

With ``circular`` padding the measurements whose kernel wraps around the image depend on pixels
at both borders, so no tile uses them: image borders are then a little less constrained than
with the other paddings.

Operators that couple all pixels (MRI, CT, phase retrieval, nonlinear models) are refused.

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

import hashlib
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

import operators as O
from operators._engines import ConvEngine, SeparableEngine
from operators._linalg import conv_matrix_1d, conv_padding, pad_index
from operators.base import LinearOperator
from operators.blur import separable_factors

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


def _factors(op) -> tuple[Tensor, Tensor] | None:
    """The full 1-D matrices of a separable operator (``None`` for a non-separable blur)."""
    if isinstance(op.engine, SeparableEngine):
        return op.engine.A_h.cpu(), op.engine.A_w.cpu()
    if isinstance(op, O.Blur):
        f = separable_factors(op.kernel.cpu())
        if f is not None:
            _, H, W = op.img_size
            return conv_matrix_1d(f[0], H, op.padding), conv_matrix_1d(f[1], W, op.padding)
    return None


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


class Restriction:
    """The tile problems of one operator (module docstring). Each axis's restriction is computed
    once per tile start and tile operators once per distinct restriction, so the interior tiles
    of a large image share one operator (and its SVD)."""

    def __init__(self, op):
        self.op, self.C = op, int(op.img_size[0])
        self.options = {k: getattr(op, k) for k in ("pinv_rtol", "cg_tol", "cg_max_iter") if hasattr(op, k)}
        self._axes: dict = {}
        self._ops: dict = {}
        if isinstance(op, O.Inpainting):
            self.kind = "mask"
            return
        factors = _factors(op) if isinstance(op, (O.Blur, O.Downsampling)) else None
        if factors is not None:  # the rows of the 1-D matrices that see only the tile
            self.kind, self.M, self.D = "separable", factors, (factors[0] != 0, factors[1] != 0)
        elif isinstance(op, O.Blur):  # a non-separable kernel: the convolution's own index maps, restricted
            _, H, W = op.img_size
            self.K = tuple(int(k) for k in op.kernel.shape)
            mode = "zeros" if op.padding == "valid" else op.padding
            self.idx = tuple(pad_index(n, *conv_padding(k, op.padding), mode) for n, k in zip((H, W), self.K))
            self.kind = "conv"
            self.D = tuple(_conv_support(i, k, n) for i, k, n in zip(self.idx, self.K, (H, W)))
        else:
            raise ValueError(f"tiling: {type(op).__name__} couples distant pixels and cannot be tiled; tiling works "
                             "for Inpainting (masks, clouds, denoising), Blur and Downsampling")

    def _axis(self, k: int, start: int, size: int) -> tuple[int, int, int]:
        key = (k, start, size)
        if key not in self._axes:
            self._axes[key] = _axis(self.D[k], start, size)
        return self._axes[key]

    def problem(self, top: int, left: int, th: int, tw: int, *, item: int = 0):
        """(operator, y box, margin, key) of the tile ``[top : top + th, left : left + tw]``; tiles
        with equal keys have the same operator. ``item`` picks the mask of an inpainting operator
        that holds one mask per image."""
        C = self.C
        if self.kind == "mask":
            mask = self.op.mask[item:item + 1] if self.op.mask.shape[0] > 1 else self.op.mask
            sub = mask[..., top:top + th, left:left + tw].cpu()
            key = ("mask", _digest(sub))  # equal masks (denoising: all ones) share one operator
            if key not in self._ops:
                self._ops[key] = O.Inpainting(sub, (C, th, tw), **self.options)
            return self._ops[key], (top, left, th, tw), 0, key
        (r0, nr, mh), (c0, nc, mw) = self._axis(0, top, th), self._axis(1, left, tw)
        if self.kind == "separable":
            A_h, A_w = self.M[0][r0:r0 + nr, top:top + th], self.M[1][c0:c0 + nc, left:left + tw]
            key = (_digest(A_h), _digest(A_w))
            make = lambda: TileOperator(SeparableEngine(A_h, A_w), (C, th, tw), (C, nr, nc), type(self.op).__name__,  # noqa: E731
                                        **self.options)
        else:
            (Kh, Kw), (idx_h, idx_w) = self.K, self.idx
            ih, iw = idx_h[r0:r0 + nr + Kh - 1], idx_w[c0:c0 + nc + Kw - 1]
            ih, iw = torch.where(ih < 0, ih, ih - top), torch.where(iw < 0, iw, iw - left)
            key = (tuple(ih.tolist()), tuple(iw.tolist()))
            make = lambda: TileOperator(ConvEngine(self.op.kernel.cpu(), th, tw, self.op.padding, index=(ih, iw)),  # noqa: E731
                                        (C, th, tw), (C, nr, nc), "Blur", **self.options)
        if key not in self._ops:
            self._ops[key] = make()
        return self._ops[key], (r0, c0, nr, nc), max(mh, mw), key

    def layout(self, tile_hw: tuple[int, int], overlap: int) -> list[Tile]:
        op = self.op
        _, H, W = (int(s) for s in op.img_size)
        th, tw = (int(s) for s in tile_hw)
        if th > H or tw > W:
            raise ValueError(f"tiling: the prior's {th}×{tw} tiles are larger than the {H}×{W} image")
        step = op.factor if isinstance(op, O.Downsampling) else 1
        if th % step or tw % step or H % step or W % step:
            raise ValueError(f"tiling: ×{step} downsampling needs tile and image sizes divisible by {step}")
        if isinstance(op, O.Blur) and max(op.kernel.shape) >= min(th, tw):
            raise ValueError(f"tiling: a {tuple(op.kernel.shape)} kernel leaves no measurement inside a {th}×{tw} "
                             "tile; tiles must be larger than the kernel")
        rows, cols = starts(H, th, overlap, step), starts(W, tw, overlap, step)
        if self.kind == "mask":
            boxes = {(t, l): ((t, l, th, tw), 0) for t in rows for l in cols}  # noqa: E741
        else:
            boxes = {(t, l): self.problem(t, l, th, tw)[1:3] for t in rows for l in cols}  # noqa: E741
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


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() + str(tuple(t.shape))


def tile_problem(op, top: int, left: int, th: int, tw: int, *, item: int = 0):
    """(operator, y box, margin) of the tile ``[top : top + th, left : left + tw]`` (module docstring);
    ``item`` picks the mask of an inpainting operator that holds one mask per image."""
    return Restriction(op).problem(top, left, th, tw, item=item)[:3]


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
    masked = isinstance(operator, O.Inpainting) and not bool((operator.mask == 1).all())
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
                    masks = torch.cat([restriction.problem(t.top, t.left, th, tw, item=b)[0].mask for t in chunk])
                    o = O.Inpainting(masks.repeat_interleave(n, 0), (C, th, tw), **restriction.options).to(y.device)
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
