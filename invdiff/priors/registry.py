"""The priors' extension points: where a new network architecture, prior file format or named
prior registers, and what :func:`invdiff.priors.load` looks up.

==========================  ====================================================================
registry                    what registers into it
==========================  ====================================================================
:data:`ARCHITECTURES`       network builders the project's own format may name
                            (:func:`register_architecture`; ``formats.py``, ``unet.py``)
:data:`FORMATS`             file formats, each a ``detect`` and a ``load`` function tried in
                            registration order (:func:`register_format`; ``native.py`` for the
                            project's own ``.safetensors``, ``formats.py`` for the foreign ones)
:data:`NAMED_PRIORS`        priors loadable by name, ``load("phantom64")``
                            (:func:`register_named_prior`; ``shipped.py``)
==========================  ====================================================================

This module imports none of the modules that register: the package's ``__init__`` imports them
(so everything is registered once ``invdiff.priors`` is imported), and :mod:`invdiff.priors.loaders`
dispatches through the registries without knowing any format.

A format's ``detect`` and ``load`` see a :class:`Checkpoint`: the path, its kind read from the
content (``"folder"``, ``"safetensors"``, ``"torch-zip"`` or ``"torch-legacy"``; pickles and HDF5
files are refused before any format is asked), and for torch files the loaded object, read once
whatever the number of formats that look at it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoints import CheckpointError, safe_torch_load

#: Network builders the project's own format may name: ``name -> builder(**arch_kwargs)``.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


def register_architecture(name: str):
    """Decorator: register a network builder under ``name`` (the ``architecture`` a prior file names)."""
    def deco(builder):
        ARCHITECTURES[name] = builder
        return builder
    return deco


#: The kinds of torch files (:func:`invdiff.priors.checkpoints.checkpoint_kind`).
TORCH_KINDS = ("torch-zip", "torch-legacy")


class Checkpoint:
    """A file or model folder whose format is being identified: what ``detect`` and ``load`` see.

    :param path: the file or folder.
    :param kind: ``"folder"`` or the file's kind read from its content.
    """

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = Path(path), kind

    @property
    def source(self) -> str:
        """The path as error messages name it."""
        return str(self.path)

    @functools.cached_property
    def contents(self) -> Any:
        """A torch file's object (:func:`~invdiff.priors.checkpoints.safe_torch_load`, read on first
        use and kept); ``None`` for the other kinds."""
        return safe_torch_load(self.path) if self.kind in TORCH_KINDS else None

    def has(self, *keys: str) -> bool:
        """Whether the file is a torch file holding a dict with all of ``keys`` at its top level."""
        obj = self.contents
        return isinstance(obj, dict) and all(k in obj for k in keys)


@dataclass(frozen=True)
class PriorFormat:
    """One registered format.

    :param name: its name, recorded in ``prior.checkpoint["format"]``.
    :param detect: ``detect(checkpoint) -> bool``, from content only (cheap: no network is built).
    :param load: ``load(checkpoint, overrides) -> NetworkPrior``; ``overrides`` are the
        :class:`~invdiff.priors.NetworkPrior` arguments the caller gives, which replace those read
        from the file.
    :param what: the files it reads, for the message about a file no format recognises.
    :param weights: for a folder: ``weights(folder) -> file``, the file whose SHA-256 identifies
        the prior (a file is its own).
    """

    name: str
    detect: Callable[[Checkpoint], bool]
    load: Callable[[Checkpoint, dict], Any]
    what: str
    weights: Callable[[Path], Path] | None = None


#: The registered formats, in the order they are tried.
FORMATS: list[PriorFormat] = []


def register_format(name: str, detect: Callable[[Checkpoint], bool], what: str,
                    weights: Callable[[Path], Path] | None = None):
    """Decorator: register ``load(checkpoint, overrides)`` as the reader of the files ``detect``
    accepts (tried after the formats registered before it; a name registered again keeps its place)."""
    def deco(load):
        fmt = PriorFormat(name, detect, load, what, weights)
        names = [f.name for f in FORMATS]
        if name in names:
            FORMATS[names.index(name)] = fmt
        else:
            FORMATS.append(fmt)
        return load
    return deco


def find_format(checkpoint: Checkpoint) -> PriorFormat:
    """The first registered format whose ``detect`` accepts ``checkpoint``; otherwise a
    :class:`CheckpointError` naming what the file holds and the formats known."""
    for fmt in FORMATS:
        if fmt.detect(checkpoint):
            return fmt
    whats = [f.what for f in FORMATS]
    known = ", ".join(whats[:-1]) + (" and " if len(whats) > 1 else "") + (whats[-1] if whats else "none")
    obj = checkpoint.contents
    if checkpoint.kind in TORCH_KINDS and not isinstance(obj, dict):
        raise CheckpointError(f"{checkpoint.source}: expected a dict (state dict or checkpoint), "
                              f"got {type(obj).__name__}")
    if isinstance(obj, dict):
        keys = ", ".join(sorted(map(str, obj))[:10])
        raise CheckpointError(f"{checkpoint.source}: unrecognised checkpoint layout (top-level keys: {keys}). "
                              f"Known: {known}.")
    raise CheckpointError(f"{checkpoint.source}: no registered prior format reads a {checkpoint.kind}. Known: {known}.")


#: Priors loadable by name: ``name -> path()``, the file it is (a clear error when it is missing).
NAMED_PRIORS: dict[str, Callable[[], Path]] = {}


def register_named_prior(name: str, path: Callable[[], Path]) -> None:
    """Make ``load(name)`` load the file ``path()`` (unless a file or folder ``name`` exists)."""
    NAMED_PRIORS[name] = path
