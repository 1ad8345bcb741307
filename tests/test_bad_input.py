"""Bad input is refused up front: one paragraph that says what is wrong, raised while the job is
checked (``invdiff.apps.app.setup``), so a run writes nothing — no sample file, figure or metrics.

tests/test_app.py (``test_bad_input_is_refused_before_anything_is_written``) already covers: an
operator the solver cannot use, a prior of another shape, ground truth out of the prior's range,
NaN in a measurement, a measurement of the wrong shape, a missing data path or file, measured data
without a noise level, σ_y=auto with Poisson noise, ``solver.steps=0`` (ΠGDM) and a missing
checkpoint; ``test_bad_overrides_are_explained_in_one_paragraph`` unknown operator/solver/data
names and unknown solver/top-level keys. This file covers the rest of the issue's list, and issue
31's: values that say what is allowed (``data.n=0``, shapes, seeds, switches), sample images that
scikit-image would download, float16 y (accepted with a stated conversion), shapes that cannot fit
in memory (refused from their size before anything is allocated), output directories that cannot
be created, and override values that would move a benchmark out of ``results_dir``.

Counting for the README's "Reliability" section: each parametrized case or separate refused call
with another input is one bad input (the 12 API inputs of
``test_reconstruct_refuses_bad_input_before_any_work`` count once each, not once per solver; the
memory tests that vary only the memory available count once).
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

import operators as O
from invdiff.api import reconstruct
from invdiff.apps.app import config, run, setup
from invdiff.apps.common import AppError
from invdiff.apps.cli import explain_overrides
from invdiff.data.sources import FastMRI, ImageFiles, Measurements
from invdiff.priors.analytic import smooth_gaussian
from invdiff.priors.base import CountingPrior
from invdiff.solvers import baselines

TINY = ["prior=gaussian", "shape=[1,8,8]", "solver.steps=2", "num_samples=1", "progress=false"]
# the user's own 1×8×8 measurement of a 3×3 Gaussian blur
MEASURED = [*TINY, "operator=gaussian_blur", "operator.kernel.size=3", "data=measurement", "sigma_y=0.01"]
MRI16 = ["prior=gaussian", "shape=[1,16,16]", "solver.steps=2", "num_samples=1", "progress=false",
         "operator=mri_mask_file", "data=sample_image"]


def npy(path, array):
    np.save(path, array)
    return str(path)


def refused(overrides, pattern, tmp_path):
    """``setup`` and ``run`` both refuse with an AppError matching ``pattern``; the run directory
    (which Hydra creates before the run) stays empty."""
    cfg = config(*overrides)
    with pytest.raises(AppError) as err:
        setup(cfg)
    msg = str(err.value)
    assert re.search(pattern, msg), msg
    assert "\n" not in msg and "Traceback" not in msg
    out = tmp_path / "run"
    out.mkdir(parents=True)
    with pytest.raises(AppError) as again:
        run(cfg, out)
    assert str(again.value) == msg
    assert sorted(p.name for p in out.rglob("*")) == []  # no samples/*.h5, figures/, metrics.json/csv
    return msg


# ---------------------------------------------------------------------------------------------
# measured data: values, dtype, complex, shape
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_inf_in_a_measurement(value, tmp_path):
    y = np.full((1, 8, 8), 0.5)
    y[0, 3, 4] = value
    refused([*MEASURED, f"data.y={npy(tmp_path / 'y.npy', y)}"], r"measurement y contains NaN or Inf", tmp_path)


def test_nan_in_a_ground_truth_file(tmp_path):
    x = np.full((8, 8), 0.5)
    x[2, 2] = np.nan
    refused([*TINY, "data=files", f"data.path={npy(tmp_path / 'x.npy', x)}"],
            r"ground truth x_0 contains NaN or Inf", tmp_path)


def test_inf_in_the_given_ground_truth_of_a_measurement(tmp_path):
    x = np.full((8, 8), 0.5)
    x[0, 0] = np.inf
    refused([*MEASURED, f"data.y={npy(tmp_path / 'y.npy', np.zeros((1, 8, 8)))}", f"data.x={npy(tmp_path / 'x.npy', x)}"],
            r"ground truth y contains NaN or Inf", tmp_path)


@pytest.mark.parametrize("dtype, shown", [(np.int64, "int64"), (bool, "bool"), ("<U1", "<U1")])
def test_measurement_of_a_non_float_dtype(dtype, shown, tmp_path):
    y = np.ones((1, 8, 8)).astype(dtype)
    refused([*MEASURED, f"data.y={npy(tmp_path / 'y.npy', y)}"],
            rf"measurement .*y\.npy has dtype {re.escape(shown)}; expected floating point data", tmp_path)


def test_ground_truth_file_of_strings(tmp_path):
    refused([*TINY, "data=files", f"data.path={npy(tmp_path / 'x.npy', np.full((8, 8), 'a'))}"],
            r"image x_0 from .*x\.npy has dtype <U1; expected numbers", tmp_path)


def test_complex_measurement_for_an_operator_with_real_data(tmp_path):
    y = np.ones((8, 8), np.complex64)
    refused([*MEASURED, f"data.y={npy(tmp_path / 'y.npy', y)}"],
            r"complex measurements need an operator whose data are 2 real channels; this one takes \[1, 8, 8\]",
            tmp_path)


def test_complex_ground_truth_for_a_real_problem(tmp_path):
    x = np.full((8, 8), 0.5 + 0.1j)
    refused([*TINY, "data=files", f"data.path={npy(tmp_path / 'x.npy', x)}"],
            r"complex images are 2-channel \(real, imag\) data; the problem has 1 channel", tmp_path)
    refused([*MEASURED, f"data.y={npy(tmp_path / 'y.npy', np.zeros((1, 8, 8)))}", f"data.x={tmp_path / 'x.npy'}"],
            r"ground truth x_0 \(data\.x=.*x\.npy\): complex images are 2-channel", tmp_path / "again")


def test_complex_k_space_of_the_wrong_size(tmp_path):
    k = np.ones((16, 12), np.complex64)
    refused([*MRI16[:5], "operator=mri_4x", "data=measurement", f"data.y={npy(tmp_path / 'k.npy', k)}", "sigma_y=0.01"],
            r"complex measurement of shape \[16, 12\] does not match the operator's \[16, 16\]", tmp_path)


def test_ground_truth_of_the_wrong_shape_or_count(tmp_path):
    y = npy(tmp_path / "y.npy", np.zeros((1, 8, 8)))
    refused([*MEASURED, f"data.y={y}", f"data.x={npy(tmp_path / 'x.npy', np.full((5, 5), 0.5))}"],
            r"ground truth y has shape \[1, 5, 5\], the operator acts on \[1, 8, 8\]", tmp_path)
    refused([*MEASURED, f"data.y={y}", f"data.x={npy(tmp_path / 'x2.npy', np.full((2, 8, 8), 0.5))}"],
            r"2 ground truth image\(s\) for 1 measurement\(s\)", tmp_path / "count")
    refused([*TINY, "data=files", "data.resize=false", f"data.path={npy(tmp_path / 'x3.npy', np.full((5, 6), 0.5))}"],
            r"image x3_0 is \[5, 6\], the problem is \[8, 8\] \(set data.resize=true", tmp_path / "noresize")


def test_empty_measurement_file(tmp_path):
    (tmp_path / "y.npy").write_bytes(b"")
    refused([*MEASURED, f"data.y={tmp_path / 'y.npy'}"], r"y\.npy is not a readable \.npy array: the file is empty",
            tmp_path)


# ---------------------------------------------------------------------------------------------
# masks of the wrong size, corrupt mask files
# ---------------------------------------------------------------------------------------------
def test_inpainting_mask_file_of_the_wrong_size(tmp_path):
    mask = npy(tmp_path / "mask.npy", np.ones((5, 5)))
    refused([*TINY, "operator=mask_file_inpainting", f"operator.mask.path={mask}", "data=sample_image"],
            r"mask in .*mask\.npy has shape \[5, 5\]; expected \[8, 8\] for the 8×8 image", tmp_path)


@pytest.mark.parametrize("shape", [(7,), (5, 16)])
def test_mri_mask_file_of_the_wrong_size(shape, tmp_path):
    mask = npy(tmp_path / "cols.npy", np.ones(shape))
    refused([*MRI16, f"operator.mask.path={mask}"],
            rf"the mask has shape \[{', '.join(map(str, shape))}\], but k-space is 16×16: it must be \[16\]", tmp_path)


def test_mri_mask_from_hdf5_without_a_mask_dataset(tmp_path):
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["kspace"] = np.zeros((1, 16, 16), np.complex64)
    refused([*MRI16, f"operator.mask.path={tmp_path / 'scan.h5'}"], r"scan\.h5 has no dataset 'mask'", tmp_path)


def test_corrupt_mask_files(tmp_path):
    (tmp_path / "mask.npy").write_bytes(b"\x80\x04 not an array")
    msg = refused([*TINY, "operator=mask_file_inpainting", f"operator.mask.path={tmp_path / 'mask.npy'}",
                   "data=sample_image"], r"mask file .*mask\.npy is not a readable \.npy array", tmp_path)
    assert "allow_pickle" not in msg and "pickle.load" not in msg  # never advise running the file's code
    from skimage.io import imsave

    imsave(tmp_path / "good.png", np.full((8, 8), 255, np.uint8), check_contrast=False)
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    refused([*TINY, "operator=mask_file_inpainting", f"operator.mask.path={tmp_path / 'cut.png'}", "data=sample_image"],
            r"could not read mask image .*cut\.png: not a readable image", tmp_path / "png")


# ---------------------------------------------------------------------------------------------
# image folders and files
# ---------------------------------------------------------------------------------------------
def test_empty_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    refused([*TINY, "data=files", f"data.path={tmp_path / 'imgs'}"], r"no images \(.*\.png.*\) in folder .*imgs",
            tmp_path)


def test_a_corrupt_image_among_good_ones(tmp_path):
    from skimage.io import imsave

    folder = tmp_path / "imgs"
    folder.mkdir()
    imsave(folder / "a.png", np.full((8, 8), 128, np.uint8), check_contrast=False)
    data = (folder / "a.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "c.png").write_bytes(b"this is not a png")
    refused([*TINY, "data=files", f"data.path={folder}"], r"could not read .*b\.png: not a readable image", tmp_path)
    (folder / "b.png").unlink()
    msg = refused([*TINY, "data=files", f"data.path={folder}"], r"could not read .*c\.png: not a readable image",
                  tmp_path / "c")
    assert "pip install" not in msg  # a corrupt file, not a missing plugin


def test_corrupt_npy_data_file(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"garbage that numpy takes for a pickle")
    msg = refused([*TINY, "data=files", f"data.path={tmp_path / 'x.npy'}"],
                  r"x\.npy is not a readable \.npy array: the file is corrupt or holds Python objects, which are never "
                  r"unpickled", tmp_path)
    assert "allow_pickle" not in msg


# ---------------------------------------------------------------------------------------------
# HDF5 files without the expected datasets
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def two_datasets(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((1, 8, 8))
        f["b"] = np.zeros((1, 8, 8))
    return tmp_path / "two.h5"


def test_measurement_hdf5_without_the_named_dataset(two_datasets, tmp_path):
    refused([*MEASURED, f"data.y={two_datasets}:kspace"], r"two\.h5 has no dataset 'kspace'; it holds \['a', 'b'\]",
            tmp_path)
    refused([*MEASURED, f"data.y={two_datasets}"], r"two\.h5 holds datasets \['a', 'b'\]: name one as .*two\.h5:<dataset>",
            tmp_path / "unnamed")
    refused([*TINY, "data=files", f"data.path={two_datasets}:images"], r"two\.h5 has no dataset 'images'",
            tmp_path / "files")


def test_hdf5_that_is_not_hdf5(tmp_path):
    (tmp_path / "y.h5").write_bytes(b"not hdf5")
    refused([*MEASURED, f"data.y={tmp_path / 'y.h5'}:y"], r"y\.h5 is not a readable HDF5 file", tmp_path)


FASTMRI = ["prior=gaussian", "shape=[2,16,16]", "prior.mean=0.0", "solver.steps=2", "num_samples=1", "progress=false",
           "data=fastmri", "sigma_y=0.01"]


def test_fastmri_file_without_k_space(tmp_path):
    with h5py.File(tmp_path / "file1.h5", "w") as f:
        f["reconstruction_rss"] = np.zeros((2, 16, 16), np.float32)
    refused([*FASTMRI, f"data.path={tmp_path / 'file1.h5'}"], r"file1\.h5 has no 'kspace' dataset: not a fastMRI raw file",
            tmp_path)
    with h5py.File(tmp_path / "file2.h5", "w") as f:
        f["kspace"] = np.zeros((16, 16), np.complex64)  # one slice without its slice axis
    refused([*FASTMRI, f"data.path={tmp_path / 'file2.h5'}"],
            r"file2\.h5: 'kspace' has shape \[16, 16\]; a fastMRI raw file holds \[slices, H, W\]", tmp_path / "2d")


def test_fastmri_folder_without_files_and_slices_out_of_range(tmp_path):
    from test_fastmri_data import write_fastmri

    (tmp_path / "empty").mkdir()
    refused([*FASTMRI, f"data.path={tmp_path / 'empty'}"], r"no \.h5 files in .*empty", tmp_path)
    mask = np.zeros(24, bool)
    mask[::2] = True
    write_fastmri(tmp_path / "file1.h5", slices=2, coils=1, H=24, W=24, h=16, w=16, mask=mask, multicoil=False)
    refused([*FASTMRI, f"data.path={tmp_path / 'file1.h5'}", "data.slices=[1,5]"],
            r"data\.slices \[5\]: .*file1\.h5 has 2 slice\(s\), numbered 0 to 1", tmp_path / "slices")


# ---------------------------------------------------------------------------------------------
# σ_y, steps and the other numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, pattern", [
    (["sigma_y=-0.1"], r"sigma_y must be finite and >= 0, got -0\.1"),
    (["sigma_y=nan"], r"sigma_y must be finite and >= 0, got nan"),
    (["noise.sigma=-0.1"], r"noise config \(operators\.GaussianNoise\): GaussianNoise: sigma must be finite and >= 0"),
    (["solver=ddrm", "solver.steps=0"], r"solver 'ddrm': steps must be a positive integer, got 0"),
    (["solver=dps", "solver.steps=-3"], r"solver 'dps': steps must be a positive integer, got -3"),
    (["solver.steps=1.5"], r"steps must be a positive integer, got 1\.5"),
    (["solver=tv", "solver.steps=0"], r"tv: steps must be a positive integer, got 0"),
    (["num_samples=0"], r"num_samples must be a positive integer, got 0"),
    (["batch_size=0"], r"batch_size must be a positive integer.*got 0"),
    (["baseline=best"], r"baseline must be auto, pinv, adjoint or none, got 'best'"),
])
def test_bad_numbers_and_settings(overrides, pattern, tmp_path):
    refused([*TINY, "data=sample_image", *overrides], pattern, tmp_path)


def test_negative_noise_level_stated_by_the_data(tmp_path):
    y = npy(tmp_path / "y.npy", np.zeros((1, 8, 8)))
    refused([*MEASURED[:-1], f"data.y={y}", "data.sigma_y=-0.5"], r"sigma_y must be finite and >= 0, got -0\.5",
            tmp_path)


# ---------------------------------------------------------------------------------------------
# unknown names and keys
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["noise=gausian"], r"^unknown noise 'gausian'\. Choose one of: gaussian, poisson.*Did you mean 'gaussian'\?$"),
    (["prior=phantom46"], r"^unknown prior 'phantom46'\. Choose one of: .*Did you mean 'phantom64'\?$"),
    (["experiment=toy_dsp"], r"^unknown experiment 'toy_dsp'\. Choose one of: .*Did you mean 'toy_dps'\?$"),
    # a key two levels down (test_app checks one level: solver.stepz)
    (["operator=gaussian_blur", "operator.kernel.sizee=3"],
     r"^unknown setting 'operator\.kernel\.sizee'\. Valid keys at 'operator\.kernel': sigma, size, truncate\. Did you mean 'size'\?$"),
    # a key under a node the chosen config does not have: the message names the missing level
    (["operator.kernel.size=3"],
     r"^unknown setting 'operator\.kernel\.size': 'operator' \(operators\.SingleCoilMRI\) has no 'kernel'\. "
     r"Valid keys at 'operator': img_size, mask, seed\.$"),
])
def test_unknown_names_are_explained(overrides, expected):
    msg = explain_overrides(overrides)
    assert msg is not None and "\n" not in msg and re.search(expected, msg), msg


@pytest.mark.parametrize("overrides, pattern", [
    (["+solver.foo=1"], r"solver config \(invdiff\.solvers\.pigdm\): pigdm\(\) got an unexpected keyword argument 'foo'"),
    (["operator=gaussian_blur", "+operator.foo=1"], r"operator config \(operators\.Blur\): .*unexpected keyword argument 'foo'"),
    (["operator=gaussian_blur", "operator.padding=mirror"], r"Blur: unknown padding 'mirror'; choose one of"),
    (["operator=gaussian_blur", "operator.kernel=gauss"], r"Blur: kernel must be a \[Kh, Kw\] array of numbers or a kernel generator"),
])
def test_keys_that_compose_but_do_not_build(overrides, pattern, tmp_path):
    """Added keys ('+') compose, so the override check lets them through; building refuses them."""
    refused([*TINY, "data=sample_image", *overrides], pattern, tmp_path)


# ---------------------------------------------------------------------------------------------
# the Python API and the data sources directly
# ---------------------------------------------------------------------------------------------
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def problem():
    op = O.Inpainting(O.RandomPixelMask(0.5), SHAPE, seed=0)
    y = op.A(smooth_gaussian(SHAPE).sample(2, torch.Generator().manual_seed(0)))
    return op, y


@pytest.mark.parametrize("solver", ["ddrm", "dps", "pinv", baselines.tv], ids=["ddrm", "dps", "pinv", "tv"])
@pytest.mark.parametrize("case, pattern", [
    ("nan", r"y contains NaN or Inf"),
    ("inf", r"y contains NaN or Inf"),
    ("shape", r"y must have shape \[B, 1, 8, 8\] for Inpainting.*got \[2, 1, 4, 8\]"),
    ("no_batch", r"y must have shape \[B, 1, 8, 8\].*got \[1, 8, 8\]"),
    ("int", r"y must be a real floating tensor .*got dtype torch\.int64"),
    ("complex", r"y must be a real floating tensor \(complex data as 2 real channels\), got dtype torch\.complex128"),
    ("numpy", r"y must be a torch\.Tensor, got ndarray"),
    ("list", r"y must be a torch\.Tensor, got list"),
    ("negative_sigma", r"sigma_y must be finite and >= 0"),
    ("nan_sigma", r"sigma_y must be finite and >= 0"),
    ("sigma_per_item", r"sigma_y must be a float or one value per item \(\[2\]\), got shape \[3\]"),
    ("steps0", r"steps must be a positive integer, got 0"),
])
def test_reconstruct_refuses_bad_input_before_any_work(problem, solver, case, pattern):
    """The baselines (pinv, tv) check y and σ_y like every solver, so the API refuses them all alike."""
    op, y = problem
    bad = {"nan": dict(y=torch.where(y > 0.5, float("nan"), y)), "inf": dict(y=y - float("inf")),
           "shape": dict(y=y[:, :, :4]), "no_batch": dict(y=y[0]), "int": dict(y=y.long()),
           "complex": dict(y=y.to(torch.complex128)), "numpy": dict(y=y.numpy()), "list": dict(y=y.tolist()),
           "negative_sigma": dict(sigma_y=-0.1), "nan_sigma": dict(sigma_y=float("nan")),
           "sigma_per_item": dict(sigma_y=[0.1, 0.2, 0.3]), "steps0": dict(steps=0)}[case]
    if case == "steps0" and solver == "pinv":
        pytest.skip("pinv has no steps")
    kw = dict(y=y, sigma_y=0.05, steps=2) | bad
    if solver == "pinv":
        kw.pop("steps")
    counting = CountingPrior(smooth_gaussian(SHAPE))  # no denoiser call = no work done
    with pytest.raises((ValueError, TypeError), match=pattern) as err:
        reconstruct(kw.pop("y"), op, counting, solver, **kw)
    assert "\n" not in str(err.value) and counting.calls == 0


def test_sources_refuse_bad_files_directly(tmp_path, two_datasets):
    op = O.Blur(O.GaussianKernel(3, 1.0), SHAPE)
    with pytest.raises(ValueError, match="has no dataset 'y'"):
        Measurements(f"{two_datasets}:y", shape=SHAPE).samples(op)
    np.save(tmp_path / "y.npy", np.full((1, 8, 8), 1 + 1j))
    with pytest.raises(ValueError, match="complex measurements need an operator whose data are 2 real channels"):
        Measurements(str(tmp_path / "y.npy"), shape=SHAPE).samples(op)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFiles(str(tmp_path / "imgs"), shape=SHAPE).samples()
    with pytest.raises(ValueError, match="has no 'kspace' dataset"):
        FastMRI(str(two_datasets)).samples()
    with pytest.raises(ValueError, match="needs data.y="):
        Measurements("???")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FastMRI(str(tmp_path / "none.h5"))


def test_operator_file_loaders_refuse_bad_files_directly(tmp_path):
    np.save(tmp_path / "mask.npy", np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"has shape \[4, 4\]; expected \[8, 8\]"):
        O.Inpainting(O.MaskFile(str(tmp_path / "mask.npy")), SHAPE)
    (tmp_path / "k.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"kernel file .*k\.npy is not a readable \.npy array: the file is empty"):
        O.Blur(O.KernelFile(str(tmp_path / "k.npy")), SHAPE)
    np.save(tmp_path / "kc.npy", np.ones((3, 3), np.complex64))
    with pytest.raises(ValueError, match=r"kernel in .*kc\.npy must hold real numbers, got dtype complex64"):
        O.KernelFile(str(tmp_path / "kc.npy"))()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for load in (lambda p: O.load_mask(p), lambda p: O.MaskFile(p)((1, 8, 8)), lambda p: O.KernelFile(p)(),
                 lambda p: O.MultiCoilMRI(O.RandomLinesMask(2, 0.2), p, (1, 8, 8))):
        with pytest.raises(ValueError, match="holds Python objects, which are never unpickled"):
            load(str(tmp_path / "obj.npy"))
    (tmp_path / "m.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"mask file .*m\.h5 is not a readable HDF5 file"):
        O.load_mask(str(tmp_path / "m.h5"))


def test_the_apps_solver_check_does_no_work_for_the_baselines(problem):
    """``check_call`` (what ``setup`` runs for every solver) stops the baselines after their checks:
    DPIR calls no denoiser, TV runs no iteration."""
    from invdiff.solvers import check_call

    op, y = problem
    counting = CountingPrior(smooth_gaussian(SHAPE))
    iterations = []
    check_call(baselines.dpir, y, op, counting, sigma_y=0.05)
    check_call(baselines.tv, y, op, counting, sigma_y=0.05, callback=lambda *a: iterations.append(a))
    check_call(baselines.pinv, y, op, counting, sigma_y=0.05)
    assert counting.calls == 0 and iterations == []
    with pytest.raises(ValueError, match="y contains NaN"):
        check_call(baselines.dpir, y * float("nan"), op, counting, sigma_y=0.05)


# ---------------------------------------------------------------------------------------------
# issue 31: what is allowed (item 5), sample images that need a download, settings and shapes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, pattern", [
    (["data=phantoms", "data.n=0"], r"data\.n must be at least 1 \(phantoms to reconstruct\), got 0; the test split "
                                    r"has 32 held-out phantoms \(data\.n=1 to 32\)"),
    (["data=phantoms", "data.n=40"], r"n = 40, first = 0: the test split has 32 held-out phantoms, so data\.first must "
                                     r"be >= 0 and data\.first \+ data\.n <= 32"),
    (["data=phantoms", "data.first=-1"], r"data\.first must be >= 0"),
    (["data=phantoms", "data.n=1.5"], r"data\.n must be a whole number, got 1\.5"),
    (["data=sample_image", "data.names=[brain]"],
     r"'brain' is not bundled with scikit-image: skimage\.data\.brain\(\) downloads its file on first use, and "
     r"invdiff never downloads anything\. Choose from shepp_logan, camera.*data=files data\.path="),
    (["data=image_views", "data.names=[brain]"], r"'brain' is not bundled with scikit-image.*Choose from astronaut"),
    (["data=sample_image", "data.names=[camra]"], r"unknown sample image 'camra' \(did you mean 'camera'\?\)"),
    (["data=image_views", "data.names=[kodim01]"], r"unknown sample image 'kodim01'.*Choose from astronaut"),
    (["data=sample_image", "data.names=[]"], r"data\.names is empty; name at least one of shepp_logan"),
    (["data=sample_image", "shape=[64,64]"], r"shape must be \[C,H,W\] \(or \[C,D,H,W\] for volumes\) of whole numbers "
                                             r">= 1, e\.g\. shape=\[1,64,64\]; got \[64, 64\]"),
    (["data=sample_image", "shape=[1,0,8]"], r"shape must be \[C,H,W\].*got \[1, 0, 8\]"),
    (["data=sample_image", "shape=[1,-8,8]"], r"shape must be \[C,H,W\].*got \[1, -8, 8\]"),
    (["data=sample_image", "shape=[1,8.5,8]"], r"shape must be \[C,H,W\].*got \[1, 8\.5, 8\]"),
    (["data=sample_image", "shape=64"], r"shape must be \[C,H,W\].*got 64"),
    (["data=sample_image", "seed=-1"], r"seed must be a whole number >= 0, got -1"),
    (["data=sample_image", "seed=abc"], r"seed must be a whole number >= 0, got 'abc'"),
    (["data=sample_image", "operator_seed=1.5"], r"operator_seed must be a whole number >= 0, got 1\.5"),
    (["data=sample_image", "resume=maybe"], r"resume must be true or false, got 'maybe'"),
    (["data=sample_image", "figures=yes"], r"figures must be true or false, got 'yes'"),
    (["data=sample_image", "num_samples=2.5"], r"num_samples must be a positive integer, got 2\.5"),
    (["data=sample_image", "batch_size=all"], r"batch_size must be a positive integer or auto, got 'all'"),
    (["data=sample_image", "tile_overlap=-4"], r"tile_overlap must be null \(no tiling\) or a number of pixels >= 0, "
                                               r"got -4"),
])
def test_settings_and_data_that_say_what_is_allowed(overrides, pattern, tmp_path):
    refused([*TINY, *overrides], pattern, tmp_path)


def test_a_float16_measurement_is_accepted_with_a_stated_conversion(tmp_path, caplog):
    """float16 y: accepted, converted exactly to float64, and the log states the conversion and the
    size of float16's rounding (so the user can compare it with σ_y)."""
    y = npy(tmp_path / "y.npy", np.full((1, 8, 8), 0.75, np.float16))
    job = setup(config(*MEASURED, f"data.y={y}"))
    s = job.items[0].sample
    assert s.y.dtype == torch.float64 and s.info["stored_dtype"] == "float16"
    assert torch.equal(s.y, torch.full((1, 8, 8), 0.75, dtype=torch.float64))  # 0.75 is exact in float16
    assert re.search(r"is float16: converted to float64 \(exact\).*rounding errors up to 0\.00037", caplog.text)


