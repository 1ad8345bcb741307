"""EnKG on a black-box forward model against DPS with gradients, on held-out phantom64 images.

    python benchmarks/blackbox.py [--case nonlinear_blur|phase_retrieval|all] [--images 4]
        [--ensemble 1024] [--steps 80] [--guidance-scale 2.0 [0.5 ...]] [--dps-steps 1000] [--quick]

The goal (issue): EnKG, which only *evaluates* the forward model (here numpy/scipy code wrapped as
an :class:`operators.BlackBoxOperator`: no autograd path exists), within 1 dB of DPS, which
differentiates through the equivalent torch operator. Both see the same y; the script first checks
that the scipy black box and the torch operator agree to 1e-10 on the test images.

Cases (64×64 phantoms on [0, 1], the shipped ``phantom64`` prior, ``invdiff.phantoms.held_out``):

* ``nonlinear_blur`` — a saturating detector after a blur: ``y = tanh(2·(k ⋆ x)) + n``, k the 9×9
  Gaussian (σ 1.5 px) with circular boundary; black box ``scipy.ndimage.correlate(mode="wrap")``
  then ``np.tanh``, per item; DPS's operator: ``operators.Blur`` + ``torch.tanh``. σ_y = 0.025
  (DPS's 0.05 on [−1, 1]); DPS ζ = 0.3 (its deblurring value).
* ``phase_retrieval`` — ``y = |F pad(x)| + n`` (oversampling 2, DPS's convention); black box
  ``scipy.fft`` on the whole batch; DPS's operator ``operators.PhaseRetrieval``. σ_y = 0.05 (DPS's
  phase-retrieval noise), DPS ζ = 1.0. PSNR is not made invariant to the flips and shifts that
  leave |F x| unchanged (one draw per image, no restarts).

Settings: EnKG at the paper's defaults (configs/solver/enkg.yaml: 80 steps, ensemble 1024,
guidance scale 2, 2 updates per step) unless overridden, one row per ``--guidance-scale``; DPS 1000
steps. Image i's draw uses seed 100 + i for both; y's noise seed 1. NFE counts network evaluations
per image: for EnKG, ensemble × network calls (each call evaluates all particles); for DPS, its calls
(each with one backward pass as well). The EnKG ensemble mean (an MMSE-like point estimate, not a
draw) gets its own row. ``--quick``: 1 image, ensemble 8, 6 steps (a smoke test of the script; it
writes only with ``--out``). Writes benchmarks/results/blackbox_enkg.md.

Cost: EnKG at the defaults evaluates the network 1024 × 1588 ≈ 1.6 M times per image
(:func:`invdiff.solvers.enkg.enkg_cost`) — about 4 hours per image on one CPU thread (≈ 9 ms per
particle evaluation measured with J = 32), so run it on a GPU (``--device cuda``, the default when
there is one). The step size matters (enkg.py, "Measured"): compare ``--guidance-scale 2.0 0.5``;
a row chosen among several on the test images is marked so in the summary line.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage
import torch

import operators as O
from invdiff import phantoms as P
from invdiff.priors import CountingPrior, load
from invdiff.solvers.dps import dps
from invdiff.solvers.enkg import enkg, enkg_cost

sys.path.insert(0, str(Path(__file__).parent))
from _shipped_eval import metrics  # noqa: E402

SHAPE = (1, 64, 64)
KERNEL = O.GaussianKernel(9, 1.5)
GAIN = 2.0


class SaturatedBlur(O.NonlinearOperator):
    """``tanh(gain · Blur(x))``: the torch (differentiable) twin of the scipy black box."""

    def __init__(self, img_size=SHAPE, gain: float = GAIN):
        super().__init__(img_size, img_size)
        self.blur, self.gain = O.Blur(KERNEL, img_size, padding="circular"), float(gain)

    def forward_model(self, x):
        return torch.tanh(self.gain * self.blur.A(x))


def blur_kernel() -> np.ndarray:
    k = O.Blur(KERNEL, SHAPE, padding="circular").config()["kernel"]
    return np.asarray(k.numpy() if hasattr(k, "numpy") else k, dtype=np.float64)


def cases():
    kern = blur_kernel()

    def saturated_blur(x: np.ndarray) -> np.ndarray:  # one item [1, H, W]
        return np.tanh(GAIN * scipy.ndimage.correlate(x[0], kern, mode="wrap"))[None]

    pr = O.PhaseRetrieval(SHAPE, oversampling=2.0)
    ph, pw = pr.pad

    def phase_retrieval(x: np.ndarray) -> np.ndarray:  # the whole batch [B, 1, H, W]
        z = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        k = scipy.fft.fft2(scipy.fft.ifftshift(z, axes=(-2, -1)), norm="ortho")
        return np.abs(scipy.fft.fftshift(k, axes=(-2, -1)))

    return {
        "nonlinear_blur": dict(
            title="saturated blur y = tanh(2·(k ⋆ x)), k Gaussian 9×9 σ 1.5 (circular)",
            torch_op=SaturatedBlur(), sigma_y=0.025, zeta=0.3,
            blackbox=O.BlackBoxOperator(saturated_blur, SHAPE, SHAPE, name="scipy.ndimage.correlate+np.tanh")),
        "phase_retrieval": dict(
            title="Fourier phase retrieval y = |F pad(x)| (oversampling 2)",
            torch_op=pr, sigma_y=0.05, zeta=1.0,
            blackbox=O.BlackBoxOperator(phase_retrieval, SHAPE, pr.meas_size, batched=True,
                                        name="scipy.fft |F pad(x)|")),
    }


def provenance(cmd: str, device: torch.device) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    commit += " (with uncommitted changes)" if dirty else ""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return (f"Command: `{cmd}` — commit {commit}, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), GPU {gpu}.")


def run_case(name: str, case: dict, prior, x: torch.Tensor, args, device: torch.device) -> list[tuple]:
    """Rows ``(label, PSNR, SSIM, NFE per image, network calls, forward evaluations per image, s/image)``."""
    op, bb = case["torch_op"].to(device), case["blackbox"]
    gap = float((op.A(x) - bb.A(x)).abs().max())
    if gap > 1e-10:
        raise SystemExit(f"{name}: the black box and the torch operator differ by {gap:.3g}")
    y = op.measure(x, O.GaussianNoise(case["sigma_y"]), generator=torch.Generator().manual_seed(1))
    n, rows = len(x), []

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(n)]

    counting = CountingPrior(prior)
    t0 = time.perf_counter()
    out = dps(y, op, counting, sigma_y=case["sigma_y"], steps=args.dps_steps, zeta=case["zeta"], generator=gens())
    secs = (time.perf_counter() - t0) / n
    rows.append((f"DPS (autograd through the torch operator; {args.dps_steps} steps, ζ {case['zeta']})",
                 *metrics(out, x), counting.calls, counting.calls, args.dps_steps, secs))
    print(rows[-1], flush=True)
    for w in args.guidance_scale:
        counting = CountingPrior(prior)
        settings = dict(steps=args.steps, ensemble=args.ensemble, guidance_scale=w, num_updates=args.num_updates)
        t0 = time.perf_counter()
        out, ens = enkg(y, bb, counting, sigma_y=case["sigma_y"], generator=gens(), return_ensemble=True, **settings)
        secs = (time.perf_counter() - t0) / n
        cost = enkg_cost(args.steps, args.ensemble, args.num_updates)
        assert counting.calls == cost["network_calls"], (counting.calls, cost)
        label = (f"EnKG (black box, no gradients; {args.steps} steps, J = {args.ensemble}, w {w:g}, "
                 f"{args.num_updates} updates)")
        rows.append((label + ": member 0 (one draw)", *metrics(out, x), cost["nfe"], counting.calls,
                     cost["forward_evals"], secs))
        rows.append((label + ": ensemble mean (point estimate)", *metrics(ens.mean(1), x), cost["nfe"], counting.calls,
                     cost["forward_evals"], secs))
        print(*rows[-2:], sep="\n", flush=True)
    return rows


def table(name: str, case: dict, n: int, rows) -> list[str]:
    lines = [f"## {name}: {case['title']}", "",
             f"{n} held-out phantoms; σ_y = {case['sigma_y']}; black box: {case['blackbox'].describe()}; "
             f"DPS operator: {case['torch_op'].describe()}.", "",
             "| method | PSNR (dB) | SSIM | NFE / image | network calls | forward evals / image | s / image |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]:.2f} | {r[2]:.3f} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.2f} |" for r in rows]
    dps_psnr = rows[0][1]
    best = max(rows[1::2], key=lambda r: r[1])
    chosen = " (the best of the listed guidance scales, chosen on these test images)" if len(rows) > 3 else ""
    lines += ["", f"EnKG draw vs DPS{chosen}: {best[1] - dps_psnr:+.2f} dB "
              f"({'within' if best[1] >= dps_psnr - 1.0 else 'not within'} 1 dB).", ""]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=["nonlinear_blur", "phase_retrieval", "all"], default="all")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--ensemble", type=int, default=1024)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--num-updates", type=int, default=2)
    p.add_argument("--guidance-scale", type=float, nargs="+", default=[2.0])
    p.add_argument("--dps-steps", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="1 image, ensemble 8, 6 steps; writes only with --out")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.ensemble, args.steps, args.dps_steps = 1, 8, 6, 6
    device = torch.device(args.device)
    prior = load("phantom64", device=device)
    x = P.held_out(64, max(args.images, 2))[: args.images].to(device, torch.float64)
    all_cases = cases()
    names = sorted(all_cases) if args.case == "all" else [args.case]
    cmd = "python benchmarks/blackbox.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# EnKG on black-box forward models vs DPS with gradients (phantom64)", "",
             provenance(cmd.strip(), device), "",
             f"Prior `phantom64` (sha256 {prior.checkpoint['sha256'][:12]}…); held-out phantoms "
             "(`invdiff.phantoms.held_out`), PSNR/SSIM from scikit-image (data_range 1, clipped to [0, 1]),",
             "mean over images; seconds per image with all images solved as one batch.", ""]
    for name in names:
        lines += table(name, all_cases[name], len(x), run_case(name, all_cases[name], prior, x, args, device))
    text = "\n".join(lines) + "\n"
    print(text)
    default = None if args.quick else Path(__file__).parent / "results" / "blackbox_enkg.md"
    out = Path(args.out) if args.out else default
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
