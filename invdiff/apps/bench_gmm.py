"""The exact-posterior benchmark (``kind: gmm`` presets): the Gaussian-mixture problems of the
MCGdiff paper (Cardoso et al., ICLR 2024; :func:`invdiff.exact_posterior.mcgdiff_gmm_case`),
solved by one solver setting, scored by the sliced Wasserstein distance to exact posterior
samples.

One record per random problem (``samples/d{d}_dy{dy}_p{k}.h5``, atomic, resumable like the image
presets): the solver's first samples, and its metrics — ``sw`` (to exact posterior samples),
``sw_floor`` (between two independent exact sets: the Monte-Carlo floor), ``sw_prior`` (exact
prior samples against the posterior: the ceiling, a solver that ignores y), ``mean_err``,
``var_ratio``, NFE, seconds. The summary gives, per (d, dy), the mean ± 95 % interval over the
problems of each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .common import AppError, build, one_paragraph
from .runs import check, config_key, plain_settings, provenance, run_hash, run_label

log = logging.getLogger("invdiff")


def problem_ids(spec) -> list[tuple[str, int, int, int]]:
    return [(f"d{d}_dy{dy}_p{k:02d}", int(d), int(dy), k)
            for d in spec.dims for dy in spec.dys for k in range(int(spec.problems))]


def run_gmm(cfg: DictConfig, out_dir: Path, *, fix: str) -> dict:
    """Solve every problem of the preset into ``out_dir`` (resuming; ``fix`` names how to choose
    another directory when it holds other results), then write and return the summary."""
    from ..api import generator_of, solver_name
    from .. import distributed
    from ..data.results import write_sample
    from ..exact_posterior import evaluate, mcgdiff_gmm_case
    from ..priors import CountingPrior
    from ..solvers import check_call
    from .app import solver_kind

    spec = cfg.benchmark.gmm  # (prepare merged the CPU caps in)
    n = int(spec.n)
    if n < 2 or int(spec.problems) < 1:
        raise AppError(f"benchmark.gmm needs n >= 2 samples and problems >= 1, got n={n}, problems={spec.problems}")
    solver = build(cfg.solver, "solver")
    kind = solver_kind(solver)
    ids = problem_ids(spec)
    first = mcgdiff_gmm_case(ids[0][1], ids[0][2], ids[0][3])
    try:  # every setting and capability check before any work
        check_call(solver, first.y, first.op, first.prior, sigma_y=first.sigma_y)
    except (ValueError, TypeError) as err:
        raise AppError(f"solver config ({cfg.solver.get('_target_')}): {one_paragraph(err)}") from err
    digest = run_hash(cfg)
    key = config_key(cfg)  # (a problem is determined by its id and the config)
    try:
        check(out_dir / "samples", {i[0]: key for i in ids}, resume=bool(cfg.get("resume", True)), fix=fix)
    except ValueError as err:
        raise AppError(str(err)) from None
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    settings = plain_settings(solver)
    todo = distributed.pending(ids, out_dir / "samples", resume=cfg.get("resume", True), id_of=lambda i: i[0])
    log.info("benchmark %s: solver %s %s; %d problem(s), %d to do, %d samples each", cfg.benchmark.name,
             cfg.bench_run.solver, settings, len(ids), len(todo), n)
    # claimed one at a time: other jobs in this directory skip them (and this one waits for theirs at the end)
    with distributed.claimed(todo, out_dir / "samples", resume=cfg.get("resume", True), id_of=lambda i: i[0]) as work:
        for pid, d, dy, k in work:
            case = mcgdiff_gmm_case(d, dy, k)
            prior = CountingPrior(case.prior)
            y = case.y.expand(n, *case.y.shape[1:]).clone()
            t0 = time.perf_counter()
            x = solver(y, case.op, prior, sigma_y=case.sigma_y, generator=generator_of(int(cfg.seed), pid, "solver/0"))
            secs = time.perf_counter() - t0
            m = evaluate(case, x, seed=int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16))
            m.update(nfe=int(prior.calls), seconds=float(secs), d=d, dy=dy, sigma_y=float(case.sigma_y))
            write_sample(out_dir / "samples" / f"{pid}.h5", {
                "x_hat": x[: min(n, 64)].reshape(min(n, 64), -1), "id": pid, "seed": int(cfg.seed), "problem_seed": k,
                "solver": solver_name(solver), "solver_choice": str(cfg.bench_run.solver), "solver_class": kind,
                "solver_settings": json.dumps(settings), "metrics": json.dumps(m), "nfe": int(prior.calls),
                "seconds": float(secs), "benchmark": str(cfg.benchmark.name), "benchmark_hash": digest,
                "benchmark_node": json.dumps(OmegaConf.to_container(cfg.benchmark, resolve=True), default=str),
                "preset_settings": json.dumps(dict(cfg.bench_run.preset_settings)), "num_samples": n,
                "config_yaml": resolved, "resume_key": json.dumps(key), "mode": "gmm"})
            log.info("%s: sw %.3f (floor %.3f, prior %.3f), NFE %d, %.1f s", pid, m["sw"], m["sw_floor"], m["sw_prior"],
                     m["nfe"], secs)
    return distributed.finish(gmm_report, out_dir, [i[0] for i in ids])


def gmm_report(out_dir: Path, ids=None) -> dict:
    from ..data.results import atomic_text, finite, read_sample, summarize
    from ..metrics import interval95, metric_bounds

    rows = summarize(out_dir)["samples"]
    if ids is not None:
        rows = [r for r in rows if r["id"] in set(ids)]
    if not rows:
        raise AppError(f"{out_dir} has no finished problems to summarise")
    first = read_sample(sorted((out_dir / "samples").glob("*.h5"))[0])
    groups = {}
    for r in rows:
        groups.setdefault(f"d={r['d']}, dy={r['dy']}", []).append(r)
    groups = dict(sorted(groups.items(), key=lambda kv: (kv[1][0]["d"], kv[1][0]["dy"])))
    stats = {g: {k: interval95((r[k] for r in rs), metric_bounds(k)) for k in ("sw", "sw_floor", "sw_prior", "mean_err", "var_ratio",
                                                         "nfe", "seconds")} for g, rs in groups.items()}
    bnode = json.loads(first.get("benchmark_node", "{}"))
    summary = {"benchmark": first.get("benchmark"), "benchmark_kind": "gmm", "task": bnode.get("task", ""),
               "solver": first.get("solver_choice", first["solver"]), "solver_class": first.get("solver_class", ""), "solver_settings": first.get("solver_settings"),
               "preset_settings": json.loads(first.get("preset_settings", "{}")), "problems": len(rows),
               "num_samples": int(first.get("num_samples", 0)), "groups": stats,
               "metrics": {k: interval95((r[k] for r in rows), metric_bounds(k)) for k in ("sw", "nfe", "seconds")},
               "provenance": provenance(), "run_dir": str(out_dir)}
    atomic_text(out_dir / "summary.json", json.dumps(finite(summary), indent=2, default=str))
    atomic_text(out_dir / "summary.md", gmm_table([dict(summary, label=summary["solver"])], None))
    log.info("%s / %s: %s", summary["benchmark"], summary["solver"],
             "; ".join(f"{g}: sw {s['sw']['mean']:.3f}" for g, s in stats.items()))
    return summary


def _ci(s: dict) -> str:
    if not s or not s.get("n"):
        return "–"
    half = (s["hi"] - s["lo"]) / 2 if s.get("hi") == s.get("hi") and s.get("hi") is not None else float("nan")
    return f"{s['mean']:.3f} ± {half:.3f}" if half == half else f"{s['mean']:.3f}"


def gmm_table(runs, command) -> str:
    r0 = runs[0]
    groups = list(r0["groups"])
    for r in runs[1:]:
        groups += [g for g in r["groups"] if g not in groups]
    p = r0["provenance"]
    lines = [f"# {r0['benchmark']}", "", r0.get("task", ""), "",
             f"Command: `{command}`" if command else "",
             f"Machine: {p['cpu']}, {p['cores']} cores, GPU {p['gpu'] or 'none'}; commit {p['commit']}; {p['date']}. "
             f"{r0['num_samples']} samples per problem; sliced Wasserstein distance to exact posterior samples, mean ± "
             "half-width of the 95 % interval over the random problems. Floor: two independent exact sample sets; "
             "ceiling: exact prior samples (a solver that ignores y).", "",
             "| run | NFE | s / problem | " + " | ".join(groups) + " |", "|---|---|---|" + "---|" * len(groups)]
    for r in runs:
        m = r["metrics"]
        cells = [_ci((r["groups"].get(g) or {}).get("sw")) for g in groups]
        lines.append(f"| {run_label(r)} | {m['nfe']['mean']:.0f} | {m['seconds']['mean']:.2f} | " + " | ".join(cells) + " |")
    for key, name in (("sw_floor", "floor (exact vs exact)"), ("sw_prior", "ceiling (prior vs posterior)")):
        cells = [_ci((r0["groups"].get(g) or {}).get(key)) for g in groups]
        lines.append(f"| *{name}* | – | – | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
