"""``invdiff-bench``: benchmark presets, run resumably, summarised honestly.

    invdiff-bench benchmark=smoke                         # 4 held-out phantoms, MRI 4×, DDRM: < 1 min
    invdiff-bench benchmark=phantom64_mri4x solver=dps    # one solver on a self-contained preset
    invdiff-bench -m benchmark=patches64_inpaint solver=ddrm,pigdm,tv   # a preset's table
    invdiff-bench benchmark=ffhq_sr4 prior.path=ffhq_10m.pt data.path=ffhq/   # a paper preset
    invdiff-bench table bench_results/patches64_inpaint --out table.md --plot nfe.png

A preset (``configs/benchmark/<name>.yaml``) picks operator, noise, prior, data and a default
solver through its defaults list and fills the ``benchmark`` node: the task, the paper's noise
convention, per-solver settings of the task, CPU caps (at most ``max_images`` images and capped
solver settings; a GPU run lifts them), the published numbers to print beside ours, and the
files it needs. The command line overrides everything (``solver.steps=…`` wins over the preset).

Each image of the preset's data is solved with a seed derived from (seed, image id) and its
operator parameters (mask, kernel) saved: ``samples/{id}.h5`` is written atomically as each image
finishes (the app's layout, :mod:`invdiff.data.results`, plus the benchmark's attributes), so a
killed run loses nothing and ``resume=true`` (the default) continues where it stopped; a run
directory holding results of another configuration is refused. The run directory is
``${results_dir}/<preset>/<solver>/<overrides>``. At the end ``summary.md`` / ``summary.json`` /
``summary.csv``: per metric mean ± std, the 95 % interval of the mean, and n; NFE, seconds per
image, peak memory; the published numbers beside ours.

Summaries and tables: :mod:`invdiff.apps.bench_tables`. Per image the metrics are the app's
(:mod:`invdiff.evaluation`: ``psnr``/``ssim`` averaged over the N draws, ``psnr_mean`` of the
posterior mean, calibration, data consistency; ``lpips`` with local weights; ``psnr_best_of_N`` only
when ``benchmark.best_of=true``, labelled so). Set-level FID, Inception
Score and precision/recall (reconstructions against ground truths) come from local Inception
weights (``benchmark.metrics.fid_inception=<path>`` for the standard FID network, ``inception`` for torchvision's).

``kind: gmm`` presets are the exact-posterior benchmark (Gaussian-mixture priors, no images):
one record per random problem, sliced Wasserstein distances to exact posterior samples.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from . import app
from .bench_tables import TABLE_METRICS, collect, efficiency_plot, report, table  # noqa: F401  (the tables' API)
from .common import GROUPS, AppError, choices, one_paragraph, resolve_device
from .runs import check_resume, run_hash

log = logging.getLogger("invdiff")

#: What a name that becomes one folder of a path may hold (``benchmark.name``).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")


def path_part(text) -> str:
    """``text`` as one folder name: '%', '/' and '\\' written %25, %2F and %5C (reversibly), so an
    override value such as ``../../x`` names a folder instead of leaving its parent; registered as the
    ``invdiff_path`` resolver of ``configs/bench.yaml``'s run directories."""
    return str(text).replace("%", "%25").replace("/", "%2F").replace("\\", "%5C").replace("\0", "%00")


OmegaConf.register_new_resolver("invdiff_path", path_part, replace=True)


def check_names(cfg: DictConfig) -> None:
    """Names used in result paths must be plain names (no folder separators, no '..')."""
    name = (cfg.get("benchmark") or {}).get("name")
    if name in (None, "???"):
        return
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or len(name) > 100:
        raise AppError(f"benchmark.name {name!r} names the folder of the runs (results_dir/<name>/...), so it must be "
                       "a plain name of letters, digits and . _ + = - (at most 100 characters, no '/' or '..'), "
                       f"like the presets' own ({', '.join(choices('benchmark')[:4])}, …)")


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
def _attach(cfg: DictConfig, solver_choice: str | None, overrides: list[str]) -> DictConfig:
    with open_dict(cfg):
        cfg.bench_run = {"solver": solver_choice, "overrides": list(overrides)}
    return cfg


