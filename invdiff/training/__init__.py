"""Training the project's networks (``invdiff-train``): EDM denoising score matching, flow matching,
reflow, consistency distillation / training, and from corrupted data (ambient diffusion, noisy
data) without clean images.

The package: :mod:`~invdiff.training.settings` (:class:`TrainSettings`, the data protocol),
:mod:`~invdiff.training.objectives` (EDM, flow, reflow), :mod:`~invdiff.training.consistency`
(consistency distillation and training), :mod:`~invdiff.training.corrupted` (ambient, noisy:
measurements only), :mod:`~invdiff.training.em` (expectation–maximisation with the package's solvers), :mod:`~invdiff.training.trainer` (:class:`Trainer`: the loop,
checkpoints, export). A new objective adds its loss in a module here, its name to ``OBJECTIVES`` and
its branch in the trainer.

Data are mapped from [0, 1] to the model range [−1, 1]; Adam with a linear warm-up, an exponential
moving average (EMA) of the weights, random horizontal/vertical flips.

Everything needed to continue lives in ``<out>/checkpoint.safetensors`` — network, EMA and Adam
state, the random generator's state, the step and the loss history — written atomically every
``ckpt_every`` steps and at the end, so a killed run resumes where its last checkpoint left it
and continues bit for bit as if it had not stopped. ``<out>/prior.safetensors`` is the EMA network
in the project's prior format (:func:`invdiff.priors.save`, read back by :func:`invdiff.priors.load`).

Data-parallel: under ``torchrun`` (``WORLD_SIZE > 1``) each rank draws its own batches (its
generator is seeded with ``seed + rank``), gradients are averaged by DDP, and rank 0 writes.
"""

from .consistency import cd_loss, cm_distance, ct_level_probs, ct_levels, ct_loss, karras_levels
from .corrupted import FourierDomain, PixelDomain, corrupted_loss, make_domain, noise_floor
from .em import EMRun, expectation_maximisation, fit_gaussian, gaussian_em, gaussian_em_posterior_samples, \
    gaussian_posterior_samples
from .objectives import edm_loss, flow_loss, sample_t
from .settings import (CKPT_VERSION, CM_DISTANCES, CORRUPTED_OBJECTIVES, OBJECTIVE_ALIASES, OBJECTIVES, T_SAMPLINGS, TrainData,
                       TrainSettings)
from .trainer import Trainer

__all__ = ["EMRun", "expectation_maximisation", "fit_gaussian", "gaussian_em", "gaussian_em_posterior_samples",
           "gaussian_posterior_samples", "corrupted_loss", "make_domain", "noise_floor", "FourierDomain", "PixelDomain", "CORRUPTED_OBJECTIVES",
           "Trainer", "TrainSettings", "TrainData", "OBJECTIVES", "OBJECTIVE_ALIASES", "T_SAMPLINGS", "CM_DISTANCES",
           "CKPT_VERSION", "edm_loss", "flow_loss", "sample_t", "karras_levels", "cm_distance", "cd_loss", "ct_levels",
           "ct_level_probs", "ct_loss"]
