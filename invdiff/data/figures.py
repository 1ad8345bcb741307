"""The per-sample figure: ground truth | measurement (or its zero-filled / pseudo-inverse image) |
reconstruction | error |x̂ − x| | posterior standard deviation | the operator's sampling mask or
blur kernel, PSNR/SSIM in the titles, a colour bar on every panel.

For print: ``dpi`` (default 150) and ``fmt`` — ``png``, or the vector formats ``pdf``/``svg`` (images
are embedded at the data's resolution, text and colour bars as vectors). Multiband images are shown
as the chosen ``bands`` (three as RGB, one as gray; default: the first three of ≥ 3 bands, else the
first band — never the mean of the bands)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

FORMATS = ("png", "pdf", "svg")
#: Panels with their own colour scale (not the data range).
OWN_SCALE = ("posterior std", "spread over restarts", "error", "sampling mask", "kernel")


def _img(x, complex_image: bool, bands=None) -> np.ndarray:
    """``[C, H, W]`` → what imshow takes: magnitude for complex, gray for 1 channel, RGB for 3, the
    chosen ``bands`` (or the first three / the first) of a multiband image."""
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        return a
    if complex_image:
        return np.sqrt((a**2).sum(0))
    if a.shape[0] == 1:
        return a[0]
    if a.shape[0] == 3 and bands is None:
        return np.moveaxis(a, 0, -1)
    pick = list(bands) if bands is not None else ([0, 1, 2] if a.shape[0] >= 3 else [0])
    bad = [b for b in pick if not 0 <= b < a.shape[0]]
    if bad or len(pick) not in (1, 3):
        raise ValueError(f"figure bands {pick}: give 1 or 3 band indices of the {a.shape[0]} bands (0 to "
                         f"{a.shape[0] - 1})")
    return a[pick[0]] if len(pick) == 1 else np.moveaxis(a[pick], 0, -1)


def operator_panel(op) -> tuple[str, np.ndarray] | None:
    """The operator's sampling mask (inpainting, MRI) or blur kernel as a 2-D array, if it has one."""
    for attr, name in (("mask", "sampling mask"), ("kernel", "kernel")):
        try:
            v = getattr(op, attr, None)
        except Exception:  # noqa: BLE001  (a property an operator cannot serve)
            v = None
        if v is None or not hasattr(v, "shape") or len(v.shape) < 2:
            continue
        a = v.detach().cpu().double().numpy() if isinstance(v, Tensor) else np.asarray(v, dtype=np.float64)
        while a.ndim > 2:
            a = a[0]
        return name, a
    return None


def sample_figure(path: str | Path, panels: list[tuple[str, Tensor | None]], *, complex_image: bool = False,
                  data_range=(0.0, 1.0), title: str = "", dpi: int = 150, bands=None) -> Path:
    """Write the figure atomically (its format from ``path``'s suffix: .png, .pdf or .svg).
    ``panels``: ``(title, [C, H, W] image, 2-D array, or None)``; panels whose titles start with
    one of :data:`OWN_SCALE` get their own colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lstrip(".") not in FORMATS:
        raise ValueError(f"figure format {path.suffix!r}: choose one of {', '.join(FORMATS)}")
    panels = [(t, x) for t, x in panels if x is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.4), squeeze=False)
    lo, hi = (0.0, float(data_range[1])) if complex_image else (float(data_range[0]), float(data_range[1]))
    for ax, (name, x) in zip(axes[0], panels):
        img = _img(x, complex_image, bands)
        own = name.startswith(OWN_SCALE)
        if own:
            cmap = "gray" if name.startswith(("sampling mask", "kernel")) else "magma"
            im = ax.imshow(img if img.ndim == 2 else img.mean(-1), cmap=cmap, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        elif img.ndim == 3:
            ax.imshow(np.clip((img - lo) / (hi - lo), 0, 1))
        else:
            im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9) if title else None)
    from .results import atomic_path

    try:
        with atomic_path(path, suffix=f".tmp{path.suffix}") as tmp:
            fig.savefig(tmp, dpi=int(dpi))
    finally:
        plt.close(fig)
    return path
