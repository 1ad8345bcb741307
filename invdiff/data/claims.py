"""Several processes in one run directory: who owns a temporary, and who computes which sample.

Any number of processes may work in one run directory at once (several SLURM jobs resuming it, two
terminals, two ``torchrun`` jobs): each sample is computed by one of them, and each waits at the
end until every sample of its share is finished, so each writes a complete summary.

**Claims.** Before computing sample ``id`` a process creates ``samples/.invdiff-claims/{id}.claim``
with ``os.open(O_CREAT | O_EXCL)`` (atomic, also on NFS v3+ and Lustre) holding its host, pid,
process start time and the time; a process that finds the file skips the sample for now. The
claim is deleted after the sample file is in place. While it computes, the owner touches its claim
every ``timeout / 10`` seconds (a heartbeat), so a claim is *stale* only when its owner is provably
gone: its pid is not alive on this host (or was reused by a process started at another time), or
the claim has not been touched for ``timeout`` seconds (``INVDIFF_CLAIM_TIMEOUT``, default 300 s:
the only test possible for another host's process). A stale claim is taken over: renamed to a
unique name (only one process can), checked to be the very file judged stale, deleted, and
claimed afresh. After its pass over the samples a process waits for those others are computing
(polling about once a second) and takes over those whose owner died, so every process returns only
when all of its samples are finished (a finished sample: :func:`invdiff.data.results.is_complete`).

**Temporaries** (:func:`invdiff.data.results.atomic_path`) live in a ``.invdiff-tmp/`` folder
beside their target and are named ``{pid}@{host}@{random}@{name}``: no input can produce such a
name (results are ``{id}.h5`` / ``{id}.png`` files, never folders), and the owner is in the name.
:func:`remove_stale_temporaries` deletes only those of dead processes on this host, and any older
than :data:`STALE_TEMPORARY_AGE`, together with the stale claims.

Who a process is and whether it is alive: :mod:`invdiff.data.processes` (which the temporaries'
names use too). Imports: this module uses :mod:`~invdiff.data.results` and
:mod:`~invdiff.data.processes`; neither imports it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .processes import HOST, START, host_tag, pid_alive
from .results import TEMPORARIES, is_complete

log = logging.getLogger("invdiff")

#: Folder (inside the results folder) holding the claims.
CLAIMS = ".invdiff-claims"
#: Seconds without a heartbeat after which another host's claim counts as abandoned.
DEFAULT_TIMEOUT = 300.0
#: A temporary untouched this long (seconds) is abandoned whoever wrote it: writing one file takes seconds.
STALE_TEMPORARY_AGE = 6 * 3600.0

_HELD: set[str] = set()  # claim paths held by this process (a claim of ours not in here is a leftover)
_HELD_LOCK = threading.Lock()


def claim_timeout() -> float:
    """``INVDIFF_CLAIM_TIMEOUT`` (seconds, > 0), else :data:`DEFAULT_TIMEOUT`."""
    v = os.environ.get("INVDIFF_CLAIM_TIMEOUT", "")
    if not v:
        return DEFAULT_TIMEOUT
    try:
        t = float(v)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise ValueError(f"INVDIFF_CLAIM_TIMEOUT={v!r}: expected a number of seconds > 0")
    return t


def whoami() -> str:
    """``host:pid`` of this process (saved in each sample file as ``process``)."""
    return f"{HOST}:{os.getpid()}"


def temporary_owner(name: str) -> tuple[int, str] | None:
    """``(pid, host tag)`` from a temporary's name ``{pid}@{host}@{random}@{name}``, or ``None``."""
    parts = name.split("@", 3)
    if len(parts) < 4 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1]


def temporary_abandoned(path: Path, max_age: float = STALE_TEMPORARY_AGE) -> bool:
    """A temporary whose writer is provably gone: a dead pid on this host, or untouched for ``max_age``."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > max_age:
        return True
    owner = temporary_owner(path.name)
    return owner is not None and owner[1] == host_tag() and not pid_alive(owner[0])


# --------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------
def claim_path(folder: str | Path, sid: str) -> Path:
    """Where sample ``sid``'s claim lives (an absolute path)."""
    return Path(os.path.abspath(folder)) / CLAIMS / f"{sid}.claim"


