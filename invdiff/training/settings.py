"""Settings of a training run (:class:`TrainSettings`, stored in the checkpoint and the exported prior's
folder) and the data protocol (:class:`TrainData`); the objectives are described in
:mod:`invdiff.training`.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Protocol

import torch
from torch import Tensor

from ..priors.checkpoints import CheckpointError
from ..priors.flow import make_path


OBJECTIVES = ("edm", "flow", "reflow", "consistency_distillation", "consistency_training", "ambient", "noisy", "em",
              "bridge")
#: the objectives that train on measurements (``data=measurements``) and never on clean images
CORRUPTED_OBJECTIVES = ("ambient", "noisy", "em")
#: short names accepted for the objectives (``settings.objective=cd``); stored under the full name
OBJECTIVE_ALIASES = {"cd": "consistency_distillation", "ct": "consistency_training"}
T_SAMPLINGS = ("logit_normal", "uniform")
CM_DISTANCES = ("pseudo_huber", "l2")
#: ``settings.precision``: float32, or autocast to bfloat16 / float16 (weights, EMA and Adam stay float32)
PRECISIONS = ("fp32", "bf16", "fp16")

CKPT_VERSION = 1



class TrainData(Protocol):
    """Training images: ``sample(n, generator) -> [n, C, H, W]`` float32 in [0, 1]."""

    channels: int
    size: int

    def sample(self, n: int, generator: torch.Generator) -> Tensor: ...

    def describe(self) -> str: ...


@dataclass
class TrainSettings:
    """Hyper-parameters of a run (stored in the checkpoint and the exported prior's folder)."""

    steps: int = 20000
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 500
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 500
    log_every: int = 50
    arch: dict = field(default_factory=lambda: dict(width=32, mults=[1, 2, 2], blocks=1, emb=128))
    objective: str = "edm"          # "edm", "flow" or "reflow" (module docstring)
    path: str = "linear"            # flow/reflow: the interpolant path (invdiff.priors.flow.PATHS)
    t_sampling: str = "uniform"     # flow/reflow: "uniform" (Liu; Lipman) or "logit_normal" (t_mean, t_std)
    t_mean: float = 0.0
    t_std: float = 1.0
    teacher: str | None = None      # reflow: the 1-rectified flow's prior file; cd: the diffusion prior (or shipped name)
    teacher_steps: int = 8          # reflow: Heun steps of the teacher's ODE per coupling
    cm_levels: int = 18             # cd: N, levels of the Karras grid (Song et al. 2023, CIFAR-10)
    cm_target_ema: float = 0.95     # cd: μ of the target network θ⁻ (Song et al. 2023, CIFAR-10)
    cm_distance: str = "pseudo_huber"  # cd/ct: "pseudo_huber" (iCT, c = 0.00054·√d) or "l2"
    ct_s0: int = 10                 # ct: iCT curriculum, initial and final number of steps (N − 1)
    ct_s1: int = 1280
    ct_p_mean: float = -1.1         # ct: iCT log-normal level distribution
    ct_p_std: float = 2.0
    ambient_delta: float = 0.2      # ambient: fraction of the observed columns (MRI) / pixels dropped further
    em_rounds: int = 4              # em: rounds of E-step (posterior sampling) + M-step (training)
    em_solver: str = "ddnm"         # em: the E-step's solver (invdiff.solvers.SOLVERS)
    em_solver_steps: int = 50       # em: its steps
    em_m_steps: int = 2000          # em: training steps per M-step (continuing from the last round)
    em_init: str = "gaussian"       # em: θ₀ — "gaussian" (closed-form EM) or a prior file / shipped name
    em_gaussian_iters: int = 20     # em: closed-form EM iterations of the Gaussian θ₀
    bridge_operator: str = "mri"    # bridge: the operator family, "mri" or "sr" (invdiff.training.bridge)
    bridge_sigma_y: float = 0.01    # bridge: the measurement noise of the family
    bridge_acceleration: float = 4.0  # bridge, mri: fastMRI random mask, a fresh one per image
    bridge_center_fraction: float = 0.08
    bridge_factor: int = 2          # bridge, sr: Downsampling factor and filter
    bridge_filter: str = "bicubic"
    bridge_b: float = 0.15          # bridge: diffusion coefficient b of the Brownian bridge (0: InDI's path)
    bridge_sigma_1: float = 0.3     # bridge: typical RMS of x₁ − x₀ in model units (the network's conditioning)
    augment_rot90: bool = False     # clean images: random k·90° rotations (invdiff.training.augment)
    augment_scale: list | None = None  # clean images: isotropic zoom s ~ U[lo, hi] about the centre
    augment_gain: float = 0.0       # clean images: intensities × U[1 − gain, 1]
    augment_padding: str = "zeros"  # zoom's outside: "zeros" (dark background) or "reflection"
    val_every: int = 0              # edm: validation denoising of held-out images every N steps (val.csv; 0: off)
    keep_best: bool = False         # edm: also export prior_best.safetensors, the EMA with the best validation score
    val_samples: int = 0            # edm: also draw N EMA samples at each validation: patch Fréchet distance (val_samples.csv)
    precision: str = "fp32"         # fp32 | bf16 | fp16: autocast of the training forward pass (fp16: CUDA, loss scaling)
    compile: bool = False           # torch.compile the training forward pass (weights, checkpoints and exports unchanged)
    max_minutes: float | None = None  # stop at the first step past this wall-clock budget, checkpointed (rerun continues)

    def __post_init__(self):
        self.objective = OBJECTIVE_ALIASES.get(self.objective, self.objective)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"settings.objective must be one of {OBJECTIVES} (or the short names "
                             f"{', '.join(OBJECTIVE_ALIASES)}), got {self.objective!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"settings.t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        make_path(self.path)
        if self.objective == "reflow" and not self.teacher:
            raise ValueError("objective=reflow needs settings.teacher: the flow prior (file or shipped name) whose "
                             "ODE makes the couplings, e.g. settings.teacher=phantom64_flow")
        if self.objective == "reflow" and (isinstance(self.teacher_steps, bool) or int(self.teacher_steps) < 1):
            raise ValueError(f"settings.teacher_steps must be >= 1, got {self.teacher_steps!r}")
        if self.objective == "consistency_distillation" and not self.teacher:
            raise ValueError("objective=consistency_distillation needs settings.teacher: the diffusion prior (file or shipped name) whose "
                             "PF-ODE is distilled, e.g. settings.teacher=phantom64")
        if self.cm_distance not in CM_DISTANCES:
            raise ValueError(f"settings.cm_distance must be one of {CM_DISTANCES}, got {self.cm_distance!r}")
        if int(self.cm_levels) < 2:
            raise ValueError(f"settings.cm_levels must be >= 2, got {self.cm_levels!r}")
        if not 0.0 <= float(self.cm_target_ema) < 1.0:
            raise ValueError(f"settings.cm_target_ema must be in [0, 1), got {self.cm_target_ema!r}")
        if not 0.0 < float(self.ambient_delta) < 1.0:
            raise ValueError(f"settings.ambient_delta must be in (0, 1), got {self.ambient_delta!r}")
        if self.objective == "em" and (int(self.em_rounds) < 1 or int(self.em_m_steps) < 1 or int(self.em_solver_steps) < 1):
            raise ValueError(f"settings.em_rounds, em_m_steps and em_solver_steps must be >= 1, got {self.em_rounds}, "
                             f"{self.em_m_steps}, {self.em_solver_steps}")
        if self.objective == "bridge":
            from .bridge import family_spec

            family_spec(self.bridge_operator, sigma_y=self.bridge_sigma_y)
            if not (float(self.bridge_b) >= 0 and float(self.bridge_sigma_1) > 0 and float(self.bridge_sigma_y) >= 0):
                raise ValueError(f"settings.bridge_b must be >= 0, bridge_sigma_1 > 0 and bridge_sigma_y >= 0, got "
                                 f"{self.bridge_b}, {self.bridge_sigma_1}, {self.bridge_sigma_y}")
        from .augment import check_augment, is_on

        check_augment(self.augment_rot90, self.augment_scale, self.augment_gain, self.augment_padding)
        if is_on(self) and (self.objective in CORRUPTED_OBJECTIVES or self.objective == "reflow"):
            raise ValueError(f"settings.augment_* transform clean images; objective={self.objective} trains on "
                             + ("measurements (a rotated or zoomed measurement is not the measurement it was)"
                                if self.objective in CORRUPTED_OBJECTIVES else "the teacher's ODE couplings")
                             + ": leave augment_rot90=false, augment_scale=null, augment_gain=0")
        if isinstance(self.val_every, bool) or int(self.val_every) < 0:
            raise ValueError(f"settings.val_every must be a whole number >= 0 (0: no validation), got {self.val_every!r}")
        if (int(self.val_every) > 0 or self.keep_best) and self.objective != "edm":
            raise ValueError(f"settings.val_every / keep_best score the EDM denoiser on held-out images; objective="
                             f"{self.objective} has another network output: leave val_every=0 and keep_best=false")
        if isinstance(self.val_samples, bool) or int(self.val_samples) < 0 or (int(self.val_samples) and int(self.val_every) <= 0):
            raise ValueError(f"settings.val_samples={self.val_samples!r}: a whole number >= 0 of EMA samples drawn at each "
                             "validation (settings.val_every > 0 as well), e.g. 32")
        if self.keep_best and int(self.val_every) <= 0:
            raise ValueError("settings.keep_best=true picks the EMA weights by their validation score: set "
                             "settings.val_every=<steps> as well (e.g. the checkpoint interval)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"settings.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"settings.compile must be true or false, got {self.compile!r}")
        if self.max_minutes is not None and (isinstance(self.max_minutes, bool) or not float(self.max_minutes) > 0):
            raise ValueError(f"settings.max_minutes must be a positive number of minutes (null: no budget), got "
                             f"{self.max_minutes!r}")
        if self.max_minutes is not None and self.objective == "em":
            raise ValueError("settings.max_minutes stops one training run part-way; objective=em is rounds of sampling "
                             "and training that each run to the end: leave settings.max_minutes=null")
        if not 1 <= int(self.ct_s0) <= int(self.ct_s1):
            raise ValueError(f"settings.ct_s0, ct_s1 must satisfy 1 <= s0 <= s1, got {self.ct_s0}, {self.ct_s1}")


def check_resumable(path, saved: dict, settings: TrainSettings) -> None:
    """Refuse to resume a run under another training objective: the objective itself, the flow
    path and the time distribution of flow/reflow, reflow's teacher and its steps, consistency
    distillation's teacher, levels, target EMA and distance, consistency training's curriculum
    (which depends on ``steps``), level distribution and distance. The same
    weights (``arch``) would otherwise silently continue learning another target (e.g. the
    velocity of another path), and the exported prior would be labelled with the new path.
    Settings missing from an older checkpoint take the defaults they had then."""
    defaults = {f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING}
    old = {k: saved.get(k, defaults.get(k)) for k in defaults}
    old["objective"] = OBJECTIVE_ALIASES.get(old["objective"], old["objective"])  # (stored as "cd" before)
    new = asdict(settings)
    keys = ["objective"]
    if settings.objective in ("flow", "reflow"):
        keys += ["path", "t_sampling"] + (["t_mean", "t_std"] if settings.t_sampling == "logit_normal" else [])
    if settings.objective == "reflow":
        keys += ["teacher", "teacher_steps"]
    if settings.objective == "consistency_distillation":
        keys += ["teacher", "cm_levels", "cm_target_ema", "cm_distance"]
    if settings.objective == "consistency_training":
        keys += ["steps", "ct_s0", "ct_s1", "ct_p_mean", "ct_p_std", "cm_distance"]
    if settings.objective == "ambient":
        keys += ["ambient_delta"]
    if settings.objective == "bridge":
        keys += ["teacher", "bridge_operator", "bridge_sigma_y", "bridge_b", "bridge_sigma_1"]
        keys += ["bridge_acceleration", "bridge_center_fraction"] if settings.bridge_operator == "mri" else \
            ["bridge_factor", "bridge_filter"]
    for k in keys:
        a, b = old.get(k), new[k]
        same = make_path(a) == make_path(b) if k == "path" and a is not None else a == b
        if not same:
            raise CheckpointError(f"{path} was trained with settings.{k}={a!r}, but this run has "
                                  f"settings.{k}={b!r}: a resumed run would silently learn another target; "
                                  "resume with the same settings or use a new output folder")
