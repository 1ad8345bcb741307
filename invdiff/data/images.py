"""Ground-truth images shipped with scikit-image (no download), resized to the model's shape."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

#: Images that never need a download: scikit-image's bundled ones, and ``brain_slice`` — the middle
#: axial slice of the held-out test slab of the MNI152 T1 template in nilearn's wheel
#: (:mod:`invdiff.data.brain`; not ``skimage.data.brain()``, which downloads its file).
SAMPLE_IMAGES = ("shepp_logan", "camera", "moon", "astronaut", "coins", "brain_slice")


def bundled_skimage_images() -> list[str]:
    """Names of ``skimage.data`` functions whose image file ships inside the scikit-image wheel
    (so loading them never downloads)."""
    import os

    from skimage import data

    stems = {os.path.splitext(f)[0] for f in os.listdir(data.data_dir)}
    return sorted(n for n in stems if callable(getattr(data, n, None)) and not n.startswith("_") and n != "lfw_subset")


def unknown_image_message(name: str, choices) -> str:
    """One paragraph for an image name that is not among ``choices``: images scikit-image would
    have to download are named as such (invdiff never downloads)."""
    import difflib

    from skimage import data

    fn = name
    if callable(getattr(data, fn, None)) and fn not in bundled_skimage_images():
        why = (f"'{name}' is not bundled with scikit-image: skimage.data.{fn}() downloads its file on first use, "
               "and invdiff never downloads anything")
    else:
        close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
        why = f"unknown sample image '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    return (f"data.names: {why}. Choose from {', '.join(choices)}, or give your own image file with "
            "data=files data.path=<image, folder, .npy or file.h5:dataset>")


def _load(name: str) -> np.ndarray:
    from skimage import data

    if name == "shepp_logan":
        return data.shepp_logan_phantom()
    return getattr(data, name)()


def sample_image(name: str, shape=(1, 64, 64)) -> Tensor:
    """A scikit-image sample image as a float64 tensor ``[1, C, H, W]`` in [0, 1].

    Grayscale for ``C = 1`` (colour images are converted), RGB for ``C = 3``; resized with
    antialiasing to ``H × W`` (cached: the app asks for the same image repeatedly).
    """
    return _sample_image(name, tuple(int(s) for s in shape)).clone()


@functools.lru_cache(maxsize=32)
def _sample_image(name: str, shape: tuple) -> Tensor:
    from skimage.color import gray2rgb, rgb2gray
    from skimage.transform import resize

    if name not in SAMPLE_IMAGES:
        raise ValueError(unknown_image_message(name, SAMPLE_IMAGES))
    C, H, W = (int(s) for s in shape)
    if C not in (1, 3):
        raise ValueError(f"sample images have 1 or 3 channels, got shape {tuple(shape)}")
    if name == "brain_slice":
        from .brain import brain_slice, default_slice

        img = brain_slice("axial", default_slice("axial"), max(H, W))
    else:
        img = _load(name).astype(np.float64)
    img = img[..., :3] if img.ndim == 3 else img
    if img.max() > 1.0:
        img = img / img.max()
    img = rgb2gray(img) if (C == 1 and img.ndim == 3) else img
    img = gray2rgb(img) if (C == 3 and img.ndim == 2) else img
    img = resize(img, (H, W), anti_aliasing=True, mode="reflect")
    arr = img[None] if C == 1 else np.moveaxis(img, -1, 0)
    return torch.from_numpy(np.clip(arr, 0.0, 1.0).copy())[None]
