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

Per image, with N posterior draws: ``psnr``/``ssim`` (and ``nmse`` for MRI, ``lpips`` with local
weights) are the *average over draws* of single-draw scores — what papers report for one sample,
with less variance; ``psnr_mean``/``ssim_mean`` score the posterior mean; ``coverage_50/90/95`` and
``z_median`` (median |z-score| over its calibrated value: 1 calibrated, > 1 over-confident) measure
calibration (:func:`invdiff.metrics.coverage`, :func:`invdiff.metrics.z_scores`); ``psnr_best_of_N`` only when
``benchmark.best_of=true`` and labelled so. Draws are clipped to the prior's data range before
scoring (complex MRI images are compared as magnitudes, unclipped). Set-level FID, Inception
Score and precision/recall (reconstructions against ground truths) come from local Inception
weights (``benchmark.metrics.inception=<path>``).

``kind: gmm`` presets are the exact-posterior benchmark (Gaussian-mixture priors, no images):
one record per random problem, sliced Wasserstein distances to exact posterior samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from . import app
from .app import AppError

log = logging.getLogger("invdiff")

#: Config keys that change how a run executes, not what it computes (excluded from the run's hash).
RUNTIME_KEYS = ("resume", "progress", "figures", "device", "batch_size", "results_dir", "bench_run")
#: Metrics shown in tables, in this order (those present).
TABLE_METRICS = ("psnr", "ssim", "lpips", "nmse", "psnr_mean", "ssim_mean", "coverage_90", "z_median",
                 "residual_chi", "psnr_baseline")


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
    return app.resolve_device(cfg.get("device", "auto")).type == "cpu"


def prepare(cfg: DictConfig) -> DictConfig:
    """The preset's per-solver settings and CPU caps merged into ``cfg.solver`` (the command line
    still wins), after checking that the files the preset needs are given."""
    b = cfg.get("benchmark")
    if b is None or b.get("name") in (None, "???"):
        raise AppError("no benchmark preset: choose one with benchmark=<name> "
                       f"({', '.join(app.choices('benchmark'))})")
    for need in b.get("requires", None) or []:
        value = OmegaConf.select(cfg, need.key, default=None)
        if value in (None, "", "???") and not os.environ.get(need.get("env") or "", ""):
            env = f" or set {need.env}" if need.get("env") else ""
            raise AppError(f"benchmark {b.name} needs {need.what}: pass {need.key}=/path/to/it{env}. "
                           f"{need.get('hint', '')} Nothing is downloaded.".strip())
    choice = (cfg.get("bench_run") or {}).get("solver")
    cli = _cli_solver_keys((cfg.get("bench_run") or {}).get("overrides", []))
    cfg = cfg.copy()
    applied = {}
    layers = [(b.get("solvers") or {}).get(choice) or {}]
    if _on_cpu(cfg) and b.get("kind", "images") != "gmm":  # (the GMM preset's steps are its variable)
        layers.append(((b.get("cpu") or {}).get("solvers") or {}).get(choice) or {})
    with open_dict(cfg):
        for layer in layers:
            for k, v in layer.items():
                if k not in cli:
                    cfg.solver[k] = v
                    applied[k] = OmegaConf.to_container(v) if isinstance(v, DictConfig) else v
        cfg.bench_run.preset_settings = applied
        if b.get("kind", "images") == "gmm" and _on_cpu(cfg) and (b.get("cpu") or {}).get("gmm"):
            cfg.benchmark.gmm = OmegaConf.merge(b.gmm, b.cpu.gmm)  # the effective problem set
    return cfg


#: Parts of the preset that do not change a run's results once :func:`prepare` has merged them
#: (the effective solver settings are in ``solver``), left out of the run's hash.
PRESET_TEXT_KEYS = ("cpu", "solvers", "tune", "published", "published_source", "task", "requires", "noise_convention")


