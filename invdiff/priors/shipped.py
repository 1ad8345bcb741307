"""Priors shipped inside the package (``invdiff/weights/``), loadable by name: ``load("phantom64")``.

================  ===============================================================================
name              what
================  ===============================================================================
``phantom64``     64×64 grayscale MRI/CT-style phantoms (``invdiff.phantoms``), trained by
                  ``invdiff-train`` (command, log, loss curve and samples in ``invdiff/weights/``)
``patches64``     64×64 grayscale crops at random scales of scikit-image's bundled scientific and
                  natural images (microscopy, astronomy, retina, textures, text, photographs);
                  ``camera`` and ``moon`` held out for evaluation
``phantom64_flow``  the ``phantom64`` data, network size and budget as a rectified flow
                  (:class:`~invdiff.priors.flow.FlowPrior`, linear path; ``invdiff-train
                  settings.objective=flow``)
``patches64_flow``  the ``patches64`` data, network size and budget as a rectified flow
``phantom64_reflow``  ``phantom64_flow`` straightened by reflow (the 2-rectified flow)
``phantom64_cm``  ``phantom64`` distilled into a consistency model
                  (:class:`~invdiff.priors.consistency.ConsistencyPrior`; ``invdiff-train
                  settings.objective=consistency_distillation settings.teacher=phantom64``)
``patches64_cm``  ``patches64`` distilled into a consistency model
``phantom64_ambient``  the ``phantom64`` network learned by ambient diffusion from 4×-undersampled,
                  σ_y = 0.01 single-coil k-space only (``invdiff-train data=measurements
                  settings.objective=ambient``; :mod:`invdiff.training.corrupted`)
``patches64_noisy``  the ``patches64`` network learned from crops with σ_n = 0.1 noise only
                  (``settings.objective=noisy``, Tweedie); its σ range starts at the noise floor
``phantom64_bridge_mri4x``  a bridge (:class:`~invdiff.priors.bridge.BridgePrior`) from zero-filled
                  4× MRI (σ_y 0.01) to phantoms, for the bridge solvers ``i2sb``, ``indi``, ``cddb``
``patches64_bridge_sr2``  a bridge from ×2 bicubic super-resolution's A⁺y (σ_y 0.025) to patches
``brain64``       real anatomy: ``phantom64``'s network and recipe trained on the 94 axial
                  training-slab slices of the MNI152 T1 template (``invdiff-train data=brain``;
                  :mod:`invdiff.data.brain`); evaluated on the held-out axial slab
``patches64_v2``  ``patches64`` trained on: from its step-8 000 state to 16 000 steps with 90°
                  rotations and gain augmentation at half the learning rate, the EMA chosen by its
                  validation score on images no patches prior saw (``settings.keep_best``)
================  ===============================================================================

Each name is registered in :data:`invdiff.priors.registry.NAMED_PRIORS`, which is how
:func:`invdiff.priors.load` knows it; a new shipped prior adds its name to :data:`SHIPPED`.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from .loaders import load
from .registry import register_named_prior

SHIPPED = ("phantom64", "patches64", "phantom64_flow", "patches64_flow", "phantom64_reflow", "phantom64_cm",
           "patches64_cm", "phantom64_ambient", "patches64_noisy",
           "phantom64_bridge_mri4x", "patches64_bridge_sr2", "brain64", "patches64_v2")


def shipped_prior_path(name: str) -> Path:
    """The file of a shipped prior (a clear error for unknown names or a missing file)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped prior {name!r}; shipped: {', '.join(SHIPPED)}")
    path = Path(str(resources.files("invdiff") / "weights" / f"{name}.safetensors"))
    if not path.is_file():
        raise FileNotFoundError(f"the shipped prior {name!r} is missing from this installation ({path}); "
                                "reinstall invdiff or train it with invdiff-train")
    return path


def load_shipped(name: str, **kwargs):
    """:func:`invdiff.priors.load` of a shipped prior (for configs: ``configs/prior/phantom64.yaml``)."""
    return load(shipped_prior_path(name), **kwargs)


for _name in SHIPPED:
    register_named_prior(_name, functools.partial(shipped_prior_path, _name))
