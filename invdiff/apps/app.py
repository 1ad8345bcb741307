"""``invdiff``: the reconstruction app (Hydra).

    invdiff                                   # MRI 4× of held-out phantoms, phantom64 prior, ΠGDM
    invdiff operator=gaussian_blur solver=dps data=sample_image data.names=[camera] prior=...
    invdiff -m solver=pigdm,ddnm seed=0,1,2   # a sweep; summary.csv/metrics.json over all runs

Config groups (``configs/``): ``operator``, ``noise``, ``prior``, ``solver``, ``data``,
``experiment`` (tuned bundles). For every sample of the data source the app simulates ``y`` (or
takes the measured one), reconstructs it with :func:`invdiff.reconstruct`, and writes into the
run directory ``samples/{id}.h5`` (atomic; layout in :mod:`invdiff.data.results`),
``figures/{id}.png`` and ``metrics.json`` / ``metrics.csv`` (rebuilt from the sample files).
Everything that can fail on bad input — names, keys, shapes, value ranges, an operator the solver
cannot use — fails before anything is simulated, sampled or written, with one paragraph that says
what was wrong and what the valid choices are. The command line itself (override checks,
``--help``, the Hydra entry point, sweep summaries) is :mod:`invdiff.apps.cli`; building and checking a job (:func:`setup`) is
:mod:`invdiff.apps.jobs`, the metrics :mod:`invdiff.evaluation`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import operators

from ..evaluation import baseline, complex_image, image_metrics
from .common import AppError, build, config, one_paragraph, resolve_device  # noqa: F401  (the app's API)
from .jobs import Item, Job, runtime_settings, setup, tile_overlap
from .runs import check_resume, plain_settings, sample_key, versions  # noqa: F401  (check_resume: the app's API)

log = logging.getLogger("invdiff")


# --------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------
def _prior_record(prior, cfg) -> dict:
    ck = getattr(prior, "checkpoint", None) or {}
    return {"target": str(cfg.prior.get("_target_", "")), "name": str(cfg.prior.get("name", "")),
            "path": ck.get("path"), "sha256": ck.get("sha256"), "format": ck.get("format"),
            "shape": list(prior.shape), "data_range": list(prior.data_range)}


def _noise_convention(noise, sigma_y: float, prior, mode: str) -> str:
    lo, hi = prior.data_range
    src = f"simulated with {noise!r}" if mode == "synthetic" else "measured data"
    return (f"{src}; solver sigma_y = {sigma_y:g} in measurement units, images on [{lo:g}, {hi:g}] "
            "(physical units of the prior)")


def _peak_memory_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_mb(dev: torch.device) -> tuple[float, str]:
    """(MB, what was measured): the CUDA allocator's peak since the last reset, or on the CPU the
    process's peak resident set size (a high-water mark over the whole process)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20, "CUDA peak allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def solver_kind(solver) -> str:
    """``exact`` / ``approx`` / ``point`` (:data:`invdiff.solvers.SOLVER_CLASSES`), or ``unknown`` for
    a callable that is not a registered solver (treated as a sampler)."""
    from ..api import solver_name
    from ..solvers import SOLVER_CLASSES

    c = SOLVER_CLASSES.get(solver_name(solver))
    return c.kind if c is not None else "unknown"


