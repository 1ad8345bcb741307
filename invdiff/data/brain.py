"""Real anatomy offline: the MNI152 T1 template that nilearn's wheel ships, read with nibabel.

The file is ``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` — the ICBM
2009a nonlinear symmetric T1 average (Fonov et al., NeuroImage 2011), 197 × 233 × 189 voxels of
1 mm, RAS orientation. It is found inside the installed nilearn package without importing nilearn
(nothing is downloaded; a clear error names the package when it is missing).

Slices of one plane (``axial``: voxel axis 2; ``coronal``: 1; ``sagittal``: 0) are split into fixed
slabs, so that neighbouring 1 mm slices — nearly identical images — never fall on both sides of a
split: with ``lo``/``hi`` the first/last slice that holds anatomy (any voxel above 10 % of the
volume's maximum) and ``c = lo + 0.55 (hi − lo)`` (rounded):

* ``test``: slices ``[c − 5, c + 5)`` (10 slices; axial: through the lateral ventricles);
* ``val``: ``[c − 20, c − 15)`` (5 slices, for tuning);
* ``train``: ``[lo + 15, c − 25) ∪ [c + 10, hi − 10)`` — at least 5 slices from every other slab.

A slice is rotated so the anterior (axial, sagittal) or superior (coronal) side is up, padded with
zeros to a square and resized (anti-aliased) to the requested size; intensities are divided by the
volume's maximum (255), so images lie in [0, 1]. The slabs are disjoint *within one plane*; a
coronal or sagittal slice crosses the axial training slab, so a prior trained on axial training
slices (``brain64``) is evaluated on the axial test slab only.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MNI_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
SPLITS = ("train", "val", "test")


def mni152_path() -> Path:
    """The MNI152 T1 template inside the installed nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the brain data (data=brain, the brain_slice sample, brain64) read the MNI152 T1 template that the "
            "nilearn wheel ships; nilearn is not installed: pip install nilearn (its wheel holds the file; "
            "nothing is downloaded)")
    p = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / MNI_FILE
    if not p.exists():
        raise FileNotFoundError(f"the installed nilearn has no {MNI_FILE} under {p.parent}; reinstall nilearn "
                                "(pip install --force-reinstall nilearn)")
    return p


@functools.lru_cache(maxsize=1)
def mni152() -> np.ndarray:
    """The template as float64 ``[197, 233, 189]`` (RAS voxel axes) in [0, 1]."""
    from .formats import read_nifti

    vol = read_nifti(mni152_path(), axis=0)  # slices along voxel axis 0 = the volume as stored
    data = vol.data
    m = float(data.max())
    return data / m if m > 0 else data


def slab(plane: str, split: str) -> list[int]:
    """Slice indices of one split of one plane (module docstring)."""
    if plane not in PLANE_AXES:
        raise ValueError(f"data.plane must be one of {', '.join(PLANE_AXES)}, got {plane!r}")
    if split not in SPLITS:
        raise ValueError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
    vol = np.moveaxis(mni152(), PLANE_AXES[plane], 0)
    peak = vol.reshape(len(vol), -1).max(1)
    idx = np.nonzero(peak > 0.1 * vol.max())[0]
    lo, hi = int(idx[0]), int(idx[-1])
    c = int(round(lo + 0.55 * (hi - lo)))
    if split == "test":
        return list(range(c - 5, c + 5))
    if split == "val":
        return list(range(c - 20, c - 15))
    return list(range(lo + 15, c - 25)) + list(range(c + 10, hi - 10))


def brain_slice(plane: str, index: int, size: int = 64) -> np.ndarray:
    """Slice ``index`` of ``plane`` as ``[size, size]`` in [0, 1] (rotated, zero-padded square, resized)."""
    from skimage.transform import resize

    vol = np.moveaxis(mni152(), PLANE_AXES[plane], 0)
    if not 0 <= int(index) < len(vol):
        raise ValueError(f"{plane} slice {index}: the template has {len(vol)} {plane} slices (0 to {len(vol) - 1})")
    img = np.rot90(vol[int(index)])
    H, W = img.shape
    n = max(H, W)
    sq = np.zeros((n, n))
    sq[(n - H) // 2: (n - H) // 2 + H, (n - W) // 2: (n - W) // 2 + W] = img
    return np.clip(resize(sq, (int(size), int(size)), anti_aliasing=True), 0.0, 1.0)


def brain_slices(plane: str = "axial", split: str = "test", size: int = 64) -> tuple[list[int], Tensor]:
    """The slices of a split as ``(indices, [N, 1, size, size] float64)``."""
    ids = slab(plane, split)
    return ids, torch.from_numpy(np.stack([brain_slice(plane, i, size) for i in ids])[:, None].copy())


def default_slice(plane: str = "axial") -> int:
    """The ``brain_slice`` sample: the middle slice of the plane's test slab."""
    ids = slab(plane, "test")
    return ids[len(ids) // 2]
