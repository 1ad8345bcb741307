"""The scientist's own file formats, read with their metadata and written back with it.

* **NIfTI** (``.nii``, ``.nii.gz``; nibabel): a 3-D volume as a stack of 2-D slices along a stated
  axis — a voxel axis (0, 1, 2) or an anatomical plane (``axial``/``coronal``/``sagittal``, found
  from the affine with ``nibabel.aff2axcodes``). Written back with the input's header and affine
  (the in-plane voxel size rescaled when the slices were resized).
* **DICOM** (pydicom): one file, or a folder holding one series, sorted by each slice's position
  along the slice normal (``ImagePositionPatient`` · (row × column direction cosines)), with
  ``InstanceNumber`` as the fallback; stored values through ``RescaleSlope``/``RescaleIntercept``.
  Written back as a *derived* series (new Series/SOP Instance UIDs, ``ImageType`` DERIVED\\SECONDARY,
  the same patient/study, position, orientation and pixel spacing), uncompressed.
* **TIFF / GeoTIFF** (tifffile): any number of bands with the band axis known from the file's own
  axes (interleaved samples ``S``, planar channels ``C``/``S``, or a stated ``band_axis``), never a
  silent drop of bands; the GeoTIFF tags (pixel scale, tie points or transformation, GeoKey
  directory with its double and ASCII parameters, GDAL metadata and nodata) are carried byte for byte
  into the written GeoTIFF, the pixel scale rescaled when the image was resized.

tifffile rather than rasterio: it is pure Python (rasterio's wheels carry a GDAL build), reads every
band layout TIFF has, and copies the GeoTIFF tags unchanged — the result is georeferenced exactly as
the input, without reprojection. What it does not do is interpret a CRS beyond the GeoKeys' EPSG
codes (:func:`geo_summary`); reproject with rasterio/GDAL if you need to.

Each reader returns a :class:`Volume`: ``data`` ``[S, H, W]`` (NIfTI/DICOM slices) or
``[B, H, W]`` (TIFF bands) as float64 in the file's physical units, and what is needed to write a
result back (:func:`write_like`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TIFF_SUFFIXES = (".tif", ".tiff")
PLANES = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}
#: GeoTIFF and GDAL tags carried into a written GeoTIFF (code → name).
GEO_TAGS = {33550: "ModelPixelScaleTag", 33922: "ModelTiepointTag", 34264: "ModelTransformationTag",
            34735: "GeoKeyDirectoryTag", 34736: "GeoDoubleParamsTag", 34737: "GeoAsciiParamsTag",
            42112: "GDAL_METADATA", 42113: "GDAL_NODATA"}


@dataclass
class Volume:
    """A stack of 2-D images read from one file or series, with what writing back needs.

    :param data: ``[S, H, W]`` float64 — slices (NIfTI, DICOM) or bands (TIFF).
    :param format: ``"nifti"``, ``"dicom"`` or ``"tiff"``.
    :param axis: what the first axis of ``data`` is (``"voxel axis 2 (axial)"``, ``"slice normal"``,
        ``"bands"``).
    :param meta: the format's own metadata (header and affine, DICOM datasets, TIFF tags).
    :param source: the path read.
    """

    data: np.ndarray
    format: str
    axis: str
    meta: dict = field(default_factory=dict)
    source: str = ""

    def describe(self) -> str:
        return f"{self.format} {self.source}: {self.data.shape[0]} × {self.data.shape[1]}×{self.data.shape[2]} ({self.axis})"


def kind_of(path: str | Path) -> str | None:
    """``"nifti"``, ``"dicom"``, ``"tiff"`` or ``None`` from a path (a folder of ``.dcm`` files, or of
    files with DICOM's ``DICM`` preamble, is DICOM)."""
    p = Path(str(path))
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file()]
        if files and all(f.name.lower().endswith(DICOM_SUFFIXES) or _has_dicm(f) for f in files):
            return "dicom"
    elif p.is_file() and _has_dicm(p):
        return "dicom"
    return None