def solve_item(job: Job, item: Item, out_dir: Path, *, bar=None, best_of: bool = False, lpips=None,
               extra=None) -> tuple[Path, dict]:
    """Simulate (or take) y, reconstruct, write ``samples/{id}.h5`` and ``figures/{id}.png``.

    The metrics are :func:`invdiff.evaluation.image_metrics` (``best_of`` and ``lpips`` are the
    benchmark's options); ``extra`` adds attributes to the sample file."""
    from ..api import generator_of, sample_seed, solver_name
    from ..data.figures import sample_figure
    from ..data.results import write_sample
    cfg, s, op, dev = job.cfg, item.sample, item.op, job.device
    mode = getattr(job.data, "mode", "synthetic")
    resume_key = json.dumps(sample_key(cfg, item, job.prior))  # (before the operator moves to the device)
    noise_seed = sample_seed(int(cfg.seed), s.id, "noise")
    if s.y is None:  # simulated on the CPU (the generator's device), then moved
        op = op.cpu() if isinstance(op, torch.nn.Module) else op
        y = op.measure(s.x[None], job.noise, generator=generator_of(int(cfg.seed), s.id, "noise"))
    else:
        y = s.y[None]
    op = op.to(dev) if isinstance(op, torch.nn.Module) else op
    x_true = s.x[None].to(dev) if s.x is not None else None
    y = y.to(dev)
    base, base_name = baseline(op, y, cfg.get("baseline", "auto"))
    _peak_memory_reset(dev)
    rec = _solve(cfg, y, op, job.prior, job.solver, sigma_y=item.sigma_y, num_samples=int(cfg.num_samples),
                 seed=int(cfg.seed), ids=[s.id], batch_size=_batch_size(cfg.batch_size), progress=bar)
    x_hat, draws = rec.mean, rec.samples[0]
    kind = solver_kind(job.solver)
    m = {"nfe": int(rec.nfe), "seconds": float(rec.seconds),
         **image_metrics(op, job.prior, x_true, rec, base, y, item.sigma_y, best_of=best_of, lpips=lpips,
                         sampler=kind != "point", ssim_window=str(cfg.get("ssim_window", "uniform7")))}
    m["peak_memory_mb"], memory_kind = peak_memory_mb(dev)
    if mode != "synthetic":
        _flag_data_consistency(m, s.id, item.sigma_y)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    saved_op = op.to_dict()
    settings = plain_settings(job.solver)
    record = {
        "x_hat": x_hat[0], "samples": draws, "y": y[0],
        "id": s.id, "seed": int(cfg.seed), "noise_seed": noise_seed, "solver_seeds": json.dumps(rec.seeds[0]),
        "num_samples": int(cfg.num_samples), "batch_size": str(cfg.batch_size),
        "solver": solver_name(job.solver), "solver_settings": json.dumps(settings), "solver_class": kind,
        "prior": json.dumps(_prior_record(job.prior, cfg)),
        "sigma_y": float(item.sigma_y), "noise": repr(job.noise) if mode == "synthetic" else "measured",
        "noise_convention": _noise_convention(job.noise, item.sigma_y, job.prior, mode),
        "mode": mode, "info": json.dumps(s.info, default=str),
        "metrics": json.dumps(m), "nfe": rec.nfe, "seconds": rec.seconds,
        "config_yaml": resolved, "config_hash": hashlib.sha256(resolved.encode()).hexdigest()[:16],
        "resume_key": resume_key,
        "baseline_name": base_name, "device": str(dev),
        "versions": json.dumps(versions()), "memory_kind": memory_kind,
        **(extra or {}),
    }
    spread = "posterior std" if kind != "point" else "spread over restarts (point estimator: not a posterior)"
    if rec.std is not None:
        record["std"] = rec.std[0]
        record["std_kind"] = spread
    if x_true is not None:
        record["x_true"] = x_true[0]
    if base is not None:
        record["baseline"] = base[0]
    # the figure first: the sample file is the completion mark that resume trusts
    if cfg.get("figures", True):
        fmt = lambda name, key: (f"{name}\nPSNR {m[f'psnr{key}']:.2f} dB, SSIM {m[f'ssim{key}']:.3f}"  # noqa: E731
                                 if f"psnr{key}" in m else name)
        panels = [("ground truth", x_true[0] if x_true is not None else None),
                  (fmt(base_name or "baseline", "_baseline"), base[0] if base is not None else None),
                  (fmt(f"{solver_name(job.solver)}" + (f" (mean of {cfg.num_samples})" if rec.std is not None else ""),
                       "_mean" if "psnr_mean" in m else ""),
                   x_hat[0]),
                  ("error |x̂ − x|", (x_hat[0] - x_true[0]).abs() if x_true is not None else None),
                  (spread, rec.std[0] if rec.std is not None else None)]
        from ..data.figures import operator_panel

        panels.append(operator_panel(op) or ("", None))
        bands = cfg.get("figure_bands", None)
        sample_figure(out_dir / "figures" / f"{s.id}.{cfg.get('figure_format', 'png')}", panels,
                      complex_image=complex_image(op), data_range=job.prior.data_range,
                      title=f"{s.id}: {op.describe()}", dpi=int(cfg.get("figure_dpi", 150)),
                      bands=None if bands is None else list(bands))
    path = write_sample(out_dir / "samples" / f"{s.id}.h5", record, trees={"operator": saved_op})
    return path, m


#: A measured sample whose residual ‖A(x̂) − y‖/(σ_y√m) exceeds this is flagged (≈ 1 is expected).
DC_WARN = 3.0


