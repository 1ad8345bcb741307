"""Summaries and tables of :mod:`invdiff.apps.bench` runs: ``summary.{md,json,csv}`` per run directory
(mean ± std, Student-t 95 % interval of the mean, n, published numbers, set-level perceptual
metrics), one table over the runs of a preset (:func:`table`, ``invdiff-bench table``) and the
PSNR-versus-NFE plot. Everything is rebuilt from the sample files, never from memory."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from .common import AppError
from .runs import provenance, run_label

log = logging.getLogger("invdiff")

#: Metrics shown in tables, in this order (those present).
TABLE_METRICS = ("psnr", "ssim", "lpips", "nmse", "psnr_mean", "ssim_mean", "coverage_90", "z_median",
                 "residual_chi", "psnr_baseline")

# --------------------------------------------------------------------------------------------
# summaries and tables
# --------------------------------------------------------------------------------------------
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
    from ..data.results import read_sample, summarize
    from ..metrics import interval95, metric_bounds

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
    stats = {k: interval95((r[k] for r in rows if isinstance(r.get(k), (int, float))), metric_bounds(k)) for k in keys}
    stats = {k: v for k, v in stats.items() if v["n"]}
    set_level = {}
    if inception is not None:
        set_level = _set_metrics(files, inception)
    choice = first.get("solver_choice", first["solver"])
    published = ((bnode.get("published") or {}).get(choice)) or {}
    summary = {
        "benchmark": first.get("benchmark"), "task": bnode.get("task", ""), "solver": choice,
        "solver_class": first.get("solver_class", ""), "solver_settings": first.get("solver_settings"), "preset_settings": json.loads(first.get("preset_settings", "{}")),
        "task_settings": json.loads(first.get("task_settings", "null") or "null"),
        "cpu_caps": json.loads(first.get("cpu_caps", "null") or "null"),
        "images_in_preset": int(first.get("images_in_preset", len(rows))), "image_cap": int(first.get("image_cap", 0)),
        "images": len(rows), "num_samples": int(first.get("num_samples", 1)), "best_of": bool(first.get("best_of", False)),
        "noise_convention": first.get("noise_convention"), "paper_noise_convention": first.get("paper_noise_convention"),
        "baseline": first.get("baseline_name"), "device": first.get("device"), "memory_kind": first.get("memory_kind"),
        "metrics": stats, "set_metrics": set_level, "published": published,
        "published_source": bnode.get("published_source", ""), "run_hash": first.get("benchmark_hash"),
        "provenance": provenance(), "run_dir": str(out_dir),
    }
    from ..data.results import atomic_text, finite

    atomic_text(out_dir / "summary.json", json.dumps(finite(summary), indent=2, default=str))
    atomic_text(out_dir / "summary.md", _summary_md(summary))
    lines = ["metric,mean,std,ci_lo,ci_hi,n,published"]
    for k, s in stats.items():
        lines.append(f"{k},{s['mean']:.6g},{s['std']:.6g},{s['lo']:.6g},{s['hi']:.6g},{s['n']},{published.get(k, '')}")
    for k, v in set_level.items():
        lines.append(f"{k},{v:.6g},,,,{len(rows)},{published.get(k, '')}")
    atomic_text(out_dir / "summary.csv", "\n".join(lines) + "\n")
    msg = ", ".join(f"{k} {_fmt_ci(stats[k], _digits(k))[0]}" for k in ("psnr", "ssim") if k in stats)
    log.info("%s / %s: %s over %d image(s); summary in %s", summary["benchmark"], choice, msg or "done", len(rows),
             out_dir / "summary.md")
    return summary


def _set_metrics(files, inception) -> dict:
    """FID / Inception Score / precision–recall of the first draws against the ground truths."""
    import numpy as np

    from ..data.results import read_sample
    from ..perceptual import perceptual_metrics

    xs, ts = [], []
    for f in files:
        r = read_sample(f)
        if "x_true" not in r:
            return {}
        lo, hi = r["prior"]["data_range"]  # (read_sample decodes the JSON)
        xs.append(np.clip((r["samples"][0] - lo) / (hi - lo), 0, 1))
        ts.append(np.clip((r["x_true"] - lo) / (hi - lo), 0, 1))
    out = perceptual_metrics(torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ts)).float(),
                             inception=inception)
    return {k: float(v) for k, v in out.items() if k != "lpips" and isinstance(v, (int, float))}


def _summary_md(s: dict) -> str:
    p = s["provenance"]
    lines = [f"# {s['benchmark']} — {s['solver']}", "", s["task"], "",
             f"- solver settings: `{s['solver_settings']}` ({_sources(s)})",
             f"- {_images_ran(s)} × {s['num_samples']} posterior draw(s); "
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


def _settings_text(d: dict | None, empty: str) -> str:
    """``steps 100, zeta 0.5`` (``empty`` for none)."""
    return ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or empty


def _sources(s: dict) -> str:
    """Where the preset's settings of a run came from: the task's values and the CPU caps apart."""
    if s.get("task_settings") is None:  # (summaries written before the two were recorded apart)
        return f"from the preset: `{s['preset_settings']}`"
    return (f"task values from the preset: {_settings_text(s['task_settings'], 'none')}; "
            f"CPU caps: {_settings_text(s.get('cpu_caps'), 'none')}")


def _images_ran(s: dict) -> str:
    """``8 of 100 image(s) (CPU cap max_images 8)`` or ``4 image(s)``."""
    total = s.get("images_in_preset", s["images"])
    if s["images"] < total:
        why = f"CPU cap max_images {s['image_cap']}" if s.get("image_cap") else "the others not finished"
        return f"{s['images']} of {total} image(s) ({why})"
    return f"{s['images']} image(s)"


def _settings_cells(r: dict) -> tuple[str, str]:
    """The table's two settings cells: the task's values from the preset, and the CPU caps."""
    if r.get("task_settings") is None:  # older summaries: one mixed record
        return _settings_text(r.get("preset_settings"), "–"), "(not recorded apart)"
    return _settings_text(r["task_settings"], "–"), _settings_text(r.get("cpu_caps"), "–")


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


def app_sweep_runs(root: str | Path) -> tuple[list[Path], list[str]]:
    """The run directories of an ``invdiff -m`` sweep under ``root`` that hold samples (the sweep
    directory itself when it is a single run) and the failed runs' names
    (:func:`invdiff.apps.sweeps.sweep_runs`)."""
    from .sweeps import sweep_runs

    root = Path(root)
    if (root / "samples").is_dir():
        return [root], []
    runs, failed = sweep_runs(root)
    return [d for d in runs if any((d / "samples").glob("*.h5"))], failed


def table(root: str | Path, out: str | Path | None = None, plot: str | Path | None = None,
          command: str | None = None) -> str:
    """One markdown table over the runs of a preset (one row per run), optionally written to
    ``out`` (and a CSV beside it) and a PSNR-versus-NFE plot to ``plot``. A directory of an app sweep
    (``invdiff -m …``: run folders with ``samples/`` and no ``summary.json``) gets the sweep's table
    (:func:`invdiff.apps.sweeps.sweep_table`: one row per swept setting)."""
    runs = collect(root)
    if not runs:
        app_runs, failed = app_sweep_runs(root)
        if not app_runs:
            raise AppError(f"no summary.json (invdiff-bench runs) and no app run with samples/ (invdiff -m sweeps) "
                           f"under {root}: run the preset or the sweep first, or name its directory")
        from .sweeps import sweep_table

        text = "\n".join(sweep_table(root, app_runs, failed)) + "\n"  # (also writes root/sweep.md and sweep.csv)
        if command:
            text = text.replace("\n\n", f"\n\nCommand: `{command}`\n\n", 1)
        if out is not None:
            from ..data.results import atomic_text

            atomic_text(Path(out), text)
        if plot is not None:
            log.info("no PSNR-versus-NFE plot for an app sweep (%s); use invdiff-bench presets for it", root)
        return text
    if runs[0].get("benchmark_kind") == "gmm":
        from .bench_gmm import gmm_table

        text = gmm_table(runs, command)
    else:
        text = _image_table(runs, command)
    if out is not None:
        from ..data.results import atomic_path

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
             + f". {_count_what_ran(runs)}; scores are mean ± std over images, "
             "each the average over draws (never best-of-N); [95 % interval of the mean]. "
             "Settings: the task's values come from the preset (paper values); the CPU caps lower steps or "
             "ensembles because this ran on a CPU (a GPU run lifts them).", "",
             "| run | task settings (preset) | CPU caps | NFE | s / image | " + " | ".join(present) + " | published |",
             "|---|---|---|---|---|" + "---|" * len(present) + "---|"]
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
        task, caps = _settings_cells(r)
        label = run_label(r)
        lines.append(f"| {label} | {task} | {caps} | {nfe:.0f} | {sec:.2f} | " + " | ".join(cells) + f" | {pub} |"
                     if nfe is not None else f"| {label} | {task} | {caps} | – | – | " + " | ".join(cells) + f" | {pub} |")
    return "\n".join(line for line in lines) + "\n"


def _count_what_ran(runs) -> str:
    """The caption's count: runs, images per run (of how many in the preset, and why fewer), draws."""
    counts = sorted({r["images"] for r in runs})
    total = max(r.get("images_in_preset", r["images"]) for r in runs)
    caps = sorted({r["image_cap"] for r in runs if r.get("image_cap")})
    text = f"{len(runs)} run(s) of {'/'.join(map(str, counts))} test image(s)"
    if counts[0] < total:
        text += f" of the preset's {total}" + (f" (CPU cap max_images {'/'.join(map(str, caps))})" if caps else "")
    draws = sorted({r["num_samples"] for r in runs})
    return text + f", {'/'.join(map(str, draws))} draw(s) each"


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
    from ..data.results import atomic_path

    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


