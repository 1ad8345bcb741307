"""Cartesian MRI undersampling masks (1 = sampled k-space location), faithful to their sources.

Each generator is called as ``gen((H, W), generator=None, seed=None) -> Tensor [H, W]`` (float64
in {0, 1}, in *centred* k-space: DC at ``(H//2, W//2)``). 1-D masks select phase-encode columns
(along W) and repeat over rows. ``seed`` (an int or a tuple of ints, e.g. :func:`fastmri_seed` of a
file name) seeds numpy exactly as fastMRI does; otherwise one draw from ``generator`` seeds it.
:func:`acceleration` gives a mask's true acceleration.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .kernels import numpy_rng


def acceleration(mask: Tensor) -> float:
    """True acceleration: number of k-space locations ÷ number sampled."""
    return float(mask.numel() / mask.sum())


def fastmri_seed(name: str) -> tuple[int, ...]:
    """fastMRI's validation-mask seed for a file name: ``tuple(map(ord, name))``."""
    return tuple(map(ord, name))


def _rng(generator: torch.Generator | None, seed) -> np.random.RandomState:
    if seed is not None:
        return np.random.RandomState(seed)
    return np.random.RandomState(int(numpy_rng(generator).integers(0, 2**31 - 1)))


def _columns(cols: np.ndarray, H: int) -> Tensor:
    return torch.from_numpy(np.asarray(cols, dtype=np.float64))[None, :].expand(H, -1).clone()


def _hw(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"mask shape must end with (H, W), got {shape}")
    return shape[-2], shape[-1]


def centre_columns(num_cols: int, num_low: int) -> np.ndarray:
    """fastMRI's fully sampled centre: ``num_low`` columns from ``(num_cols − num_low + 1) // 2``."""
    mask = np.zeros(num_cols)
    pad = (num_cols - num_low + 1) // 2
    mask[pad : pad + num_low] = 1
    return mask


class FastMRIMask:
    """fastMRI's 1-D masks (``fastmri.data.subsample``), reproduced draw for draw.

    :param kind: ``random`` (``RandomMaskFunc``: Bernoulli columns with probability
        ``(N/R − N_c)/(N − N_c)``, so R is hit only on average), ``equispaced``
        (``EquiSpacedMaskFunc``, the legacy mask: every R-th column from a random offset, which
        over-samples), or ``equispaced_fraction`` (``EquispacedMaskFractionFunc``: spacing adjusted
        for the centre so that R is hit).
    :param center_fractions, accelerations: as fastMRI (4× with 0.08, 8× with 0.04); one pair is
        chosen per call (``allow_any_combination`` draws each independently).
    """

    KINDS = ("random", "equispaced", "equispaced_fraction")

    def __init__(self, kind: str = "random", center_fractions: Sequence[float] = (0.08,),
                 accelerations: Sequence[int] = (4,), allow_any_combination: bool = False):
        if kind not in self.KINDS:
            raise ValueError(f"FastMRIMask: unknown kind {kind!r}; choose one of {self.KINDS}")
        self.center_fractions, self.accelerations = list(center_fractions), list(accelerations)
        if len(self.center_fractions) != len(self.accelerations) and not allow_any_combination:
            raise ValueError("FastMRIMask: center_fractions and accelerations must have the same length")
        self.kind, self.allow_any_combination = kind, bool(allow_any_combination)

    def __call__(self, shape, generator: torch.Generator | None = None, seed=None) -> Tensor:
        H, W = _hw(shape)
        rng = _rng(generator, seed)
        if self.allow_any_combination:
            cf, acc = rng.choice(self.center_fractions), rng.choice(self.accelerations)
        else:
            i = rng.randint(len(self.center_fractions))
            cf, acc = self.center_fractions[i], self.accelerations[i]
        num_low = round(W * cf)
        centre = centre_columns(W, num_low)
        if self.kind == "random":
            prob = (W / acc - num_low) / (W - num_low)
            accel = (rng.uniform(size=W) < prob).astype(np.float64)
        elif self.kind == "equispaced":
            offset = rng.randint(0, high=round(acc))
            accel = np.zeros(W)
            accel[offset::acc] = 1
        else:
            adjusted = (acc * (num_low - W)) / (num_low * acc - W)
            offset = rng.randint(0, high=round(adjusted))
            accel = np.zeros(W)
            accel[np.around(np.arange(offset, W - 1, adjusted)).astype(np.uint64)] = 1
        return _columns(np.maximum(centre, accel), H)


class RandomLinesMask:
    """Exactly ``round(W / R)`` columns: fastMRI's centre block of ``round(W·cf)`` columns plus the
    rest drawn without replacement among the others (hits R exactly, unlike fastMRI's Bernoulli)."""

    def __init__(self, acceleration: float = 4, center_fraction: float = 0.08):
        self.acceleration, self.center_fraction = float(acceleration), float(center_fraction)

    def __call__(self, shape, generator: torch.Generator | None = None, seed=None) -> Tensor:
        H, W = _hw(shape)
        rng = _rng(generator, seed)
        total, num_low = round(W / self.acceleration), round(W * self.center_fraction)
        if total < num_low:
            raise ValueError(f"RandomLinesMask: {total} lines cannot hold a centre of {num_low}")
        cols = centre_columns(W, num_low)
        others = np.flatnonzero(cols == 0)
        cols[rng.permutation(others)[: total - num_low]] = 1
        return _columns(cols, H)


