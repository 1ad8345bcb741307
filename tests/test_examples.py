"""The worked examples in examples/ run offline at 2 steps and leave their results where they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, out: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--steps", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=EXAMPLES, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_brain_nifti_volume_comes_back_as_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    run("brain_nifti", tmp_path)
    vol = nib.load(str(tmp_path / "run" / "volumes" / "slab_recon.nii.gz"))
    src = nib.load(str(tmp_path / "slab.nii.gz"))
    assert vol.shape == (64, 64, 5) and nib.aff2axcodes(vol.affine) == nib.aff2axcodes(src.affine)
    assert abs(vol.header.get_zooms()[2] - src.header.get_zooms()[2]) < 1e-6


def test_geotiff_clouds_restored_tile_by_tile_and_georeferenced(tmp_path):
    from invdiff.data import formats as F

    run("geotiff_clouds", tmp_path)
    out = F.read_tiff(tmp_path / "run" / "volumes" / "scene_recon.tif")
    assert out.data.shape == (1, 128, 128)
    assert F.geo_summary(out) == {"epsg": 32633, "transform": (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)}


def test_microscopy_deconvolution(tmp_path):
    run("microscopy_deconvolution", tmp_path)
    assert len(list((tmp_path / "run" / "samples").glob("*.h5"))) == 1


def test_reproduce_table_row(tmp_path):
    run("reproduce_table_row", tmp_path)
    assert list(tmp_path.glob("phantom64_mri4x/pigdm/*/summary.md"))


def test_mri_from_a_fastmri_file_with_its_own_mask(tmp_path):
    run("mri_fastmri", tmp_path)
    assert len(list((tmp_path / "run" / "samples").glob("file_brain_example_s*.h5"))) == 3
