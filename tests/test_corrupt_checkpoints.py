"""Files that are not checkpoints (issue 31, items 2 and 5): random bytes, truncated torch and HDF5
files, an empty file, a mistyped shipped name. Each gets one paragraph that names the file and what
it is, through the API and the app, and no message ever repeats torch's advice to set
``weights_only=False``; only a real pickle holding non-tensor objects is called one."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from invdiff.priors import CheckpointError, load
from invdiff.priors.checkpoints import checkpoint_kind, safe_torch_load
from test_checkpoints import Payload

NOT_A_CHECKPOINT = r"is not a checkpoint file \(neither a zip/pickle torch file, safetensors nor HDF5\)"


def _write_cases(folder):
    """name -> (path, pattern of the message)."""
    g = np.random.default_rng(0)
    cases = {}
    (folder / "random.pt").write_bytes(g.bytes(100_000))
    cases["random"] = (folder / "random.pt", NOT_A_CHECKPOINT + r": its first bytes .* match none")
    (folder / "empty.pt").write_bytes(b"")
    cases["empty"] = (folder / "empty.pt", NOT_A_CHECKPOINT + r": it is empty \(0 bytes\)")
    torch.save({"ema": {"w": torch.ones(64, 64)}}, folder / "full.pt")
    data = (folder / "full.pt").read_bytes()
    (folder / "trunc.pt").write_bytes(data[: len(data) // 2])
    cases["truncated zip"] = (folder / "trunc.pt", NOT_A_CHECKPOINT + ": it starts like a torch zip archive but is "
                                                                      "truncated or corrupted")
    torch.save({"ema": {"w": torch.ones(64, 64)}}, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (folder / "legacy.pt").read_bytes()
    (folder / "trunc_legacy.pt").write_bytes(data[:200])
    cases["truncated legacy"] = (folder / "trunc_legacy.pt", NOT_A_CHECKPOINT + ": it starts like a torch file in the "
                                                                                "legacy pickle format but is truncated")
    (folder / "junk.pt").write_bytes(b"\x80\x02" + g.bytes(1000))
    cases["pickle-like junk"] = (folder / "junk.pt", NOT_A_CHECKPOINT + ": it starts like a Python pickle but is")
    with h5py.File(folder / "full.h5", "w") as f:
        f["x"] = np.ones((64, 64))
    data = (folder / "full.h5").read_bytes()
    (folder / "trunc.h5").write_bytes(data[: len(data) // 2])
    cases["truncated hdf5"] = (folder / "trunc.h5", r"trunc\.h5 is not a checkpoint file: it is an HDF5 file")
    return cases


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists()


def _one_paragraph_without_torch_advice(msg: str) -> None:
    assert "\n" not in msg
    assert "weights_only" not in msg and "trusted source" not in msg


def test_not_a_checkpoint_through_the_api(tmp_path):
    for name, (path, pattern) in _write_cases(tmp_path).items():
        with pytest.raises(CheckpointError, match=pattern) as err:
            load(path)
        assert str(err.value).startswith(str(path)), name
        _one_paragraph_without_torch_advice(str(err.value))
        with pytest.raises(CheckpointError, match=pattern):
            load(str(path))  # a str path too


def test_not_a_checkpoint_through_the_app(tmp_path):
    from invdiff.apps.app import config, setup
    from invdiff.apps.common import AppError

    for name, (path, pattern) in _write_cases(tmp_path).items():
        with pytest.raises(AppError, match=r"prior config .*" + pattern) as err:
            setup(config("prior=edm_checkpoint", f"prior.path={path}"))
        _one_paragraph_without_torch_advice(str(err.value))


def test_only_real_pickles_with_objects_are_called_so(tmp_path, marker):
    from invdiff.apps.app import config, setup
    from invdiff.apps.common import AppError

    with open(tmp_path / "evil_raw.pt", "wb") as f:
        pickle.dump({"ema": Payload(marker)}, f)
    torch.save({"ema": Payload(marker)}, tmp_path / "evil_zip.pt")
    for name in ("evil_raw.pt", "evil_zip.pt"):
        pattern = rf"refusing to load .*{name}: it contains pickled Python objects beyond tensors.*\(posix\.system\)"
        with pytest.raises(CheckpointError, match=pattern) as err:
            load(tmp_path / name)
        _one_paragraph_without_torch_advice(str(err.value))
        with pytest.raises(AppError, match=pattern) as err:
            setup(config("prior=edm_checkpoint", f"prior.path={tmp_path / name}"))
        _one_paragraph_without_torch_advice(str(err.value))
    # a pickle.dump of tensors only is not said to hold other objects
    with open(tmp_path / "tensors.pt", "wb") as f:
        pickle.dump({"ema": {"w": torch.ones(3)}}, f)
    with pytest.raises(CheckpointError, match=r"plain Python pickle of tensors \(written by pickle.dump") as err:
        load(tmp_path / "tensors.pt")
    assert "beyond tensors" not in str(err.value)
    _one_paragraph_without_torch_advice(str(err.value))


def test_kinds_are_read_from_content(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "a.bin")
    torch.save({"w": torch.ones(2)}, tmp_path / "b.bin", _use_new_zipfile_serialization=False)
    with open(tmp_path / "c.bin", "wb") as f:
        pickle.dump([1, 2], f)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, tmp_path / "d.bin")
    with h5py.File(tmp_path / "e.bin", "w") as f:
        f["x"] = np.ones(2)
    kinds = [checkpoint_kind(tmp_path / f"{c}.bin") for c in "abcde"]
    assert kinds == ["torch-zip", "torch-legacy", "pickle", "safetensors", "hdf5"]
    assert torch.equal(safe_torch_load(tmp_path / "b.bin")["w"], torch.ones(2))
    # a torch file named .safetensors is named for what it holds
    os.replace(tmp_path / "a.bin", tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="a.safetensors is not a safetensors file: it holds a torch.save zip file"):
        from invdiff.priors.checkpoints import safe_safetensors_load

        safe_safetensors_load(tmp_path / "a.safetensors")


def test_a_mistyped_shipped_name_lists_the_shipped_priors(tmp_path, monkeypatch):
    from invdiff.apps.app import config, setup
    from invdiff.apps.common import AppError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: phantom65\. It is not a shipped prior either; "
                                                r"the shipped priors are phantom64, patches64, phantom64_flow, patches64_flow, phantom64_reflow, phantom64_cm, patches64_cm, phantom64_ambient, patches64_noisy, phantom64_bridge_mri4x, patches64_bridge_sr2, brain64, patches64_v2\. "
                                                r"Did you mean 'phantom64'\?"):
        load("phantom65")
    with pytest.raises(FileNotFoundError, match=r"Did you mean 'patches64'\?"):
        load("patch64")
    with pytest.raises(FileNotFoundError, match=r"shipped priors are phantom64, patches64, phantom64_flow, patches64_flow, phantom64_reflow, phantom64_cm, patches64_cm, phantom64_ambient, patches64_noisy, phantom64_bridge_mri4x, patches64_bridge_sr2, brain64, patches64_v2\. Give one of those names"):
        load("edm")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*models/x\.pt\. Give the path of a checkpoint "
                                                r"file .*shipped prior's name \(phantom64, patches64, phantom64_flow, patches64_flow, phantom64_reflow, phantom64_cm, patches64_cm, phantom64_ambient, patches64_noisy, phantom64_bridge_mri4x, patches64_bridge_sr2, brain64, patches64_v2\)"):
        load(tmp_path / "models" / "x.pt")
    with pytest.raises(AppError, match=r"checkpoint not found: phantom65\..*Did you mean 'phantom64'\?"):
        setup(config("prior=invdiff_file", "prior.path=phantom65"))


def test_operator_checkpoints_are_identified_the_same_way(tmp_path):
    """The blur-network checkpoints of ``operators`` share the reader (``operators.checkpoints``):
    a random or truncated file is "not a checkpoint file", never a pickle to unlock."""
    import operators as O

    for name, (path, pattern) in _write_cases(tmp_path).items():
        if path.suffix != ".pt":
            continue
        with pytest.raises(CheckpointError, match=pattern) as err:
            O.NonlinearBlur(str(path), (1, 8, 8), seed=0, arch_kwargs=dict(channels=1, features=4, latent_dim=4))
        assert "weights_only" not in str(err.value), name
