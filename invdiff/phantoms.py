"""Seeded random phantoms in the style of MRI/CT test objects (the ``phantom64`` prior's data).

Each phantom: a head-like outer ellipse (a bright rim around a darker interior), 3–9 inner
ellipses of random position, size, angle and contrast (added, as in the Shepp–Logan phantom),
sometimes a few small bright dots or a rectangle, and a smooth low-frequency texture; values in
[0, 1]. ``phantom(seed, size)`` is a pure function of its seed.

Held out from training (never drawn by :func:`training_seeds`): ``EVAL_SEEDS`` and the
scikit-image Shepp–Logan phantom resized to the same size (:func:`held_out`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: seeds reserved for evaluation; training draws from [0, 2**31) minus this block
EVAL_SEEDS = tuple(range(2**31, 2**31 + 64))


def _ellipse(yy, xx, cy, cx, ay, ax, angle):
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


#: The smallest phantom side (the texture's 6×6 low frequencies must fit the grid's spectrum).
MIN_SIZE = 10


def phantom(seed: int, size: int = 64) -> np.ndarray:
    """One ``size × size`` phantom in [0, 1] (float32), determined by ``seed``."""
    if int(size) < MIN_SIZE:
        raise ValueError(f"phantoms are at least {MIN_SIZE}×{MIN_SIZE} pixels (their texture has 6 frequencies per "
                         f"axis), got {size}×{size}; use shape=[1,{MIN_SIZE},{MIN_SIZE}] or larger (the shipped "
                         "phantom64 prior is 64×64; only Shepp–Logan, data.n=1, comes smaller)")
    rng = np.random.default_rng(int(seed))
    t = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(t, t, indexing="ij")
    img = np.zeros((size, size), dtype=np.float64)
    # head: rim + interior
    ay, ax = rng.uniform(0.75, 0.95), rng.uniform(0.6, 0.9)
    cy, cx, ang = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.3, 0.3)
    rim = rng.uniform(0.04, 0.1)
    outer = _ellipse(yy, xx, cy, cx, ay, ax, ang)
    inner = _ellipse(yy, xx, cy, cx, ay - rim, ax - rim, ang)
    img[outer] = rng.uniform(0.7, 1.0)
    base = rng.uniform(0.1, 0.45)
    img[inner] = base
    # inner structures
    for _ in range(rng.integers(3, 10)):
        r = math.sqrt(rng.uniform(0, 1))
        phi = rng.uniform(0, 2 * math.pi)
        ey, ex = cy + 0.75 * (ay - rim) * r * math.sin(phi), cx + 0.75 * (ax - rim) * r * math.cos(phi)
        m = _ellipse(yy, xx, ey, ex, rng.uniform(0.04, 0.35), rng.uniform(0.04, 0.3), rng.uniform(0, math.pi)) & inner
        img[m] += rng.choice([-1.0, 1.0], p=[0.35, 0.65]) * rng.uniform(0.05, 0.4)
    if rng.uniform() < 0.5:  # small bright dots (lesions, markers)
        for _ in range(rng.integers(1, 5)):
            m = _ellipse(yy, xx, cy + rng.uniform(-0.5, 0.5) * ay, cx + rng.uniform(-0.5, 0.5) * ax,
                         rng.uniform(0.02, 0.05), rng.uniform(0.02, 0.05), 0.0) & inner
            img[m] += rng.uniform(0.2, 0.5)
    if rng.uniform() < 0.3:  # a rectangle (implant, ventricle-like block)
        h, w = rng.uniform(0.05, 0.25, size=2)
        oy, ox = cy + rng.uniform(-0.4, 0.4) * ay, cx + rng.uniform(-0.4, 0.4) * ax
        m = (np.abs(yy - oy) < h) & (np.abs(xx - ox) < w) & inner
        img[m] += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3)
    # smooth texture inside the head
    k = rng.normal(size=(6, 6)) * rng.uniform(0.0, 0.06)
    f = np.fft.irfft2(np.pad(k, ((0, size - 6), (0, size // 2 + 1 - 6))), s=(size, size)) * size
    img = img + np.where(outer, f, 0.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def phantoms(seeds, size: int = 64) -> torch.Tensor:
    """``[n, 1, size, size]`` float32 tensor of :func:`phantom` for each seed."""
    return torch.from_numpy(np.stack([phantom(s, size) for s in seeds]))[:, None]


def training_seeds(generator: torch.Generator, n: int) -> list[int]:
    """``n`` seeds in [0, 2³¹) (disjoint from :data:`EVAL_SEEDS`) from a torch generator."""
    return torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()


def shepp_logan(size: int = 64) -> torch.Tensor:
    """scikit-image's Shepp–Logan phantom resized to ``size × size`` (anti-aliased), ``[1, 1, size, size]``."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True, preserve_range=True)
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))[None, None]


def held_out(size: int = 64, n: int = 8) -> torch.Tensor:
    """The evaluation set: Shepp–Logan then ``n − 1`` phantoms of :data:`EVAL_SEEDS` (``[n, 1, s, s]``)."""
    return torch.cat([shepp_logan(size), phantoms(EVAL_SEEDS[: n - 1], size)])


