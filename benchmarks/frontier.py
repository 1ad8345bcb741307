"""The frontier solvers (issue 29) on the self-contained presets, beside the existing solvers.

    python benchmarks/frontier.py phantom64_mri4x phantom64_mri8x patches64_inpaint patches64_deblur \
        patches64_sr2 [--solvers dds,fps_smc,lgd,sitcom,enkg] [--results bench_frontier]

For each preset the new solvers run through ``benchmarks/run_presets.py`` (same preset, same test
images, same noise draws, the preset's CPU caps; resumable through ``--results``), and
``benchmarks/results/frontier_<preset>.md`` holds:

1. the new solvers' table (the columns of every preset table);
2. the committed rows of ``benchmarks/results/bench_<preset>.md`` for the existing solvers, with
   the commit that made them (the preset and its test split are unchanged since; the preset
   fingerprints in ``benchmarks/results`` guard that);
3. for each new solver, the gap to the best existing posterior sampler and to the best existing
   run of any kind (baselines included), with the NFE ratio.

``benchmarks/results/frontier.md`` collects part 3 of every preset.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import run_presets  # benchmarks/ is on sys.path when this file runs as a script

from invdiff.solvers import SOLVER_CLASSES

RESULTS = Path(__file__).resolve().parent / "results"
NEW = ("dds", "fps_smc", "lgd", "sitcom", "enkg")


def table_rows(text: str) -> tuple[str, list[str]]:
    """The header line and the row lines of the first ``| run |`` table of a preset table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| run |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return lines[start], rows


def cells(header: str, row: str) -> dict[str, str]:
    names = [c.strip() for c in header.strip("|").split("|")]
    values = [c.strip() for c in row.strip("|").split("|")]
    return dict(zip(names, values))


def mean_of(cell: str) -> float | None:
    m = re.match(r"\s*(-?[0-9.]+)", cell)
    return float(m.group(1)) if m else None


def solver_of(run: str) -> str:
    return run.split("/")[0]


def commit_of(text: str) -> str:
    m = re.search(r"commit ([0-9a-f]{6,40})", text)
    return m.group(1) if m else "unknown"


def gaps(header: str, old: list[str], new: list[str]) -> list[str]:
    """One line per new run: PSNR gap to the best existing sampler and to the best existing run."""
    olds = [cells(header, r) for r in old]
    samplers = [c for c in olds if SOLVER_CLASSES.get(solver_of(c["run"])) and
                SOLVER_CLASSES[solver_of(c["run"])].kind != "point"]
    best_s = max(samplers, key=lambda c: mean_of(c["psnr"]) or -1e9)
    best_a = max(olds, key=lambda c: mean_of(c["psnr"]) or -1e9)
    out = []
    for row in new:
        c = cells(header, row)
        p, nfe = mean_of(c["psnr"]), mean_of(c["NFE"])
        parts = []
        for what, b in (("best existing sampler", best_s), ("best existing run", best_a)):
            bp, bn = mean_of(b["psnr"]), mean_of(b["NFE"])
            ratio = f"{nfe / bn:.2f}×" if bn else "–"
            parts.append(f"{p - bp:+.2f} dB vs {what} {b['run']} ({bp:.2f} dB, NFE {bn:.0f}; NFE ratio {ratio})")
        out.append(f"- **{c['run']}** ({p:.2f} dB, NFE {nfe:.0f}): " + "; ".join(parts))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="+")
    p.add_argument("--solvers", default=",".join(NEW))
    p.add_argument("--results", default="bench_frontier")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    out = Path(a.out)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = ["# Frontier solvers on the self-contained presets", "",
               f"Command: `python benchmarks/frontier.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
               f"(commit {head}). Per preset: benchmarks/results/frontier_<preset>.md.", ""]
    with tempfile.TemporaryDirectory() as scratch:
        for preset in a.presets:
            run_presets.main([preset, "--solvers", a.solvers, "--results", a.results, "--out", scratch])
            new_text = (Path(scratch) / f"bench_{preset}.md").read_text()
            old_text = (RESULTS / f"bench_{preset}.md").read_text()
            header, new_rows = table_rows(new_text)
            old_header, old_rows = table_rows(old_text)
            if old_header != header:
                raise SystemExit(f"{preset}: the committed table's columns differ from this run's; rerun the preset")
            lines = gaps(header, old_rows, new_rows)
            text = "\n".join([
                new_text.rstrip().replace(f"# {preset}", f"# {preset}: frontier solvers", 1), "",
                f"## Existing solvers (rows of bench_{preset}.md, commit {commit_of(old_text)}: same preset, same "
                "test images and noise draws)", "", header, "|" + "---|" * (header.count("|") - 1), *old_rows, "",
                "## Gaps (PSNR of single draws, mean over images)", "", *lines, ""])
            (out / f"frontier_{preset}.md").write_text(text)
            summary += [f"## {preset}", "", *lines, ""]
            print(f"wrote {out / f'frontier_{preset}.md'}")
    (out / "frontier.md").write_text("\n".join(summary))


if __name__ == "__main__":
    main()
