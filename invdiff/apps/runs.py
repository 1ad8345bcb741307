"""Runs of the apps: what determines a result (resume keys, the benchmark's run hash) and where it
came from (provenance, package versions) — one module that ``invdiff`` and ``invdiff-bench`` share.

Resume safety: a result file is reused only when everything that determines it is equal.

``invdiff`` and ``invdiff-bench`` skip samples whose ``samples/{id}.h5`` is already complete
(``resume=true``). Each record therefore carries its *resume key* (attribute ``resume_key``, JSON):
a flat ``{name: value}`` of everything its result depends on, and a run compares the key of every
finished file in its directory with its own before any work:

* the resolved config, flattened to dotted names (``solver._target_``, ``solver.steps``,
  ``operator.mask.accelerations``, ``noise.sigma``, ``seed``, ``num_samples``, ``sigma_y``, ``shape``,
  ``prior.name`` …) without the settings that change only how a run executes (:data:`RUNTIME_KEYS`:
  ``resume``, ``device``, ``batch_size`` …) and without the ``data`` node, whose selection keys
  (``data.n``, ``data.first``) only choose *which* samples run: the sample itself is keyed by content;
* ``sample.x`` / ``sample.y``: sha256 of the ground truth and of the measured ``y`` (``None`` when
  absent), ``sample.sigma_y`` (the solver's σ_y for it), ``sample.operator`` (sha256 of the
  operator's saved parameters: mask, kernel, coil maps), ``prior.checkpoint_sha256`` (the
  checkpoint file's) and ``run.device_type`` (``cpu``/``cuda``: the generators of the solver's
  noise live there, and the two kinds give other draws for one seed).

A file of a sample of this run is compared in full; a file of another sample (a run with fewer
samples, or other ids) by its config part only, since it would be summarised with this run's
results. Files written before resume keys existed are compared through their stored
``config_yaml``, ``prior`` and ``sigma_y`` (their data and operator parameters cannot be compared). Any difference refuses the run with one paragraph naming what differs.
Under ``torchrun`` every rank checks the same files before its work and reaches the same verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

#: Config keys that change how a run executes, not what it computes.
RUNTIME_KEYS = ("resume", "progress", "progress_log", "figures", "figure_format", "figure_dpi", "figure_bands", "device", "batch_size", "results_dir", "bench_run", "hydra")
#: Dotted keys that change how the network is called but not a result: gradient checkpointing
#: recomputes the same activations (``solver.checkpoint``: files written when it was a solver argument).
EXECUTION_ONLY = ("runtime.checkpoint", "solver.checkpoint")
#: Parts of a benchmark preset that do not change a run's results once ``bench.prepare`` has merged
#: them (the effective solver settings are in ``solver``).
PRESET_TEXT_KEYS = ("cpu", "solvers", "tune", "published", "published_source", "task", "requires", "noise_convention")
#: Keys that belong to one sample (compared only between files of the same sample id).
SAMPLE_KEYS = ("sample.x", "sample.y", "sample.sigma_y", "sample.operator")
#: Keys that files written before resume keys existed cannot give (their config and attributes give the rest).
LEGACY_UNKNOWN = ("sample.x", "sample.y", "sample.operator", "run.device_type")
_LABELS = {"sample.x": "the ground truth (sha256)", "sample.y": "the measurement y (sha256)",
           "sample.sigma_y": "the solver's σ_y for the sample", "prior.checkpoint_sha256": "the prior checkpoint (sha256)",
           "sample.operator": "the operator's parameters (mask, kernel, coil maps; sha256)",
           "run.device_type": "the device type the draws were made on (CPU and CUDA generators differ)"}
_ABSENT = "(absent)"


def _value(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _flatten(node, prefix: str, out: dict) -> dict:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix[:-1]] = _value(node)
    return out


def config_key(cfg, *, own_operator: bool = False, measured: bool = False) -> dict[str, str]:
    """The config part of a resume key (module docstring). ``own_operator``: the sample brings its
    operator (fastMRI files), so the operator config and ``operator_seed`` do not matter;
    ``measured``: y is the user's, so the noise model does not matter."""
    from omegaconf import DictConfig, OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for k in (*RUNTIME_KEYS, "data", *(("operator", "operator_seed") if own_operator else ()),
              *(("noise",) if measured else ())):
        c.pop(k, None)
    if isinstance(c.get("benchmark"), dict):
        c["benchmark"] = {k: v for k, v in c["benchmark"].items() if k not in PRESET_TEXT_KEYS}
    # runtime settings at their default (off) and the default SSIM window are left out: files written
    # before those keys existed were computed that way and keep their keys
    return {k: v for k, v in _flatten(c, "", {}).items()
            if k not in EXECUTION_ONLY and not (k.startswith("runtime.") and v == _value(False))
            and not (k == "ssim_window" and v == _value("uniform7"))}


