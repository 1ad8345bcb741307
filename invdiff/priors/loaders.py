"""``invdiff.priors.load``: detect a checkpoint's format and return a :class:`Prior`.

=========================================  ==============================================
file                                       format
=========================================  ==============================================
``*.safetensors`` with ``invdiff`` metadata  the project's own (weights + JSON description)
``*.pt`` state dict with ``input_blocks.*``  guided-diffusion / ADM (DPS, OpenAI)
``*.pt`` dict with ``ema`` / ``net``         EDM-style (InverseBench)
``*.pt`` dict ``{model, ema, step}``         score_sde (score-MRI)
folder with ``config.json``                  diffusers ``UNet2DModel`` (optional extra)
``*.pkl`` EDM network pickle                 refused: convert it (``python -m invdiff.priors.convert``)
=========================================  ==============================================

Files are recognised by their content, not their name (:func:`~invdiff.priors.checkpoints.checkpoint_kind`);
an empty, truncated or unknown file is "not a checkpoint file". Every path reads safely and strictly
(:mod:`invdiff.priors.checkpoints`); the returned prior carries ``prior.checkpoint = {"path", "sha256",
"format"}``.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .adapters import NetworkPrior
from .checkpoints import CheckpointError, safe_safetensors_load, save_safetensors, sha256_file, strict_load
from .schedules import EDMSchedule, VESchedule, VPSchedule

FORMAT_VERSION = 1

#: Network builders the project's own format may name: ``name -> builder(**arch_kwargs)``.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


def register_architecture(name: str):
    def deco(builder):
        ARCHITECTURES[name] = builder
        return builder
    return deco


def schedule_to_dict(schedule) -> dict:
    if isinstance(schedule, VPSchedule):
        return {"type": "vp", "kind": schedule.kind, "T": schedule.T,
                "beta_start": schedule.beta_start, "beta_end": schedule.beta_end}
    if isinstance(schedule, VESchedule):
        return {"type": "ve", "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max}
    if isinstance(schedule, EDMSchedule):
        return {"type": "edm", "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max, "rho": schedule.rho}
    raise TypeError(f"unknown schedule {schedule!r}")


def schedule_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("type", None)
    classes = {"vp": VPSchedule, "ve": VESchedule, "edm": EDMSchedule}
    if kind not in classes:
        raise CheckpointError(f"unknown schedule type {kind!r}; known: {sorted(classes)}")
    return classes[kind](**d)


def save(path: str | Path, prior: NetworkPrior, architecture: str, arch_kwargs: dict,
         source: dict | None = None) -> Path:
    """Write ``prior`` in the project's format: one ``.safetensors`` file whose metadata holds the
    architecture, its arguments, the parameterisation, schedule, shape, ranges and conditioning
    (and ``source``, e.g. the file a converted prior came from). Written to a temporary name and
    moved into place (never a partial file)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; registered: {sorted(ARCHITECTURES)}")
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "arch_kwargs": arch_kwargs,
        "parameterization": prior.parameterization,
        "schedule": schedule_to_dict(prior.schedule),
        "conditioning": prior.conditioning,
        "learned_sigma": prior.learned_sigma,
        "shape": list(prior.shape),
        "data_range": list(prior.data_range),
        "model_range": list(prior.model_range),
    }
    if source is not None:
        meta["source"] = source
    return save_safetensors(path, prior.net.state_dict(), {"invdiff": json.dumps(meta)})


