"""Every checkpoint and array load path is safe: nothing in a file the user points at is unpickled as
arbitrary Python objects. The one unpickler in the package is the EDM converter's restricted one
(``invdiff.priors.convert``: a fixed table of globals, tested with malicious pickles in
tests/test_edm_pickle.py).

An audit of the package source (AST, so strings and comments do not count), then a malicious pickle
(its ``__reduce__`` would create a marker file) fed to each loader.

Already covered in tests/test_checkpoints.py (not repeated here): ``invdiff.priors.load`` refusing
a malicious ``.pt`` (raw pickle and ``torch.save`` zip) and a malicious ``.pkl`` (with and without
``trust=True``, which is refused), without creating the marker.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import operators as O
from invdiff.priors import CheckpointError, load
from test_checkpoints import Payload

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [d for d in ("invdiff", "operators", "training") if (ROOT / d).is_dir()]

# -- the audit ------------------------------------------------------------------------------------


def python_files():
    files = sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 40  # the scan sees the package
    return files


def dotted(node) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


class Calls(ast.NodeVisitor):
    """Calls with their enclosing function, resolved through ``import x as y`` / ``from x import y``."""

    def __init__(self):
        self.aliases: dict[str, str] = {}
        self.calls: list[tuple[str, ast.Call, list[ast.AST]]] = []
        self.stack: list[ast.AST] = []

    def visit_Import(self, node):
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node):
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}" if node.module else a.name

    def _scope(self, node):
        self.stack.append(node)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _scope

    def visit_Call(self, node):
        name = dotted(node.func)
        if name is not None:
            head, _, rest = name.partition(".")
            full = self.aliases.get(head, head) + (f".{rest}" if rest else "")
            self.calls.append((full, node, list(self.stack)))
        self.generic_visit(node)


def calls_of(sources: dict[str, str]) -> list:
    out = []
    for name, text in sources.items():
        v = Calls()
        v.visit(ast.parse(text, name))
        out += [(name, call, node, stack) for call, node, stack in v.calls]
    return out


@pytest.fixture(scope="module")
def calls():
    return calls_of({p.relative_to(ROOT).as_posix(): p.read_text() for p in python_files()})


def keyword(node: ast.Call, name: str):
    kw = next((k for k in node.keywords if k.arg == name), None)
    return kw.value if kw is not None else None


def is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load",
              "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load", "marshal.load", "marshal.loads",
              "shelve.open", "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load"}


def torch_loads(calls):
    return [(f, node) for f, name, node, _ in calls if name == "torch.load"]


def unsafe_torch_loads(calls):
    return [f"{f}:{node.lineno}" for f, node in torch_loads(calls) if not is_const(keyword(node, "weights_only"), True)]


def unpicklers(calls):
    return [(f, name, node, stack) for f, name, node, stack in calls if name in UNPICKLERS]


def other_unsafe_loads(calls):
    """np.load without allow_pickle=False, weights_only=False anywhere, a widened torch.load
    allow-list, third-party loaders that read or download weights themselves."""
    bad = []
    for f, name, node, _ in calls:
        where = f"{f}:{node.lineno}: {name}"
        if name == "numpy.load" and not is_const(keyword(node, "allow_pickle"), False):
            bad.append(where)
        if is_const(keyword(node, "weights_only"), False) or name == "torch.serialization.add_safe_globals":
            bad.append(where)
        if name.endswith((".from_pretrained", "hub.load", "load_state_dict_from_url")):
            bad.append(where)
        if keyword(node, "pretrained") is not None and not is_const(keyword(node, "pretrained"), None):
            bad.append(where)
    return bad


def test_the_audit_sees_violations():
    """The checks below are not vacuous: each flags a violating snippet, however imported."""
    snippet = (
        "import torch as th\nimport numpy\nfrom pickle import loads\nfrom torch import load\n"
        "def f(p):\n    th.load(p)\n    load(p, weights_only=False)\n    loads(p)\n    numpy.load(p)\n"
        "    m.from_pretrained(p)\n    Net(pretrained='download')\n"
    )
    calls = calls_of({"snippet.py": snippet})
    assert unsafe_torch_loads(calls) == ["snippet.py:6", "snippet.py:7"]
    assert [name for _, name, _, _ in unpicklers(calls)] == ["pickle.loads"]
    assert len(other_unsafe_loads(calls)) == 4


def test_every_torch_load_passes_weights_only_true(calls):
    assert unsafe_torch_loads(calls) == []
    # torch.load appears in the shared reader every loader goes through, and in the EDM converter
    # (the storage bytes EDM's pickles embed)
    assert sorted(f for f, _ in torch_loads(calls)) == ["invdiff/priors/convert.py", "operators/checkpoints.py"]


def unpickler_classes(sources: dict[str, str]) -> list[tuple[str, ast.ClassDef]]:
    """Classes deriving from an unpickler (``pickle.Unpickler``, ``_pickle.Unpickler``, ...)."""
    out = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, ast.ClassDef) and any((dotted(b) or "").endswith("Unpickler") for b in node.bases):
                out.append((name, node))
    return out


def test_the_only_unpickler_is_the_restricted_edm_converter(calls):
    """No pickle.load anywhere; one Unpickler subclass, whose find_class only looks names up in a
    table and raises otherwise (never super().find_class, never an import)."""
    assert unpicklers(calls) == []
    found = unpickler_classes({p.relative_to(ROOT).as_posix(): p.read_text() for p in python_files()})
    assert [(f, c.name) for f, c in found] == [("invdiff/priors/convert.py", "RestrictedEDMUnpickler")]
    find_class = next(n for n in found[0][1].body if isinstance(n, ast.FunctionDef) and n.name == "find_class")
    assert isinstance(find_class.body[-1], ast.Raise)
    text = ast.unparse(find_class)
    assert "super" not in text and "import" not in text and "sys.modules" not in text


def test_the_unpickler_audit_sees_violations():
    snippet = "import pickle\nclass U(pickle.Unpickler):\n    pass\nclass V(Unpickler):\n    pass\n"
    assert [c.name for _, c in unpickler_classes({"s.py": snippet})] == ["U", "V"]


def test_arrays_and_networks_are_never_loaded_unsafely(calls):
    assert other_unsafe_loads(calls) == []


# -- malicious files --------------------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a loader ran code from a file"


def evil_files(folder: Path, marker: Path, stem: str = "evil") -> list[Path]:
    """The payload as a legacy raw pickle and as a ``torch.save`` zip archive."""
    raw, zipped = folder / f"{stem}_raw.pt", folder / f"{stem}_zip.pt"
    with open(raw, "wb") as f:
        pickle.dump({"conv_in.weight": Payload(marker)}, f)
    torch.save({"conv_in.weight": Payload(marker)}, zipped)
    return [raw, zipped]


def test_the_payload_works_when_unpickled(tmp_path):
    """The check is meaningful: unpickling the file does create the marker."""
    marker = tmp_path / "pwned"
    raw, _ = evil_files(tmp_path, marker)
    with open(raw, "rb") as f:
        pickle.load(f)  # noqa: S301  (the point of this test)
    assert marker.exists()


def test_blur_network_loader_refuses_a_malicious_pickle(tmp_path, marker):
    for path in evil_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match="refusing to load"):
            O.load_blur_net(path, channels=1, features=4, latent_dim=4)
        with pytest.raises(CheckpointError, match="refusing to load"):
            O.NonlinearBlur(str(path), (1, 8, 8), seed=0, arch_kwargs=dict(channels=1, features=4, latent_dim=4))
    # a pickle renamed .safetensors is not a safetensors file
    (tmp_path / "evil.safetensors").write_bytes((tmp_path / "evil_zip.pt").read_bytes())
    with pytest.raises(CheckpointError, match="is not a safetensors file: it holds a torch.save zip file"):
        O.NonlinearBlur(str(tmp_path / "evil.safetensors"), (1, 8, 8), seed=0)


def test_the_app_refuses_malicious_checkpoints_and_writes_nothing(tmp_path, marker):
    from invdiff.apps.app import config, run
    from invdiff.apps.common import AppError

    evil_files(tmp_path, marker)
    with open(tmp_path / "network-snapshot.pkl", "wb") as f:
        pickle.dump({"ema": Payload(marker)}, f)
    base = ["shape=[1,8,8]", "data=sample_image", "solver.steps=2", "num_samples=1", "progress=false"]
    cases = [
        (["operator=nonlinear_blur", f"operator.checkpoint={tmp_path / 'evil_zip.pt'}", "prior=gaussian", "solver=dps"],
         r"operator config .*refusing to load .*evil_zip\.pt"),
        (["prior=edm_checkpoint", f"prior.path={tmp_path / 'evil_raw.pt'}"], r"prior config .*refusing to load"),
        (["prior=edm_checkpoint", f"prior.path={tmp_path / 'network-snapshot.pkl'}"],
         r"refusing to load .*network-snapshot\.pkl: it contains pickled Python objects beyond tensors"),
    ]
    for i, (overrides, pattern) in enumerate(cases):
        out = tmp_path / f"run{i}"
        out.mkdir()
        with pytest.raises(AppError, match=pattern):
            run(config(*base, *overrides), out)
        assert list(out.iterdir()) == []


def test_diffusers_folder_with_a_malicious_bin_is_refused(tmp_path, marker):
    pytest.importorskip("diffusers")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1}))
    raw, _ = evil_files(tmp_path, marker)
    (folder / "diffusion_pytorch_model.bin").write_bytes(raw.read_bytes())
    with pytest.raises(CheckpointError, match="refusing to load"):
        load(folder)


def test_perceptual_weight_files_are_read_safely(tmp_path, marker):
    pytest.importorskip("torchvision")
    from invdiff.perceptual import LPIPS, InceptionFeatures

    for path in evil_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match="refusing to load"):
            LPIPS.from_files(path)
        with pytest.raises(CheckpointError, match="refusing to load"):
            InceptionFeatures.from_file(path)


def test_array_files_with_pickled_objects_are_refused(tmp_path, marker):
    from invdiff.data.training_data import load_array, read_arrays

    np.save(tmp_path / "evil.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    path = str(tmp_path / "evil.npy")
    loaders = [O.load_mask, lambda p: O.MaskFile(p)((1, 8, 8)), lambda p: O.KernelFile(p)(),
               lambda p: O.MultiCoilMRI(O.RandomLinesMask(2, 0.2), p, (1, 8, 8)), load_array, read_arrays]
    for loader in loaders:
        with pytest.raises(ValueError, match="never unpickled"):
            loader(path)


# -- resuming training ---------------------------------------------------------------------------------


def tiny_trainer(out, **kw):
    from invdiff.data.training_data import PhantomData
    from invdiff.training import Trainer, TrainSettings

    settings = TrainSettings(steps=2, batch=2, arch=dict(width=8, mults=[1, 2], blocks=1, emb=32, patch=2))
    return Trainer(PhantomData(16), out, settings, progress=False, **kw)


def test_training_resume_refuses_a_malicious_checkpoint(tmp_path, marker):
    out = tmp_path / "run"
    out.mkdir()
    evil_files(out, marker)
    # the resume path reads <out>/checkpoint.safetensors only: a pickle there is refused ...
    (out / "checkpoint.safetensors").write_bytes((out / "evil_zip.pt").read_bytes())
    with pytest.raises(CheckpointError, match="checkpoint.safetensors is not a safetensors file: it holds a torch.save zip"):
        tiny_trainer(out)
    # ... and so is one handed to load_checkpoint directly, in either pickle format
    (out / "checkpoint.safetensors").unlink()
    fresh = tiny_trainer(out)
    assert fresh.step == 0  # nothing named like a torch checkpoint is picked up (*.pt are never read)
    for path in (out / "evil_raw.pt", out / "evil_zip.pt"):
        with pytest.raises(CheckpointError):
            fresh.load_checkpoint(path)


def test_train_app_refuses_a_malicious_checkpoint(tmp_path, marker):
    from hydra import compose, initialize_config_module

    from invdiff.apps.train_app import run

    out = tmp_path / "run"
    out.mkdir()
    evil_files(out, marker)
    (out / "checkpoint.safetensors").write_bytes((out / "evil_raw.pt").read_bytes())
    with initialize_config_module("invdiff.configs.train", version_base=None):
        cfg = compose("config", overrides=[f"out={out}", "settings.steps=2", "settings.batch=2", "data.size=16",
                                           "sample_grid=0", "settings.arch={width: 8, mults: [1, 2], blocks: 1, "
                                           "emb: 32, patch: 2}"])
    with pytest.raises(CheckpointError, match="checkpoint.safetensors is not a safetensors file: it holds a plain Python"):
        run(cfg)
    assert not (out / "prior.safetensors").exists()
