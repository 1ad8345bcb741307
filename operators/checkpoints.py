"""Safe, strict checkpoint reading and atomic writing, shared by every loader (the priors'
``invdiff.priors.load`` and the operators' blur-network checkpoints).

* Files are read with ``safetensors`` or ``torch.load(weights_only=True)``: nothing in a checkpoint
  is ever unpickled as arbitrary Python objects (EDM ``.pkl`` pickles are refused; they are converted
  once by ``python -m invdiff.priors.convert``, whose restricted reader runs nothing from the file).
* Before torch or safetensors sees a file, :func:`checkpoint_kind` identifies it by its first bytes
  (a zip or legacy-pickle torch file, a plain Python pickle, safetensors, HDF5) and checks that it is
  complete, so a random, empty or truncated file is reported as *not a checkpoint file* instead of as
  a pickle, and torch's advice to set ``weights_only=False`` is never passed on. Identifying a pickle
  walks its opcodes with :func:`pickletools.genops`: that parses, it builds and runs nothing.
* Loading into a network is strict: any missing, unexpected or mis-shaped key is an error that
  lists them.
* A truncated or corrupted file gives an error naming the file; the file's SHA-256 is recorded in
  ``prior.checkpoint`` for the results that use it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["CheckpointError", "require_file", "safe_safetensors_load", "safe_torch_load", "save_safetensors",
           "sha256_file", "strict_load", "strip_prefix", "checkpoint_kind", "pickle_globals", "not_a_checkpoint",
           "EDM_PERSISTENCE"]


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


def _torch_load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the cause (the
    raw read under :func:`safe_torch_load`, which identifies the file first)."""
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


def _read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a ``.safetensors`` file (the raw read under
    :func:`safe_safetensors_load`)."""
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


NOT_A_CHECKPOINT = "is not a checkpoint file (neither a zip/pickle torch file, safetensors nor HDF5)"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pickle of torch's MAGIC_NUMBER
EDM_PERSISTENCE = "torch_utils.persistence._reconstruct_persistent_obj"
#: What torch's pickles of plain tensors refer to (a ``pickle.dump`` of a state dict).
TENSOR_GLOBALS = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                  "torch.storage._load_from_bytes", "collections.OrderedDict", "_codecs.encode"}
KIND_NAMES = {"torch-zip": "torch.save zip file", "torch-legacy": "torch.save file (legacy format)",
              "pickle": "plain Python pickle", "safetensors": "safetensors file", "hdf5": "HDF5 file"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def not_a_checkpoint(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} {NOT_A_CHECKPOINT}: {why}. Check the path, or download or re-save the "
                           "checkpoint (a truncated copy or a failed download looks like this).")


def pickle_globals(f) -> list[str]:
    """The globals (``module.name``) one pickle in the open binary file ``f`` refers to, read by
    walking its opcodes up to STOP; a :class:`ValueError` when the pickle is truncated or malformed."""
    names: list[str] = []
    strings: list[str | None] = []  # what was pushed last (a string or None), for STACK_GLOBAL
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(f):
        last = strings[-1] if strings else None
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name in _STRING_OPS:
            strings.append(arg if isinstance(arg, str) else arg.decode("latin1", "replace"))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(int(arg)))
        elif op.name == "STACK_GLOBAL":
            module, name = strings[-2:] if len(strings) >= 2 else (None, None)
            names.append(f"{module}.{name}" if module and name else "<unknown>")
        else:
            strings.append(None)  # another object was pushed or the stack changed
    return names


def checkpoint_kind(path: str | Path) -> str:
    """``"torch-zip"``, ``"torch-legacy"``, ``"pickle"`` (a plain ``pickle.dump``), ``"safetensors"``
    or ``"hdf5"``, read from the first bytes of a complete file; otherwise a :class:`CheckpointError`
    that says the file is not a checkpoint file and why (empty, truncated, unknown content)."""
    p = require_file(path)
    size = p.stat().st_size
    if size == 0:
        raise not_a_checkpoint(p, "it is empty (0 bytes)")
    with open(p, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise not_a_checkpoint(p, f"it starts like a torch zip archive but is truncated or corrupted "
                                      f"({err}; {size} bytes)") from err
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise not_a_checkpoint(p, f"it is a zip archive without the data.pkl of a torch.save file "
                                      f"(entries: {', '.join(names[:5]) or 'none'})")
        return "torch-zip"
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        legacy = head.startswith(TORCH_LEGACY_MAGIC)
        try:
            with open(p, "rb") as f:
                # a legacy torch file is five pickles (magic, protocol, sys info, object, storage keys)
                for _ in range(5 if legacy else 1):
                    pickle_globals(f)
        except ValueError as err:
            what = "a torch file in the legacy pickle format" if legacy else "a Python pickle"
            raise not_a_checkpoint(p, f"it starts like {what} but is truncated or corrupted ({err})") from err
        return "torch-legacy" if legacy else "pickle"
    raise not_a_checkpoint(p, f"its first bytes ({head[:8].hex(' ')}) match none of these formats ({size} bytes)")


def _unsupported_global(err: BaseException) -> str | None:
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    return m.group(1) if m else None


def _reason(err: BaseException) -> str:
    """The cause of a failed torch read without torch's advice to disable safe loading."""
    text = re.sub(r"\s+", " ", str(err))
    m = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    text = m.group(1) if m else text.split(". ")[0]
    return text.strip()[:200] or type(err).__name__


