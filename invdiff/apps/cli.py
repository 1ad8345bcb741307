"""The ``invdiff`` command line: overrides checked before Hydra runs (one-paragraph errors with
the valid choices), ``--help``, the Hydra entry point around :func:`invdiff.apps.app.run`, and the
multirun summary callback.

    invdiff operator=gausian_blur
    invdiff: unknown operator 'gausian_blur'. Choose one of: ... Did you mean 'gaussian_blur'?
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from .app import run
from .common import GROUPS, USER_ERRORS, choices, config, log, one_paragraph, suggest


#: How the network is called is the ``runtime`` node's, not a solver setting (they were solver arguments once).
RUNTIME_SOLVER_KEYS = ("solver.autocast", "solver.compile", "solver.checkpoint", "solver.channels_last")


def _keys_of(node) -> list[str]:
    return sorted(k for k in node.keys() if not str(k).startswith("_")) if isinstance(node, DictConfig) else []


def _explain_key(full_key: str, overrides: list[str], bad: str, config_fn=config) -> str:
    """Unknown key ``full_key``: list the valid keys of its parent node (and, for a solver, the
    function's other parameters, which are added with ``+``)."""
    import inspect

    parent, _, leaf = full_key.rpartition(".")
    if full_key in RUNTIME_SOLVER_KEYS:
        value = bad.partition("=")[2] or "true"
        return (f"'{full_key}' is not a setting of the solver: how the network is called is the runtime node's "
                f"(the same for every solver). Use runtime.{leaf}={value}.")
    rest = [o for o in overrides if o != bad]
    try:
        cfg = config_fn(*rest)
    except Exception:  # noqa: BLE001
        cfg = None
    absent = object()
    node = OmegaConf.select(cfg, parent, default=absent) if (cfg is not None and parent) else cfg
    if node is absent:  # a parent that is not there either: name the first missing level
        parts = parent.split(".")
        k = len(parts) - 1
        while k > 0 and OmegaConf.select(cfg, ".".join(parts[:k]), default=absent) is absent:
            k -= 1
        above = ".".join(parts[:k])
        anc = OmegaConf.select(cfg, above) if above else cfg
        where = f"'{above}'" if above else "the top level"
        target = f" ({anc.get('_target_')})" if isinstance(anc, DictConfig) and anc.get("_target_") else ""
        keys = _keys_of(anc)
        return (f"unknown setting '{full_key}': {where}{target} has no '{parts[k]}'. Valid keys at {where}: "
                f"{', '.join(keys) or 'none'}.{suggest(parts[k], keys)}")
    keys = _keys_of(node)
    msg = f"unknown setting '{full_key}'."
    extra = []
    if parent == "solver" and node is not None and node.get("_target_"):
        try:
            fn = get_method(node._target_)
            extra = [p for p in inspect.signature(fn).parameters
                     if p not in keys and p not in ("y", "operator", "prior", "sigma_y", "generator", "callback")]
        except Exception:  # noqa: BLE001
            extra = []
    if leaf in extra:
        return (f"'{full_key}' is a parameter of the solver that its config does not list: add it with "
                f"+{bad.lstrip('+')} (the '+' adds a key).")
    where = f"'{parent}'" if parent else "the top level"
    msg += f" Valid keys at {where}: {', '.join(keys) or 'none'}."
    if extra:
        msg += f" The solver also takes {', '.join(extra)} (add with +solver.<name>=<value>)."
    return msg + suggest(leaf, keys + extra)


def _as_written(o, values: list[str]) -> list[str]:
    """A group override's choices as the user wrote them: Hydra parses ``true``/``false``/``null``
    into Python values, whose ``str`` would be 'True', 'False', 'None'."""
    elems = getattr(o.value(), "list", None) if o.is_sweep_override() else [o.value()]
    if elems is None or len(elems) != len(values):
        return values
    return ["null" if e is None else str(e).lower() if isinstance(e, bool) else v for e, v in zip(elems, values)]


def _first_variant(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first run (``a=1,2`` → ``a=1``); others as given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else text
            for o, text in zip(parsed, overrides)]


_WHY = {errno.ENOTDIR: "{at} is a file, not a directory", errno.EEXIST: "{at} exists and is not a directory",
        errno.EACCES: "permission denied: {at} is not writable by this user",
        errno.EPERM: "permission denied: {at} is not writable by this user",
        errno.EROFS: "{at} is on a read-only file system",
        errno.ENAMETOOLONG: "a name in the path is longer than the file system allows (255 bytes)",
        errno.ENOSPC: "no space left on the device of {at}", errno.EDQUOT: "the disk quota of {at} is exhausted",
        errno.ENOENT: "the file system of {at} does not allow new directories there"}


def make_output_dir(path: str | Path) -> str | None:
    """Create ``path`` (what Hydra would do next) and return ``None``, or leave nothing behind and
    return why it cannot be created, in words."""
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    long = next((part for part in p.parts if len(os.fsencode(part)) > 255), None)
    if long is not None:
        return f"the name '{long[:40]}…' in it is {len(os.fsencode(long))} bytes long; a file system allows 255"
    missing, at = [], p
    while not os.path.lexists(at):
        missing.append(at)
        at = at.parent
    if not at.is_dir():
        return _WHY[errno.ENOTDIR if missing else errno.EEXIST].format(at=at)
    if not missing:
        return None if os.access(at, os.W_OK | os.X_OK) else _WHY[errno.EACCES].format(at=at)
    made = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
    except OSError as err:
        for d in reversed(made):  # nothing left behind
            try:
                d.rmdir()
            except OSError:
                pass
        return _WHY.get(err.errno, "{at}: " + (err.strerror or str(err))).format(at=made[-1] if made else at)
    return None


def check_output_dir(argv: list[str], config_name: str, fix: str, inside: str | None = None) -> tuple[str | None, list]:
    """Before Hydra runs: create the run directory (the sweep directory with ``-m``) that ``argv``
    gives and return ``(None, pin)``, or ``(paragraph, [])`` saying which directory cannot be created
    and why. ``pin`` is an override fixing a time-stamped directory name (``${now:...}``) to the one
    created, for Hydra to use. With ``inside`` (a config key, e.g. ``results_dir``) and no
    ``hydra.run.dir``/``hydra.sweep.dir`` of the user's, the directory must also lie inside that one."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    multirun = "-m" in argv or "--multirun" in argv
    overrides = [a for a in argv if not a.startswith("-")]
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        with initialize_config_module("invdiff.configs", version_base=None):
            cfg = compose(config_name, overrides=_first_variant(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        target = str(OmegaConf.select(cfg, key))
        root = str(OmegaConf.select(cfg, inside)) if inside else None
        pattern = str(OmegaConf.to_container(cfg.hydra, resolve=False)[key.split(".")[1]]["dir"])
    except Exception:  # noqa: BLE001  (a config Hydra itself will report)
        return None, []
    finally:
        HydraConfig.instance().cfg = None
    given = any(o.lstrip("+").split("=", 1)[0] == key for o in overrides)
    if root is not None and not given:
        real, base = os.path.realpath(target), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            return (f"the run directory {target} would lie outside {inside}={root} ({real}): a value used in its name "
                    f"leaves the folder; use plain names (no '/' or '..') in overrides"), []
    why = make_output_dir(target)
    if why is None:
        return None, ([f"{key}={target}"] if "${now:" in pattern and not given else [])
    return f"cannot create the output directory {target} ({key}): {why}. {fix}", []


def log_to_files(msg: str) -> None:
    """Write an error into the run's log file(s) (Hydra's ``<job>.log``) without printing it again."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, None, None)
    for h in logging.getLogger().handlers + log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def explain_overrides(overrides: list[str], config_fn=config, groups=GROUPS, check=None) -> str | None:
    """Check command-line overrides before Hydra runs: ``None`` when they compose, otherwise one
    paragraph saying what is wrong and listing the valid choices. Sweeps (``a=1,2``) are checked
    value by value; ``check(cfg)`` (raising ``ValueError``) runs on each composed variant."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    overrides = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        return f"could not read the command line: {one_paragraph(err)}"
    plain, sweeps = [], []
    for o, text in zip(parsed, overrides):
        key = o.key_or_group.split("@")[0]
        if key in RUNTIME_SOLVER_KEYS:  # (a '+' would add it to the solver's call, which does not take it)
            return _explain_key(key, overrides, text, config_fn)
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if key in groups and not o.is_delete():
            for v in _as_written(o, values):
                if v not in choices(key) and v != "null":
                    return (f"unknown {key} '{v}'. Choose one of: {', '.join(choices(key))}.{suggest(v, choices(key))}")
        if o.is_sweep_override():
            sweeps.append((o.get_key_element(), values, text))
            plain.append(f"{o.get_key_element()}={values[0]}")
        else:
            plain.append(text)
    variants = [plain]
    for key, values, _ in sweeps:
        for v in values[1:]:
            variants.append([p if not p.startswith(f"{key}=") else f"{key}={v}" for p in plain])
    for n, variant in enumerate(variants):
        where = "" if n == 0 else f"with {', '.join(p for p in variant if p not in plain)}: "
        try:
            composed = config_fn(*variant)
        except Exception as err:  # noqa: BLE001  (Hydra raises several types; all are the user's input)
            text = str(err)
            m = re.search(r"full_key: (\S+)", text) or re.search(r"Could not override '([^']+)'", text)
            if m and ("not in struct" in text or "Could not override" in text or "Could not append" in text):
                bad = next((p for p in variant if p.lstrip("+~").split("=")[0] == m.group(1)), m.group(1))
                return where + _explain_key(m.group(1), variant, bad, config_fn)
            return where + one_paragraph(text.split("\n\n")[0])
        if check is not None:
            try:
                check(composed)
            except ValueError as err:
                return where + one_paragraph(err)
    return None


def run_job(prog: str, fn, cfg: DictConfig) -> None:
    """Run ``fn(cfg, output_dir)`` as a Hydra job of the command ``prog``: a user error becomes one
    paragraph (in the log files and, from ``SystemExit``, on the console); in a sweep it is recorded
    in the run's ``error.txt`` and the sweep goes on."""
    from ..distributed import context

    hc = HydraConfig.get()
    try:
        fn(cfg, hc.runtime.output_dir)
    except USER_ERRORS as err:
        msg = f"{prog}: {one_paragraph(err)}"
        # a sweep records the error and goes on, except under torchrun: there the ranks must stay in
        # step (a rank skipping a run would pair its barriers with another run's), so all stop
        if hc.mode == RunMode.MULTIRUN and not context().active:
            log.error(msg)
            Path(hc.runtime.output_dir, "error.txt").write_text(msg + "\n")
            return
        log_to_files(msg)  # (the console gets it once, from SystemExit)
        raise SystemExit(msg) from None
    except Exception as err:  # not the user's input: the traceback goes to the console, the log says so too
        log_to_files(f"{prog}: the run failed with {type(err).__name__}: {one_paragraph(err)}")
        raise


