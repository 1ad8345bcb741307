"""Convert an EDM network pickle into an invdiff prior file, running nothing from the pickle.

    python -m invdiff.priors.convert network-snapshot.pkl net.safetensors [--key ema]
    invdiff.priors.convert_edm_pickle("network-snapshot.pkl", "net.safetensors")

then ``invdiff prior=invdiff_file prior.path=net.safetensors`` or ``invdiff.priors.load("net.safetensors")``.

Why a converter, and why it is safe
-----------------------------------
EDM (Karras et al. 2022) pickles each network object through ``torch_utils.persistence``: the
pickle calls ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` holds the
*Python source code* of the module defining the object's class, the class name and the object's
``__dict__``; EDM's function ``exec``s that source. Loading an EDM pickle the usual way therefore
runs whatever code the file carries, whatever is checked beforehand (that ``torch_utils`` imports
proves nothing: any package of that name passes). No unpickler can build EDM's own classes safely.

A prior needs only the weights and a few numbers (σ_data, the VP constants), and invdiff has its own
EDM preconditioning (:class:`~invdiff.priors.formats.EDMPreconditioned`) around deepinv's NCSN++ and
ADM UNets, which are EDM's SongUNet and DhariwalUNet key for key. So :class:`RestrictedEDMUnpickler`
reads the pickle with a fixed table of globals and nothing else:

* ``_reconstruct_persistent_obj`` becomes :class:`PersistentRecord` (class name + state): the source
  code stays an unused string, ``torch_utils`` need not be installed;
* ``torch.nn.modules.*`` classes (``ModuleDict``, ``ModuleList``, …) become inert
  :class:`TorchModuleRecord` stand-ins that only hold their state;
* tensors are rebuilt by torch's own rebuild function from storages read with
  ``torch.load(weights_only=True)`` (the storage bytes EDM's pickles embed), without hooks;
* ``collections.OrderedDict``, ``set``, ``frozenset``, torch dtypes, numpy arrays and
  ``dnnlib.util.EasyDict`` (as a plain dict) are allowed;
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, …) stops the reading with
  its name before anything it names is imported or called.

The network's parameters and persistent buffers are collected from the records exactly as
``module.state_dict()`` names them, loaded strictly into invdiff's network, and written with
:func:`invdiff.priors.save` (metadata ``source``: the pickle's name and SHA-256).
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import math
import pickle
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

from .adapters import NetworkPrior
from .checkpoints import (EDM_PERSISTENCE, KIND_NAMES, CheckpointError, checkpoint_kind, require_file, sha256_file,
                          strict_load)
from .formats import build_edm_precond, edm_unet_config
from .native import save
from .schedules import EDMSchedule

#: EDM preconditioner classes this converter rebuilds, with invdiff's name for each.
SUPPORTED = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
MAX_DEPTH = 64  # module nesting; EDM networks are < 10 deep


class PersistentRecord:
    """What ``torch_utils.persistence`` pickled for one object: its class name and state (its
    ``__dict__``). The module source stored beside them is dropped, never executed."""

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state):
        raise CheckpointError("a persistence record was given extra state, which EDM pickles never do")


class TorchModuleRecord:
    """An inert stand-in for a ``torch.nn.modules`` class (``ModuleDict``, ``ModuleList``, …): it
    holds the pickled state and has no other behaviour."""

    torch_class = "torch.nn.Module"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.torch_class}: pickled state is a {type(state).__name__}, not a dict")
        self.state = state


class EasyDictRecord(dict):
    """``dnnlib.util.EasyDict`` (EDM's attribute dict), read as a plain dict."""


_STAND_INS: dict[str, type] = {}


def _stand_in(qualname: str) -> type:
    if qualname not in _STAND_INS:
        _STAND_INS[qualname] = type(qualname.rsplit(".", 1)[1], (TorchModuleRecord,), {"torch_class": qualname})
    return _STAND_INS[qualname]


def _reconstruct_persistent_obj(meta) -> PersistentRecord:
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise CheckpointError("a torch_utils.persistence record without type 'class', a class name and a state dict")
    return PersistentRecord(meta["class_name"], meta["state"])


def _storage_types() -> tuple[type, ...]:
    return (torch.storage.TypedStorage, torch.UntypedStorage)


def _load_storage(data) -> object:
    """EDM's pickles embed each storage as ``torch.save`` bytes, read here with weights_only=True."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"a tensor storage given as {type(data).__name__}, not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation notes
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    if not isinstance(storage, _storage_types()):
        raise CheckpointError(f"embedded storage bytes hold a {type(storage).__name__}, not a tensor storage")
    return storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    if not isinstance(storage, _storage_types()):
        raise CheckpointError(f"a tensor rebuilt from a {type(storage).__name__}, not a storage")
    if backward_hooks or metadata:
        raise CheckpointError("a tensor pickled with backward hooks or metadata, which EDM networks never have")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> torch.Tensor:
    """A pickled ``nn.Parameter`` read as its tensor (hooks and Python state are not carried over)."""
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"a parameter rebuilt from a {type(data).__name__}, not a tensor")
    return data


def _reconstructor(cls, base, state) -> TorchModuleRecord:
    """``copyreg._reconstructor`` (protocol 0/1 objects), for the torch.nn stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, TorchModuleRecord) and base is object and state is None):
        raise CheckpointError(f"copyreg._reconstructor asked to build {cls!r} from {base!r}")
    return object.__new__(cls)


