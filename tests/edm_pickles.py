"""Build files laid out like EDM's network pickles (``torch_utils.persistence``), without EDM's code.

EDM pickles every object of a ``@persistence.persistent_class`` as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
version=6, module_src=<source of the defining module>, class_name=..., state=obj.__dict__)``;
``torch.nn`` classes (``ModuleDict``) and tensors are pickled as usual (``pickle.dump``, protocol 4
by default). :func:`edm_pickle` reproduces that with a stand-in ``torch_utils.persistence`` module
that exists only while the file is written, so the reader under test cannot import it.
"""

from __future__ import annotations

import collections
import pickle
import sys
import types

import torch

#: what EDM's own loader would exec; the converter must never run it
EVIL_SOURCE = "import os\nos.system('touch {marker}')\n"
#: invdiff / deepinv class name -> the EDM class it stands for
EDM_NAMES = {"EDMPreconditioned": None, "NCSNpp": "SongUNet", "ADMUNet": "DhariwalUNet"}
PRECOND_NAMES = {"edm": "EDMPrecond", "vp": "VPPrecond", "ve": "VEPrecond"}


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return False


def _state(module: torch.nn.Module) -> dict:
    """``module.__dict__`` as EDM's networks have it: the nn.Module machinery plus plain attributes."""
    out = {}
    for k, v in module.__dict__.items():
        if k.startswith("_") and isinstance(v, (dict, set)) or _plain(v):
            out[k] = v
    return out


def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called: the reader must not run it
    raise AssertionError("the stand-in persistence module was called")


def persistence_module() -> dict[str, types.ModuleType]:
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    fn = types.FunctionType(_reconstruct_persistent_obj.__code__, {}, "_reconstruct_persistent_obj")
    fn.__module__, fn.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = fn
    pkg.persistence = mod
    return {"torch_utils": pkg, "torch_utils.persistence": mod}


class EDMPickler(pickle.Pickler):
    """Pickles every non-``torch.nn`` module as an EDM persistence record."""

    def __init__(self, file, module_src: str, top_name: str, protocol: int = 4, extra_state: dict | None = None):
        super().__init__(file, protocol=protocol)
        self.module_src, self.top_name, self.extra_state = module_src, top_name, extra_state or {}
        self.top = None

    def reducer_override(self, obj):
        if not isinstance(obj, torch.nn.Module) or type(obj).__module__.startswith("torch.nn"):
            return NotImplemented
        name = type(obj).__name__
        class_name = self.top_name if obj is self.top else (EDM_NAMES.get(name) or name)
        state = _state(obj)
        if obj is self.top:
            state.update(self.extra_state)
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=class_name, state=state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def edm_pickle(path, net: torch.nn.Module, precond: str = "edm", *, module_src: str = "", protocol: int = 4,
               extra: dict | None = None, extra_state: dict | None = None, monkeypatch=None) -> None:
    """Write ``{'ema': net, 'loss_fn': None, 'augment_pipe': None, 'dataset_kwargs': {...}, **extra}``
    the way EDM's training loop does; ``net`` is an :class:`EDMPreconditioned`."""
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update(persistence_module())
    try:
        attrs = {"sigma_data": net.sigma_data}
        if precond == "vp":
            attrs.update(M=net.M, beta_d=net.beta_d, beta_min=net.beta_min, epsilon_t=1e-5)
        data = {"ema": net, "loss_fn": None, "augment_pipe": None,
                "dataset_kwargs": collections.OrderedDict(path="datasets/x.zip", use_labels=False), **(extra or {})}
        with open(path, "wb") as f:
            p = EDMPickler(f, module_src, PRECOND_NAMES[precond], protocol, {**attrs, **(extra_state or {})})
            p.top = net
            p.dump(data)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
