"""Posterior convergence study: every solver's distance to the exact posterior against its budget of
network calls, on Gaussian-mixture problems with closed-form posteriors, and the calibration of its
credible intervals.

    python benchmarks/posterior_convergence.py run [--only mcgdiff,daps] [--n 500] [--problems 3]
    python benchmarks/posterior_convergence.py calibration [--only ...] [--truths 100] [--draws 100]
    python benchmarks/posterior_convergence.py report

``run`` solves every (setting, budget, family, problem) not yet in ``--cache`` (a JSON-lines file:
runs are resumable and can be split over processes with ``--only``); ``calibration`` does the same
for the coverage runs; ``report`` writes benchmarks/results/posterior_convergence.md and .png from
the cache.

Families (:mod:`invdiff.exact_posterior`): ``mix10-dy1`` / ``mix10-dy2`` — 9 modes in 10-D through a
random 1×10 / 2×10 matrix, σ_y a third of the largest singular value (:func:`mixture_case`);
``mcgdiff8-dy2`` — MCGdiff's benchmark (25 modes, d 8, dy 2, σ_y = U(0,1)·max s); ``mix40-dy4`` — 5
modes in 40-D through a 4×40 matrix; ``gauss10-dy2`` — one Gaussian N(μ, I) in 10-D (a unimodal
control: samplers whose approximation is exact for Gaussians must reach the floor there).

Score: the sliced Wasserstein-2 distance to exact posterior samples normalised so that 0 is the
Monte-Carlo floor (two exact sets of the same size) and 1 the prior (exact prior samples: a solver
that ignores y), :func:`invdiff.exact_posterior.normalised_distance`; mean and 95 % interval over the
random problems. Budget: the solver's steps are set so that its network calls (counted) are about the
target NFE; the table shows the NFE counted. Calibration: on one fixed prior and operator,
``--truths`` ground truths drawn from the prior each get ``--draws`` posterior draws; the rank of
each truth coordinate among its draws gives the coverage of the central 50/90/95 % credible intervals
(:func:`invdiff.exact_posterior.rank_coverage`), which exact draws meet up to Monte-Carlo error.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from invdiff import exact_posterior as H
from invdiff.priors import CountingPrior
from invdiff.solvers import SOLVER_CLASSES, SolverDivergedError
from invdiff.solvers.pnpdm import pnpdm_schedule

RESULTS = Path(__file__).parent / "results"
CACHE = RESULTS / "posterior_convergence.jsonl"
BUDGETS = (20, 100, 400, 1600)

FAMILIES = {
    "mix10-dy1": lambda k: H.mixture_case(10, 9, 1, 100 + k),
    "mix10-dy2": lambda k: H.mixture_case(10, 9, 2, 200 + k),
    "mcgdiff8-dy2": lambda k: H.mcgdiff_gmm_case(8, 2, 300 + k),
    "mix40-dy4": lambda k: H.mixture_case(40, 5, 4, 400 + k),
    "gauss10-dy2": lambda k: H.mixture_case(10, 1, 2, 500 + k),
}

# the toy settings of configs/benchmark/gmm_posterior.yaml where a paper default ignores y or
# diverges on these problems (stated in the table)
TOY = {"mcg": {"alpha": 0.5, "project": False}, "reddiff": {"lr": 0.5},
       "daps": {"lr": 1e-3, "lr_min_ratio": 1.0, "tau": None}}

# DAPS with every inner budget converged, so that what remains is its p(x₀ | x_σ) ≈ N(x̂₀, r_σ²): Tweedie's
# x̂₀ (no inner ODE), 200 Langevin steps per level, step 1e-2 → 1e-3, Bayes τ, r_σ exact for unit-variance
# components (exact for the Gaussian family; the step suits these problems' σ_y ≈ ‖A‖/3, not image tasks)
DAPS_CONVERGED = {"ode_steps": 1, "ode_sigma_min": 0.0, "langevin_steps": 200, "lr": 1e-2, "lr_min_ratio": 0.1,
                  "tau": None, "r_data_std": 1.0}

# the budgets left out for cost on a CPU core: 256 particles (~2 min a problem at NFE 400)
MAX_BUDGET = {"": max(BUDGETS), "256 particles": 100}

# (label, solver, experiment config or None, extra settings)
SETTINGS = [
    ("ddrm", "ddrm", None, {}), ("ddnm", "ddnm", None, {}), ("pigdm", "pigdm", None, {}),
    ("diffpir", "diffpir", None, {}), ("score_sde", "score_sde", None, {}),
    ("score_sde, noisy projection λ 0.2", "score_sde", "toy_score_sde", {}),
    ("dps", "dps", None, {}), ("mcg (α 0.5, no projection)", "mcg", None, TOY["mcg"]),
    ("reddiff (lr 0.5)", "reddiff", None, TOY["reddiff"]), ("tmpd", "tmpd", None, {}),
    ("daps (τ = √2σ_y, lr 1e-3)", "daps", None, TOY["daps"]),
    ("daps, r_σ exact for N(μ, I) (r_data_std 1)", "daps", None, {**TOY["daps"], "r_data_std": 1.0}),
    ("daps converged chain (Tweedie x̂₀, 200 Langevin, r_data_std 1)", "daps", None, DAPS_CONVERGED),
    ("pnpdm", "pnpdm", None, {}),
    ("mcgdiff (paper: 64 particles, resampling every step)", "mcgdiff", None, {}),
    ("mcgdiff converging (64 particles, ESS < N/2, systematic)", "mcgdiff", "mcgdiff_converging", {}),
    ("mcgdiff converging, 256 particles (NFE ≤ 100)", "mcgdiff", "mcgdiff_converging", {"particles": 256}),
    ("ot_ode", "ot_ode", None, {}), ("flowdps", "flowdps", None, {}), ("pnp_flow", "pnp_flow", None, {}),
    ("ictm", "ictm", None, {}), ("dflow", "dflow", None, {}), ("cm4ir", "cm4ir", None, {}),
    ("pnp_cm", "pnp_cm", None, {}),
]


VP_SOLVERS = {"ddrm", "ddnm", "pigdm", "diffpir", "dps", "mcg", "reddiff", "tmpd", "mcgdiff"}


def build(name: str, experiment: str | None, extra: dict):
    overrides = [f"solver={name}"] + ([f"experiment={experiment}"] if experiment else [])
    with initialize_config_module("invdiff.configs", version_base=None):
        solver = instantiate(compose("config", overrides=overrides).solver)
    return functools.partial(solver, **extra) if extra else solver


def budget_settings(solver, name: str, budget: int, prior) -> dict:
    """The ``steps`` (and nothing else) that spend about ``budget`` network calls: NFE per step is
    1 for most solvers (at most the 1000 steps of the VP schedule for the VP solvers), 2 for score-SDE (one corrector), ``ode_steps`` for DAPS, ``num_samples``
    for PnP-Flow, 2·``ode_steps``·(forward + backward) for D-Flow; PnP-DM's iterations cost the
    levels below ρ_k, so its iteration count is the largest whose schedule fits the budget."""
    kw = solver.keywords  # (nested partials are flattened: the config's settings and the extra ones)
    get = lambda k, v: kw.get(k, v)  # noqa: E731
    if name == "pnpdm":
        sched = dict(rho=get("rho", 10.0), rho_decay=get("rho_decay", 0.9), rho_min=get("rho_min", 0.3),
                     prior_steps=get("prior_steps", 100))
        steps, total = 1, 0
        while True:
            total = sum(len(lv) - 1 for _, lv in pnpdm_schedule(prior, steps + 1, **sched))
            if total > budget:
                break
            steps += 1
        return {"steps": steps}
    per = {"score_sde": 1 + get("corrector_steps", 1), "daps": get("ode_steps", 5), "pnp_flow": get("num_samples", 5),
           "dflow": 4 * get("ode_steps", 5)}.get(name, 1)
    steps = max(1, round(budget / per))
    if name in VP_SOLVERS:  # their grid is the prior's 1000 training timesteps at most
        steps = min(steps, 1000)
    return {"steps": steps}


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    return {tuple(json.loads(line)["key"]) for line in path.read_text().splitlines() if line.strip()}


def append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def solve(solver, y, case, seed: int, steps_kw: dict):
    """``(draws or None if the solver diverged, NFE, seconds)`` for the batch ``y`` of ``case``'s problem."""
    prior = CountingPrior(case.prior)
    t0 = time.perf_counter()
    try:
        x = solver(y, case.op, prior, sigma_y=case.sigma_y, generator=torch.Generator().manual_seed(seed), **steps_kw)
    except SolverDivergedError:
        x = None
    return x, int(prior.calls), time.perf_counter() - t0


