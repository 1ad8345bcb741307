"""fastMRI raw files: a synthetic file in exactly fastMRI's layout, read back and reconstructed."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

import operators as O
from invdiff.data.fastmri import num_slices, prospective_operator, read_slice, recon_size, rss_target

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize></reconSpace>
  </encoding>
</ismrmrdHeader>"""


def write_fastmri(path, *, slices=3, coils=4, H=48, W=40, h=24, w=24, mask=None, multicoil=True):
    """Phantom slices (object inside the h×w centre, readout oversampled), smooth coil maps."""
    base = resize(shepp_logan_phantom(), (h, w))
    maps = O.birdcage_maps(coils, H, W)
    ks, targets = [], []
    for s in range(slices):
        img = O.center_pad(torch.from_numpy(base * (1 + 0.1 * s)).to(torch.complex128), (H, W))
        k = O.fft2c(maps * img) if multicoil else O.fft2c(img)
        ks.append(k.numpy().astype(np.complex64))
        targets.append((rss_target(k, (h, w)) if multicoil else O.center_crop(O.ifft2c(k).abs(), (h, w))).numpy())
    with h5py.File(path, "w") as f:
        kspace = np.stack(ks)
        if mask is not None:
            kspace = kspace * mask.astype(np.complex64)
            f.create_dataset("mask", data=mask.astype(bool))
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_rss" if multicoil else "reconstruction_esc",
                         data=np.stack(targets).astype(np.float32))
        f.create_dataset("ismrmrd_header", data=HEADER.format(H=H, W=W, h=h, w=w).encode())
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(np.max(targets))
        f.attrs["norm"] = float(np.linalg.norm(targets))
    return maps


def test_reader_roundtrip(tmp_path):
    write_fastmri(tmp_path / "file1000001.h5")
    assert num_slices(tmp_path / "file1000001.h5") == 3
    sl = read_slice(tmp_path / "file1000001.h5", 1)
    assert sl.kspace.shape == (4, 48, 40) and sl.multicoil and sl.mask is None
    assert sl.recon_size == (24, 24) and sl.attrs["acquisition"] == "CORPD_FBK"
    # the target is the RSS of the coil images, centre-cropped (readout oversampling)
    assert torch.allclose(rss_target(sl.kspace, (24, 24)), sl.target, atol=1e-5 * float(sl.target.max()))
    with h5py.File(tmp_path / "file1000001.h5") as f:
        assert recon_size(f["ismrmrd_header"][()]) == (24, 24)
    with pytest.raises(IndexError, match="out of range"):
        read_slice(tmp_path / "file1000001.h5", 3)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("image", data=np.zeros(3))
    with pytest.raises(ValueError, match="no 'kspace'"):
        read_slice(tmp_path / "bad.h5", 0)


def test_prospective_multicoil_reproduces_the_acquired_kspace(tmp_path):
    W = 40
    mask = O.FastMRIMask("equispaced_fraction", [0.25], [2])((1, W), seed=O.fastmri_seed("file1000002.h5"))[0].numpy()
    maps = write_fastmri(tmp_path / "file1000002.h5", mask=mask)
    sl = read_slice(tmp_path / "file1000002.h5", 0)
    assert sl.mask is not None and np.array_equal(sl.mask.numpy(), mask)
    # with the true maps the operator reproduces the file's k-space at every sampled location
    op, y = prospective_operator(sl, coil_maps=maps)
    assert op.meas_size == tuple(y.shape) == (2, 4, 48, 40)
    truth = torch.from_numpy(resize(shepp_logan_phantom(), (24, 24)))  # slice 0 of the file, real
    x = torch.stack([truth, torch.zeros_like(truth)])[None]
    assert torch.allclose(op.A(x)[0], y.to(torch.float64), atol=1e-5)
    # ESPIRiT maps from the file's own calibration lines give a consistent reconstruction
    op_est, _ = prospective_operator(sl)
    rec = op_est.A_dagger(y[None].to(torch.float64))
    mag = torch.complex(rec[0, 0], rec[0, 1]).abs()
    ref = torch.from_numpy(resize(shepp_logan_phantom(), (24, 24)))
    assert float((mag - ref).norm() / ref.norm()) < 0.1


def test_espirit_recovers_smooth_coil_maps():
    H = W = 48
    img = torch.from_numpy(resize(shepp_logan_phantom(), (H, W))).to(torch.complex128)
    S = O.birdcage_maps(6, H, W)
    maps = O.espirit_maps(O.fft2c(S * img), calib=16, kernel=5)
    support = img.abs() > 0.05
    # equal up to one phase per pixel: |<Ŝ(r), S(r)>| = 1 where there is signal
    corr = (maps * S.conj()).sum(0).abs()
    assert float(corr[support].mean()) > 0.999 and float(corr[support].min()) > 0.99
    with pytest.raises(ValueError, match="not fully sampled"):
        k = O.fft2c(S * img)
        k[:, :, W // 2] = 0
        O.espirit_maps(k, calib=16)