def config(*overrides: str) -> DictConfig:
    """The benchmark config composed in-process, e.g. ``config("benchmark=smoke", "solver=dps")``."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("bench", overrides=list(overrides), return_hydra_config=True)
    choice = cfg.hydra.runtime.choices.get("solver")
    with open_dict(cfg):
        del cfg["hydra"]
    return _attach(cfg, choice, list(overrides))


def _cli_solver_keys(overrides) -> set[str]:
    keys = set()
    for o in overrides:
        k = o.lstrip("+~").split("=", 1)[0]
        if k.startswith("solver."):
            keys.add(k.split(".", 2)[1])
    return keys


def _on_cpu(cfg) -> bool:
    return resolve_device(cfg.get("device", "auto")).type == "cpu"


def prepare(cfg: DictConfig) -> DictConfig:
    """The preset's per-solver settings and CPU caps merged into ``cfg.solver`` (the command line
    still wins), after checking that the files the preset needs are given."""
    b = cfg.get("benchmark")
    if b is None or b.get("name") in (None, "???"):
        raise AppError("no benchmark preset: choose one with benchmark=<name> "
                       f"({', '.join(choices('benchmark'))})")
    check_names(cfg)
    for need in b.get("requires", None) or []:
        value = OmegaConf.select(cfg, need.key, default=None)
        if value in (None, "", "???") and not os.environ.get(need.get("env") or "", ""):
            env = f" or set {need.env}" if need.get("env") else ""
            raise AppError(f"benchmark {b.name} needs {need.what}: pass {need.key}=/path/to/it{env}. "
                           f"{need.get('hint', '')} Nothing is downloaded.".strip())
    choice = (cfg.get("bench_run") or {}).get("solver")
    cli = _cli_solver_keys((cfg.get("bench_run") or {}).get("overrides", []))
    cfg = cfg.copy()
    applied, by_source = {}, {"task": {}, "cpu": {}}
    layers = [("task", (b.get("solvers") or {}).get(choice) or {})]
    if _on_cpu(cfg) and b.get("kind", "images") != "gmm":  # (the GMM preset's steps are its variable)
        layers.append(("cpu", ((b.get("cpu") or {}).get("solvers") or {}).get(choice) or {}))
    with open_dict(cfg):
        for source, layer in layers:
            for k, v in layer.items():
                if k not in cli:
                    cfg.solver[k] = v
                    applied[k] = by_source[source][k] = OmegaConf.to_container(v) if isinstance(v, DictConfig) else v
        cfg.bench_run.preset_settings = applied  # the effective values (task values, then CPU caps)
        cfg.bench_run.task_settings = by_source["task"]  # the preset's values for this task (paper values)
        cfg.bench_run.cpu_caps = by_source["cpu"]  # lowered because the run is on a CPU (a GPU run lifts them)
        if b.get("kind", "images") == "gmm" and _on_cpu(cfg) and (b.get("cpu") or {}).get("gmm"):
            cfg.benchmark.gmm = OmegaConf.merge(b.gmm, b.cpu.gmm)  # the effective problem set
    return cfg


RESUME_FIX = "results_dir=<another directory>; runs go to results_dir/<preset>/<solver>/<overrides>"


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def _perceptual(cfg):
    spec = cfg.benchmark.get("metrics") or {}
    if not any(spec.get(k) for k in ("lpips_backbone", "inception", "fid_inception")):
        return None, None
    from ..perceptual import load_perceptual

    try:
        nets = load_perceptual(lpips_backbone=spec.get("lpips_backbone"), lpips_linear=spec.get("lpips_linear"),
                               lpips_net=spec.get("lpips_net", "alex"), inception=spec.get("inception"),
                               fid_inception=spec.get("fid_inception"))
        return nets["lpips"], nets["inception"]
    except (FileNotFoundError, ValueError) as err:
        raise AppError(f"benchmark.metrics: {one_paragraph(err)}") from err


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run the preset in ``cfg`` into ``out_dir`` (resuming), then write and return its summary."""
    cfg = prepare(cfg)
    out_dir = Path(out_dir)
    if cfg.benchmark.get("kind", "images") == "gmm":
        from .bench_gmm import run_gmm

        return run_gmm(cfg, out_dir, fix=RESUME_FIX)
    lpips, inception = _perceptual(cfg)
    job = app.setup(cfg)
    digest = run_hash(cfg)
    cap = (cfg.benchmark.get("cpu") or {}).get("max_images") if _on_cpu(cfg) else None
    images_in_preset = len(job.items)
    job.items = job.items[: int(cap)] if cap else job.items
    check_resume(job, out_dir, RESUME_FIX)  # (every finished file of the directory, before any work)
    from .. import distributed

    ctx = distributed.init()
    items = job.items
    todo = distributed.pending(items, out_dir / "samples", resume=cfg.get("resume", True),
                               id_of=lambda it: it.sample.id, folders=[out_dir / "figures"])
    b = cfg.benchmark
    log.info("benchmark %s: %s", b.name, b.get("task", ""))
    log.info("solver %s %s; %d image(s) (%d to do%s) × %d draw(s); device %s", cfg.bench_run.solver,
             dict(cfg.bench_run.preset_settings), len(items), len(todo),
             f" on rank {ctx.rank} of {ctx.world_size}" if ctx.active else "", cfg.num_samples, job.device)
    extra = {"benchmark": str(b.name), "benchmark_hash": digest, "best_of": bool(b.get("best_of", False)),
             "rank": ctx.rank, "world_size": ctx.world_size,
             "paper_noise_convention": str(b.get("noise_convention", "")),
             "benchmark_node": json.dumps(OmegaConf.to_container(b, resolve=True), default=str),
             "solver_choice": str(cfg.bench_run.solver), "preset_settings": json.dumps(dict(cfg.bench_run.preset_settings)),
             "task_settings": json.dumps(dict(cfg.bench_run.task_settings)),
             "cpu_caps": json.dumps(dict(cfg.bench_run.cpu_caps)), "images_in_preset": images_in_preset,
             "image_cap": int(cap) if cap and int(cap) < images_in_preset else 0}
    best_of = bool(b.get("best_of", False))
    from tqdm.auto import tqdm

    show = bool(cfg.get("progress", True))
    inner = tqdm(desc="solver steps", unit="step", leave=False, mininterval=0.5, disable=None if show else True)
    # claimed one at a time: other jobs in this directory skip them (and this one waits for theirs at the end)
    work = distributed.claimed(todo, out_dir / "samples", resume=cfg.get("resume", True), id_of=lambda it: it.sample.id)
    try:
        for k, it in enumerate(tqdm(work, total=len(todo), desc=str(b.name), unit="image", disable=None if show else True)):
            inner.reset()
            _, m = app.solve_item(job, it, out_dir, bar=inner, best_of=best_of, lpips=lpips, extra=extra)
            log.info("%s: %s", it.sample.id, ", ".join(f"{k_} {m[k_]:.4g}" for k_ in ("psnr", "ssim", "nfe", "seconds")
                                                         if k_ in m))
    finally:
        inner.close()
        work.close()
    return distributed.finish(report, out_dir, inception=inception, ids=[it.sample.id for it in items])


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .cli import run_job

    hc = HydraConfig.get()
    run_job("invdiff-bench", run, _attach(cfg, hc.runtime.choices.get("solver"), list(hc.overrides.task)))


