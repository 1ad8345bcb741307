"""Bridges (I²SB, InDI, CDDB) against the posterior samplers, by NFE (issue 28).

    python benchmarks/bridges.py --task mri4x        # phantom64_bridge_mri4x on its trained task
    python benchmarks/bridges.py --task sr2          # patches64_bridge_sr2 on its trained task
    python benchmarks/bridges.py --task mri8x        # shifted: the 4× bridge on 8× MRI
    python benchmarks/bridges.py --task sr2_noisy    # shifted: the σ_y 0.025 bridge at σ_y 0.05

Problems (held-out images, never trained on): ``mri4x`` / ``mri8x`` are benchmarks/phantom64_mri.py's
(8 held-out phantoms, fastMRI random mask of mask seed 0, σ_y = 0.01); ``sr2`` is
benchmarks/patches64_eval.py's (camera and moon views, bicubic ×2, σ_y = 0.025), ``sr2_noisy`` the
same at σ_y = 0.05. Rows: A⁺y (the bridge's start x₁); TV tuned on validation images; ΠGDM and DDNM at
100 steps on the clean diffusion prior (``phantom64`` / ``patches64``: the best samplers at 100 NFE in
benchmarks/results/bench_*); the bridge's I²SB, CDDB (α = 1) and InDI at 1, 5, 10 and 50 NFE. On the
shifted tasks the bridge runs with ``allow_shift=True`` (it refuses otherwise).

Columns: PSNR / SSIM of one draw per image (seed 100 + i; scikit-image, data_range 1, clipped to [0, 1]);
PSNR of the mean of ``--draws`` draws; coverage_90: the fraction of pixels inside the 90 % Student-t
predictive interval of the draws (invdiff.metrics.coverage, unclamped draws; 0.90 is calibrated, "–" for
deterministic methods; a bridge at 1 NFE is deterministic too — its one step lands on E[x₀ | x₁] — so its
coverage is 0); NFE; seconds per image per draw on this CPU.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from _shipped_eval import held_out_problem, metrics
from invdiff import solvers
from invdiff.metrics import coverage
from invdiff.priors import CountingPrior, load
from invdiff.solvers.baselines import tv

TASKS = {
    "mri4x": dict(prior="phantom64", bridge="phantom64_bridge_mri4x", sigma_y=0.01, shift=False,
                  title="phantom64 MRI 4× (the bridge's task)"),
    "mri8x": dict(prior="phantom64", bridge="phantom64_bridge_mri4x", sigma_y=0.01, shift=True,
                  title="phantom64 MRI 8× with the 4× bridge (shifted)"),
    "sr2": dict(prior="patches64", bridge="patches64_bridge_sr2", sigma_y=0.025, shift=False,
                title="patches64 ×2 super-resolution, σ_y = 0.025 (the bridge's task)"),
    "sr2_noisy": dict(prior="patches64", bridge="patches64_bridge_sr2", sigma_y=0.05, shift=True,
                      title="patches64 ×2 super-resolution at σ_y = 0.05 with the σ_y = 0.025 bridge (shifted)"),
}


def problem(task: str):
    """(test images, operator, y, validation images, validation y, TV weights)."""
    lams = [3e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2] if task.startswith("mri") else \
        [1e-3, 3e-3, 1e-2, 2e-2, 4e-2, 8e-2]
    return (*held_out_problem("sr2" if task.startswith("sr2") else task, TASKS[task]["sigma_y"]), lams)


def run(label, fn, test, draws: int, deterministic: bool = False):
    """``fn(seeds) -> (images, nfe)`` for one draw of every image; ``draws`` of them (one for a
    deterministic method). Returns the table row."""
    outs, secs, nfe = [], 0.0, 0
    for k in range(1 if deterministic else draws):
        t0 = time.perf_counter()
        x, nfe = fn([100 + i + 1000 * k for i in range(len(test))])
        secs += (time.perf_counter() - t0) / len(test)
        outs.append(x.detach().float())
    ps, ss = metrics(outs[0].clamp(0, 1), test)
    pm, _ = metrics(torch.stack(outs).mean(0).clamp(0, 1), test)
    cov = "–"
    if not deterministic:
        d = torch.stack(outs)                # [draws, B, C, H, W], unclamped (clamping ties draws at 0 and 1)
        cov = sum(coverage(d[:, i], test[i].float())[0.9] for i in range(len(test))) / len(test)
        cov = f"{cov:.3f}"
    row = (label, nfe, ps, ss, pm, cov, secs / (1 if deterministic else draws))
    print("{:44s} NFE {:3d}  PSNR {:6.2f}  SSIM {:.3f}  mean {:6.2f}  cov90 {}  {:.2f} s".format(*row), flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--bridge", default=None, help="bridge file (default: the shipped one)")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--nfe", default="1,5,10,50")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = TASKS[args.task]
    cmd = "python benchmarks/bridges.py " + " ".join(sys.argv[1:] if argv is None else argv)
    test, op, y, val, vy, lams = problem(args.task)
    sy = cfg["sigma_y"]
    rows = [run("A⁺y (x₁, the bridge's start)", lambda seeds: (op.A_dagger(y), 0), test, 1, True)]
    scores = {lam: metrics(tv(vy, op, steps=300, lam=lam), val)[0] for lam in lams}
    best = max(scores, key=scores.get)
    rows.append(run(f"TV (λ = {best:g}, tuned on validation)", lambda seeds: (tv(y, op, steps=300, lam=best), 0), test, 1,
                    True))
    prior = load(cfg["prior"])
    for name in ("pigdm", "ddnm"):
        def sampler(seeds, name=name):
            c = CountingPrior(prior)
            x = solvers.SOLVERS[name](y, op, c, sigma_y=sy, steps=100, generator=[torch.Generator().manual_seed(s) for s in seeds])
            return x, c.calls
        rows.append(run(f"{cfg['prior']} + {'ΠGDM' if name == 'pigdm' else 'DDNM'} (100 steps)", sampler, test, args.draws))
    bridge = load(args.bridge or cfg["bridge"])
    for name, det in (("i2sb", False), ("cddb", False), ("indi", True)):
        for n in [int(v) for v in args.nfe.split(",")]:
            def fn(seeds, name=name, n=n):
                bridge.calls = 0
                x = solvers.BRIDGE_SOLVERS[name](y, op, bridge, sigma_y=sy, steps=n, allow_shift=cfg["shift"],
                                                 generator=[torch.Generator().manual_seed(s) for s in seeds])
                return x, bridge.calls
            label = {"i2sb": "I²SB", "cddb": "CDDB (α = 1)", "indi": "InDI"}[name]
            rows.append(run(f"bridge + {label}", fn, test, args.draws, det))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    best_sampler = max(rows[2:4], key=lambda r: r[2])
    at10 = [r for r in rows[4:] if r[1] == 10]
    best10 = max(at10, key=lambda r: r[2]) if at10 else None
    lines = [f"# Bridges by NFE — {cfg['title']}", "",
             f"Command: `{cmd}` — commit {commit}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} thread(s).", "",
             f"{op.describe()}; σ_y = {sy}; {len(test)} held-out images; {args.draws} draws per image for the stochastic "
             f"methods. Bridge `{args.bridge or cfg['bridge']}` (trained for {bridge.spec}"
             + (", run with allow_shift=True" if cfg["shift"] else "") + f"); prior `{cfg['prior']}`. "
             f"TV validation PSNR: {', '.join(f'{k:g}: {v:.2f}' for k, v in scores.items())}.", ""]
    if best10 is not None:
        lines += [f"Best bridge row at 10 NFE: {best10[0]} {best10[2]:.2f} dB (one draw) against the best posterior sampler at "
                  f"100 NFE, {best_sampler[0]} {best_sampler[2]:.2f} dB: {best10[2] - best_sampler[2]:+.2f} dB.", ""]
    lines += ["PSNR / SSIM: one draw per image; PSNR (mean): of the mean of the draws; coverage_90: pixels inside the "
              "90 % predictive interval of the draws (0.90 = calibrated). s: seconds per image per draw.", "",
              "| method | NFE | PSNR (dB) | SSIM | PSNR (mean) | coverage_90 | s / image |", "|---|---|---|---|---|---|---|"]
    for label, nfe, ps, ss, pm, cov, secs in rows:
        lines.append(f"| {label} | {nfe} | {ps:.2f} | {ss:.3f} | {pm:.2f} | {cov} | {secs:.2f} |")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"bridge_{args.task}.md"
    out.write_text("\n".join(lines) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
