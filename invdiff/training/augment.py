"""Data augmentation of clean training images, beyond the trainer's random flips (issue 32).

Every transform is opt-in (``settings.augment_*``; all off by default, so the shipped recipes are
unchanged), drawn per image from the run's generator in a fixed order (flips, then 90° rotation,
then scale, then gain), and leaves images in [0, 1]:

* ``augment_rot90``: a rotation by k·90°, k ~ U{0, 1, 2, 3} (square images; exact — a permutation of
  pixels). Right for orientation-free data (microscopy, textures, remote sensing); wrong where
  orientation is anatomy (a brain slice is never upside down on the scanner), so it is off there.
* ``augment_scale: [lo, hi]``: an isotropic zoom s ~ U[lo, hi] about the centre (bilinear
  resampling; s > 1 magnifies). Outside the image: ``augment_padding=zeros`` (a dark background:
  magnitude MRI, fluorescence microscopy) or ``reflection`` (textures, natural images).
* ``augment_gain: a``: the intensities multiplied by g ~ U[1 − a, 1]. Magnitude MRI and microscopy
  are in arbitrary units, so a prior should not depend on the exact brightness; gains ≤ 1 keep the
  images in [0, 1] without clipping (no new saturation, the data's non-negativity kept).

The corrupted-data objectives (measurements only) and reflow (couplings of the teacher's ODE) take
no augmentation: a rotated or zoomed k-space sample is no longer the measurement it was.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PADDINGS = ("zeros", "reflection")


def check_augment(rot90: bool, scale, gain: float, padding: str) -> None:
    """Refuse settings that cannot be applied, with the fix named."""
    if scale is not None:
        try:
            lo, hi = (float(v) for v in scale)
        except (TypeError, ValueError):
            raise ValueError(f"settings.augment_scale must be [lo, hi] (e.g. [0.85, 1.15]) or null, got {scale!r}") \
                from None
        if not (0 < lo <= hi) or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"settings.augment_scale must be [lo, hi] with 0 < lo <= hi, got {list(scale)}")
    if not 0.0 <= float(gain) < 1.0:
        raise ValueError(f"settings.augment_gain must be in [0, 1) (images scaled by U[1 − gain, 1]), got {gain!r}")
    if padding not in PADDINGS:
        raise ValueError(f"settings.augment_padding must be one of {PADDINGS}, got {padding!r}")
    if not isinstance(rot90, bool):
        raise ValueError(f"settings.augment_rot90 must be true or false, got {rot90!r}")


def describe(s) -> str:
    """The switched-on transforms in words (for the training log)."""
    parts = ["flips"]
    if s.augment_rot90:
        parts.append("90° rotations")
    if s.augment_scale is not None:
        parts.append(f"zoom ×U[{float(s.augment_scale[0]):g}, {float(s.augment_scale[1]):g}] ({s.augment_padding} outside)")
    if float(s.augment_gain) > 0:
        parts.append(f"gain ×U[{1 - float(s.augment_gain):g}, 1]")
    return ", ".join(parts)


def is_on(s) -> bool:
    return bool(s.augment_rot90) or s.augment_scale is not None or float(s.augment_gain) > 0


def augment(x: Tensor, generator: torch.Generator, s) -> Tensor:
    """``x`` [B, C, H, W] in [0, 1] with the transforms ``s`` (a :class:`TrainSettings`) switches on."""
    B = x.shape[0]
    if s.augment_rot90:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"settings.augment_rot90 needs square images, got {list(x.shape[-2:])}")
        k = torch.randint(0, 4, (B,), generator=generator)
        x = torch.stack([torch.rot90(x[i], int(k[i]), dims=(-2, -1)) for i in range(B)])
    if s.augment_scale is not None:
        lo, hi = (float(v) for v in s.augment_scale)
        z = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
        theta = torch.zeros(B, 2, 3, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = (1.0 / z).to(x.dtype)  # output pixel p samples the input at p / s
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode=s.augment_padding, align_corners=False)
    if float(s.augment_gain) > 0:
        g = 1.0 - float(s.augment_gain) * torch.rand(B, generator=generator, dtype=torch.float64)
        x = x * g.to(x.device, x.dtype)[:, None, None, None]
    return x
