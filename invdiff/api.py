"""``invdiff.reconstruct``: posterior sampling for scripts, with the app's seeding and batching.

    import invdiff, operators
    out = invdiff.reconstruct(y, op, invdiff.priors.load("phantom64"), "pigdm", sigma_y=0.01,
                              num_samples=4, seed=0)
    out.mean, out.std, out.samples, out.nfe

Every posterior draw ``k`` of item ``id`` uses its own generator seeded by
:func:`sample_seed` ``(seed, id, "solver/k")``, so a draw does not depend on which batch (or
process) computed it (DESIGN.md). The app (:mod:`invdiff.apps.app`) calls exactly this function.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .checks import check_measurement, check_sigma_y, whole_number
from .priors.base import CountingPrior, Prior
from .priors.bridge import BridgePrior

log = logging.getLogger("invdiff")


class OutOfMemory(MemoryError):
    """A batch of solves did not fit in memory; the message says which batch size to try."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator's out-of-memory error (CUDA, MPS or the CPU allocator)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory",
                                   "failed to allocate"))


def _free_cache(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom_message(n: int, device: torch.device, auto: bool, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    if auto or n == 1:
        return (f"out of memory on {device} solving a single draw ({first}). The problem itself does not fit: "
                f"use a smaller image or tile it (invdiff.tiling), gradient checkpointing (checkpoint=True, "
                f"runtime.checkpoint=true in the app; for the gradient-based solvers), or another device.")
    return (f"out of memory on {device} solving {n} draws at once ({first}). Set batch_size={max(1, n // 2)} "
            f"(or batch_size=auto, which halves the batch until it fits; the draws do not change), or turn on "
            f"gradient checkpointing (checkpoint=True, runtime.checkpoint=true in the app) for the gradient-based "
            f"solvers.")


def sample_seed(seed: int, sample_id: str, stream: str) -> int:
    """A 63-bit seed derived from ``(seed, sample_id, stream)`` (SHA-256): independent streams per
    sample and purpose ("noise" for the simulated measurement, "solver/k" for draw k)."""
    digest = hashlib.sha256(f"{int(seed)}/{sample_id}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator_of(seed: int, sample_id: str, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, sample_id, stream))


def solver_of(solver: str | Callable) -> Callable:
    """A solver function from its name in the registry ``invdiff.solvers.SOLVERS`` (the posterior
    samplers and the baselines ``pinv``, ``tv``, ``dpir``) or a callable (e.g. a
    ``functools.partial`` with settings), returned as is."""
    import difflib

    from .solvers import BRIDGE_SOLVERS, SOLVERS

    if callable(solver):
        return solver
    every = {**SOLVERS, **BRIDGE_SOLVERS}
    if solver not in every:
        close = difflib.get_close_matches(str(solver), list(every), n=1)
        raise ValueError(f"unknown solver {solver!r}. Choose one of: {', '.join(sorted(SOLVERS))}; with a bridge "
                         f"prior: {', '.join(sorted(BRIDGE_SOLVERS))}; or pass a callable with the solver call shape."
                         + (f" Did you mean '{close[0]}'?" if close else ""))
    return every[solver]


def solver_name(solver: Callable) -> str:
    fn = solver.func if isinstance(solver, functools.partial) else solver
    return getattr(fn, "__name__", type(fn).__name__)


def solver_settings(solver: Callable) -> dict:
    """The keyword settings of a ``functools.partial`` solver (empty for a bare function)."""
    return dict(solver.keywords) if isinstance(solver, functools.partial) else {}


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct` (physical units, on y's device).

    :ivar samples: ``[B, N, C, H, W]`` posterior draws (N = ``num_samples``).
    :ivar mean: ``[B, C, H, W]`` their mean (the draw itself for N = 1).
    :ivar std: ``[B, C, H, W]`` per-pixel standard deviation (ddof = 1), or ``None`` for N = 1.
    :ivar nfe: network calls per solve (one draw of one item; a batch costs the same NFE).
    :ivar seconds: wall time of all solves.
    :ivar seeds: ``[B][N]`` the seed of each draw.
    """

    samples: Tensor
    mean: Tensor
    std: Tensor | None
    nfe: int
    seconds: float
    seeds: list[list[int]]


def batch_items(B: int, ids, sigma_y) -> tuple[list[str], Tensor]:
    """The ``B`` items' names (default ``"0"``, ``"1"``, …; unique) and σ_y values (``[B]``,
    finite, >= 0) from :func:`reconstruct`'s ``ids`` and ``sigma_y`` arguments, checked."""
    ids = [str(i) for i in range(B)] if ids is None else [str(i) for i in ids]
    if len(ids) != B or len(set(ids)) != B:
        raise ValueError(f"ids must name the {B} items of the batch uniquely, got {ids}")
    sig = check_sigma_y(sigma_y, B)
    return ids, sig


def reconstruct(y: Tensor, operator, prior: Prior, solver: str | Callable = "pigdm", *, sigma_y,
                num_samples: int = 1, seed: int = 0, ids: Sequence[str] | None = None,
                batch_size: int | None = None, progress=None, autocast: bool | None = None, compile=None,
                checkpoint: bool | None = None, channels_last: bool | None = None,
                **solver_kwargs) -> Reconstruction:
    """Draw ``num_samples`` posterior samples for each measurement of a batch.

    :param y: ``[B, *meas]`` measurements (measurement units; float). float16/bfloat16 y is
        converted to float64 (exactly) with a logged warning that states its rounding error.
    :param operator: an ``operators`` operator (noiseless, the one that produced y).
    :param prior: a :class:`invdiff.priors.Prior` (e.g. ``invdiff.priors.load("phantom64")``).
    :param solver: a name in ``invdiff.solvers.SOLVERS`` (``"dps"``, ``"pigdm"``, …, ``"pinv"``,
        ``"tv"``) or a callable with the solver call shape (e.g.
        ``functools.partial(invdiff.solvers.dps, steps=500)``).
    :param sigma_y: measurement noise σ (float or ``[B]``; measurement units).
    :param num_samples: posterior draws per item (mean and per-pixel std from them).
    :param seed: base seed; draw k of item i uses ``sample_seed(seed, ids[i], f"solver/{k}")`` in a
        generator on y's device (reproducible bit for bit per device type; CPU and CUDA streams differ).
    :param ids: one name per item (default ``"0"``, ``"1"``, …): seeds follow names, not positions.
    :param batch_size: solves per solver call (default all ``B × num_samples`` at once), or
        ``"auto"``: start with all and halve on an out-of-memory error until a batch fits (the
        draws do not depend on it, DESIGN.md; a retried batch's steps show again on the progress bar
        and the callback). With a number, running out of memory raises
        :class:`OutOfMemory`, whose message names the batch size to try.
    :param progress: a ``tqdm`` bar to advance once per solver step, ``True`` for a new one, or None.
    :param autocast, compile, checkpoint, channels_last: run-time settings of the network call
        (:func:`invdiff.solvers.runtime`, entered around the solves): bf16 autocast; ``True`` or a
        mode of ``invdiff.solvers.COMPILE_MODES``; gradient checkpointing of the network's blocks
        (the solvers that differentiate through the network: DPS, ΠGDM, MCG, TMPD); channels-last
        memory format. ``None`` (default) keeps the enclosing ``runtime`` block's setting (off
        outside any).
    :param solver_kwargs: settings passed to the solver (override a partial's).
    """
    from .solvers import runtime

    fn = solver_of(solver)
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    n_draws = int(num_samples)
    y = _checked_y(solver_name(fn), y, operator)
    B = y.shape[0]
    ids, sig = batch_items(B, ids, sigma_y)
    jobs = [(i, k) for i in range(B) for k in range(n_draws)]
    auto = batch_size == "auto"
    if not (batch_size is None or auto or whole_number(batch_size)):
        raise ValueError(f"batch_size must be a positive integer, 'auto' or None, got {batch_size!r}")
    chunk = len(jobs) if batch_size is None or auto else batch_size
    _refuse_what_cannot_fit(operator, y, n_draws, 1 if auto else min(chunk, len(jobs)))
    seeds = [[sample_seed(seed, ids[i], f"solver/{k}") for k in range(n_draws)] for i in range(B)]
    counting = prior if isinstance(prior, BridgePrior) else CountingPrior(prior)  # a bridge counts its own calls
    t0 = time.perf_counter()
    with runtime(autocast=autocast, compile=compile, checkpoint=checkpoint, channels_last=channels_last), \
            _progress_callback(progress, solver_name(fn), solver_kwargs.pop("callback", None)) as callback:
        def solve(y_part: Tensor, **draws) -> Tensor:  # draws: the part's sigma_y and generators
            return fn(y_part, operator, counting, **draws, callback=callback, **solver_kwargs)

        out, calls = _solve_in_batches(solve, y, sig, jobs, seeds, chunk, auto, counting)
    seconds = time.perf_counter() - t0
    samples = torch.stack([torch.stack([out[i, k] for k in range(n_draws)]) for i in range(B)])
    std = samples.std(dim=1) if n_draws > 1 else None
    return Reconstruction(samples, samples.mean(dim=1), std, int(max(calls)) if calls else 0, seconds, seeds)


def _checked_y(name: str, y: Tensor, operator) -> Tensor:
    """y checked at the API's boundary (a user's callable may not check it), float16/bfloat16
    converted to float64 with a warning that states its rounding error (not a silent conversion)."""
    check_measurement(name, y, operator)
    if y.dtype in (torch.float16, torch.bfloat16):
        step = 2.0 ** -(11 if y.dtype == torch.float16 else 8)
        log.warning("y is %s: converted to float64 (exact) before solving; its stored rounding errors, up to %.2g "
                    "at its largest value, are part of y: use a σ_y at least that large", str(y.dtype)[6:],
                    float(y.abs().max()) * step)
        y = y.to(torch.float64)
    return y


def _refuse_what_cannot_fit(operator, y: Tensor, n_draws: int, at_once: int) -> None:
    """Raise :class:`OutOfMemory` before any work when the draws, mean and std of every item and the
    solver's state for ``at_once`` draws cannot fit on y's device (operators that state ``img_size``)."""
    img = tuple(int(s) for s in getattr(operator, "img_size", ()) or ())
    if not img:
        return
    from .memory import refusal

    B = y.shape[0]
    msg = refusal(img, n_draws, at_once, device=y.device, items=B,
                  what=f"{B} item(s) of images {list(img)} with {n_draws} draw(s) each", can_tile=False)
    if msg:
        raise OutOfMemory(msg.replace("batch_size=1 (", "batch_size=1 or batch_size='auto' ("))


@contextlib.contextmanager
def _progress_callback(progress, desc: str, user_cb):
    """The solver callback: advances ``progress`` (a ``tqdm`` bar, ``True`` for a new one closed at
    the end, or None) once per step and calls the user's callback."""
    bar, own_bar = progress, False
    if progress is True:
        from tqdm.auto import tqdm

        bar, own_bar = tqdm(desc=desc, unit="step", leave=False), True

    def callback(step, x_t, x0_hat):
        if bar is not None:
            bar.update(1)
        if user_cb is not None:
            user_cb(step, x_t, x0_hat)

    try:
        yield callback
    finally:
        if own_bar:
            bar.close()


def _solve_in_batches(solve: Callable, y: Tensor, sig: Tensor, jobs: list[tuple[int, int]], seeds, chunk: int,
                      auto: bool, counting: CountingPrior) -> tuple[dict, list[int]]:
    """Solve the draws ``jobs`` (item i, draw k) ``chunk`` at a time, each with its own generator;
    with ``auto``, halve the chunk on out of memory. Returns ``{(i, k): x}`` and the network calls
    of each solver call."""
    out, calls, start = {}, [], 0
    while start < len(jobs):
        part = jobs[start : start + chunk]
        idx = torch.tensor([i for i, _ in part], device=y.device)
        # noise is drawn where the solver runs (no CPU draws copied to a GPU): the same seed gives
        # the same draws on one device type, bit for bit, but other draws on another
        gens = [torch.Generator(device=y.device).manual_seed(seeds[i][k]) for i, k in part]
        before = counting.calls
        try:
            x = solve(y[idx], sigma_y=sig[idx.cpu()], generator=gens)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            x = None  # drop the references into the failed batch before freeing
            _free_cache(y.device)
            if auto and len(part) > 1:
                chunk = max(1, len(part) // 2)
                log.info("out of memory with %d draws at once on %s; trying %d", len(part), y.device, chunk)
                continue
            raise OutOfMemory(_oom_message(len(part), y.device, auto, err)) from err
        calls.append(counting.calls - before)
        out.update(zip(part, x))
        start += len(part)
    return out, calls
