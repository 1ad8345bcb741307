"""Result files: one HDF5 file per sample, written atomically, and summaries rebuilt from them.

Each sample is written to a temporary name (``.invdiff-tmp/{pid}@{host}@{random}@{name}.tmp`` beside
it) and moved into place with ``os.replace``, so a crash never leaves a partial ``.h5`` and
finished samples are never lost; several processes may share a run directory
(:mod:`invdiff.data.claims`, which also removes the temporaries of dead processes; the writer's
host and pid in a temporary's name come from :mod:`invdiff.data.processes`).
:func:`write_sample` maps a dict onto HDF5: tensors/arrays → datasets, nested dicts → groups,
scalars → attributes, lists → JSON attributes. :func:`write_tree` / :func:`read_tree` store a
nested structure with arrays (an operator's parameters) so that it reads back *exactly*: arrays as
datasets, everything else as one JSON attribute ``spec`` with ``{"@array": name}`` references.

The app's sample layout (``samples/{id}.h5``; :func:`invdiff.apps.app.run`):

=====================  =========================================================================
``x_hat``              ``[C, H, W]`` the reconstruction (posterior mean when ``num_samples > 1``)
``samples``            ``[N, C, H, W]`` the posterior draws
``std``                ``[C, H, W]`` per-pixel posterior standard deviation (``N > 1``)
``y``                  the measurement (measurement units)
``x_true``             the ground truth (when known)
``baseline``           zero-filled / pseudo-inverse reconstruction (when the operator has one)
``operator/``          the operator's parameters (mask, kernel, coil maps): :func:`read_tree`
attributes             ``id``, ``seed``, ``noise_seed``, ``solver_seeds``, ``solver``,
                       ``solver_settings``, ``prior``, ``sigma_y``, ``noise``,
                       ``noise_convention``, ``data_range``, ``metrics``, ``nfe``, ``seconds``,
                       ``config_yaml``, ``config_hash``, ``mode``, ``info``, ``versions``,
                       ``resume_key`` (what resume compares: :mod:`invdiff.apps.runs`)
=====================  =========================================================================
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .processes import host_tag


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


def _pack(value, arrays: dict):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"@array": name}
    if isinstance(value, dict):
        return {str(k): _pack(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unpack(value, group: h5py.Group):
    if isinstance(value, dict):
        if set(value) == {"@array"}:
            return np.asarray(group[value["@array"]][()])
        return {k: _unpack(v, group) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, group) for v in value]
    return value


def write_tree(group: h5py.Group, tree: dict) -> None:
    """Store a nested dict with arrays in ``group`` (arrays as datasets, the rest as JSON)."""
    arrays: dict[str, np.ndarray] = {}
    group.attrs["spec"] = json.dumps(_pack(tree, arrays))
    for name, arr in arrays.items():
        group.create_dataset(name, data=arr)


def read_tree(group: h5py.Group) -> dict:
    """Read back what :func:`write_tree` stored, arrays as numpy arrays."""
    return _unpack(json.loads(group.attrs["spec"]), group)


def write_sample(path: str | Path, data: dict[str, Any], trees: dict[str, dict] | None = None) -> Path:
    """Write ``data`` (tensors/arrays → datasets, nested dicts → groups, scalars → attributes)
    and ``trees`` (group name → :func:`write_tree`) to the HDF5 file ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_group(f, data)
        for name, tree in (trees or {}).items():
            write_tree(f.create_group(name), tree)
    return path


#: Folder (beside a target) that holds its temporaries: no result name can be a folder of that name.
TEMPORARIES = ".invdiff-tmp"


def _temporary(path: Path, suffix: str) -> str:
    """A new, empty temporary ``.invdiff-tmp/{pid}@{host}@{random}@{name}{suffix}`` beside ``path``."""
    folder = path.parent / TEMPORARIES
    for _ in range(20):  # (another process removes the folder when it is empty)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{os.getpid()}@{host_tag()}@", suffix=f"@{path.name[:100]}{suffix}",
                                       dir=folder)
        except FileNotFoundError:
            continue
        os.close(fd)
        return tmp
    raise OSError(f"cannot create a temporary file in {folder}")


def _rmdir(folder: Path) -> None:
    try:
        os.rmdir(folder)
    except OSError:  # not empty (another process's temporary) or gone
        pass


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp"):
    """A temporary name to write to, ``.invdiff-tmp/{pid}@{host}@{random}@{name}{suffix}`` beside
    ``path`` (same file system); it replaces ``path`` (``os.replace``) when the block ends without
    error and is removed otherwise. No input can produce such a name, and its owner is in it
    (:func:`invdiff.data.claims.remove_stale_temporaries`). The file gets the mode a plain
    ``open`` would give (0666 & ~umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, suffix)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        _rmdir(Path(tmp).parent)


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_sample(path: str | Path) -> dict:
    """A sample file as a dict: datasets as numpy arrays, attributes (JSON ones decoded:
    ``metrics``, ``solver_settings``, ``prior``, ``info``, ``solver_seeds``), ``operator`` as the
    stored dict (``operators.from_dict`` rebuilds it)."""
    path = Path(path)
    out: dict[str, Any] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable result file ({err})") from err
    with f:
        for key, value in f.attrs.items():
            out[key] = _attr(value)
        for key in ("metrics", "solver_settings", "prior", "info", "solver_seeds", "versions"):
            if isinstance(out.get(key), str):
                out[key] = json.loads(out[key])
        for key, item in f.items():
            if isinstance(item, h5py.Dataset):
                out[key] = np.asarray(item[()])
            elif "spec" in item.attrs:
                out[key] = read_tree(item)
    return out


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished, readable result file (what ``resume`` skips)."""
    try:
        with h5py.File(path, "r") as f:
            return "x_hat" in f and "metrics" in f.attrs
    except OSError:
        return False


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def summarize(run_dirs, out_dir: str | Path | None = None) -> dict:
    """Rebuild ``metrics.json`` and ``metrics.csv`` from the sample files of one or several run
    directories (``<dir>/samples/*.h5``); returns the summary.

    ``metrics.csv``: one row per sample (and run). ``metrics.json``: ``{"samples": [...],
    "summary": {metric: {"mean", "std", "n"}}}`` — mean ± std over all samples (and seeds) found.
    """
    from ..metrics import summary

    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    rows = []
    for d in dirs:
        for f in sorted((d / "samples").glob("*.h5")):
            if not is_complete(f):
                continue
            rec = read_sample(f)
            row = {"run": d.name if len(dirs) > 1 else ".", "id": rec["id"], "seed": rec["seed"], "solver": rec["solver"]}
            row.update(rec["metrics"])
            rows.append(row)
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    numeric = [k for k in keys if k not in ("run", "id", "solver") and all(isinstance(r.get(k), (int, float)) for r in rows)]
    result = {"samples": rows, "summary": {k: summary(r[k] for r in rows if k in r) for k in numeric if k != "seed"}}
    out = Path(out_dir) if out_dir is not None else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "metrics.json", json.dumps(finite(result), indent=2))
    lines = [",".join(keys)] + [",".join(_fmt(r.get(k, "")) for k in keys) for r in rows]
    atomic_text(out / "metrics.csv", "\n".join(lines) + "\n")
    return result


def finite(v):
    """JSON has no NaN/Inf: they become ``null``."""
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)

