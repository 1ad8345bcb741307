"""Run self-contained benchmark presets end to end: tune on the validation split, run every
applicable solver on the test split, write the committed table.

    python benchmarks/run_presets.py phantom64_mri4x patches64_inpaint [--solvers dps,pigdm]
        [--results bench_results] [--out benchmarks/results]

For each preset (``configs/benchmark/<name>.yaml``):

1. **Tuning** (``benchmark.tune``: ``{solver: {setting: [values]}}``): each value is run on the
   preset's validation split (``data.split=val``, one draw per image) and the best mean PSNR wins.
   The test split is never looked at while tuning.
2. **Test**: every solver config (``configs/solver/``) with the preset's settings, the tuned values
   and the CPU caps (on a CPU), through :func:`invdiff.apps.bench.run` (resumable: rerunning the
   command continues). Solvers whose needs the operator does not meet are listed as not applicable.
3. ``<out>/bench_<preset>.md``: :func:`invdiff.apps.bench.table` over the test runs, plus the tuning
   table and the solvers that did not apply.

``--priors brain64,phantom64`` runs (tunes and tests) every solver that uses a prior once per prior
(the preset's own prior unlabelled, the others as ``prior=<name>`` overrides — or ``prior=invdiff_file
prior.path=<file>`` for a ``.safetensors`` path: their rows are labelled ``<solver>/prior=<name>…``);
the prior-free solvers (:data:`PRIOR_FREE`) run once. ``--tag v2`` writes ``bench_<preset>_v2.md``
(beside, not over, the preset's committed table).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from invdiff.apps import bench
from invdiff.apps.common import AppError, choices

ORDER = ("pinv", "tv", "dpir", "ddrm", "ddnm", "pigdm", "diffpir", "dps", "mcg", "reddiff", "tmpd", "score_sde",
         "daps", "pnpdm", "mcgdiff")


#: Solvers that never call the prior (run once when several priors are compared).
PRIOR_FREE = ("pinv", "tv")


def _dirname(solver: str, overrides: list[str]) -> str:
    return solver + ("/" + ",".join(sorted(overrides)) if overrides else "")


def _run(preset: str, solver: str, extra: list[str], root: Path, split: str = "test") -> dict:
    overrides = [f"benchmark={preset}", f"solver={solver}", "progress=false", *extra]
    if split != "test":
        overrides += [f"data.split={split}", "num_samples=1", "figures=false"]
    cfg = bench.config(*overrides)
    out = root / preset / ("_val" if split != "test" else "") / _dirname(solver, extra)
    return bench.run(cfg, out)


def tune(preset: str, root: Path, only, extra: tuple[str, ...] = (), skip=()) -> tuple[dict, list[str]]:
    cfg = bench.config(f"benchmark={preset}")
    grid = OmegaConf.to_container(cfg.benchmark.get("tune") or {})
    best, lines = {}, []
    for solver, settings in grid.items():
        if (only and solver not in only) or solver in skip:
            continue
        for key, values in settings.items():
            scores = {}
            for v in values:
                s = _run(preset, solver, [*extra, f"solver.{key}={v}"], root, split="val")
                scores[v] = s["metrics"]["psnr"]["mean"]
            pick = max(scores, key=scores.get)
            best.setdefault(solver, []).append(f"solver.{key}={pick}")
            label = solver + "".join(f" ({e})" for e in extra)
            lines.append(f"| {label} | {key} | " + ", ".join(f"{v}: {scores[v]:.2f}" for v in values)
                         + f" | **{pick}** |")
    return best, lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="+")
    p.add_argument("--solvers", default=None, help="comma-separated subset (default: every solver config)")
    p.add_argument("--results", default="bench_results")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--priors", default=None, help="comma-separated priors to compare (default: the preset's own)")
    p.add_argument("--tag", default=None, help="write bench_<preset>_<tag>.md (and its figure)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    only = set(a.solvers.split(",")) if a.solvers else None
    solvers = [s for s in ORDER if s in choices("solver")] + [s for s in choices("solver") if s not in ORDER]
    root = Path(a.results)
    for preset in a.presets:
        t0 = time.time()
        priors = a.priors.split(",") if a.priors else [None]
        own = bench.config(f"benchmark={preset}").prior.get("name")
        tune_lines, skipped = [], []
        for k, prior in enumerate(priors):
            extra = () if prior in (None, own) else (("prior=invdiff_file", f"prior.path={prior}")
                                                     if prior.endswith(".safetensors") else (f"prior={prior}",))
            skip = PRIOR_FREE if k else ()
            tuned, lines = tune(preset, root, only, extra, skip)
            tune_lines += lines
            for solver in solvers:
                if (only and solver not in only) or solver in skip:
                    continue
                try:
                    _run(preset, solver, [*extra, *tuned.get(solver, [])], root)
                except AppError as err:
                    if "Solvers that accept this operator" not in str(err):
                        raise
                    if solver not in skipped:
                        skipped.append(solver)
        cmd = "python benchmarks/run_presets.py " + " ".join(sys.argv[1:] if argv is None else argv)
        stem = f"bench_{preset}" + (f"_{a.tag}" if a.tag else "")
        text = bench.table(root / preset, None, Path(a.out) / f"{stem}_nfe.png", command=cmd)
        parts = [text]
        if tune_lines:
            parts += ["", "Tuned on the validation split (mean PSNR in dB over its images, one draw each; never the "
                      "test images):", "", "| solver | setting | validation PSNR per value | chosen |", "|---|---|---|---|",
                      *tune_lines]
        if skipped:
            parts += ["", f"Not applicable (the operator lacks what they need): {', '.join(skipped)}."]
        parts += ["", f"Wall time of this command: {(time.time() - t0) / 60:.1f} min."]
        out = Path(a.out) / f"{stem}.md"
        out.write_text("\n".join(parts) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
