"""The network call of every posterior sampler: its run-time settings and the check-only mode.

* :class:`Network` calls a prior's denoiser ``D(x, σ)`` in float64 with the run-time settings —
  bf16 autocast, ``torch.compile`` (:data:`COMPILE_MODES`), gradient checkpointing of vector–Jacobian
  products (:func:`checkpointed`), channels-last memory format.
* :func:`runtime` sets those settings for every solve inside a block (``invdiff.reconstruct``
  enters it for its ``autocast=``, ``compile=``, ``checkpoint=``, ``channels_last=`` arguments).
  They belong to the network call, not to a paper's algorithm, so no solver's signature has them
  (DESIGN.md "Solver"); :func:`runtime_network` builds the :class:`Network` a solve uses.
* :func:`check_call` runs a solver up to its first network call: every check, no denoiser work.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable

import torch
from torch import Tensor

from ..priors.base import CountingPrior, Prior, per_sample_sigma, raw_call

__all__ = ["COMPILE_MODES", "Network", "runtime", "runtime_network", "check_call", "checks_done", "checkpointed",
           "compile_mode"]


# --------------------------------------------------------------------------------------------
# check-only runs
# --------------------------------------------------------------------------------------------
_CHECK_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("invdiff_check_only", default=False)


class _ChecksPassed(Exception):
    """Raised at a solver's first network call under :func:`check_call`."""


def check_call(solver: Callable, y: Tensor, operator, prior: Prior, **kwargs) -> None:
    """Run ``solver(y, operator, prior, **kwargs)`` up to its first network call, then stop.

    Every check a solver makes (capabilities, shapes, σ_y, settings) happens before it first calls
    the network, so this raises exactly the error the real call would raise, at the cost of the
    solver's set-up only (an SVD of ȳ, a pseudo-inverse; no denoiser evaluation). Apps use it to
    refuse a bad combination before they simulate, sample or write anything.
    """
    token = _CHECK_ONLY.set(True)
    try:
        solver(y, operator, prior, **kwargs)
    except _ChecksPassed:
        pass
    finally:
        _CHECK_ONLY.reset(token)


def checks_done() -> None:
    """Under :func:`check_call`, stop here: for solvers that never call the network through
    :class:`Network` (the baselines), called right after their checks."""
    if _CHECK_ONLY.get():
        raise _ChecksPassed



# --------------------------------------------------------------------------------------------
# run-time settings and the network call
# --------------------------------------------------------------------------------------------
#: ``torch.compile`` modes: ``default``; ``reduce-overhead`` (CUDA graphs of the network call at each
#: batch shape: launch-bound small batches); ``max-autotune`` (autotuned kernels and CUDA graphs);
#: ``max-autotune-no-cudagraphs``. ``compile=True`` is ``default``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
_torch_compile = torch.compile  # tests swap in a counting backend