def run_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines the results (not resume/progress/device/..., nor the
    preset's descriptions, other solvers' settings or caps)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in RUNTIME_KEYS:
        c.pop(k, None)
    for k in PRESET_TEXT_KEYS:
        c.get("benchmark", {}).pop(k, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_resume(out_dir: Path, digest: str) -> None:
    from .data.results import is_complete

    for f in sorted((out_dir / "samples").glob("*.h5")):
        if not is_complete(f):
            continue
        import h5py

        with h5py.File(f, "r") as h:
            other = h.attrs.get("benchmark_hash")
        if other is not None and str(other) != digest:
            raise AppError(f"{out_dir} holds results of another configuration ({f.name}: run hash {other}, this run "
                           f"{digest}); use another results_dir / hydra.run.dir, or delete that folder")
        return


# --------------------------------------------------------------------------------------------
# per-image metrics
# --------------------------------------------------------------------------------------------
def image_metrics(op, prior, x_true, rec, base, y, sigma_y, *, best_of: bool = False, lpips=None) -> dict:
    """The benchmark's metrics of one image from its N posterior draws (module docstring)."""
    from . import metrics as M

    draws = rec.samples[0]
    n = draws.shape[0]
    cplx = app._complex_image(op)
    lo, hi = prior.data_range
    rng = max(abs(lo), abs(hi)) if cplx else hi - lo
    clip = (lambda t: t) if cplx else (lambda t: t.clamp(lo, hi))  # noqa: E731
    show = lambda t: M.display(t, cplx)  # noqa: E731
    dc = M.data_consistency(op, draws, y.expand(n, *y.shape[1:]), sigma_y)
    m = {k: float(sum(v) / n) for k, v in dc.items()}
    if x_true is None:
        return m
    X = x_true.expand_as(draws)
    p = M.psnr(show(clip(draws)), show(X), rng)
    s = M.ssim(show(clip(draws)), show(X), rng)
    m.update(psnr=sum(p) / n, ssim=sum(s) / n, data_range=float(rng))
    if app._is_mri(op):
        m["nmse"] = sum(M.nmse(show(draws), show(X))) / n
    if n > 1 and float(draws.std(0).max()) > 0:  # (a deterministic method has no spread to calibrate)
        m["psnr_mean"] = M.psnr(show(clip(rec.mean)), show(x_true), rng)[0]
        m["ssim_mean"] = M.ssim(show(clip(rec.mean)), show(x_true), rng)[0]
        cov = M.coverage(show(draws) if cplx else draws, show(x_true)[0] if cplx else x_true[0])
        m.update({f"coverage_{round(100 * k)}": v for k, v in cov.items()})
        z = M.z_scores(show(draws) if cplx else draws, show(x_true)[0] if cplx else x_true[0])
        from scipy.stats import t as student_t

        z = z[~torch.isnan(z)].abs()  # median |z| over its calibrated value (t_{N-1} quartile): 1 = calibrated
        m["z_median"] = float(z.median()) / float(student_t.ppf(0.75, n - 1)) if z.numel() else math.nan
        if best_of:
            m[f"psnr_best_of_{n}"] = max(p)
            m[f"ssim_best_of_{n}"] = max(s)
    if base is not None:
        m["psnr_baseline"] = M.psnr(show(clip(base)), show(x_true), rng)[0]
        m["ssim_baseline"] = M.ssim(show(clip(base)), show(x_true), rng)[0]
    if lpips is not None:
        to01 = lambda t: ((show(clip(t)) - (0 if cplx else lo)) / rng).clamp(0, 1).float()  # noqa: E731
        with torch.no_grad():
            m["lpips"] = float(lpips(to01(draws).cpu(), to01(X).cpu()).mean())
    return m


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def _perceptual(cfg):
    spec = cfg.benchmark.get("metrics") or {}
    if not any(spec.get(k) for k in ("lpips_backbone", "inception")):
        return None, None
    from .perceptual import load_perceptual

    try:
        nets = load_perceptual(lpips_backbone=spec.get("lpips_backbone"), lpips_linear=spec.get("lpips_linear"),
                               lpips_net=spec.get("lpips_net", "alex"), inception=spec.get("inception"))
        return nets["lpips"], nets["inception"]
    except (FileNotFoundError, ValueError) as err:
        raise AppError(f"benchmark.metrics: {app._one_paragraph(err)}") from err


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run the preset in ``cfg`` into ``out_dir`` (resuming), then write and return its summary."""
    cfg = prepare(cfg)
    out_dir = Path(out_dir)
    if cfg.benchmark.get("kind", "images") == "gmm":
        from .bench_gmm import run_gmm

        return run_gmm(cfg, out_dir)
    lpips, inception = _perceptual(cfg)
    job = app.setup(cfg)
    digest = run_hash(cfg)
    if cfg.get("resume", True):
        _check_resume(out_dir, digest)
    from .data.results import is_complete, remove_stale_temporaries

    remove_stale_temporaries(out_dir / "samples")
    remove_stale_temporaries(out_dir / "figures")
    cap = (cfg.benchmark.get("cpu") or {}).get("max_images") if _on_cpu(cfg) else None
    items = job.items[: int(cap)] if cap else job.items
    todo = [it for it in items if not (cfg.get("resume", True) and is_complete(out_dir / "samples" / f"{it.sample.id}.h5"))]
    b = cfg.benchmark
    log.info("benchmark %s: %s", b.name, b.get("task", ""))
    log.info("solver %s %s; %d image(s) (%d to do) × %d draw(s); device %s", cfg.bench_run.solver,
             dict(cfg.bench_run.preset_settings), len(items), len(todo), cfg.num_samples, job.device)
    extra = {"benchmark": str(b.name), "benchmark_hash": digest, "best_of": bool(b.get("best_of", False)),
             "paper_noise_convention": str(b.get("noise_convention", "")),
             "benchmark_node": json.dumps(OmegaConf.to_container(b, resolve=True), default=str),
             "solver_choice": str(cfg.bench_run.solver), "preset_settings": json.dumps(dict(cfg.bench_run.preset_settings))}
    best_of = bool(b.get("best_of", False))

    def metrics_fn(op, prior, x_true, rec, base, y, sigma_y):
        return image_metrics(op, prior, x_true, rec, base, y, sigma_y, best_of=best_of, lpips=lpips)

    from tqdm.auto import tqdm

    show = bool(cfg.get("progress", True))
    inner = tqdm(desc="solver steps", unit="step", leave=False, mininterval=0.5, disable=None if show else True)
    try:
        for k, it in enumerate(tqdm(todo, desc=str(b.name), unit="image", disable=None if show else True)):
            inner.reset()
            _, m = app.solve_item(job, it, out_dir, bar=inner, metrics_fn=metrics_fn, extra=extra)
            log.info("%s: %s", it.sample.id, ", ".join(f"{k_} {m[k_]:.4g}" for k_ in ("psnr", "ssim", "nfe", "seconds")
                                                         if k_ in m))
    finally:
        inner.close()
    return report(out_dir, inception=inception, ids=[it.sample.id for it in items])


# --------------------------------------------------------------------------------------------
# summaries and tables
# --------------------------------------------------------------------------------------------
def provenance() -> dict:
    """Commit, machine (CPU model, cores), GPU, versions and date, for result tables."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno")),
            "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _fmt_ci(s: dict, digits: int = 3) -> tuple[str, str]:
    if not s or not s.get("n"):
        return "–", "–"
    f = f"{{:.{digits}f}}"
    lo, hi = s.get("lo"), s.get("hi")
    ci = f"[{f.format(lo)}, {f.format(hi)}]" if lo is not None and math.isfinite(lo) else "–"
    return f"{f.format(s['mean'])} ± {f.format(s['std'])}", ci


