"""The figures of a training run (:meth:`invdiff.training.Trainer.figures`): ``loss.png``, the loss
curve, and ``samples.png`` — EMA samples (EDM Heun, flow Heun, or 2-step consistency sampling for
cd/ct), or for a bridge fresh images, their degraded partners and the bridge's restorations.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .bridge import degrade


def training_figures(t, samples: int = 16, sampler_steps: int = 40) -> tuple[Path, Path | None]:
    """``loss.png`` (loss curve) and ``samples.png`` (EMA samples: EDM Heun, flow Heun,
    or 2-step consistency sampling for cd/ct; none for ``samples = 0``) in the output folder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..priors.consistency import consistency_sampling
    from ..priors.flow_samplers import flow_heun
    from ..priors.samplers import edm_heun

    t.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if t.losses:
        st, lv = zip(*t.losses)
        ax.plot(st, lv)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    what = f"{t.s.objective} loss ({t.s.path} path)" if t.flow else \
        f"{t.s.objective} loss ({t.s.cm_distance})" if t.cm else \
        f"{t.s.objective} loss (observed entries)" if t.corrupted else "EDM loss"
    ax.set_ylabel(f"{what} (mean over {t.s.log_every} steps)")
    ax.set_title(f"{t.data.describe()}")
    fig.tight_layout()
    loss_png = t.out / "loss.png"
    fig.savefig(loss_png, dpi=100)
    plt.close(fig)
    if samples <= 0:
        return loss_png, None
    if t.bridge:
        return loss_png, _bridge_figure(t, samples)
    prior = t.prior()
    sampler, label = (flow_heun, "flow Heun") if t.flow else (edm_heun, "EDM Heun")
    if t.cm:
        sampler, label, sampler_steps = consistency_sampling, "consistency sampling", min(sampler_steps, 2)
    x = sampler(prior, (samples, *prior.shape), steps=sampler_steps, generator=torch.Generator().manual_seed(0))
    x = x.clamp(0, 1).float().cpu()  # the samplers return physical units
    cols = int(math.ceil(math.sqrt(samples)))
    rows = int(math.ceil(samples / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows))
    for i, a in enumerate(axes.flat):
        a.axis("off")
        if i < samples:
            img = x[i].permute(1, 2, 0).numpy()
            a.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    fig.suptitle(f"EMA samples at step {t.step} ({label}, {sampler_steps} steps)", fontsize=9)
    fig.tight_layout()
    grid_png = t.out / "samples.png"
    fig.savefig(grid_png, dpi=100)
    plt.close(fig)
    return loss_png, grid_png


def _bridge_figure(t, samples: int, steps: int = 10) -> Path:
    """``samples.png`` of a bridge: fresh images of the data (seed 0), their degraded partners x₁
    and the EMA bridge's I²SB restoration from x₁ (``steps`` steps, seed 0), in rows of three."""
    import matplotlib.pyplot as plt

    from ..priors.bridge import bridge_sample

    n = max(1, min(samples // 2, 6))
    g = torch.Generator().manual_seed(0)
    x0 = t.data.sample(n, g).to(torch.float64)
    x1 = degrade(x0, t.bridge_spec, g) * 2 - 1
    bridge = t.prior()
    with torch.no_grad():
        out = (bridge_sample(bridge.x0_hat, x1, bridge.path, steps, generator=g) + 1) / 2
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)
    for j, (row, title) in enumerate([(x0, "x₀"), ((x1 + 1) / 2, "x₁ = A⁺y"), (out, f"I²SB, {steps} steps")]):
        for i in range(n):
            a = axes[j, i]
            a.axis("off")
            a.imshow(row[i, 0].clamp(0, 1).float().numpy(), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                a.set_title(title, fontsize=8, loc="left")
    fig.suptitle(f"EMA bridge at step {t.step}: {t.bridge_spec}", fontsize=7)
    fig.tight_layout()
    grid_png = t.out / "samples.png"
    fig.savefig(grid_png, dpi=100)
    plt.close(fig)
    return grid_png