def _latin1(text, encoding="latin1") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"_codecs.encode with {type(text).__name__} / {encoding!r}")
    return text.encode("latin1")


def _globals_table() -> dict[str, object]:
    import numpy as np

    table: dict[str, object] = {
        EDM_PERSISTENCE: _reconstruct_persistent_obj,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch.storage._load_from_bytes": _load_storage,
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set, "builtins.frozenset": frozenset, "builtins.object": object,
        "copyreg._reconstructor": _reconstructor,
        "_codecs.encode": _latin1,
        "dnnlib.util.EasyDict": EasyDictRecord,
        "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype,
    }
    reconstruct, scalar = np.ndarray.__reduce__(np.zeros(1))[0], np.float64(0).__reduce__()[0]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{mod}._reconstruct"], table[f"{mod}.scalar"] = reconstruct, scalar
    return table


class RestrictedEDMUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals from a fixed table (see the module docstring) and refuses
    every other one by name; it never imports a module named in the file."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source, self.table = source, _globals_table()

    def find_class(self, module: str, name: str):
        # Python 2 names in protocol 0-2 pickles (__builtin__, copy_reg): renamed, nothing imported
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in self.table:
            return self.table[qualname]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.nn.modules.") and name.isidentifier() and name[:1].isupper():
            return _stand_in(qualname)
        raise CheckpointError(
            f"refusing to convert {self.source}: it refers to {qualname}, which an EDM network pickle never needs "
            "(it holds only EDM's persistence records, tensors and plain values). Nothing from the file was run; "
            "the file is not an EDM network pickle, or it was tampered with.")

    def persistent_load(self, pid):
        raise CheckpointError(f"refusing to convert {self.source}: it uses persistent ids (a torch.save file, "
                              "not an EDM pickle); load it with invdiff.priors.load instead")


def _module_state(obj, where: str) -> dict:
    if isinstance(obj, PersistentRecord):
        return obj.state
    if isinstance(obj, TorchModuleRecord):
        return getattr(obj, "state", {})
    raise CheckpointError(f"{where} is a {type(obj).__name__}, not a network module")


def _collect(obj, prefix: str, out: dict, ancestors: tuple, source: str) -> None:
    """Parameters and persistent buffers under ``obj``, named as ``module.state_dict()`` names them."""
    if len(ancestors) > MAX_DEPTH or any(a is obj for a in ancestors):
        raise CheckpointError(f"{source}: the module tree at '{prefix}' is cyclic or deeper than {MAX_DEPTH}")
    state = _module_state(obj, f"{source}: '{prefix.rstrip('.') or 'the network'}'")
    skip = state.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, dict):
            raise CheckpointError(f"{source}: '{prefix}{group}' is a {type(entries).__name__}, not a dict")
        for name, tensor in entries.items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{source}: '{prefix}{name}' is a {type(tensor).__name__}, not a tensor")
            out[f"{prefix}{name}"] = tensor.detach().clone()
    children = state.get("_modules") or {}
    if not isinstance(children, dict):
        raise CheckpointError(f"{source}: '{prefix}_modules' is a {type(children).__name__}, not a dict")
    for name, child in children.items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, (*ancestors, obj), source)


def _number(attrs: dict, name: str, default: float, source: str) -> float:
    value = attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{source}: {name} = {value!r} is not a positive number")
    return float(value)


