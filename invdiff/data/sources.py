"""What the ``invdiff`` app reconstructs: the ``data/`` config group.

A source lists :class:`Sample` s through ``samples(operator)``. Two modes:

* **synthetic** — a ground truth ``x`` (physical units, ``[C, H, W]``) that the app degrades with
  the configured operator and noise model, from a recorded seed: :class:`Phantoms` (the held-out
  phantoms of :mod:`invdiff.phantoms`), :class:`SampleImages` (scikit-image's bundled images),
  :class:`ImageFiles` (PNG/TIFF files, a folder, ``.npy``, HDF5 datasets);
* **real measurement** — the user's own ``y`` and no degradation: :class:`Measurements` (``.npy``
  or HDF5, with an optional ground truth) and :class:`FastMRI` (raw fastMRI files with their own
  k-space, mask and coil sensitivities; the sample carries its own operator).

Sources only read and shape data; the app checks shapes, value ranges and dtypes against the
operator and the prior before any sampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..phantoms import EVAL_SEEDS, phantoms, shepp_logan
from .images import SAMPLE_IMAGES, bundled_skimage_images, sample_image, unknown_image_message
from .training_data import as_chw, load_array, read_arrays, resize

log = logging.getLogger("invdiff")


@dataclass
class Sample:
    """One item to reconstruct.

    :param id: unique name (file names of results: ``samples/{id}.h5``).
    :param x: ground truth ``[C, H, W]`` float64 in physical units, or ``None``.
    :param y: measured data (the operator's ``meas_size``), or ``None`` (synthetic: simulate it).
    :param operator: the data's own operator (e.g. a fastMRI file's mask), or ``None``.
    :param sigma_y: the noise level the data state or estimate (measurement units), or ``None``.
    :param info: provenance (file, slice, intensity scale), saved with the result.
    """

    id: str
    x: Tensor | None = None
    y: Tensor | None = None
    operator: object | None = None
    sigma_y: float | None = None
    info: dict = field(default_factory=dict)


def _shape(shape) -> tuple[int, int, int]:
    C, H, W = (int(s) for s in shape)
    return C, H, W


class Phantoms:
    """The held-out evaluation phantoms (never trained on by ``phantom64``). ``split="test"``:
    Shepp–Logan, then phantoms of ``EVAL_SEEDS[:31]``; ``split="val"`` (for tuning benchmark
    hyperparameters, never the test images): phantoms of ``EVAL_SEEDS[32:]``. ``n`` images from
    position ``first`` of the split."""

    mode = "synthetic"
    VAL_OFFSET = 32

    def __init__(self, n: int = 1, shape=(1, 64, 64), first: int = 0, split: str = "test"):
        C, H, W = _shape(shape)
        if C != 1 or H != W:
            raise ValueError(f"phantoms are single-channel squares; got shape {[C, H, W]}")
        if split not in ("test", "val"):
            raise ValueError(f"data.split must be 'test' or 'val', got {split!r}")
        size = self.VAL_OFFSET if split == "test" else len(EVAL_SEEDS) - self.VAL_OFFSET
        for key, v in (("n", n), ("first", first)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"data.{key} must be a whole number, got {v!r}")
        if n < 1:
            raise ValueError(f"data.n must be at least 1 (phantoms to reconstruct), got {n}; the {split} split has "
                             f"{size} held-out phantoms (data.n=1 to {size})")
        if first < 0 or first + n > size:
            raise ValueError(f"data: n = {n}, first = {first}: the {split} split has {size} held-out phantoms, so "
                             f"data.first must be >= 0 and data.first + data.n <= {size}")
        self.n, self.size, self.first, self.split = int(n), H, int(first), split

    def samples(self, operator=None) -> list[Sample]:
        out = []
        for i in range(self.first, self.first + self.n):
            if self.split == "test" and i == 0:
                out.append(Sample("shepp_logan", shepp_logan(self.size)[0].double(), info={"source": "shepp_logan"}))
                continue
            seed = EVAL_SEEDS[i - 1] if self.split == "test" else EVAL_SEEDS[self.VAL_OFFSET + i]
            out.append(Sample(f"phantom_{seed}", phantoms([seed], self.size)[0].double(),
                              info={"source": "invdiff.phantoms", "phantom_seed": seed, "split": self.split}))
        return out

    def describe(self) -> str:
        return f"{self.n} held-out phantom(s) {self.size}×{self.size} ({self.split} split)"


class ImageViews:
    """Views of scikit-image's bundled images: each image whole and as ``crops`` seeded random
    square crops (sides 128, 256, 384, … pixels, capped by the image), all downscaled
    (anti-aliased) to ``shape``; gray. The self-contained natural-image benchmarks use
    ``camera``/``moon`` as the test split (held out from ``patches64``'s training) and
    ``coins``/``cell`` as the validation split."""

    mode = "synthetic"
    SPLITS = {"test": ("camera", "moon"), "val": ("coins", "cell")}

    def __init__(self, names=None, split: str = "test", crops: int = 3, seed: int = 0, shape=(1, 64, 64)):
        if names is None:
            if split not in self.SPLITS:
                raise ValueError(f"data.split must be one of {list(self.SPLITS)}, got {split!r}")
            names = self.SPLITS[split]
        self.names = [names] if isinstance(names, str) else list(names)
        self.crops, self.seed, self.shape, self.split = int(crops), int(seed), _shape(shape), split
        if self.shape[0] != 1:
            raise ValueError(f"data: image views are gray; got shape {list(self.shape)}")
        if not self.names:
            raise ValueError(f"data.names is empty; name at least one of {', '.join(bundled_skimage_images())}")
        for name in self.names:
            if str(name) not in bundled_skimage_images():
                raise ValueError(unknown_image_message(str(name), bundled_skimage_images()))

    def samples(self, operator=None) -> list[Sample]:
        from skimage import data as skdata
        from skimage.color import rgb2gray
        from skimage import transform

        _, H, W = self.shape
        out = []
        for name in self.names:
            img = np.asarray(getattr(skdata, name)())
            img = rgb2gray(img[..., :3]) if img.ndim == 3 else img.astype(np.float64) / np.iinfo(img.dtype).max \
                if np.issubdtype(img.dtype, np.integer) else img.astype(np.float64)
            rng = np.random.default_rng(self.seed)
            views = [("whole", img)]
            for k in range(self.crops):
                side = min(128 * (k + 1), *img.shape)
                top, left = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
                views.append((f"crop{side}", img[top: top + side, left: left + side]))
            for tag, v in views:
                x = np.clip(transform.resize(v, (H, W), anti_aliasing=True), 0, 1)
                out.append(Sample(f"{name}_{tag}", torch.from_numpy(x)[None].double(),
                                  info={"source": f"skimage.data.{name}", "view": tag, "split": self.split}))
        return out

    def describe(self) -> str:
        return f"{', '.join(self.names)}: whole + {self.crops} crops each, {self.shape[1]}×{self.shape[2]} ({self.split} split)"


class SampleImages:
    """Images bundled with scikit-image (no download), resized to ``shape``."""

    mode = "synthetic"

    def __init__(self, names=("camera",), shape=(1, 64, 64)):
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError(f"data.names is empty; name at least one of {', '.join(SAMPLE_IMAGES)}")
        for n in names:
            if n not in SAMPLE_IMAGES:
                raise ValueError(unknown_image_message(str(n), SAMPLE_IMAGES))
        self.names, self.shape = names, _shape(shape)

    def samples(self, operator=None) -> list[Sample]:
        return [Sample(n, sample_image(n, self.shape)[0], info={"source": f"skimage.data.{n}"}) for n in self.names]

    def describe(self) -> str:
        return f"scikit-image sample image(s) {', '.join(self.names)}"


class Brain:
    """Slices of real anatomy: the MNI152 T1 template in nilearn's wheel (:mod:`invdiff.data.brain`),
    one plane (``axial``/``coronal``/``sagittal``) and one fixed slab (``test``: 10 slices, ``val``:
    5, ``train``), ``n`` slices from position ``first`` (``n = None``: all of the slab), resized to
    ``shape``; gray, in [0, 1]."""

    mode = "synthetic"

    def __init__(self, plane: str = "axial", split: str = "test", n: int | None = None, first: int = 0,
                 shape=(1, 64, 64)):
        from .brain import slab

        C, H, W = _shape(shape)
        if C != 1 or H != W:
            raise ValueError(f"data=brain gives single-channel square slices; got shape {[C, H, W]}")
        ids = slab(plane, split)
        n = len(ids) - int(first) if n is None else n
        for key, v in (("n", n), ("first", first)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"data.{key} must be a whole number, got {v!r}")
        if n < 1 or first < 0 or first + n > len(ids):
            raise ValueError(f"data: n = {n}, first = {first}: the {plane} {split} slab has {len(ids)} slices, so "
                             f"data.first must be >= 0, data.n >= 1 and data.first + data.n <= {len(ids)}")
        self.plane, self.split, self.ids, self.size = plane, split, ids[int(first): int(first) + int(n)], H

    def samples(self, operator=None) -> list[Sample]:
        from .brain import MNI_FILE, brain_slice

        return [Sample(f"mni152_{self.plane}{i}", torch.from_numpy(brain_slice(self.plane, i, self.size).copy())[None],
                       info={"source": f"nilearn {MNI_FILE}", "plane": self.plane, "slice": i, "split": self.split})
                for i in self.ids]

    def describe(self) -> str:
        return (f"MNI152 T1 {self.plane} slices {self.ids[0]}–{self.ids[-1]} ({len(self.ids)}, {self.split} slab), "
                f"{self.size}×{self.size}")


def _to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """Raw array → ``[C, H, W]``; a complex array becomes 2 real channels (real, imag)."""
    if np.iscomplexobj(a):
        a = np.squeeze(a, 0) if a.ndim == 3 and a.shape[0] == 1 else a
        if a.ndim != 2:
            raise ValueError(f"a complex ground truth must be one [H, W] image, got shape {list(a.shape)}")
        a = np.stack([a.real, a.imag])
        if channels != 2:
            raise ValueError(f"complex images are 2-channel (real, imag) data; the problem has {channels} channel(s)")
        return a.astype(np.float64)
    return as_chw(a, channels)


class ImageFiles:
    """Ground truths from an image file, a folder of images, ``.npy``, ``file.h5:dataset``, a NIfTI
    volume (``.nii``/``.nii.gz``) or a DICOM file / series folder (:mod:`invdiff.data.formats`).

    :param path: the file, folder, or ``file.h5:dataset``.
    :param normalize: ``"auto"`` (integer images divided by their type's maximum, floats kept;
        a NIfTI/DICOM volume mapped to [0, 1] by its own minimum and maximum), ``"max"`` (each image
        divided by its maximum absolute value) or ``"none"``. The scale and offset are saved with
        each sample, and the volumes/GeoTIFFs written back (``volumes/``) are in the file's units.
    :param limit: use only the first ``limit`` images (slices of a volume).
    :param resize: resize to ``shape`` (anti-aliased) when the size differs; otherwise a size
        mismatch is an error.
    :param axis: slice axis of a NIfTI volume: ``axial``, ``coronal``, ``sagittal`` or a voxel axis
        (0, 1, 2). DICOM series are sliced along their slice normal.
    :param slices: slice indices of a volume to reconstruct (default: all).
    :param bands: band (channel) indices to keep from multiband images (TIFF bands are read with
        their axis known; default: all, which must match ``shape``'s channels).
    """

    mode = "synthetic"

    def __init__(self, path: str, shape=(1, 64, 64), normalize: str = "auto", limit: int | None = None,
                 resize: bool = True, axis="axial", slices=None, bands=None):
        if path in (None, "", "???"):
            raise ValueError("data=files needs data.path=<image, folder, .npy, file.h5:dataset, .nii(.gz) or DICOM>")
        if normalize not in ("auto", "max", "none"):
            raise ValueError(f"data.normalize must be 'auto', 'max' or 'none', got {normalize!r}")
        self.path, self.shape, self.normalize = str(path), _shape(shape), normalize
        self.limit, self.resize = (None if limit is None else int(limit)), bool(resize)
        self.axis = axis
        self.slices = None if slices is None else [int(v) for v in ([slices] if np.ndim(slices) == 0 else slices)]
        self.bands = None if bands is None else [int(v) for v in ([bands] if np.ndim(bands) == 0 else bands)]

    def _fit(self, name: str, a: np.ndarray) -> np.ndarray:
        C, H, W = self.shape
        if self.bands is not None:
            a = np.asarray(a)
            a = a[None] if a.ndim == 2 else (np.moveaxis(a, -1, 0) if a.shape[-1] <= 4 < a.shape[0] else a)
            bad = [b for b in self.bands if not 0 <= b < a.shape[0]]
            if bad:
                raise ValueError(f"data.bands {bad}: image {name} from {self.path} has {a.shape[0]} band(s), "
                                 f"numbered 0 to {a.shape[0] - 1}")
            a = a[self.bands]
        a = _to_channels(a, C).astype(np.float64)
        if a.shape[1:] != (H, W):
            if not self.resize:
                raise ValueError(f"data: image {name} is {list(a.shape[1:])}, the problem is {[H, W]} "
                                 "(set data.resize=true or shape=...)")
            a = resize(a, (H, W))
        return a

    def _volume_samples(self) -> list[Sample]:
        from .formats import read_volume

        vol = read_volume(self.path, axis=self.axis)
        S = vol.data.shape[0]
        ids = self.slices if self.slices is not None else list(range(S))
        bad = [i for i in ids if not 0 <= i < S]
        if bad:
            raise ValueError(f"data.slices {bad}: {self.path} has {S} slice(s) ({vol.axis}), numbered 0 to {S - 1}")
        ids = ids[: self.limit]
        data = vol.data
        offset, scale = 0.0, 1.0
        if self.normalize == "auto":
            lo, hi = float(data.min()), float(data.max())
            offset, scale = lo, (hi - lo if hi > lo else 1.0)
        stem = Path(self.path.rstrip("/")).name.split(".")[0]
        out = []
        for i in ids:
            a = (data[i] - offset) / scale
            if self.normalize == "max":
                m = float(np.abs(data[i]).max())
                scale = m if m > 0 else 1.0
                a = data[i] / scale
            x = self._fit(f"{stem} slice {i}", a)
            out.append(Sample(f"{stem}_{i:04d}", torch.from_numpy(np.ascontiguousarray(x)),
                              info={"source": self.path, "format": vol.format, "slice": i, "slices": S,
                                    "axis": vol.axis, "slice_axis": str(self.axis), "scale": scale, "offset": offset,
                                    "stored_shape": list(data.shape[1:])}))
        return out

    def samples(self, operator=None) -> list[Sample]:
        from .formats import kind_of

        if kind_of(self.path) in ("nifti", "dicom"):
            return self._volume_samples()
        out = []
        for name, raw in read_arrays(self.path, "data")[: self.limit]:
            a = np.asarray(raw)
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise ValueError(f"data: image {name} from {self.path} has dtype {a.dtype}; expected numbers")
            scale = 1.0
            if np.issubdtype(a.dtype, np.integer) and self.normalize == "auto":
                scale = float(np.iinfo(a.dtype).max)
                a = a.astype(np.float64) / scale
            elif a.dtype == bool:
                a = a.astype(np.float64)
            a = a if np.iscomplexobj(a) else a.astype(np.float64)
            if self.normalize == "max":
                m = float(np.abs(a).max())
                scale = m if m > 0 else 1.0
                a = a / scale
            a = self._fit(name, a)
            info = {"source": self.path}
            if Path(self.path).suffix.lower() in (".tif", ".tiff") or Path(self.path).is_dir():
                f = Path(self.path) / f"{name}.tif" if Path(self.path).is_dir() else Path(self.path)
                for cand in (f, f.with_suffix(".tiff")):
                    if cand.exists():
                        info = {"source": str(cand), "format": "tiff", "scale": scale, "offset": 0.0,
                                "bands": self.bands}
                        break
            out.append(Sample(name, torch.from_numpy(np.ascontiguousarray(a)), info=info))
        return out

    def describe(self) -> str:
        return f"images from {self.path}"


def _real_channels(a: np.ndarray, meas: tuple[int, ...]) -> np.ndarray:
    """Complex k-space ``[..., H, W]`` → 2 real channels in front, matching ``meas`` (``[2, ...]``)."""
    if not np.iscomplexobj(a):
        return a
    if not meas or meas[0] != 2:
        raise ValueError(f"complex measurements need an operator whose data are 2 real channels; this one takes {list(meas)}")
    if a.shape == meas[1:]:
        return np.stack([a.real, a.imag])
    if a.shape[1:] == meas[1:]:  # a stack of measurements
        return np.stack([a.real, a.imag], axis=1)
    raise ValueError(f"complex measurement of shape {list(a.shape)} does not match the operator's {list(meas[1:])} "
                     "(complex entries)")


class Measurements:
    """The user's own measurement(s): ``y`` from ``.npy`` or ``file.h5:dataset`` — one ``[*meas]``
    or a stack ``[N, *meas]``; complex arrays are split into (real, imag) channels. The operator
    comes from the operator config (its mask/kernel from files: ``operator=mask_file_inpainting``,
    ``kernel_file_blur``, ...). ``x`` optionally gives ground truths for the metrics, ``sigma_y``
    the noise level."""

    mode = "measured"

    def __init__(self, y: str, x: str | None = None, sigma_y: float | None = None, shape=(1, 64, 64)):
        if y in (None, "", "???"):
            raise ValueError("data=measurement needs data.y=<file.npy or file.h5:dataset>")
        self.y_path, self.x_path, self.shape = str(y), (None if x in (None, "") else str(x)), _shape(shape)
        self.sigma_y = None if sigma_y is None else float(sigma_y)

    def samples(self, operator) -> list[Sample]:
        meas = tuple(int(s) for s in getattr(operator, "meas_size", ()))
        raw = _real_channels(np.asarray(load_array(self.y_path, "measurement")), meas)
        if not meas:
            ys = [raw]
        elif tuple(raw.shape) == meas:
            ys = [raw]
        elif tuple(raw.shape[1:]) == meas:
            ys = list(raw)
        else:
            raise ValueError(f"measurement {self.y_path} has shape {list(raw.shape)}, but {operator.describe()} "
                             f"measures {list(meas)} (or a stack [N, {', '.join(map(str, meas))}])")
        stored = np.asarray(ys[0]).dtype
        if not np.issubdtype(stored, np.floating):
            raise ValueError(f"measurement {self.y_path} has dtype {stored}; expected floating point data")
        if stored == np.float16:  # accepted, converted exactly to float64; its rounding is stated
            peak = max(float(np.abs(np.asarray(y, np.float64)).max()) for y in ys)
            log.warning(
                "measurement %s is float16: converted to float64 (exact), but float16 kept only ~3 significant "
                "digits: rounding errors up to %.2g (half a float16 step at the largest value, %.3g) are part of "
                "y; use a σ_y at least that large or store y as float32", self.y_path, peak * 2.0 ** -11, peak)
        xs = [None] * len(ys)
        if self.x_path is not None:
            xs = []
            for name, a in read_arrays(self.x_path, "ground truth"):
                try:
                    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                        raise ValueError(f"dtype {a.dtype} is not numeric")
                    x = _to_channels(np.asarray(a, dtype=np.result_type(a, np.float64)), self.shape[0])
                except ValueError as err:
                    raise ValueError(f"ground truth {name} (data.x={self.x_path}): {err}") from err
                xs.append(torch.from_numpy(np.ascontiguousarray(x)).double())
            if len(xs) != len(ys):
                raise ValueError(f"{len(xs)} ground truth image(s) for {len(ys)} measurement(s)")
        stem = Path(self.y_path.split(":")[0]).stem
        return [Sample(f"{stem}_{i}" if len(ys) > 1 else stem, x, torch.from_numpy(np.ascontiguousarray(y)).double(),
                       sigma_y=self.sigma_y, info={"source": self.y_path, "stored_dtype": str(stored)})
                for i, (x, y) in enumerate(zip(xs, ys))]

    def describe(self) -> str:
        return f"measurement(s) {self.y_path}"


def kspace_noise_sigma(kspace: Tensor, mask: Tensor) -> float:
    """Noise σ (per real component) of k-space, from the sampled entries in its four corners
    (the outer 1/8 of rows and sampled columns, where the signal has decayed): 1.4826 × the median
    absolute deviation of their real and imaginary parts."""
    H, W = kspace.shape[-2:]
    cols = torch.nonzero(mask > 0).flatten()
    edge = cols[(cols < W // 8) | (cols >= W - W // 8)]
    rows = torch.cat([torch.arange(0, max(1, H // 8)), torch.arange(H - max(1, H // 8), H)])
    if edge.numel() == 0:
        return float("nan")
    corner = kspace[..., rows, :][..., edge].reshape(-1)
    v = torch.cat([corner.real, corner.imag])
    return float(1.4826 * (v - v.median()).abs().median())


class FastMRI:
    """Raw fastMRI files reconstructed as acquired: each slice's own k-space, mask (the file's, or
    the sampled columns) and, for multi-coil data, ESPIRiT coil maps; no synthetic degradation.

    :param path: a raw ``.h5`` file or a folder of them.
    :param slices: slice indices (default: the middle slice of each file).
    :param complex_image: reconstruct the complex image (2 channels) or its real part.
    :param normalize: scale k-space so the zero-filled magnitude peaks at 1 (the scale is saved;
        ground-truth targets are scaled alike).
    :param limit: at most this many files.
    :param mask: retrospective undersampling of fully sampled files (InverseBench's benchmark
        setup): a mask generator (e.g. ``operators.FastMRIMask``) drawn once from ``mask_seed``
        for the k-space width, applied to every slice (one mask for the whole test set). A file
        that is not fully sampled is refused. ``None``: reconstruct as acquired.
    """

    mode = "measured"

    def __init__(self, path: str, slices=None, complex_image: bool = True, normalize: bool = True,
                 limit: int | None = None, shape=None, mask=None, mask_seed: int = 0):
        if path in (None, "", "???"):
            raise ValueError("data=fastmri needs data.path=<raw fastMRI .h5 file or folder>")
        p = Path(str(path)).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"data: fastMRI path {p} does not exist")
        self.files = sorted(p.glob("*.h5")) if p.is_dir() else [p]
        if not self.files:
            raise ValueError(f"data: no .h5 files in {p}")
        self.files = self.files[:limit] if limit else self.files
        self.slices = None if slices is None else [int(s) for s in ([slices] if np.ndim(slices) == 0 else slices)]
        self.complex_image, self.normalize = bool(complex_image), bool(normalize)
        self.mask, self.mask_seed = mask, int(mask_seed)

    def _retrospective(self, sl) -> None:
        from .fastmri import sampled_columns

        W = sl.kspace.shape[-1]
        if sl.mask is not None and not bool((sl.mask > 0).all()) or not bool((sampled_columns(sl.kspace) > 0).all()):
            raise ValueError(f"data.mask asks for retrospective undersampling, but {sl.fname} is not fully sampled; "
                             "use data.mask=null to reconstruct it as acquired")
        m = torch.as_tensor(self.mask((sl.kspace.shape[-2], W), seed=self.mask_seed), dtype=torch.float64)
        sl.mask = m.reshape(-1, W)[0] if m.ndim > 1 else m

    def samples(self, operator=None) -> list[Sample]:
        from .fastmri import num_slices, prospective_operator, read_slice, sampled_columns

        out = []
        for f in self.files:
            n = num_slices(f)
            bad = [s for s in (self.slices or []) if not 0 <= s < n]
            if bad:
                raise ValueError(f"data.slices {bad}: {f} has {n} slice(s), numbered 0 to {n - 1}")
            for s in self.slices if self.slices is not None else [n // 2]:
                sl = read_slice(f, s)
                if self.mask is not None:
                    self._retrospective(sl)
                op, y = prospective_operator(sl, complex_image=self.complex_image)
                y = y.to(torch.float64)
                scale = 1.0
                if self.normalize:
                    zf = op.A_adjoint(y[None])
                    peak = float(zf.square().sum(1).sqrt().max()) if self.complex_image else float(zf.abs().max())
                    scale = 1.0 / peak if peak > 0 else 1.0
                y = y * scale
                x = None
                if sl.target is not None:
                    t = sl.target.to(torch.float64) * scale
                    x = torch.stack([t, torch.zeros_like(t)]) if self.complex_image else t[None]
                mask = sl.mask if sl.mask is not None else sampled_columns(sl.kspace)
                sigma = kspace_noise_sigma(sl.kspace * mask, mask.to(torch.float64)) * scale
                out.append(Sample(f"{f.stem}_s{s}", x, y, operator=op, sigma_y=sigma if np.isfinite(sigma) else None,
                                  info={"source": str(f), "slice": s, "scale": scale, "multicoil": sl.multicoil,
                                        "retrospective_mask": self.mask is not None,
                                        "target_is_magnitude": sl.target is not None}))
        return out

    def describe(self) -> str:
        return f"fastMRI raw data ({len(self.files)} file(s))"
