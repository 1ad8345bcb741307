"""invdiff's forward operators and noise models — usable without any diffusion code.

Every operator is a noiseless :class:`deepinv.physics.LinearPhysics` acting on ``[B, *img_size]``
in physical units, declares ``op.capabilities``, and can be saved (``op.to_dict()``) and rebuilt
(:func:`from_dict`). See ``operators.base`` for the contract and the SVD convention.

A forward model that can only be evaluated (a simulator, scipy code) is wrapped as a
:class:`BlackBoxOperator` (capabilities ``{"forward"}``, not saveable: a callable is not data).

Every operator also declares what callers may treat differently, so that no caller tests class
names: ``op.modality`` (``"mri"``, ``"ct"`` or ``None`` for generic operators), ``op.complex_image``
(complex images stored as 2 real channels: the MRI operators with ``img_size[0] == 2``) and
``op.tileable`` — whether ``op.restriction()`` gives exact problems on tiles of the image
(Inpainting, Blur, Downsampling; see ``operators.restriction``, used by ``invdiff.tiling``).

Volume operators act on ``[B, C, D, H, W]`` with the same contract: :class:`SliceStack` applies 2-D
operators slice by slice (``operators.volume``: 3-D parallel-beam CT, per-slice-mask MRI).

Public modules beside the operators: ``operators.linalg`` (batched CG, padding index maps, 1-D
convolution matrices), ``operators.files`` (array and image readers), ``operators.checkpoints``
(safe checkpoint reading, shared with ``invdiff.priors``) and ``operators.restriction``.
"""

from .base import CAPABILITIES, CapabilityError, LinearOperator, from_dict, require
from .blackbox import BlackBoxOperator
from .blur import Blur
from .downsampling import Downsampling
from .inpainting import Inpainting
from .kernels import GaussianKernel, KernelFile, MotionKernel, UniformKernel
from .masks import BoxMask, FreeFormMask, HalfMask, MaskFile, RandomPixelMask, load_mask
from .matrix import MatrixOperator
from .blur_net import BlurNet, NonlinearBlur, load_blur_net, save_blur_net
from .ct import ParallelBeamCT, TransmissionCT
from .espirit import espirit_maps
from .mri import MultiCoilMRI, SingleCoilMRI, birdcage_maps, center_crop, center_pad, fft2c, ifft2c
from .mri_masks import (FastMRIMask, PoissonDiscMask, RadialMask, RandomLinesMask, ScoreMRIMask, acceleration,
                        fastmri_seed)
from .nonlinear import HDR, NonlinearOperator, PhaseRetrieval
from .remote_sensing import CloudMask, Pansharpening, SplitGaussianNoise
from .noise import GaussianNoise, PoissonGaussianNoise, PoissonNoise, RicianNoise
from .volume import SliceStack, VolumeParallelBeamCT, VolumeSingleCoilMRI

#: Operator classes that :func:`from_dict` may rebuild.
OPERATORS = ("Blur", "Downsampling", "Inpainting", "MatrixOperator", "SingleCoilMRI", "MultiCoilMRI",
             "ParallelBeamCT", "PhaseRetrieval", "HDR", "TransmissionCT", "NonlinearBlur", "Pansharpening",
             "SliceStack", "VolumeParallelBeamCT", "VolumeSingleCoilMRI")

__all__ = [
    "CAPABILITIES", "CapabilityError", "LinearOperator", "from_dict", "require", "OPERATORS",
    "Blur", "Downsampling", "Inpainting", "MatrixOperator",
    "GaussianKernel", "UniformKernel", "MotionKernel", "KernelFile",
    "BoxMask", "RandomPixelMask", "HalfMask", "FreeFormMask", "MaskFile", "load_mask",
    "GaussianNoise", "PoissonNoise", "PoissonGaussianNoise", "RicianNoise",
    "NonlinearOperator", "PhaseRetrieval", "HDR", "ParallelBeamCT", "TransmissionCT", "BlackBoxOperator",
    "BlurNet", "NonlinearBlur", "save_blur_net", "load_blur_net",
    "Pansharpening", "CloudMask", "SplitGaussianNoise",
    "SingleCoilMRI", "MultiCoilMRI", "birdcage_maps", "fft2c", "ifft2c", "center_crop", "center_pad", "espirit_maps",
    "FastMRIMask", "RandomLinesMask", "ScoreMRIMask", "PoissonDiscMask", "RadialMask", "acceleration", "fastmri_seed",
    "SliceStack", "VolumeParallelBeamCT", "VolumeSingleCoilMRI",
]
