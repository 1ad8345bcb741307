"""EDM network pickles (issue 31, item 1): the app and ``invdiff.priors.load`` unpickle nothing (no
trust flag), and ``python -m invdiff.priors.convert`` reads them with a restricted unpickler that
never runs code from the file — neither the module source EDM embeds nor any other global's
``__reduce__`` (``os.system``, ``eval``, ``subprocess``) — and converts them exactly.

The pickles are written by ``tests/edm_pickles.py`` the way EDM's ``torch_utils.persistence`` does,
with module source that would create a marker file if it were ever executed.
"""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys

import pytest
import torch

from edm_pickles import EVIL_SOURCE, edm_pickle
from invdiff.priors import CheckpointError, convert_edm_pickle, load
from invdiff.priors.convert import main, read_edm_pickle
from invdiff.priors.formats import EDMPreconditioned
from test_checkpoints import edm_unet, noisy


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "code from the pickle ran"


@pytest.fixture(scope="module")
def nets():
    """EDM's EDMPrecond around an NCSN++ (SongUNet) and VPPrecond (non-default constants) around an
    ADM (DhariwalUNet), 16×16, 2 channels."""
    return {"edm": EDMPreconditioned(edm_unet("ncsn"), "edm", sigma_data=0.6).eval(),
            "vp": EDMPreconditioned(edm_unet("adm"), "vp", M=500, beta_d=18.0, beta_min=0.2).eval()}


@pytest.mark.parametrize("precond", ["edm", "vp"])
def test_conversion_is_exact_and_runs_nothing_from_the_file(tmp_path, marker, nets, precond):
    net = nets[precond]
    src = tmp_path / "network-snapshot-000100.pkl"
    edm_pickle(src, net, precond, module_src=EVIL_SOURCE.format(marker=marker))
    assert "torch_utils" not in sys.modules
    dst = convert_edm_pickle(src, tmp_path / "net.safetensors", log=None)
    assert "torch_utils" not in sys.modules  # the reader never imported what the file names
    prior = load(dst)
    own = prior.net.state_dict()
    assert own.keys() == net.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in net.state_dict().items())  # same bits, copied
    assert prior.net.precond == precond and prior.net.sigma_data == net.sigma_data
    assert (prior.net.M, prior.net.beta_d, prior.net.beta_min) == (net.M, net.beta_d, net.beta_min)
    x, sigma = noisy((2, 2, 16, 16), 0.8), torch.tensor([0.2, 4.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(prior.denoiser(x, sigma), net(x.float(), sigma.float()).double(), atol=1e-5)
    assert prior.schedule.sigma_min == pytest.approx(net.sigma_range()[0])


def test_the_converter_says_what_it_does_before_reading(tmp_path, marker, nets, capsys):
    src = tmp_path / "net.pkl"
    edm_pickle(src, nets["edm"], module_src=EVIL_SOURCE.format(marker=marker))
    assert main([str(src), str(tmp_path / "net.safetensors")]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"Reading {src} as an EDM network pickle with a restricted unpickler")
    assert "never executed" in said[0] and said[1].startswith("Wrote ")
    # errors: one line on stderr, exit status 2, nothing written
    (tmp_path / "random.pkl").write_bytes(os.urandom(1000))
    assert main([str(tmp_path / "random.pkl"), str(tmp_path / "r.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not a checkpoint file" in err
    assert not (tmp_path / "r.safetensors").exists()


def _payloads(marker):
    """Objects whose unpickling would create ``marker``, through several globals."""

    class Reduce:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    return {
        "posix.system": Reduce(os.system, (f"touch {marker}",)),
        "builtins.eval": Reduce(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.exec": Reduce(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": Reduce(subprocess.call, (["touch", str(marker)],)),
        "subprocess.Popen": Reduce(subprocess.Popen, (["touch", str(marker)],)),
        "builtins.__import__": Reduce(builtins.__import__, ("os",)),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("where", ["beside", "inside"])
def test_other_globals_are_refused_by_name_before_anything_runs(tmp_path, marker, nets, protocol, where):
    """A genuine EDM network pickle (it would pass any trust check) that also carries a payload:
    next to the network in the top-level dict, or inside the network's own state."""
    for name, payload in _payloads(marker).items():
        src = tmp_path / f"evil_{where}.pkl"
        extra = {"augment_pipe": payload} if where == "beside" else None
        extra_state = {"init_kwargs": payload} if where == "inside" else None
        edm_pickle(src, nets["edm"], protocol=protocol, module_src=EVIL_SOURCE.format(marker=marker), extra=extra,
                   extra_state=extra_state)
        with pytest.raises(CheckpointError, match=rf"refusing to convert .*evil_{where}\.pkl: it refers to "
                                                  rf"{name}, .*Nothing from the file was run"):
            convert_edm_pickle(src, tmp_path / "out.safetensors", log=None)
        assert not marker.exists(), name
        assert not (tmp_path / "out.safetensors").exists()
        with pytest.raises(CheckpointError, match="refusing to unpickle .*EDM network pickle.*invdiff.priors.convert"):
            load(src)


def test_a_plain_malicious_pickle_is_not_an_edm_pickle(tmp_path, marker):
    src = tmp_path / "network-snapshot.pkl"
    with open(src, "wb") as f:
        pickle.dump({"ema": _payloads(marker)["posix.system"]}, f)
    with pytest.raises(CheckpointError, match="it refers to posix.system"):
        read_edm_pickle(src)
    with pytest.raises(CheckpointError, match=r"refusing to load .*network-snapshot\.pkl: it contains pickled Python "
                                              r"objects beyond tensors \(posix\.system\)"):
        load(src)


def test_no_trust_flag_and_no_torch_utils_check(tmp_path, marker, nets, monkeypatch):
    """An empty package named torch_utils on the path changes nothing; trust=True is refused before
    the file is opened, from Python and from the app (``+prior.trust=true``)."""
    from invdiff.apps.app import config, setup
    from invdiff.apps.common import AppError

    (tmp_path / "torch_utils").mkdir()
    (tmp_path / "torch_utils" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "network-snapshot.pkl"
    edm_pickle(src, nets["edm"], module_src=EVIL_SOURCE.format(marker=marker))
    with pytest.raises(CheckpointError, match=r"trust=True is not accepted .*unpickles nothing.*invdiff.priors.convert"):
        load(src, trust=True)
    with pytest.raises(CheckpointError, match="trust=True is not accepted"):
        load(tmp_path / "does-not-exist.pkl", trust=True)  # refused before the file is looked at
    for extra in ([], ["+prior.trust=true"]):
        with pytest.raises(AppError) as err:
            setup(config("prior=edm_checkpoint", f"prior.path={src}", *extra))
        msg = str(err.value)
        assert "\n" not in msg and "invdiff.priors.convert" in msg
        assert ("trust=True is not accepted" if extra else "is an EDM network pickle") in msg
    assert "torch_utils" not in sys.modules


def test_the_converted_file_loads_through_the_app_config(tmp_path, marker, nets):
    from invdiff.apps.app import config
    from invdiff.apps.common import build

    src = tmp_path / "net.pkl"
    edm_pickle(src, nets["edm"], module_src=EVIL_SOURCE.format(marker=marker))
    dst = convert_edm_pickle(src, tmp_path / "net.safetensors", log=None)
    prior = build(config("prior=invdiff_file", f"prior.path={dst}").prior, "prior")
    assert prior.checkpoint["format"] == "invdiff" and tuple(prior.shape) == (2, 16, 16)
