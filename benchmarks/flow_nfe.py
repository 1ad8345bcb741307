"""Flow priors against diffusion priors at a fixed budget of network calls: PSNR against NFE, and
unconditional samples at 10 NFE.

    python benchmarks/flow_nfe.py --task mri4x [--n 8] [--nfe 5 10 20 50 100] [--reflow PATH]
    python benchmarks/flow_nfe.py --task inpaint|sr2 ...       # patches64 / patches64_flow

Problems: ``mri4x`` is benchmarks/phantom64_mri.py's (held-out phantoms, fastMRI random mask 4×,
σ_y = 0.01) with ``phantom64`` (EDM) against ``phantom64_flow`` (rectified flow, same data, network
and budget); ``inpaint`` / ``sr2`` are benchmarks/patches64_eval.py's (camera and moon views, σ_y =
0.025) with ``patches64`` against ``patches64_flow``. ``--reflow`` adds the reflowed (2-rectified)
prior. One posterior sample per image (seed 100 + i), never best-of-N.

On the flow priors the flow solvers run beside ΠGDM and DDNM (diffusion solvers, which run on every
prior through its denoiser): the rows then tell the prior's quality from the solver's.

Budget: each solver runs at the number of steps whose measured NFE (network calls per batch,
forward passes; a vector–Jacobian product counts as one more pass and is listed apart) is closest to
the target without exceeding it — found by counting calls at 1 and 2 steps (NFE = a·steps + b), then
checked: the table reports the NFE each run actually used.

Unconditional samples: 256 samples of each prior at ≤ 10 NFE against 256 held-out images
(``mri4x``: phantoms of EVAL_SEEDS; the patches tasks: random 64×64 views of camera and moon), two
distances that need no downloaded network: FD-16, the Fréchet distance between Gaussians fitted to
the images average-pooled to 16×16 (256 features), and SW-pix, the sliced Wasserstein-2 distance
between the pixel vectors (128 random directions). Lower is closer to the data; both are measured
between two independent held-out sets as the floor.
Writes benchmarks/results/flow_nfe_<task>.md and flow_nfe_<task>.png.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import operators as O
from _shipped_eval import metrics
from invdiff import phantoms as P
from invdiff import solvers
from invdiff.exact_posterior import sliced_w2
from invdiff.perceptual import fid_from_features
from invdiff.priors import CountingPrior, load
from invdiff.priors.flow_samplers import flow_euler, flow_heun
from invdiff.priors.samplers import ddim, edm_heun

NFES = (5, 10, 20, 50, 100)
TASKS = {
    "mri4x": dict(diffusion="phantom64", flow="phantom64_flow", sigma_y=0.01,
                  diffusion_solvers=("pigdm", "ddnm", "dps"), title="phantom64 MRI 4×"),
    "inpaint": dict(diffusion="patches64", flow="patches64_flow", sigma_y=0.025,
                    diffusion_solvers=("pigdm", "ddnm", "dps"), title="patches64 random inpainting 70 %"),
    "sr2": dict(diffusion="patches64", flow="patches64_flow", sigma_y=0.025,
                diffusion_solvers=("pigdm", "ddnm", "dps"), title="patches64 ×2 super-resolution"),
}
FLOW_SOLVERS = ("ot_ode", "pnp_flow", "ictm", "flowdps", "dflow")
# settings beside the paper defaults: DPS's per-task ζ (the shipped-prior tables'); PnP-Flow with one
# draw per step (its paper averages 5, which at a fixed NFE only buys fewer steps); D-Flow with a
# 3-step Euler ODE (its paper's 5 midpoint steps cost 25 NFE for the smallest run)
SOLVER_KW = {"dps": {"mri4x": dict(zeta=1.0), "inpaint": dict(zeta=0.5), "sr2": dict(zeta=0.3)},
             "pnp_flow": {t: dict(num_samples=1) for t in TASKS},
             "dflow": {t: dict(ode_steps=3, ode="euler") for t in TASKS}}


def problem(task: str):
    """Test images, operator, y (and held-out images for the unconditional distances)."""
    if task == "mri4x":
        from phantom64_mri import problem as mri

        test = P.held_out(64, 8)
        op, y = mri(test, 4)
        ref = P.phantoms(P.EVAL_SEEDS[:64], 64)
        ref = torch.cat([ref, ref.flip(-1), ref.flip(-2), ref.flip(-1).flip(-2)])  # 256 images: flips are
        floor = P.phantoms([2**31 + 10**6 + i for i in range(256)], 64)            # in the training augmentation
        return test, op, y, ref, floor
    from patches64_eval import SIGMA_Y, operator, views

    test = torch.cat([views(n, seed=i) for i, n in enumerate(("camera", "moon"))])
    op = operator(task)
    y = op.measure(test, O.GaussianNoise(SIGMA_Y), generator=torch.Generator().manual_seed(1))
    ref = torch.cat([views(n, seed=1000 + s) for s in range(64) for n in ("camera", "moon")])[:256]
    floor = torch.cat([views(n, seed=5000 + s) for s in range(64) for n in ("camera", "moon")])[:256]
    return test, op, y, ref, floor


def nfe_of(name, prior, y, op, sigma_y, steps, kw) -> int:
    c = CountingPrior(prior)
    solvers.SOLVERS[name](y[:1], op, c, sigma_y=sigma_y, steps=steps, generator=torch.Generator().manual_seed(0), **kw)
    return c.calls


def steps_for(name, prior, y, op, sigma_y, target, kw) -> int | None:
    """The most steps whose NFE ≤ target (NFE = a·steps + b from 1 and 2 steps)."""
    n1, n2 = nfe_of(name, prior, y, op, sigma_y, 1, kw), nfe_of(name, prior, y, op, sigma_y, 2, kw)
    a, b = n2 - n1, n1 - (n2 - n1)
    if a <= 0:
        return None
    s = (target - b) // a
    return int(s) if s >= 1 else None


def run_solver(name, prior, y, op, sigma_y, steps, kw, test):
    c = CountingPrior(prior)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(y))]
    t0 = time.perf_counter()
    try:
        x = solvers.SOLVERS[name](y, op, c, sigma_y=sigma_y, steps=steps, generator=gens, **kw)
    except solvers.SolverDivergedError:
        return math.nan, math.nan, c.calls, math.nan
    secs = (time.perf_counter() - t0) / len(y)
    ps, ss = metrics(x, test)
    return ps, ss, c.calls, secs


def features16(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.avg_pool2d(x.double().clamp(0, 1), 4).flatten(1).numpy()


def distances(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    fd = fid_from_features(features16(x), features16(ref))
    sw = sliced_w2(x.double().flatten(1).clamp(0, 1), ref.double().flatten(1), n_dirs=128, seed=0)
    return fd, sw


def straightness(prior, n: int = 64, steps: int = 50) -> float:
    """Liu et al. 2023 (arXiv:2209.03003), eq. 3: S = ∫ E‖(x₀ − x₁) − dx_t/dt‖² dt along the prior's
    own ODE (Euler, ``steps`` steps from t = 1), per pixel in model units; 0 for straight paths."""
    xs = []
    flow_euler(prior, (n, *prior.shape), steps=steps, generator=torch.Generator().manual_seed(11),
               callback=lambda i, x, x0: xs.append(x.clone()))
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x1 = float(prior.path.sigma(ts[0])) * torch.randn((n, *prior.shape), generator=torch.Generator().manual_seed(11),
                                                      dtype=torch.float64)
    path = [x1] + xs
    d = (path[-1] - path[0]) / (ts[-1] - ts[0])
    s = sum(float((ts[i] - ts[i + 1]) * ((path[i + 1] - path[i]) / (ts[i + 1] - ts[i]) - d).square().mean())
            for i in range(steps))
    return s / float(ts[0] - ts[-1])


def unconditional(priors: dict, ref, floor, n: int = 256):
    rows = [("held-out images (floor: two independent held-out sets)", 0, *distances(floor, ref))]
    for label, prior in priors.items():
        shape = (n, *prior.shape)
        if label.startswith("diffusion"):
            runs = [("EDM Heun, 5 steps", edm_heun, dict(steps=5)), ("DDIM, 10 steps", ddim, dict(steps=10))]
        else:
            runs = [("flow Euler, 10 steps", flow_euler, dict(steps=10)), ("flow Heun, 5 steps", flow_heun, dict(steps=5))]
        for name, fn, kw in runs:
            c = CountingPrior(prior)
            x = fn(c, shape, generator=torch.Generator().manual_seed(7), **kw).float()
            rows.append((f"{label}: {name}", c.calls, *distances(x, ref)))
            print(rows[-1], flush=True)
    straight = {label: straightness(prior) for label, prior in priors.items() if hasattr(prior, "path")}
    return rows, straight


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--flow", default=None, help="flow prior file (default: the shipped one)")
    p.add_argument("--reflow", default=None, help="reflowed prior file (adds its rows)")
    p.add_argument("--solvers", nargs="+", default=list(FLOW_SOLVERS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = TASKS[args.task]
    test, op, y, ref, floor = problem(args.task)
    priors = {f"diffusion ({cfg['diffusion']})": load(cfg["diffusion"]),
              f"flow ({cfg['flow'] if args.flow is None else Path(args.flow).name})": load(args.flow or cfg["flow"])}
    if args.reflow:
        priors[f"reflow ({Path(args.reflow).name})"] = load(args.reflow)
    results = []  # (prior label, solver, target NFE, steps, PSNR, SSIM, NFE used, s / image)
    for label, prior in priors.items():
        # flow priors: the flow solvers and the diffusion sibling's two best projection solvers (every
        # solver runs on a flow prior: the table then separates the prior from the solver)
        names = cfg["diffusion_solvers"] if label.startswith("diffusion") else [
            s for s in args.solvers if s in solvers.SOLVERS] + ["pigdm", "ddnm"]
        for name in names:
            kw = SOLVER_KW.get(name, {}).get(args.task, {})
            for target in args.nfe:
                steps = steps_for(name, prior, y, op, cfg["sigma_y"], target, kw)
                if steps is None:
                    print(f"{label} {name}: no step count within {target} NFE", flush=True)
                    continue
                ps, ss, used, secs = run_solver(name, prior, y, op, cfg["sigma_y"], steps, kw, test)
                results.append((label, name, target, steps, ps, ss, used, secs))
                print("{} {} target {} steps {}: PSNR {:.2f} SSIM {:.3f} NFE {} {:.2f} s/img".format(
                    label, name, target, steps, ps, ss, used, secs), flush=True)
    unc, straight = unconditional(priors, ref, floor)
    write(args, cfg, priors, results, unc, straight, len(test))


def write(args, cfg, priors, results, unc, straight, n_images):
    out = Path(args.out or Path(__file__).parent / "results" / f"flow_nfe_{args.task}.md")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    cmd = "python benchmarks/flow_nfe.py " + " ".join(sys.argv[1:] if argv_is_cli() else [f"--task {args.task}"])
    lines = [f"# Flow vs diffusion priors at equal NFE: {cfg['title']}", "",
             f"Command: `{cmd}` — commit {commit}, torch {torch.__version__}, "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s).", "",
             f"{n_images} held-out images, one posterior sample each; PSNR / SSIM as in the shipped-prior tables "
             "(scikit-image, data_range 1, clipped). NFE: forward network calls per batch, measured "
             "(gradient-guided solvers add as many backward passes).", "",
             "| prior | solver | NFE budget | steps | NFE used | PSNR (dB) | SSIM | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for label, name, target, steps, ps, ss, used, secs in results:
        lines.append(f"| {label} | {name} | {target} | {steps} | {used} | {ps:.2f} | {ss:.3f} | {secs:.2f} |")
    diff = [r for r in results if r[0].startswith("diffusion") and r[6] <= 100 and math.isfinite(r[4])]
    flows = [r for r in results if not r[0].startswith("diffusion") and r[6] <= 10 and math.isfinite(r[4])]
    if diff and flows:
        bd, bf = max(diff, key=lambda r: r[4]), max(flows, key=lambda r: r[4])
        lines += ["", f"Goal check: best flow result at ≤ 10 NFE — {bf[0]} {bf[1]}, {bf[4]:.2f} dB ({bf[6]} NFE) — "
                      f"against the best diffusion result at ≤ 100 NFE — {bd[1]}, {bd[4]:.2f} dB ({bd[6]} NFE): "
                      f"{bf[4] - bd[4]:+.2f} dB (goal: ≥ −0.5 dB)."]
    lines += unconditional_table("Unconditional samples at ≤ 10 NFE", unc)
    if straight:
        lines += ["", "Straightness of each flow prior's ODE (Liu et al. 2023, eq. 3: ∫ E‖(x₀ − x₁) − v‖² dt per pixel, "
                  "64 trajectories of 50 Euler steps; 0 = straight paths, which one Euler step integrates exactly): "
                  + "; ".join(f"{k} {v:.4f}" for k, v in straight.items()) + "."]
    out.write_text("\n".join(lines) + "\n")
    plot(out.with_suffix(".png"), results, cfg)
    print("wrote", out)


def unconditional_table(title: str, unc) -> list[str]:
    """The markdown section of the unconditional rows ``(label, NFE, FD-16, SW-pix)``."""
    return ["", f"## {title}", "",
            "256 samples (seed 7) against 256 held-out images. FD-16: Fréchet distance of 16×16 average-pooled "
            "images; SW-pix: sliced W2 of pixel vectors. Lower is closer to the data.", "",
            "| samples | NFE | FD-16 | SW-pix |", "|---|---|---|---|"] + \
        [f"| {label} | {nfe} | {fd:.3f} | {sw:.4f} |" for label, nfe, fd, sw in unc]


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == "flow_nfe.py"


def plot(path: Path, results, cfg, markers=None) -> None:
    """PSNR against measured NFE, one line per (prior, solver); rows with no run (steps ``None``) or a
    NaN PSNR are left out. ``markers``: line style by the label's first word (default: diffusion
    solid, others dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = markers or {"diffusion": "o-"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r[0], r[1]) for r in results})
    for label, name in keys:
        pts = [(r[6], r[4]) for r in results if (r[0], r[1]) == (label, name) and r[3] is not None
               and math.isfinite(r[4])]
        if pts:
            xs, ys = zip(*pts)
            kind = label.split(" ")[0]
            ax.plot(xs, ys, markers.get(kind, "s--"), label=f"{kind} {name}")
    ax.set_xscale("log")
    ax.set_xlabel("NFE (forward network calls)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(cfg["title"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
