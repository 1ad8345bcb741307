"""Training data for ``invdiff-train``: ``sample(n, generator) -> [n, C, size, size]`` in [0, 1].

* :class:`PhantomData` — the seeded phantom generator (infinite data; :mod:`invdiff.phantoms`).
* :class:`ArrayData` — images held in memory, from :func:`load_images`: a folder of PNG/TIFF/JPEG
  files, a ``.npy`` array (``[N, H, W]`` or ``[N, C, H, W]``), an HDF5 dataset (``file.h5:key``), or
  fastMRI HDF5 files (a file or a folder; every slice's ``reconstruction_rss``/``_esc`` magnitude,
  or with ``complex=True`` the single-coil k-space's zero-filled complex image as 2 channels).

Images are resized to ``size × size`` (anti-aliased) when loaded. Intensities: 8/16-bit integer
images are divided by their type's maximum; float arrays and MRI magnitudes are scaled per image
to [0, 1] by their maximum absolute value (complex images: real and imaginary parts mapped by
(v/max|z| + 1)/2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..phantoms import phantoms, training_seeds

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}


class PhantomData:
    """The ``phantom64`` training distribution: fresh seeded phantoms every batch."""

    channels = 1

    def __init__(self, size: int = 64):
        self.size = int(size)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return phantoms(training_seeds(generator, n), self.size)

    def validation(self) -> Tensor:
        """8 phantoms of the benchmark validation split (``data.split=val``; never the test phantoms)."""
        from ..phantoms import EVAL_SEEDS

        return phantoms(EVAL_SEEDS[32:40], self.size)

    def describe(self) -> str:
        return f"phantoms {self.size}×{self.size} (invdiff.phantoms)"


#: scikit-image's bundled images (in the wheel, no download) that train ``patches64``: microscopy
#: (cell, immunohistochemistry), astronomy (hubble_deep_field), retina (retina, microaneurysms),
#: textures (brick, grass, gravel), documents (text, page) and photographs. Held out entirely:
#: ``camera`` and ``moon`` (the evaluation images) and the Shepp–Logan phantom.
PATCH_IMAGES = ("astronaut", "brick", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                "hubble_deep_field", "immunohistochemistry", "microaneurysms", "retina", "rocket", "text",
                "page", "horse", "logo", "motorcycle_left", "lfw_subset")
HELD_OUT_IMAGES = ("camera", "moon", "shepp_logan_phantom")


def _skimage_gray(name: str) -> list[np.ndarray]:
    """Gray float images in [0, 1] of a bundled scikit-image dataset (``lfw_subset``: its 200 faces)."""
    from skimage import data
    from skimage.color import rgb2gray

    if name in HELD_OUT_IMAGES:
        raise ValueError(f"{name} is held out from patches64 training")
    arr = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    arr = np.asarray(arr)
    if name == "lfw_subset":
        return [a.astype(np.float64) for a in arr]
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64) / np.iinfo(arr.dtype).max
    arr = arr[..., :3] if arr.ndim == 3 and arr.shape[-1] == 4 else arr
    arr = rgb2gray(arr) if arr.ndim == 3 else arr
    return [np.clip(arr.astype(np.float64), 0.0, 1.0)]


class PatchData:
    """Random ``size × size`` crops at random scales of a set of images (the ``patches64`` data).

    Each image is kept as a pyramid (anti-aliased downscalings by 2^(−k/2) until its short side is
    ``size``; the last level is the whole image downscaled). A sample picks a dataset uniformly
    (``lfw_subset``'s 200 faces count as one), an image in it, a pyramid level uniformly — so fine
    texture and whole-scene views are equally likely — and a uniform random crop; random flips
    are the trainer's.
    """

    channels = 1

    def __init__(self, names=PATCH_IMAGES, size: int = 64):
        from skimage import transform

        self.size, self.names = int(size), list(names)
        self.groups: list[list[list[np.ndarray]]] = []  # dataset → image → pyramid level
        for name in self.names:
            self.levels: list[list[np.ndarray]] = []
            for img in _skimage_gray(name):
                short = min(img.shape)
                if short < self.size:  # tiny images (faces): one level, the whole image resized
                    self.levels.append([transform.resize(img, (self.size, self.size), anti_aliasing=True)])
                    continue
                pyramid, k = [], 0
                while True:
                    f = 2.0 ** (-k / 2)
                    if short * f < self.size:
                        break
                    pyramid.append(img if k == 0 else transform.rescale(img, f, anti_aliasing=True))
                    k += 1
                g = self.size / short  # the whole image, short side = size
                if g < 1 and (not pyramid or min(pyramid[-1].shape) != self.size):
                    pyramid.append(transform.rescale(img, g, anti_aliasing=True))
                self.levels.append([np.ascontiguousarray(np.clip(p, 0, 1), dtype=np.float32) for p in pyramid])
            self.groups.append([[np.asarray(p, dtype=np.float32) for p in pyr] for pyr in self.levels])
        del self.levels
        if not self.groups:
            raise ValueError("PatchData: no images")

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        out = np.empty((n, 1, self.size, self.size), dtype=np.float32)
        r = torch.rand(n, 5, generator=generator, dtype=torch.float64).numpy()
        for i in range(n):
            group = self.groups[int(r[i, 0] * len(self.groups))]
            pyr = group[int(r[i, 1] * len(group))]
            lev = pyr[int(r[i, 2] * len(pyr))]
            H, W = lev.shape
            top, left = int(r[i, 3] * (H - self.size + 1)), int(r[i, 4] * (W - self.size + 1))
            out[i, 0] = lev[top : top + self.size, left : left + self.size]
        return torch.from_numpy(out)

    def validation(self) -> Tensor:
        """Held-out validation images (:func:`patch_validation_images`): scientific gray images that
        no shipped patches prior was trained on, none of them an evaluation image."""
        return patch_validation_images(self.size)

    def describe(self) -> str:
        imgs = sum(len(g) for g in self.groups)
        return (f"{self.size}×{self.size} crops at random scales of {imgs} images in {len(self.groups)} scikit-image "
                f"datasets (dataset, image, pyramid level and position uniform)")


def patch_validation_images(size: int = 64) -> Tensor:
    """``[N, 1, size, size]`` in [0, 1] (N = 11 at size 64): the validation images of the ``patches`` data, none of them
    in :data:`PATCH_IMAGES` or an evaluation image — pydicom's bundled ``CT_small`` (whole, resized,
    and its four quadrants — of any image at least twice ``size``) and ``MR_small`` (whole), each min–max scaled, and the MNI152 T1
    template's validation slab (axial slices 65–69, :mod:`invdiff.data.brain`). All ship with the
    project's dependencies (no download)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from .brain import brain_slices

    views = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        a = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        views.append(resize(a[None], size)[0])
        H, W = a.shape
        if min(H, W) >= 2 * size:
            views += [resize(a[None, i:i + H // 2, j:j + W // 2], size)[0] for i in (0, H // 2) for j in (0, W // 2)]
    x = torch.from_numpy(np.stack(views)[:, None].astype(np.float32)).clamp(0, 1)
    brain = brain_slices("axial", "val", size)[1].float()
    return torch.cat([x, brain]).contiguous()


def brain_data(plane: str = "axial", split: str = "train", size: int = 64) -> "ArrayData":
    """The ``brain64`` training data: the training slab's slices of the MNI152 T1 template
    (:mod:`invdiff.data.brain`), ``[N, 1, size, size]`` in [0, 1]; the trainer's flips augment them."""
    from .brain import brain_slices

    ids, x = brain_slices(plane, split, size)
    val = brain_slices(plane, "val", size)[1].float() if split == "train" else None
    return ArrayData(x.float(), name=f"MNI152 T1 {plane} slices {ids[0]}–{ids[-1]} ({split} slab)", val=val)


class ArrayData:
    """Images ``[N, C, size, size]`` in [0, 1], sampled uniformly with replacement."""

    def __init__(self, images: Tensor, name: str = "array", val: Tensor | None = None):
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"training images must be [N, C, S, S], got {list(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"no training images in {name}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"training images from {name} contain NaN or Inf")
        self.images = images.float().contiguous()
        self.channels, self.size = int(images.shape[1]), int(images.shape[-1])
        self.name = name
        if val is not None and tuple(val.shape[1:]) != tuple(images.shape[1:]):
            raise ValueError(f"validation images of {name} are {list(val.shape[1:])} each, the training images "
                             f"{list(images.shape[1:])}: give them the same size and channels")
        self.val = None if val is None else val.float().contiguous()

    def validation(self) -> Tensor | None:
        """The held-out validation images (``None`` when none were given)."""
        return self.val

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(0, self.images.shape[0], (n,), generator=generator)
        return self.images[idx]

    def describe(self) -> str:
        return f"{self.images.shape[0]} images {self.channels}×{self.size}×{self.size} from {self.name}"


def resize(img: np.ndarray, size) -> np.ndarray:
    """``[C, H, W]`` → ``[C, size, size]`` (or ``[C, *size]`` for a pair; anti-aliased)."""
    from skimage import transform

    hw = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if img.shape[1:] == hw:
        return img
    return np.stack([transform.resize(c, hw, anti_aliasing=True, preserve_range=True) for c in img])


def _scale_float(img: np.ndarray) -> np.ndarray:
    m = float(np.abs(img).max())
    return img / m if m > 0 else img


def as_chw(a: np.ndarray, channels: int) -> np.ndarray:
    """An image ``[H, W]``, ``[H, W, C]`` (C ≤ 4) or ``[C, H, W]`` as ``[channels, H, W]``: RGB becomes
    gray (luminance weights) for one channel, gray is repeated for three; every band is kept (a
    4-band image stays 4 bands: RGBA images lose their alpha in :func:`read_arrays`, not here), and
    any other mismatch is an error that says how to choose bands."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4) and a.shape[0] > 4:
        a = np.moveaxis(a, -1, 0)
    if a.ndim != 3:
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W]; got shape {list(a.shape)}")
    if channels == 1 and a.shape[0] == 3:
        a = (0.2125 * a[0] + 0.7154 * a[1] + 0.0721 * a[2])[None]
    elif channels == 3 and a.shape[0] == 1:
        a = np.repeat(a, 3, 0)
    if a.shape[0] != channels:
        raise ValueError(
            f"an image with {a.shape[0]} bands (band axis first, shape {list(a.shape)}) cannot be used as "
            f"{channels}-channel data: the problem's shape has {channels} channel(s). Choose {channels} of its bands "
            f"with data.bands=[...] (indices from 0), or set shape=[{a.shape[0]},H,W] with a prior of "
            f"{a.shape[0]} channels")
    return a


def _normalise(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float64) / np.iinfo(a.dtype).max
    return _scale_float(a.astype(np.float64))


def _fastmri_images(path: Path, complex_image: bool) -> list[np.ndarray]:
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        if complex_image:
            if "kspace" not in f or f["kspace"].ndim != 3:
                raise ValueError(f"{path}: complex fastMRI training needs single-coil 'kspace' [slices, H, W]")
            k = f["kspace"][()]
            z = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
            for sl in z:
                sl = sl / max(float(np.abs(sl).max()), 1e-12)
                out.append((np.stack([sl.real, sl.imag]) + 1.0) / 2.0)
        else:
            key = next((k for k in ("reconstruction_rss", "reconstruction_esc") if k in f), None)
            if key is None:
                raise ValueError(f"{path}: no 'reconstruction_rss' or 'reconstruction_esc' dataset (a fastMRI test "
                                 "file has none; use complex=true on single-coil k-space)")
            out += [_scale_float(np.asarray(sl, dtype=np.float64))[None] for sl in f[key][()]]
    return out


def _split_spec(source) -> tuple[Path, str | None]:
    spec, key = str(source), None
    if ":" in spec and not Path(spec).exists() and spec.rsplit(":", 1)[0].endswith((".h5", ".hdf5")):
        spec, key = spec.rsplit(":", 1)
    return Path(spec).expanduser(), key


def load_array(source: str | Path, what: str = "data") -> np.ndarray:
    """One array exactly as stored in ``file.npy`` or ``file.h5[:dataset]`` (the dataset may be
    omitted when the file holds only one)."""
    path, key = _split_spec(source)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.suffix == ".npy":
        from operators.files import load_npy

        return load_npy(path, what)
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path} is not a readable HDF5 file ({err})") from err
        with f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            if key is None:
                if len(names) != 1:
                    raise ValueError(f"{path} holds datasets {names}: name one as {path}:<dataset>")
                key = names[0]
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise ValueError(f"{path} has no dataset {key!r}; it holds {names}")
            return f[key][()]
    raise ValueError(f"unsupported {what} {path}: expected .npy or .h5/.hdf5")


def read_image_file(path: Path, what: str = "image") -> np.ndarray:
    """One image file: a TIFF through tifffile with its band axis known (bands first, ``[B, H, W]``,
    every band kept: :func:`invdiff.data.formats.read_tiff`); other formats through scikit-image,
    RGBA's alpha (opacity, not data) dropped."""
    from operators.files import read_image

    if Path(path).suffix.lower() in (".tif", ".tiff"):
        from .formats import read_tiff

        vol = read_tiff(path)
        a = vol.data.astype(vol.meta["dtype"]) if np.dtype(vol.meta["dtype"]).kind in "uib" else vol.data
        return a[0] if a.shape[0] == 1 else a
    a = read_image(path, what)
    return a[..., :3] if a.ndim == 3 and a.shape[-1] == 4 else a


def read_arrays(source: str | Path, what: str = "training data") -> list[tuple[str, np.ndarray]]:
    """Raw arrays with ids from an image file, a folder of images, or a ``.npy`` / ``file.h5[:dataset]``
    array: ``[H, W]`` (one image), ``[N, H, W]`` (N grayscale images) or ``[N, C, H, W]``; values as
    stored. Image files give ``[H, W]`` or ``[H, W, C]``."""
    path, _ = _split_spec(source)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return [(f.stem, read_image_file(f, f"{what} image")) for f in files]
    if path.suffix not in (".npy", ".h5", ".hdf5"):
        raise ValueError(f"unsupported {what} {path}: an image file, a folder of images, .npy or .h5/.hdf5")
    arr = load_array(source, what)
    if arr.ndim < 2 or arr.ndim > 4 or arr.size == 0:
        raise ValueError(f"{what} {path}: expected [H, W], [N, H, W] or [N, C, H, W], got shape {list(arr.shape)}")
    stack = arr[None] if arr.ndim == 2 else (arr[:, None] if arr.ndim == 3 else arr)
    return [(f"{path.stem}_{i}", a) for i, a in enumerate(stack)]


def volume_sources(path: Path) -> list[Path]:
    """The NIfTI / DICOM volumes of a training source: one NIfTI file, one DICOM file or series
    folder, a folder of NIfTI files, or a folder of DICOM series folders (empty when it is none)."""
    from .formats import kind_of

    if kind_of(path) in ("nifti", "dicom"):
        return [path]
    if not path.is_dir():
        return []
    entries = sorted(path.iterdir())
    vols = [e for e in entries if kind_of(e) in ("nifti", "dicom")]
    others = [e for e in entries if e not in vols and not e.name.startswith(".")]
    return vols if vols and not others else []


def _volume_images(vols: list[Path], axis, slices) -> list[np.ndarray]:
    """Slices along ``axis`` of each volume, each volume min–max scaled to [0, 1] as a whole (as
    ``data=files`` does at solve time, so a prior sees the intensities it will be used on)."""
    from .formats import read_volume

    out = []
    for v in vols:
        vol = read_volume(v, axis=axis)
        data = vol.data.astype(np.float64)
        S = data.shape[0]
        ids = list(range(S)) if slices is None else [int(i) for i in slices]
        bad = [i for i in ids if not 0 <= i < S]
        if bad:
            raise ValueError(f"training data: slices {bad} are outside {v} ({S} {vol.axis} slices, 0 to {S - 1}); "
                             "choose data.slices within every volume, or null for all")
        lo, hi = float(data.min()), float(data.max())
        out += [(data[i] - lo) / (hi - lo if hi > lo else 1.0) for i in ids]
    return out


def load_images(source: str | Path, size: int, channels: int = 1, *, fastmri: bool = False,
                complex: bool = False, axis="axial", slices=None, val_source=None) -> ArrayData:
    """Load training images from a folder, ``.npy``, ``file.h5:dataset``, fastMRI file(s), or NIfTI /
    DICOM volumes sliced along ``axis`` (a voxel axis 0–2 or a plane; ``slices``: indices, or
    ``None`` for all; each volume min–max scaled as a whole). ``val_source``: validation images read
    the same way (``settings.val_every``), which must not overlap the training images."""
    imgs: list[np.ndarray] = []
    vols = [] if fastmri else volume_sources(Path(str(source)).expanduser())
    if vols:
        if channels != 1:
            raise ValueError(f"training data {source}: NIfTI/DICOM slices are single-channel; set data.channels=1")
        imgs = [a[None] for a in _volume_images(vols, axis, slices)]
    elif fastmri:
        path = Path(str(source)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"training data {path} does not exist")
        files = sorted(path.glob("*.h5")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no .h5 files in {path}")
        for f in files:
            imgs += _fastmri_images(f, complex)
    else:
        imgs = [as_chw(_normalise(a), channels) for _, a in read_arrays(source)]
    stack = np.stack([resize(np.clip(a, 0.0, 1.0), size) for a in imgs])
    images = torch.from_numpy(np.clip(stack, 0.0, 1.0).astype(np.float32))
    val = None
    if val_source is not None:
        if Path(str(val_source)).expanduser().resolve() == Path(str(source)).expanduser().resolve():
            raise ValueError(f"data.val_source is the training source {source}: validation images must be held out "
                             "(another folder or file)")
        val = load_images(val_source, size, channels, fastmri=fastmri, complex=complex, axis=axis,
                          slices=slices).images
    return ArrayData(images, name=str(source), val=val)
