"""Measurement data sets: what a scientist has instead of clean images (``invdiff-train
data=measurements``, the corrupted-data objectives of :mod:`invdiff.training.corrupted`).

A :class:`MeasurementSet` holds, per sample, the measurement ``y`` (measurement units), the
operator's parameter (a mask) and the noise level σ_y — never an image. Three kinds:

``mri``         single-coil Cartesian MRI of a real image (:class:`operators.SingleCoilMRI`):
                y ``[2, H, W]`` (real, imaginary), mask ``[H, W]`` in centred k-space
``inpainting``  pixel masking (:class:`operators.Inpainting`): y ``[C, H, W]`` (zero where
                unobserved), mask ``[H, W]`` (shared by the channels)
``denoising``   the identity: y ``[C, H, W]`` = x + σ_y·n, mask all ones

The file (HDF5, :func:`save_measurements` / :func:`load_measurements`): datasets ``y`` (float32
``[N, *meas]``), ``mask`` (uint8 ``[N, H, W]``), ``sigma_y`` (float64 ``[N]``); attributes ``kind``,
``image_shape`` (C, H, W), ``data_range`` (the physical range of the unknown images, e.g. [0, 1])
and ``provenance`` (JSON: how the set was made). :func:`simulate_measurements` makes one from the
project's image distributions (phantoms, patches) — the clean images it draws are discarded, only
their measurements are kept, so a prior trained on the file has never seen them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

KINDS = ("mri", "inpainting", "denoising")


@dataclass
class MeasurementSet:
    """``N`` measurements with their masks and noise levels (module docstring); the training-data
    side of the corrupted-data objectives (``channels``/``size`` as :class:`~invdiff.training.TrainData`)."""

    kind: str
    y: Tensor            # [N, *meas] float32
    mask: Tensor         # [N, H, W] float32 in {0, 1}
    sigma_y: Tensor      # [N] float64, measurement units
    image_shape: tuple[int, int, int]
    data_range: tuple[float, float] = (0.0, 1.0)
    provenance: dict = field(default_factory=dict)
    source: str = ""

    measurements = True  # (what the trainer checks: no clean images here)

    def __post_init__(self):
        who = f"measurement set {self.source or ''}".strip()
        if self.kind not in KINDS:
            raise ValueError(f"{who}: kind must be one of {KINDS}, got {self.kind!r}")
        self.image_shape = tuple(int(s) for s in self.image_shape)
        C, H, W = self.image_shape
        N = self.y.shape[0]
        meas = (2, H, W) if self.kind == "mri" else (C, H, W)
        if self.kind == "mri" and C != 1:
            raise ValueError(f"{who}: kind 'mri' is single-coil k-space of a real image, image_shape (1, H, W); "
                             f"got {self.image_shape}")
        if H != W:
            raise ValueError(f"{who}: images must be square for invdiff-train (got {H}×{W})")
        if tuple(self.y.shape[1:]) != meas:
            raise ValueError(f"{who}: y has shape {list(self.y.shape)}, kind {self.kind!r} with image shape "
                             f"{self.image_shape} needs [N, {', '.join(map(str, meas))}]")
        if tuple(self.mask.shape) != (N, H, W):
            raise ValueError(f"{who}: mask has shape {list(self.mask.shape)}, expected [N={N}, {H}, {W}]")
        if not bool(((self.mask == 0) | (self.mask == 1)).all()):
            raise ValueError(f"{who}: mask values must be 0 or 1")
        if not bool(self.mask.flatten(1).any(1).all()):
            raise ValueError(f"{who}: some samples observe nothing (an all-zero mask); drop them")
        self.sigma_y = torch.as_tensor(self.sigma_y, dtype=torch.float64).reshape(-1)
        if self.sigma_y.numel() == 1:
            self.sigma_y = self.sigma_y.expand(N).clone()
        if self.sigma_y.shape != (N,) or not bool(torch.isfinite(self.sigma_y).all()) or bool((self.sigma_y < 0).any()):
            raise ValueError(f"{who}: sigma_y must be N = {N} finite values >= 0")
        if not bool(torch.isfinite(self.y).all()):
            raise ValueError(f"{who}: y contains NaN or Inf")
        if N < 1:
            raise ValueError(f"{who}: no measurements")
        if self.kind == "denoising" and not bool((self.mask == 1).all()):
            raise ValueError(f"{who}: kind 'denoising' observes every pixel; its mask must be all ones")

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def size(self) -> int:
        return self.image_shape[1]

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(y, mask, sigma_y)`` of the samples ``idx``."""
        return self.y[idx], self.mask[idx], self.sigma_y[idx]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise TypeError("a MeasurementSet holds measurements, not images: train on it with "
                        "settings.objective=ambient|noisy|em (the corrupted-data objectives)")

    def operator(self, i: int):
        """The operator of sample ``i`` (:mod:`operators`), for solving it or its E-step."""
        import operators

        C, H, W = self.image_shape
        m = self.mask[i].to(torch.float64)
        if self.kind == "mri":
            return operators.SingleCoilMRI(m, self.image_shape)
        if self.kind == "inpainting":
            return operators.Inpainting(m[None], self.image_shape)
        return operators.Inpainting(torch.ones(1, H, W, dtype=torch.float64), self.image_shape)

    def acceleration(self) -> float:
        """Mean fraction of entries unobserved, as an acceleration (1 / observed fraction)."""
        return float(1.0 / self.mask.mean())

    def describe(self) -> str:
        s = self.sigma_y
        noise = f"σ_y {float(s[0]):.3g}" if bool((s == s[0]).all()) else f"σ_y {float(s.min()):.3g}–{float(s.max()):.3g}"
        what = {"mri": f"single-coil k-space, {self.acceleration():.2f}× undersampled",
                "inpainting": f"masked images, {100 * float(self.mask.mean()):.0f} % observed",
                "denoising": "noisy images"}[self.kind]
        name = f" ({self.source})" if self.source else ""
        return f"{len(self)} measurements{name}: {what}, {noise}, images {'×'.join(map(str, self.image_shape))}"