def test_the_python_api_states_a_float16_conversion(problem, caplog):
    op, y = problem
    rec = reconstruct(y.half(), op, smooth_gaussian(SHAPE), "ddrm", sigma_y=0.05, steps=2)
    assert rec.mean.dtype == torch.float64 and "y is float16: converted to float64" in caplog.text


def test_sources_say_what_is_allowed_directly():
    from invdiff.data.images import sample_image
    from invdiff.data.sources import ImageViews, Phantoms, SampleImages

    for make, pattern in [(lambda: Phantoms(n=0), r"data\.n must be at least 1"),
                          (lambda: Phantoms(n=3, first=31), r"data\.first \+ data\.n <= 32"),
                          (lambda: Phantoms(n=2, split="val", first=-2), r"data\.first must be >= 0"),
                          (lambda: Phantoms(n=2, shape=[1, 8, 8]).samples(), r"at least 10×10 pixels.*shape=\[1,10,10\]"),
                          (lambda: SampleImages(["brain"]), r"'brain' is not bundled"),
                          (lambda: ImageViews(["brain"]), r"'brain' is not bundled"),
                          (lambda: sample_image("brain"), r"never downloads anything")]:
        with pytest.raises(ValueError, match=pattern) as err:
            make()
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# issue 31, item 4: shapes that cannot fit in memory, refused before anything is allocated
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, pattern", [
    (["data=sample_image", "operator=gaussian_blur", "shape=[1,100000,100000]"],
     r"^shape=\[1,100000,100000\] \(10,000,000,000 values\) needs at least 320 GB of memory before the network's own "
     r"\(posterior mean 80 GB, 1 posterior draw\(s\) 80 GB, the solver's state for 1 draw\(s\) at once 160 GB; "
     r"float64\), but 64 GB is available RAM\. Use a smaller shape \(with these settings at most about 44721×44721 "
     r"pixels per channel fit\) or the image cut into pieces solved one run each\.$"),
    (["data=sample_image", "shape=[1,100000,100000]", "num_samples=4", "batch_size=4"],
     r"needs at least 1\.12 TB .*posterior mean and std 160 GB, 4 posterior draw\(s\) 320 GB, the solver's state for "
     r"4 draw\(s\) at once 640 GB; float64\), but 64 GB is available RAM\. Use a smaller shape \(with "
     r"these settings at most about \d+×\d+ pixels per channel fit\)"),
    (["data=sample_image", "operator=cloud_inpainting", "prior=patches64", "shape=[1,200000,200000]",
      "tile_overlap=16", "solver=ddnm"],
     r"shape=\[1,200000,200000\] \(40,000,000,000 values\) needs at least 960 GB.*1 draw\(s\) of every tile before "
     r"blending 320 GB"),
    (["data=sample_image", "shape=[3,50000,50000]", "operator=gaussian_blur"], r"needs at least .* of memory"),
])
def test_shapes_that_cannot_fit_are_refused_at_once(overrides, pattern, tmp_path, monkeypatch):
    """With 64 GB available (a fixed figure, so the test does not depend on the machine) each is
    refused from its size alone, in well under a second, before any array is allocated."""
    import time

    import invdiff.memory as M

    monkeypatch.setattr(M, "available_bytes", lambda device=None: (64 * 10**9, "available RAM"))
    t0 = time.perf_counter()
    msg = refused([*TINY, *overrides], pattern, tmp_path)
    assert time.perf_counter() - t0 < 20 and "alloc_cpu" not in msg and "enforce fail" not in msg