def _has_dicm(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:] == b"DICM"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ NIfTI

def _nifti_axis(img, axis) -> tuple[int, str]:
    import nibabel as nib

    if isinstance(axis, str) and axis.lower() in PLANES:
        codes = nib.aff2axcodes(img.affine)
        hits = [i for i, c in enumerate(codes) if c in PLANES[axis.lower()]]
        if len(hits) != 1:
            raise ValueError(f"the affine's axis codes are {codes}: no single voxel axis is {axis}; give the voxel "
                             "axis (0, 1 or 2) as the slice axis instead")
        return hits[0], f"voxel axis {hits[0]} ({axis.lower()}, orientation {''.join(codes)})"
    try:
        i = int(axis)
    except (TypeError, ValueError):
        raise ValueError(f"slice axis {axis!r}: give 0, 1, 2 or one of {', '.join(PLANES)}") from None
    if i not in (0, 1, 2):
        raise ValueError(f"slice axis {i}: a NIfTI volume has voxel axes 0, 1 and 2")
    return i, f"voxel axis {i} (orientation {''.join(nib.aff2axcodes(img.affine))})"


def read_nifti(path: str | Path, axis="axial") -> Volume:
    """A 3-D NIfTI volume (a 4-D file with one volume is accepted) as slices along ``axis``."""
    import nibabel as nib

    p = Path(str(path))
    try:
        img = nib.load(str(p))
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001  (every nibabel failure means the file is not a readable NIfTI)
        raise ValueError(f"could not read NIfTI {p}: {str(err).splitlines()[0]}") from err
    data = np.asarray(img.get_fdata(dtype=np.float64))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"NIfTI {p} has shape {list(data.shape)}: expected a 3-D volume (or 4-D with one volume); "
                         "split a time series into volumes first")
    ax, desc = _nifti_axis(img, axis)
    return Volume(np.ascontiguousarray(np.moveaxis(data, ax, 0)), "nifti", desc,
                  {"affine": np.asarray(img.affine, dtype=np.float64), "header": img.header.copy(), "slice_axis": ax,
                   "shape": tuple(data.shape)}, str(p))


def resized_affine(affine: np.ndarray, axes, old, new) -> np.ndarray:
    """The affine of a volume whose voxel ``axes`` were resampled from ``old`` to ``new`` voxels over
    the same field of view (voxel edges kept: old index = (new index + ½)·s − ½, s = old/new)."""
    M = np.eye(4)
    for a, o, n in zip(axes, old, new):
        s = o / n
        M[a, a], M[a, 3] = s, (s - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ M


def write_nifti(path: str | Path, slices: np.ndarray, like: Volume) -> Path:
    """``slices`` ``[S, h, w]`` (one per slice of ``like``) as a float32 NIfTI with ``like``'s header and
    affine; the in-plane voxel size is rescaled when ``h × w`` differs from the input's slices."""
    import nibabel as nib

    slices = np.asarray(slices, dtype=np.float64)
    S, h, w = like.data.shape
    if slices.ndim != 3 or slices.shape[0] != S:
        raise ValueError(f"write_nifti: {list(slices.shape)} is not {S} slices [S, H, W] of {like.source}")
    ax = like.meta["slice_axis"]
    plane = [a for a in range(3) if a != ax]
    affine = resized_affine(like.meta["affine"], plane, (h, w), slices.shape[1:])
    hdr = like.meta["header"].copy()
    hdr.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.moveaxis(slices, 0, ax).astype(np.float32), affine, header=hdr)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=int(like.meta["header"]["qform_code"]) or 1)
    img.set_sform(affine, code=int(like.meta["header"]["sform_code"]) or 1)
    p = Path(str(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(p))
    return p


# ------------------------------------------------------------------------------------------ DICOM

def _dicom_files(p: Path) -> list[Path]:
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and (f.name.lower().endswith(DICOM_SUFFIXES) or _has_dicm(f)))
        if not files:
            raise ValueError(f"no DICOM files (.dcm, or files with the DICM preamble) in folder {p}")
        return files
    if not p.exists():
        raise FileNotFoundError(f"DICOM {p} does not exist")
    return [p]


