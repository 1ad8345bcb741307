"""Data in (images, arrays) and results out (atomic per-sample files)."""

from .images import SAMPLE_IMAGES, sample_image
from .results import write_sample

__all__ = ["SAMPLE_IMAGES", "sample_image", "write_sample"]