def _flag_data_consistency(m: dict, sid: str, sigma_y: float) -> None:
    """Warn, and record ``residual_chi_high`` (1/0; its mean in the summary is the fraction
    flagged), when a measured sample's data consistency is far above what σ_y predicts."""
    chi = m.get("residual_chi")
    if chi is None or not math.isfinite(chi):
        return
    m["residual_chi_high"] = int(chi > DC_WARN)
    if chi > DC_WARN:
        log.warning("%s: the data consistency ‖A(x̂) − y‖/(σ_y√m) = %.3g is far above the ≈1 that σ_y = %g "
                    "predicts: the operator (mask, kernel, coil maps) may not be the one y was measured with, or "
                    "σ_y is too small", sid, chi, sigma_y)


def _solve(cfg, y, op, prior, solver, **kw):
    """:func:`invdiff.reconstruct`, or its tiled form with ``tile_overlap`` set."""
    from ..api import reconstruct

    overlap = tile_overlap(cfg)
    kw.update(runtime_settings(cfg))
    if overlap is None:
        return reconstruct(y, op, prior, solver, **kw)
    from ..tiling import reconstruct_tiled

    return reconstruct_tiled(y, op, prior, solver, overlap=overlap, **kw)


def _batch_size(v):
    return "auto" if str(v) == "auto" else int(v)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