def run(args) -> None:
    for label, name, exp, extra in SETTINGS:
        if (args.only and name not in args.only) or (args.match and args.match not in label):
            continue
        solver = build(name, exp, extra)
        for budget in args.budgets:
            if budget > max(b for key, b in MAX_BUDGET.items() if key in label or key == ""):
                continue
            for fam in args.families:
                for k in range(args.problems):
                    key = ("conv", label, budget, fam, k, args.n)
                    if key in done_keys(args.cache):  # (re-read: other processes may have done it)
                        continue
                    case = FAMILIES[fam](k)
                    steps_kw = budget_settings(solver, name, budget, case.prior)
                    y = case.y.expand(args.n, *case.y.shape[1:]).clone()
                    x, nfe, secs = solve(solver, y, case, 1000 + k, steps_kw)
                    rec = {"key": list(key), "solver": name, "nfe": nfe, "seconds": secs, **steps_kw}
                    if x is None or not bool(torch.isfinite(x).all()):
                        rec["diverged"] = True
                    else:
                        m = H.evaluate(case, x, seed=7 + k)
                        rec.update(m, norm=H.normalised_distance(m["sw"], m["sw_floor"], m["sw_prior"]))
                    append(args.cache, rec)
                    print(f"{label:55s} {budget:5d} {fam:13s} {k} {rec.get('norm', float('nan')):.3f} "
                          f"NFE {nfe} {secs:.1f}s", flush=True)


