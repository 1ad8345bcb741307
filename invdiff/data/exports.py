"""Results written back in the input's own format (beside the HDF5 records): ``volumes/`` in a run
directory.

For every sample read from a NIfTI volume, a DICOM series or a (Geo)TIFF by ``data=files``
(:class:`invdiff.data.sources.ImageFiles` records ``format``, ``source``, ``slice``, ``scale`` and
``offset`` in the sample's ``info``), the reconstructions ``x_hat`` are mapped back to the file's
units (``x · scale + offset``) and written with the input's metadata
(:func:`invdiff.data.formats.write_like`):

* NIfTI — ``volumes/<stem>_recon.nii.gz`` with the input's header and affine (in-plane voxel size
  rescaled to the reconstruction's size), written only when every slice was reconstructed (a volume
  with missing slices would be a partial output; the log says which are missing);
* DICOM — ``volumes/<stem>_recon/`` a derived series of the reconstructed slices (each slice keeps its
  own position, so a subset is a valid series);
* TIFF — ``volumes/<stem>_recon.tif``, float32 bands with the input's GeoTIFF tags (pixel scale
  rescaled when resized); with ``data.bands`` only the chosen bands.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .results import is_complete, read_sample

log = logging.getLogger("invdiff")


def export_results(out_dir: str | Path) -> list[Path]:
    """Write the run's reconstructions back in their inputs' formats; returns the paths written."""
    from . import formats as F

    out_dir = Path(out_dir)
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in sorted((out_dir / "samples").glob("*.h5")):
        if not is_complete(f):
            continue
        rec = read_sample(f)
        info = rec.get("info") or {}
        if info.get("format") in ("nifti", "dicom", "tiff"):
            groups.setdefault((info["format"], info["source"]), []).append(rec)
    written = []
    for (fmt, source), recs in groups.items():
        stem = Path(source.rstrip("/")).name.split(".")[0]
        try:
            if fmt == "tiff":
                like = F.read_tiff(source)
                for rec in recs:
                    x = np.asarray(rec["x_hat"], dtype=np.float64) * rec["info"]["scale"] + rec["info"]["offset"]
                    written.append(F.write_tiff(out_dir / "volumes" / f"{stem}_recon.tif", x, like))
                continue
            info0 = recs[0]["info"]
            like = F.read_volume(source, axis=_axis(info0.get("slice_axis", "axial")))
            S = like.data.shape[0]
            by_slice = {int(r["info"]["slice"]): r for r in recs}
            # each slice back to the file's units with its own scale and offset (normalize=max scales per slice)
            x = np.stack([np.asarray(by_slice[i]["x_hat"], dtype=np.float64)[0] * by_slice[i]["info"]["scale"]
                          + by_slice[i]["info"]["offset"] for i in sorted(by_slice)])
            if fmt == "nifti":
                missing = sorted(set(range(S)) - set(by_slice))
                if missing:
                    log.warning("volumes: %s not written as NIfTI: %d of its %d slices were not reconstructed "
                                "(first missing: %s); reconstruct every slice (data.slices=null) to get the volume",
                                source, len(missing), S, missing[:5])
                    continue
                written.append(F.write_nifti(out_dir / "volumes" / f"{stem}_recon.nii.gz", x, like))
            else:
                keep = sorted(by_slice)
                sub = F.Volume(like.data[keep], like.format, like.axis,
                               {**like.meta, "datasets": [like.meta["datasets"][i] for i in keep]}, like.source)
                F.write_dicom(out_dir / "volumes" / f"{stem}_recon", x, sub)
                written.append(out_dir / "volumes" / f"{stem}_recon")
        except (OSError, ValueError) as err:
            log.warning("volumes: could not write %s back as %s: %s", source, fmt, err)
    for p in written:
        log.info("volumes: wrote %s", p)
    return written


def _axis(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return v
