"""Data in (images, arrays, fastMRI files) and results out (atomic per-sample files).

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``images``         scikit-image's bundled images (no download), resized to a shape
``sources``        the app's ``data/`` config group: what is reconstructed (synthetic or real measurements)
``training_data``  what ``invdiff-train`` draws batches from; the array readers and image helpers
                   (:func:`~invdiff.data.training_data.as_chw`, :func:`~invdiff.data.training_data.resize`)
                   that ``sources`` shares
``fastmri``        raw fastMRI HDF5 files, slice by slice
``formats``        NIfTI (nibabel), DICOM (pydicom) and (Geo)TIFF (tifffile) read and written with
                   their metadata
``brain``          the MNI152 T1 template in nilearn's wheel: slices and fixed train/val/test slabs
``exports``        a run's reconstructions written back in their inputs' formats (``volumes/``)
``results``        per-sample HDF5 files written atomically, the summaries rebuilt from them
``figures``        the per-sample PNG figure
``processes``      who this process is and whether another one is alive (the owners of temporaries
                   and claims)
``claims``         several processes in one run directory: claims, and the cleanup of what dead
                   processes left (stale temporaries and claims)
=================  =====================================================================================

Imports run one way: ``claims`` uses ``results`` and ``processes``, ``results`` uses ``processes``
only, and ``processes`` imports nothing of the package.
"""

from .images import SAMPLE_IMAGES, sample_image
from .results import write_sample

__all__ = ["SAMPLE_IMAGES", "sample_image", "write_sample"]