def test_the_memory_available_is_measured():
    from invdiff.memory import available_bytes

    n, kind = available_bytes("cpu")
    assert n is None or (n > 0 and kind in ("available RAM", "physical RAM"))


@pytest.mark.parametrize("available, fix", [
    (8 * 64 * (2 + 4 + 2) + 100, r"Use batch_size=1 \(the solver then holds one draw at a time; the draws do not change\)"),
    (8 * 64 * (1 + 1 + 2) + 100, r"Use fewer draws and a smaller batch \(num_samples=1 batch_size=1\)"),
    (1000, r"Use a smaller shape \(with these settings at most about 2×2 pixels"),
])
def test_the_memory_refusal_names_the_fix_that_fits(available, fix, tmp_path, monkeypatch):
    import invdiff.memory as M

    monkeypatch.setattr(M, "available_bytes", lambda device=None: (available, "available RAM"))
    refused([*TINY, "data=sample_image", "num_samples=4", "batch_size=4"], fix, tmp_path)


def test_an_operator_that_runs_out_of_memory_while_built(tmp_path, monkeypatch):
    """The safety net behind the estimate: an allocator error in a constructor becomes the size and the fix."""
    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 80000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(O.Blur, "__init__", huge)
    msg = refused([*TINY, "data=sample_image", "operator=gaussian_blur"],
                  r"operator config \(operators\.Blur\) ran out of memory while being built \(80 GB in one array\): its "
                  r"arrays .* grow with the image size\. Use a smaller shape, or solve a large image in prior-sized tiles",
                  tmp_path)
    assert "enforce fail" not in msg


