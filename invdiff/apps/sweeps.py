"""A sweep's table: one row per swept setting, not one mean pooled over every run.

After ``invdiff -m solver=pigdm,ddnm solver.steps=50,100 seed=0,1,2`` each run directory holds its
Hydra overrides (``<run>/.hydra/overrides.yaml``). The keys whose values differ between runs are the
swept ones; :func:`sweep_table` writes ``sweep.md`` (and ``sweep.csv``) in the sweep directory:

* one row per run's setting (every swept key, seed included), with n (images × draws averaged per
  image), PSNR and SSIM mean ± std [95 % interval of the mean, clipped to the metric's range], the
  posterior mean's PSNR when there are several draws, NFE and seconds per image;
* when ``seed`` is swept, a second table pooled over seeds: one row per setting of the other keys.

The caption counts what ran: runs, images per run, and the runs that failed (``error.txt``).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data.results import atomic_text, is_complete, read_sample
from ..metrics import interval95, metric_bounds

COLUMNS = ("psnr", "ssim", "psnr_mean", "nfe", "seconds")


def run_overrides(run: Path) -> dict[str, str]:
    """``key → value`` of a run's command-line overrides (``.hydra/overrides.yaml``)."""
    import yaml

    f = Path(run) / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(f.read_text()) if f.exists() else []
    out = {}
    for item in items or []:
        k, _, v = str(item).partition("=")
        out[k.lstrip("+~")] = v
    return out


def sweep_runs(sweep_dir: str | Path) -> tuple[list[Path], list[str]]:
    """The run folders of a sweep directory (those with ``samples/``) and the names of its failed runs
    (those with ``error.txt``), sorted; empty when the directory does not exist."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return [], []
    entries = sorted(sweep_dir.iterdir())
    return [d for d in entries if (d / "samples").is_dir()], [d.name for d in entries if (d / "error.txt").exists()]


def _rows(run: Path) -> list[dict]:
    rows = []
    for f in sorted((run / "samples").glob("*.h5")):
        if is_complete(f):
            rows.append(read_sample(f)["metrics"])
    return rows


def _cell(values, name: str, digits: int) -> str:
    s = interval95(values, metric_bounds(name))
    if not s["n"]:
        return "–"
    text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    if s["n"] >= 2 and math.isfinite(s["lo"]):
        text += f" [{s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"
    return text


def _table(groups: dict[tuple, list[dict]], keys: list[str]) -> list[str]:
    present = [c for c in COLUMNS if any(c in r for rs in groups.values() for r in rs)]
    lines = ["| " + " | ".join([*keys, "n", *present]) + " |", "|" + "---|" * (len(keys) + 1 + len(present))]
    for setting, rs in groups.items():
        cells = [_cell([r[c] for r in rs if isinstance(r.get(c), (int, float))], c,
                       3 if c.startswith("ssim") else (0 if c == "nfe" else 2)) for c in present]
        lines.append("| " + " | ".join([*setting, str(len(rs)), *cells]) + " |")
    return lines


def sweep_table(sweep_dir: str | Path, runs: list[Path], failed: list[str] = ()) -> list[str]:
    """Write ``sweep.md``/``sweep.csv`` of a sweep (module docstring); returns the markdown lines."""
    sweep_dir = Path(sweep_dir)
    over = {r: run_overrides(r) for r in runs}
    all_keys = list(dict.fromkeys(k for o in over.values() for k in o))  # the command line's order
    swept = [k for k in all_keys if len({o.get(k, "") for o in over.values()}) > 1]
    by_run = {r: _rows(r) for r in runs}
    groups = {tuple(over[r].get(k, "") for k in swept) or (r.name,): by_run[r] for r in runs}
    keys = swept or ["run"]
    n_img = sorted({len(v) for v in by_run.values()})
    lines = [f"# Sweep {sweep_dir.name}: one row per setting", "",
             f"{len(runs)} run(s) of {', '.join(map(str, n_img))} image(s) each"
             + (f"; {len(failed)} failed ({', '.join(failed)}; see error.txt)" if failed else "")
             + ". Cells: mean ± std over images [95 % interval of the mean, clipped to the metric's range]; "
             "each image's value is the average over its draws (never best-of-N). Fixed settings: "
             + (", ".join(f"{k}={over[runs[0]][k]}" for k in all_keys if k not in swept) or "none") + ".", ""]
    lines += _table(groups, keys)
    if "seed" in swept and len(swept) > 1:
        rest = [k for k in swept if k != "seed"]
        pooled: dict[tuple, list[dict]] = {}
        for r in runs:
            pooled.setdefault(tuple(over[r].get(k, "") for k in rest), []).extend(by_run[r])
        lines += ["", "Pooled over seeds (n = images × seeds):", ""] + _table(pooled, rest)
    atomic_text(sweep_dir / "sweep.md", "\n".join(lines) + "\n")
    csv = [",".join([*keys, "run", "id", *COLUMNS])]
    for r in runs:
        setting = [over[r].get(k, "") for k in swept] or [r.name]
        for f in sorted((r / "samples").glob("*.h5")):
            if is_complete(f):
                rec = read_sample(f)
                csv.append(",".join([*setting, r.name, rec["id"], *(str(rec["metrics"].get(c, "")) for c in COLUMNS)]))
    atomic_text(sweep_dir / "sweep.csv", "\n".join(csv) + "\n")
    return lines
