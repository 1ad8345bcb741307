"""Reproduce one row of a published-style table from its benchmark preset.

    python examples/reproduce_table_row.py [--steps 100] [--out DIR]

`invdiff-bench benchmark=phantom64_mri4x solver=pigdm` runs the preset's task (MRI 4× of held-out
phantoms, its noise, its prior, the solver's paper settings) and writes summary.md with mean ± std and
95 % intervals beside the committed row (benchmarks/results/bench_phantom64_mri4x.md). --steps and
one image keep the example short; the preset's own settings are the default for a real reproduction.
"""

from pathlib import Path

from _run import args, invdiff

a = args(__doc__, 100)
out = Path(a.out or "outputs/examples/table_row")
invdiff("bench", ["benchmark=phantom64_mri4x", "solver=pigdm", f"solver.steps={a.steps}", "data.n=1",
                  "num_samples=1"], out)
print("summary in", out)
