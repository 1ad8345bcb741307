"""Data-parallel runs: ``torchrun --nproc_per_node=N invdiff ...`` (and multi-node ``torchrun``).

Every process (rank) builds the same job from the same config, takes its share of the sample ids
(``ids[rank::world_size]``, positions in the data source's fixed order), solves them and writes
``samples/{id}.h5`` into the one run directory, which therefore must be on a file system every
rank sees (any cluster's shared disk; one node needs nothing). Rank 0 then rebuilds the metrics
from the sample files. Seeds derive from (seed, sample id, draw), never from the rank or the
position in a batch, so the result equals a single-process run's (DESIGN.md, "Seeds"):

    torchrun --standalone --nproc_per_node=4 -m invdiff.apps.cli solver=dps data.n=100
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29500 \\
        -m invdiff.apps.bench benchmark=phantom64_mri8x solver=pigdm results_dir=/shared/bench

The processes only coordinate through a ``gloo`` group (a barrier and a few small broadcasts:
never tensors), so the same code runs on CPUs and GPUs; on GPUs rank r uses ``cuda:LOCAL_RANK``.
Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op.
"""

from __future__ import annotations

import atexit
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class Context:
    """This process's place in a ``torchrun`` job (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={v!r} is not an integer (set by torchrun)") from err


def context() -> Context:
    """The rank, world size and local rank that ``torchrun`` put in the environment."""
    ctx = Context(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if not (0 <= ctx.rank < ctx.world_size):
        raise ValueError(f"RANK={ctx.rank} is outside WORLD_SIZE={ctx.world_size}")
    return ctx


def init() -> Context:
    """Join the process group (``gloo``, from torchrun's ``MASTER_ADDR``/``MASTER_PORT``) when
    running under ``torchrun``; returns the context. Idempotent; a no-op in a single process."""
    ctx = context()
    if ctx.active:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
            atexit.register(_leave)
    return ctx


def _leave() -> None:
    """Destroy the process group before the interpreter exits: left to interpreter teardown, gloo's
    threads can be destroyed while running, and the process aborts after its work is done
    ("terminate called without an active exception", seen in tests/test_distributed.py)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if init().active:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable Python object; no-op in a single process)."""
    if not init().active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence, ctx: Context | None = None) -> list:
    """This rank's share: items ``rank, rank + world, ...`` of the fixed order every rank sees."""
    ctx = ctx or context()
    return list(items)[ctx.rank::ctx.world_size]


def pending(items: Sequence, folder: str | Path, *, resume: bool, id_of=lambda it: it, folders=()) -> list:
    """The items this process should solve in a run writing ``folder/{id}.h5``.

    Rank 0 first deletes the temporaries and claims that dead processes left in ``folder`` (and in
    ``folders``; only provably abandoned ones, so another job's file in progress is never touched:
    :func:`invdiff.data.claims.remove_stale_temporaries`), and every rank waits for that. Then the
    items are sharded by position and, with ``resume``, those whose file is complete are dropped.
    Sharding before filtering keeps the assignment independent of what is already done or of
    which rank looks first. Iterate over :func:`claimed` of the result to share the work with other
    jobs in the same directory."""
    from .data.claims import remove_stale_temporaries
    from .data.results import is_complete

    ctx = init()
    folder = Path(folder)
    if ctx.main:
        for f in (folder, *folders):
            remove_stale_temporaries(f)
    barrier()
    mine = shard(items, ctx)
    return [it for it in mine if not (resume and is_complete(folder / f"{id_of(it)}.h5"))]


def claimed(items: Sequence, folder: str | Path, *, resume: bool, id_of=lambda it: it):
    """This process's items one at a time, each claimed so that no other process in the directory
    computes it meanwhile; items other jobs hold are skipped and waited for at the end, so the
    iteration ends when all are finished (:class:`invdiff.data.claims.Claimed`; ``close()`` it
    after the loop). Under torchrun each rank claims within its own shard: the ranks still
    partition the ids, and the claims only coordinate separate jobs sharing the directory."""
    from .data.claims import Claimed

    return Claimed(items, folder, resume=resume, id_of=id_of)


def finish(summarize, *args, **kwargs):
    """After every rank has written its samples: rank 0 runs ``summarize(*args, **kwargs)``,
    every rank returns its result."""
    ctx = init()
    barrier()
    result = summarize(*args, **kwargs) if ctx.main else None
    return broadcast(result) if ctx.active else result


def device(dev):
    """``cuda`` (no index) becomes ``cuda:LOCAL_RANK`` under torchrun, else the current CUDA device
    (``cuda:0`` by default), and is made current."""
    import torch

    ctx = context()
    if dev.type == "cuda" and dev.index is None:  # an index always: set_device and comparisons need one
        index = ctx.local_rank % max(torch.cuda.device_count(), 1) if ctx.active else torch.cuda.current_device()
        dev = torch.device("cuda", index)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def hydra_overrides(argv: Sequence[str], defaults: dict[str, str]) -> list[str]:
    """Extra Hydra overrides that keep the ranks of a torchrun job in one run directory.

    Hydra names run directories after the time each process starts, which differs between ranks;
    for each ``key: pattern`` of ``defaults`` the user did not set, rank 0 fills the pattern's
    ``{time}`` with its start time (``%Y-%m-%d/%H-%M-%S``) and every rank gets the same value.
    Ranks > 0 also log to stdout only and do not rewrite ``.hydra/``. Empty outside torchrun."""
    ctx = context()
    if not ctx.active:
        return []
    init()
    given = {a.split("=", 1)[0].lstrip("+") for a in argv if "=" in a}
    stamp = broadcast(time.strftime("%Y-%m-%d/%H-%M-%S"))
    extra = [f"{k}={v.format(time=stamp)}" for k, v in defaults.items() if k not in given]
    if not ctx.main:
        extra.append("hydra.output_subdir=null")
        if "hydra/job_logging" not in given:
            extra.append("hydra/job_logging=stdout")
    return extra
