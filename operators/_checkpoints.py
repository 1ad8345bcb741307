"""Safe, strict checkpoint reading and atomic writing, shared by every loader (the priors'
``invdiff.priors.load`` and the operators' blur-network checkpoints).

* Files are read with ``safetensors`` or ``torch.load(weights_only=True)``: nothing in a checkpoint
  is ever unpickled as arbitrary Python objects (EDM ``.pkl`` pickles are refused unless the caller
  passes ``trust=True`` *and* EDM's own code is importable).
* Loading into a network is strict: any missing, unexpected or mis-shaped key is an error that
  lists them.
* A truncated or corrupted file gives an error naming the file; the file's SHA-256 is recorded in
  ``prior.checkpoint`` for the results that use it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely and exactly."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_file(path: str | Path, what: str = "checkpoint") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the cause."""
    p = require_file(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {p}: it contains pickled Python objects beyond tensors and plain "
            f"containers, which would run code on load ({str(err).splitlines()[0]}). Re-save it as a "
            "state dict (torch.save(model.state_dict(), path)) or as safetensors."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"could not read checkpoint {p}: the file is truncated or corrupted ({err})") from err


def safe_safetensors_load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    p = require_file(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"could not read checkpoint {p}: the file is truncated or corrupted ({err})") from err
    return tensors, meta


def strict_load(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``net.load_state_dict(state)`` that fails, listing every mismatch, unless keys and shapes
    agree exactly."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        def show(keys, fmt=str):
            return ", ".join(fmt(k) for k in keys[:12]) + (f" … ({len(keys)} in all)" if len(keys) > 12 else "")

        lines = [f"checkpoint {source} does not match {type(net).__name__}:"]
        if missing:
            lines.append(f"  missing keys: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {show(unexpected)}")
        if shapes:
            lines.append("  shape mismatches: " + show(
                shapes, lambda k: f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"))
        raise CheckpointError("\n".join(lines))
    net.load_state_dict(dict(state), strict=True)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key (all keys must carry it)."""
    if not all(k.startswith(prefix) for k in state):
        raise CheckpointError(f"expected every key to start with {prefix!r}")
    return {k[len(prefix):]: v for k, v in state.items()}


def save_safetensors(path: str | Path, state: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``state`` (with string ``metadata``) to ``path`` through a temporary file and
    ``os.replace``: never a partial file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 → what a plain open would give
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
