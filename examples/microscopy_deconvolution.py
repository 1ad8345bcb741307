"""Fluorescence-microscopy deconvolution with Poisson–Gaussian noise.

    python examples/microscopy_deconvolution.py [--steps 100] [--out DIR]

scikit-image's bundled `cell` image (a microscopy image; in patches64's training set — give your own
held-out image with data.path=), blurred by a Gaussian PSF (σ 2 px, 9×9) with shot noise (gain 1/255)
and Gaussian read noise (σ 0.01), restored with DiffPIR and the shipped patches64 prior; 4 posterior
draws give a per-pixel spread beside the mean. The solvers' likelihood is Gaussian: σ_y = 0.045 is
the Poisson–Gaussian noise's std at the image's mean intensity (√(gain · 0.5 + 0.01²)).
"""

from pathlib import Path

import numpy as np
from _run import args, invdiff
from skimage import data, transform

a = args(__doc__, 100)
out = Path(a.out or "outputs/examples/microscopy")
out.mkdir(parents=True, exist_ok=True)
cell = transform.resize(data.cell().astype(np.float64) / 255.0, (64, 64), anti_aliasing=True)
np.save(out / "cell.npy", cell)
invdiff("cli", ["operator=gaussian_blur", "noise=poisson_gaussian", "sigma_y=0.045", "prior=patches64", "solver=diffpir",
                f"solver.steps={a.steps}", "num_samples=4", "data=files", f"data.path={out / 'cell.npy'}"], out / "run")
print("results in", out / "run")
