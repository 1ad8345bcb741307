"""Inpainting-mask generators (1 = observed pixel, 0 = missing).

Each generator is called as ``gen(img_size, n=1, generator=None) -> Tensor [n, 1, H, W]``
(float64 in {0, 1}); ``img_size`` is ``(C, H, W)`` or ``(H, W)``. Random generators draw only from
the ``torch.Generator`` given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .files import load_npy, read_image
from .kernels import numpy_rng


def _hw(img_size) -> tuple[int, int]:
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) not in (2, 3):
        raise ValueError(f"img_size must be (C, H, W) or (H, W), got {img_size}")
    return img_size[-2], img_size[-1]


class BoxMask:
    """A missing rectangle of ``size`` (h, w) pixels — or, with ``relative_size``, that fraction of
    the image's height and width — centred, at a fixed ``(top, left)``, or at a random position
    keeping ``margin`` pixels from the border (DPS: 128×128 box in a 256×256 image)."""

    def __init__(self, size=(128, 128), position="center", margin=(16, 16), relative_size: float | None = None):
        self.size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        self.relative_size = None if relative_size is None else float(relative_size)
        if self.relative_size is not None and not 0 < self.relative_size <= 1:
            raise ValueError(f"BoxMask: relative_size must be in (0, 1], got {relative_size}")
        self.position = position if isinstance(position, str) else tuple(int(p) for p in position)
        self.margin = (int(margin), int(margin)) if isinstance(margin, (int, float)) else tuple(int(m) for m in margin)
        if isinstance(self.position, str) and self.position not in ("center", "random"):
            raise ValueError(f"BoxMask: position must be 'center', 'random' or (top, left), got {position!r}")

    def __call__(self, img_size, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        H, W = _hw(img_size)
        h, w = self.size if self.relative_size is None else (round(self.relative_size * H), round(self.relative_size * W))
        if h > H or w > W or h < 1 or w < 1:
            raise ValueError(f"BoxMask: a {h}×{w} box does not fit a {H}×{W} image")
        mask = torch.ones(n, 1, H, W, dtype=torch.float64)
        for i in range(n):
            if self.position == "center":
                top, left = (H - h) // 2, (W - w) // 2
            elif self.position == "random":
                mh, mw = min(self.margin[0], (H - h) // 2), min(self.margin[1], (W - w) // 2)
                top = int(torch.randint(mh, H - h - mh + 1, (1,), generator=generator))
                left = int(torch.randint(mw, W - w - mw + 1, (1,), generator=generator))
            else:
                top, left = self.position
                if not (0 <= top <= H - h and 0 <= left <= W - w):
                    raise ValueError(f"BoxMask: box at {(top, left)} of size {(h, w)} leaves the {H}×{W} image")
            mask[i, :, top : top + h, left : left + w] = 0.0
        return mask


class RandomPixelMask:
    """Each pixel missing with probability ``fraction_missing`` (DAPS: 0.7; DDRM/DiffPIR: 0.5).

    ``exact=True`` removes exactly ``round(fraction·H·W)`` pixels (a random permutation), so the
    fraction is hit exactly; ``exact=False`` draws each pixel independently (Bernoulli).
    """

    def __init__(self, fraction_missing: float = 0.7, exact: bool = True):
        if not 0.0 <= fraction_missing <= 1.0:
            raise ValueError(f"RandomPixelMask: fraction_missing must be in [0, 1], got {fraction_missing}")
        self.fraction_missing, self.exact = float(fraction_missing), bool(exact)

    def __call__(self, img_size, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        H, W = _hw(img_size)
        if self.exact:
            k = round(self.fraction_missing * H * W)
            mask = torch.ones(n, H * W, dtype=torch.float64)
            for i in range(n):
                mask[i, torch.randperm(H * W, generator=generator)[:k]] = 0.0
            return mask.reshape(n, 1, H, W)
        u = torch.rand(n, 1, H, W, generator=generator, dtype=torch.float64)
        return (u >= self.fraction_missing).to(torch.float64)


class HalfMask:
    """The ``side`` half (``left``, ``right``, ``top``, ``bottom``) missing; odd sizes lose the
    smaller half (``floor``)."""

    def __init__(self, side: str = "right"):
        if side not in ("left", "right", "top", "bottom"):
            raise ValueError(f"HalfMask: side must be left/right/top/bottom, got {side!r}")
        self.side = side

    def __call__(self, img_size, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        H, W = _hw(img_size)
        mask = torch.ones(n, 1, H, W, dtype=torch.float64)
        if self.side == "left":
            mask[..., :, : W // 2] = 0
        elif self.side == "right":
            mask[..., :, W - W // 2 :] = 0
        elif self.side == "top":
            mask[..., : H // 2, :] = 0
        else:
            mask[..., H - H // 2 :, :] = 0
        return mask


class FreeFormMask:
    """Irregular brush strokes (free-form masks in the style of DeepFill v2 / LaMa).

    Each of 1..``max_strokes`` strokes starts at a random point and makes 1..``max_vertices``
    moves of random direction and length (up to ``max_length`` × min(H, W)) with a brush whose
    width is drawn in ``brush_width`` × min(H, W); the stroke covers every pixel within half a
    width of its polyline. Sizes are fractions of the image so one config serves 64 and 256.
    """

    def __init__(self, max_strokes: int = 5, max_vertices: int = 8, max_length: float = 0.25,
                 brush_width=(0.03, 0.1)):
        self.max_strokes, self.max_vertices = int(max_strokes), int(max_vertices)
        self.max_length, self.brush_width = float(max_length), tuple(float(b) for b in brush_width)
        if self.max_strokes < 1 or self.max_vertices < 1:
            raise ValueError("FreeFormMask: max_strokes and max_vertices must be >= 1")

    def _one(self, rng: np.random.Generator, H: int, W: int) -> np.ndarray:
        scale = min(H, W)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
        missing = np.zeros((H, W), dtype=bool)
        for _ in range(rng.integers(1, self.max_strokes + 1)):
            width = rng.uniform(*self.brush_width) * scale
            y, x = rng.uniform(0, H), rng.uniform(0, W)
            for _ in range(rng.integers(1, self.max_vertices + 1)):
                angle = rng.uniform(0, 2 * math.pi)
                length = rng.uniform(0.1, 1.0) * self.max_length * scale
                y1 = float(np.clip(y + length * math.sin(angle), 0, H - 1))
                x1 = float(np.clip(x + length * math.cos(angle), 0, W - 1))
                dy, dx = y1 - y, x1 - x
                seg2 = dx * dx + dy * dy
                t = np.clip(((yy - y) * dy + (xx - x) * dx) / seg2, 0, 1) if seg2 > 0 else 0.0
                missing |= (yy - y - t * dy) ** 2 + (xx - x - t * dx) ** 2 <= (width / 2) ** 2
                y, x = y1, x1
        return ~missing

    def __call__(self, img_size, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        H, W = _hw(img_size)
        rng = numpy_rng(generator)
        masks = np.stack([self._one(rng, H, W) for _ in range(n)])[:, None]
        return torch.from_numpy(masks.astype(np.float64))


class MaskFile:
    """A user mask from ``.npy`` (any numeric/bool array) or an image file (PNG/TIFF via
    scikit-image); nonzero = observed, or missing with ``invert=True``. ``[H, W]`` or
    ``[n, H, W]`` (one mask per image); a single mask is repeated when n masks are asked for."""

    def __init__(self, path: str, invert: bool = False):
        self.path, self.invert = str(path), bool(invert)

    def __call__(self, img_size, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        H, W = _hw(img_size)
        p = Path(self.path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"mask file not found: {p}")
        if p.suffix == ".npy":
            arr = load_npy(p, "mask file")
        else:
            arr = read_image(p, "mask image")
            if arr.ndim == 3:  # colour image: a pixel is observed if any channel is nonzero
                arr = arr.any(axis=-1)
        arr = np.asarray(arr)
        given = list(arr.shape)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[-2:] != (H, W):
            raise ValueError(f"mask in {p} has shape {given}; expected [{H}, {W}] for the {H}×{W} image (or "
                             f"[n, {H}, {W}], one mask per image)")
        if arr.shape[0] != n and arr.shape[0] != 1 and n != 1:
            raise ValueError(f"mask file {p} holds {arr.shape[0]} masks but {n} were asked for")
        if arr.shape[0] == 1 and n > 1:  # one mask for each of n images
            arr = np.repeat(arr, n, axis=0)
        mask = arr != 0
        if self.invert:
            mask = ~mask
        return torch.from_numpy(mask.astype(np.float64))[:, None]


def load_mask(path: str) -> Tensor:
    """A fixed sampling mask from ``.npy`` or ``file.h5:dataset`` (e.g. a fastMRI file's ``mask``):
    ``[W]`` (phase-encode columns, MRI) or ``[H, W]``; nonzero = sampled. Float64 0/1 tensor."""
    spec = str(path)
    key = None
    if ":" in spec and not Path(spec).exists() and spec.rsplit(":", 1)[0].endswith((".h5", ".hdf5")):
        spec, key = spec.rsplit(":", 1)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"mask file not found: {p}")
    if p.suffix == ".npy":
        arr = load_npy(p, "mask file")
    elif p.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            f = h5py.File(p, "r")
        except OSError as err:
            raise ValueError(f"mask file {p} is not a readable HDF5 file ({err})") from err
        with f:
            key = key or "mask"
            if key not in f:
                raise ValueError(f"{p} has no dataset {key!r} (name it as {p}:<dataset>)")
            arr = f[key][()]
    else:
        raise ValueError(f"mask file {p}: expected .npy or .h5[:dataset]")
    arr = np.asarray(arr)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(f"mask in {p} has shape {list(arr.shape)}; expected [W] or [H, W]")
    return torch.from_numpy((arr != 0).astype(np.float64))
