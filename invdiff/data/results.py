"""Atomic result files: each sample is written to a temporary name and moved into place with
``os.replace``, so a crash never leaves a partial file and finished samples are never lost."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np


def _write_group(group: h5py.Group, data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _write_group(group.create_group(key), value)
        elif hasattr(value, "detach"):
            group.create_dataset(key, data=value.detach().cpu().numpy())
        elif isinstance(value, np.ndarray):
            group.create_dataset(key, data=value)
        elif value is None:
            group.attrs[key] = "null"
        elif isinstance(value, (list, tuple)):
            group.attrs[key] = json.dumps(list(value))
        else:
            group.attrs[key] = value


def write_sample(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (tensors/arrays → datasets, nested dicts → groups, scalars → attributes)
    to the HDF5 file ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            _write_group(f, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