@pytest.mark.parametrize("batch_size, pattern", [
    (None, r"1 item\(s\) of images \[1, 8, 8\] with 4 draw\(s\) each \(64 values\) needs at least 7\.17 kB"),
    (4, r"the solver's state for 4 draw\(s\) at once.*Use batch_size=1 or batch_size='auto'"),
    ("auto", r"the solver's state for 1 draw\(s\) at once.*a smaller shape"),
])
def test_reconstruct_refuses_a_problem_that_cannot_fit_before_any_work(problem, batch_size, pattern, monkeypatch):
    import invdiff.memory as M
    from invdiff.api import OutOfMemory

    op, y = problem
    room = 4200 if batch_size == 4 else 1000  # batch 1 fits 4200 bytes; nothing fits 1000
    monkeypatch.setattr(M, "available_bytes", lambda device=None: (room, "available RAM"))
    counting = CountingPrior(smooth_gaussian(SHAPE))
    with pytest.raises(OutOfMemory, match=pattern) as err:
        reconstruct(y[:1], op, counting, "dps", sigma_y=0.05, steps=2, num_samples=4, batch_size=batch_size)
    assert counting.calls == 0 and "\n" not in str(err.value)


def test_reconstruct_tiled_refuses_a_scene_that_cannot_fit_before_any_tile(monkeypatch):
    import invdiff.memory as M
    from invdiff.api import OutOfMemory
    from invdiff.tiling import reconstruct_tiled

    op = O.Inpainting(O.RandomPixelMask(0.5), (1, 16, 16), seed=0)
    y = op.A(torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64))
    monkeypatch.setattr(M, "available_bytes", lambda device=None: (4096, "available RAM"))
    counting = CountingPrior(smooth_gaussian(SHAPE))
    with pytest.raises(OutOfMemory, match=r"tiled reconstruction of 1 image\(s\) \[1, 16, 16\] .* needs at least .*"
                                          r"draw\(s\) of every tile before blending"):
        reconstruct_tiled(y, op, counting, "ddnm", sigma_y=0.05, overlap=4, steps=2, num_samples=2)
    assert counting.calls == 0


