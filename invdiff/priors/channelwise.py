"""A one-channel prior used on every channel of an image, independently.

score-MRI (Chung & Ye, Medical Image Analysis 2022) reconstructs complex MRI with a prior trained on
magnitude images by denoising the real and the imaginary part separately with it: the prior of the
complex image is taken to be ``p(x) = p₁(Re x) · p₁(Im x)``. :class:`ChannelwisePrior` is that
prior for any one-channel prior and any number of channels: ``D([x₁, …, x_C], σ) = [D₁(x₁, σ), …,
D₁(x_C, σ)]`` (one batched call of the inner denoiser, so NFE is unchanged).

The inner prior's model space must be its physical space (``to_model`` the identity, as for score_sde
networks trained on uncentred [0, 1] data, whose network shifts to [−1, 1] itself): real and
imaginary parts are signed, and an affine map meant for [0, 1] magnitudes would distort them. The
wrapper's data range is the symmetric ``[−hi, hi]`` of the inner ``[lo, hi]``.
"""

from __future__ import annotations

from torch import Tensor

from .base import Prior, per_sample_sigma, raw_call


class ChannelwisePrior(Prior):
    """``channels`` copies of the one-channel prior ``inner``, applied to each channel independently.

    :param inner: a :class:`Prior` of shape ``(1, H, W)`` whose ``to_model`` is the identity.
    :param channels: C, the channels of the wrapped images (2: real and imaginary parts).
    """

    def __init__(self, inner: Prior, channels: int = 2):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ChannelwisePrior: channels must be a positive integer, got {channels!r}")
        if inner.shape[0] != 1:
            raise ValueError(f"ChannelwisePrior wraps a one-channel prior; this one has shape {inner.shape}")
        if float(inner.scale) != 1.0 or float(inner.offset) != 0.0:
            raise ValueError(
                f"ChannelwisePrior: the inner prior maps data {inner.data_range} to model units {inner.model_range}; "
                "signed channels (real/imaginary parts) need a prior whose model units are its data units (a score_sde "
                "network trained on uncentred data, whose network shifts to [-1, 1] itself, is one)")
        hi = max(abs(float(v)) for v in inner.data_range)
        super().__init__((channels, *inner.shape[1:]), data_range=(-hi, hi), model_range=(-hi, hi),
                         sigma_range=(inner.sigma_min, inner.sigma_max), differentiable=inner.differentiable)
        self.inner, self.channels = inner, channels
        self.checkpoint = getattr(inner, "checkpoint", None)

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        self.check_input(x)
        return self.raw_denoiser(x, per_sample_sigma(sigma, x))

    def raw_denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        B, C = x.shape[:2]
        flat = x.reshape(B * C, 1, *x.shape[2:])
        s = sigma.reshape(B, 1).expand(B, C).reshape(B * C, *([1] * (x.ndim - 1)))
        return raw_call(self.inner)(flat, s).reshape(x.shape)