def _digits(metric: str) -> int:
    return 2 if metric.startswith("psnr") else (4 if metric in ("nmse", "lpips") else 3)


def report(out_dir: str | Path, *, inception=None, ids=None) -> dict:
    """Rebuild ``metrics.json``/``metrics.csv`` and write ``summary.json``/``.md``/``.csv`` of one
    run directory from its sample files."""
    from .data.results import read_sample, summarize
    from .metrics import interval95

    out_dir = Path(out_dir)
    result = summarize(out_dir)
    rows = result["samples"]
    if ids is not None:
        rows = [r for r in rows if r["id"] in set(ids)]
    files = sorted((out_dir / "samples").glob("*.h5"))
    if not rows or not files:
        raise AppError(f"{out_dir} has no finished samples to summarise")
    first = read_sample(files[0])
    bnode = json.loads(first.get("benchmark_node", "{}"))
    keys = [k for k in rows[0] if k not in ("run", "id", "seed", "solver")]
    for r in rows[1:]:
        keys += [k for k in r if k not in keys and k not in ("run", "id", "seed", "solver")]
    stats = {k: interval95(r[k] for r in rows if isinstance(r.get(k), (int, float))) for k in keys}
    stats = {k: v for k, v in stats.items() if v["n"]}
    set_level = {}
    if inception is not None:
        set_level = _set_metrics(files, inception)
    choice = first.get("solver_choice", first["solver"])
    published = ((bnode.get("published") or {}).get(choice)) or {}
    summary = {
        "benchmark": first.get("benchmark"), "task": bnode.get("task", ""), "solver": choice,
        "solver_settings": first.get("solver_settings"), "preset_settings": json.loads(first.get("preset_settings", "{}")),
        "images": len(rows), "num_samples": int(first.get("num_samples", 1)), "best_of": bool(first.get("best_of", False)),
        "noise_convention": first.get("noise_convention"), "paper_noise_convention": first.get("paper_noise_convention"),
        "baseline": first.get("baseline_name"), "device": first.get("device"), "memory_kind": first.get("memory_kind"),
        "metrics": stats, "set_metrics": set_level, "published": published,
        "published_source": bnode.get("published_source", ""), "run_hash": first.get("benchmark_hash"),
        "provenance": provenance(), "run_dir": str(out_dir),
    }
    from .data.results import _atomic_text, _finite

    _atomic_text(out_dir / "summary.json", json.dumps(_finite(summary), indent=2, default=str))
    _atomic_text(out_dir / "summary.md", _summary_md(summary))
    lines = ["metric,mean,std,ci_lo,ci_hi,n,published"]
    for k, s in stats.items():
        lines.append(f"{k},{s['mean']:.6g},{s['std']:.6g},{s['lo']:.6g},{s['hi']:.6g},{s['n']},{published.get(k, '')}")
    for k, v in set_level.items():
        lines.append(f"{k},{v:.6g},,,,{len(rows)},{published.get(k, '')}")
    _atomic_text(out_dir / "summary.csv", "\n".join(lines) + "\n")
    msg = ", ".join(f"{k} {_fmt_ci(stats[k], _digits(k))[0]}" for k in ("psnr", "ssim") if k in stats)
    log.info("%s / %s: %s over %d image(s); summary in %s", summary["benchmark"], choice, msg or "done", len(rows),
             out_dir / "summary.md")
    return summary


