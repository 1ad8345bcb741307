"""What the shipped-prior evaluations (``phantom64_mri.py``, ``patches64_eval.py``, ``corrupted_data.py``,
``bridges.py``) share: the held-out problems, the metrics, the timed rows with counted NFE, and the
markdown table with its provenance."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invdiff import solvers
from invdiff.priors import CountingPrior


def held_out_problem(task: str, sigma_y: float):
    """(test images, operator, y, validation images, validation y) of a held-out problem:
    ``mri4x`` / ``mri8x`` — phantom64_mri.py's (8 held-out phantoms, fastMRI random mask of mask seed 0,
    its σ_y = 0.01; validation phantoms ``EVAL_SEEDS[32:36]`` with the same mask); ``inpaint``, ``sr2``,
    ``denoise`` — patches64_eval.py's camera/moon views (validation: coins and cell) under its inpainting or
    ×2 operator, or the identity, with noise ``sigma_y`` (seed 1 test, 2 validation)."""
    import operators as O
    from invdiff import phantoms as P

    if task in ("mri4x", "mri8x"):
        from phantom64_mri import problem as mri

        test, val = P.held_out(64, 8), P.phantoms(P.EVAL_SEEDS[32:36], 64)
        accel = 4 if task == "mri4x" else 8
        op, y = mri(test, accel)
        vop, vy = mri(val, accel, seed=2)
        assert torch.equal(vop.mask, op.mask)
        return test, op, y, val, vy
    from patches64_eval import TEST, VAL, operator, views

    test = torch.cat([views(n, seed=i) for i, n in enumerate(TEST)])
    val = torch.cat([views(n, seed=10 + i) for i, n in enumerate(VAL)])
    op = O.Inpainting(torch.ones(1, 64, 64), (1, 64, 64)) if task == "denoise" else operator(task)
    y = op.measure(test, O.GaussianNoise(sigma_y), generator=torch.Generator().manual_seed(1))
    vy = op.measure(val, O.GaussianNoise(sigma_y), generator=torch.Generator().manual_seed(2))
    return test, op, y, val, vy


def metrics(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR / SSIM over a batch (scikit-image, data_range = 1, x clipped to [0, 1])."""
    ps, ss = [], []
    for a, b in zip(x.clamp(0, 1).double().cpu().numpy(), ref.double().cpu().numpy()):
        ps.append(peak_signal_noise_ratio(b[0], a[0], data_range=1.0))
        ss.append(structural_similarity(b[0], a[0], data_range=1.0))
    return float(np.mean(ps)), float(np.mean(ss))


class Rows:
    """Table rows ``(label, PSNR, SSIM, NFE, seconds per image)`` against ground truth ``ref``."""

    def __init__(self, ref: torch.Tensor):
        self.ref, self.rows = ref, []

    def record(self, label: str, fn, counting: CountingPrior | None = None) -> None:
        t0 = time.perf_counter()
        x = fn()
        secs = (time.perf_counter() - t0) / len(self.ref)
        ps, ss = metrics(x, self.ref)
        self.rows.append((label, ps, ss, counting.calls if counting is not None else 0, secs))
        print("{:58s} PSNR {:6.2f}  SSIM {:.3f}  NFE {}  {:.2f} s/image".format(*self.rows[-1]), flush=True)

    def solvers(self, runs, prior, y, op, sigma_y: float) -> None:
        """``runs``: ``(label, solver name, settings)``; image i's draw uses seed 100 + i. A
        diverging solver gets a NaN row."""
        for label, name, kw in runs:
            counting = CountingPrior(prior)
            gens = [torch.Generator().manual_seed(100 + i) for i in range(len(y))]
            f = solvers.SOLVERS[name]
            try:
                self.record(label, lambda f=f, kw=kw, counting=counting, gens=gens: f(
                    y, op, counting, sigma_y=sigma_y, generator=gens, **kw), counting)
            except solvers.SolverDivergedError as err:
                self.rows.append((label, math.nan, math.nan, counting.calls, math.nan))
                print(label, "diverged:", err, flush=True)

    def write(self, out: Path, title: str, cmd: str, prior_path: Path, prior, about: list[str]) -> None:
        lines = [
            f"# {title}", "",
            f"Command: `{cmd}` — torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} thread(s); prior `{prior_path.name}` (sha256 {prior.checkpoint['sha256'][:12]}…).", "",
            *about,
            "PSNR / SSIM: scikit-image, data_range = 1, mean over images, one sample per image. NFE: network",
            "calls per batch. Seconds per image on this CPU (the batch of all images solved at once).", "",
            "| method | PSNR (dB) | SSIM | NFE | s / image |", "|---|---|---|---|---|",
        ]
        for label, ps, ss, nfe, secs in self.rows:
            lines.append(f"| {label} | {ps:.2f} | {ss:.3f} | {nfe} | {secs:.2f} |")
        out.write_text("\n".join(lines) + "\n")
        print("wrote", out)
