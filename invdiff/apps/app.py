"""``invdiff``: the reconstruction app (Hydra).

    invdiff                                   # MRI 4× of held-out phantoms, phantom64 prior, ΠGDM
    invdiff operator=gaussian_blur solver=dps data=sample_image data.names=[camera] prior=...
    invdiff -m solver=pigdm,ddnm seed=0,1,2   # a sweep; summary.csv/metrics.json over all runs

Config groups (``configs/``): ``operator``, ``noise``, ``prior``, ``solver``, ``data``,
``experiment`` (tuned bundles). For every sample of the data source the app simulates ``y`` (or
takes the measured one), reconstructs it with :func:`invdiff.reconstruct`, and writes into the
run directory ``samples/{id}.h5`` (atomic; layout in :mod:`invdiff.data.results`),
``figures/{id}.png`` and ``metrics.json`` / ``metrics.csv`` (rebuilt from the sample files).
Everything that can fail on bad input — names, keys, shapes, value ranges, an operator the solver
cannot use — fails before anything is simulated, sampled or written, with one paragraph that says
what was wrong and what the valid choices are. The command line itself (override checks,
``--help``, the Hydra entry point, sweep summaries) is :mod:`invdiff.cli`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import operators
from operators import CapabilityError

from .memory import human, refusal

log = logging.getLogger("invdiff")

GROUPS = ("operator", "noise", "prior", "solver", "data", "experiment")
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, CapabilityError, FloatingPointError,
               MemoryError)  # invdiff.api.OutOfMemory: says which batch size to try


class AppError(ValueError):
    """A bad command line or config: the message is one paragraph meant for the user."""


def choices(group: str) -> list[str]:
    """The config names available in ``group`` (``configs/<group>/*.yaml``)."""
    folder = resources.files("invdiff.configs") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _one_paragraph(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def build(node: DictConfig, what: str):
    """Instantiate a config node; a failing constructor becomes a one-paragraph error naming the group."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return instantiate(node)
    except (InstantiationException, MemoryError, RuntimeError) as err:
        cause = err.__cause__ or err if isinstance(err, InstantiationException) else err
        from .api import is_out_of_memory

        if not is_out_of_memory(cause):
            if isinstance(err, InstantiationException):
                raise AppError(f"{what} config ({node.get('_target_', '?')}): {_one_paragraph(cause)}") from err
            raise
        text = str(cause)
        in_bytes, in_words = re.search(r"allocate (\d+) bytes", text), re.search(r"allocate ([\d.]+ [KMGTP]i?B)", text)
        size = (f" ({human(int(in_bytes.group(1)))} in one array)" if in_bytes else
                f" ({in_words.group(1)} in one array)" if in_words else "")
        raise AppError(f"{what} config ({node.get('_target_', '?')}) ran out of memory while being built{size}: its "
                       "arrays (masks, kernels, factors) grow with the image size. Use a smaller shape, or solve a "
                       "large image in prior-sized tiles (tile_overlap=16) with an operator that can be tiled "
                       "(inpainting, blur, downsampling)") from None
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a value"
        raise AppError(f"{what} config ({node.get('_target_', '?')}) needs {key}: give it on the command line, "
                       f"e.g. {key}=<value> (see the comment at the top of its config file)") from err


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when present, else cpu; under torchrun ``cuda`` is ``cuda:LOCAL_RANK``."""
    from . import distributed

    if name in (None, "auto"):
        return distributed.device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AppError(f"device={name} was asked for, but torch sees no CUDA device; use device=cpu or device=auto")
    return distributed.device(dev)


def _is_mri(op) -> bool:
    return "MRI" in type(op).__name__


def _complex_image(op) -> bool:
    return _is_mri(op) and tuple(op.img_size)[0] == 2


# --------------------------------------------------------------------------------------------
# building and checking a job
# --------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One sample, checked and ready: its operator, σ_y and (measured) y or (synthetic) x."""

    sample: object
    op: object
    sigma_y: float


@dataclass
class Job:
    cfg: DictConfig
    operator: object
    noise: object
    prior: object
    solver: object
    data: object
    device: torch.device
    items: list


def _sigma_y(cfg: DictConfig, noise, sample, mode: str) -> float:
    value = cfg.get("sigma_y", "auto")
    if value not in (None, "auto"):
        s = float(value)
    elif mode == "synthetic":
        s = noise.sigma if isinstance(noise, operators.GaussianNoise) else (0.0 if noise is None else None)
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            s = float(s)
        if s is None or not isinstance(s, (int, float)):
            raise AppError(f"sigma_y=auto takes σ_y from a Gaussian noise model, but noise is {noise!r}; "
                           "give the solver's σ_y explicitly, e.g. sigma_y=0.05 (measurement units)")
    else:
        if sample.sigma_y is None:
            raise AppError(f"the measured data {sample.id} do not state their noise level; give sigma_y=<σ> "
                           "(measurement units) on the command line")
        s = float(sample.sigma_y)
    if not math.isfinite(s) or s < 0:
        raise AppError(f"sigma_y must be a finite number >= 0, got {s}")
    return s


def _check_data(t: torch.Tensor, name: str, kind: str, shape: tuple, where: str) -> None:
    """dtype (real floating point), shape (when the operator states one) and finiteness."""
    if not t.is_floating_point() or t.is_complex():
        raise AppError(f"{name}: expected {kind}, got dtype {t.dtype}")
    if shape and tuple(t.shape) != shape:
        raise AppError(f"{name} has shape {list(t.shape)}, {where} {list(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise AppError(f"{name} contains NaN or Inf")


def _tile_overlap(cfg) -> int | None:
    v = cfg.get("tile_overlap")
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise AppError(f"tile_overlap must be null (no tiling) or a number of pixels >= 0, got {v!r}")
    return v


def _check_item(sample, op, prior, tiled: bool = False) -> None:
    """Shapes, dtype, finiteness and value range of a sample against its operator and the prior
    (with ``tiled``, the operator's images may be larger than the prior's)."""
    img, meas = tuple(op.img_size), tuple(getattr(op, "meas_size", ()))
    if tuple(prior.shape) != img and not tiled:
        raise AppError(f"the prior models images {list(prior.shape)} but the operator {op.describe()} acts on "
                       f"{list(img)}; set shape={list(prior.shape)} (one shape for operator, data and prior) or "
                       "choose a prior of that size")
    if sample.x is not None:
        x = sample.x
        _check_data(x, f"ground truth {sample.id}", "a real floating-point image", img, "the operator acts on")
        lo, hi = prior.data_range
        if _complex_image(op):
            lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
        span, xmin, xmax = hi - lo, float(x.min()), float(x.max())
        if xmin < lo - 0.05 * span or xmax > hi + 0.05 * span:
            raise AppError(f"ground truth {sample.id} has values in [{xmin:.4g}, {xmax:.4g}], but the prior models "
                           f"images on [{lo:g}, {hi:g}]; rescale the data (data.normalize=max for files) or use a "
                           "prior trained on that range")
    if sample.y is not None:
        _check_data(sample.y, f"measurement {sample.id}", "real floating-point data (complex as 2 channels)", meas,
                    f"{op.describe()} measures")
    if sample.x is None and sample.y is None:
        raise AppError(f"sample {sample.id} has neither a ground truth nor a measurement")


def _solver_choices_for(op, prior, sigma_y: float) -> list[str]:
    """The solver configs whose capability needs ``op`` meets (for error messages); a refusal for
    another reason (a setting) does not exclude a solver."""
    from .solvers import check_call

    ok = []
    meas = tuple(getattr(op, "meas_size", ()))
    y = torch.zeros((1, *meas), dtype=torch.float64) if meas else None
    for name in choices("solver"):
        try:
            fn = instantiate(OmegaConf.load(resources.files("invdiff.configs") / "solver" / f"{name}.yaml"))
            check_call(fn, y, op, prior, sigma_y=sigma_y)
        except CapabilityError:
            continue
        except Exception:  # noqa: BLE001  (a setting to adjust, not an incompatible operator)
            pass
        ok.append(name)
    return ok


def _random_parameters(cfg: DictConfig, operator) -> tuple[list[str], object]:
    """(names, seed): the operator's parameters that its seed draws, found by building it once more
    with another seed (``operator.seed`` + 1, or again unseeded when it has none) and comparing the
    saved parameters; and that seed."""
    from .resume import digest

    node = OmegaConf.to_container(cfg.operator, resolve=True)
    seed = node.get("seed")
    if seed is not None:
        node["seed"] = int(seed) + 1
    twin = instantiate(node)
    mine, other = operator.to_dict()["params"], twin.to_dict()["params"]
    return [k for k in mine if digest(mine[k]) != digest(other.get(k))], seed


def _check_measured_operator(cfg: DictConfig, operator) -> None:
    """Measured data must be solved with the operator they were measured with: its random
    parameters (mask, kernel, coil maps) from the user's files, never drawn from a seed."""
    drawn, seed = _random_parameters(cfg, operator)
    drawn = [n.replace("_", " ") for n in drawn if n != "coil_maps"]
    coils = cfg.operator.get("coil_maps")
    synthetic = isinstance(coils, int) and not isinstance(coils, bool)
    if not drawn and not synthetic:
        return
    what = " and ".join(drawn + (["coil maps"] if synthetic else []))
    how = ([f"draws its {' and '.join(drawn)} from a seed ({'unseeded' if seed is None else f'seed {seed}'})"]
           if drawn else []) + ([f"uses {coils} synthetic coil maps (operator.coil_maps={coils})"] if synthetic else [])
    raise AppError(
        f"data=measurement: the operator {operator.describe()} {' and '.join(how)}, but measured data must be "
        f"solved with the {what} they were acquired with: any other gives a plausible, wrong image. Give them "
        "from files: operator=mri_mask_file operator.mask.path=mask.npy (MRI; multi-coil: add "
        "operator._target_=operators.MultiCoilMRI +operator.coil_maps=maps.npy), operator=mask_file_inpainting "
        "operator.mask.path=mask.png, operator=kernel_file_blur operator.kernel.path=psf.npy; or use data=fastmri "
        "for raw fastMRI files (their own mask and coil maps). Operators without random parameters "
        "(gaussian_blur, sr_bicubic, half_inpainting, …) need no file.")


def _check_settings(cfg: DictConfig) -> None:
    """The top-level switches and seeds: whole numbers and booleans, as the config file states."""
    for key in ("seed", "operator_seed"):
        v = cfg.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise AppError(f"{key} must be a whole number >= 0, got {v!r}")
    for key in ("figures", "progress", "resume"):
        v = cfg.get(key, True)
        if not isinstance(v, bool):
            raise AppError(f"{key} must be true or false, got {v!r}")


def _check_shape(cfg: DictConfig) -> tuple[int, ...]:
    """``shape``: [C, H, W] (or [C, D, H, W]) of positive whole numbers."""
    from omegaconf import ListConfig

    v = cfg.get("shape")
    ok = isinstance(v, (list, tuple, ListConfig)) and len(v) in (3, 4) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)
    if not ok:
        shown = list(v) if isinstance(v, (list, tuple, ListConfig)) else v
        raise AppError(f"shape must be [C,H,W] (or [C,D,H,W] for volumes) of whole numbers >= 1, e.g. "
                       f"shape=[1,64,64]; got {shown!r}")
    return tuple(int(s) for s in v)


def _check_memory(cfg: DictConfig, shape: tuple, device: torch.device) -> None:
    """Refuse, before anything image-sized is allocated, a run whose arrays cannot fit
    (:mod:`invdiff.memory`: a lower bound against the memory available on the run's device)."""
    n = int(cfg.num_samples)
    b = 1 if str(cfg.batch_size) == "auto" else min(int(cfg.batch_size), n)  # (auto halves down to 1)
    tiled = _tile_overlap(cfg) is not None
    msg = refusal(shape, n, b, tile_shape=() if tiled else None, device=device, what=f"shape={list(shape)}".replace(" ", ""),
                  can_tile=not tiled)
    if msg:
        raise AppError(msg)


def setup(cfg: DictConfig) -> Job:
    """Build operator, noise, prior, solver and data from ``cfg`` and check every sample against
    them (shapes, ranges, the solver's capability needs) — before any simulation or output."""
    from .solvers import check_call

    device = resolve_device(cfg.get("device", "auto"))
    for key in ("num_samples", "batch_size"):
        v = cfg.get(key)
        if key == "batch_size" and v == "auto":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise AppError(f"{key} must be a positive integer{' or auto' if key == 'batch_size' else ''}, got {v!r}")
    if cfg.get("baseline", "auto") not in ("auto", "pinv", "adjoint", "none"):
        raise AppError(f"baseline must be auto, pinv, adjoint or none, got {cfg.baseline!r}")
    _check_settings(cfg)
    shape = _check_shape(cfg)
    _check_memory(cfg, shape, device)  # (before the operator: its masks and factors are image-sized)
    operator = build(cfg.operator, "operator") if cfg.get("operator") is not None else None
    noise = build(cfg.noise, "noise") if cfg.get("noise") is not None else None
    prior = build(cfg.prior, "prior")
    solver = build(cfg.solver, "solver")
    data = build(cfg.data, "data")
    if prior is None or not hasattr(prior, "denoiser"):
        raise AppError(f"prior config did not give a prior (got {type(prior).__name__})")
    overlap = _tile_overlap(cfg)
    if overlap is None and tuple(prior.shape) != shape:
        raise AppError(f"the prior models images {list(prior.shape)} but shape={list(cfg.shape)}; "
                       f"add shape={list(prior.shape).__str__().replace(' ', '')} to the command line, or solve "
                       f"larger images in prior-sized tiles with tile_overlap=16")
    if overlap is not None and (prior.shape[0] != shape[0] or any(p > s for p, s in zip(prior.shape[1:], shape[1:]))):
        raise AppError(f"tiling needs images at least as large as the prior's {list(prior.shape)} with as many "
                       f"channels; got shape={list(cfg.shape)}")
    mode = getattr(data, "mode", "synthetic")
    try:
        samples = data.samples(operator)
    except (ValueError, TypeError, FileNotFoundError, OSError, IndexError, KeyError, EOFError) as err:
        raise AppError(f"data ({data.describe()}): {_one_paragraph(err)}") from err
    if not samples:
        raise AppError(f"data ({data.describe()}) gave no samples")
    ids = [s.id for s in samples]
    for i in ids:  # ids name the result files: samples/{id}.h5, figures/{id}.png
        if not isinstance(i, str) or i in ("", ".", "..") or any(c in i for c in "/\\\0"):
            raise AppError(f"data gave the sample id {i!r}, which cannot name a result file (samples/<id>.h5): ids "
                           "must be non-empty names without '/', '\\' or NUL; rename the input file or dataset")
    if len(set(ids)) != len(ids):
        raise AppError(f"data gave duplicate sample ids {sorted({i for i in ids if ids.count(i) > 1})}")
    items, checked = [], set()
    for s in samples:
        op = s.operator if s.operator is not None else operator
        if op is None:
            raise AppError(f"sample {s.id} brings no operator and operator=null; choose an operator config")
        if mode == "synthetic" and s.x is None:
            raise AppError(f"synthetic data need ground truths; sample {s.id} has none")
        _check_item(s, op, prior, tiled=overlap is not None)
        sig = _sigma_y(cfg, noise, s, mode)
        key = (id(op), sig)
        if key not in checked:  # the solver's own checks, on a stand-in y of the right shape
            meas = tuple(getattr(op, "meas_size", ()))
            probe = s.y[None] if s.y is not None else torch.zeros((1, *meas), dtype=torch.float64)
            op_checked = op
            if overlap is not None:  # the solver sees tile problems
                from . import tiling

                try:
                    restriction = tiling.Restriction(op)
                    first = restriction.layout(tuple(prior.shape[1:]), overlap)[0]
                except ValueError as err:
                    raise AppError(_one_paragraph(err)) from err
                op_checked = restriction.problem(first.top, first.left, first.height, first.width)[0]
                probe = tiling.crop_y(probe, first)
            try:
                check_call(solver, probe, op_checked, prior, sigma_y=sig)
            except CapabilityError as err:
                ok = _solver_choices_for(op, prior, sig)
                raise AppError(f"{_one_paragraph(err)} Solvers that accept this operator: {', '.join(ok) or 'none'}.") from err
            except (ValueError, TypeError) as err:
                raise AppError(f"solver config ({cfg.solver.get('_target_')}): {_one_paragraph(err)}") from err
            checked.add(key)
        items.append(Item(s, op, sig))
    if mode != "synthetic" and any(it.sample.operator is None for it in items):
        _check_measured_operator(cfg, operator)
    prior = prior.to(device)
    return Job(cfg, operator, noise, prior, solver, data, device, items)


# --------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------
def _baseline(op, y: torch.Tensor, kind: str):
    """The reference shown and scored beside the reconstruction. ``auto``: the measurement itself
    when it is an image of the problem's shape (blur, inpainting: the input a user would compare
    against; a blur's pseudo-inverse amplifies the noise without bound), else the zero-filled /
    pseudo-inverse image A⁺y, else Aᵀy."""
    caps = op.capabilities
    if kind == "none":
        return None, ""
    if kind == "auto" and tuple(y.shape[1:]) == tuple(op.img_size) and not _is_mri(op):
        return y, "measurement y"
    if kind in ("auto", "pinv") and "pinv" in caps:
        return op.A_dagger(y), ("zero-filled (A⁺y)" if _is_mri(op) else "A⁺y")
    if kind in ("auto", "adjoint") and "adjoint" in caps:
        return op.A_adjoint(y), ("zero-filled (Aᴴy)" if _is_mri(op) else "Aᵀy")
    if kind != "auto":
        raise AppError(f"baseline={kind}: the operator {op.describe()} has no {kind}")
    return None, ""


def _metrics(op, prior, x_true, x_hat, draws, base, y, sigma_y, nfe, seconds) -> dict:
    from . import metrics as M

    m = {"nfe": int(nfe), "seconds": float(seconds)}
    dc = M.data_consistency(op, x_hat, y, sigma_y)
    m.update({k: v[0] for k, v in dc.items()})
    if x_true is None:
        return m
    cplx = _complex_image(op)
    lo, hi = prior.data_range
    rng = max(abs(lo), abs(hi)) if cplx else hi - lo
    show = lambda t: M.display(t, cplx)  # noqa: E731
    m["psnr"] = M.psnr(show(x_hat), show(x_true), rng)[0]
    m["ssim"] = M.ssim(show(x_hat), show(x_true), rng)[0]
    if base is not None:
        m["psnr_baseline"] = M.psnr(show(base), show(x_true), rng)[0]
        m["ssim_baseline"] = M.ssim(show(base), show(x_true), rng)[0]
    if _is_mri(op):
        m["nmse"] = M.nmse(show(x_hat), show(x_true))[0]
        if base is not None:
            m["nmse_baseline"] = M.nmse(show(base), show(x_true))[0]
    if draws.shape[0] > 1:
        m["psnr_draws"] = M.summary(M.psnr(show(draws), show(x_true.expand_as(draws)), rng))["mean"]
    m["data_range"] = float(rng)
    return m


def _prior_record(prior, cfg) -> dict:
    ck = getattr(prior, "checkpoint", None) or {}
    return {"target": str(cfg.prior.get("_target_", "")), "name": str(cfg.prior.get("name", "")),
            "path": ck.get("path"), "sha256": ck.get("sha256"), "format": ck.get("format"),
            "shape": list(prior.shape), "data_range": list(prior.data_range)}


def _noise_convention(noise, sigma_y: float, prior, mode: str) -> str:
    lo, hi = prior.data_range
    src = f"simulated with {noise!r}" if mode == "synthetic" else "measured data"
    return (f"{src}; solver sigma_y = {sigma_y:g} in measurement units, images on [{lo:g}, {hi:g}] "
            "(physical units of the prior)")


def _peak_memory_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_mb(dev: torch.device) -> tuple[float, str]:
    """(MB, what was measured): the CUDA allocator's peak since the last reset, or on the CPU the
    process's peak resident set size (a high-water mark over the whole process)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20, "CUDA peak allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def solve_item(job: Job, item: Item, out_dir: Path, *, bar=None, metrics_fn=None, extra=None) -> tuple[Path, dict]:
    """Simulate (or take) y, reconstruct, write ``samples/{id}.h5`` and ``figures/{id}.png``.

    ``metrics_fn(op, prior, x_true, rec, base, y, sigma_y)`` replaces the app's per-sample metrics
    (the benchmark runner's); ``extra`` adds attributes to the sample file."""
    from .api import generator_of, sample_seed, solver_name
    from .data.figures import sample_figure
    from .data.results import write_sample
    from .resume import sample_key

    cfg, s, op, dev = job.cfg, item.sample, item.op, job.device
    mode = getattr(job.data, "mode", "synthetic")
    resume_key = json.dumps(sample_key(cfg, item, job.prior))  # (before the operator moves to the device)
    noise_seed = sample_seed(int(cfg.seed), s.id, "noise")
    if s.y is None:  # simulated on the CPU (the generator's device), then moved
        op = op.cpu() if isinstance(op, torch.nn.Module) else op
        y = op.measure(s.x[None], job.noise, generator=generator_of(int(cfg.seed), s.id, "noise"))
    else:
        y = s.y[None]
    op = op.to(dev) if isinstance(op, torch.nn.Module) else op
    x_true = s.x[None].to(dev) if s.x is not None else None
    y = y.to(dev)
    base, base_name = _baseline(op, y, cfg.get("baseline", "auto"))
    _peak_memory_reset(dev)
    rec = _solve(cfg, y, op, job.prior, job.solver, sigma_y=item.sigma_y, num_samples=int(cfg.num_samples),
                 seed=int(cfg.seed), ids=[s.id], batch_size=_batch_size(cfg.batch_size), progress=bar)
    x_hat, draws = rec.mean, rec.samples[0]
    if metrics_fn is None:
        m = _metrics(op, job.prior, x_true, x_hat, draws, base, y, item.sigma_y, rec.nfe, rec.seconds)
    else:
        m = {"nfe": int(rec.nfe), "seconds": float(rec.seconds),
             **metrics_fn(op, job.prior, x_true, rec, base, y, item.sigma_y)}
    m["peak_memory_mb"], memory_kind = peak_memory_mb(dev)
    if mode != "synthetic":
        _flag_data_consistency(m, s.id, item.sigma_y)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    saved_op = op.to_dict()
    settings = plain_settings(job.solver)
    record = {
        "x_hat": x_hat[0], "samples": draws, "y": y[0],
        "id": s.id, "seed": int(cfg.seed), "noise_seed": noise_seed, "solver_seeds": json.dumps(rec.seeds[0]),
        "num_samples": int(cfg.num_samples), "batch_size": str(cfg.batch_size),
        "solver": solver_name(job.solver), "solver_settings": json.dumps(settings),
        "prior": json.dumps(_prior_record(job.prior, cfg)),
        "sigma_y": float(item.sigma_y), "noise": repr(job.noise) if mode == "synthetic" else "measured",
        "noise_convention": _noise_convention(job.noise, item.sigma_y, job.prior, mode),
        "mode": mode, "info": json.dumps(s.info, default=str),
        "metrics": json.dumps(m), "nfe": rec.nfe, "seconds": rec.seconds,
        "config_yaml": resolved, "config_hash": hashlib.sha256(resolved.encode()).hexdigest()[:16],
        "resume_key": resume_key,
        "baseline_name": base_name, "device": str(dev),
        "versions": json.dumps(_versions()), "memory_kind": memory_kind,
        **(extra or {}),
    }
    if rec.std is not None:
        record["std"] = rec.std[0]
    if x_true is not None:
        record["x_true"] = x_true[0]
    if base is not None:
        record["baseline"] = base[0]
    # the figure first: the sample file is the completion mark that resume trusts
    if cfg.get("figures", True):
        fmt = lambda name, key: (f"{name}\nPSNR {m[f'psnr{key}']:.2f} dB, SSIM {m[f'ssim{key}']:.3f}"  # noqa: E731
                                 if f"psnr{key}" in m else name)
        panels = [("ground truth", x_true[0] if x_true is not None else None),
                  (fmt(base_name or "baseline", "_baseline"), base[0] if base is not None else None),
                  (fmt(f"{solver_name(job.solver)}" + (f" (mean of {cfg.num_samples})" if rec.std is not None else ""),
                       "_mean" if "psnr_mean" in m else ""),
                   x_hat[0]),
                  ("posterior std", rec.std[0] if rec.std is not None else None)]
        sample_figure(out_dir / "figures" / f"{s.id}.png", panels, complex_image=_complex_image(op),
                      data_range=job.prior.data_range, title=f"{s.id}: {op.describe()}")
    path = write_sample(out_dir / "samples" / f"{s.id}.h5", record, trees={"operator": saved_op})
    return path, m


#: A measured sample whose residual ‖A(x̂) − y‖/(σ_y√m) exceeds this is flagged (≈ 1 is expected).
DC_WARN = 3.0


def _flag_data_consistency(m: dict, sid: str, sigma_y: float) -> None:
    """Warn, and record ``residual_chi_high`` (1/0; its mean in the summary is the fraction
    flagged), when a measured sample's data consistency is far above what σ_y predicts."""
    chi = m.get("residual_chi")
    if chi is None or not math.isfinite(chi):
        return
    m["residual_chi_high"] = int(chi > DC_WARN)
    if chi > DC_WARN:
        log.warning("%s: the data consistency ‖A(x̂) − y‖/(σ_y√m) = %.3g is far above the ≈1 that σ_y = %g "
                    "predicts: the operator (mask, kernel, coil maps) may not be the one y was measured with, or "
                    "σ_y is too small", sid, chi, sigma_y)


def _solve(cfg, y, op, prior, solver, **kw):
    """:func:`invdiff.reconstruct`, or its tiled form with ``tile_overlap`` set."""
    from .api import reconstruct

    overlap = _tile_overlap(cfg)
    if overlap is None:
        return reconstruct(y, op, prior, solver, **kw)
    from .tiling import reconstruct_tiled

    return reconstruct_tiled(y, op, prior, solver, overlap=overlap, **kw)


def _batch_size(v):
    return "auto" if str(v) == "auto" else int(v)


def plain_settings(solver) -> dict:
    """The solver's settings as JSON-able values (anything else as its repr), for result files."""
    from .api import solver_settings

    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
            for k, v in solver_settings(solver).items()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("invdiff", "torch", "deepinv"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Reconstruct every sample of ``cfg.data`` into ``out_dir``; returns the summary
    (``metrics.json``'s content). Samples whose file already exists are skipped (``resume``)."""
    from . import distributed
    from .api import solver_name, solver_settings
    from .data.claims import whoami
    from .data.results import summarize

    job = setup(cfg)
    out_dir = Path(out_dir)
    check_resume(job, out_dir, "hydra.run.dir=<another directory>; hydra.sweep.dir=… for a sweep")
    ctx = distributed.init()
    todo = distributed.pending(job.items, out_dir / "samples", resume=cfg.get("resume", True),
                               id_of=lambda it: it.sample.id, folders=[out_dir / "figures"])
    first_op = job.items[0].op
    log.info("operator: %s%s", first_op.describe(), " (from the data)" if job.items[0].sample.operator is not None else "")
    log.info("noise: %s; solver sigma_y = %g", job.noise if getattr(job.data, "mode", "") == "synthetic" else "measured data",
             job.items[0].sigma_y)
    ck = getattr(job.prior, "checkpoint", None) or {}
    log.info("prior: %s %s%s", cfg.prior.get("name", cfg.prior.get("_target_")), list(job.prior.shape),
             f" (sha256 {ck['sha256'][:12]}…)" if ck.get("sha256") else "")
    log.info("solver: %s %s", solver_name(job.solver), solver_settings(job.solver))
    log.info("data: %s; %d sample(s) × %d draw(s), %d to do%s; device %s", job.data.describe(), len(job.items),
             cfg.num_samples, len(todo), f" on rank {ctx.rank} of {ctx.world_size}" if ctx.active else "", job.device)
    from tqdm.auto import tqdm

    show = bool(cfg.get("progress", True))
    # bars on a terminal only (disable=None), so logs and CI output stay clean
    # claimed one at a time: other jobs in this directory skip them (and this one waits for theirs at the end)
    work = distributed.claimed(todo, out_dir / "samples", resume=cfg.get("resume", True), id_of=lambda it: it.sample.id)
    outer = tqdm(work, total=len(todo), desc="samples", unit="sample", disable=None if show else True)
    inner = tqdm(desc="solver steps", unit="step", leave=False, mininterval=0.5, disable=None if show else True)
    t0 = time.perf_counter()
    extra = {"rank": ctx.rank, "world_size": ctx.world_size, "process": whoami()}
    try:
        for k, it in enumerate(outer):
            inner.reset()
            _, m = solve_item(job, it, out_dir, bar=inner, extra=extra)
            if k == 0:
                log.info("NFE per sample: %d", m["nfe"])
            if "psnr" in m:
                outer.set_postfix(psnr=f"{m['psnr']:.2f}")
    finally:
        inner.close()
        outer.close()
        work.close()
    result = distributed.finish(summarize, out_dir)  # rank 0 merges every rank's sample files
    if not ctx.main:
        return result
    summ = result["summary"]
    elapsed = time.perf_counter() - t0
    if "psnr" in summ and summ["psnr"]["n"]:
        gain = ""
        if "psnr_baseline" in summ:
            from .data.results import read_sample

            name = read_sample(next((out_dir / "samples").glob("*.h5")))["baseline_name"]
            gain = (f" ({summ['psnr']['mean'] - summ['psnr_baseline']['mean']:+.2f} dB over the "
                    f"{name} at {summ['psnr_baseline']['mean']:.2f} dB)")
        msg = (f"PSNR {summ['psnr']['mean']:.2f} ± {summ['psnr']['std']:.2f} dB, SSIM {summ['ssim']['mean']:.3f}"
               f"{gain} over {summ['psnr']['n']} sample(s)")
    else:
        msg = (f"data consistency ‖A(x̂) − y‖/(σ_y√m) = {summ['residual_chi']['mean']:.3g} over "
               f"{summ['residual_chi']['n']} sample(s) (no ground truth)") if "residual_chi" in summ else "done"
    log.info("%s; %.1f s. Results in %s (samples/*.h5, figures/*.png, metrics.json, metrics.csv)",
             msg, elapsed, out_dir.resolve())
    return result


def check_resume(job: Job, out_dir: Path, fix: str) -> None:
    """Refuse, before any work, a run directory holding results computed differently
    (:func:`invdiff.resume.check`; ``fix`` names how to choose another directory)."""
    from .resume import check, sample_key

    keys = {it.sample.id: sample_key(job.cfg, it, job.prior) for it in job.items}
    try:
        check(out_dir / "samples", keys, resume=bool(job.cfg.get("resume", True)), fix=fix)
    except ValueError as err:
        raise AppError(str(err)) from None


def rerun(path: str | Path, device: str | None = None):
    """Re-run a stored sample from its file alone (y, operator parameters, seeds, config):
    returns the :class:`invdiff.api.Reconstruction`; with the same batch size and device type its
    samples equal the stored ones bit for bit. ``device``: by default the one the sample was
    computed on (the draws depend on the device type: CPU and CUDA generators differ)."""
    from .data.results import read_sample

    rec = read_sample(path)
    if device is None:
        device = str(rec.get("device", "cpu"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise AppError(f"{path} was computed on {device}, and torch sees no CUDA device here: its draws came "
                           "from CUDA generators. Re-run it on a GPU, or pass device='cpu' to re-run it on the CPU "
                           "(other draws, the same distribution)")
    cfg = OmegaConf.create(rec["config_yaml"])
    op = operators.from_dict(rec["operator"])
    prior = build(cfg.prior, "prior").to(device)
    solver = build(cfg.solver, "solver")
    y = torch.from_numpy(rec["y"]).to(device)[None]
    return _solve(cfg, y, op.to(device) if isinstance(op, torch.nn.Module) else op, prior, solver,
                  sigma_y=rec["sigma_y"], num_samples=int(rec["num_samples"]), seed=int(rec["seed"]),
                  ids=[rec["id"]], batch_size=_batch_size(rec["batch_size"]))


# --------------------------------------------------------------------------------------------
# configs for scripts
# --------------------------------------------------------------------------------------------
def config(*overrides: str) -> DictConfig:
    """The app's config composed in-process from command-line style overrides, e.g.
    ``config("operator=mri_8x", "solver=dps", "solver.steps=500")``; :func:`setup` builds it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("invdiff.configs", version_base=None):
        return compose("config", overrides=list(overrides))



if __name__ == "__main__":  # python -m invdiff.app ... = the invdiff command
    from .cli import main

    main()
