"""Fingerprints of the self-contained benchmark presets at 2 solver steps, to show that a change of
structure leaves every result the same.

    python benchmarks/preset_fingerprints.py run OUT_DIR           # run the presets, write OUT_DIR/all.json
    python benchmarks/preset_fingerprints.py compare OLD.json NEW.json

``run`` solves 2 images × 2 draws of each (preset, solver) pair below on the CPU with
``solver.steps=2`` and records every sample's metrics and the sums of |x̂| and |draws|; ``compare``
lists every value that differs (exact comparison: the same code on the same machine must give the
same bits) and every metric present in only one of the two. Run the old commit from a clean clone:
``git clone -q . /tmp/old && git -C /tmp/old checkout <rev> && PYTHONPATH=/tmp/old python
benchmarks/preset_fingerprints.py run /tmp/before``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from pathlib import Path

RUNS = [("smoke", None), ("phantom64_mri4x", "pigdm"), ("phantom64_mri8x", "dps"), ("phantom64_mc_mri4x", "ddnm"),
        ("phantom64_phase_retrieval", "dps"), ("patches64_deblur", "ddrm"), ("patches64_inpaint", "daps"),
        ("patches64_sr2", "pigdm"), ("patches64_inpaint", "reddiff"), ("patches64_deblur", "tv")]
VOLATILE = ("seconds", "peak_memory_mb")


def run(out: Path) -> None:
    try:
        from invdiff.apps import bench
    except ImportError:  # (commits before the apps package)
        from invdiff import bench
    from invdiff.data.results import read_sample

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for preset, solver in RUNS:
        ov = [f"benchmark={preset}", "progress=false", "figures=false", "num_samples=2", "device=cpu",
              "benchmark.cpu.max_images=2", *([f"solver={solver}"] if solver else []),
              *([] if solver == "tv" else ["solver.steps=2"])]
        name = f"{preset}-{solver}"
        bench.run(bench.config(*ov), out / name)
        samples = {}
        for f in sorted((out / name / "samples").glob("*.h5")):
            r = read_sample(f)
            m = r["metrics"] if isinstance(r["metrics"], dict) else json.loads(r["metrics"])
            samples[f.stem] = {"metrics": m, "x_hat_sum": float(abs(r["x_hat"]).sum()),
                               "samples_sum": float(abs(r["samples"]).sum())}
        res[name] = samples
        print(name, "done", flush=True)
    (out / "all.json").write_text(json.dumps(res, indent=1, default=str))


def compare(old: dict, new: dict) -> list[str]:
    diffs = []
    for name, samples in old.items():
        for sid, s in samples.items():
            t = new.get(name, {}).get(sid)
            if t is None:
                diffs.append(f"{name}/{sid}: missing")
                continue
            for k in ("x_hat_sum", "samples_sum"):
                if s[k] != t[k]:
                    diffs.append(f"{name}/{sid} {k}: {s[k]} -> {t[k]}")
            for k in sorted(set(s["metrics"]) | set(t["metrics"])):
                a, b = s["metrics"].get(k), t["metrics"].get(k)
                if k in VOLATILE or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
                    continue
                if a != b:
                    diffs.append(f"{name}/{sid} {k}: {a} -> {b}")
    return diffs


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        run(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        found = compare(*(json.loads(Path(p).read_text()) for p in sys.argv[2:]))
        print("\n".join(found) or "identical")
    else:
        raise SystemExit(__doc__)
