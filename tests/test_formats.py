"""The scientist's own formats (invdiff.data.formats, invdiff.data.exports) and the offline brain
data (invdiff.data.brain): metadata round trips, slice order, band axes, and the app end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")
pytest.importorskip("tifffile")

import nibabel as nib  # noqa: E402
import pydicom  # noqa: E402
import tifffile  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from invdiff.data import formats as F  # noqa: E402

GEO = [(33550, 12, 3, (10.0, 10.0, 0.0), True), (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
       (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True)]


def nifti(tmp_path, shape=(20, 24, 6), zooms=(1.0, 1.2, 3.0)):
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = [-90.0, -126.0, -72.0]
    arr = np.random.default_rng(0).random(shape).astype(np.float32) * 1000
    p = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(arr, aff), str(p))
    return p, arr, aff


def test_nifti_slices_along_the_named_plane_and_round_trip(tmp_path):
    p, arr, aff = nifti(tmp_path)
    vol = F.read_nifti(p, "axial")  # RAS: axial = voxel axis 2
    assert vol.data.shape == (6, 20, 24) and "voxel axis 2" in vol.axis
    np.testing.assert_allclose(vol.data[3], arr[:, :, 3], rtol=1e-6)
    assert F.read_nifti(p, "sagittal").data.shape == (20, 24, 6)
    out = F.write_nifti(tmp_path / "o.nii.gz", vol.data, vol)
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    np.testing.assert_allclose(img.get_fdata(), arr, rtol=1e-6)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_nifti_resized_slices_keep_the_field_of_view(tmp_path):
    p, arr, aff = nifti(tmp_path)
    vol = F.read_nifti(p, "axial")
    img = nib.load(str(F.write_nifti(tmp_path / "o.nii.gz", vol.data[:, ::2, ::3], vol)))
    assert img.shape == (10, 8, 6)
    np.testing.assert_allclose(img.header.get_zooms(), (2.0, 3.6, 3.0), rtol=1e-6)
    # the outer voxel edges stay where they were: first edge at origin − zoom/2 in both
    old_edge = aff[:3, :3] @ np.array([-0.5, -0.5, -0.5]) + aff[:3, 3]
    new_edge = img.affine[:3, :3] @ np.array([-0.5, -0.5, -0.5]) + img.affine[:3, 3]
    np.testing.assert_allclose(new_edge, old_edge, atol=1e-5)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_file_in_physical_units_and_derived_series_out(tmp_path, name):
    src = get_testdata_file(name)
    ds = pydicom.dcmread(src)
    vol = F.read_dicom(src)
    expect = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    np.testing.assert_array_equal(vol.data[0], expect)
    F.write_dicom(tmp_path / "out", vol.data[:, ::2, ::2], vol)
    back = F.read_dicom(tmp_path / "out")
    out = back.meta["datasets"][0]
    step = (vol.data.max() - vol.data.min()) / 65535
    assert np.abs(back.data - vol.data[:, ::2, ::2]).max() <= step  # 16-bit quantisation only
    assert out.SeriesInstanceUID != ds.SeriesInstanceUID and out.SOPInstanceUID != ds.SOPInstanceUID
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.PatientID == ds.PatientID and out.StudyInstanceUID == ds.StudyInstanceUID
    np.testing.assert_allclose([float(v) for v in out.PixelSpacing], [2 * float(v) for v in ds.PixelSpacing])
    np.testing.assert_allclose([float(v) for v in out.ImageOrientationPatient],
                               [float(v) for v in ds.ImageOrientationPatient])


def test_dicom_series_folder_sorted_by_position_not_name(tmp_path):
    import copy

    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    base = src.pixel_array.copy()
    folder = tmp_path / "series"
    folder.mkdir()
    z = [30.0, -10.0, 10.0, 0.0]  # written in this order, names unrelated to position
    iop = np.asarray([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    for k, zz in enumerate(z):
        ds = copy.deepcopy(src)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (normal * zz)]
        ds.InstanceNumber = 10 - k
        ds.PixelData = (base + 100 * k).astype(base.dtype).tobytes()
        ds.save_as(str(folder / f"img{k}.dcm"))
    vol = F.read_dicom(folder)
    order = np.argsort(z)
    assert "slice normal" in vol.axis
    for i, k in enumerate(order):
        np.testing.assert_array_equal(vol.data[i], base.astype(np.float64) + 100 * k)
    dup = folder / "dup.dcm"
    shutil.copy(folder / "img0.dcm", dup)
    with pytest.raises(ValueError, match="share a slice position"):
        F.read_dicom(folder)
    dup.unlink()
    other = copy.deepcopy(src)
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(str(folder / "other.dcm"))
    with pytest.raises(ValueError, match="holds 2 DICOM series"):
        F.read_dicom(folder)


@pytest.mark.parametrize("layout", ["interleaved", "planar"])
def test_geotiff_bands_axis_and_georeferencing_round_trip(tmp_path, layout):
    b = np.random.default_rng(1).integers(0, 4000, (4, 40, 30)).astype(np.uint16)  # R, G, B, NIR
    p = tmp_path / "tile.tif"
    if layout == "interleaved":
        tifffile.imwrite(p, np.moveaxis(b, 0, -1), photometric="rgb", extrasamples=[0], extratags=GEO)
    else:
        tifffile.imwrite(p, b, photometric="minisblack", planarconfig="separate", extratags=GEO)
    vol = F.read_tiff(p)
    np.testing.assert_array_equal(vol.data, b)  # all four bands, band axis first
    geo = F.geo_summary(vol)
    assert geo["epsg"] == 32633 and geo["transform"] == (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    out = F.read_tiff(F.write_tiff(tmp_path / "o.tif", vol.data[:, ::2, ::2], vol))
    assert F.geo_summary(out) == {"epsg": 32633, "transform": (20.0, 0.0, 500000.0, 0.0, -20.0, 4000000.0)}
    np.testing.assert_allclose(out.data, b[:, ::2, ::2])


def test_four_band_tiff_is_not_silently_cut_to_rgb(tmp_path):
    from invdiff.data.sources import ImageFiles

    b = np.random.default_rng(2).integers(0, 255, (16, 16, 4)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", b, photometric="rgb", extrasamples=[0])
    with pytest.raises(ValueError, match=r"4 bands .* cannot be used as 3-channel data.*data\.bands=\[\.\.\.\]"):
        ImageFiles(str(tmp_path / "t.tif"), shape=(3, 16, 16)).samples()
    four = ImageFiles(str(tmp_path / "t.tif"), shape=(4, 16, 16)).samples()[0].x
    np.testing.assert_allclose(four.numpy(), np.moveaxis(b, -1, 0) / 255)
    nir = ImageFiles(str(tmp_path / "t.tif"), shape=(1, 16, 16), bands=[3]).samples()[0].x
    np.testing.assert_allclose(nir[0].numpy(), b[..., 3] / 255)
    with pytest.raises(ValueError, match=r"data\.bands \[4\].*has 4 band\(s\)"):
        ImageFiles(str(tmp_path / "t.tif"), shape=(1, 16, 16), bands=[4]).samples()


def test_brain_template_splits_are_disjoint_and_offline():
    pytest.importorskip("nilearn")
    from invdiff.data import brain as B
    from invdiff.data.images import sample_image

    assert B.mni152().shape == (197, 233, 189) and abs(B.mni152().max() - 1.0) < 1e-12
    for plane in B.PLANE_AXES:
        s = {k: set(B.slab(plane, k)) for k in B.SPLITS}
        assert len(s["test"]) == 10 and len(s["val"]) == 5 and len(s["train"]) > 50
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):  # ≥ 5 slices apart
            assert min(abs(i - j) for i in s[a] for j in s[b]) >= 5
    img = sample_image("brain_slice", (1, 32, 32))
    assert img.shape == (1, 1, 32, 32) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert float(img.std()) > 0.1  # anatomy, not an empty slice


def test_app_reconstructs_a_nifti_volume_and_writes_it_back(tmp_path):
    from hydra import compose, initialize_config_module

    from invdiff.apps.app import run

    p, arr, aff = nifti(tmp_path, shape=(12, 12, 3))
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=gaussian", "shape=[1,8,8]", "solver=pigdm", "solver.steps=2",
                                           "num_samples=1", "progress=false", "operator=random_inpainting",
                                           "data=files", f"data.path={p}", "data.axis=axial"])
    run(cfg, tmp_path / "run")
    out = nib.load(str(tmp_path / "run" / "volumes" / "vol_recon.nii.gz"))
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out.header.get_zooms(), (1.5, 1.8, 3.0), rtol=1e-6)
    data = out.get_fdata()
    assert np.isfinite(data).all() and -500 < data.mean() < 1500  # back in the file's units (0–1000)
    assert torch.isfinite(torch.as_tensor(data)).all()


def test_volume_slices_keep_their_own_scale_when_written_back(tmp_path, monkeypatch):
    """normalize=max scales each slice by its own maximum: the export undoes each slice's scale."""
    from invdiff.data import exports
    from invdiff.data.sources import ImageFiles

    p, arr, aff = nifti(tmp_path, shape=(8, 8, 3))
    arr = arr * np.array([1.0, 10.0, 100.0])[None, None, :]
    nib.save(nib.Nifti1Image(arr.astype(np.float32), aff), str(p))
    samples = ImageFiles(str(p), shape=(1, 8, 8), normalize="max").samples()
    recs = [{"x_hat": s.x.numpy(), "info": s.info, "id": s.id} for s in samples]  # a perfect reconstruction
    monkeypatch.setattr(exports, "read_sample", lambda f: recs[int(f.stem)])
    monkeypatch.setattr(exports, "is_complete", lambda f: True)
    (tmp_path / "run" / "samples").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "run" / "samples" / f"{i}.h5").touch()
    exports.export_results(tmp_path / "run")
    back = nib.load(str(tmp_path / "run" / "volumes" / "vol_recon.nii.gz")).get_fdata()
    np.testing.assert_allclose(back, arr, rtol=1e-5)