def _ellipsoid(zz, yy, xx, cz, cy, cx, az, ay, ax, angle):
    """Ellipsoid with semi-axes (az, ay, ax), rotated by ``angle`` about the z axis: every axial
    cross-section is an ellipse of the same angle (a 2-D phantom's ellipse, scaled)."""
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / ax) ** 2 + (v / ay) ** 2 + ((zz - cz) / az) ** 2 <= 1.0


def phantom_volume(size: int = 64, seed: int = 0, depth: int | None = None) -> np.ndarray:
    """One ``depth × size × size`` volume ``[D, H, W]`` in [0, 1] (float32), determined by ``seed``:
    a 3-D phantom of ellipsoids whose axial slices look like :func:`phantom`'s 2-D phantoms (the
    ``phantom64`` prior's training images).

    A head (a bright rim around a darker interior) that is a long ellipsoid along z, so every axial
    slice holds an ellipse of the 2-D phantoms' proportions (scaled by at most ~15 % toward the end
    slices); 6–16 inner ellipsoids (random centre, in-plane size and angle as in 2-D, z semi-axis
    0.15–0.7, contrast added as in the Shepp–Logan phantom), so each slice cuts a few; sometimes small
    bright spheres or a box; a smooth low-frequency 3-D texture inside the head. Voxels are
    isotropic: z spans ``[−1, 1]·depth/size``, so ``depth < size`` gives the central ``depth`` slices
    of the ``size³`` volume of the same seed. Pure function of its arguments.
    """
    size = int(size)
    depth = size if depth is None else int(depth)
    if size < 2 or not 1 <= depth <= size:
        raise ValueError(f"phantom_volume: need size >= 2 and 1 <= depth <= size, got size={size}, depth={depth}")
    rng = np.random.default_rng(int(seed))
    t = (np.arange(size) + 0.5) / size * 2 - 1
    tz = t[(size - depth) // 2 : (size - depth) // 2 + depth]
    zz, yy, xx = np.meshgrid(tz, t, t, indexing="ij")
    vol = np.zeros((depth, size, size), dtype=np.float64)
    # head: rim + interior, long along z
    ay, ax, az = rng.uniform(0.75, 0.95), rng.uniform(0.6, 0.9), rng.uniform(1.8, 2.4)
    cy, cx, ang = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.3, 0.3)
    rim = rng.uniform(0.04, 0.1)
    outer = _ellipsoid(zz, yy, xx, 0.0, cy, cx, az, ay, ax, ang)
    inner = _ellipsoid(zz, yy, xx, 0.0, cy, cx, az - rim, ay - rim, ax - rim, ang)
    vol[outer] = rng.uniform(0.7, 1.0)
    vol[inner] = rng.uniform(0.1, 0.45)
    # inner structures
    for _ in range(rng.integers(6, 17)):
        r = math.sqrt(rng.uniform(0, 1))
        phi = rng.uniform(0, 2 * math.pi)
        ey, ex = cy + 0.75 * (ay - rim) * r * math.sin(phi), cx + 0.75 * (ax - rim) * r * math.cos(phi)
        m = _ellipsoid(zz, yy, xx, rng.uniform(-0.9, 0.9), ey, ex, rng.uniform(0.15, 0.7), rng.uniform(0.04, 0.35),
                       rng.uniform(0.04, 0.3), rng.uniform(0, math.pi)) & inner
        vol[m] += rng.choice([-1.0, 1.0], p=[0.35, 0.65]) * rng.uniform(0.05, 0.4)
    if rng.uniform() < 0.5:  # small bright spheres (lesions, markers)
        for _ in range(rng.integers(1, 5)):
            rad = rng.uniform(0.02, 0.05)
            m = _ellipsoid(zz, yy, xx, rng.uniform(-0.8, 0.8), cy + rng.uniform(-0.5, 0.5) * ay,
                           cx + rng.uniform(-0.5, 0.5) * ax, rad, rad, rad, 0.0) & inner
            vol[m] += rng.uniform(0.2, 0.5)
    if rng.uniform() < 0.3:  # a box (implant, ventricle-like block)
        h, w, d = rng.uniform(0.05, 0.25, size=3)
        oz, oy, ox = rng.uniform(-0.6, 0.6), cy + rng.uniform(-0.4, 0.4) * ay, cx + rng.uniform(-0.4, 0.4) * ax
        m = (np.abs(zz - oz) < 2 * d) & (np.abs(yy - oy) < h) & (np.abs(xx - ox) < w) & inner
        vol[m] += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3)
    # smooth texture inside the head (the 2-D phantoms' 6×6 low frequencies, and 6 along z)
    k = rng.normal(size=(6, 6, 6)) * rng.uniform(0.0, 0.06)
    f = np.fft.irfftn(np.pad(k, ((0, size - 6), (0, size - 6), (0, size // 2 + 1 - 6))), s=(size, size, size),
                     axes=(0, 1, 2))
    f = f * size**2 / math.sqrt(6)  # (the 2-D texture's amplitude: 6 × 6 terms there, 6 × 6 × 6 here)
    f = f[(size - depth) // 2 : (size - depth) // 2 + depth]
    vol = vol + np.where(outer, f, 0.0)
    return np.clip(vol, 0.0, 1.0).astype(np.float32)
