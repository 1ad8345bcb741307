"""Progress where there is no terminal: log lines every N % with elapsed time and ETA.

tqdm bars are shown on a terminal only (``disable=None``); a batch job's output (SLURM's
``slurm-*.out``, a redirected log, ``cli.log``) would otherwise show nothing between the first and
last line of a long run. :class:`ProgressLog` has the part of tqdm's interface the app uses
(``update``, ``reset``, ``set_postfix``, ``close``) and writes one ``INFO`` line each time the
work crosses another ``every`` percent of its total::

    solver steps of phantom_42: 30 % (300/1000), elapsed 2m41s, ETA 6m16s
"""

from __future__ import annotations

import logging
import math
import time


def clock(seconds: float) -> str:
    """``1h02m03s`` / ``2m41s`` / ``7.5s``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ProgressLog:
    """A tqdm stand-in that logs every ``every`` percent of ``total`` (``every`` in (0, 100]).

    :param log: the logger (``invdiff``'s, so the lines reach the console handler and ``cli.log``).
    :param desc: what is counted.
    :param total: the amount of work (``None``: nothing is logged until :meth:`reset` gives one).
    """

    def __init__(self, log: logging.Logger, desc: str, total: int | None = None, every: float = 10.0):
        if not 0 < float(every) <= 100:
            raise ValueError(f"progress_log must be a percentage in (0, 100] (or 0 to switch it off), got {every}")
        self.log, self.desc, self.every = log, desc, float(every)
        self.postfix: dict = {}
        self.reset(total)

    def reset(self, total: int | None = None, desc: str | None = None) -> None:
        self.total = None if total is None else int(total)
        self.desc = desc if desc is not None else self.desc
        self.n, self.t0, self.next = 0, time.perf_counter(), self.every

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        if not self.total:
            return
        pct = 100.0 * self.n / self.total
        if pct + 1e-9 < self.next or self.n > self.total:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed * (self.total - self.n) / self.n if self.n else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        self.log.info("%s: %d %% (%d/%d), elapsed %s, ETA %s%s", self.desc, int(min(pct, 100)), self.n, self.total,
                      clock(elapsed), clock(max(eta, 0.0)), extra)
        self.next = (math.floor(pct / self.every) + 1) * self.every

    def set_postfix(self, **kw) -> None:
        self.postfix = kw

    def close(self) -> None:
        pass