class _logged:
    """Iterate ``items`` and count them on a :class:`~invdiff.apps.progress.ProgressLog` (the
    samples loop's stand-in for a tqdm bar)."""

    def __init__(self, items, plog):
        self.items, self.plog = items, plog

    def __iter__(self):
        for it in self.items:
            yield it
            self.plog.update(1)

    def set_postfix(self, **kw):
        self.plog.set_postfix(**kw)

    def close(self):
        self.plog.close()


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Reconstruct every sample of ``cfg.data`` into ``out_dir``; returns the summary
    (``metrics.json``'s content). Samples whose file already exists are skipped (``resume``)."""
    from .. import distributed
    from ..api import solver_name, solver_settings
    from ..data.claims import whoami
    from ..data.results import summarize

    job = setup(cfg)
    out_dir = Path(out_dir)
    check_resume(job, out_dir, "hydra.run.dir=<another directory>; hydra.sweep.dir=… for a sweep")
    ctx = distributed.init()
    todo = distributed.pending(job.items, out_dir / "samples", resume=cfg.get("resume", True),
                               id_of=lambda it: it.sample.id, folders=[out_dir / "figures"])
    first_op = job.items[0].op
    log.info("operator: %s%s", first_op.describe(), " (from the data)" if job.items[0].sample.operator is not None else "")
    log.info("noise: %s; solver sigma_y = %g", job.noise if getattr(job.data, "mode", "") == "synthetic" else "measured data",
             job.items[0].sigma_y)
    ck = getattr(job.prior, "checkpoint", None) or {}
    log.info("prior: %s %s%s", cfg.prior.get("name", cfg.prior.get("_target_")), list(job.prior.shape),
             f" (sha256 {ck['sha256'][:12]}…)" if ck.get("sha256") else "")
    log.info("solver: %s %s", solver_name(job.solver), solver_settings(job.solver))
    log.info("data: %s; %d sample(s) × %d draw(s), %d to do%s; device %s", job.data.describe(), len(job.items),
             cfg.num_samples, len(todo), f" on rank {ctx.rank} of {ctx.world_size}" if ctx.active else "", job.device)
    from tqdm.auto import tqdm

    show = bool(cfg.get("progress", True))
    # bars on a terminal only (disable=None), so logs and CI output stay clean
    # claimed one at a time: other jobs in this directory skip them (and this one waits for theirs at the end)
    work = distributed.claimed(todo, out_dir / "samples", resume=cfg.get("resume", True), id_of=lambda it: it.sample.id)
    every = float(cfg.get("progress_log", 10) or 0)
    if show and every and not sys.stderr.isatty():  # no terminal (SLURM, a redirected log): log lines instead
        from .progress import ProgressLog

        steps = getattr(job.solver, "keywords", {}).get("steps")
        b = _batch_size(cfg.batch_size)  # draws per solver call (one callback a step); auto: all at once
        b = int(cfg.num_samples) if b == "auto" else max(int(b), 1)
        calls = -(-int(cfg.num_samples) // min(b, int(cfg.num_samples)))
        per_item = int(steps) * calls if isinstance(steps, int) and steps > 0 else None
        inner, outer_log = ProgressLog(log, "solver steps", None, every), ProgressLog(log, "samples", len(todo), every)
        outer = _logged(work, outer_log)
        reset = (lambda it: inner.reset(per_item, f"solver steps of {it.sample.id}")) if per_item else (lambda it: None)
    else:
        outer = tqdm(work, total=len(todo), desc="samples", unit="sample", disable=None if show else True)
        inner = tqdm(desc="solver steps", unit="step", leave=False, mininterval=0.5, disable=None if show else True)
        reset = lambda it: inner.reset()  # noqa: E731
    t0 = time.perf_counter()
    extra = {"rank": ctx.rank, "world_size": ctx.world_size, "process": whoami()}
    try:
        for k, it in enumerate(outer):
            reset(it)
            _, m = solve_item(job, it, out_dir, bar=inner, extra=extra)
            if k == 0:
                log.info("NFE per sample: %d", m["nfe"])
            if "psnr" in m:
                outer.set_postfix(psnr=f"{m['psnr']:.2f}")
    finally:
        inner.close()
        outer.close()
        work.close()
    result = distributed.finish(summarize, out_dir)  # rank 0 merges every rank's sample files
    if not ctx.main:
        return result
    summ = result["summary"]
    from ..data.exports import export_results

    export_results(out_dir)  # NIfTI/DICOM/GeoTIFF inputs: results in their own format (volumes/)
    elapsed = time.perf_counter() - t0
    if "psnr" in summ and summ["psnr"]["n"]:
        gain = ""
        if "psnr_baseline" in summ:
            from ..data.results import read_sample

            name = read_sample(next((out_dir / "samples").glob("*.h5")))["baseline_name"]
            gain = (f" ({summ['psnr']['mean'] - summ['psnr_baseline']['mean']:+.2f} dB over the "
                    f"{name} at {summ['psnr_baseline']['mean']:.2f} dB)")
        mean = (f"; the posterior mean's {summ['psnr_mean']['mean']:.2f} dB"
                if "psnr_mean" in summ and summ["psnr_mean"]["n"] else "")
        msg = (f"PSNR {summ['psnr']['mean']:.2f} ± {summ['psnr']['std']:.2f} dB, SSIM {summ['ssim']['mean']:.3f}"
               f"{gain}{mean} over {summ['psnr']['n']} sample(s)")
    else:
        msg = (f"data consistency ‖A(x̂) − y‖/(σ_y√m) = {summ['residual_chi']['mean']:.3g} over "
               f"{summ['residual_chi']['n']} sample(s) (no ground truth)") if "residual_chi" in summ else "done"
    log.info("%s; %.1f s. Results in %s (samples/*.h5, figures/*.png, metrics.json, metrics.csv)",
             msg, elapsed, out_dir.resolve())
    return result


def rerun(path: str | Path, device: str | None = None):
    """Re-run a stored sample from its file alone (y, operator parameters, seeds, config):
    returns the :class:`invdiff.api.Reconstruction`; with the same batch size and device type its
    samples equal the stored ones bit for bit. ``device``: by default the one the sample was
    computed on (the draws depend on the device type: CPU and CUDA generators differ)."""
    from ..data.results import read_sample

    rec = read_sample(path)
    if device is None:
        device = str(rec.get("device", "cpu"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise AppError(f"{path} was computed on {device}, and torch sees no CUDA device here: its draws came "
                           "from CUDA generators. Re-run it on a GPU, or pass device='cpu' to re-run it on the CPU "
                           "(other draws, the same distribution)")
    cfg = OmegaConf.create(rec["config_yaml"])
    legacy = [k for k in ("autocast", "compile", "checkpoint") if k in cfg.solver]
    if legacy:  # (files written when these were solver arguments: now the runtime node's)
        with open_dict(cfg):
            cfg.runtime = {**(cfg.get("runtime") or {}), **{k: cfg.solver.pop(k) for k in legacy}}
    op = operators.from_dict(rec["operator"])
    prior = build(cfg.prior, "prior").to(device)
    solver = build(cfg.solver, "solver")
    y = torch.from_numpy(rec["y"]).to(device)[None]
    return _solve(cfg, y, op.to(device) if isinstance(op, torch.nn.Module) else op, prior, solver,
                  sigma_y=rec["sigma_y"], num_samples=int(rec["num_samples"]), seed=int(rec["seed"]),
                  ids=[rec["id"]], batch_size=_batch_size(rec["batch_size"]))
