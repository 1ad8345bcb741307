"""Bad input is refused up front: one paragraph that says what is wrong, raised while the job is
checked (``invdiff.app.setup``), so a run writes nothing — no sample file, figure or metrics.

tests/test_app.py (``test_bad_input_is_refused_before_anything_is_written``) already covers: an
operator the solver cannot use, a prior of another shape, ground truth out of the prior's range,
NaN in a measurement, a measurement of the wrong shape, a missing data path or file, measured data
without a noise level, σ_y=auto with Poisson noise, ``solver.steps=0`` (ΠGDM) and a missing
checkpoint; ``test_bad_overrides_are_explained_in_one_paragraph`` unknown operator/solver/data
names and unknown solver/top-level keys. This file covers the rest of the issue's list.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

import operators as O
from invdiff.api import reconstruct
from invdiff.app import AppError, config, run, setup
from invdiff.cli import explain_overrides
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
    (["sigma_y=-0.1"], r"sigma_y must be a finite number >= 0, got -0\.1"),
    (["sigma_y=nan"], r"sigma_y must be a finite number >= 0, got nan"),
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
    refused([*MEASURED[:-1], f"data.y={y}", "data.sigma_y=-0.5"], r"sigma_y must be a finite number >= 0, got -0\.5",
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