def save_measurements(path: str | Path, ms: MeasurementSet) -> Path:
    """Write ``ms`` as HDF5 (to a temporary name, then moved into place)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("y", data=ms.y.numpy().astype(np.float32), compression="gzip", compression_opts=1)
        f.create_dataset("mask", data=ms.mask.numpy().astype(np.uint8), compression="gzip")
        f.create_dataset("sigma_y", data=ms.sigma_y.numpy())
        f.attrs["kind"] = ms.kind
        f.attrs["image_shape"] = list(ms.image_shape)
        f.attrs["data_range"] = list(ms.data_range)
        f.attrs["provenance"] = json.dumps(ms.provenance)
        f.attrs["invdiff_measurements"] = 1
    os.replace(tmp, path)
    return path


def load_measurements(source: str | Path, limit: int | None = None) -> MeasurementSet:
    """Read a file written by :func:`save_measurements` (``limit``: the first samples only)."""
    import h5py

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source={str(source)!r}: no such measurement file; make one with "
                                "`python -m invdiff.data.measurements` (see its --help) or write y, mask, sigma_y "
                                "as invdiff.data.measurements describes")
    with h5py.File(path, "r") as f:
        if "invdiff_measurements" not in f.attrs or not {"y", "mask", "sigma_y"} <= set(f.keys()):
            raise ValueError(f"{path} is not an invdiff measurement file (datasets y, mask, sigma_y and the attribute "
                             "invdiff_measurements); see invdiff.data.measurements")
        sl = slice(None) if limit is None else slice(0, int(limit))
        ms = MeasurementSet(kind=str(f.attrs["kind"]), y=torch.from_numpy(f["y"][sl].astype(np.float32)),
                            mask=torch.from_numpy(f["mask"][sl].astype(np.float32)),
                            sigma_y=torch.from_numpy(f["sigma_y"][sl].astype(np.float64)),
                            image_shape=tuple(int(v) for v in f.attrs["image_shape"]),
                            data_range=tuple(float(v) for v in f.attrs["data_range"]),
                            provenance=json.loads(f.attrs.get("provenance", "{}")), source=path.name)
    return ms


def mri_mask(W: int, H: int, acceleration: float, center_fraction: float, generator: torch.Generator) -> Tensor:
    """fastMRI's random Cartesian mask: the centre columns, then random others to 1/acceleration."""
    from operators.mri_masks import centre_columns

    n_low = max(1, int(round(W * center_fraction)))
    cols = centre_columns(W, n_low).astype(bool)
    prob = (W / acceleration - n_low) / (W - n_low)
    cols |= (torch.rand(W, generator=generator).numpy() < prob)
    return torch.from_numpy(np.repeat(cols[None].astype(np.float32), H, 0))


