"""The project's own prior file: one ``.safetensors`` file, the network's weights plus a JSON
description under the metadata key ``invdiff`` (architecture and its arguments, parameterisation,
schedule, shape, ranges, conditioning). Written by :func:`save` (``invdiff-train``, the EDM
converter) and read as format ``"invdiff"`` (:mod:`invdiff.priors.registry`) by
:func:`invdiff.priors.load`; the architecture it names must be registered
(:func:`~invdiff.priors.registry.register_architecture`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .adapters import NetworkPrior
from .consistency import ConsistencyPrior
from .flow import FlowPrior, make_path
from .checkpoints import CheckpointError, safe_safetensors_load, save_safetensors, strict_load
from .registry import ARCHITECTURES, Checkpoint, register_format
from .schedules import EDMSchedule, VESchedule, VPSchedule

FORMAT_VERSION = 1


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


def save(path: str | Path, prior: NetworkPrior | FlowPrior | ConsistencyPrior, architecture: str, arch_kwargs: dict,
         source: dict | None = None) -> Path:
    """Write ``prior`` in the project's format: one ``.safetensors`` file whose metadata holds the
    architecture, its arguments, the parameterisation, schedule, shape, ranges and conditioning —
    or, for a :class:`~invdiff.priors.flow.FlowPrior` (``"kind": "flow"``), its interpolant path,
    time convention, time scale and time range; for a
    :class:`~invdiff.priors.consistency.ConsistencyPrior` (``"kind": "consistency"``) its σ range
    (σ_min is the boundary of f(x, σ_min) = x; the architecture builds f itself) — (and ``source``, e.g. the file a converted prior
    came from). Written to a temporary name and moved into place (never a partial file)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; registered: {sorted(ARCHITECTURES)}")
    if isinstance(prior, FlowPrior):
        meta = {"format_version": FORMAT_VERSION, "kind": "flow", "architecture": architecture,
                "arch_kwargs": arch_kwargs, "path": prior.path.to_dict(), "time_convention": prior.time_convention,
                "time_scale": prior.time_scale, "t_range": list(prior.t_range), "shape": list(prior.shape),
                "data_range": list(prior.data_range), "model_range": list(prior.model_range)}
        if source is not None:
            meta["source"] = source
        return save_safetensors(path, prior.net.state_dict(), {"invdiff": json.dumps(meta)})
    from .bridge import BridgePrior

    if isinstance(prior, BridgePrior):  # a bridge (invdiff.priors.bridge): its path, σ₁ and operator family
        meta = {"format_version": FORMAT_VERSION, "kind": "bridge", "architecture": architecture,
                "arch_kwargs": arch_kwargs, "path": prior.path.to_dict(), "sigma_1": prior.sigma_1,
                "spec": prior.spec, "shape": list(prior.shape), "data_range": list(prior.data_range)}
        if source is not None:
            meta["source"] = source
        return save_safetensors(path, prior.net.state_dict(), {"invdiff": json.dumps(meta)})
    if isinstance(prior, ConsistencyPrior):
        meta = {"format_version": FORMAT_VERSION, "kind": "consistency", "architecture": architecture,
                "arch_kwargs": arch_kwargs, "sigma_range": [prior.sigma_min, prior.sigma_max],
                "shape": list(prior.shape), "data_range": list(prior.data_range),
                "model_range": list(prior.model_range)}
        if source is not None:
            meta["source"] = source
        return save_safetensors(path, prior.net.state_dict(), {"invdiff": json.dumps(meta)})
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


@register_format("invdiff", lambda c: c.kind == "safetensors", "invdiff .safetensors files")
def _load(checkpoint: Checkpoint, overrides: dict) -> NetworkPrior | FlowPrior | ConsistencyPrior:
    path = checkpoint.path
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
    if info.get("kind", "network") == "flow":
        kwargs = dict(shape=info["shape"], data_range=info["data_range"], model_range=info["model_range"],
                      time_convention=info["time_convention"], time_scale=info["time_scale"],
                      t_range=info["t_range"])
        kwargs.update(overrides)
        return FlowPrior(net.eval(), make_path(info["path"]), **kwargs)
    if info.get("kind", "network") == "bridge":
        from .bridge import BridgePrior, BrownianBridge

        if overrides:
            raise CheckpointError(f"{path} is a bridge; it takes no overrides (got {sorted(overrides)})")
        p = dict(info["path"])
        if p.pop("kind", None) != "brownian_bridge":
            raise CheckpointError(f"{path}: unknown bridge path {info['path']!r}")
        return BridgePrior(net.eval(), BrownianBridge(**p), sigma_1=info["sigma_1"], spec=info["spec"],
                           shape=info["shape"], data_range=info["data_range"])
    if info.get("kind", "network") == "consistency":
        kwargs = dict(shape=info["shape"], data_range=info["data_range"], model_range=info["model_range"],
                      sigma_range=info["sigma_range"])
        kwargs.update(overrides)
        return ConsistencyPrior(net.eval(), **kwargs)
    kwargs = dict(shape=info["shape"], data_range=info["data_range"], model_range=info["model_range"],
                  conditioning=info["conditioning"], learned_sigma=info["learned_sigma"])
    kwargs.update(overrides)
    return NetworkPrior(net.eval(), info["parameterization"], schedule_from_dict(info["schedule"]), **kwargs)