def digest(tree) -> str | None:
    """sha256 of a tensor, array or nested dict/list of them (dtype, shape and bytes); ``None`` for ``None``."""
    if tree is None:
        return None
    h = hashlib.sha256()

    def feed(v):
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            h.update(f"array {a.dtype.str} {list(a.shape)}:".encode())
            h.update(a.tobytes())
        elif isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v, key=str):
                h.update(_value(str(k)).encode() + b":")
                feed(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                feed(x)
                h.update(b",")
            h.update(b"]")
        else:
            h.update(_value(v.item() if isinstance(v, np.generic) else v).encode())

    feed(tree)
    return h.hexdigest()


def operator_digest(op) -> str:
    """sha256 of the operator's saved parameters (``op.to_dict()``), or of its repr without one."""
    to_dict = getattr(op, "to_dict", None)
    return digest(to_dict()) if callable(to_dict) else digest(repr(op))


def sample_key(cfg, item, prior) -> dict[str, str]:
    """The resume key of one :class:`invdiff.apps.jobs.Item` solved with ``cfg`` and ``prior``."""
    s = item.sample
    key = config_key(cfg, own_operator=s.operator is not None, measured=s.y is not None)
    ck = getattr(prior, "checkpoint", None) or {}
    key.update({"sample.x": _value(digest(s.x)), "sample.y": _value(digest(s.y)),
                "sample.sigma_y": _value(float(item.sigma_y)), "sample.operator": _value(operator_digest(item.op)),
                "prior.checkpoint_sha256": _value(ck.get("sha256")),
                "run.device_type": _value(_device_type(prior))})
    return key


def _device_type(prior) -> str:
    """``cpu`` or ``cuda``: the solver's noise is drawn by generators on the prior's device, and the two
    kinds of generator give other draws for one seed (``device`` itself is a run-time key)."""
    from operators.base import module_device

    dev = module_device(prior) if hasattr(prior, "parameters") else None
    return "cpu" if dev is None else dev.type


def stored_key(path: Path, own_operator: bool, measured: bool) -> tuple[dict[str, str], bool]:
    """(key, legacy) of a finished result file; ``legacy``: rebuilt from ``config_yaml`` (no sample part)."""
    import h5py
    from omegaconf import OmegaConf

    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs.get(k) for k in ("resume_key", "config_yaml", "prior", "sigma_y")}
    if attrs["resume_key"] is not None:
        return json.loads(text(attrs["resume_key"])), False
    if attrs["config_yaml"] is None:
        return {}, True
    key = config_key(OmegaConf.create(text(attrs["config_yaml"])), own_operator=own_operator, measured=measured)
    if attrs["prior"] is not None:
        key["prior.checkpoint_sha256"] = _value(json.loads(text(attrs["prior"])).get("sha256"))
    if attrs["sigma_y"] is not None:
        key["sample.sigma_y"] = _value(float(attrs["sigma_y"]))
    return key, True


def _short(v: str) -> str:
    return v if len(v) <= 60 else v[:28] + "…" + v[-28:]