def read_edm_pickle(path: str | Path, key: str = "ema") -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(class name, plain attributes, state dict) of the network ``key`` of an EDM pickle, read by
    :class:`RestrictedEDMUnpickler` (nothing from the file runs)."""
    p = require_file(path)
    with open(p, "rb") as f:
        try:
            data = RestrictedEDMUnpickler(f, str(p)).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
                RuntimeError, MemoryError) as err:
            raise CheckpointError(f"could not read {p} as an EDM network pickle: it is truncated or corrupted "
                                  f"({type(err).__name__}: {str(err)[:200]})") from None
    if isinstance(data, dict):
        if key not in data:
            raise CheckpointError(f"{p} has no network {key!r}; it holds {', '.join(map(str, data)) or 'nothing'} "
                                  "(choose one with --key)")
        data = data[key]
    if not isinstance(data, PersistentRecord):
        raise CheckpointError(f"{p}['{key}'] is a {type(data).__name__}, not an EDM network (a persistence record)")
    attrs = {k: v for k, v in data.state.items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    state: dict[str, torch.Tensor] = {}
    _collect(data, "", state, (), f"{p}['{key}']")
    return data.class_name, attrs, state


def convert_edm_pickle(src: str | Path, dst: str | Path, *, key: str = "ema",
                       log: Callable[[str], None] | None = print) -> Path:
    """Read the network ``key`` of the EDM pickle ``src`` without running anything from it (see the
    module docstring) and write it as an invdiff prior file ``dst`` (``.safetensors``).

    :returns: ``dst``, loadable with :func:`invdiff.priors.load` or ``prior=invdiff_file``.
    """
    src, dst = require_file(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the converted prior is written as .safetensors; got {dst}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"the output {dst} would overwrite the pickle it is converted from")
    kind = checkpoint_kind(src)  # first bytes only: not a checkpoint file at all is said here
    if kind != "pickle":
        raise CheckpointError(f"{src} is a {KIND_NAMES[kind]}, not an EDM network pickle; "
                              + ("load it directly with invdiff.priors.load" if kind.startswith("torch")
                                 else "there is nothing to convert"))
    if log is not None:
        log(f"Reading {src} as an EDM network pickle with a restricted unpickler: it builds only tensors "
            "(through torch.load(weights_only=True)), numbers, strings and containers; EDM's persistence records "
            "become plain (class name, state) records, so the Python source code stored in the pickle is never "
            "executed and EDM's torch_utils is not needed; any other object the file names (os.system, eval, ...) "
            f"stops the conversion. The network is rebuilt from invdiff's own EDM code and written to {dst}.")
    source = f"{src}['{key}']"
    class_name, attrs, state = read_edm_pickle(src, key)
    if class_name not in SUPPORTED:
        raise CheckpointError(f"{source} is a {class_name}; the converter rebuilds {', '.join(SUPPORTED)}")
    if not state or not all(k.startswith("model.") for k in state):
        raise CheckpointError(f"{source}: a {class_name} whose weights are not all under 'model.'")
    kind, unet_kwargs = edm_unet_config({k[len("model."):]: v for k, v in state.items()}, source)
    arch = dict(unet=f"deepinv.{kind}", unet_kwargs=unet_kwargs, precond=SUPPORTED[class_name],
                sigma_data=_number(attrs, "sigma_data", 0.5, source))
    if class_name == "VPPrecond":
        arch.update(M=int(_number(attrs, "M", 1000, source)), beta_d=_number(attrs, "beta_d", 19.9, source),
                    beta_min=_number(attrs, "beta_min", 0.1, source))
    net = build_edm_precond(**arch)
    strict_load(net, state, source)
    lo, hi = net.sigma_range()
    size = unet_kwargs["img_resolution"]
    prior = NetworkPrior(net.eval(), "x0", EDMSchedule(lo, hi), shape=(unet_kwargs["in_channels"], size, size),
                         data_range=(0.0, 1.0), model_range=(-1.0, 1.0), conditioning="sigma", learned_sigma=False)
    out = save(dst, prior, "edm.precond", arch, source={"file": src.name, "sha256": sha256_file(src),
                                                         "format": "edm-pickle", "key": key, "class": class_name})
    if log is not None:
        log(f"Wrote {out}: {class_name} around an EDM {kind} ({sum(t.numel() for t in state.values())} weights, "
            f"{len(state)} tensors). Use it with prior=invdiff_file prior.path={out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m invdiff.priors.convert",
        description="Convert an EDM network pickle (.pkl) into an invdiff prior file (.safetensors) without "
                    "running anything from the pickle.")
    parser.add_argument("pickle", help="the EDM network pickle, e.g. network-snapshot-200000.pkl")
    parser.add_argument("output", help="the prior file to write, e.g. net.safetensors")
    parser.add_argument("--key", default="ema", help="which network of the pickle (default: ema)")
    args = parser.parse_args(argv)
    try:
        convert_edm_pickle(args.pickle, args.output, key=args.key)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