def _set_metrics(files, inception) -> dict:
    """FID / Inception Score / precision–recall of the first draws against the ground truths."""
    import numpy as np

    from .data.results import read_sample
    from .perceptual import perceptual_metrics

    xs, ts = [], []
    for f in files:
        r = read_sample(f)
        if "x_true" not in r:
            return {}
        lo, hi = json.loads(r["prior"] if isinstance(r["prior"], str) else json.dumps(r["prior"]))["data_range"]
        xs.append(np.clip((r["samples"][0] - lo) / (hi - lo), 0, 1))
        ts.append(np.clip((r["x_true"] - lo) / (hi - lo), 0, 1))
    out = perceptual_metrics(torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ts)).float(),
                             inception=inception)
    return {k: float(v) for k, v in out.items() if k != "lpips" and isinstance(v, (int, float))}


def _summary_md(s: dict) -> str:
    p = s["provenance"]
    lines = [f"# {s['benchmark']} — {s['solver']}", "", s["task"], "",
             f"- solver settings: `{s['solver_settings']}` (from the preset: `{s['preset_settings']}`)",
             f"- {s['images']} image(s) × {s['num_samples']} posterior draw(s); "
             + ("**best-of-N against the ground truth is reported (labelled)**" if s["best_of"] else
                "scores are averages over draws (never best-of-N)"),
             f"- noise: {s['noise_convention']}" + (f"; paper convention: {s['paper_noise_convention']}"
                                                     if s.get("paper_noise_convention") else ""),
             f"- machine: {p['cpu']} ({p['cores']} cores, {p['threads']} threads), GPU {p['gpu'] or 'none'}, "
             f"device {s['device']}; commit {p['commit']}{' (dirty)' if p['dirty'] else ''}; {p['date']}",
             f"- run directory: `{s['run_dir']}`", "",
             "| metric | mean ± std | 95 % interval of the mean | n | published |", "|---|---|---|---|---|"]
    for k, st in s["metrics"].items():
        if k in ("data_range",):
            continue
        d = _digits(k)
        ms, ci = _fmt_ci(st, d)
        pub = s["published"].get(k)
        lines.append(f"| {k} | {ms} | {ci} | {st['n']} | {pub if pub is not None else ''} |")
    for k, v in s.get("set_metrics", {}).items():
        lines.append(f"| {k} (set) | {v:.3f} | – | {s['images']} | {s['published'].get(k, '')} |")
    if s["published"]:
        lines += ["", f"Published ({s['published_source']}): {s['published']}"]
    lines += ["", f"peak memory: {s['metrics'].get('peak_memory_mb', {}).get('mean', math.nan):.0f} MB "
              f"({s['memory_kind']}); seconds per image include all draws."]
    return "\n".join(lines) + "\n"