# ---------------------------------------------------------------------------------------------
# issue 31, items 3 and 8: output directories that cannot be created, names that leave results_dir
# ---------------------------------------------------------------------------------------------
def cli_refuses(monkeypatch, entry, argv, pattern, tmp_path):
    """The console entry point exits with one paragraph before Hydra starts; nothing new under tmp_path."""
    import sys

    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as err:
        entry()
    msg = str(err.value)
    assert re.search(pattern, msg), msg
    assert "\n" not in msg and "Traceback" not in msg
    assert sorted(tmp_path.rglob("*")) == before
    return msg


@pytest.fixture
def a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    return tmp_path / "notes.txt"


@pytest.mark.parametrize("where, pattern", [
    ("/proc/x", r"cannot create the output directory /proc/x \(hydra\.run\.dir\): the file system of /proc does not "
                r"allow new directories there\. Choose a writable directory with hydra\.run\.dir=<dir>"),
    ("FILE/run", r"cannot create the output directory .*notes\.txt/run \(hydra\.run\.dir\): .*notes\.txt is a file, "
                 r"not a directory"),
    ("FILE", r"cannot create the output directory .*notes\.txt \(hydra\.run\.dir\): .*notes\.txt exists and is not a "
             r"directory"),
    ("LONG", r"the name 'xxxx.*' in it is 300 bytes long; a file system allows 255"),
])
def test_an_output_directory_that_cannot_be_created(where, pattern, a_file, tmp_path, monkeypatch):
    from invdiff.apps.cli import main

    if where == "/proc/x" and not __import__("os").path.isdir("/proc/self"):
        pytest.skip("no /proc")
    where = where.replace("FILE", str(a_file)).replace("LONG", str(tmp_path / ("x" * 300) / "run"))
    cli_refuses(monkeypatch, main, ["invdiff", *TINY, "data=sample_image", f"hydra.run.dir={where}"], pattern, tmp_path)


