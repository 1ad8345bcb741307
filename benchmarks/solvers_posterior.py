"""Exact-posterior distances of every solver (invdiff.exact_posterior's three problems).

    python benchmarks/solvers_posterior.py [--n 4000] [--seed 0]

Writes benchmarks/results/solvers_posterior.md: per solver setting and problem, the posterior-mean
error (in posterior standard deviations), the mean per-coordinate variance ratio, the sliced
Wasserstein-2 distance to exact posterior samples, that distance for exact prior samples (a solver
that ignores y) and between two exact sets (the Monte-Carlo floor), and the NFE.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from invdiff import exact_posterior as H
from invdiff.priors import CountingPrior
from invdiff.priors.analytic import exact_consistency_prior
from invdiff.solvers import SolverDivergedError

# (label, solver config, experiment or None, extra kwargs)
SETTINGS = [
    ("ddrm (paper: 20 steps, η 0.85)", "ddrm", None, {}),
    ("ddrm, 100 steps", "ddrm", None, {"steps": 100}),
    ("ddnm+ (paper: 100 steps, η 0.85)", "ddnm", None, {}),
    ("ddnm+ time travel l=5, r=3, 50 levels", "ddnm", None, {"steps": 50, "travel_length": 5, "travel_repeat": 3}),
    ("pigdm (paper: 100 steps, η 1, v = 1)", "pigdm", None, {}),
    ("pigdm posterior step, v matched, η 0, 200 steps", "pigdm", None, {"guidance": "posterior", "eta": 0.0, "steps": 200,
                                                                         "prior_variance": "matched"}),
    ("diffpir (paper deblur: λ 7, ζ 0.3, 100 steps)", "diffpir", None, {}),
    ("diffpir inpainting settings (λ 1, ζ 1, 20 steps)", "diffpir", "diffpir_inpainting", {}),
    ("score_sde (score-MRI: 2000 levels, λ 1)", "score_sde", None, {}),
    ("score_sde toy (300 levels, noisy projection, λ 0.2)", "score_sde", "toy_score_sde", {}),
    ("dps (ζ 1, 1000 steps)", "dps", None, {}),
    ("dps (ζ 0.3, 1000 steps)", "dps", None, {"zeta": 0.3}),
    ("mcg (paper: α 1, projection, 1000 steps)", "mcg", None, {}),
    ("mcg toy (α 0.5, no projection, 200 steps)", "mcg", "toy_mcg", {}),
    ("reddiff (paper: λ 0.25, lr 0.1, 1000 steps)", "reddiff", None, {}),
    ("reddiff toy (lr 0.5, 200 steps)", "reddiff", "toy_reddiff", {}),
    ("tmpd full (≤ 20 CG, 200 steps, η 1)", "tmpd", None, {"steps": 200}),
    ("tmpd full (≤ 20 CG, 200 steps, η 0)", "tmpd", None, {"steps": 200, "eta": 0.0}),
    ("tmpd diagonal (200 steps, η 1)", "tmpd", None, {"steps": 200, "covariance": "diagonal"}),
    ("daps (paper: 200 × 5 ODE, 100 Langevin, lr 1e-4→1e-6, τ 0.01)", "daps", None, {}),
    ("daps toy (25 × 5 ODE, 100 Langevin, lr 1e-3, τ √2σ_y)", "daps", "toy_daps", {}),
    ("daps Tweedie x̂₀, exact r_t, 2 × 1500 Langevin", "daps", None,
     {"steps": 2, "ode_steps": 1, "ode_sigma_min": 0.0, "langevin_steps": 1500, "lr": 1e-3, "lr_min_ratio": 1.0,
      "tau": None, "r_data_std": "matched"}),
    ("pnpdm (paper: 100 it., ρ 10→0.3, 100-level SDE)", "pnpdm", None, {}),
    ("pnpdm ρ_min 0.05 (100 it.)", "pnpdm", None, {"rho_min": 0.05}),
    ("mcgdiff (paper: 64 particles, 100 steps)", "mcgdiff", None, {}),
    ("mcgdiff 8 particles", "mcgdiff", "toy_mcgdiff", {}),
    ("mcgdiff 1 particle", "mcgdiff", None, {"particles": 1}),
    # flow solvers (flow time on the linear path; the mixture's exact velocity through its denoiser)
    ("ot_ode (paper: 100-step grid from t₀ 0.2, γ 1)", "ot_ode", None, {}),
    ("pnp_flow (paper: 100 steps, η 1, α 1, 5 draws)", "pnp_flow", None, {}),
    ("pnp_flow toy (1 draw, α 0.01)", "pnp_flow", "toy_pnp_flow", {}),
    ("ictm (paper: 100 steps, 1 Adam step, λ 1000, lr 0.01)", "ictm", None, {}),
    ("ictm toy (lr 0.05)", "ictm", "toy_ictm", {}),
    ("flowdps (paper: 28 steps, shift 4, ζ 0.5, 3 DC steps)", "flowdps", None, {}),
    ("flowdps toy (ζ 1, 10 DC steps)", "flowdps", "toy_flowdps", {}),
    ("dflow (paper: 100 L-BFGS it., 5 midpoint steps, α 0.1, λ 0.01)", "dflow", None, {}),
    # consistency solvers: on the analytic prior (Tweedie's mean as the denoiser) and on the exact
    # consistency model f* of the Gaussian problems ("prior": "exact_cm"; the mixture has no closed form)
    ("cm4ir (paper LSUN SR×4: 4 NFE, i_N 250, γ 0.2, η 0.1)", "cm4ir", None, {}),
    ("cm4ir toy (η 1, ζ 3)", "cm4ir", "toy_cm4ir", {}),
    ("cm4ir toy on the exact consistency model", "cm4ir", "toy_cm4ir", {"prior": "exact_cm"}),
    ("pnp_cm (paper: 4 NFE, i_N 150, γ 0.1, δ 0.1, μ₀ 0.1)", "pnp_cm", None, {}),
    ("pnp_cm toy (μ₀ 0.5)", "pnp_cm", "toy_pnp_cm", {}),
    ("pnp_cm on the exact consistency model", "pnp_cm", None, {"prior": "exact_cm"}),
    ("pnp_cm, 2 NFE, on the exact consistency model", "pnp_cm", None, {"prior": "exact_cm", "steps": 2}),
    ("daps on the exact consistency model (8 × 1 call, 100 Langevin)", "daps", None,
     {"prior": "exact_cm", "steps": 8, "ode_steps": 1, "ode_sigma_min": 0.0}),
    ("ddnm+ on the exact consistency model (8 steps)", "ddnm", None, {"prior": "exact_cm", "steps": 8}),
    # frontier solvers (issue 29)
    ("dds (paper: 50 DDIM steps, η 0.85, γ 1, 5 CG)", "dds", None, {}),
    ("fps_smc (paper: 1000 steps, 5 particles, c 0.95)", "fps_smc", None, {}),
    ("fps_smc toy (100 steps, 5 particles)", "fps_smc", "toy_fps_smc", {}),
    ("fps_smc, 64 particles (MCGdiff's count), 100 steps", "fps_smc", "toy_fps_smc", {"particles": 64}),
    ("fps_smc, 64 particles, 100 steps, c_rate ddpm", "fps_smc", "toy_fps_smc", {"particles": 64, "c_rate": "ddpm"}),
    ("lgd (paper: 1000 steps, ζ 1, n 10)", "lgd", None, {}),
    ("lgd toy (200 steps)", "lgd", "toy_lgd", {}),
    ("sitcom (paper: N 20, K 20, γ 0.01)", "sitcom", None, {}),
    ("sitcom toy (K 50, γ 0.02)", "sitcom", "toy_sitcom", {}),
    ("enkg (paper schedule: 80 steps, w 2), ensemble 64", "enkg", None, {"ensemble": 64}),
    ("enkg (80 steps, w 0.1), ensemble 64", "enkg", None, {"ensemble": 64, "guidance_scale": 0.1}),
]


class CountingOperator:
    """Counts the forward applications of an operator (the Langevin steps of DAPS and PnP-DM call
    A and no network); everything else is delegated."""

    def __init__(self, op):
        self._op, self.calls = op, 0

    def A(self, x, *a, **k):
        self.calls += 1
        return self._op.A(x, *a, **k)

    def __getattr__(self, name):
        return getattr(self._op, name)


def nfe_extra(name):
    return {"pigdm": " (+ as many VJPs)", "dps": " (+ as many VJPs)", "mcg": " (+ as many VJPs)",
            "tmpd": " (+ ≤ k+1 VJPs each)", "ot_ode": " (+ as many VJPs)", "ictm": " (+ 2 VJPs per Adam step)",
            "dflow": " (+ a backward pass per differentiated call)",
            "lgd": " (+ as many VJPs, each through n draws)", "sitcom": " (+ as many VJPs)",
            "fps_smc": " (on batch × particles states)", "enkg": " (on batch × ensemble states)"}.get(name, "")


def write_table(args, rows, cases, only) -> None:
    """The markdown table: this run's rows merged (with ``--only``) into the existing file's."""
    header = [
        "# Solvers against exact posteriors", "",
        f"Command: `python benchmarks/solvers_posterior.py --n {args.n} --seed {args.seed}` "
        f"(torch {torch.__version__}, float64, CPU); rows of one solver are rerun with `--only NAME`.", "",
        "Problems (`invdiff/exact_posterior.py`): **inpaint** — correlated Gaussian on 1×5×5, 50 % random",
        "pixels, σ_y 0.05, prior on [-1, 1] for data on [0, 1]; **blur** — isotropic N(μ, 0.5 I) on 1×6×6,",
        "circular 3×3 blur, σ_y 0.05; **dense_gmm** — 4-component Gaussian mixture in 6-D through a random",
        "3×6 matrix, σ_y 0.2. Columns: mean error in posterior std (RMS over coordinates), mean variance",
        "ratio (1 = exact), SW₂ to exact posterior samples, SW₂ of exact *prior* samples (a solver that",
        "ignores y), SW₂ between two exact sets (Monte-Carlo floor), and SW₂ ÷ prior's (the tests require",
        "≤ 0.5 for every solver's default or toy setting), NFE counted (network calls per batch; MCGdiff's",
        "each on batch × particles states), A calls (forward applications of the operator: DAPS's and a",
        "Langevin PnP-DM's inner steps call A and never the network), and",
        f"wall seconds for the {args.n} samples (TMPD: the cost of exactness — the full covariance takes up",
        "to 20 Jacobian products per step, the diagonal variant 2).", "",
        "| solver setting | problem | mean err | var ratio | SW₂ | SW₂ prior | floor | ratio | NFE | A calls | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    new_rows = {(label, cname): (f"| {label} | {cname} | {r['mean_err']:.3f} | {r['var_ratio']:.2f} | {r['sw']:.3f} | "
                                 f"{r['sw_prior']:.3f} | {r['sw_floor']:.3f} | {r['sw'] / r['sw_prior']:.2f} | {nfe} | "
                                 f"{a_calls} | {secs:.1f} |") if r is not None else
                f"| {label} | {cname} | diverged (NaN) | | | | | | {nfe} | {a_calls} | {secs:.1f} |"
                for label, cname, r, nfe, a_calls, secs in rows}
    old = {}
    if only and Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) >= 10 and cells[0] != "solver setting":
                if len(cells) == 10:  # a table from before the A-calls column
                    cells.insert(9, "–")
                old[(cells[0], cells[1])] = "| " + " | ".join(cells) + " |"
    merged = []
    for label, name, _, _ in SETTINGS:
        for cname in cases:
            row = new_rows.get((label, cname)) or old.get((label, cname))
            if row:
                merged.append(row)
    lines = header + merged
    Path(args.out).write_text("\n".join(lines) + "\n")


def build(name, experiment):
    overrides = [f"solver={name}"] + ([f"experiment={experiment}"] if experiment else [])
    with initialize_config_module("invdiff.configs", version_base=None):
        return instantiate(compose("config", overrides=overrides).solver)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "solvers_posterior.md"))
    p.add_argument("--only", default="", help="comma-separated solver names: rerun their rows and merge them "
                                               "into the existing table (others kept as they are)")
    p.add_argument("--match", default="", help="rerun only the settings whose label contains this text (merged "
                                                "like --only)")
    args = p.parse_args(argv)
    only = {n for n in args.only.split(",") if n} or ({"*"} if args.match else set())
    cases = {name: make() for name, make in H.CASES.items()}
    rows = []
    for label, name, experiment, extra in SETTINGS:
        if (only - {"*"} and name not in only) or (args.match and args.match not in label):
            continue
        solver = build(name, experiment)
        for cname, case in cases.items():
            kw = dict(extra)
            matched = [k for k in ("prior_variance", "r_data_std") if kw.get(k) == "matched"]
            if matched and case.isotropic_var is None:
                continue
            if "prior_variance" in matched:
                kw["prior_variance"] = case.isotropic_var
            if "r_data_std" in matched:
                kw["r_data_std"] = case.isotropic_var ** 0.5
            base = case.prior
            if kw.pop("prior", None) == "exact_cm":
                if case.prior.K != 1:
                    continue
                base = exact_consistency_prior(case.prior)
            t0 = time.perf_counter()
            prior = CountingPrior(base)
            y = case.y.expand(args.n, *case.y.shape[1:]).clone()
            op = CountingOperator(case.op)
            try:
                out = solver(y, op, prior, sigma_y=case.sigma_y, generator=torch.Generator().manual_seed(args.seed), **kw)
            except SolverDivergedError as err:  # a paper default can be unstable on a toy operator: say so
                rows.append((label, cname, None, str(prior.calls), op.calls, time.perf_counter() - t0))
                print(f"{label:55s} {cname:10s} diverged", flush=True)
                write_table(args, rows, cases, only)
                continue
            r = H.evaluate(case, out)
            secs = time.perf_counter() - t0
            rows.append((label, cname, r, f"{prior.calls}{nfe_extra(name)}", op.calls, secs))
            write_table(args, rows, cases, only)  # after every row: a killed run keeps what it measured
            print(f"{label:55s} {cname:10s} sw {r['sw']:.3f} / prior {r['sw_prior']:.3f}  {secs:.1f}s", flush=True)
    print("wrote", args.out)


if __name__ == "__main__":
    sys.exit(main())