def collect(root: str | Path) -> list[dict]:
    """All ``summary.json`` under ``root`` (the runs of a preset; folders starting with ``_``, such
    as the tuning runs in ``_val/``, are left out), sorted by solver then NFE."""
    out = []
    for f in sorted(Path(root).rglob("summary.json")):
        if any(part.startswith("_") for part in f.relative_to(root).parts):  # _val/: tuning runs
            continue
        s = json.loads(f.read_text())
        s["label"] = str(f.parent.relative_to(root)) if f.parent != Path(root) else s["solver"]
        out.append(s)
    return sorted(out, key=lambda s: (s["solver"], (s["metrics"].get("nfe") or {}).get("mean") or 0, s["label"]))


def table(root: str | Path, out: str | Path | None = None, plot: str | Path | None = None,
          command: str | None = None) -> str:
    """One markdown table over the runs of a preset (one row per run), optionally written to
    ``out`` (and a CSV beside it) and a PSNR-versus-NFE plot to ``plot``."""
    runs = collect(root)
    if not runs:
        raise AppError(f"no summary.json under {root}: run the preset first")
    if runs[0].get("benchmark_kind") == "gmm":
        from .bench_gmm import gmm_table

        text = gmm_table(runs, command)
    else:
        text = _image_table(runs, command)
    if out is not None:
        from .data.results import atomic_path

        out = Path(out)
        with atomic_path(out) as tmp:
            Path(tmp).write_text(text)
    if plot is not None:
        efficiency_plot(runs, plot)
    return text


