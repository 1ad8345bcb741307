"""The memory a run needs, estimated from its sizes before anything is allocated.

:func:`invdiff.apps.jobs.setup` checks the estimate for ``shape`` before it builds the operator (whose
masks and factors are image-sized), :func:`invdiff.reconstruct` and
:func:`invdiff.tiling.reconstruct_tiled` before they solve, so that ``shape=[1,100000,100000]``
is refused at once with the size and the fix instead of an allocator's message after minutes of
work.

The estimate is a *lower bound*: only the float64 arrays every run surely holds (DESIGN.md: solver
state in float64) — the posterior mean and std, the kept draws, and the solver's state (the
current iterate and its denoised estimate) for the draws solved at once. The network's
activations, the operator's own factors, the ground truth, the measurement and the library's
temporaries come on top. A run is refused only when this lower bound exceeds the memory
available, so a refusal is never a false alarm; a run that passes can still run out of memory
(``batch_size=auto`` then halves the batch).
"""

from __future__ import annotations

import math
import os

import torch

BYTES = 8  # float64


def human(n: float) -> str:
    """Bytes as a short decimal size: '80 GB', '1.4 TB', '512 MB'."""
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            v = n / k
            return f"{v:.3g} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    return f"{int(n)} bytes"


def available_bytes(device: torch.device | str | None = None) -> tuple[int | None, str]:
    """(bytes, what was measured): free memory of a CUDA device (free + cached by torch), or on
    the CPU the kernel's ``MemAvailable`` (else the physical memory); ``None`` when unknown."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + cached), f"free on {dev}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "physical RAM"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def run_parts(shape, num_samples: int, batch: int, tile_shape=None, items: int = 1) -> dict[str, int]:
    """Bytes of the arrays a run of ``items`` images ``shape`` ([C, H, W]) surely holds (module
    docstring): ``num_samples`` draws each, ``batch`` draws solved at once, on tiles of
    ``tile_shape`` if tiled."""
    one = math.prod(int(s) for s in shape)
    P = items * one
    parts = {"posterior mean and std" if num_samples > 1 else "posterior mean": (1 + (num_samples > 1)) * P * BYTES,
             f"{num_samples} posterior draw(s)": num_samples * P * BYTES}
    if tile_shape is None:
        parts[f"the solver's state for {batch} draw(s) at once"] = 2 * batch * one * BYTES
    else:  # every tile's draws are kept until they are blended, then the blended draws
        parts[f"{num_samples} draw(s) of every tile before blending"] = num_samples * P * BYTES
        if tile_shape:  # (empty: the tile size is not known yet; counted as nothing)
            parts[f"the solver's state for {batch} tile draw(s) at once"] = 2 * batch * math.prod(tile_shape) * BYTES
    return parts


def refusal(shape, num_samples: int, batch: int, *, tile_shape=None, device=None, what: str = "",
            can_tile: bool = True, available: int | None = None, items: int = 1) -> str | None:
    """``None`` when the lower bound of :func:`run_parts` fits the memory available, otherwise one
    paragraph: what is needed, what is available, and which fix helps (a smaller batch, fewer
    draws, tiles, a smaller shape — only those that would fit)."""
    if available is None:
        available, kind = available_bytes(device)
    else:
        kind = "available"
    if available is None:
        return None
    parts = run_parts(shape, num_samples, batch, tile_shape, items)
    need = sum(parts.values())
    if need <= available:
        return None
    C, *rest = (int(s) for s in shape)
    P = math.prod(rest) * C * items
    fixes = []
    if batch > 1 and sum(run_parts(shape, num_samples, 1, tile_shape, items).values()) <= available:
        fixes.append("batch_size=1 (the solver then holds one draw at a time; the draws do not change)")
    elif sum(run_parts(shape, 1, 1, tile_shape, items).values()) <= available:
        fixes.append("fewer draws and a smaller batch (num_samples=1 batch_size=1)")
    if tile_shape is None and can_tile and sum(run_parts(shape, 1, 1, (C, 64, 64), items).values()) <= available:
        fixes.append("prior-sized tiles (tile_overlap=16 with a prior smaller than the image; the solver then "
                     "holds only tiles)")
    per_pixel = need / P
    side = int(math.sqrt(available / per_pixel / C / items)) if available > 0 else 0
    fixes.append(f"a smaller shape (with these settings at most about {side}×{side} pixels per channel fit) or the "
                 "image cut into pieces solved one run each")
    detail = ", ".join(f"{k} {human(v)}" for k, v in parts.items())
    return (f"{what or f'a run on images of shape {list(shape)}'} ({P:,} values) needs at least {human(need)} of memory before "
            f"the network's own ({detail}; float64), but {human(available)} is {kind}. Use "
            + "; or ".join(fixes) + ".")