def compile_mode(compile) -> str | None:
    """``False``/``None`` → no compilation; ``True`` → ``"default"``; a mode of :data:`COMPILE_MODES`."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise ValueError(f"compile must be true, false or one of {list(COMPILE_MODES)}, got {compile!r}")


def _compiled(prior: Prior, mode: str) -> Callable:
    """The prior's :meth:`~invdiff.priors.Prior.raw_denoiser` compiled once per (prior, mode) and
    reused by every solve: σ reaches it as a ``[B, 1, …]`` tensor, so it is traced once per input
    shape and dtype, not once per noise level. Held by the prior itself (freed with it).

    Plain :class:`~invdiff.priors.CountingPrior` wrappers (``invdiff.reconstruct`` makes a new one
    per call) are counted here, outside the compiled code, around the wrapped prior's compiled
    call: a new wrapper is not a new function to compile."""
    counters = []
    while isinstance(prior, CountingPrior) and raw_call(prior) == prior.raw_denoiser:
        counters.append(prior)
        prior = prior.inner
    if counters:
        inner = _compiled(prior, mode)

        def counted(x: Tensor, sigma: Tensor) -> Tensor:
            for c in counters:
                c.calls += 1
            return inner(x, sigma)

        return counted
    cache = prior.__dict__.setdefault("_invdiff_compiled", {})
    fn = cache.get(mode)
    if fn is None:
        fn = _torch_compile(raw_call(prior), dynamic=False, **({} if mode == "default" else {"mode": mode}))
        cache[mode] = fn
    return fn


_RUNTIME: contextvars.ContextVar[dict] = contextvars.ContextVar("invdiff_runtime", default={})


@contextlib.contextmanager
def runtime(*, autocast: bool | None = None, compile=None, checkpoint: bool | None = None,
            channels_last: bool | None = None):
    """Run-time settings of every network call made by solvers inside the block (DESIGN.md: they
    belong to the network call, not to a paper's signature). ``None`` keeps the enclosing block's
    setting (off outside any block); blocks nest.

    :param autocast: bf16 autocast of the network on the input's device.
    :param compile: ``True`` or a mode of :data:`COMPILE_MODES` (``"reduce-overhead"``: CUDA graphs).
    :param checkpoint: gradient checkpointing of the network's blocks in vector–Jacobian products.
    :param channels_last: 4-D inputs (and the network's 4-D weights, converted in place once) in
        channels-last memory format: the layout tensor cores want for bf16 convolutions.

    Example::

        with invdiff.solvers.runtime(compile="reduce-overhead", autocast=True, channels_last=True):
            x = invdiff.solvers.dps(y, op, prior, sigma_y=0.05)
    """
    new = dict(_RUNTIME.get())
    for key, value in (("autocast", autocast), ("compile", compile), ("checkpoint", checkpoint),
                       ("channels_last", channels_last)):
        if value is not None:
            new[key] = value
    compile_mode(new.get("compile"))  # refuse a bad mode here, before any solve
    token = _RUNTIME.set(new)
    try:
        yield
    finally:
        _RUNTIME.reset(token)


def _blocks(prior: Prior) -> list[torch.nn.Module]:
    """The network's blocks for gradient checkpointing: the items of its ``ModuleList``s (UNet
    down/up blocks in guided-diffusion, EDM and deepinv networks), else the parameterised children
    of the prior's network modules."""
    blocks = [m for ml in prior.modules() if isinstance(ml, torch.nn.ModuleList) for m in ml]
    if not blocks:
        nets = [m for m in prior.children() if next(m.parameters(), None) is not None]
        blocks = [c for n in nets for c in n.children() if next(c.parameters(), None) is not None]
    return blocks


@contextlib.contextmanager
def checkpointed(prior: Prior):
    """Within this context every block of the prior's network recomputes its activations in the
    backward pass (``torch.utils.checkpoint``) instead of storing them: activation memory of a
    vector–Jacobian product drops to the blocks' inputs, at the cost of one more forward pass."""
    from torch.utils.checkpoint import checkpoint

    patched = []
    for block in _blocks(prior):
        if "forward" in vars(block):
            continue
        block.forward = functools.partial(checkpoint, type(block).forward.__get__(block), use_reentrant=False)
        patched.append(block)
    try:
        yield len(patched)
    finally:
        for block in patched:
            del block.forward


class Network:
    """``D(x, σ)`` of a prior in float64, with the solver's run-time settings.

    :param autocast: run the network under ``torch.autocast(bfloat16)`` on the input's device.
    :param compile: ``True`` or a mode of :data:`COMPILE_MODES`: call the prior's compiled
        :meth:`~invdiff.priors.Prior.raw_denoiser` (compiled once per prior and mode, reused). The
        checks (shape, σ > 0) run here, outside the compiled region, and σ enters as a tensor.
    :param checkpoint: gradient checkpointing of the network's blocks in :meth:`with_grad`
        (see :func:`checkpointed`); no effect on no-grad calls.
    :param channels_last: channels-last memory format for 4-D inputs and the network's weights.
    """

    def __init__(self, prior: Prior, *, autocast: bool = False, compile=False, checkpoint: bool = False,
                 channels_last: bool = False):
        self.prior = prior
        self.autocast = bool(autocast)
        self.checkpoint = bool(checkpoint)
        self.mode = compile_mode(compile)
        self.fn = None if self.mode is None else _compiled(prior, self.mode)
        self.channels_last = bool(channels_last) and len(prior.shape) == 3
        if self.channels_last and not prior.__dict__.get("_invdiff_channels_last", False):
            prior.to(memory_format=torch.channels_last)  # 4-D weights only; values unchanged
            prior.__dict__["_invdiff_channels_last"] = True

    def _ctx(self, x: Tensor):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)

    def _call(self, x: Tensor, sigma) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.fn is None:
            return self.prior.denoiser(x, sigma)
        self.prior.check_input(x)
        s = per_sample_sigma(sigma, x)
        if self.mode in _CUDAGRAPH_MODES and x.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous call's outputs may now be reused
        out = self.fn(x, s)
        # a CUDA graph's output lives in memory the next replay overwrites: hand out a copy
        return out.clone() if self.mode in _CUDAGRAPH_MODES and out.dtype == torch.float64 else out

    def __call__(self, x: Tensor, sigma) -> Tensor:
        """No-grad denoiser call, result in float64."""
        if _CHECK_ONLY.get():
            raise _ChecksPassed
        with torch.no_grad(), self._ctx(x):
            out = self._call(x, sigma)
        return out.to(torch.float64)

    def with_grad(self, x: Tensor, sigma) -> Tensor:
        """Denoiser call that keeps the autograd graph (vector–Jacobian products; :func:`setup` with
        ``prior_grad=True`` has checked that the prior is differentiable)."""
        if _CHECK_ONLY.get():
            raise _ChecksPassed
        ckpt = checkpointed(self.prior) if self.checkpoint else contextlib.nullcontext()
        with torch.enable_grad(), self._ctx(x), ckpt:
            out = self._call(x, sigma)
        return out.to(torch.float64)


def runtime_network(prior: Prior) -> Network:
    """The :class:`Network` of ``prior`` with the settings of the enclosing :func:`runtime` blocks
    (all off outside any): what :func:`~invdiff.solvers._common.setup` gives each solve."""
    rt = _RUNTIME.get()
    return Network(prior, autocast=rt.get("autocast", False), compile=rt.get("compile", False),
                   checkpoint=rt.get("checkpoint", False), channels_last=rt.get("channels_last", False))
