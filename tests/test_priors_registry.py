"""The priors' registries: the formats :func:`invdiff.priors.load` tries (and in which order), a
format registered from outside the package, the message for a file no format reads, and names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invdiff.priors import CheckpointError, GaussianPrior, load, registry
from invdiff.priors.checkpoints import sha256_file


def test_the_formats_are_tried_in_the_old_detection_order():
    assert [f.name for f in registry.FORMATS] == ["invdiff", "guided-diffusion", "score_sde", "edm", "diffusers"]
    assert list(registry.NAMED_PRIORS) == ["phantom64", "patches64", "phantom64_flow", "patches64_flow", "phantom64_reflow",
                                             "phantom64_cm", "patches64_cm", "phantom64_ambient", "patches64_noisy",
                                             "phantom64_bridge_mri4x", "patches64_bridge_sr2", "brain64",
                                             "patches64_v2"]
    assert {"invdiff.unet", "deepinv.DiffUNet", "edm.precond"} <= set(registry.ARCHITECTURES)


def test_the_registry_imports_none_of_the_modules_that_register():
    tree = ast.parse(Path(registry.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert imported <= {"checkpoints"}


def test_a_registered_format_is_detected_loaded_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "FORMATS", list(registry.FORMATS))  # undone after the test
    seen = []

    @registry.register_format("toy", lambda c: c.has("toy_mean"), "toy dicts with 'toy_mean'")
    def load_toy(checkpoint, overrides):
        seen.append(checkpoint.contents is checkpoint.contents)  # read once, kept
        return GaussianPrior(checkpoint.contents["toy_mean"], 1.0, **overrides)

    torch.save({"toy_mean": torch.zeros(4)}, tmp_path / "toy.pt")
    prior = load(tmp_path / "toy.pt", data_range=(0.0, 2.0))
    assert seen == [True] and prior.data_range == (0.0, 2.0)
    assert prior.checkpoint == {"path": str((tmp_path / "toy.pt").resolve()),
                                "sha256": sha256_file(tmp_path / "toy.pt"), "format": "toy"}
    torch.save({"weights": torch.ones(2)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint layout \(top-level keys: weights\)\. "
                                              r"Known: invdiff .* diffusers folders and toy dicts with 'toy_mean'\."):
        load(tmp_path / "odd.pt")


def test_a_torch_file_without_a_dict_is_named(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a dict \(state dict or checkpoint\), got list"):
        load(tmp_path / "list.pt")


def test_importing_any_priors_module_registers_everything():
    """The package's ``__init__`` imports the registering modules, and any ``invdiff.priors.x``
    import runs it first: a fresh interpreter that imports only the loader knows every format and name."""
    code = ("from invdiff.priors.loaders import load\n"
            "from invdiff.priors.registry import FORMATS, NAMED_PRIORS\n"
            "print(len(FORMATS), len(NAMED_PRIORS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    from invdiff.priors.shipped import SHIPPED

    assert out.split() == ["5", str(len(SHIPPED))]
