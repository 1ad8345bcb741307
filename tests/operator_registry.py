"""The conformance registry: every operator configuration the package offers, built small and odd.

Each entry is ``id -> factory()``; the conformance suite (test_operator_conformance.py) runs every
entry through the same mathematical checks. A new operator joins by adding entries here.
"""

from __future__ import annotations

import torch

import operators as O

C, H, W = 2, 17, 11  # odd, non-square
BATCH = 3


def _nonseparable_kernel(kh: int, kw: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    k = torch.rand(kh, kw, generator=g, dtype=torch.float64)
    return k / k.sum()


def _blurs():
    out = {}
    for pad in ("reflect", "symmetric", "replicate", "circular", "zeros", "valid"):
        out[f"blur-gauss-{pad}"] = lambda pad=pad: O.Blur(O.GaussianKernel(5, 1.2), (C, H, W), pad)
        out[f"blur-motion-{pad}"] = lambda pad=pad: O.Blur(O.MotionKernel(7, 0.5), (C, H, W), pad, seed=3)
    out["blur-motion15-fft-reflect"] = lambda: O.Blur(O.MotionKernel(15, 0.5), (C, H, W), "reflect", seed=1)
    out["blur-motion15-fft-valid"] = lambda: O.Blur(O.MotionKernel(15, 0.5), (C, 21, 19), "valid", seed=1)
    out["blur-gauss-conv-reflect"] = lambda: O.Blur(O.GaussianKernel(5, 1.2), (C, H, W), "reflect", method="conv")
    out["blur-gauss61-reflect-wraps"] = lambda: O.Blur(O.GaussianKernel(61, 3.0), (C, H, W), "reflect")
    out["blur-uniform-replicate"] = lambda: O.Blur(O.UniformKernel((3, 4)), (C, H, W), "replicate")
    out["blur-even-nonsep-reflect"] = lambda: O.Blur(_nonseparable_kernel(4, 6), (C, H, W), "reflect")
    out["blur-circular-even-transfer-zeros"] = lambda: O.Blur(torch.tensor([[0.5, 0.5]]), (C, 8, 6), "circular")
    out["blur-even-nonsep-circular"] = lambda: O.Blur(_nonseparable_kernel(4, 6), (C, H, W), "circular")
    return out


def _inpaintings():
    return {
        "inpaint-box-center": lambda: O.Inpainting(O.BoxMask((6, 4)), (C, H, W)),
        "inpaint-box-random": lambda: O.Inpainting(O.BoxMask((6, 4), "random", 2), (C, H, W), seed=1),
        "inpaint-random-shared": lambda: O.Inpainting(O.RandomPixelMask(0.6), (C, H, W), seed=2),
        "inpaint-random-per-image": lambda: O.Inpainting(O.RandomPixelMask(0.5, exact=False), (C, H, W),
                                                         batch_size=BATCH, seed=2),
        "inpaint-half": lambda: O.Inpainting(O.HalfMask("right"), (C, H, W)),
        "inpaint-freeform": lambda: O.Inpainting(O.FreeFormMask(), (C, H, W), seed=4),
    }


def _downsamplings():
    return {
        "sr2-average": lambda: O.Downsampling(2, (C, 18, 12), "average"),
        "sr3-average": lambda: O.Downsampling(3, (C, 15, 9), "average"),
        "sr2-bicubic": lambda: O.Downsampling(2, (C, H, W), "bicubic"),
        "sr4-bicubic": lambda: O.Downsampling(4, (C, H, W), "bicubic"),
        "sr2-gaussian": lambda: O.Downsampling(2, (C, H, W), "gaussian"),
        "sr4-gaussian-circular": lambda: O.Downsampling(4, (C, H, W), "gaussian", padding="circular"),
    }


def _matrices():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(5, 8, generator=g, dtype=torch.float64)
    tall = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return {"matrix-wide": lambda: O.MatrixOperator(wide), "matrix-tall": lambda: O.MatrixOperator(tall)}


def _mris():
    mask = O.RandomLinesMask(3, 0.1)
    maps = O.birdcage_maps(3, H, W)
    return {
        "mri-single-real": lambda: O.SingleCoilMRI(mask, (1, H, W), seed=0),
        "mri-single-complex": lambda: O.SingleCoilMRI(mask, (2, H, W), seed=0),
        "mri-single-real-even": lambda: O.SingleCoilMRI(O.FastMRIMask("random", [0.08], [4]), (1, 16, 12), seed=1),
        "mri-single-real-2d-mask": lambda: O.SingleCoilMRI(O.ScoreMRIMask("gaussian2d", 3), (1, H, W), seed=2),
        "mri-single-oversampled-readout": lambda: O.SingleCoilMRI(mask, (1, 9, W), kspace_size=(H, W), seed=0),
        "mri-multi-oversampled-readout": lambda: O.MultiCoilMRI(mask, maps, (2, 10, 9), kspace_size=(H, W), seed=0),
        "mri-multi-real": lambda: O.MultiCoilMRI(mask, maps, (1, H, W), seed=0),
        "mri-multi-complex": lambda: O.MultiCoilMRI(mask, maps, (2, H, W), seed=0),
    }


def _cts():
    return {
        "ct-sparse-view": lambda: O.ParallelBeamCT((C, 17, 17), angles=9),
        "ct-limited-angle": lambda: O.ParallelBeamCT((1, 16, 16), angles=8, limited_angle=(0, 90)),
    }


def _remote_sensing():
    return {
        "pansharpening": lambda: O.Pansharpening((3, H, W), factor=2, mtf_sigma=[0.8, 1.0, 1.2]),
        "inpaint-clouds": lambda: O.Inpainting(O.CloudMask(0.3), (4, H, W), seed=0),
    }


def _blur_net():
    """A randomly initialised blur network saved to a temporary checkpoint and loaded back."""
    import tempfile
    from pathlib import Path

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="invdiff-registry-")) / "blur.safetensors"
    O.save_blur_net(O.BlurNet(channels=C, features=8, latent_dim=4), path)
    return O.NonlinearBlur(str(path), (C, H, W), seed=0)


