"""Priors learned from corrupted data against their clean-trained siblings, TV and the
zero-filled / measurement baseline (issue 27).

    python benchmarks/corrupted_data.py --task mri4x|mri8x [--corrupted PATH] [--fast]   # phantom64 family
    python benchmarks/corrupted_data.py --task denoise|inpaint [--corrupted PATH]        # patches64 family
    python benchmarks/corrupted_data.py --task mri4x --em training/phantom64_em          # EM's PSNR per round

Problems (held-out images, never trained on, one posterior sample per image, seed 100 + i):
``mri4x`` / ``mri8x`` are benchmarks/phantom64_mri.py's (8 held-out phantoms, fastMRI random mask of
mask seed 0, σ_y = 0.01); ``inpaint`` is benchmarks/patches64_eval.py's (camera and moon views, 70 %
of pixels missing, σ_y = 0.025); ``denoise`` is the same 8 views with white noise σ_y = 0.1 — the
noise level of the noisy training crops. Priors: ``phantom64`` (clean phantoms) against
``phantom64_ambient`` (only 4×-undersampled σ_y = 0.01 k-space, a different mask per sample), and
``patches64`` (clean crops) against ``patches64_noisy`` (only crops with σ_n = 0.1 noise). Solvers:
ΠGDM and DDNM at 100 steps (the best of the package's solvers on these problems in
benchmarks/results/phantom64_mri_4x.md and patches64_*.md; on ``phantom64_ambient`` DPS, DiffPIR,
DAPS, RED-diff and PnP-DM were also tried at their defaults and scored lower), and for ``denoise``
one denoiser call D(y, σ_y) — the prior's own MMSE estimate, exactly what the noisy objective learns
at its floor, TV tuned on validation images as in
phantom64_mri.py / patches64_eval.py. PSNR/SSIM: scikit-image, data_range 1, clipped to [0, 1].

``--em DIR``: the priors of an ``invdiff-train settings.objective=em`` run, round by round, with
ΠGDM-100 on the task (round 0: the posterior mean under the closed-form Gaussian θ₀, exact).
Writes benchmarks/results/corrupted_<task>.md (or corrupted_em_<task>.md).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import torch

from _shipped_eval import CountingPrior, Rows, held_out_problem, metrics
from invdiff.priors import load
from invdiff.priors.shipped import shipped_prior_path
from invdiff.solvers.baselines import tv

TASKS = {
    "mri4x": dict(clean="phantom64", corrupted="phantom64_ambient", sigma_y=0.01, title="phantom64 MRI 4×"),
    "mri8x": dict(clean="phantom64", corrupted="phantom64_ambient", sigma_y=0.01, title="phantom64 MRI 8×"),
    "denoise": dict(clean="patches64", corrupted="patches64_noisy", sigma_y=0.1, title="patches64 denoising σ = 0.1"),
    "inpaint": dict(clean="patches64", corrupted="patches64_noisy", sigma_y=0.025,
                    title="patches64 random inpainting 70 %"),
}


def problem(task: str):
    """(test images, operator, y, validation images, validation y, TV weights to try)."""
    lams = [3e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2] if task.startswith("mri") else \
        [1e-3, 3e-3, 1e-2, 2e-2, 4e-2, 8e-2, 0.16]
    return (*held_out_problem(task, TASKS[task]["sigma_y"]), lams)


def _path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    return p if p.suffix == ".safetensors" else shipped_prior_path(name_or_path)


def provenance(cmd: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    return (f"Command: `{cmd}` — commit {commit}, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s).")


def write(out: Path, title: str, cmd: str, about: list[str], rows) -> None:
    lines = [f"# {title}", "", provenance(cmd), "", *about, "",
             "| method | PSNR (dB) | SSIM | NFE | s / image |", "|---|---|---|---|---|"]
    for label, ps, ss, nfe, secs in rows:
        lines.append(f"| {label} | {ps:.2f} | {ss:.3f} | {nfe} | {secs:.2f} |")
    out.write_text("\n".join(lines) + "\n")
    print("wrote", out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--corrupted", default=None, help="the corrupted-data prior (default: the shipped one)")
    p.add_argument("--clean", default=None, help="the clean-trained sibling (default: the shipped one)")
    p.add_argument("--em", default=None, help="an EM run's folder: PSNR per round instead")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = TASKS[args.task]
    cmd = "python benchmarks/corrupted_data.py " + " ".join(sys.argv[1:] if argv is None else argv)
    test, op, y, val, vy, lams = problem(args.task)
    sy = cfg["sigma_y"]
    results = Path(__file__).parent / "results"
    if args.em:
        return em_table(args, cfg, cmd, test, op, y, sy, results)
    table = Rows(test)
    table.record("zero-filled (A⁺y)" if args.task.startswith("mri") else "measurement (y; missing pixels 0)",
                 lambda: op.A_dagger(y) if args.task.startswith("mri") else y)
    scores = {lam: metrics(tv(vy, op, steps=300, lam=lam), val)[0] for lam in lams}
    best = max(scores, key=scores.get)
    print("TV validation PSNR:", {k: round(v, 2) for k, v in scores.items()}, "→ λ =", best, flush=True)
    table.record(f"TV (Chambolle–Pock 300 it., λ = {best:g} tuned on validation)",
                 lambda: tv(y, op, steps=300, lam=best))
    about = [f"{cfg['title']}: {op.describe()}; σ_y = {sy}. TV weight chosen among {lams} on validation images."]
    span = {}
    for role in ("clean", "corrupted"):
        path = _path(getattr(args, role) or cfg[role])
        first = len(table.rows)
        prior = load(path)
        about.append(f"{role} prior `{path.name}` (sha256 {prior.checkpoint['sha256'][:12]}…, σ range "
                     f"[{prior.sigma_min:.3g}, {prior.sigma_max:.3g}] in model units).")
        table.solvers([(f"{path.stem} + ΠGDM ({args.steps} steps)", "pigdm", dict(steps=args.steps)),
                       (f"{path.stem} + DDNM ({args.steps} steps)", "ddnm", dict(steps=args.steps))],
                      prior, y, op, sy)
        if args.task == "denoise":  # one denoiser call at σ_y: the MMSE estimate E[x | y] under the prior
            counting = CountingPrior(prior)
            table.record(f"{path.stem} denoiser D(y, σ_y) (E[x | y])", lambda prior=prior, counting=counting: prior.to_physical(
                counting.denoiser(prior.to_model(y.double()), sy * prior.scale).detach()).float(), counting)
        span[role] = table.rows[first:]
    rows = table.rows
    best_of = {role: max(span[role], key=lambda r: r[1] if r[1] == r[1] else -1e9) for role in span}
    tv_row = rows[1]
    c, k = best_of["corrupted"], best_of["clean"]
    about += ["", f"Best corrupted-data row {c[1]:.2f} dB: {c[1] - k[1]:+.2f} dB against the clean-trained prior's "
              f"best ({k[1]:.2f}), {c[1] - tv_row[1]:+.2f} dB against TV ({tv_row[1]:.2f}), "
              f"{c[1] - rows[0][1]:+.2f} dB against {rows[0][0]} ({rows[0][1]:.2f})."]
    out = Path(args.out) if args.out else results / f"corrupted_{args.task}.md"
    write(out, f"Priors from corrupted data — {cfg['title']}", cmd, about, rows)


def em_table(args, cfg, cmd, test, op, y, sy, results):
    run = Path(args.em)
    table = Rows(test)
    from invdiff.training.em import load_gaussian

    def artefact(k: int, name: str) -> Path:
        """An EM run's folder (``round_k/<name>``) or its committed copy (``round_k_<name>``)."""
        nested = run / f"round_{k}" / name
        return nested if nested.is_file() else run / f"round_{k}_{name}"

    g0 = artefact(0, "gaussian.safetensors")
    if g0.is_file():
        g = load_gaussian(g0)
        table.record("round 0: closed-form Gaussian θ₀, exact posterior mean", lambda: gaussian_posterior_mean(g, op, y, sy))
    k = 1
    while artefact(k, "prior.safetensors").is_file():
        prior = load(artefact(k, "prior.safetensors"))
        table.solvers([(f"round {k} + ΠGDM ({args.steps} steps)", "pigdm", dict(steps=args.steps))], prior, y, op, sy)
        k += 1
    import json

    state = json.loads((run / "em.json").read_text()) if (run / "em.json").is_file() else {}
    about = [f"{cfg['title']}: {op.describe()}; σ_y = {sy}. EM run `{run}`: {state.get('data', '')}; "
             f"settings {state.get('settings', {})}."]
    out = Path(args.out) if args.out else results / f"corrupted_em_{args.task}.md"
    write(out, f"EM from measurements, PSNR per round — {cfg['title']}", cmd, about, table.rows)


def gaussian_posterior_mean(g: dict, op, y, sy) -> torch.Tensor:
    """The exact posterior mean of a test measurement under θ₀ (diagonal in the domain's coordinates)."""
    from invdiff.training.corrupted import make_domain

    dom = make_domain(g["kind"], g["image_shape"])
    if g["kind"] == "mri":
        mask = op.mask.to(torch.float64)[None].expand(len(y), -1, -1)
    else:
        mask = op.mask.to(torch.float64).reshape(1, *op.mask.shape[-2:]).expand(len(y), -1, -1)
    c, S, tau2 = dom.observed(y.to(torch.float64), mask, torch.full((len(y),), sy, dtype=torch.float64))
    mu, var = g["mean"], g["var"]
    m = torch.where(S > 0, mu + var / (var + tau2) * (c - mu), mu.expand_as(c))
    return dom.to_image(m).float()


if __name__ == "__main__":
    main()