@hydra.main(version_base=None, config_path="pkg://invdiff.configs", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run_job("invdiff", run, cfg)


HELP = """invdiff — imaging inverse problems with diffusion-model priors.

Usage: invdiff [group=choice ...] [key=value ...]
       invdiff -m solver=pigdm,ddnm seed=0,1          (a sweep; summary over all runs)
With no arguments: 4× single-coil MRI of 4 held-out phantoms, the shipped phantom64 prior, ΠGDM.

== Config groups (group=choice) ==
{groups}

== Settings (key=value) ==
shape [C,H,W], seed, operator_seed, sigma_y (auto|σ), num_samples, batch_size (n|auto), device (auto|cpu|cuda),
baseline (auto|pinv|adjoint|none), figures, progress, resume; and any key of the chosen configs,
e.g. solver.steps=50, noise.sigma=0.02, data.n=8 (+solver.<param>=... adds a solver parameter its
config does not list).

Examples:
  invdiff solver=dps solver.steps=500
  invdiff experiment=phantom64_mri8x_dps
  invdiff operator=random_inpainting data=sample_image data.names=[camera,moon] prior=gaussian shape=[1,32,32]
  invdiff data=measurement data.y=/path/kspace.npy operator=mri_mask_file operator.mask.path=/path/mask.npy sigma_y=0.01
Results land in the run directory (outputs/<date>/<time>/; multirun/... for sweeps): samples/*.h5,
figures/*.png, metrics.json, metrics.csv. `invdiff --cfg job` prints the composed config;
`invdiff --hydra-help` shows Hydra's own options."""


def help_text() -> str:
    return HELP.format(groups="\n".join(f"{g}: {', '.join(choices(g))}" for g in GROUPS))


def main() -> None:
    """Console entry point: check the overrides (one-paragraph errors), then run Hydra."""
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        msg = explain_overrides([a for a in args if not a.startswith("-")])
        if msg:
            raise SystemExit(f"invdiff: {msg}")
    from ..distributed import hydra_overrides

    # under torchrun: one run directory for all ranks (rank 0's start time)
    sys.argv += hydra_overrides(args, {"hydra.run.dir": "outputs/{time}", "hydra.sweep.dir": "multirun/{time}"})
    if "--cfg" not in args and "-c" not in args and "--info" not in args and "--hydra-help" not in args:
        problem, pin = check_output_dir(sys.argv[1:], "config",
                                        "Choose a writable directory with hydra.run.dir=<dir> (hydra.sweep.dir=<dir> "
                                        "for a sweep with -m).")
        if problem:
            raise SystemExit(f"invdiff: {problem}")
        sys.argv += pin  # (Hydra uses the directory just created, not one named a second later)
    _hydra_main()


class SweepSummary(Callback):
    """Hydra callback: after a multirun, ``metrics.json`` / ``metrics.csv`` over every run of the
    sweep in the sweep directory, and a non-zero exit if some runs failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from ..data.results import summarize
        from ..distributed import context

        if not context().main:  # under torchrun: rank 0 summarises
            return
        from .sweeps import sweep_runs, sweep_table

        sweep = Path(config.hydra.sweep.dir)
        runs, failed = sweep_runs(sweep)
        if runs:
            summarize(runs, sweep)
            lines = sweep_table(sweep, runs, failed)
            log.info("sweep over %d run(s), one row per setting (%s):\n%s", len(runs), sweep / "sweep.md",
                     "\n".join(lines[4:]))
        if failed:
            raise SystemExit(f"invdiff: {len(failed)} run(s) of the sweep failed ({', '.join(failed)}); "
                             f"see error.txt in each")


if __name__ == "__main__":
    main()
