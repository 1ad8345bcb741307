"""Per-step time and seconds per image of the solvers on guided-diffusion's FFHQ-256 network, in
every run-time setting (fp32, bf16 + channels-last, compiled, CUDA graphs), against deepinv.

    python benchmarks/gpu_speed.py                         # on the GPU: every solver, batch 1 and 8
    python benchmarks/gpu_speed.py --device cpu --batches 1 --steps 2 --configs fp32,compiled

The network is guided-diffusion's ADM UNet in the configuration of DPS's ``ffhq_10m.pt`` (128
channels, one residual block per level, attention at 16×16, learned σ: 6 output channels; deepinv's
``DiffUNet``, key for key), with *random* weights — only time is measured here — saved as a
guided-diffusion state dict and loaded through ``invdiff.priors.load`` like a real checkpoint.
Problem: 70 % random-pixel inpainting of one 3×256×256 image, σ_y = 0.05 on [0, 1].

For each solver and setting: a warm-up solve (compilation, CUDA-graph capture, cuDNN autotuning),
then ``--steps`` steps timed (median of ``--repeats`` solves, CUDA synchronised). Columns:
* per step: wall ÷ steps; NFE/step: network calls per step (DAPS: its ODE steps per level);
* s/image @ paper NFE: per-NFE time × the paper's NFE ÷ batch (DPS 1000, ΠGDM 100, DDRM 20, DDNM
  100, DiffPIR 100, DAPS-1K 1000, RED-diff 1000) — extrapolated from the timed steps;
* overhead: wall ÷ (NFE × one network call in the same setting) — forward + backward for the
  solvers that take a vector–Jacobian product (DPS, ΠGDM): the solver's own cost beyond the network.

Writes this device type's section of ``benchmarks/results/gpu_speed.md`` (the other's is kept) with
the command, commit, machine and torch version.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import operators as O
from invdiff import priors, solvers
from invdiff.priors import CountingPrior
from invdiff.solvers.network import Network, runtime

PAPER_NFE = {"dps": 1000, "pigdm": 100, "ddrm": 20, "ddnm": 100, "diffpir": 100, "daps": 1000, "reddiff": 1000}
VJP = {"dps", "pigdm"}  # one forward + backward per step
CONFIGS = {
    "fp32": {},
    "bf16": {"autocast": True, "channels_last": True},
    "compiled": {"compile": "default"},
    "cuda-graphs": {"compile": "reduce-overhead"},
    "bf16+graphs": {"compile": "reduce-overhead", "autocast": True, "channels_last": True},
}
DEEPINV = ("dps", "diffpir", "ddrm")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ffhq_prior(dev: torch.device):
    """The DPS FFHQ-256 architecture with seeded random weights, through invdiff's own loader."""
    from invdiff.priors.formats import build_diffunet

    torch.manual_seed(0)  # the network's initialisation only (a benchmark script, not library code)
    net = build_diffunet(in_channels=3, out_channels=3, large_model=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ffhq_random.pt"
        torch.save(net.state_dict(), path)
        prior = priors.load(path, device=dev)
    return prior.eval()


def solver_kwargs(name: str, steps: int) -> dict:
    """The paper's settings at ``steps`` steps (DAPS: ``steps`` annealing levels of 5 ODE steps,
    100 Langevin steps each; its NFE per level is 5)."""
    if name == "daps":
        return dict(steps=max(1, steps // 5), ode_steps=5)
    return dict(steps=steps)


def deepinv_runner(name: str, prior, y, mask, sigma_y: float, steps: int, dev):
    """deepinv 0.5's sampler on the same network (its denoiser interface, float32) with about the
    same number of steps (at least 2: deepinv's DPS needs two), and its denoiser (which counts its
    calls: deepinv's samplers may take one call fewer than their ``num_steps``)."""
    import deepinv as dinv
    import numpy as np

    from invdiff.solvers import vp_sigmas

    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prior = prior

        def forward(self, x, sigma, *args, **kwargs):
            self.calls += 1
            s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
            s = (s if s.numel() == x.shape[0] else s[:1].expand(x.shape[0])) * prior.scale
            return prior.to_physical(prior.denoiser(prior.to_model(x), s)).to(x.dtype)

    den = Denoiser()
    den.calls = 0
    steps = max(2, steps)
    full_mask = mask.expand(1, *y.shape[1:])[0]  # [C, H, W]: deepinv's DDRM indexes the mask like the image
    phys = dinv.physics.Inpainting(img_size=tuple(y.shape[1:]), mask=full_mask.to(dev, torch.float32),
                                   noise_model=dinv.physics.GaussianNoise(sigma_y)).to(dev)
    y32 = y.to(torch.float32)
    if name == "dps":
        algo = dinv.sampling.DPS(den, num_steps=steps, weight=1.0, device=dev)
    elif name == "diffpir":
        algo = dinv.sampling.DiffPIR(den, dinv.optim.data_fidelity.L2(), sigma=sigma_y, max_iter=steps, zeta=0.3,
                                     lambda_=7.0, device=dev)
    else:
        grid = [s / 2 for s in vp_sigmas(prior, steps)[:-1]]
        algo = dinv.sampling.DDRM(den, sigmas=np.array(grid), eta=0.85, etab=1.0)
    return (lambda: algo(y32, phys, seed=1)), den


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=20, help="timed steps per solve (DAPS: 5 per level)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--solvers", default="dps,pigdm,ddrm,ddnm,diffpir,daps,reddiff")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--no-deepinv", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    batches = [int(b) for b in args.batches.split(",")]
    names, configs = args.solvers.split(","), args.configs.split(",")
    prior = ffhq_prior(dev)
    shape, sigma_y = prior.shape, 0.05
    mask = O.masks.RandomPixelMask(0.7)(shape, n=1, generator=torch.Generator().manual_seed(0))
    op = O.Inpainting(mask, shape).to(dev)
    x = torch.rand(max(batches), *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_all = op.measure(x.to(dev), O.GaussianNoise(sigma_y).to(dev), generator=torch.Generator(device=dev).manual_seed(2))

    rows, units, compile_s = [], {}, {}
    for B in batches:
        y = y_all[:B]
        for cfg in configs:
            settings = CONFIGS[cfg]
            net = Network(prior, **settings)
            xb = torch.randn(B, *shape, dtype=torch.float64, device=dev)

            def fwd():
                net(xb, 1.0)

            def fwd_bwd():
                xi = xb.clone().requires_grad_(True)
                torch.autograd.grad(net.with_grad(xi, 1.0).sum(), xi)

            t0 = time.perf_counter()
            fwd(), sync(dev)
            compile_s[(B, cfg)] = time.perf_counter() - t0
            fwd_bwd(), fwd(), fwd_bwd()
            units[(B, cfg)] = (timed(fwd, dev, 5), timed(fwd_bwd, dev, 5))
            print(f"batch {B} {cfg}: forward {units[(B, cfg)][0] * 1e3:.1f} ms, forward+backward "
                  f"{units[(B, cfg)][1] * 1e3:.1f} ms (first call {compile_s[(B, cfg)]:.1f} s)", flush=True)
            for name in names:
                kw = solver_kwargs(name, args.steps)
                counting = CountingPrior(prior)
                gens = lambda: [torch.Generator(device=dev).manual_seed(i) for i in range(B)]  # noqa: E731
                with runtime(**settings):
                    solvers.SOLVERS[name](y, op, counting, sigma_y=sigma_y, generator=gens(), **kw)  # warm-up + NFE
                    nfe = counting.calls
                    wall = timed(lambda: solvers.SOLVERS[name](y, op, prior, sigma_y=sigma_y, generator=gens(), **kw),
                                 dev, args.repeats)
                unit = units[(B, cfg)][1 if name in VJP else 0]
                per_nfe = wall / nfe
                rows.append((name, "invdiff", cfg, B, wall / args.steps, nfe / args.steps,
                             per_nfe * PAPER_NFE[name] / B, wall / (nfe * unit)))
                print(f"  {name:8s} {wall / args.steps * 1e3:8.1f} ms/step  {rows[-1][6]:7.2f} s/image @ "
                      f"{PAPER_NFE[name]} NFE  overhead {rows[-1][7]:.3f}", flush=True)
        if not args.no_deepinv:
            for name in (n for n in DEEPINV if n in names):
                run, den = deepinv_runner(name, prior, y, mask, sigma_y, args.steps, dev)
                with torch.no_grad() if name != "dps" else contextlib.nullcontext():
                    run()
                    n = den.calls  # network calls (= steps) of one solve
                    wall = timed(run, dev, args.repeats)
                unit = units.get((B, "fp32"), (float("nan"), float("nan")))[1 if name in VJP else 0]
                rows.append((name, "deepinv 0.5", "fp32", B, wall / n, 1.0, wall / n * PAPER_NFE[name] / B,
                             wall / (n * unit)))
                print(f"  deepinv {name:8s} {wall / n * 1e3:8.1f} ms/step", flush=True)

    write(args, dev, rows, units, compile_s)


def machine(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)"


def write(args, dev, rows, units, compile_s) -> None:
    """Write (or replace) this device type's section of the results file; the other device's
    section is kept, so the CPU rows and the GPU rows live side by side."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    out = Path(args.out or Path(__file__).parent / "results" / "gpu_speed.md")
    cmd = "python benchmarks/gpu_speed.py " + " ".join(sys.argv[1:])
    lines = [
        f"<!-- device:{dev.type} -->",
        f"## {'GPU' if dev.type == 'cuda' else 'CPU'}: {machine(dev)}", "",
        f"Command: `{cmd.strip()}` — commit {commit}, torch {torch.__version__}.", "",
        "### One network call", "",
        "| batch | setting | forward (ms) | forward + backward (ms) | first call (s) |",
        "|---|---|---|---|---|",
    ]
    for (B, cfg), (f, fb) in units.items():
        lines.append(f"| {B} | {cfg} | {f * 1e3:.1f} | {fb * 1e3:.1f} | {compile_s[(B, cfg)]:.1f} |")
    lines += ["", "### Solvers", "",
              f"Timed: {args.steps} steps per solve (DAPS: {max(1, args.steps // 5)} levels × 5 ODE steps), "
              f"median of {args.repeats}. s/image at the paper's NFE is extrapolated from the per-NFE time.", "",
              "| solver | implementation | setting | batch | ms per step | NFE per step | s/image @ paper NFE | overhead |",
              "|---|---|---|---|---|---|---|---|"]
    for name, impl, cfg, B, per_step, nfe_step, per_image, over in rows:
        lines.append(f"| {name} ({PAPER_NFE[name]} NFE) | {impl} | {cfg} | {B} | {per_step * 1e3:.1f} | "
                     f"{nfe_step:g} | {per_image:.2f} | {over:.3f} |")
    lines.append(f"<!-- /device:{dev.type} -->")
    section = "\n".join(lines)
    old = out.read_text() if out.exists() else HEADER
    start, end = old.find(f"<!-- device:{dev.type} -->"), old.find(f"<!-- /device:{dev.type} -->")
    if start >= 0 and end > start:
        text = old[:start] + section + old[end + len(f"<!-- /device:{dev.type} -->"):]
    else:
        text = old.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)
    print(f"wrote {out}")


HEADER = """# Solver speed on guided-diffusion's FFHQ-256 network

Written by `benchmarks/gpu_speed.py` (one section per device type; a run replaces its own section).
Network: guided-diffusion's ADM UNet in DPS's `ffhq_10m.pt` configuration (deepinv's `DiffUNet`,
key for key, which calls PyTorch's fused `scaled_dot_product_attention`), with **random weights**:
only time is measured. Loaded through `invdiff.priors.load` from a guided-diffusion state dict.
Problem: 70 % random inpainting of 3×256×256 images, σ_y = 0.05 on [0, 1].

Settings: fp32; bf16 = autocast bfloat16 + channels-last; compiled = `torch.compile` (default mode)
of the prior's denoiser, traced once per input shape (σ is a tensor: no recompilation per noise
level); cuda-graphs = `compile="reduce-overhead"` (CUDA graphs of the network call at each batch
shape). Each solve is timed after a warm-up solve, so compilation is excluded (first-call times in
the network table). overhead = wall ÷ (NFE × one network call in the same setting; forward +
backward for DPS and ΠGDM, which take a vector–Jacobian product per step).

Targets of issue 23 on one H200: DPS-1000 ≤ 8 s per image at batch 1 and ≤ 3 s per image at
batch 8 (measured before: 31 s and 9.4 s), every solver's overhead ≤ 1.05, and the compiled path
≥ 2× the plain one at batch 1.
"""


if __name__ == "__main__":
    main()
