"""3-D reconstruction with the shipped 2-D ``phantom64`` prior: slice-wise vs DiffusionMBIR.

    python benchmarks/volume3d.py [--size 64] [--steps 2000] [--views 8] [--accel 4] [--quick]

A ``size × 64 × 64`` phantom volume (:func:`invdiff.phantoms.phantom_volume`, seed 0: 3-D
ellipsoids whose axial slices look like the prior's 2-D training phantoms; 64 × 64 is the prior's
slice size, ``--size`` sets the number of slices D) under two noiseless problems (the paper's
setting):

* sparse-view parallel-beam CT, ``--views`` views over [0°, 180°) on every axial slice
  (:class:`operators.VolumeParallelBeamCT`; 8 views: the paper's headline sparse-view case);
* 4× single-coil Cartesian MRI, each slice its own fastMRI random mask (centre fraction 0.08, masks
  drawn slice after slice from seed 0; :class:`operators.VolumeSingleCoilMRI`).

Methods: ``A⁺y`` (min-norm least squares: CG for CT, zero-filled for MRI), the slice-wise baseline
(DiffusionMBIR with λ = 0: every slice an independent score-SDE predictor–corrector run with CG data
consistency) and DiffusionMBIR (z-TV by ADMM) with the official code's settings converted to our
operators (``invdiff.solvers.diffusionmbir``, module docstring "Units"): CT λ = 0.04·2n/π,
ρ = 10·2n/π for n views (the official CT back-projection carries π/(2n)); MRI λ = 0.005, ρ = 0.01
(official BRATS script; same orthonormal AᵀA); for CT also λ, ρ tuned on a validation volume
(``CT_TUNED``: phantom seed 1, 8 slices, 200 levels). All samplers: ``--steps`` levels, one corrector
step at snr 0.16, one ADMM iteration with one CG iteration per data-consistency step, one sample
(seed 100). Metrics on the volume clipped to [0, 1] (data_range 1): PSNR, 3-D SSIM (scikit-image,
7³ window), mean PSNR of the axial (z), coronal (y) and sagittal (x) slices that cut the object
(all-zero background slices left out), and the z-gradient
error ‖D_z x̂ − D_z x‖/‖D_z x‖. Writes ``benchmarks/results/volume3d.md`` (or ``--out``; ``--quick``,
4 slices and 4 levels, a wiring check and not a result, prints its table unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import operators as O
from invdiff.phantoms import phantom_volume
from invdiff.priors import CountingPrior, load
from invdiff.solvers.diffusionmbir import diffusionmbir, z_diff

SLICE = 64  # the phantom64 prior's slice size


#: CT λ, ρ tuned on a validation volume (phantom seed 1, 8 slices, 200 levels, 8 views; PSNR / z-err):
#: λ = 0 23.18 dB / 2.73; ρ 12.7 with λ 0.2: 26.04 / 1.42, 0.5: 27.60 / 1.02, 1: 28.15 / 0.84, 2: 28.58 / 0.80;
#: λ 0.5 with ρ 50.9: 25.55 / 1.20. λ = 1 (best SSIM, 0.954), ρ = 12.7 (= 10 × ‖RᵀR‖ ratio, 496 / 390, of
#: 8-view 64² to the official 8-view 256² with its π/16 back-projection scale).
CT_TUNED = (1.0, 12.7)


def problems(D: int, views: int, accel: int):
    """(name, operator, [(label, λ, ρ), …], notes) of the CT and MRI problems on a D-slice volume."""
    ct = O.VolumeParallelBeamCT((1, D, SLICE, SLICE), angles=views)
    c = 2 * views / math.pi  # official CT: AT = π/(2n)·Rᵀ, so its λ, ρ are ours times π/(2n)
    cf = 0.08 if accel <= 4 else 0.04
    mri = O.VolumeSingleCoilMRI(O.FastMRIMask("random", [cf], [accel]), (1, D, SLICE, SLICE), seed=0)
    lam_ct, rho_ct = 0.04 * c, 10.0 * c
    return [
        (f"sparse-view CT, {views} views", ct,
         [("slice-wise (λ = 0)", 0.0, rho_ct),
          (f"DiffusionMBIR, official λ, ρ (λ = {lam_ct:.3g}, ρ = {rho_ct:.3g})", lam_ct, rho_ct),
          (f"DiffusionMBIR, tuned (λ = {CT_TUNED[0]:g}, ρ = {CT_TUNED[1]:g})", *CT_TUNED)],
         [f"official CT λ = 0.04, ρ = 10 × 2n/π = {c:.3f} (its back-projection carries π/(2n))",
          f"tuned CT λ = {CT_TUNED[0]:g}, ρ = {CT_TUNED[1]:g}: on a validation volume (phantom seed 1, 8 slices, "
          "200 levels; benchmarks/volume3d.py CT_TUNED)"]),
        (f"MRI {accel}×, per-slice masks (R = {mri.acceleration:.2f} realised)", mri,
         [("slice-wise (λ = 0)", 0.0, 0.01), ("DiffusionMBIR, official λ, ρ (λ = 0.005, ρ = 0.01)", 0.005, 0.01)],
         ["official MRI λ = 0.005, ρ = 0.01 (BRATS script; its fft2/ifft2 pair has our orthonormal AᵀA)"]),
    ]


def volume_metrics(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    """PSNR/SSIM of the volume, mean PSNR of axial/coronal/sagittal slices, z-gradient error."""
    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.metrics import structural_similarity as ssim

    a = x_hat.clamp(0, 1).double()[0, 0].cpu().numpy()  # [D, H, W]
    b = x.double()[0, 0].cpu().numpy()
    def mean_psnr(axis: int) -> float:  # over the slices that cut the object (not all-zero background)
        vals = [psnr(np.take(b, i, axis), np.take(a, i, axis), data_range=1.0) for i in range(a.shape[axis])
                if np.take(b, i, axis).any() and not np.array_equal(np.take(a, i, axis), np.take(b, i, axis))]
        return float(np.mean(vals)) if vals else math.nan
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape))
    dz_hat, dz = z_diff(x_hat.clamp(0, 1).double()), z_diff(x.double())
    return {
        "psnr": float(psnr(b, a, data_range=1.0)),
        "ssim": float(ssim(b, a, data_range=1.0, win_size=win)) if win >= 3 else math.nan,
        "axial": mean_psnr(0), "coronal": mean_psnr(1), "sagittal": mean_psnr(2),
        "z_err": float((dz_hat - dz).norm() / dz.norm()) if dz.numel() and dz.norm() > 0 else math.nan,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args) -> tuple[list, list]:
    prior = load("phantom64")
    if tuple(prior.shape) != (1, SLICE, SLICE):
        raise SystemExit(f"the phantom64 prior models {list(prior.shape)}, expected 2-D slices [1, 64, 64]")
    x = torch.from_numpy(phantom_volume(SLICE, seed=args.phantom_seed, depth=args.size))[None, None].double()
    rows, notes = [], []
    for name, op, runs, note in problems(args.size, args.views, args.accel):
        y = op.A(x)
        if args.sigma_y > 0:
            y = op.measure(x, O.GaussianNoise(args.sigma_y), generator=torch.Generator().manual_seed(1))
        notes += [f"{name}: {n}" for n in note]
        t0 = time.perf_counter()
        x_dagger = op.A_dagger(y)
        rows.append((name, "A⁺y", 0, time.perf_counter() - t0, volume_metrics(x_dagger, x)))
        for label, lam, rho in runs:
            counting = CountingPrior(prior)
            t0 = time.perf_counter()
            x_hat = diffusionmbir(y, op, counting, sigma_y=args.sigma_y, steps=args.steps, lam=lam, rho=rho,
                                  generator=torch.Generator().manual_seed(100))
            secs = time.perf_counter() - t0
            rows.append((name, label, counting.calls, secs, volume_metrics(x_hat, x)))
            m = rows[-1][4]
            print(f"{name:45s} {label:60s} PSNR {m['psnr']:6.2f} SSIM {m['ssim']:.3f} axial {m['axial']:6.2f} "
                  f"coronal {m['coronal']:6.2f} sagittal {m['sagittal']:6.2f} z-err {m['z_err']:.3f} "
                  f"NFE {counting.calls} {secs:.1f} s", flush=True)
    return rows, notes


def table(args, argv, rows, notes) -> str:
    """The results file's markdown: provenance, settings, one row per method."""
    cmd = "python benchmarks/volume3d.py " + " ".join(argv)
    lines = [
        f"# 3-D phantom volume with the 2-D phantom64 prior: slice-wise vs DiffusionMBIR{' (--quick)' if args.quick else ''}",
        "",
        f"Command: `{cmd.strip()}` — commit {commit()}; {machine()}.",
        "",
        f"Volume: phantom_volume(64, seed={args.phantom_seed}, depth={args.size}) → {args.size} × 64 × 64 on [0, 1]; "
        f"σ_y = {args.sigma_y:g}. Samplers: {args.steps} VE levels, one Langevin corrector step (snr 0.16), "
        "one ADMM iteration × one CG iteration per data-consistency step, seed 100, one sample.",
        *[f"* {n}" for n in notes],
        "",
        "PSNR/SSIM of the volume (3-D SSIM, 7³ window); axial/coronal/sagittal: mean PSNR of the slices along z/y/x "
        "that cut the object (all-zero background slices left out); "
        "z-err = ‖D_z x̂ − D_z x‖/‖D_z x‖. NFE: denoiser calls, each on all slices at once. Seconds: wall clock "
        "of the whole reconstruction on this machine.",
        "",
        "| problem | method | PSNR (dB) | SSIM | axial | coronal | sagittal | z-err | NFE | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label, nfe, secs, m in rows:
        lines.append(f"| {name} | {label} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['axial']:.2f} | {m['coronal']:.2f} | "
                     f"{m['sagittal']:.2f} | {m['z_err']:.3f} | {nfe} | {secs:.1f} |")
    if args.quick:
        lines += ["", "Quick run (4 slices, 4 levels): checks that the pipeline runs; the numbers mean nothing."]
    return "\n".join(lines) + "\n"


def write(path: Path, args, argv, rows, notes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table(args, argv, rows, notes))
    print(f"wrote {path}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=None, help="number of slices D (default 64; --quick: 4)")
    p.add_argument("--steps", type=int, default=None, help="VE levels N (default 2000, the paper's; --quick: 4)")
    p.add_argument("--views", type=int, default=8, help="CT views over [0°, 180°) (default 8)")
    p.add_argument("--accel", type=int, default=4, help="MRI acceleration (default 4)")
    p.add_argument("--sigma-y", type=float, default=0.0, help="measurement noise (default 0: the paper's noiseless data)")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 slices, 4 levels: a wiring check")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.size = args.size if args.size is not None else (4 if args.quick else 64)
    args.steps = args.steps if args.steps is not None else (4 if args.quick else 2000)
    if not 1 <= args.size <= SLICE or args.steps < 1:
        p.error(f"--size must be in [1, {SLICE}] and --steps >= 1")
    rows, notes = run(args)
    if args.quick and not args.out:  # a wiring check: shown, not written into results/
        print(table(args, argv, rows, notes), end="")
    else:
        write(Path(args.out) if args.out else Path(__file__).parent / "results" / "volume3d.md", args, argv, rows, notes)
    return rows


if __name__ == "__main__":
    main()
