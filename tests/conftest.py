import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker (torch, BLAS): workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))