CALIBRATION_FAMILY = "mix10-dy2"


def calibration(args) -> None:
    """One prior and operator (``mix10-dy2`` problem 0), ``truths`` fresh ground truths from the
    prior, ``draws`` posterior draws each, all in one batch per setting (budget ``--calib-budget``)."""
    done = done_keys(args.cache)
    base = FAMILIES[CALIBRATION_FAMILY](0)
    g = torch.Generator().manual_seed(2024)
    truth = base.prior.sample(args.truths, g)
    y = base.op.A(truth) + base.sigma_y * torch.randn(args.truths, base.y.shape[1], generator=g, dtype=torch.float64)
    exact = torch.stack([base.prior.posterior(base.op, y[i:i + 1], base.sigma_y).sample(args.draws, g)
                         for i in range(args.truths)])
    ref_width = width90(exact)
    rows = [("exact posterior", None, None, {})] + SETTINGS
    for label, name, exp, extra in rows:
        if args.only and name not in args.only and name is not None:
            continue
        if "256 particles" in label:  # 15 000 draws × 256 particles: over an hour on a CPU core
            continue
        key = ("calib", label, args.calib_budget, CALIBRATION_FAMILY, args.truths, args.draws)
        if key in done:
            continue
        t0 = time.perf_counter()
        nfe = 0
        if name is None:
            draws = exact
        else:
            solver = build(name, exp, extra)
            steps_kw = budget_settings(solver, name, args.calib_budget, base.prior)
            out, nfe, _ = solve(solver, y.repeat_interleave(args.draws, 0), base, 5, steps_kw)
            draws = None if out is None else out.reshape(args.truths, args.draws, -1)
        rec = {"key": list(key), "solver": name, "nfe": nfe, "seconds": time.perf_counter() - t0}
        if draws is None or not bool(torch.isfinite(draws).all()):
            rec["diverged"] = True
        else:
            rec["coverage"] = H.rank_coverage(draws, truth)
            rec["width_ratio"] = width90(draws) / ref_width
        append(args.cache, rec)
        print(f"{label:55s} {rec.get('coverage')} width {rec.get('width_ratio', float('nan')):.3f}", flush=True)


def width90(draws: torch.Tensor) -> float:
    """Mean width of the central 90 % interval (5th to 95th percentile of the draws) over problems
    and coordinates, ``draws [M, n, d]``."""
    q = torch.quantile(draws.to(torch.float64), torch.tensor([0.05, 0.95], dtype=torch.float64), dim=1)
    return float((q[1] - q[0]).mean())


def interval(values):
    from invdiff.metrics import interval95

    s = interval95(values)
    return s["mean"], (s["hi"] - s["lo"]) / 2 if s["n"] >= 2 else float("nan")


