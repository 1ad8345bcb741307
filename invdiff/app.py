"""``invdiff``: the reconstruction app (Hydra).

    invdiff operator=gaussian_blur noise.sigma=0.02 shape=[1,64,64] data.image=camera

For now the reconstruction is the operator's pseudo-inverse (no prior): the diffusion solvers
plug in here when they land. Each run writes ``samples/0.h5`` (atomic) holding y, the
reconstruction, the ground truth, the operator's parameters, the seeds and the resolved config.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import hydra
import torch

import operators
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("invdiff")

APP_SOLVERS = ("pinv",)


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> float:
    mse = float(((x_hat - x) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(data_range**2 / mse)).item()


def build(node: DictConfig, what: str):
    """Instantiate a config node; a failing constructor becomes a one-line error naming the group."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        kind = type(cause) if type(cause) in (ValueError, TypeError, FileNotFoundError) else ValueError
        raise kind(f"{what} config: {cause}") from err


def run(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Simulate, reconstruct and save one sample; returns the result file's path."""
    from invdiff.data import sample_image, write_sample

    solver_name = str(cfg.solver.get("_target_", "")).rpartition(".")[2]
    if solver_name not in APP_SOLVERS:
        raise ValueError(f"the app runs solver={APP_SOLVERS} so far; diffusion solvers ({solver_name!r}) are "
                         "called from Python: invdiff.solvers.<name>(y, operator, prior, sigma_y=..., steps=...)")
    # Everything that can fail on bad input is built before any work or output.
    op = build(cfg.operator, "operator")
    operators.require(op, solver_name, ["pinv"])
    solver = build(cfg.solver, "solver")
    noise = build(cfg.noise, "noise") if cfg.get("noise") is not None else None
    x = sample_image(cfg.data.image, cfg.shape)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    y = op.measure(x, noise, generator=generator)
    x_hat = solver(y, op, None)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    saved_op = op.to_dict()
    record = {
        "x_hat": x_hat[0], "y": y[0], "x_true": x[0],
        "operator": saved_op["params"] | {"type": saved_op["type"]},
        "seed": int(cfg.seed),
        "solver": solver_name,
        "noise": repr(noise),
        "config_yaml": resolved,
        "config_hash": hashlib.sha256(resolved.encode()).hexdigest()[:16],
        "psnr": psnr(x_hat, x),
    }
    path = write_sample(Path(out_dir) / "samples" / "0.h5", record)
    log.info("%s + %s, %s reconstruction: PSNR %.2f dB -> %s", op.describe(), noise, solver_name, record["psnr"], path)
    return path


@hydra.main(version_base=None, config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