class ScoreMRIMask:
    """score-MRI's masks (Chung & Ye 2022, ``utils.get_mask``): ``gaussian1d`` (``1.2·N/R`` column
    draws from N(N/2, (15N/128)²) plus an ACS block of ``int(N·cf)``), ``uniform1d`` (``N/R − N_c``
    uniform draws with replacement plus the ACS block) and ``gaussian2d`` (``HW/R`` points from
    N(centre, (1.5N²/128) I), no ACS). Draws with replacement collide, so the true acceleration is
    above R: :func:`acceleration` reports it."""

    KINDS = ("gaussian1d", "uniform1d", "gaussian2d")

    def __init__(self, kind: str = "gaussian1d", acceleration: int = 4, center_fraction: float = 0.08):
        if kind not in self.KINDS:
            raise ValueError(f"ScoreMRIMask: unknown kind {kind!r}; choose one of {self.KINDS}")
        if int(acceleration) != acceleration or acceleration < 1:
            raise ValueError(f"ScoreMRIMask: score-MRI's masks take an integer acceleration, got {acceleration}")
        self.kind, self.acceleration, self.center_fraction = kind, int(acceleration), float(center_fraction)

    def __call__(self, shape, generator: torch.Generator | None = None, seed=None) -> Tensor:
        H, W = _hw(shape)
        rng = _rng(generator, seed)
        if self.kind == "gaussian2d":
            n = (H * W) // self.acceleration
            cov = [[H * H * 1.5 / 128, 0.0], [0.0, W * W * 1.5 / 128]]
            pts = rng.multivariate_normal([H // 2, W // 2], cov, n).astype(int)
            mask = np.zeros((H, W))
            mask[np.clip(pts[:, 0], 0, H - 1), np.clip(pts[:, 1], 0, W - 1)] = 1
            return torch.from_numpy(mask)
        n = W // self.acceleration
        n_centre = int(W * self.center_fraction)
        cols = np.zeros(W)
        if self.kind == "gaussian1d":
            draws = rng.normal(loc=W // 2, scale=W * 15.0 / 128, size=int(n * 1.2)).astype(int)
            cols[np.clip(draws, 0, W - 1)] = 1
        else:
            cols[rng.choice(W, int(n - n_centre))] = 1
        start = W // 2 - n_centre // 2
        cols[start : start + n_centre] = 1
        return _columns(cols, H)


class PoissonDiscMask:
    """Variable-density Poisson-disc sampling in 2-D (as used for 2-D Cartesian/3-D acquisitions):
    points no closer than ``r(ρ) = r₀ (1 + slope·ρ)`` (ρ the normalised distance from the k-space
    centre), by dart throwing, with r₀ set by bisection to hit ``acceleration`` within 5 %, plus a
    fully sampled ``calib × calib`` centre. Pure-Python dart throwing, O(points²): seconds at 64²,
    tens of seconds at 128²; draw large masks once and save them (``Inpainting``-style, pass the
    tensor)."""

    def __init__(self, acceleration: float = 6.0, calib: int = 8, slope: float = 1.0, max_tries: int = 30):
        self.acceleration, self.calib, self.slope, self.max_tries = float(acceleration), int(calib), float(slope), int(max_tries)

    def _throw(self, rng: np.random.Generator, H: int, W: int, r0: float) -> np.ndarray:
        yy, xx = np.mgrid[0:H, 0:W]
        rho = np.hypot((yy - H // 2) / (H / 2), (xx - W // 2) / (W / 2)) / math.sqrt(2)
        radius = r0 * (1 + self.slope * rho)
        mask = np.zeros((H, W), dtype=bool)
        pts: list[tuple[int, int]] = []
        order = rng.permutation(H * W)
        for flat in order:
            i, j = divmod(int(flat), W)
            r = radius[i, j]
            if pts:
                arr = np.asarray(pts)
                if (np.hypot(arr[:, 0] - i, arr[:, 1] - j) < r).any():
                    continue
            pts.append((i, j))
            mask[i, j] = True
        c0h, c0w = H // 2 - self.calib // 2, W // 2 - self.calib // 2
        mask[max(c0h, 0) : c0h + self.calib, max(c0w, 0) : c0w + self.calib] = True
        return mask

    def __call__(self, shape, generator: torch.Generator | None = None, seed=None) -> Tensor:
        H, W = _hw(shape)
        base = int(_rng(generator, seed).randint(0, 2**31 - 1))
        lo, hi = 0.5, max(H, W) / 2
        best = None
        for _ in range(self.max_tries):
            r0 = 0.5 * (lo + hi)
            mask = self._throw(np.random.default_rng(base), H, W, r0)
            acc = mask.size / mask.sum()
            best = mask
            if abs(acc - self.acceleration) <= 0.05 * self.acceleration:
                break
            lo, hi = (r0, hi) if acc < self.acceleration else (lo, r0)
        return torch.from_numpy(best.astype(np.float64))


class RadialMask:
    """``spokes`` lines through the k-space centre at equally spaced (or golden-angle) angles,
    rasterised onto the Cartesian grid (nearest sample)."""

    def __init__(self, spokes: int = 32, golden: bool = False):
        self.spokes, self.golden = int(spokes), bool(golden)

    def __call__(self, shape, generator: torch.Generator | None = None, seed=None) -> Tensor:
        H, W = _hw(shape)
        step = math.pi * (3 - math.sqrt(5)) / 2 if self.golden else math.pi / self.spokes
        offset = float(_rng(generator, seed).uniform(0, math.pi)) if (generator is not None or seed is not None) else 0.0
        t = np.linspace(-1, 1, 4 * max(H, W))
        mask = np.zeros((H, W))
        for k in range(self.spokes):
            a = offset + k * step
            rows = np.clip(np.round(H // 2 + t * (H / 2) * math.sin(a)).astype(int), 0, H - 1)
            cols = np.clip(np.round(W // 2 + t * (W / 2) * math.cos(a)).astype(int), 0, W - 1)
            mask[rows, cols] = 1
        return torch.from_numpy(mask)
