"""``invdiff.priors.load``: find a checkpoint, detect its format and return a :class:`Prior`.

=========================================  ==============================================
file                                       format
=========================================  ==============================================
``*.safetensors`` with ``invdiff`` metadata  the project's own (weights + JSON description)
``*.pt`` state dict with ``input_blocks.*``  guided-diffusion / ADM (DPS, OpenAI)
``*.pt`` dict with ``ema`` / ``net``         EDM-style (InverseBench)
``*.pt`` dict ``{model, ema, step}``         score_sde NCSN++ / DDPM++ (score-MRI, DiffusionMBIR): needs ``preset=``
folder with ``config.json``                  diffusers ``UNet2DModel`` (optional extra)
``*.pkl`` EDM network pickle                 refused: convert it (``python -m invdiff.priors.convert``)
=========================================  ==============================================

Files are recognised by their content, not their name (:func:`~invdiff.priors.checkpoints.checkpoint_kind`);
an empty, truncated or unknown file is "not a checkpoint file", and pickles and HDF5 files are
refused here. Every other file or folder goes to the formats of :mod:`invdiff.priors.registry`, tried
in registration order: the project's own in :mod:`invdiff.priors.native`, the foreign ones in
:mod:`invdiff.priors.formats`; a new format registers there (:func:`~invdiff.priors.registry.register_format`)
and this module does not change. Names such as ``"phantom64"`` come from the registry too
(:mod:`invdiff.priors.shipped`). Every path reads safely and strictly (:mod:`invdiff.priors.checkpoints`);
the returned prior carries ``prior.checkpoint = {"path", "sha256", "format"}``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch

from .adapters import NetworkPrior
from .checkpoints import CheckpointError, checkpoint_kind, pickle_globals, plain_pickle_refusal, sha256_file
from .registry import NAMED_PRIORS, Checkpoint, find_format


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
    """The file or folder behind ``name_or_path``: a path, or the name of a shipped prior
    (:data:`~invdiff.priors.registry.NAMED_PRIORS`). A missing
    one is a :class:`FileNotFoundError` that lists the shipped names (and the closest one) when the
    argument could have been a name."""
    if isinstance(name_or_path, str) and name_or_path in NAMED_PRIORS and not Path(name_or_path).exists():
        return NAMED_PRIORS[name_or_path]()
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    msg = f"checkpoint not found: {p}"
    if p.parent == Path("."):  # a bare name: perhaps a mistyped shipped prior
        close = difflib.get_close_matches(p.stem, NAMED_PRIORS, n=1, cutoff=0.6)
        msg += (f". It is not a shipped prior either; the shipped priors are {', '.join(NAMED_PRIORS)}"
                + (f". Did you mean '{close[0]}'?" if close else ". Give one of those names or a checkpoint's path."))
    else:
        msg += ". Give the path of a checkpoint file or model folder, or a shipped prior's name " \
               f"({', '.join(NAMED_PRIORS)})."
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
    if trust:
        raise CheckpointError(
            f"trust=True is not accepted (loading {name_or_path}): invdiff unpickles nothing, in the app or from "
            "Python, so no flag can make it run code from a file. Convert an EDM .pkl once with `python -m "
            "invdiff.priors.convert network.pkl network.safetensors` (builds only tensors and plain values, runs "
            "nothing from the file) and load the .safetensors file (prior=invdiff_file prior.path=...).")
    path = _find(name_or_path)
    if path.is_dir():
        kind = "folder"
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
    checkpoint = Checkpoint(path, kind)
    fmt = find_format(checkpoint)
    prior = fmt.load(checkpoint, overrides)
    digest = sha256_file(fmt.weights(path) if fmt.weights is not None else path)
    prior.checkpoint = {"path": str(path.resolve()), "sha256": digest, "format": fmt.name}
    if device is not None:
        prior.to(device)
    return prior
