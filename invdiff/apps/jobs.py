"""Building and checking a job of the reconstruction app (and of the benchmark runner, which
runs the same jobs): :func:`setup` turns a composed config into a :class:`Job` — operator, noise,
prior, solver, data and one checked :class:`Item` per sample — or raises one :class:`AppError`
paragraph, before anything is simulated, sampled or written.

What is checked here is what only the config knows (top-level switches and seeds, ``shape``, the
memory a run needs, ``sigma_y=auto``, sample ids, each sample's shapes and value range against its
operator and the prior, measured data solved with the operator they were acquired with); the
solver's own checks (capabilities, y, σ_y, settings) run through
:func:`invdiff.solvers.check_call` on a stand-in measurement, so they are written once, in the solver.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import operators
from operators import CapabilityError

from ..checks import check_sigma_y, whole_number
from ..evaluation import complex_image
from ..memory import refusal
from .common import AppError, build, choices, one_paragraph, resolve_device


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
    try:
        check_sigma_y(s, 1)  # (the check invdiff.reconstruct and the solvers make, before any work)
    except (TypeError, ValueError) as err:
        raise AppError(one_paragraph(err)) from None
    return s


def _check_data(t: torch.Tensor, name: str, kind: str, shape: tuple, where: str) -> None:
    """dtype (real floating point), shape (when the operator states one) and finiteness."""
    if not t.is_floating_point() or t.is_complex():
        raise AppError(f"{name}: expected {kind}, got dtype {t.dtype}")
    if shape and tuple(t.shape) != shape:
        raise AppError(f"{name} has shape {list(t.shape)}, {where} {list(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise AppError(f"{name} contains NaN or Inf")


def tile_overlap(cfg) -> int | None:
    v = cfg.get("tile_overlap")
    if v is None:
        return None
    if not whole_number(v, minimum=0):
        raise AppError(f"tile_overlap must be null (no tiling) or a number of pixels >= 0, got {v!r}")
    return v


def runtime_settings(cfg) -> dict:
    """The ``runtime`` node (how the network is called: autocast, compile, checkpoint,
    channels_last), checked, as keyword arguments of :func:`invdiff.reconstruct`."""
    from ..solvers import COMPILE_MODES

    node = cfg.get("runtime") or {}
    known = ("autocast", "compile", "checkpoint", "channels_last")
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise AppError(f"runtime has no setting {unknown[0]!r}; its settings are {', '.join(known)}")
    out = {}
    for key in known:
        v = node.get(key, False)
        ok = isinstance(v, bool) or (key == "compile" and v in COMPILE_MODES)
        if not ok:
            modes = f", or one of {', '.join(COMPILE_MODES)}" if key == "compile" else ""
            raise AppError(f"runtime.{key} must be true or false{modes}; got {v!r}")
        out[key] = v
    return out


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
        if complex_image(op):
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
    from ..priors.bridge import BridgePrior
    from ..solvers import BRIDGE_SOLVERS, check_call

    ok = []
    meas = tuple(getattr(op, "meas_size", ()))
    y = torch.zeros((1, *meas), dtype=torch.float64) if meas else None
    for name in choices("solver"):
        if (name in BRIDGE_SOLVERS) != isinstance(prior, BridgePrior):  # bridges run bridge solvers only
            continue
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
    from .runs import digest

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
    synthetic = whole_number(coils, minimum=0)
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
        if not whole_number(v, minimum=0):
            raise AppError(f"{key} must be a whole number >= 0, got {v!r}")
    for key in ("figures", "progress", "resume"):
        v = cfg.get(key, True)
        if not isinstance(v, bool):
            raise AppError(f"{key} must be true or false, got {v!r}")
    from ..metrics import check_ssim_window

    try:
        check_ssim_window(cfg.get("ssim_window", "uniform7"))
    except ValueError as err:
        raise AppError(str(err)) from err
    from ..data.figures import FORMATS

    if cfg.get("figure_format", "png") not in FORMATS:
        raise AppError(f"figure_format must be one of {', '.join(FORMATS)} (pdf/svg: vector), got "
                       f"{cfg.get('figure_format')!r}")
    dpi = cfg.get("figure_dpi", 150)
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 1200:
        raise AppError(f"figure_dpi must be a whole number from 10 to 1200 (300 for print), got {dpi!r}")
    bands = cfg.get("figure_bands", None)
    try:
        C = int(cfg.shape[0])
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):  # a bad shape is _check_shape's to report
        C = None
    if bands is not None:
        ok = (not isinstance(bands, (str, bytes)) and hasattr(bands, "__len__") and len(bands) in (1, 3)
              and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < (C or 10**9) for b in bands))
        if not ok:
            raise AppError(f"figure_bands must be 1 or 3 band indices from 0 to {(C or 1) - 1} (e.g. [3,2,1] for a "
                           f"false-colour NIR composite), got {bands!r}")
    v = cfg.get("progress_log", 10)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
        raise AppError(f"progress_log must be a percentage in [0, 100] (0: no progress lines), got {v!r}")


def _check_shape(cfg: DictConfig) -> tuple[int, ...]:
    """``shape``: [C, H, W] (or [C, D, H, W]) of positive whole numbers."""
    from omegaconf import ListConfig

    v = cfg.get("shape")
    ok = isinstance(v, (list, tuple, ListConfig)) and len(v) in (3, 4) and all(
        whole_number(s) for s in v)
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
    tiled = tile_overlap(cfg) is not None
    msg = refusal(shape, n, b, tile_shape=() if tiled else None, device=device, what=f"shape={list(shape)}".replace(" ", ""),
                  can_tile=not tiled)
    if msg:
        raise AppError(msg)


def setup(cfg: DictConfig) -> Job:
    """Build operator, noise, prior, solver and data from ``cfg`` and check every sample against
    them (shapes, ranges, the solver's capability needs) — before any simulation or output."""
    device = _check_config(cfg)
    shape = _check_shape(cfg)
    _check_memory(cfg, shape, device)  # (before the operator: its masks and factors are image-sized)
    operator = build(cfg.operator, "operator") if cfg.get("operator") is not None else None
    noise = build(cfg.noise, "noise") if cfg.get("noise") is not None else None
    prior = build(cfg.prior, "prior")
    solver = build(cfg.solver, "solver")
    data = build(cfg.data, "data")
    overlap = _check_prior(cfg, prior, shape)
    mode = getattr(data, "mode", "synthetic")
    samples = _samples(data, operator)
    items, checked = [], set()
    for s in samples:
        op = s.operator if s.operator is not None else operator
        if op is None:
            raise AppError(f"sample {s.id} brings no operator and operator=null; choose an operator config")
        if mode == "synthetic" and s.x is None:
            raise AppError(f"synthetic data need ground truths; sample {s.id} has none")
        _check_item(s, op, prior, tiled=overlap is not None)
        sig = _sigma_y(cfg, noise, s, mode)
        if (id(op), sig) not in checked:
            _check_solver(cfg, solver, s, op, prior, sig, overlap)
            checked.add((id(op), sig))
        items.append(Item(s, op, sig))
    if mode != "synthetic" and any(it.sample.operator is None for it in items):
        _check_measured_operator(cfg, operator)
    prior = prior.to(device)
    return Job(cfg, operator, noise, prior, solver, data, device, items)


def _check_config(cfg: DictConfig) -> torch.device:
    """The top-level settings (counts, baseline, switches, runtime); returns the run's device."""
    device = resolve_device(cfg.get("device", "auto"))
    for key in ("num_samples", "batch_size"):
        v = cfg.get(key)
        if key == "batch_size" and v == "auto":
            continue
        if not whole_number(v):
            raise AppError(f"{key} must be a positive integer{' or auto' if key == 'batch_size' else ''}, got {v!r}")
    if cfg.get("baseline", "auto") not in ("auto", "pinv", "adjoint", "none"):
        raise AppError(f"baseline must be auto, pinv, adjoint or none, got {cfg.baseline!r}")
    _check_settings(cfg)
    runtime_settings(cfg)
    return device


def _check_prior(cfg: DictConfig, prior, shape: tuple) -> int | None:
    """The prior against ``shape`` (equal, or smaller with tiling); returns ``tile_overlap``."""
    from ..priors.bridge import BridgePrior

    if prior is None or not (hasattr(prior, "denoiser") or isinstance(prior, BridgePrior)):
        raise AppError(f"prior config did not give a prior (got {type(prior).__name__})")
    overlap = tile_overlap(cfg)
    if overlap is None and tuple(prior.shape) != shape:
        raise AppError(f"the prior models images {list(prior.shape)} but shape={list(cfg.shape)}; "
                       f"add shape={list(prior.shape).__str__().replace(' ', '')} to the command line, or solve "
                       f"larger images in prior-sized tiles with tile_overlap=16")
    if overlap is not None and (prior.shape[0] != shape[0] or any(p > s for p, s in zip(prior.shape[1:], shape[1:]))):
        raise AppError(f"tiling needs images at least as large as the prior's {list(prior.shape)} with as many "
                       f"channels; got shape={list(cfg.shape)}")
    return overlap


def _samples(data, operator) -> list:
    """The data source's samples, with ids that can name result files and no duplicates."""
    try:
        samples = data.samples(operator)
    except (ValueError, TypeError, FileNotFoundError, OSError, IndexError, KeyError, EOFError) as err:
        raise AppError(f"data ({data.describe()}): {one_paragraph(err)}") from err
    if not samples:
        raise AppError(f"data ({data.describe()}) gave no samples")
    ids = [s.id for s in samples]
    for i in ids:  # ids name the result files: samples/{id}.h5, figures/{id}.png
        if not isinstance(i, str) or i in ("", ".", "..") or any(c in i for c in "/\\\0"):
            raise AppError(f"data gave the sample id {i!r}, which cannot name a result file (samples/<id>.h5): ids "
                           "must be non-empty names without '/', '\\' or NUL; rename the input file or dataset")
    if len(set(ids)) != len(ids):
        raise AppError(f"data gave duplicate sample ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return samples


def _check_solver(cfg: DictConfig, solver, sample, op, prior, sigma_y: float, overlap: int | None) -> None:
    """The solver's own checks (:func:`invdiff.solvers.check_call`) on a stand-in y of the right
    shape — on the first tile's problem when the image is solved in tiles."""
    from ..solvers import check_call

    meas = tuple(getattr(op, "meas_size", ()))
    probe = sample.y[None] if sample.y is not None else torch.zeros((1, *meas), dtype=torch.float64)
    op_checked = op
    if overlap is not None:  # the solver sees tile problems
        from .. import tiling

        try:
            restriction = tiling.Restriction(op)
            first = restriction.layout(tuple(prior.shape[1:]), overlap)[0]
        except ValueError as err:
            raise AppError(one_paragraph(err)) from err
        op_checked = restriction.problem(first.top, first.left, first.height, first.width)[0]
        probe = tiling.crop_y(probe, first)
    try:
        check_call(solver, probe, op_checked, prior, sigma_y=sigma_y)
    except CapabilityError as err:
        ok = _solver_choices_for(op, prior, sigma_y)
        raise AppError(f"{one_paragraph(err)} Solvers that accept this operator: {', '.join(ok) or 'none'}.") from err
    except (ValueError, TypeError) as err:
        raise AppError(f"solver config ({cfg.solver.get('_target_')}): {one_paragraph(err)}") from err