class SweepTable(Callback):
    """Hydra callback: after a multirun, ``table.md`` over every run of the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from ..distributed import context

        if not context().main:  # under torchrun: rank 0 writes the table
            return
        root = Path(config.hydra.sweep.dir)
        try:
            table(root, root / "table.md", root / "psnr_vs_nfe.png", command="invdiff-bench -m " + " ".join(
                config.hydra.overrides.task))
            log.info("table of the sweep: %s", root / "table.md")
        except AppError as err:
            log.error("no table: %s", err)


def _table_command(argv) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="invdiff-bench table", description="One table over the runs of a preset, or of an app sweep (invdiff -m ...).")
    p.add_argument("root")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--command", default=None, help="the command that produced the runs (printed in the table)")
    a = p.parse_args(argv)
    try:
        print(table(a.root, a.out, a.plot, a.command))
    except AppError as err:
        raise SystemExit(f"invdiff-bench: {err}") from None


def main() -> None:
    import sys

    import hydra

    argv = sys.argv[1:]
    if argv[:1] == ["table"]:
        return _table_command(argv[1:])
    from .cli import explain_overrides

    problem = explain_overrides([a for a in argv if not a.startswith("-")], config_fn=config,
                                groups=GROUPS + ("benchmark",), check=check_names)
    if problem:
        raise SystemExit(f"invdiff-bench: {problem}")
    from ..distributed import hydra_overrides

    sys.argv += hydra_overrides(argv, {})  # run directories are named by the config: same on all ranks
    if not any(a in argv for a in ("--cfg", "-c", "--info", "--hydra-help", "--help", "-h")):
        from .cli import check_output_dir

        problem, pin = check_output_dir(sys.argv[1:], "bench", "Choose a writable results_dir=<dir>.",
                                        inside="results_dir")
        if problem:
            raise SystemExit(f"invdiff-bench: {problem}")
        sys.argv += pin
    hydra.main(version_base=None, config_path="pkg://invdiff.configs", config_name="bench")(_hydra_main)()


if __name__ == "__main__":
    main()