def test_a_sweep_directory_that_cannot_be_created(a_file, tmp_path, monkeypatch):
    from invdiff.apps.cli import main

    cli_refuses(monkeypatch, main, ["invdiff", "-m", *TINY, "data=sample_image", "seed=0,1",
                                    f"hydra.sweep.dir={a_file}/sweep"],
                r"cannot create the output directory .*notes\.txt/sweep \(hydra\.sweep\.dir\): .*is a file, not a "
                r"directory\. .*hydra\.sweep\.dir=<dir> for a sweep", tmp_path)


def test_an_output_directory_is_made_without_leftovers(a_file, tmp_path):
    """make_output_dir creates what Hydra would, or leaves nothing behind when a level fails."""
    from invdiff.apps.cli import make_output_dir

    assert make_output_dir(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()
    assert "is a file" in make_output_dir(a_file / "c" / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "notes.txt"]


BENCH_FAST = ["benchmark=smoke", "data.n=1", "solver.steps=2", "progress=false"]


@pytest.mark.parametrize("argv, pattern", [
    (["results_dir=FILE/x"], r"^invdiff-bench: cannot create the output directory .*notes\.txt/x/smoke/ddrm/data\.n=1,solver\.steps=2 "
                             r"\(hydra\.run\.dir\): .*notes\.txt is a file, not a directory\. Choose a writable "
                             r"results_dir=<dir>\.$"),
    (["results_dir=/proc/bench"], r"cannot create the output directory /proc/bench/smoke/ddrm/data\.n=1,solver\.steps=2 .*the file system of "
                                  r"/proc does not allow new directories"),
    (["benchmark.name=../../escaped"], r"^invdiff-bench: benchmark\.name '\.\./\.\./escaped' names the folder of the "
                                       r"runs \(results_dir/<name>/\.\.\.\), so it must be a plain name"),
    (["benchmark.name=a/b"], r"benchmark\.name 'a/b' names the folder of the runs"),
    (["-m", "benchmark.name=fine,..", "solver=ddrm"], r"^invdiff-bench: with benchmark\.name=\.\.: benchmark\.name "
                                                      r"'\.\.' names the folder"),
])
def test_bench_refuses_names_and_directories_before_hydra(argv, pattern, a_file, tmp_path, monkeypatch):
    from invdiff.apps import bench

    argv = [a.replace("FILE", str(a_file)) for a in argv]
    if not any(a.startswith("results_dir=") for a in argv):
        argv.append(f"results_dir={tmp_path / 'res'}")
    cli_refuses(monkeypatch, bench.main, ["invdiff-bench", *BENCH_FAST, *argv], pattern, tmp_path)


@pytest.mark.parametrize("override", ["benchmark.task=../../../../escaped_bench", "+solver.note=../../../../../escaped",
                                      "+solver.note=..\\..\\escaped", "benchmark.noise_convention=/etc/passwd"])
def test_override_values_cannot_move_a_benchmark_out_of_results_dir(override, tmp_path):
    """The run directory Hydra will use is created under results_dir: '/' and '\\' in override
    values are written %2F/%5C, and the preset's description texts do not name directories."""
    from invdiff.apps import bench  # noqa: F401  (registers the invdiff_path resolver)
    from invdiff.apps.cli import check_output_dir

    res = tmp_path / "res"
    problem, _ = check_output_dir([*BENCH_FAST, override, f"results_dir={res}"], "bench", "", inside="results_dir")
    assert problem is None
    made = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert made and all(p == res or res in p.parents for p in made), made
    leaf = max(made, key=lambda p: len(p.parts))
    assert leaf.parent == res / "smoke" / "ddrm"


def test_the_results_dir_guard_holds_without_the_escaping(tmp_path, monkeypatch):
    """Belt and braces: were a value to reach the path verbatim, the directory outside results_dir is refused."""
    from omegaconf import OmegaConf

    from invdiff.apps.cli import check_output_dir

    monkeypatch.setattr("invdiff.apps.bench.path_part", str)
    OmegaConf.register_new_resolver("invdiff_path", str, replace=True)
    try:
        problem, _ = check_output_dir([*BENCH_FAST, "+solver.note=../../../../../escaped", f"results_dir={tmp_path / 'res'}"],
                                      "bench", "", inside="results_dir")
    finally:
        from invdiff.apps.bench import path_part as real

        OmegaConf.register_new_resolver("invdiff_path", real, replace=True)
    assert re.search(r"would lie outside results_dir=.*res .*use plain names \(no '/' or '\.\.'\) in overrides", problem)
    assert not any(tmp_path.iterdir())


def test_a_failed_run_logs_its_error_in_cli_log(tmp_path, monkeypatch):
    """Inside Hydra (the run directory exists), a refused run writes its paragraph into cli.log too."""
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from invdiff.apps.cli import main

    GlobalHydra.instance().clear()
    root = logging.getLogger()
    handlers = list(root.handlers)
    monkeypatch.setattr(sys, "argv", ["invdiff", *TINY, "data=sample_image", "data.names=[brain]",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    try:
        with pytest.raises(SystemExit, match=r"'brain' is not bundled with scikit-image"):
            main()
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
                root.removeHandler(h)
        GlobalHydra.instance().clear()
    text = (tmp_path / "run" / "cli.log").read_text()
    assert "[ERROR]" in text and "'brain' is not bundled with scikit-image" in text
    assert not (tmp_path / "run" / "samples").exists()
