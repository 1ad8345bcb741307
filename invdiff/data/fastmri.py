"""fastMRI raw HDF5 files, read slice by slice (h5py; the volume is never loaded whole).

Layout (fastMRI): ``kspace`` ``[slices, coils, H, W]`` (multi-coil) or ``[slices, H, W]``
(single-coil) complex64, in centred k-space with H the readout (oversampled, e.g. 640) and W the
phase encodes; targets ``reconstruction_rss`` (multi-coil) or ``reconstruction_esc``
(single-coil) ``[slices, h, w]`` (320×320) = centre crop of the image; ``ismrmrd_header`` XML with
the recon matrix size; attributes ``acquisition``, ``max``, ``norm``, …; test-set files also hold
the sampling ``mask`` ``[W]`` of their already undersampled k-space.

Prospective reconstruction takes the k-space and mask as they are (no synthetic degradation):
:func:`prospective_operator` builds the matching operator, with the readout oversampling modelled
as zero-padding of the cropped image (``kspace_size``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

import operators as O

_ISMRMRD = "{http://www.ismrm.org/ISMRMRD}"


@dataclass
class FastMRISlice:
    """One slice: ``kspace`` complex ``[N, H, W]`` (``N = 1`` for single-coil files), the file's
    ``mask`` ``[W]`` if it has one, the ``target`` ``[h, w]`` if it has one, the recon size and
    the file's attributes."""

    kspace: Tensor
    mask: Tensor | None
    target: Tensor | None
    recon_size: tuple[int, int]
    attrs: dict = field(default_factory=dict)
    fname: str = ""
    slice_idx: int = 0
    multicoil: bool = True


def _open(path: str | Path) -> h5py.File:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"fastMRI file not found: {p}")
    try:
        f = h5py.File(p, "r")
    except OSError as err:
        raise ValueError(f"{p} is not a readable HDF5 file ({err})") from err
    if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
        f.close()
        raise ValueError(f"{p} has no 'kspace' dataset: not a fastMRI raw file")
    if f["kspace"].ndim not in (3, 4) or 0 in f["kspace"].shape:
        shape = list(f["kspace"].shape)
        f.close()
        raise ValueError(f"{p}: 'kspace' has shape {shape}; a fastMRI raw file holds [slices, H, W] (single-coil) or "
                         "[slices, coils, H, W] (multi-coil) k-space")
    return f


def num_slices(path: str | Path) -> int:
    with _open(path) as f:
        return int(f["kspace"].shape[0])


def recon_size(header: bytes | str | None, default=(320, 320)) -> tuple[int, int]:
    """The ``reconSpace`` matrix size ``(x, y)`` from the ISMRMRD header (fastMRI's crop size)."""
    if header is None:
        return tuple(default)
    root = ET.fromstring(header)
    node = root.find(f"{_ISMRMRD}encoding/{_ISMRMRD}reconSpace/{_ISMRMRD}matrixSize")
    if node is None:
        return tuple(default)
    return int(node.find(f"{_ISMRMRD}x").text), int(node.find(f"{_ISMRMRD}y").text)


def read_slice(path: str | Path, slice_idx: int) -> FastMRISlice:
    """Read one slice of a fastMRI raw file."""
    with _open(path) as f:
        n = f["kspace"].shape[0]
        if not 0 <= slice_idx < n:
            raise IndexError(f"{path}: slice {slice_idx} out of range (the file has {n})")
        k = np.asarray(f["kspace"][slice_idx])
        multicoil = k.ndim == 3
        kspace = torch.from_numpy(k if multicoil else k[None]).to(torch.complex128)
        mask = torch.from_numpy(np.asarray(f["mask"][()], dtype=np.float64)) if "mask" in f else None
        key = "reconstruction_rss" if "reconstruction_rss" in f else ("reconstruction_esc" if "reconstruction_esc" in f else None)
        target = torch.from_numpy(np.asarray(f[key][slice_idx], dtype=np.float64)) if key else None
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
        size = tuple(target.shape) if target is not None else recon_size(header)
        attrs = {k_: (v.item() if hasattr(v, "item") else v) for k_, v in f.attrs.items()}
    return FastMRISlice(kspace, mask, target, size, attrs, Path(path).name, slice_idx, multicoil)


def rss_target(kspace: Tensor, size: tuple[int, int]) -> Tensor:
    """fastMRI's target: root-sum-of-squares of the coil images, centre-cropped to ``size``."""
    return O.center_crop(O.ifft2c(kspace).abs().pow(2).sum(0).sqrt(), size)


def sampled_columns(kspace: Tensor) -> Tensor:
    """The phase-encode columns holding data (a mask ``[W]`` inferred from zero-filled k-space)."""
    return (kspace.abs().sum(dim=tuple(range(kspace.ndim - 1))) > 0).to(torch.float64)


def prospective_operator(sl: FastMRISlice, coil_maps: Tensor | None = None, *, complex_image: bool = True,
                         calib: int | None = None) -> tuple[O.LinearOperator, Tensor]:
    """The operator and measurement ``y`` for reconstructing ``sl`` as acquired.

    The mask is the file's own (or the sampled columns); the image is the recon-size centre crop,
    zero-padded to the k-space grid inside the operator. Multi-coil maps are given or estimated
    with :func:`operators.espirit_maps` from the fully sampled centre (``calib`` columns, default:
    the contiguous sampled block around the centre).
    """
    N, H, W = sl.kspace.shape
    mask = sl.mask if sl.mask is not None else sampled_columns(sl.kspace)
    if mask.numel() != W:
        raise ValueError(f"{sl.fname}: mask has {mask.numel()} entries for {W} phase encodes")
    kspace = sl.kspace * mask  # exactly the acquired samples
    y = torch.stack([kspace.real, kspace.imag])  # [2, N, H, W]
    img_size = (2 if complex_image else 1, *sl.recon_size)
    if not sl.multicoil:
        return O.SingleCoilMRI(mask, img_size, kspace_size=(H, W)), y[:, 0]
    if coil_maps is None:
        if calib is None:  # the widest fully sampled block centred as ESPIRiT (and fastMRI) centre it
            calib = next((c for c in range(W, 0, -1) if bool(mask[(W - c + 1) // 2 : (W - c + 1) // 2 + c].all())), 0)
        if calib < 8:
            raise ValueError(f"{sl.fname}: only {calib} fully sampled centre columns; pass coil_maps or calib")
        coil_maps = O.espirit_maps(kspace, calib=(H, calib), kernel=min(6, calib))  # ACS columns span all rows
    return O.MultiCoilMRI(mask, coil_maps, img_size, kspace_size=(H, W)), y