def read_tagged(path: str | Path, key: str, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the JSON description stored under metadata ``key`` of a project ``.safetensors``
    file; a :class:`CheckpointError` saying the file is not ``what`` when the description is absent."""
    tensors, meta = safe_safetensors_load(path)
    try:
        return tensors, json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has no valid {key!r} metadata; it is not {what}") from err


def _load_invdiff(path: Path, overrides: dict) -> NetworkPrior:
    tensors, info = read_tagged(path, "invdiff", "an invdiff prior file")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {info.get('format_version')} is not supported "
                              f"(this invdiff reads version {FORMAT_VERSION})")
    arch = info["architecture"]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path} needs architecture {arch!r}, which is not registered "
                              f"(registered: {sorted(ARCHITECTURES)})")
    net = ARCHITECTURES[arch](**info["arch_kwargs"])
    strict_load(net, tensors, str(path))
    kwargs = dict(shape=info["shape"], data_range=info["data_range"], model_range=info["model_range"],
                  conditioning=info["conditioning"], learned_sigma=info["learned_sigma"])
    kwargs.update(overrides)
    return NetworkPrior(net.eval(), info["parameterization"], schedule_from_dict(info["schedule"]), **kwargs)


def load_checkpoint(path: str | Path | None = None, *, env: str | None = None, name: str = "prior",
                    **kwargs: Any) -> NetworkPrior:
    """:func:`load` for configs: the path comes from ``path`` or, if that is empty, from the
    environment variable ``env``; a clear error names both when neither is set."""
    if path in (None, "") and env:
        path = os.environ.get(env) or None
    if path in (None, ""):
        hint = f" or set the environment variable {env}" if env else ""
        raise FileNotFoundError(f"the {name} prior needs its checkpoint file: pass prior.path=/path/to/file{hint}. "
                                "Nothing is downloaded.")
    return load(path, **kwargs)


def _find(name_or_path: str | Path) -> Path:
    """The file or folder behind ``name_or_path``: a path, or the name of a shipped prior. A missing
    one is a :class:`FileNotFoundError` that lists the shipped names (and the closest one) when the
    argument could have been a name."""
    from .shipped import SHIPPED, shipped_prior_path

    if isinstance(name_or_path, str) and name_or_path in SHIPPED and not Path(name_or_path).exists():
        return shipped_prior_path(name_or_path)
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    msg = f"checkpoint not found: {p}"
    if p.parent == Path("."):  # a bare name: perhaps a mistyped shipped prior
        close = difflib.get_close_matches(p.stem, SHIPPED, n=1, cutoff=0.6)
        msg += (f". It is not a shipped prior either; the shipped priors are {', '.join(SHIPPED)}"
                + (f". Did you mean '{close[0]}'?" if close else ". Give one of those names or a checkpoint's path."))
    else:
        msg += ". Give the path of a checkpoint file or model folder, or a shipped prior's name " \
               f"({', '.join(SHIPPED)})."
    raise FileNotFoundError(msg)


def load(name_or_path: str | Path, *, trust: bool | None = None, device: str | torch.device | None = None,
         **overrides: Any) -> NetworkPrior:
    """Load a pretrained score model as a :class:`Prior`, detecting its format from the file's content.

    Nothing is unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``,
    safetensors). A Python pickle — an EDM ``.pkl`` network snapshot included — is refused with the
    reason; convert an EDM pickle once with ``python -m invdiff.priors.convert`` (see
    :mod:`invdiff.priors.convert`), which runs nothing from the file.

    :param name_or_path: a file or folder (see the module table), or the name of a shipped prior
        (``"phantom64"``, :mod:`invdiff.priors.shipped`).
    :param trust: not accepted any more (``trust=True`` used to unpickle EDM files, running their
        code); passing ``True`` is an error that names the converter. Kept so that old calls and
        ``+prior.trust=true`` fail with that message instead of a confusing one.
    :param device: where to put the network.
    :param overrides: :class:`NetworkPrior` arguments that replace the detected ones
        (``data_range``, ``snap``, ``net_dtype``, ...).
    """
    from . import formats
    from .checkpoints import checkpoint_kind, pickle_globals, plain_pickle_refusal

    if trust:
        raise CheckpointError(
            f"trust=True is not accepted (loading {name_or_path}): invdiff unpickles nothing, in the app or from "
            "Python, so no flag can make it run code from a file. Convert an EDM .pkl once with `python -m "
            "invdiff.priors.convert network.pkl network.safetensors` (builds only tensors and plain values, runs "
            "nothing from the file) and load the .safetensors file (prior=invdiff_file prior.path=...).")
    path = _find(name_or_path)
    if path.is_dir():
        prior, fmt = formats.load_folder(path, overrides), "diffusers"
    else:
        kind = checkpoint_kind(path)  # not a checkpoint file (empty, truncated, random): an error here
        if kind == "pickle":
            with open(path, "rb") as f:
                raise plain_pickle_refusal(path, pickle_globals(f))
        if kind == "hdf5":
            raise CheckpointError(
                f"{path} is not a checkpoint file: it is an HDF5 file (data or results, such as samples/<id>.h5). "
                "Priors load from a torch file (.pt), a safetensors file or a diffusers folder; pass HDF5 data "
                "with data=... instead.")
        if kind == "safetensors":
            prior, fmt = _load_invdiff(path, overrides), "invdiff"
        else:
            prior, fmt = formats.load_torch_file(path, overrides)
    digest = sha256_file(path if path.is_file() else formats.weights_file(path))
    prior.checkpoint = {"path": str(path.resolve()), "sha256": digest, "format": fmt}
    if device is not None:
        prior.to(device)
    return prior