def plain_pickle_refusal(path: Path, names: list[str]) -> CheckpointError:
    """The refusal for a file written by ``pickle.dump`` (not ``torch.save``)."""
    if EDM_PERSISTENCE in names:
        return CheckpointError(
            f"refusing to unpickle {path}: it is an EDM network pickle, and unpickling one the usual way runs "
            "the Python source code stored inside it. invdiff unpickles nothing, in the app or from Python. "
            f"Convert it once with `python -m invdiff.priors.convert {path} {path.with_suffix('.safetensors')}` "
            "(a restricted reader that builds only tensors and plain values and runs nothing from the file), "
            "then load the .safetensors file (prior=invdiff_file prior.path=...).")
    others = sorted(set(names) - TENSOR_GLOBALS)
    if not others:
        return CheckpointError(
            f"refusing to load {path}: it is a plain Python pickle of tensors (written by pickle.dump, not "
            "torch.save), whose tensors only an unrestricted unpickler reads (torch.storage._load_from_bytes). "
            "Re-save it with torch.save(state_dict, path) or as safetensors.")
    return CheckpointError(
        f"refusing to load {path}: it contains pickled Python objects beyond tensors ({', '.join(others[:5])}), "
        "which would run code when loaded. invdiff never unpickles such objects; re-save the weights where the "
        "file was made, as a state dict (torch.save(model.state_dict(), path)) or as safetensors.")


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` of a file that :func:`checkpoint_kind` identified as a
    torch file; every other file, and every failure, gets a one-paragraph error naming the file."""
    p = require_file(path)
    kind = checkpoint_kind(p)
    if kind == "pickle":
        with open(p, "rb") as f:
            raise plain_pickle_refusal(p, pickle_globals(f))
    if kind in ("safetensors", "hdf5"):
        raise CheckpointError(f"{p} is a {kind} file, not a torch checkpoint: "
                              + ("load it by its .safetensors name" if kind == "safetensors" else
                                 "HDF5 files hold data and results, not networks"))
    try:
        return _torch_load_weights_only(p)
    except CheckpointError as err:
        cause = err.__cause__ or err
        name = _unsupported_global(cause)
        if name is not None:
            raise CheckpointError(
                f"refusing to load {p}: it contains pickled Python objects beyond tensors and plain containers "
                f"({name}), which would run code when loaded. invdiff never unpickles such objects; re-save the "
                "weights where the file was made, as a state dict (torch.save(model.state_dict(), path)) or as "
                "safetensors.") from None
        raise not_a_checkpoint(p, f"it starts like a torch file but its contents are corrupted ({_reason(cause)})") \
            from None


def safe_safetensors_load(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and the string metadata of a ``.safetensors`` file (a file of another kind, or a
    truncated one, gets a one-paragraph error naming the file)."""
    p = require_file(path)
    kind = checkpoint_kind(p)
    if kind != "safetensors":
        raise CheckpointError(f"{p} is not a safetensors file: it holds a {KIND_NAMES[kind]}, and a file is read "
                              "as what it holds, never as what its name says. Give the real .safetensors file.")
    try:
        return _read_safetensors(p)
    except CheckpointError as err:
        raise not_a_checkpoint(p, f"it starts like a safetensors file but is truncated or corrupted "
                                  f"({_reason(err.__cause__ or err)})") from None
