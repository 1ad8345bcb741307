"""The per-sample PNG figure: ground truth | measurement (or its zero-filled / pseudo-inverse
image) | reconstruction | posterior standard deviation, PSNR/SSIM in the titles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def _img(x: Tensor, complex_image: bool) -> np.ndarray:
    """``[C, H, W]`` → what imshow takes: magnitude for complex, gray for 1 channel, RGB for 3,
    the channel mean otherwise."""
    a = x.detach().cpu().double().numpy()
    if complex_image:
        return np.sqrt((a**2).sum(0))
    if a.shape[0] == 3:
        return np.moveaxis(a, 0, -1)
    return a.mean(0) if a.shape[0] != 1 else a[0]


def sample_figure(path: str | Path, panels: list[tuple[str, Tensor | None]], *, complex_image: bool = False,
                  data_range=(0.0, 1.0), title: str = "") -> Path:
    """Write the figure atomically. ``panels``: ``(title, [C, H, W] image or None)``; the last
    panel named ``"posterior std"`` (or ``"spread over restarts …"``, a point estimator's) gets its own
    colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, x) for t, x in panels if x is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.4), squeeze=False)
    lo, hi = (0.0, float(data_range[1])) if complex_image else (float(data_range[0]), float(data_range[1]))
    for ax, (name, x) in zip(axes[0], panels):
        img = _img(x, complex_image)
        if name.startswith(("posterior std", "spread over restarts")):
            im = ax.imshow(img if img.ndim == 2 else img.mean(-1), cmap="magma")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        elif img.ndim == 3:
            ax.imshow(np.clip((img - lo) / (hi - lo), 0, 1))
        else:
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9) if title else None)
    from .results import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