def _image_table(runs, command) -> str:
    present = [k for k in TABLE_METRICS if any(k in r["metrics"] for r in runs)]
    r0 = runs[0]
    p = r0["provenance"]
    lines = [f"# {r0['benchmark']}", "", r0["task"], "",
             f"Command: `{command}`" if command else "",
             f"Machine: {p['cpu']}, {p['cores']} cores, GPU {p['gpu'] or 'none'}; commit {p['commit']}; {p['date']}. "
             f"Noise: {r0['noise_convention']}" + (f" (paper: {r0['paper_noise_convention']})" if r0.get("paper_noise_convention") else "")
             + f". {r0['images']} test image(s), {r0['num_samples']} draw(s) each; scores are mean ± std over images, "
             "each the average over draws (never best-of-N); [95 % interval of the mean].", "",
             "| run | preset settings (task values, CPU caps) | NFE | s / image | " + " | ".join(present) + " | published |",
             "|---|---|---|---|" + "---|" * len(present) + "---|"]
    for r in runs:
        m = r["metrics"]
        cells = []
        for k in present:
            if k not in m:
                cells.append("–")
                continue
            ms, ci = _fmt_ci(m[k], _digits(k))
            cells.append(f"{ms} {ci}" if k in ("psnr", "ssim") else ms)
        nfe = m.get("nfe", {}).get("mean")
        sec = m.get("seconds", {}).get("mean")
        pub = ", ".join(f"{k} {v}" for k, v in (r.get("published") or {}).items())
        preset = ", ".join(f"{k} {v}" for k, v in (r.get("preset_settings") or {}).items()) or "–"
        lines.append(f"| {r['label']} | {preset} | {nfe:.0f} | {sec:.2f} | " + " | ".join(cells) + f" | {pub} |"
                     if nfe is not None else f"| {r['label']} | {preset} | – | – | " + " | ".join(cells) + f" | {pub} |")
    return "\n".join(line for line in lines) + "\n"


def efficiency_plot(runs, path) -> None:
    """PSNR (mean, 95 % interval) versus NFE per solver, log-scaled NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {}
    for r in runs:
        m = r["metrics"]
        if "psnr" in m and "nfe" in m:
            by.setdefault(r["solver"], []).append((m["nfe"]["mean"], m["psnr"]["mean"], m["psnr"].get("lo"), m["psnr"].get("hi")))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, pts in sorted(by.items()):
        pts.sort()
        x = [max(a[0], 1) for a in pts]
        ax.plot(x, [a[1] for a in pts], marker="o", label=name)
        if all(a[2] is not None and a[3] is not None and math.isfinite(a[2]) for a in pts):
            ax.fill_between(x, [a[2] for a in pts], [a[3] for a in pts], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel("PSNR (dB), mean over images")
    ax.set_title(f"{runs[0]['benchmark']}: quality versus NFE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .data.results import atomic_path

    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    cfg = _attach(cfg, hc.runtime.choices.get("solver"), list(hc.overrides.task))
    try:
        run(cfg, hc.runtime.output_dir)
    except app.USER_ERRORS as err:
        msg = f"invdiff-bench: {app._one_paragraph(err)}"
        if hc.mode == RunMode.MULTIRUN:
            log.error(msg)
            Path(hc.runtime.output_dir, "error.txt").write_text(msg + "\n")
            return
        raise SystemExit(msg) from None


class SweepTable(Callback):
    """Hydra callback: after a multirun, ``table.md`` over every run of the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        try:
            table(root, root / "table.md", root / "psnr_vs_nfe.png", command="invdiff-bench -m " + " ".join(
                config.hydra.overrides.task))
            log.info("table of the sweep: %s", root / "table.md")
        except AppError as err:
            log.error("no table: %s", err)


def _table_command(argv) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="invdiff-bench table", description="One table over the runs of a preset.")
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
                                groups=app.GROUPS + ("benchmark",))
    if problem:
        raise SystemExit(f"invdiff-bench: {problem}")
    hydra.main(version_base=None, config_path="configs", config_name="bench")(_hydra_main)()


if __name__ == "__main__":
    main()