def check(folder: str | Path, keys: dict[str, dict], *, resume: bool, fix: str) -> None:
    """Refuse (ValueError, one paragraph) when a finished file in ``folder`` (``{id}.h5``) was
    computed differently from this run: with ``resume`` any such file; without it (this run's
    samples are recomputed) the files of other samples, which would be summarised with this run's.
    ``keys``: this run's :func:`sample_key` per sample id; ``fix``: how to name another output
    directory (e.g. ``hydra.run.dir=<another directory>``)."""
    from ..data.results import is_complete

    folder = Path(folder)
    if not keys or not folder.is_dir():
        return
    first = next(iter(keys.values()))
    own_operator = "operator_seed" not in first  # (config_key drops it for samples with their own operator)
    measured = not any(k == "noise" or k.startswith("noise.") for k in first)
    common = {k: v for k, v in first.items() if k not in SAMPLE_KEYS}
    bad = []  # (file name, in this run, [(key, stored, ours)])
    for f in sorted(folder.glob("*.h5")):
        ours = keys.get(f.stem)
        if (ours is not None and not resume) or not is_complete(f):
            continue
        stored, legacy = stored_key(f, own_operator, measured)
        unknown = (SAMPLE_KEYS if ours is None else ()) + (LEGACY_UNKNOWN if legacy else ())
        mine = {k: v for k, v in (ours or common).items() if k not in unknown}
        theirs = {k: v for k, v in stored.items() if k not in unknown and k not in EXECUTION_ONLY}
        diff = [(k, theirs.get(k, _ABSENT), mine.get(k, _ABSENT)) for k in sorted(set(mine) | set(theirs))
                if theirs.get(k, _ABSENT) != mine.get(k, _ABSENT)]
        if diff:
            bad.append((f.name, ours is not None, diff))
    if not bad:
        return
    name, _, diff = bad[0]
    shown = "; ".join(f"{_LABELS.get(k, k)} is {_short(a)} there but {_short(b)} in this run" for k, a, b in diff[:4])
    more = f" (and {len(diff) - 4} more differences)" if len(diff) > 4 else ""
    others = f" (and {len(bad) - 1} more file(s) like it)" if len(bad) > 1 else ""
    inside, outside = any(b[1] for b in bad), any(not b[1] for b in bad)
    how = f"Use another output directory ({fix})"
    if inside:
        how += ", or recompute this run's samples in that directory with resume=false"
    if outside:
        how += (", or delete the files of samples this run does not compute (it would summarise them with "
                "its own results)")
    raise ValueError(f"{folder.parent} holds results of another configuration, which resume would reuse or "
                     f"summarise as this run's: samples/{name}{others} was computed with {shown}{more}. A result "
                     "is reused only when operator, noise, prior, solver settings, seed, num_samples, σ_y and "
                     f"the data are all equal. {how}.")


def check_resume(job, out_dir: Path, fix: str) -> None:
    """Refuse, before any work, a run directory holding results computed differently from the
    :class:`~invdiff.apps.jobs.Job` ``job`` (:func:`check`; ``fix`` names how to choose another
    directory), as an :class:`~invdiff.apps.common.AppError`."""
    from .common import AppError

    keys = {it.sample.id: sample_key(job.cfg, it, job.prior) for it in job.items}
    try:
        check(Path(out_dir) / "samples", keys, resume=bool(job.cfg.get("resume", True)), fix=fix)
    except ValueError as err:
        raise AppError(str(err)) from None


# --------------------------------------------------------------------------------------------
# the benchmark's run hash
# --------------------------------------------------------------------------------------------
def run_hash(cfg) -> str:
    """Hash of everything that determines a benchmark run's results (not resume/progress/device/...,
    nor the preset's descriptions, other solvers' settings or caps)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    for k in RUNTIME_KEYS:
        c.pop(k, None)
    for k in PRESET_TEXT_KEYS:
        c.get("benchmark", {}).pop(k, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------
def plain_settings(solver) -> dict:
    """The solver's settings as JSON-able values (anything else as its repr), for result files."""
    from ..api import solver_settings

    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
            for k, v in solver_settings(solver).items()}


def versions() -> dict:
    """Installed versions of invdiff, torch and deepinv (``None`` when absent), for sample files."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("invdiff", "torch", "deepinv"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def provenance() -> dict:
    """Commit, machine (CPU model, cores), GPU, versions and date, for result tables."""
    import torch

    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno")),
            "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run_label(r: dict) -> str:
    """A run's row label in a table, marked when its solver is a point estimator (the ``solver_class``
    its samples recorded: :data:`invdiff.solvers.SOLVER_CLASSES`)."""
    return r["label"] + (" *(point estimator)*" if r.get("solver_class") == "point" else "")
