"""Consistency-model priors at 1–8 network calls against diffusion and flow priors: PSNR against NFE,
and unconditional samples of the distilled prior against its teacher at the same NFE.

    python benchmarks/cm_nfe.py --task mri4x|mri8x [--nfe 1 2 4 8] [--cm PATH]   # phantom64 family
    python benchmarks/cm_nfe.py --task inpaint|sr2 ...                            # patches64 family

Problems: ``mri4x`` / ``mri8x`` are benchmarks/phantom64_mri.py's (8 held-out phantoms, fastMRI random
mask, σ_y = 0.01) with ``phantom64`` (EDM), ``phantom64_cm`` (distilled from it) and
``phantom64_flow`` (rectified flow, same data and network); ``inpaint`` / ``sr2`` are
benchmarks/patches64_eval.py's (camera and moon views, σ_y = 0.025) with ``patches64``,
``patches64_cm`` and ``patches64_flow``. One posterior sample per image (seed 100 + i), never best-of-N.

Rows:

* the consistency prior with the consistency solvers (``cm4ir``, ``pnp_cm``) at 1, 2, 4, 8 NFE, and
  with DDNM, DPS and DAPS — the package's way to run any solver on a consistency prior: the same
  solver, its denoiser call answered by f(x, σ), at a few steps (README, "Consistency priors");
* the diffusion prior with ΠGDM (and DDNM) at 20 and 100 NFE — the issue's reference budget;
* the flow prior with OT-ODE (ΠGDM guidance in the flow ODE, the best flow solver of
  benchmarks/results/flow_nfe_*.md) at 4, 8 and 10 NFE.

Budget as in benchmarks/flow_nfe.py: each solver runs at the most steps whose measured NFE (forward
network calls per batch) is within the target; the table reports the NFE each run actually used. A
solver whose smallest run needs more than the target is listed as not run at that budget.

Unconditional samples: 256 samples of the consistency prior (multistep consistency sampling, Song et
al. 2023 Alg. 1, at 1, 2 and 4 calls) and of its teacher (EDM Heun at 3 and 5 calls, DDIM at 4 and 10
calls) against 256 held-out images, FD-16 and SW-pix as in flow_nfe.py (floor: two held-out sets).
Writes benchmarks/results/cm_nfe_<task>.md and cm_nfe_<task>.png.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
from pathlib import Path

import torch

from flow_nfe import distances, plot, problem as flow_problem, run_solver, steps_for, unconditional_table
from invdiff import phantoms as P
from invdiff import solvers
from invdiff.priors import CountingPrior, load
from invdiff.priors.consistency import consistency_sampling
from invdiff.priors.samplers import ddim, edm_heun

NFES = (1, 2, 4, 8)
REFERENCE_NFES = (20, 100)
FLOW_NFES = (4, 8, 10)
TASKS = {
    "mri4x": dict(family="phantom64", accel=4, sigma_y=0.01, title="phantom64 MRI 4×"),
    "mri8x": dict(family="phantom64", accel=8, sigma_y=0.01, title="phantom64 MRI 8×"),
    "inpaint": dict(family="patches64", sigma_y=0.025, title="patches64 random inpainting 70 %"),
    "sr2": dict(family="patches64", sigma_y=0.025, title="patches64 ×2 super-resolution"),
}
CM_SOLVERS = ("cm4ir", "pnp_cm", "ddnm", "dps", "daps")
#: settings beside the paper defaults, per task: DPS's ζ (the shipped-prior tables'); DAPS's one
#: consistency call per level; CM4IR's time
#: points for 64×64 images from the paper's ImageNet-64 SR×2 settings at the same σ_y (i_N 50, γ 0.01
#: at σ_y 0.01; i_N 75, γ 0.02 at 0.025; authors' evaluate_CM4IR.sh); PnP-CM's from the authors'
#: task files (task_specific_args/): fastMRI R4 / R8 for MRI 4× / 8×, CelebA-HQ inpainting and
#: SR for the patches tasks — their per-step δ_n apply at their N = 4 (``DELTAS4``), δ = 0.1 otherwise
SOLVER_KW = {"dps": {"mri4x": dict(zeta=1.0), "mri8x": dict(zeta=1.0), "inpaint": dict(zeta=0.5),
                     "sr2": dict(zeta=0.3)},
             # DAPS on a consistency prior: one call to σ = 0 per level is DAPS with the exact ODE (README)
             "daps": {t: dict(ode_steps=1, ode_sigma_min=0.0) for t in ("mri4x", "mri8x", "inpaint", "sr2")},
             "cm4ir": {"mri4x": dict(i_N=50, gamma=0.01), "mri8x": dict(i_N=50, gamma=0.01),
                       "inpaint": dict(i_N=75, gamma=0.02), "sr2": dict(i_N=75, gamma=0.02)},
             "pnp_cm": {"mri4x": dict(i_N=50, gamma=0.1, rhos=(-4.5, -1.0), mu_0=0.2),
                        "mri8x": dict(i_N=50, gamma=0.1, rhos=(-4.5, -1.5), mu_0=0.5),
                        "inpaint": dict(i_N=100, gamma=0.1, rhos=(-6.0, 12.0), mu_0=0.05),
                        "sr2": dict(i_N=150, gamma=0.2, rhos=(-4.0, 4.0), mu_0=0.2)}}
DELTAS4 = {"pnp_cm": {"mri4x": (0.3, 2.0, 6.0, 2.5), "mri8x": (0.35, 3.5, 7.5, 3.5),
                      "inpaint": (0.3, 0.2, 0.8, 0.8), "sr2": (0.3, 0.05, 0.2, 0.2)}}


def problem(task: str):
    """Test images, operator, y, held-out images and the floor set."""
    if task.startswith("mri"):
        from phantom64_mri import problem as mri

        test = P.held_out(64, 8)
        op, y = mri(test, TASKS[task]["accel"])
        ref = P.phantoms(P.EVAL_SEEDS[:64], 64)
        ref = torch.cat([ref, ref.flip(-1), ref.flip(-2), ref.flip(-1).flip(-2)])
        floor = P.phantoms([2**31 + 10**6 + i for i in range(256)], 64)
        return test, op, y, ref, floor
    return flow_problem(task)


def rows_for(label, prior, names, nfes, task, cfg, test, op, y):
    out = []
    for name in names:
        if name not in solvers.SOLVERS:
            print(f"{name}: not a registered solver, skipped", flush=True)
            continue
        kw = SOLVER_KW.get(name, {}).get(task, {})
        for target in nfes:
            steps = steps_for(name, prior, y, op, cfg["sigma_y"], target, kw)
            if steps is None:
                out.append((label, name, target, None, math.nan, math.nan, None, math.nan))
                print(f"{label} {name}: no step count within {target} NFE", flush=True)
                continue
            deltas = DELTAS4.get(name, {}).get(task)
            run_kw = {**kw, "deltas": deltas} if deltas is not None and steps == 4 else kw
            ps, ss, used, secs = run_solver(name, prior, y, op, cfg["sigma_y"], steps, run_kw, test)
            out.append((label, name, target, steps, ps, ss, used, secs))
            print(f"{label} {name} target {target} steps {steps}: PSNR {ps:.2f} SSIM {ss:.3f} NFE {used} "
                  f"{secs:.2f} s/img", flush=True)
    return out


def unconditional(cm, teacher, ref, floor, n: int = 256):
    rows = [("held-out images (floor: two independent held-out sets)", 0, *distances(floor, ref))]
    runs = [("consistency prior: consistency sampling, 1 step", cm, consistency_sampling, dict(steps=1)),
            ("consistency prior: consistency sampling, 2 steps", cm, consistency_sampling, dict(steps=2)),
            ("consistency prior: consistency sampling, 4 steps", cm, consistency_sampling, dict(steps=4)),
            ("teacher: EDM Heun, 2 steps", teacher, edm_heun, dict(steps=2)),
            ("teacher: DDIM, 4 steps", teacher, ddim, dict(steps=4)),
            ("teacher: EDM Heun, 5 steps", teacher, edm_heun, dict(steps=5)),
            ("teacher: DDIM, 10 steps", teacher, ddim, dict(steps=10))]
    for name, prior, fn, kw in runs:
        c = CountingPrior(prior)
        x = fn(c, (n, *prior.shape), generator=torch.Generator().manual_seed(7), **kw).float()
        rows.append((name, c.calls, *distances(x, ref)))
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--cm", default=None, help="consistency prior file (default: the shipped <family>_cm)")
    p.add_argument("--solvers", nargs="+", default=list(CM_SOLVERS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = TASKS[args.task]
    fam = cfg["family"]
    test, op, y, ref, floor = problem(args.task)
    cm = load(args.cm or f"{fam}_cm")
    teacher, flow = load(fam), load(f"{fam}_flow")
    cm_label = f"consistency ({Path(args.cm).name if args.cm else fam + '_cm'})"
    results = rows_for(cm_label, cm, args.solvers, args.nfe, args.task, cfg, test, op, y)
    results += rows_for(f"diffusion ({fam})", teacher, ("pigdm", "ddnm"), REFERENCE_NFES, args.task, cfg, test, op, y)
    results += rows_for(f"flow ({fam}_flow)", flow, ("ot_ode",), FLOW_NFES, args.task, cfg, test, op, y)
    unc = unconditional(cm, teacher, ref, floor)
    write(args, cfg, results, unc, len(test), cm_label)


def write(args, cfg, results, unc, n_images, cm_label):
    out = Path(args.out or Path(__file__).parent / "results" / f"cm_nfe_{args.task}.md")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    cli = Path(sys.argv[0]).name == "cm_nfe.py"
    cmd = "python benchmarks/cm_nfe.py " + " ".join(sys.argv[1:] if cli else [f"--task {args.task}"])
    lines = [f"# Consistency vs diffusion vs flow priors at few NFE: {cfg['title']}", "",
             f"Command: `{cmd}` — commit {commit}, torch {torch.__version__}, "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s).", "",
             f"{n_images} held-out images, one posterior sample each; PSNR / SSIM as in the shipped-prior tables "
             "(scikit-image, data_range 1, clipped). NFE: forward network calls per batch, measured "
             "(gradient-guided solvers add as many backward passes). \"—\": the solver's smallest run needs "
             "more calls than the budget.", "",
             "| prior | solver | NFE budget | steps | NFE used | PSNR (dB) | SSIM | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for label, name, target, steps, ps, ss, used, secs in results:
        if steps is None:
            lines.append(f"| {label} | {name} | {target} | — | — | — | — | — |")
        else:
            lines.append(f"| {label} | {name} | {target} | {steps} | {used} | {ps:.2f} | {ss:.3f} | {secs:.2f} |")
    ok = [r for r in results if r[3] is not None and math.isfinite(r[4])]
    cms = [r for r in ok if r[0] == cm_label and r[6] <= 4]
    ref = {n: max((r for r in ok if r[0].startswith("diffusion") and r[1] == "pigdm" and r[6] <= n),
                  key=lambda r: r[4], default=None) for n in REFERENCE_NFES}
    if cms:
        best = max(cms, key=lambda r: r[4])
        lines += ["", f"Best consistency-prior result at ≤ 4 NFE: {best[1]}, {best[4]:.2f} dB ({best[6]} NFE)"
                  + "".join(f"; ΠGDM on the diffusion prior at {n} NFE: {r[4]:.2f} dB ({best[4] - r[4]:+.2f} dB)"
                            for n, r in ref.items() if r is not None) + "."]
    lines += unconditional_table("Unconditional samples", unc)
    out.write_text("\n".join(lines) + "\n")
    plot(out.with_suffix(".png"), results, cfg, markers={"consistency": "o-", "diffusion": "s--", "flow": "^:"})
    print("wrote", out)


if __name__ == "__main__":
    sys.exit(main())