def report(args) -> None:
    from invdiff.apps.runs import provenance

    recs = [json.loads(line) for line in args.cache.read_text().splitlines() if line.strip()]
    conv = [r for r in recs if r["key"][0] == "conv"]
    calib = [r for r in recs if r["key"][0] == "calib"]
    prov = provenance()
    fams = [f for f in FAMILIES if any(r["key"][3] == f for r in conv)]
    lines = ["# Posterior convergence on Gaussian-mixture problems", "",
             "Command: `python benchmarks/posterior_convergence.py run && python benchmarks/posterior_convergence.py "
             "calibration && python benchmarks/posterior_convergence.py report` (float64, CPU; the cache "
             "`posterior_convergence.jsonl` beside this file holds every run).",
             f"Machine: {prov['cpu']}, {prov['cores']} cores, GPU {prov['gpu'] or 'none'}; torch {prov['torch']}; "
             f"report at commit {prov['commit']}, {prov['date']}.", "",
             __doc__.split("\n\n", 3)[3].strip(), "",
             "Class (`invdiff.solvers.SOLVER_CLASSES`): **exact** — asymptotically exact sampler (what goes to "
             "infinity in brackets); **approx** — approximate sampler; **point** — point estimator (its spread is "
             "not a posterior). Cells: normalised distance, mean ± half-width of the 95 % interval over the "
             "problems (n draws each); NFE: network calls counted (MCGdiff's each on draws × particles states); "
             "'div': diverged.", ""]
    for fam in fams:
        rows = [r for r in conv if r["key"][3] == fam]
        n = rows[0]["key"][5]
        floor = [r["sw_floor"] for r in rows if "sw_floor" in r]
        lines += [f"## {fam}", "", f"{len({r['key'][4] for r in rows})} problems × {n} draws; raw SW₂ floor "
                  f"{sum(floor) / max(len(floor), 1):.3f}, prior {sum(r['sw_prior'] for r in rows if 'sw_prior' in r) / max(len(floor), 1):.3f} (means).", "",
                  "| setting | class | " + " | ".join(f"NFE≈{b}" for b in BUDGETS) + " |",
                  "|---|---|" + "---|" * len(BUDGETS)]
        for label, name, _, _ in SETTINGS:
            cells = []
            for b in BUDGETS:
                rs = [r for r in rows if r["key"][1] == label and r["key"][2] == b]
                if not rs:
                    cells.append("–")
                elif any(r.get("diverged") for r in rs):
                    cells.append("div")
                else:
                    m, h = interval([r["norm"] for r in rs])
                    nfe = round(sum(r["nfe"] for r in rs) / len(rs))
                    cells.append(f"{m:.2f} ± {h:.2f} ({nfe})" if h == h else f"{m:.2f} ({nfe})")
            if any(c != "–" for c in cells):
                lines.append(f"| {label} | {SOLVER_CLASSES[name].kind} | " + " | ".join(cells) + " |")
        lines.append("")
    if calib:
        c0 = calib[0]["key"]
        lines += ["## Calibration", "",
                  f"{CALIBRATION_FAMILY} problem 0's prior and operator; {c0[4]} ground truths from the prior, "
                  f"{c0[5]} draws each at NFE ≈ {c0[2]}; coverage of the central credible intervals of each "
                  "coordinate (by ranks). Exact draws: the nominal level up to Monte-Carlo error (the first row "
                  f"measures it). Point estimators are listed for completeness: their spread is not a posterior.", "",
                  "| setting | class | NFE | 50 % | 90 % | 95 % | 90 % width ÷ exact |", "|---|---|---|---|---|---|---|"]
        for r in calib:
            kind = SOLVER_CLASSES[r["solver"]].kind if r["solver"] else "–"
            if r.get("diverged"):
                lines.append(f"| {r['key'][1]} | {kind} | {r['nfe']} | div | div | div | div |")
                continue
            cv = r["coverage"]
            lines.append(f"| {r['key'][1]} | {kind} | {r['nfe']} | " + " | ".join(f"{cv[k]:.3f}" for k in ("0.5", "0.9", "0.95"))
                         + f" | {r['width_ratio']:.2f} |")
        lines.append("")
    out = RESULTS / "posterior_convergence.md"
    out.write_text("\n".join(lines) + "\n" + (args.notes.read_text() if args.notes and args.notes.exists() else ""))
    plot(conv, fams)
    print("wrote", out)


def plot(conv, fams) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 4.2), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        for i, (label, name, _, _) in enumerate(SETTINGS):
            pts = []
            for b in BUDGETS:
                rs = [r for r in conv if r["key"][3] == fam and r["key"][1] == label and r["key"][2] == b and "norm" in r]
                if rs:
                    pts.append((sum(r["nfe"] for r in rs) / len(rs), sum(r["norm"] for r in rs) / len(rs)))
            if pts:
                style = "-" if SOLVER_CLASSES[name].kind == "exact" else "--" if SOLVER_CLASSES[name].kind == "approx" else ":"
                ax.plot(*zip(*pts), style, marker="osD^v<>"[i % 7], ms=3, color=plt.cm.tab20(i % 20),
                        label=label if fam == fams[0] else None)
        ax.axhline(0, color="k", lw=0.5)
        ax.axhline(1, color="gray", lw=0.5, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(-0.1, 1.6)
        ax.set_title(fam)
        ax.set_xlabel("NFE")
    axes[0][0].set_ylabel("normalised SW₂ (0 floor, 1 prior)")
    fig.legend(loc="lower center", ncol=4, fontsize=7, title="solid: asymptotically exact; dashed: approximate; "
               "dotted: point estimator", title_fontsize=7)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(RESULTS / "posterior_convergence.png", dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "calibration", "report"])
    p.add_argument("--only", default="", help="comma-separated solver names")
    p.add_argument("--match", default="", help="only the settings whose label contains this text")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--problems", type=int, default=3)
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--truths", type=int, default=300)
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--calib-budget", type=int, default=100)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--notes", type=Path, default=RESULTS / "posterior_convergence_notes.md",
                   help="hand-written reading appended to the report")
    args = p.parse_args(argv)
    args.only = {s for s in args.only.split(",") if s}
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.families = [f for f in args.families.split(",") if f]
    torch.set_num_threads(1)
    {"run": run, "calibration": calibration, "report": report}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
