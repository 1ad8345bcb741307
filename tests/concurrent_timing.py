"""Wall time of one process against two started together in one run directory (README, "Reliability").

    python tests/concurrent_timing.py [overrides ...]

Default: 8 held-out phantoms, phantom64 prior, 4× MRI, ΠGDM 30 steps, figures on, one thread per
process (OMP_NUM_THREADS=1). Prints each setting's wall time from start to the last exit (Python
and torch start-up included) and the run time inside the processes (``app.run``), and how many
samples each process computed; ``ROUNDS`` (3) alternating rounds, best and median."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_concurrent_runs import finish, start_together  # noqa: E402

DEFAULT = ["data.n=8", "solver.steps=30", "num_samples=1", "progress=false"]


def measure(n: int, overrides: list[str]) -> tuple[float, float, Counter]:
    work = Path(tempfile.mkdtemp(prefix="invdiff-timing-"))
    try:
        t0 = time.perf_counter()
        logs = finish(start_together("app", work / "run", overrides, n, work / "work"))
        wall = time.perf_counter() - t0
        inside = max(float(line.split()[1]) for log in logs for line in log.splitlines() if line.startswith("WALL"))
        per = Counter(line.split()[1] for line in (work / "work" / "counts").read_text().splitlines())
        assert sum(per.values()) == len(list((work / "run" / "samples").glob("*.h5")))
        return wall, inside, per
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    overrides = sys.argv[1:] or DEFAULT
    print("overrides:", " ".join(overrides))
    rounds = int(os.environ.get("ROUNDS", "3"))
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):  # alternating, so that a load from elsewhere hits both settings alike
        for n in (1, 2):
            wall, inside, per = measure(n, overrides)
            times[n].append(wall)
            print(f"{n} process(es): {wall:.1f} s wall ({inside:.1f} s in app.run); samples per process "
                  f"{sorted(per.values(), reverse=True)}", flush=True)
    for n, t in times.items():
        print(f"{n} process(es): best {min(t):.1f} s, median {statistics.median(t):.1f} s of {len(t)}")
    print(f"two together / one: best {min(times[2]) / min(times[1]):.2f}, "
          f"median {statistics.median(times[2]) / statistics.median(times[1]):.2f}")


if __name__ == "__main__":
    main()
