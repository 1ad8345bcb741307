"""Progress without a terminal (invdiff.apps.progress): log lines every N % with elapsed and ETA."""

from __future__ import annotations

import logging
import re

import pytest


def test_progress_log_lines_every_n_percent(caplog):
    from invdiff.apps.progress import ProgressLog, clock

    log = logging.getLogger("invdiff.test_progress")
    p = ProgressLog(log, "steps", 20, every=25)
    with caplog.at_level(logging.INFO, logger="invdiff.test_progress"):
        for _ in range(20):
            p.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert [re.match(r"steps: (\d+) %", m).group(1) for m in lines] == ["25", "50", "75", "100"]
    assert all("elapsed" in m and "ETA" in m for m in lines) and lines[-1].endswith("ETA 0.0s")
    assert clock(3725) == "1h02m05s" and clock(161) == "2m41s"
    with pytest.raises(ValueError, match=r"progress_log must be a percentage in \(0, 100\]"):
        ProgressLog(log, "x", 10, every=0)


def test_app_logs_progress_when_there_is_no_terminal(tmp_path, caplog):
    from hydra import compose, initialize_config_module

    from invdiff.apps.app import run

    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=gaussian", "solver=dps", "solver.steps=20",
                                           "num_samples=2", "batch_size=1", "progress=true", "progress_log=25", "data=phantoms",
                                           "data.n=2", "shape=[1,16,16]"])
    with caplog.at_level(logging.INFO, logger="invdiff"):
        run(cfg, tmp_path / "run")  # pytest's stderr is not a terminal
    msgs = [r.getMessage() for r in caplog.records]
    steps = [m for m in msgs if m.startswith("solver steps of shepp_logan:")]
    assert [re.match(r".*: (\d+) % \((\d+)/40\)", m).groups() for m in steps] == [
        ("25", "10"), ("50", "20"), ("75", "30"), ("100", "40")]
    assert any(re.match(r"samples: 100 % \(2/2\), elapsed .*, ETA", m) for m in msgs)


def test_ssim_windows_differ_and_a_bad_window_is_refused_up_front(tmp_path):
    import torch
    from hydra import compose, initialize_config_module

    from invdiff import metrics as M
    from invdiff.apps.app import run
    from invdiff.apps.common import AppError

    from invdiff.data.images import sample_image

    x = sample_image("camera", (1, 64, 64))
    x_hat = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # a 3×3 blur
    u, gs = M.ssim(x_hat, x, 1.0, "uniform7")[0], M.ssim(x_hat, x, 1.0, "gaussian11")[0]
    assert u == pytest.approx(0.9098, abs=2e-3) and gs == pytest.approx(0.9009, abs=2e-3)  # measured, 2026-12-06
    assert M.ssim(x, x, 1.0, "gaussian11")[0] == pytest.approx(1.0)
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=gaussian", "shape=[1,8,8]", "solver.steps=2", "num_samples=1",
                                           "progress=false", "ssim_window=gauss11"])
    with pytest.raises(AppError, match=r"ssim_window must be one of uniform7, gaussian11"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()


def test_intervals_never_leave_a_metrics_range():
    from invdiff.metrics import interval95, metric_bounds

    s = interval95([0.99, 0.5, 0.98], metric_bounds("ssim"))
    assert s["hi"] == 1.0 and s["lo"] < s["mean"]
    c = interval95([0.02, 0.9], metric_bounds("coverage_90"))
    assert c["lo"] == 0.0 and c["hi"] == 1.0
    p = interval95([20.0, 40.0], metric_bounds("psnr"))  # unbounded: the plain Student-t interval
    assert p["lo"] < 0 and p["hi"] > 60
