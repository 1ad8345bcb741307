"""Several processes in one run directory (issue 31, items 6 and 7): the startup cleanup removes only
temporaries and claims of processes that are gone, every sample is computed once by one of the
processes started together, each of them writes a complete summary, and a sample whose name looks
like a temporary is an ordinary sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from invdiff.apps import app
from invdiff.data import claims, processes, results
from invdiff.data.claims import Claimed, claim_path, remove_stale_temporaries, try_claim
from invdiff.data.processes import host_tag
from invdiff.data.results import is_complete, write_sample

ROOT = Path(__file__).resolve().parents[1]
# 8 held-out phantoms at 16×16, the Gaussian prior, 2 ΠGDM steps, with figures (their temporaries too)
PHANTOMS = ["prior=gaussian", "shape=[1,16,16]", "solver.steps=2", "num_samples=1", "progress=false", "data.n=8"]
#: Runs app.run or bench.run in a subprocess, all of them started together (each announces itself
#: in READY and waits for the others), and appends "id pid" to COUNTS for each sample it computes.
DRIVER = r"""
import logging, os, sys, time
from pathlib import Path
kind, out, counts, ready, n = sys.argv[1:6]
logging.basicConfig(level=logging.INFO, format="%(process)d %(message)s")
from invdiff.apps import app, bench
real = app.solve_item
def counted(job, item, out_dir, **kw):
    result = real(job, item, out_dir, **kw)
    fd = os.open(counts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{item.sample.id} {os.getpid()}\n".encode())
    os.close(fd)
    return result
app.solve_item = counted
mod = app if kind == "app" else bench
cfg = mod.config(*sys.argv[6:])
Path(ready, str(os.getpid())).touch()
deadline = time.time() + 600
while len(list(Path(ready).iterdir())) < int(n) and time.time() < deadline:
    time.sleep(0.01)
t0 = time.time()
mod.run(cfg, out)
print(f"WALL {time.time() - t0:.3f}", flush=True)
"""


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def start_together(kind: str, out: Path, overrides: list[str], n: int, work: Path) -> list[subprocess.Popen]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "ready").mkdir()
    script = work / "driver.py"
    script.write_text(DRIVER)
    return [subprocess.Popen([sys.executable, str(script), kind, str(out), str(work / "counts"), str(work / "ready"),
                              str(n), *overrides], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(n)]


def finish(procs, timeout=900) -> list[str]:
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


def counts(work: Path) -> Counter:
    return Counter(line.split()[0] for line in (work / "counts").read_text().splitlines())


# --------------------------------------------------------------------------------------------
# the cleanup removes only what is provably abandoned
# --------------------------------------------------------------------------------------------
def test_cleanup_removes_only_abandoned_temporaries(tmp_path):
    tmp = tmp_path / results.TEMPORARIES
    tmp.mkdir()
    names = {"dead": f"{_dead_pid()}@{host_tag()}@abc@a.h5.tmp", "mine": f"{os.getpid()}@{host_tag()}@abc@b.h5.tmp",
             "other host": f"{os.getpid()}@elsewhere.example@abc@c.h5.tmp",
             "other host, old": f"1@elsewhere.example@abc@d.h5.tmp"}
    for name in names.values():
        (tmp / name).write_bytes(b"half")
    old = time.time() - claims.STALE_TEMPORARY_AGE - 60
    os.utime(tmp / names["other host, old"], (old, old))
    removed = {p.name for p in remove_stale_temporaries(tmp_path)}
    assert removed == {names["dead"], names["other host, old"]}
    assert sorted(p.name for p in tmp.iterdir()) == sorted([names["mine"], names["other host"]])


def test_no_result_name_is_taken_for_a_temporary(tmp_path):
    """Item 7: results named like temporaries (old or new style), however old, are never removed."""
    names = [".x.tmp.h5", ".x.tmp.png", ".x.h5.abcdefgh.tmp.h5", "1@host@abc@x.h5", ".invdiff-tmp.h5", "x.tmp.h5"]
    for name in names:
        (tmp_path / name).write_bytes(b"a result")
        os.utime(tmp_path / name, (0, 0))  # 1970
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_cleanup_between_a_temporarys_write_and_its_rename(tmp_path, monkeypatch):
    """The crash of issue 31 forced: another process's startup cleanup runs at the worst moment of
    every write (the temporary is complete, the rename not yet done). Nothing crashes, nothing is lost."""
    real, seen = os.replace, []

    def replace_after_cleanup(src, dst):
        remove_stale_temporaries(Path(dst).parent)
        seen.append(os.path.exists(src))
        real(src, dst)

    monkeypatch.setattr(results.os, "replace", replace_after_cleanup)
    result = app.run(app.config(*PHANTOMS[:-1], "data.n=3"), tmp_path)
    assert result["summary"]["psnr"]["n"] == 3 and len(seen) >= 3 + 3 + 2  # samples, figures, metrics
    assert all(seen)  # every temporary survived the cleanup
    assert all(is_complete(tmp_path / "samples" / f"{s['id']}.h5") for s in result["samples"])


def test_cleanup_looping_while_a_run_writes(tmp_path):
    stop, rounds, errors = threading.Event(), [0], []

    def cleanup():
        while not stop.is_set():
            try:
                for f in ("samples", "figures"):
                    remove_stale_temporaries(tmp_path / f)
            except Exception as err:  # noqa: BLE001  (reported by the assert below)
                errors.append(err)
            rounds[0] += 1

    t = threading.Thread(target=cleanup)
    t.start()
    try:
        result = app.run(app.config(*PHANTOMS[:-1], "data.n=4"), tmp_path)
    finally:
        stop.set()
        t.join()
    assert result["summary"]["psnr"]["n"] == 4 and rounds[0] > 0 and not errors, errors
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4


# --------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------
def _claim(folder: Path, sid: str, **info) -> Path:
    p = claim_path(folder, sid)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"time": time.time(), **info}))
    return p


def test_a_claim_of_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _claim(tmp_path, "live", host=processes.HOST, pid=sleeper.pid, start=processes.process_start(sleeper.pid))
        assert try_claim(tmp_path, "live", timeout=300) is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert try_claim(tmp_path, "live", timeout=300) is not None  # now dead: taken over
    _claim(tmp_path, "dead", host=processes.HOST, pid=_dead_pid(), start=None)
    c = try_claim(tmp_path, "dead", timeout=300)
    assert c is not None and json.loads(c.path.read_text())["pid"] == os.getpid()
    # the same pid reused by a process started at another time
    _claim(tmp_path, "reused", host=processes.HOST, pid=os.getppid(), start=-1)
    assert try_claim(tmp_path, "reused", timeout=300) is not None


def test_another_hosts_claim_is_stale_only_after_the_timeout(tmp_path):
    p = _claim(tmp_path, "x", host="elsewhere.example", pid=1, start=None)
    assert try_claim(tmp_path, "x", timeout=300) is None
    os.utime(p, (time.time() - 301, time.time() - 301))
    assert try_claim(tmp_path, "x", timeout=300) is not None
    empty = claim_path(tmp_path, "being_written")
    empty.write_text("")  # created, not yet filled: judged by its age
    assert try_claim(tmp_path, "being_written", timeout=300) is None
    os.utime(empty, (time.time() - 301, time.time() - 301))
    assert try_claim(tmp_path, "being_written", timeout=300) is not None


def test_claims_of_this_process_left_behind_are_taken_over_and_held_ones_are_not(tmp_path, monkeypatch):
    held = try_claim(tmp_path, "a", timeout=300)
    assert held is not None and try_claim(tmp_path, "a", timeout=300) is None  # (another thread of this process)
    monkeypatch.chdir(tmp_path)
    remove_stale_temporaries(".")  # (a relative path names the same claim)
    assert held.path.exists()
    _claim(tmp_path, "b", host=processes.HOST, pid=os.getpid(), start=processes.process_start(os.getpid()))  # not held
    assert try_claim(tmp_path, "b", timeout=300) is not None
    held.release()
    assert not held.path.exists()


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path):
    work = Claimed(["a"], tmp_path, resume=True, timeout=0.5, poll=0.01)
    for sid in work:
        p = claim_path(tmp_path, sid)
        first = p.stat().st_mtime_ns
        deadline = time.time() + 30
        while p.stat().st_mtime_ns == first and time.time() < deadline:
            time.sleep(0.05)
        assert p.stat().st_mtime_ns > first
        write_sample(tmp_path / f"{sid}.h5", {"x_hat": np.zeros(2), "metrics": "{}"})
    assert work.computed == ["a"] and not (tmp_path / claims.CLAIMS).exists()


def test_a_process_waits_for_samples_others_compute_and_resume_false_recomputes_older_files(tmp_path):
    write_sample(tmp_path / "old.h5", {"x_hat": np.zeros(2), "metrics": "{}"})
    os.utime(tmp_path / "old.h5", (time.time() - 60, time.time() - 60))
    other = try_claim(tmp_path, "busy", timeout=300)  # "another process" computing busy

    def finish_busy():
        time.sleep(0.5)
        write_sample(tmp_path / "busy.h5", {"x_hat": np.zeros(2), "metrics": "{}"})
        other.release()

    t = threading.Thread(target=finish_busy)
    t.start()
    work = Claimed(["old", "busy", "free"], tmp_path, resume=False, poll=0.05)
    for sid in work:
        write_sample(tmp_path / f"{sid}.h5", {"x_hat": np.zeros(2), "metrics": "{}"})
    t.join()
    assert work.computed == ["old", "free"] and work.by_others == ["busy"]


def test_a_stale_claim_of_a_killed_run_is_taken_over_by_the_app(tmp_path):
    _claim(tmp_path / "samples", "shepp_logan", host=processes.HOST, pid=_dead_pid(), start=None)
    result = app.run(app.config(*PHANTOMS[:-1], "data.n=2", "figures=false"), tmp_path)
    assert result["summary"]["psnr"]["n"] == 2 and is_complete(tmp_path / "samples" / "shepp_logan.h5")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["phantom_2147483648.h5", "shepp_logan.h5"]


# --------------------------------------------------------------------------------------------
# processes started together
# --------------------------------------------------------------------------------------------
def test_two_app_processes_started_together_compute_each_sample_once(tmp_path):
    out = tmp_path / "run"
    finish(start_together("app", out, PHANTOMS, 2, tmp_path / "work"))
    n = counts(tmp_path / "work")
    ids = sorted(p.stem for p in (out / "samples").glob("*.h5"))
    assert len(ids) == 8 and sorted(n) == ids and set(n.values()) == {1}, n  # each once
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["summary"]["psnr"]["n"] == 8 and len(list((out / "figures").glob("*.png"))) == 8
    assert not any(p.name.startswith(".invdiff") for p in out.rglob("*"))  # no temporaries or claims left


def test_two_bench_processes_started_together_compute_each_image_once(tmp_path):
    out = tmp_path / "run"
    args = ["benchmark=smoke", "solver.steps=2", "num_samples=1", "progress=false"]
    finish(start_together("bench", out, args, 2, tmp_path / "work"))
    n = counts(tmp_path / "work")
    assert len(n) == 4 and set(n.values()) == {1}, n
    assert json.loads((out / "summary.json").read_text())["images"] == 4
    assert not any(p.name.startswith(".invdiff") for p in out.rglob("*"))


# --------------------------------------------------------------------------------------------
# item 7: a sample named like a temporary
# --------------------------------------------------------------------------------------------
def test_a_sample_named_like_a_temporary_survives_reruns(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for name in (".x.tmp.png", "y.png"):
        Image.fromarray((np.arange(64).reshape(8, 8) * 3).astype(np.uint8)).save(data / name)
    cfg = app.config("prior=gaussian", "shape=[1,8,8]", "solver.steps=2", "num_samples=1", "progress=false",
                     "data=files", f"data.path={data}")
    out = tmp_path / "run"
    app.run(cfg, out)
    files = [out / "samples" / ".x.tmp.h5", out / "figures" / ".x.tmp.png"]
    assert all(f.exists() for f in files)
    for f in files:
        os.utime(f, (time.time() - 2 * claims.STALE_TEMPORARY_AGE,) * 2)  # however old
    before = [f.stat().st_mtime_ns for f in files]
    result = app.run(cfg, out)
    assert [f.stat().st_mtime_ns for f in files] == before  # kept, not recomputed
    assert sorted(s["id"] for s in result["samples"]) == [".x.tmp", "y"]