def _scipy_phase_retrieval(x):
    """|F pad(x)| by scipy.fft on a batch [B, C, H, W] (pad 2 each side): a forward model with no autograd path."""
    import numpy as np
    import scipy.fft

    z = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.abs(scipy.fft.fftshift(scipy.fft.fft2(scipy.fft.ifftshift(z, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))


def _nonlinear():
    return {
        "blackbox-scipy-pr": lambda: O.BlackBoxOperator(_scipy_phase_retrieval, (C, H, W), (C, H + 4, W + 4),
                                                        batched=True, name="scipy |F pad(x)|"),
        "nonlinear-blur-net": _blur_net,
        "phase-retrieval": lambda: O.PhaseRetrieval((C, H, W), oversampling=2.0),
        "hdr": lambda: O.HDR((C, H, W), scale=2.0),
        "ct-transmission": lambda: O.TransmissionCT((1, 15, 15), angles=7, I0=100.0),
    }

def _volumes():
    """Volume operators [B, C, D, H, W] (issue 29): a stack of 2-D operators along D."""
    return {
        "volume-ct-sparse-view": lambda: O.VolumeParallelBeamCT((2, 3, 17, 17), angles=9),
        "volume-mri-per-slice-real": lambda: O.VolumeSingleCoilMRI(O.RandomLinesMask(3, 0.1), (1, 3, H, W), seed=0),
        "volume-mri-per-slice-complex": lambda: O.VolumeSingleCoilMRI(O.RandomLinesMask(3, 0.1), (2, 3, H, W), seed=0),
        "volume-stack-sr2": lambda: O.SliceStack(O.Downsampling(2, (C, 18, 12), "average"), depth=3),
    }


#: linear operators (the whole suite) and nonlinear ones (the checks that do not need linearity)
REGISTRY = {**_blurs(), **_inpaintings(), **_downsamplings(), **_matrices(), **_mris(), **_cts(),
            **_remote_sensing(), **_volumes()}
NONLINEAR = _nonlinear()
ALL = {**REGISTRY, **NONLINEAR}
