"""The per-sample figure for papers: error map, mask/kernel panel, colour bars, dpi, vector formats,
chosen bands of multiband images (invdiff.data.figures), and their settings checked up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_figure_panels_formats_and_bands(tmp_path):
    import operators as O
    from invdiff.data.figures import _img, operator_panel, sample_figure

    x = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # multiband: the chosen bands, never the mean
    np.testing.assert_array_equal(_img(x, False, [3]), x[3].numpy())
    np.testing.assert_array_equal(_img(x, False, [3, 2, 1]), np.moveaxis(x[[3, 2, 1]].numpy(), 0, -1))
    np.testing.assert_array_equal(_img(x, False), np.moveaxis(x[:3].numpy(), 0, -1))
    with pytest.raises(ValueError, match=r"figure bands \[4\]"):
        _img(x, False, [4])
    mri = O.SingleCoilMRI(O.RandomLinesMask(4, 0.1), (1, 16, 16), seed=0)
    name, mask = operator_panel(mri)
    assert name == "sampling mask" and mask.shape == (16, 16) and set(np.unique(mask)) <= {0.0, 1.0}
    name, k = operator_panel(O.Blur(O.GaussianKernel(5, 1.0), (1, 16, 16), "circular"))
    assert name == "kernel" and k.shape == (5, 5) and abs(k.sum() - 1) < 1e-6
    panels = [("ground truth", x[:1]), ("result", x[1:2]), ("error |x̂ − x|", (x[:1] - x[1:2]).abs()),
              ("sampling mask", mask)]
    small = sample_figure(tmp_path / "a.png", panels, dpi=50)
    big = sample_figure(tmp_path / "b.png", panels, dpi=200)
    from PIL import Image

    assert Image.open(big).size[0] == pytest.approx(4 * Image.open(small).size[0], rel=0.05)
    assert sample_figure(tmp_path / "c.pdf", panels).read_bytes()[:4] == b"%PDF"
    assert b"<svg" in sample_figure(tmp_path / "d.svg", panels).read_bytes()[:400]
    with pytest.raises(ValueError, match="figure format '.jpg'"):
        sample_figure(tmp_path / "e.jpg", panels)


@pytest.mark.parametrize("override, pattern", [
    ("figure_format=jpg", r"figure_format must be one of png, pdf, svg"),
    ("figure_dpi=5", r"figure_dpi must be a whole number from 10 to 1200"),
    ("figure_bands=[0,1]", r"figure_bands must be 1 or 3 band indices from 0 to 0"),
])
def test_bad_figure_settings_are_refused_before_any_work(tmp_path, override, pattern):
    from hydra import compose, initialize_config_module

    from invdiff.apps.app import run
    from invdiff.apps.common import AppError

    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=gaussian", "shape=[1,8,8]", "solver.steps=2", "num_samples=1",
                                           "progress=false", override])
    with pytest.raises(AppError, match=pattern):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()


def test_app_writes_a_vector_figure_with_the_error_panel(tmp_path):
    from hydra import compose, initialize_config_module

    from invdiff.apps.app import run

    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=gaussian", "shape=[1,16,16]", "solver=ddnm", "solver.steps=2",
                                           "num_samples=2", "progress=false", "operator=random_inpainting",
                                           "data=sample_image", "figure_format=svg"])
    run(cfg, tmp_path / "run")
    svg = (tmp_path / "run" / "figures" / "camera.svg").read_text()
    assert "error" in svg and "sampling mask" in svg and "posterior std" in svg
