"""``invdiff-train``: train a score model and export it as an invdiff prior (Hydra app).

    invdiff-train                                   # phantom64 on the seeded phantoms
    invdiff-train data=folder data.source=/images name=my_prior settings.steps=20000
    torchrun --nproc_per_node=2 -m invdiff.apps.train_app device=cuda   # data-parallel

Outputs in ``out`` (default ``outputs/train/<name>``): ``checkpoint.safetensors`` (resumable),
``prior.safetensors`` (load with ``invdiff.priors.load``), ``log.csv``, ``loss.png``,
``samples.png`` and ``config.yaml``. Running the same command again resumes; ``export_only=true``
exports the last checkpoint (prior, figures) without training — e.g. to stop a run early.
``settings.max_minutes=8`` stops a call after 8 minutes with a checkpoint (the same command continues);
``net=tiny|small|medium|large|ddpmpp|adm64`` picks the network size (``configs/train/net``);
``settings.precision=bf16|fp16`` and ``settings.compile=true`` speed a GPU run up.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..training import Trainer, TrainSettings
from ..training.augment import describe as describe_augment

log = logging.getLogger("invdiff.train")


def settings_of(cfg: DictConfig) -> TrainSettings:
    return TrainSettings(**OmegaConf.to_container(cfg.settings, resolve=True))


def run(cfg: DictConfig) -> Trainer:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    settings = settings_of(cfg)
    data = instantiate(cfg.data)
    out = Path(cfg.out)
    if settings.objective == "em":  # rounds of posterior sampling and training (invdiff.training.em)
        from ..training.em import EMRun

        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("invdiff-train %s: EM on %s, %d rounds, E-step %s (%d steps), M-step %d steps", cfg.name,
                 data.describe(), settings.em_rounds, settings.em_solver, settings.em_solver_steps, settings.em_m_steps)
        EMRun(data, out, settings, device=cfg.device, log=log.info).run()
        return None
    trainer = Trainer(data, out, settings, device=cfg.device, resume=cfg.resume)
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        n = sum(p.numel() for p in trainer.net.parameters())
        log.info("invdiff-train %s: %s, network %.2f M parameters %s, %s, world size %d, %s at step %d/%d",
                 cfg.name, data.describe(), n / 1e6, trainer.arch, cfg.device, trainer.world,
                 "resuming" if trainer.step else "starting", trainer.step, settings.steps)
        log.info("precision %s%s%s", settings.precision, ", torch.compile" if settings.compile else "",
                 f", wall-clock budget {settings.max_minutes:g} min per call" if settings.max_minutes else "")
        log.info("EMA decay %g per step (half-life %.0f steps); augmentation: %s; validation: %s",
                 settings.ema_decay, math.log(0.5) / math.log(settings.ema_decay) if 0 < settings.ema_decay < 1 else 0,
                 describe_augment(settings),
                 f"every {settings.val_every} steps on {len(trainer.val_images)} held-out images (val.csv)"
                 + (", best EMA kept as prior_best.safetensors" if settings.keep_best else "")
                 + (f", {settings.val_samples} EMA samples' patch Fréchet distance (val_samples.csv)"
                    if settings.val_samples else "")
                 if settings.val_every else "off")
    if not cfg.get("export_only", False):
        trainer.train()
    if trainer.stopped_early and trainer.rank == 0:
        log.info("stopped by settings.max_minutes=%g at step %d of %d, checkpointed: run the same command again to "
                 "continue (the prior below is the EMA at step %d)", settings.max_minutes, trainer.step, settings.steps,
                 trainer.step)
    if trainer.rank == 0:
        path = trainer.export()
        trainer.figures(samples=int(cfg.sample_grid))
        log.info("exported %s (load with invdiff.priors.load); loss curve and samples in %s", path, out)
        if trainer.best is not None:
            log.info("best validation score %.4f at step %d: %s", trainer.best[0], trainer.best[1],
                     out / "prior_best.safetensors")
    return trainer


@hydra.main(version_base=None, config_path="pkg://invdiff.configs.train", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
