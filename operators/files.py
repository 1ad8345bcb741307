"""Reading the user's array and image files (masks, kernels, coil maps, data) with errors that name
the file and say what is wrong with it.

``.npy`` files are read with ``allow_pickle=False`` only: a file that is not an array (or one of
Python objects) is refused as such, never unpickled — numpy's own message would suggest loading it
with ``allow_pickle=True``, which runs code from the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_npy(path: str | Path, what: str = "array") -> np.ndarray:
    """The array in a ``.npy`` file (``allow_pickle=False``); a ``ValueError`` naming ``what`` and
    the file when it is empty, truncated, corrupt or holds Python objects."""
    p = Path(path)
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        reason = _first_line(err)
        if "pickle" in reason.lower() or "object arrays" in reason.lower():
            reason = "the file is corrupt or holds Python objects, which are never unpickled"
        elif isinstance(err, EOFError):
            reason = "the file is empty"
        raise ValueError(f"{what} {p} is not a readable .npy array: {reason}") from err


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """An image file (PNG, TIFF, JPEG, BMP) as an array via scikit-image; a ``ValueError`` naming
    ``what`` and the file when it cannot be decoded (empty, truncated, corrupt or another format)."""
    from skimage.io import imread

    p = Path(path)
    try:
        return np.asarray(imread(p))
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001  (every reader failure means the file is not a readable image)
        raise ValueError(f"could not read {what} {p}: not a readable image (empty, truncated, corrupt, or not the "
                         f"format its extension says; {_first_line(err)})") from err