def slice_position(ds) -> float | None:
    """Position of a slice along its normal (mm): ImagePositionPatient · (row × column cosines)."""
    ipp, iop = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
    if ipp is None or iop is None:
        return None
    iop = np.asarray([float(v) for v in iop])
    return float(np.dot(np.cross(iop[:3], iop[3:]), [float(v) for v in ipp]))


def read_dicom(path: str | Path) -> Volume:
    """One DICOM file or a folder with one series, as slices ``[S, H, W]`` in stored physical units
    (pixel values × RescaleSlope + RescaleIntercept: Hounsfield units for CT)."""
    import pydicom

    p = Path(str(path))
    sets = []
    for f in _dicom_files(p):
        try:
            sets.append((f, pydicom.dcmread(str(f))))
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"could not read DICOM {f}: {str(err).splitlines()[0]}") from err
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in sets}
    if len(series) > 1:
        raise ValueError(f"{p} holds {len(series)} DICOM series ({', '.join(sorted(series))}): put each series in its "
                         "own folder and give that folder as the path")
    pos = [slice_position(ds) for _, ds in sets]
    if len(sets) > 1:
        if all(v is not None for v in pos):
            order = np.argsort(pos, kind="stable")
            if len(set(np.round(pos, 6))) != len(pos):
                raise ValueError(f"{p}: two DICOM files share a slice position; the folder holds duplicates or more "
                                 "than one acquisition")
            how = "slice normal (ImagePositionPatient · row × column cosines)"
        elif all(getattr(ds, "InstanceNumber", None) is not None for _, ds in sets):
            order = np.argsort([int(ds.InstanceNumber) for _, ds in sets], kind="stable")
            how = "InstanceNumber (no ImagePositionPatient/ImageOrientationPatient)"
        else:
            raise ValueError(f"{p}: the DICOM files carry neither positions nor InstanceNumber, so their order is "
                             "unknown; give one file at a time")
        sets = [sets[i] for i in order]
    else:
        how = "one file"
    slices = []
    for f, ds in sets:
        if "PixelData" not in ds:
            raise ValueError(f"DICOM {f} holds no image (PixelData)")
        try:
            a = np.asarray(ds.pixel_array, dtype=np.float64)
        except Exception as err:  # noqa: BLE001  (e.g. a compressed transfer syntax without its decoder)
            raise ValueError(f"could not decode the pixels of DICOM {f} ({str(err).splitlines()[0]}); install the "
                             "decoder pydicom names (pylibjpeg, gdcm) or convert the series to uncompressed") from err
        if a.ndim != 2:
            raise ValueError(f"DICOM {f} holds an image of shape {list(a.shape)}; only single-frame gray slices are read")
        slope, icpt = float(getattr(ds, "RescaleSlope", 1.0) or 1.0), float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append(a * slope + icpt)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ValueError(f"{p}: the slices have different sizes {sorted(shapes)}")
    return Volume(np.stack(slices), "dicom", f"slices sorted by {how}",
                  {"datasets": [ds for _, ds in sets], "files": [str(f) for f, _ in sets]}, str(p))