def test_tiled_geotiff_restoration_writes_a_georeferenced_geotiff(tmp_path):
    from hydra import compose, initialize_config_module

    from invdiff.apps.app import run

    b = (np.random.default_rng(1).random((96, 96)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "scene.tif", b, extratags=GEO)
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["operator=cloud_inpainting", "prior=patches64", "data=files",
                                           f"data.path={tmp_path / 'scene.tif'}", "shape=[1,96,96]",
                                           "tile_overlap=16", "solver=ddnm", "solver.steps=2", "num_samples=1",
                                           "progress=false"])
    run(cfg, tmp_path / "run")  # 96 × 96 with the 64-pixel prior: tiles
    out = F.read_tiff(tmp_path / "run" / "volumes" / "scene_recon.tif")
    assert out.data.shape == (1, 96, 96)
    assert F.geo_summary(out) == {"epsg": 32633, "transform": (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)}
    assert 0 <= out.data.min() and out.data.max() <= 65535 and out.data.mean() > 1000  # the file's units


def test_training_data_from_nifti_and_dicom_volumes(tmp_path):
    """invdiff-train's data=folder reads NIfTI/DICOM volumes as slices, each volume min–max scaled as a whole."""
    from invdiff.data.training_data import load_images

    p, arr, _ = nifti(tmp_path)  # RAS, axial = voxel axis 2 (6 slices of 20×24)
    d = load_images(p, size=8, axis="axial", slices=[1, 4])
    assert d.images.shape == (2, 1, 8, 8)
    lo, hi = arr.min(), arr.max()
    from invdiff.data.training_data import resize

    np.testing.assert_allclose(d.images[1, 0].numpy(), resize(((arr[:, :, 4] - lo) / (hi - lo))[None], 8)[0], atol=1e-5)
    assert load_images(p, size=8, axis=0).images.shape == (20, 1, 8, 8)  # a voxel axis
    folder = tmp_path / "vols"
    folder.mkdir()
    shutil.copy(p, folder / "a.nii.gz")
    nib.save(nib.Nifti1Image(arr[:, :, :3] * 2, np.eye(4)), str(folder / "b.nii.gz"))
    assert load_images(folder, size=8).images.shape == (9, 1, 8, 8)  # 6 + 3 axial slices
    with pytest.raises(ValueError, match=r"slices \[6\] are outside .*choose data.slices"):
        load_images(p, size=8, slices=[0, 6])
    with pytest.raises(ValueError, match="single-channel"):
        load_images(p, size=8, channels=3)
    ct = load_images(get_testdata_file("CT_small.dcm"), size=128)  # one DICOM file: one slice, at its own size
    assert ct.images.shape == (1, 1, 128, 128)
    assert float(ct.images.min()) == pytest.approx(0.0, abs=1e-6) and float(ct.images.max()) == pytest.approx(1.0, abs=1e-6)


def test_invdiff_train_runs_on_a_nifti_volume(tmp_path):
    from hydra import compose, initialize_config_module

    from invdiff.apps.train_app import run

    p, _, _ = nifti(tmp_path)
    with initialize_config_module("invdiff.configs.train", version_base=None):
        cfg = compose("config", overrides=[f"out={tmp_path / 'run'}", "data=folder", f"data.source={p}", "data.size=16",
                                           "settings.steps=2", "settings.batch=2", "settings.log_every=2",
                                           "settings.ckpt_every=2", "settings.warmup=2", "sample_grid=0",
                                           "settings.arch={width: 8, mults: [1, 2], blocks: 1, emb: 32, patch: 2}"])
    trainer = run(cfg)
    assert (tmp_path / "run" / "prior.safetensors").is_file() and trainer.net is not None
