"""The training loop (:class:`Trainer`): data, objectives (:mod:`~invdiff.training.objectives`,
:mod:`~invdiff.training.consistency`), optimiser, EMA, checkpoints, export and figures.

Data are mapped from [0, 1] to the model range [−1, 1]; Adam with a linear warm-up, an exponential
moving average (EMA) of the weights, random horizontal/vertical flips.

Everything needed to continue lives in ``<out>/checkpoint.safetensors`` — network, EMA and Adam
state, the random generator's state, the step and the loss history — written atomically every
``ckpt_every`` steps and at the end, so a killed run resumes where its last checkpoint left it
and continues bit for bit as if it had not stopped. ``<out>/prior.safetensors`` is the EMA network
in the project's prior format (:func:`invdiff.priors.save`, read back by :func:`invdiff.priors.load`).

Data-parallel: under ``torchrun`` (``WORLD_SIZE > 1``) each rank draws its own batches (its
generator is seeded with ``seed + rank``), gradients are averaged by DDP, and rank 0 writes; the
checkpoint holds every rank's generator state (``rng``, ``rng.1``, …), so a resumed run with the
same world size continues bit for bit too.

Speed and budgets: ``settings.precision`` (``bf16``/``fp16`` autocast of the forward pass; float16
with a loss scaler whose state is checkpointed), ``settings.compile`` (``torch.compile`` of the
forward pass; the weights, checkpoints and exported prior are those of the plain network), and
``settings.max_minutes``, a wall-clock budget: the run stops at the first step past it with a
checkpoint (:attr:`Trainer.stopped_early`), so a long run is a series of the same command in
calls of bounded length (e.g. 10-minute GPU jobs) that ends where one uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..priors import NetworkPrior, Prior, save
from ..priors.checkpoints import CheckpointError, save_safetensors, strict_load
from ..priors.consistency import SIGMA_MAX, SIGMA_MIN, ConsistencyPrior
from ..priors.flow import FlowPrior, make_path
from ..priors.formats import EDMPreconditioned
from ..priors.native import read_tagged
from ..priors.schedules import EDMSchedule
from ..priors.unet import build_ambient_unet, build_cm_unet, build_flow_unet, build_unet

from .augment import augment
from .augment import is_on as augment_on
from .consistency import cd_loss, ct_loss, karras_levels
from .corrupted import corrupted_loss, make_domain, noise_floor
from .bridge import bridge_loss, degrade
from .objectives import edm_loss, flow_loss
from .settings import CKPT_VERSION, CORRUPTED_OBJECTIVES, TrainData, TrainSettings, check_resumable


#: The noise levels (model units, images on [−1, 1]) of the validation score.
VAL_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _flip(x: Tensor, generator: torch.Generator) -> Tensor:
    f = torch.rand(2, x.shape[0], generator=generator) < 0.5
    x = torch.where(f[0].to(x.device)[:, None, None, None], x.flip(-1), x)
    return torch.where(f[1].to(x.device)[:, None, None, None], x.flip(-2), x)


def _same_layout(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two networks have the same state-dict keys and shapes (one's weights load into the other)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(v.shape == sb[k].shape for k, v in sa.items())


class Trainer:
    """One training run in ``out_dir`` (resumes from its checkpoint when there is one)."""

    def __init__(self, data: TrainData, out_dir: str | Path, settings: TrainSettings, *, device="cpu",
                 resume: bool = True, progress: bool = True):
        self.data, self.s, self.out = data, settings, Path(out_dir)
        self.device = torch.device(device)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.progress = progress and self.rank == 0
        self.flow = settings.objective in ("flow", "reflow")
        self.cm = settings.objective in ("consistency_distillation", "consistency_training")
        if settings.objective == "em":
            raise ValueError("settings.objective=em is a loop of rounds, not one training run: use "
                             "invdiff.training.em.EMRun (invdiff-train settings.objective=em)")
        self.corrupted = settings.objective in CORRUPTED_OBJECTIVES
        self.sigma_floor = None
        self._check_data(data, settings)
        if self.corrupted:
            self.domain = make_domain(data.kind, data.image_shape, keep=data.mask.amin(0))
            self.sigma_floor = max(noise_floor(data, self.domain), 0.002)
        if settings.objective == "ambient":
            self.arch = dict(channels=data.channels, **settings.arch, sigma_data=settings.sigma_data,
                             sigma_min=self.sigma_floor)
            self.architecture, build = "invdiff.ambient_unet", build_ambient_unet
        elif self.flow:
            self.arch, self.architecture, build = dict(channels=data.channels, **settings.arch), "invdiff.flow_unet", \
                build_flow_unet
        elif self.cm:
            self.arch = dict(channels=data.channels, **settings.arch, sigma_data=settings.sigma_data,
                             sigma_min=SIGMA_MIN)
            self.architecture, build = "invdiff.cm_unet", build_cm_unet
        else:
            self.arch = dict(channels=data.channels, **settings.arch, sigma_data=settings.sigma_data)
            self.architecture, build = "invdiff.unet", build_unet
        torch.manual_seed(settings.seed)  # initial weights: the same on every rank
        self.net = build(**self.arch).to(self.device)
        self.ema = build(**self.arch).to(self.device)
        self.teacher, self.target, self.from_teacher = None, None, False
        self.bridge = settings.objective == "bridge"
        if self.bridge:
            from ..priors.bridge import BrownianBridge
            from .bridge import spec_of

            self.bridge_path, self.bridge_spec = BrownianBridge(float(settings.bridge_b)), spec_of(settings)
            if settings.teacher:  # I²SB starts from a pretrained unconditional diffusion model (their §4)
                teacher = self._load_cd_teacher(settings.teacher, data)
                if not self.from_teacher:
                    raise ValueError(f"settings.teacher={settings.teacher!r} has another network than settings.arch="
                                     f"{settings.arch}; a bridge starts from the teacher's weights: use its settings.arch")
                self.net.load_state_dict(teacher.net.state_dict())
                del teacher
        if settings.objective == "reflow":
            self.teacher = self._load_teacher(settings.teacher, data)
            self.net.load_state_dict(self.teacher.net.state_dict())  # 2-RF starts from 1-RF (Liu et al. §5)
        if settings.objective == "consistency_distillation":
            self.teacher = self._load_cd_teacher(settings.teacher, data)
            self.levels = karras_levels(settings.cm_levels)
            if self.from_teacher:  # the student starts from the teacher's weights (Song et al. 2023, App. C)
                self.net.load_state_dict(self.teacher.net.state_dict())
            self.target = build(**self.arch).to(self.device)  # θ⁻, the EMA target of Alg. 2
            self.target.load_state_dict(self.net.state_dict())
            self.target.requires_grad_(False)
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=settings.lr)
        self.gen = torch.Generator().manual_seed(settings.seed + self.rank)
        self.step, self.losses, self.best = 0, [], None
        self.val_images = None
        if settings.val_every:
            val = getattr(data, "validation", lambda: None)()
            if val is None:
                raise ValueError(f"settings.val_every={settings.val_every} needs validation images, but the data "
                                 f"({data.describe()}) has none: data=brain and data=phantoms have a validation split; "
                                 "data=folder takes data.val_source=<images never trained on>")
            self.val_images = val
        self.ddp = None
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.scaler, self.stopped_early = None, False
        if settings.precision == "fp16":
            if self.device.type != "cuda":
                raise ValueError(f"settings.precision=fp16 trains with a float16 loss scaler on a CUDA device, but "
                                 f"device={self.device}: use settings.precision=bf16 on a CPU (or fp32)")
            self.scaler = torch.amp.GradScaler("cuda")
        if settings.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"settings.precision=bf16: {torch.cuda.get_device_name(self.device)} has no bfloat16; "
                             "use settings.precision=fp16")
        self.model = self.ddp or self.net  # what the loss calls (compiled below when asked)
        if settings.compile:
            self.model = torch.compile(self.model)
        self.ckpt = self.out / "checkpoint.safetensors"
        if self.rank == 0:  # a run killed while writing leaves its temporary file; the checkpoint is intact
            for stale in self.out.glob(f".{self.ckpt.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if resume and self.ckpt.exists():
            self.load_checkpoint(self.ckpt)

    @staticmethod
    def _check_data(data, s: TrainSettings) -> None:
        """Measurements go with the corrupted-data objectives only, and each of those with its kind."""
        measured = bool(getattr(data, "measurements", False))
        if s.objective in CORRUPTED_OBJECTIVES and not measured:
            raise ValueError(f"settings.objective={s.objective} trains from measurements, but data is "
                             f"{data.describe()}: use data=measurements data.source=<file.h5> "
                             "(invdiff.data.measurements), or objective=edm for clean images")
        if measured and s.objective not in CORRUPTED_OBJECTIVES:
            raise ValueError(f"data={data.describe()} holds measurements, not clean images: train on it with "
                             f"settings.objective={' or '.join(CORRUPTED_OBJECTIVES)}")
        if s.objective == "noisy" and data.kind != "denoising":
            raise ValueError(f"settings.objective=noisy learns from noisy complete images, but the data are "
                             f"{data.kind} measurements: use settings.objective=ambient for masks and k-space")
        if s.objective == "ambient" and data.kind == "denoising":
            raise ValueError("settings.objective=ambient learns around masks, but the data are noisy complete images: "
                             "use settings.objective=noisy")

    @staticmethod
    def _teacher_of_shape(teacher: str, data: TrainData) -> Prior:
        """The prior ``settings.teacher`` names, refused unless it makes images of the data's shape."""
        from ..priors import load

        prior = load(teacher)
        want = (data.channels, data.size, data.size)
        if prior.shape != want:
            raise ValueError(f"settings.teacher={teacher!r} makes images of shape {list(prior.shape)}, but the data "
                             f"has shape {list(want)}")
        return prior

    def _load_teacher(self, teacher: str, data: TrainData) -> FlowPrior:
        prior = self._teacher_of_shape(teacher, data)
        if not isinstance(prior, FlowPrior):
            raise ValueError(f"settings.teacher={teacher!r} is a {type(prior).__name__}, not a flow prior; reflow "
                             "straightens a flow's ODE: pass a prior trained with objective=flow")
        if prior.path != make_path(self.s.path):
            raise ValueError(f"settings.teacher={teacher!r} is on the {prior.path.name} path, settings.path is "
                             f"{self.s.path!r}: use the teacher's path")
        if type(prior.net) is not type(self.net) or not _same_layout(prior.net, self.net):
            raise ValueError(f"settings.teacher={teacher!r} has another network than settings.arch={self.s.arch}; the "
                             "2-rectified flow starts from the teacher's weights: use the teacher's settings.arch")
        prior.requires_grad_(False)
        return prior.to(self.device).eval()

    def _load_cd_teacher(self, teacher: str, data: TrainData) -> Prior:
        """Consistency distillation's teacher: any diffusion prior (not a consistency prior) of the
        data's shape whose σ range covers [σ_min, σ_max]; sets ``from_teacher`` when its network is an
        ``invdiff.unet`` with this run's weights layout and σ_data (the student then starts from it)."""
        prior = self._teacher_of_shape(teacher, data)
        if isinstance(prior, ConsistencyPrior):
            raise ValueError(f"settings.teacher={teacher!r} is a ConsistencyPrior; distillation needs a diffusion "
                             "prior whose denoiser is E[x₀ | x] (e.g. settings.teacher=phantom64)")
        if prior.sigma_min > SIGMA_MIN * (1 + 1e-9) or prior.sigma_max < SIGMA_MAX * (1 - 1e-9):
            raise ValueError(f"settings.teacher={teacher!r} covers σ in [{prior.sigma_min:.4g}, {prior.sigma_max:.4g}]; "
                             f"distillation runs its ODE on [{SIGMA_MIN}, {SIGMA_MAX}]")
        net = getattr(prior, "net", None)
        if isinstance(net, EDMPreconditioned) and net.precond == "edm" and net.sigma_data == self.s.sigma_data:
            self.from_teacher = _same_layout(net, self.net)
        prior.requires_grad_(False)
        return prior.to(self.device).eval()

    def couplings(self, n: int) -> tuple[Tensor, Tensor]:
        """Reflow's couplings: ``n`` noises ε (from the run's generator) and the teacher's ODE
        solutions x̂₀ (model units), Heun with ``teacher_steps`` steps from t = 1."""
        from ..priors.flow_samplers import flow_heun

        shape = (n, self.data.channels, self.data.size, self.data.size)
        eps = torch.randn(shape, generator=self.gen)
        x0 = flow_heun(self.teacher, shape, steps=int(self.s.teacher_steps), noise=eps.to(self.device))
        return self.teacher.to_model(x0).to(self.device, torch.float32), eps.to(self.device)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        if self.target is not None:
            tensors |= {f"target.{k}": v for k, v in self.target.state_dict().items()}
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(v)
        tensors["rng"] = self.gen.get_state()
        tensors["losses"] = torch.tensor(self.losses, dtype=torch.float64).reshape(-1, 2)
        meta = {"version": CKPT_VERSION, "step": self.step, "settings": asdict(self.s), "arch": self.arch,
                "data": self.data.describe(), "world_size": self.world, "best": self.best,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}
        return tensors, meta

    def _rank_generators(self) -> list[Tensor]:
        """Every rank's generator state (a collective under torchrun: all ranks call it together)."""
        state = self.gen.get_state()
        if self.world == 1:
            return [state]
        import torch.distributed as dist

        dev = self._collective_device()
        out = [torch.empty_like(state, device=dev) for _ in range(self.world)]
        dist.all_gather(out, state.to(dev))
        return [t.cpu() for t in out]

    def save_checkpoint(self) -> None:
        states = self._rank_generators()  # (every rank, before rank 0 alone writes)
        if self.rank != 0:
            return
        tensors, meta = self.state()
        tensors |= {f"rng.{r}": st for r, st in enumerate(states) if r > 0}
        save_safetensors(self.ckpt, tensors, {"invdiff_train": json.dumps(meta)})

    def load_checkpoint(self, path: Path) -> None:
        tensors, info = read_tagged(path, "invdiff_train", "an invdiff-train checkpoint")
        if info.get("version") != CKPT_VERSION:
            raise CheckpointError(f"{path}: checkpoint version {info.get('version')} is not supported")
        if info["arch"] != self.arch:
            raise CheckpointError(f"{path} holds a network {info['arch']}, but this run builds {self.arch}; "
                                  "resume with the same settings or use a new output folder")
        check_resumable(path, info.get("settings") or {}, self.s)
        strict_load(self.net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, f"{path} (net)")
        strict_load(self.ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, f"{path} (ema)")
        if self.target is not None:
            strict_load(self.target, {k[7:]: v for k, v in tensors.items() if k.startswith("target.")},
                        f"{path} (target)")
        opt = self.opt.state_dict()
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        opt["state"] = state
        self.opt.load_state_dict(opt)
        self.step = int(info["step"])
        key = "rng" if self.rank == 0 else f"rng.{self.rank}"
        if self.rank == 0 or (key in tensors and info.get("world_size", 1) == self.world):
            self.gen.set_state(tensors[key])
        else:  # another world size (or a checkpoint without per-rank states): a fresh stream of its own —
            # never rank 0's, whose batches it would then repeat
            self.gen = torch.Generator().manual_seed(self.s.seed + self.rank + 1_000_003 * self.step)
        if self.scaler is not None and info.get("scaler"):
            self.scaler.load_state_dict(info["scaler"])
        self.losses = [tuple(r) for r in tensors["losses"].tolist()]
        self.best = info.get("best")
        if self.rank == 0:
            for name in ("log.csv", "val.csv", "val_samples.csv"):
                self._truncate_log(name)

    def _truncate_log(self, name: str = "log.csv") -> None:
        """Drop ``log.csv`` (``val.csv``) rows past the resumed step: they were logged by the run that
        stopped after its last checkpoint, and their steps are trained again (left in, every such step
        would appear twice with two values)."""
        log = self.out / name
        if not log.exists():
            return
        lines = log.read_text().splitlines()
        keep = [ln for ln in lines[1:] if ln and ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= self.step]
        if len(keep) != len(lines) - 1:
            from ..data.results import atomic_text

            atomic_text(log, "\n".join([lines[0], *keep]) + "\n")

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> float:
        """Score the EMA denoiser on the data's validation images (``val.csv``): MSE / σ² in model
        units at each σ of :data:`VAL_SIGMAS` (one fixed noise draw, seed 0 — the same every time and
        independent of the run's generator, so validating changes no training step), and their mean
        (1 = returning the noisy image). With ``keep_best`` a lower mean than any before exports the
        EMA to ``prior_best.safetensors``."""
        from ..evaluation import denoising_ratios

        ratios = denoising_ratios(self.prior(), self.val_images.to(self.device, torch.float32), VAL_SIGMAS,
                                  torch.Generator().manual_seed(0))
        score = sum(ratios) / len(ratios)
        self._append_row("val.csv", "step," + ",".join(f"mse_over_sigma2_at_{s:g}" for s in VAL_SIGMAS) + ",mean",
                         f"{self.step}," + ",".join(f"{r:.6f}" for r in ratios) + f",{score:.6f}")
        if int(self.s.val_samples):
            self._sample_check()
        if self.s.keep_best and (self.best is None or score < self.best[0]):
            self.export(self.out / "prior_best.safetensors")
            self.best = [score, self.step]
        return score

    def _sample_check(self) -> float:
        """``val_samples.csv``: the patch Fréchet distance (:func:`invdiff.evaluation.patch_frechet_distance`,
        8×8 patches) between ``val_samples`` EMA samples (EDM Heun, 18 steps, seed 0 — the same noise
        every time, apart from the run's generator) and the validation images: an FID proxy that
        rises when samples lose the data's texture or contrast (grainy or washed-out samples) even
        while the denoising score improves."""
        from ..evaluation import patch_frechet_distance
        from ..priors.samplers import edm_heun

        prior = self.prior()
        x = edm_heun(prior, (int(self.s.val_samples), *prior.shape), steps=18, generator=torch.Generator().manual_seed(0))
        fd = patch_frechet_distance(x.clamp(0, 1), self.val_images)
        self._append_row("val_samples.csv", "step,patch_frechet_distance", f"{self.step},{fd:.6g}")
        return fd

    # -- training ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return self.s.lr * min(1.0, (step + 1) / max(self.s.warmup, 1))

    def train(self, until: int | None = None, on_step: Callable[[int, float], None] | None = None) -> None:
        """Train to ``until`` (default: ``settings.steps``), checkpointing on the way."""
        from tqdm import tqdm

        until = self.s.steps if until is None else min(until, self.s.steps)
        model = self.model
        bar = tqdm(total=self.s.steps, initial=self.step, disable=not self.progress, desc="invdiff-train",
                   dynamic_ncols=True)
        t0, run, first = time.time(), [], self.step
        deadline = t0 + 60.0 * float(self.s.max_minutes) if self.s.max_minutes else None
        amp = torch.autocast(self.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.s.precision, torch.float32), enabled=self.s.precision != "fp32")
        self.stopped_early = False
        while self.step < until:
            if self.s.objective == "reflow":
                x, eps = self.couplings(self.s.batch)
            elif self.corrupted:  # measurements only: no image is drawn, no flips (they would move k-space)
                idx = torch.randint(len(self.data), (self.s.batch,), generator=self.gen)
                x = tuple(t.to(self.device) for t in self.data.batch(idx))
                x, eps = (x[0].float(), x[1].float(), x[2]), None
            else:
                x, eps = self.data.sample(self.s.batch, self.gen).to(self.device, torch.float32), None
                x = _flip(x, self.gen)
                if augment_on(self.s):  # (no draws when off: the recipes without augmentation are unchanged)
                    x = augment(x, self.gen, self.s)
                x = x * 2.0 - 1.0
            if self.bridge:  # its degraded partner x₁ = A⁺(A x₀ + σ_y n), a fresh operator of the family
                x1 = degrade((x.double().cpu() + 1) / 2, self.bridge_spec, self.gen).to(self.device, torch.float32) * 2 - 1
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step)
            with amp:
                loss = self._loss(model, x, x1 if self.bridge else None, eps)
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:  # float16: scaled backward, unscaled before clipping; skips inf steps
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
            else:
                loss.backward()
            if self.s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.s.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            self._update_averages()
            self.step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"invdiff-train: the loss became {value} at step {self.step}; lower lr "
                                         f"(now {self.s.lr}) — the last checkpoint ({self.ckpt}) is intact")
            run.append(value)
            if self.step % self.s.log_every == 0 or self.step == until:
                self.losses.append((self.step, sum(run) / len(run)))
                run = []
                if self.rank == 0:
                    self._append_row("log.csv", "step,loss,lr,elapsed_s", f"{self.step},{self.losses[-1][1]:.6f},"
                                     f"{self.lr_at(self.step - 1):.3g},{time.time() - t0:.1f}")
                bar.set_postfix(loss=f"{self.losses[-1][1]:.4f}",
                                s_per_step=f"{(time.time() - t0) / max(self.step - first, 1):.3f}")
            bar.update(1)
            if on_step is not None:
                on_step(self.step, value)
            if self.s.val_every and self.step % int(self.s.val_every) == 0 and self.rank == 0:
                self.validate()  # (before the checkpoint, which records the best score)
            out_of_time = deadline is not None and self._agree(time.time() >= deadline) and self.step < until
            if self.step % self.s.ckpt_every == 0 or self.step == until or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                self.stopped_early = True
                break
        bar.close()

    def _agree(self, flag: bool) -> bool:
        """``flag`` of any rank (every rank stops at the same step, or DDP would wait forever)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _collective_device(self) -> torch.device:
        """Where tensors of a collective live: the GPU under NCCL, the CPU under gloo."""
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _append_row(self, name: str, header: str, row: str) -> None:
        """One row of ``<out>/<name>`` (``log.csv``, ``val.csv``, ``val_samples.csv``), the header first."""
        self.out.mkdir(parents=True, exist_ok=True)
        new = not (self.out / name).exists()
        with open(self.out / name, "a") as f:
            f.write((header + "\n" if new else "") + row + "\n")

    def _update_averages(self) -> None:
        """EMA of the weights (buffers copied) and consistency distillation's target θ⁻."""
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.net.parameters()):
                pe.lerp_(p, 1.0 - self.s.ema_decay)
            for be, b in zip(self.ema.buffers(), self.net.buffers()):
                be.copy_(b)
            if self.target is not None:  # θ⁻ ← μ θ⁻ + (1 − μ) θ (Song et al. 2023, Alg. 2)
                for pt, p in zip(self.target.parameters(), self.net.parameters()):
                    pt.lerp_(p, 1.0 - self.s.cm_target_ema)

    def _loss(self, model, x, x1, eps) -> Tensor:
        """The objective's loss on one batch (``x1``: a bridge's degraded partners; ``eps``: reflow's noises)."""
        if self.corrupted:
            return corrupted_loss(model, x, self.domain, self.gen, self.s, ambient=self.s.objective == "ambient",
                                  sigma_floor=self.sigma_floor, data_range=self.data.data_range)
        if self.bridge:
            return bridge_loss(model, x, x1, self.bridge_path, self.gen, sigma_1=float(self.s.bridge_sigma_1),
                               sigma_data=self.s.sigma_data)
        if self.flow:
            return flow_loss(model, x, self.gen, self.s, eps)
        if self.s.objective == "consistency_distillation":
            return cd_loss(model, self.target, self.teacher, x, self.gen, self.s, self.levels)
        if self.s.objective == "consistency_training":
            return ct_loss(model, self.net, x, self.gen, self.s, self.step)
        return edm_loss(model, x, self.gen, self.s)

    # -- outputs -------------------------------------------------------------------------------
    def prior(self) -> NetworkPrior | FlowPrior | ConsistencyPrior:
        """The EMA network as a :class:`NetworkPrior` (EDM), a :class:`FlowPrior` (flow, reflow) or a
        :class:`ConsistencyPrior` (cd, ct), data [0, 1] ↔ model [−1, 1]."""
        if self.bridge:
            from ..priors.bridge import BridgePrior

            return BridgePrior(self.ema.eval(), self.bridge_path, sigma_1=float(self.s.bridge_sigma_1),
                               spec=self.bridge_spec, shape=(self.data.channels, self.data.size, self.data.size))
        if self.cm:
            return ConsistencyPrior(self.ema.eval(), shape=(self.data.channels, self.data.size, self.data.size),
                                    sigma_range=(SIGMA_MIN, SIGMA_MAX), data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
        if self.flow:
            shape = (self.data.channels, self.data.size, self.data.size)
            return FlowPrior(self.ema.eval(), make_path(self.s.path), shape=shape, data_range=(0.0, 1.0),
                             model_range=(-1.0, 1.0))
        lo, hi = self.ema.sigma_range()
        if self.corrupted:  # the data's noise floor: solvers stop there (invdiff.training.corrupted)
            lo = self.sigma_floor
        return NetworkPrior(self.ema.eval(), "x0", EDMSchedule(lo, hi), shape=(self.data.channels, self.data.size,
                            self.data.size), data_range=(0.0, 1.0), model_range=(-1.0, 1.0), conditioning="sigma",
                            learned_sigma=False)

    def export(self, path: str | Path | None = None) -> Path:
        """Write the EMA prior in the project's format (default ``<out>/prior.safetensors``)."""
        path = Path(path) if path is not None else self.out / "prior.safetensors"
        return save(path, self.prior(), self.architecture, self.arch)

    def figures(self, samples: int = 16, sampler_steps: int = 40) -> tuple[Path, Path | None]:
        """``loss.png`` and ``samples.png`` in the output folder (:func:`invdiff.training.figures.training_figures`)."""
        from .figures import training_figures

        return training_figures(self, samples, sampler_steps)