def _read(path: Path) -> tuple[dict | None, os.stat_result | None]:
    try:
        st = path.stat()
        text = path.read_text()
    except OSError:  # gone (released or taken over meanwhile)
        return None, None
    try:
        info = json.loads(text)
    except ValueError:  # being written (created, not yet filled): judged by its age
        info = None
    return (info if isinstance(info, dict) else None), st


def _why_stale(info: dict | None, st: os.stat_result, timeout: float, path: Path) -> str | None:
    """Why the claim is abandoned, or ``None`` when its owner may still be working."""
    age = time.time() - st.st_mtime
    if info is not None and info.get("host") == HOST:
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            pid = -1
        if pid == os.getpid() and info.get("start") == START:
            with _HELD_LOCK:
                return None if os.path.abspath(path) in _HELD else "left by this process"
        if not pid_alive(pid, info.get("start")):
            return f"process {pid} on this host is gone"
    if age > timeout:
        who = f"{info.get('host')}:{info.get('pid')}" if info else "its owner"
        return f"{who} has not touched it for {age:.0f} s (timeout {timeout:g} s)"
    return None


def _owner(info: dict | None) -> str:
    return f"{info.get('host')}:{info.get('pid')}" if info else "another process"


class Claim:
    """A claim this process holds (:func:`try_claim`)."""

    def __init__(self, path: Path, st: os.stat_result):
        self.path, self._id = Path(os.path.abspath(path)), (st.st_dev, st.st_ino)
        with _HELD_LOCK:
            _HELD.add(str(self.path))

    def _ours(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    def touch(self) -> None:
        """The heartbeat: the claim's modification time becomes now (if it is still ours)."""
        if self._ours():
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Delete the claim (unless another process took it over meanwhile)."""
        with _HELD_LOCK:
            _HELD.discard(str(self.path))
        if self._ours():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        _rmdir(self.path.parent)


def _rmdir(folder: Path) -> None:
    """Remove ``folder`` if empty (another process may be about to use it: they retry creating it)."""
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _break(path: Path, timeout: float) -> bool:
    """Remove the claim at ``path`` if it is stale; whether it was (and is now gone)."""
    info, st = _read(path)
    if st is None:
        return True  # released meanwhile
    why = _why_stale(info, st, timeout, path)
    if why is None:
        return False
    grave = path.parent / f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.stale"
    try:
        os.rename(path, grave)  # atomic: of several processes judging it stale, one moves it
    except FileNotFoundError:
        return True
    gst = grave.stat()
    if (gst.st_dev, gst.st_ino) != (st.st_dev, st.st_ino):  # a fresh claim replaced the stale one: give it back
        try:
            os.link(grave, path)
        except OSError:
            pass
        grave.unlink(missing_ok=True)
        return False
    grave.unlink(missing_ok=True)
    log.info("taking over the claim of sample %s: %s", path.name[: -len(".claim")], why)
    return True


def try_claim(folder: str | Path, sid: str, timeout: float | None = None) -> Claim | None:
    """Claim sample ``sid`` of ``folder`` for this process (taking over a stale claim), or ``None``
    when another live process holds it."""
    path = claim_path(folder, sid)
    key = os.path.abspath(path)
    timeout = claim_timeout() if timeout is None else timeout
    for _ in range(20):
        # held from the moment it exists: a cleanup in another thread of this process would otherwise
        # judge the new (still empty, or not yet registered) claim "left by this process" and delete it
        with _HELD_LOCK:
            already = key in _HELD  # (a claim this process holds now: left as it is)
            _HELD.add(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except (FileNotFoundError, FileExistsError) as err:
            if not already:
                with _HELD_LOCK:
                    _HELD.discard(key)
            if isinstance(err, FileNotFoundError):  # (the folder is removed when empty)
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not _break(path, timeout):
                return None
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"host": HOST, "pid": os.getpid(), "start": START, "time": time.time()}))
        st = os.stat(path)
        return Claim(path, st)
    return None


def remove_stale_claims(folder: str | Path, timeout: float | None = None) -> None:
    """Delete the abandoned claims in ``folder`` (e.g. of a process killed after writing its sample)."""
    d = Path(folder) / CLAIMS
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".claim"))
    except (FileNotFoundError, NotADirectoryError):
        return
    timeout = claim_timeout() if timeout is None else timeout
    for n in names:
        _break(d / n, timeout)
    _rmdir(d)


def remove_stale_temporaries(folder: str | Path, max_age: float | None = None) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer is provably gone — a dead process on this
    host, or untouched for ``max_age`` seconds (:data:`STALE_TEMPORARY_AGE`) — so that another
    process's file in progress is never touched; returns what was removed. Also
    removes temporaries of older versions (``.{name}.*.tmp`` beside their target; no result file
    ends in ``.tmp``) once that old, and the claims of dead processes."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    max_age = STALE_TEMPORARY_AGE if max_age is None else max_age
    tmp = folder / TEMPORARIES
    try:  # (another process removes the folder when it is empty)
        stale = [tmp / n for n in sorted(os.listdir(tmp)) if temporary_abandoned(tmp / n, max_age)]
    except (FileNotFoundError, NotADirectoryError):
        stale = []
    stale += [p for p in sorted(folder.glob(".*.tmp")) if _age(p) > max_age]  # (written before .invdiff-tmp/)
    for p in stale:
        p.unlink(missing_ok=True)
    _rmdir(tmp)
    remove_stale_claims(folder)
    return stale


def _age(path: Path) -> float:
    """Seconds since ``path`` (a file) was modified; 0 when it is not a file (or gone)."""
    try:
        st = path.stat()
    except OSError:
        return 0.0
    return time.time() - st.st_mtime if path.is_file() else 0.0


class Claimed:
    """Iterate over the items this process should compute, one claimed at a time.

    ``items``: this process's share (all items outside ``torchrun``, its rank's shard inside);
    ``folder``: where ``{id_of(item)}.h5`` is written. An item is yielded once claimed and while
    still unfinished; its claim is released when the next item is asked for (or at
    :meth:`close`): compute it and write its file in between. Items others hold are revisited;
    the iteration ends when every item's file is finished. With ``resume=False`` a file finished
    before this process started counts as unfinished (it is recomputed)."""

    def __init__(self, items: Iterable, folder: str | Path, *, resume: bool, id_of: Callable = lambda it: it,
                 timeout: float | None = None, poll: float = 1.0):
        self.items, self.folder, self.resume, self.id_of = list(items), Path(folder), bool(resume), id_of
        self.timeout = claim_timeout() if timeout is None else float(timeout)
        self.poll, self.since = float(poll), time.time()
        self.computed: list[str] = []  # ids computed here
        self.by_others: list[str] = []  # ids found finished by another process
        self._held: Claim | None = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        return len(self.items)

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.timeout / 10, 0.05)):
            held = self._held
            if held is not None:
                held.touch()

    def done(self, item) -> bool:
        path = self.folder / f"{self.id_of(item)}.h5"
        if not is_complete(path):
            return False
        if self.resume:
            return True
        try:
            return path.stat().st_mtime >= self.since
        except FileNotFoundError:
            return False

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()

    def __iter__(self) -> Iterator:
        beat = threading.Thread(target=self._heartbeat, daemon=True, name="invdiff-claims")
        beat.start()
        try:
            yield from self._claimed()
        finally:
            self.close()
        if self.by_others:
            log.info("%d sample(s) of this run were computed by other processes in this directory",
                     len(self.by_others))

    def _claimed(self) -> Iterator:
        remaining, told = list(self.items), False
        while remaining:
            busy = []
            for it in remaining:
                sid = str(self.id_of(it))
                if self.done(it):
                    self.by_others.append(sid)
                    continue
                claim = try_claim(self.folder, sid, self.timeout)
                if claim is None:
                    busy.append(it)
                    continue
                if self.done(it):  # finished between the check and the claim
                    claim.release()
                    self.by_others.append(sid)
                    continue
                self._held = claim
                yield it
                self._release()
                self.computed.append(sid)
            remaining = [it for it in busy if not self.done(it)]
            self.by_others += [str(self.id_of(it)) for it in busy if not any(it is r for r in remaining)]
            if remaining and not told:
                owners = sorted({_owner(_read(claim_path(self.folder, self.id_of(it)))[0]) for it in remaining})
                log.info("waiting for %d sample(s) that other processes in this directory are computing (%s)",
                         len(remaining), ", ".join(owners[:4]) + (" …" if len(owners) > 4 else ""))
                told = True
            if remaining:
                time.sleep(self.poll)

    def close(self) -> None:
        """Release the claim held (if any) and stop the heartbeat."""
        self._release()
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