def write_dicom(folder: str | Path, slices: np.ndarray, like: Volume, description: str = "invdiff reconstruction") -> list[Path]:
    """``slices`` ``[S, h, w]`` as a derived DICOM series in ``folder`` (one file per slice): each
    slice's dataset is the input's with new Series/SOP Instance UIDs, ImageType DERIVED\\SECONDARY,
    16-bit unsigned pixels with a RescaleSlope/Intercept that maps them to the values' range, and
    PixelSpacing rescaled when the slices were resized; uncompressed (Explicit VR Little Endian)."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slices = np.asarray(slices, dtype=np.float64)
    sets = like.meta["datasets"]
    if slices.ndim != 3 or slices.shape[0] != len(sets):
        raise ValueError(f"write_dicom: {list(slices.shape)} is not {len(sets)} slices [S, H, W] of {like.source}")
    if not np.isfinite(slices).all():
        raise ValueError("write_dicom: the slices contain NaN or Inf")
    lo, hi = float(slices.min()), float(slices.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    out_dir = Path(str(folder))
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid, paths = generate_uid(), []
    for i, (src, img) in enumerate(zip(sets, slices)):
        ds = copy.deepcopy(src)
        h0, w0 = int(ds.Rows), int(ds.Columns)
        pix = np.round((img - lo) / slope).clip(0, 65535).astype(np.uint16)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesDescription = description
        ds.DerivationDescription = f"{description} from series {getattr(src, 'SeriesInstanceUID', '')}"
        ds.SeriesNumber = int(getattr(src, "SeriesNumber", 0) or 0) + 1000
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = pix.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{lo:.10g}"
        for tag in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue",
                    "NumberOfFrames", "PlanarConfiguration"):
            if tag in ds:
                delattr(ds, tag)
        if "PixelSpacing" in ds and (pix.shape != (h0, w0)):
            r, c = (float(v) for v in ds.PixelSpacing)
            ds.PixelSpacing = [f"{r * h0 / pix.shape[0]:.10g}", f"{c * w0 / pix.shape[1]:.10g}"]
            if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
                # the first voxel's centre moves by (s − 1)/2 voxels along the row and column directions
                iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
                sr, sc = h0 / pix.shape[0], w0 / pix.shape[1]
                shift = iop[:3] * (sc - 1) / 2 * c + iop[3:] * (sr - 1) / 2 * r
                ds.ImagePositionPatient = [f"{v:.10g}" for v in np.asarray([float(v) for v in ds.ImagePositionPatient]) + shift]
        ds.PixelData = pix.tobytes()
        p = out_dir / f"{i:04d}.dcm"
        ds.save_as(str(p), enforce_file_format=True)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------- TIFF

def _band_axis(axes: str, shape, band_axis) -> int | None:
    """The band axis of a TIFF series from its axes letters, or the stated one."""
    if band_axis is not None:
        if band_axis in ("first", "last"):
            return 0 if band_axis == "first" else len(shape) - 1
        return int(band_axis) % len(shape)
    if len(shape) == 2:
        return None
    spatial = [i for i, a in enumerate(axes) if a in "YX"]
    other = [i for i, a in enumerate(axes) if a not in "YX"]
    if len(spatial) == 2 and len(other) == 1:
        return other[0]
    raise ValueError(f"TIFF axes {axes!r} (shape {list(shape)}): cannot tell which axis holds the bands; give "
                     "data.band_axis=first|last|<index>")


def read_tiff(path: str | Path, band_axis=None) -> Volume:
    """A (Geo)TIFF as bands ``[B, H, W]`` (float64, values as stored): the band axis from the file's
    own axes (interleaved or planar), or ``band_axis``; the GeoTIFF/GDAL tags kept for writing back."""
    import tifffile

    p = Path(str(path))
    if not p.exists():
        raise FileNotFoundError(f"TIFF {p} does not exist")
    try:
        with tifffile.TiffFile(str(p)) as tif:
            series = tif.series[0]
            a, axes = series.asarray(), series.axes
            page = tif.pages[0]
            tags = {}
            for code in GEO_TAGS:
                t = page.tags.get(code)
                if t is not None:
                    tags[code] = (int(t.dtype), int(t.count), t.value)
            geo = dict(page.geotiff_tags or {}) if page.is_geotiff else {}
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"could not read TIFF {p}: {str(err).splitlines()[0]}") from err
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise ValueError(f"TIFF {p} has axes {axes!r} (shape {list(a.shape)}): expected one image [Y, X] with an "
                         "optional band axis")
    ax = _band_axis(axes, a.shape, band_axis)
    bands = a[None] if ax is None else np.moveaxis(a, ax, 0)
    return Volume(np.ascontiguousarray(bands, dtype=np.float64), "tiff",
                  f"bands (axis {ax if ax is not None else 'none'} of {axes!r})",
                  {"dtype": str(a.dtype), "geo_tags": tags, "geotiff": geo, "axes": axes}, str(p))


def geo_summary(vol: Volume) -> dict:
    """EPSG code (from the GeoKeys) and the GDAL-style affine ``(a, b, c, d, e, f)`` — x = a·col +
    b·row + c, y = d·col + e·row + f at pixel corners — of a GeoTIFF, as far as its tags say."""
    tags = vol.meta.get("geo_tags", {})
    geo = vol.meta.get("geotiff", {})
    epsg = None
    for key in ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey"):
        v = geo.get(key)
        if v is not None:
            epsg = int(getattr(v, "value", v))
            break
    transform = None
    if 34264 in tags:
        m = np.asarray(tags[34264][2], dtype=np.float64).reshape(4, 4)
        transform = (m[0, 0], m[0, 1], m[0, 3], m[1, 0], m[1, 1], m[1, 3])
    elif 33550 in tags and 33922 in tags:
        sx, sy = (float(v) for v in tags[33550][2][:2])
        i, j, _, x, y, _ = (float(v) for v in tags[33922][2][:6])
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    return {"epsg": epsg, "transform": transform}


def write_tiff(path: str | Path, bands: np.ndarray, like: Volume) -> Path:
    """``bands`` ``[B, h, w]`` as a float32 planar TIFF carrying ``like``'s GeoTIFF/GDAL tags (the
    pixel scale, and a transformation matrix's linear part, rescaled when ``h × w`` differs)."""
    import tifffile

    bands = np.asarray(bands, dtype=np.float32)
    if bands.ndim != 3:
        raise ValueError(f"write_tiff: expected bands [B, H, W], got {list(bands.shape)}")
    H, W = like.data.shape[1:]
    sy, sx = H / bands.shape[1], W / bands.shape[2]
    extratags = []
    for code, (dtype, count, value) in like.meta.get("geo_tags", {}).items():
        if code == 33550 and (sx, sy) != (1.0, 1.0):
            value = (float(value[0]) * sx, float(value[1]) * sy, *value[2:])
        if code == 34264 and (sx, sy) != (1.0, 1.0):
            m = np.asarray(value, dtype=np.float64).reshape(4, 4).copy()
            m[:, 0] *= sx
            m[:, 1] *= sy
            value = tuple(m.ravel())
        if code == 42113 and isinstance(value, (int, float)):
            value = str(value)
        if isinstance(value, str):
            count = len(value) + 1
        elif isinstance(value, (tuple, list)):
            count = len(value)
        extratags.append((code, dtype, count, value, True))
    p = Path(str(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(p), bands if bands.shape[0] > 1 else bands[0], photometric="minisblack",
                     planarconfig="separate" if bands.shape[0] > 1 else None, extratags=extratags,
                     metadata=None)
    return p


# ------------------------------------------------------------------------------------------ common

def read_volume(path: str | Path, axis="axial", band_axis=None) -> Volume:
    """Any of the three formats, chosen by :func:`kind_of`."""
    kind = kind_of(path)
    if kind == "nifti":
        return read_nifti(path, axis)
    if kind == "dicom":
        return read_dicom(path)
    if kind == "tiff":
        return read_tiff(path, band_axis)
    raise ValueError(f"{path} is not a NIfTI (.nii, .nii.gz), DICOM (.dcm or a folder of them) or TIFF file")


def write_like(path: str | Path, data: np.ndarray, like: Volume) -> Path:
    """Write ``data`` (same first axis as ``like.data``) in ``like``'s format with its metadata: a
    ``.nii.gz`` file, a folder of DICOM files, or a ``.tif``."""
    if like.format == "nifti":
        return write_nifti(path, data, like)
    if like.format == "dicom":
        write_dicom(path, data, like)
        return Path(str(path))
    return write_tiff(path, data, like)