def simulate_measurements(images: str, kind: str, n: int, *, sigma_y: float, acceleration: float = 4.0,
                          center_fraction: float = 0.08, observed: float = 0.5, size: int = 64,
                          seed: int = 0) -> MeasurementSet:
    """``n`` measurements of fresh images of the distribution ``images`` (``"phantoms"`` or
    ``"patches"``, the ``phantom64``/``patches64`` training distributions), a different random mask
    per sample (MRI: fastMRI-style random columns with ``center_fraction`` fully sampled, to
    ``acceleration``; inpainting: each pixel observed with probability ``observed``), Gaussian
    noise σ_y (MRI: on the real and imaginary parts). The images are drawn, measured and discarded."""
    import operators

    from .training_data import PatchData, PhantomData

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    src = {"phantoms": PhantomData, "patches": PatchData}
    if images not in src:
        raise ValueError(f"images must be one of {sorted(src)}, got {images!r}")
    data = src[images](size=size)
    g = torch.Generator().manual_seed(int(seed))
    ys, masks = [], []
    chunk = 256
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = data.sample(m, g).to(torch.float64)
        for i in range(m):
            if kind == "mri":
                mask = mri_mask(size, size, acceleration, center_fraction, g)
                y = operators.SingleCoilMRI(mask.to(torch.float64), (1, size, size))(x[i:i + 1])[0]
            elif kind == "inpainting":
                mask = (torch.rand(size, size, generator=g) < observed).float()
                y = x[i] * mask
            else:
                mask = torch.ones(size, size)
                y = x[i]
            noise = torch.randn(y.shape, generator=g, dtype=torch.float64) * sigma_y
            y = y + noise * (mask if kind != "mri" else mask[None])  # only observed entries are measured
            ys.append(y.float())
            masks.append(mask)
        del x
    prov = {"made_by": "invdiff.data.measurements.simulate_measurements", "images": images, "kind": kind, "n": n,
            "sigma_y": sigma_y, "seed": seed, "size": size}
    prov |= {"acceleration": acceleration, "center_fraction": center_fraction} if kind == "mri" else \
        {"observed": observed} if kind == "inpainting" else {}
    return MeasurementSet(kind, torch.stack(ys), torch.stack(masks), torch.full((n,), float(sigma_y)),
                          (1, size, size), (0.0, 1.0), prov)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m invdiff.data.measurements",
                                description="Simulate a measurement file for invdiff-train data=measurements.")
    p.add_argument("out")
    p.add_argument("--images", default="phantoms", choices=["phantoms", "patches"])
    p.add_argument("--kind", default="mri", choices=KINDS)
    p.add_argument("-n", type=int, default=4096)
    p.add_argument("--sigma-y", type=float, default=0.01)
    p.add_argument("--acceleration", type=float, default=4.0)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--observed", type=float, default=0.5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ms = simulate_measurements(a.images, a.kind, a.n, sigma_y=a.sigma_y, acceleration=a.acceleration,
                               center_fraction=a.center_fraction, observed=a.observed, size=a.size, seed=a.seed)
    save_measurements(a.out, ms)
    print(f"wrote {a.out}: {ms.describe()}")


if __name__ == "__main__":
    main()
