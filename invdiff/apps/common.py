"""What the three apps (``invdiff``, ``invdiff-bench``, ``invdiff-train``) share: the user-error
types and the one-paragraph message, suggestions for a mistyped name, the config groups and their
choices, composing a config in-process, building a config node, and the device choice.

Every app error is an :class:`AppError` (or one of :data:`USER_ERRORS`) whose message is one
paragraph naming what was wrong and how to fix it; the command line prints it instead of a
traceback.
"""

from __future__ import annotations

import difflib
import logging
import re
from importlib import resources

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from operators import CapabilityError

from ..memory import human

log = logging.getLogger("invdiff")

#: The config groups of the reconstruction app (``configs/<group>/*.yaml``).
GROUPS = ("operator", "noise", "prior", "solver", "data", "experiment")
#: Exceptions that are the user's to fix: printed as one paragraph, not as a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, CapabilityError, FloatingPointError,
               MemoryError)  # invdiff.api.OutOfMemory: says which batch size to try


class AppError(ValueError):
    """A bad command line or config: the message is one paragraph meant for the user."""


def choices(group: str) -> list[str]:
    """The config names available in ``group`` (``configs/<group>/*.yaml``)."""
    folder = resources.files("invdiff.configs") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def suggest(word: str, options) -> str:
    """`` Did you mean 'x'?`` for the closest of ``options`` to a mistyped ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def one_paragraph(text) -> str:
    """An error message (or any text) on one line: line breaks and their indentation become one space."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def config(*overrides: str) -> DictConfig:
    """The reconstruction app's config composed in-process from command-line style overrides, e.g.
    ``config("operator=mri_8x", "solver=dps", "solver.steps=500")``; :func:`invdiff.apps.app.setup`
    builds it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("invdiff.configs", version_base=None):
        return compose("config", overrides=list(overrides))


def build(node: DictConfig, what: str):
    """Instantiate a config node; a failing constructor becomes a one-paragraph error naming the group."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return instantiate(node)
    except (InstantiationException, MemoryError, RuntimeError) as err:
        cause = err.__cause__ or err if isinstance(err, InstantiationException) else err
        from ..api import is_out_of_memory

        if not is_out_of_memory(cause):
            if isinstance(err, InstantiationException):
                raise AppError(f"{what} config ({node.get('_target_', '?')}): {one_paragraph(cause)}") from err
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
    from .. import distributed

    if name in (None, "auto"):
        return distributed.device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AppError(f"device={name} was asked for, but torch sees no CUDA device; use device=cpu or device=auto")
    return distributed.device(dev)
