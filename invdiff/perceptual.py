"""Perceptual and distribution metrics for natural-image benchmarks: LPIPS, FID, Inception score,
precision / recall.

Conventions:

* Images are float tensors ``[B, C, H, W]`` with values in ``[0, 1]``, ``C`` = 1 or 3; grayscale
  is repeated to 3 channels.
* Network weights are files the *user* provides (``.pth`` / ``.pt`` state dicts, read with
  ``torch.load(weights_only=True)``, or ``.safetensors``). Nothing is ever downloaded: a missing file
  is a ``FileNotFoundError`` that says which file is needed and where it comes from; a file whose
  keys do not fit the network is a ``ValueError`` (``CheckpointError``) listing the mismatches.
* Set-level statistics (FID, IS, precision / recall) are pure functions of features (numpy arrays
  or torch tensors), computed in float64. FID is biased on small sets: values on fewer than about
  2048 images are only comparable between runs with the same number of images.
* Two Inception networks. :class:`FidInception` is the *standard* FID network — the TensorFlow
  ``pt_inception-2015-12-05`` graph of the official FID code, as torch-fidelity rebuilds it
  (``FeatureExtractorInceptionV3('inception-v3-compat')``), from the local file
  ``pt_inception-2015-12-05-6726825d.pth`` (read with ``weights_only=True``; never downloaded):
  FID / KID / IS computed with it, by torch-fidelity's own statistics functions, are comparable with
  published tables (at equal set size). :class:`InceptionFeatures` is torchvision's Inception-v3:
  its values are only comparable with each other within invdiff.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .priors.checkpoints import CheckpointError, safe_safetensors_load, safe_torch_load, strict_load

_URL = "https://download.pytorch.org/models/"
_NEEDED = {  # kind → (what, which file and where it comes from)
    "alex": ("LPIPS alex backbone weights", f"a torchvision alexnet() state dict, e.g. {_URL}alexnet-owt-7be5be79.pth"),
    "vgg": ("LPIPS vgg backbone weights", f"a torchvision vgg16() state dict, e.g. {_URL}vgg16-397923af.pth"),
    "linear": ("LPIPS linear weights", "lpips' weights/v0.1/{net}.pth (github.com/richzhang/PerceptualSimilarity, "
               "also inside the pip package lpips)"),
    "inception": ("Inception-v3 weights",
                  f"a torchvision inception_v3() state dict, e.g. {_URL}inception_v3_google-0cc3c7bd.pth"),
    "fid_inception": ("the standard FID Inception weights",
                      "pt_inception-2015-12-05-6726825d.pth, the state dict torch-fidelity and pytorch-fid use "
                      "(github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-"
                      "6726825d.pth)"),
}
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}  # ReLU outputs in `features`
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _need(path: str | Path, kind: str, net: str = "alex") -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        what, source = _NEEDED[kind]
        cache = "" if kind == "linear" else " (torchvision keeps what it downloads in ~/.cache/torch/hub/checkpoints/)"
        raise FileNotFoundError(f"{what} not found: {p}. Needed: {source.format(net=net)}{cache}. invdiff never "
                                "downloads weights: copy the file to this machine and pass its path.")
    return p


def _check_net(net: str) -> str:
    if net not in _TAPS:
        raise ValueError(f"LPIPS: net must be 'alex' or 'vgg', got {net!r}")
    return net


def _read(p: Path) -> dict[str, Tensor]:
    state = safe_safetensors_load(p)[0] if p.suffix == ".safetensors" else safe_torch_load(p)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: expected a state dict (name → tensor), got {type(state).__name__}")
    return state


def _rgb(x: Tensor) -> Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, C, H, W] with C = 1 or 3, got {list(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class _Features(torch.nn.Module):  # holds `features` so that strict loading reports torchvision's key names
    def __init__(self, features: torch.nn.Module):
        super().__init__()
        self.features = features


class LPIPS(torch.nn.Module):
    """Learned Perceptual Image Patch Similarity, v0.1 (Zhang et al. 2018), per image.

    Images in ``[0, 1]`` → ``[-1, 1]`` → lpips' ScalingLayer; features at the five ReLU taps of the
    backbone (AlexNet relu1–relu5, VGG-16 relu1_2 … relu5_3); each unit-normalised over channels
    (eps 1e-10); squared difference weighted by the non-negative 1×1 linear layers, averaged over
    space and summed over layers. ``forward(x, y)`` → ``[B]``; gradients flow to the inputs.

    Without linear weights (``linear_path=None``) every channel weighs 1: this is lpips' "baseline"
    (``lpips=False``) distance, not the learned LPIPS, and its values differ from published LPIPS.
    Linear weights with a negative entry are refused (trained LPIPS weights are clamped to ≥ 0, so
    such a file is not one of them).
    """

    def __init__(self, features: torch.nn.Module, net: str, weights: Sequence[Tensor] | None = None):
        super().__init__()
        self.net, self.taps = _check_net(net), _TAPS[net]
        self.features = features[: self.taps[-1] + 1]
        if weights is None:
            weights = [torch.ones(1, c, 1, 1) for c in _CHANNELS[net]]
        if any(bool((w < 0).any()) for w in weights):
            raise ValueError("LPIPS: linear weights with negative entries refused (trained LPIPS weights are ≥ 0)")
        self.lins = torch.nn.ParameterList([torch.nn.Parameter(w.detach().float().clone()) for w in weights])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @classmethod
    def from_files(cls, backbone_path: str | Path, linear_path: str | Path | None = None, net: str = "alex") -> LPIPS:
        """Build from a torchvision backbone state dict (only ``features.*`` is used; ``classifier.*``
        is ignored) and, optionally, lpips' linear-layer file (keys ``lin{i}.model.1.weight`` or
        ``lin{i}.weight``, shapes ``[1, C_i, 1, 1]``)."""
        import torchvision

        bp = _need(backbone_path, _check_net(net))
        lp = None if linear_path is None else _need(linear_path, "linear", net)
        with torch.device("meta"):  # no time spent initialising weights that are overwritten (or unused)
            holder = _Features((torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()).features)
        holder.to_empty(device="cpu")
        state = {k: v for k, v in _read(bp).items() if not k.startswith("classifier.")}
        strict_load(holder, state, str(bp))
        weights = None
        if lp is not None:
            lin = {k.replace(".model.1.", "."): v for k, v in _read(lp).items()}
            expected = {f"lin{i}.weight": (1, c, 1, 1) for i, c in enumerate(_CHANNELS[net])}
            missing, unexpected = sorted(set(expected) - set(lin)), sorted(set(lin) - set(expected))
            shapes = sorted(k for k in set(expected) & set(lin) if tuple(lin[k].shape) != expected[k])
            if missing or unexpected or shapes:
                raise CheckpointError(f"LPIPS linear weights {lp} do not fit net={net!r}: missing keys {missing}, "
                                      f"unexpected keys {unexpected}, wrong shapes {shapes} (expected {expected})")
            weights = [lin[f"lin{i}.weight"] for i in range(5)]
        return cls(holder.features, net, weights)

    def _taps(self, x: Tensor) -> list[Tensor]:
        x = ((_rgb(x).to(self.shift) * 2 - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: images {list(x.shape)} and {list(y.shape)} differ in shape")
        total = 0
        for w, a, b in zip(self.lins, self._taps(x), self._taps(y)):
            total = total + ((a - b).square() * w).sum(1).mean((-2, -1))
        return total


class InceptionFeatures:
    """Pool (2048) features and logits (1000) of torchvision's Inception-v3, for FID / IS / P&R.

    This is torchvision's ``inception_v3`` (e.g. its ``inception_v3_google-0cc3c7bd.pth`` weights),
    NOT the TensorFlow ``pt_inception-2015-12-05`` network used by the official FID code (and by
    pytorch-fid / clean-fid): features differ, so absolute FID values are not comparable with
    published ones — use them only for relative comparisons within invdiff.

    Images are resized to 299×299 (bilinear, antialias off), normalised with the ImageNet mean /
    std and passed through torchvision's ``transform_input`` (as torchvision's pretrained model
    does; the net effect is ``2x − 1``), in eval mode, ``batch_size`` images at a time. ``.to(device)`` moves the network.
    """

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, net: torch.nn.Module):
        self.net = net.eval().requires_grad_(False)
        self._pool: list[Tensor] = []
        self.net.fc.register_forward_pre_hook(lambda _m, args: self._pool.append(args[0]))

    @classmethod
    def from_file(cls, path: str | Path) -> InceptionFeatures:
        """Build from an ``inception_v3(aux_logits=True, init_weights=False, weights=None)`` state
        dict (a file without ``AuxLogits.*`` keys is loaded into ``aux_logits=False``)."""
        import torchvision

        p = _need(path, "inception")
        state = _read(p)
        aux = any(k.startswith("AuxLogits.") for k in state)
        with torch.device("meta"):
            net = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=True)
        strict_load(net.to_empty(device="cpu"), state, str(p))
        return cls(net)

    def to(self, device) -> InceptionFeatures:
        self.net.to(device)
        return self

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 32) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, C, H, W]`` in ``[0, 1]`` → (pool ``[B, 2048]``, logits ``[B, 1000]``), float64 on CPU."""
        x = _rgb(x)
        ref = next(self.net.parameters())
        mean = torch.tensor(self.MEAN, dtype=ref.dtype, device=ref.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, dtype=ref.dtype, device=ref.device).view(1, 3, 1, 1)
        pools, logits = [], []
        for chunk in x.split(batch_size):
            z = F.interpolate(chunk.to(ref), size=(299, 299), mode="bilinear", align_corners=False, antialias=False)
            self._pool.clear()
            out = self.net((z - mean) / std)
            logits.append(out.to("cpu", torch.float64))
            pools.append(self._pool.pop().flatten(1).to("cpu", torch.float64))
        return torch.cat(pools), torch.cat(logits)


class FidInception:
    """The standard FID Inception (module docstring) with :class:`InceptionFeatures`' interface:
    ``features(x)`` → (pool ``[B, 2048]``, unbiased logits ``[B, 1008]``), float64 on CPU.

    Images ``[B, C, H, W]`` in [0, 1] are quantised to 8 bits (``round(255 x)``, as an image file
    stores them) and handed to torch-fidelity's extractor, which resizes them to 299 × 299 with
    TensorFlow 1.x's bilinear interpolation — the official FID pipeline.
    """

    standard = True
    NAME = "pt_inception-2015-12-05 (torch-fidelity inception-v3-compat)"

    def __init__(self, net: torch.nn.Module):
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path) -> "FidInception":
        """Build from the local ``pt_inception-2015-12-05-6726825d.pth`` (keys checked strictly)."""
        import tempfile

        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:  # pragma: no cover
            raise ModuleNotFoundError("the standard FID Inception needs torch-fidelity: pip install torch-fidelity") from err
        p = _need(path, "fid_inception")
        state = _read(p)  # weights_only: a pickle that runs code is refused here
        # torch-fidelity reads its weights with torch.load(weights_only=False); it gets a copy that holds
        # nothing but the tensors just checked
        with tempfile.TemporaryDirectory() as tmp:
            safe = Path(tmp) / "weights.pth"
            torch.save({k: v.contiguous() for k, v in state.items()}, safe)
            try:
                net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                  feature_extractor_weights_path=str(safe))
            except RuntimeError as err:  # load_state_dict's missing / unexpected keys
                raise CheckpointError(f"{p} is not the FID Inception state dict: {str(err).splitlines()[0]}") from err
        return cls(net)

    def to(self, device) -> "FidInception":
        self.net.to(device)
        return self

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 32) -> tuple[Tensor, Tensor]:
        x = _rgb(x)
        ref = next(self.net.parameters())
        pools, logits = [], []
        for chunk in x.split(batch_size):
            u8 = (chunk.clamp(0, 1) * 255).round().to(torch.uint8).to(ref.device)
            pool, lg = self.net(u8)
            pools.append(pool.to("cpu", torch.float64))
            logits.append(lg.to("cpu", torch.float64))
        return torch.cat(pools), torch.cat(logits)


def kid_from_features(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) by torch-fidelity's ``kid_features_to_metric``:
    the unbiased MMD² with the cubic polynomial kernel over ``subsets`` random subsets (mean, std);
    ``subset_size`` is capped at the smaller set's size."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, b = torch.as_tensor(_f64(f1)), torch.as_tensor(_f64(f2))
    size = min(int(subset_size), len(a), len(b))
    out = kid_features_to_metric(a, b, kid_subsets=int(subsets), kid_subset_size=size, kid_degree=3, kid_gamma=None,
                                 kid_coef0=1, rng_seed=int(seed), verbose=False)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def _f64(a) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """``‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)`` with ``scipy.linalg.sqrtm``; as the standard FID
    code does, ``eps·I`` is added to both covariances when the product's square root is not finite,
    and a negligible imaginary part (diagonal within 1e-3) is dropped."""
    from scipy import linalg

    mu1, mu2, cov1, cov2 = _f64(mu1), _f64(mu2), _f64(cov1), _f64(cov2)
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(cov1.shape[0])
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: (Σ1 Σ2)^½ has an imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def _trace_sqrt_lowrank(a1: np.ndarray, a2: np.ndarray) -> float:
    """``tr (Σ1 Σ2)^½`` from centred samples ``a1 [n1, d]``, ``a2 [n2, d]`` (``Σi = aiᵀai / (ni − 1)``):
    the non-zero eigenvalues of Σ1 Σ2 are the squared singular values of ``a1 a2ᵀ / √((n1−1)(n2−1))``."""
    s = np.linalg.svd(a1 @ a2.T, compute_uv=False)
    return float(s.sum() / math.sqrt((a1.shape[0] - 1) * (a2.shape[0] - 1)))


def fid_from_features(f1, f2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``[n, d]`` (covariance with
    ddof = 1). When a set has no more samples than dimensions (covariances singular) the trace of
    the square root is computed exactly from the samples' cross-Gram matrix instead of ``sqrtm``."""
    f1, f2 = _f64(f1), _f64(f2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"fid_from_features: need two [n ≥ 2, d] sets, got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    if min(len(f1), len(f2)) > f1.shape[1]:
        return frechet_distance(mu1, np.cov(f1, rowvar=False), mu2, np.cov(f2, rowvar=False))
    a1, a2 = f1 - mu1, f2 - mu2
    tr1, tr2 = (a1**2).sum() / (len(a1) - 1), (a2**2).sum() / (len(a2) - 1)
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * _trace_sqrt_lowrank(a1, a2))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception score ``exp(E_x KL(p(y|x) ‖ p(y)))`` per split of the logits ``[n, K]``; (mean, std
    over splits, std with ddof = 0 as in Salimans et al.'s code)."""
    lg = torch.as_tensor(_f64(logits))
    if lg.ndim != 2 or not 1 <= splits <= lg.shape[0]:
        raise ValueError(f"inception_score: need logits [n, K] with n ≥ splits = {splits}, got {list(lg.shape)}")
    scores = []
    for part in lg.tensor_split(splits):
        logp = torch.log_softmax(part, 1)
        p = logp.exp()
        py = p.mean(0, keepdim=True)
        kl = (p * logp).sum(1) - torch.special.xlogy(p, py).sum(1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_radius(f: Tensor, k: int, chunk: int) -> Tensor:
    return torch.cat([torch.cdist(c, f).kthvalue(k + 1, dim=1).values for c in f.split(chunk)])  # +1: itself


def _covered(query: Tensor, ref: Tensor, radius: Tensor, chunk: int) -> Tensor:
    return torch.cat([(torch.cdist(c, ref) <= radius).any(1) for c in query.split(chunk)])


def precision_recall(real_feats, fake_feats, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
    balls around its samples with radius the distance to the k-th nearest other sample. Precision =
    fraction of fake samples inside the real manifold, recall = fraction of real samples inside the
    fake one. Distances by ``torch.cdist`` in float64, ``chunk`` rows at a time."""
    real, fake = torch.as_tensor(_f64(real_feats)), torch.as_tensor(_f64(fake_feats))
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision_recall: need more than k = {k} samples per set, got {len(real)} and {len(fake)}")
    r_real, r_fake = _kth_radius(real, k, chunk), _kth_radius(fake, k, chunk)
    precision = _covered(fake, real, r_real, chunk).double().mean()
    recall = _covered(real, fake, r_fake, chunk).double().mean()
    return float(precision), float(recall)


def load_perceptual(lpips_backbone: str | Path | None = None, lpips_linear: str | Path | None = None,
                    lpips_net: str = "alex", inception: str | Path | None = None,
                    fid_inception: str | Path | None = None) -> dict:
    """``{"lpips": LPIPS | None, "inception": FidInception | InceptionFeatures | None}`` from the given
    files (None → absent), for ``perceptual_metrics(x_hat, x, **load_perceptual(...))``.
    ``fid_inception`` (the standard FID network, :class:`FidInception`) and ``inception``
    (torchvision's) are alternatives: give one. Every named file is checked before any network is built."""
    if lpips_linear is not None and lpips_backbone is None:
        raise ValueError("load_perceptual: lpips_linear given without lpips_backbone")
    if inception is not None and fid_inception is not None:
        raise ValueError("load_perceptual: give fid_inception (the standard FID network, comparable with published "
                         "FIDs) or inception (torchvision's), not both")
    for path, kind in ((lpips_backbone, _check_net(lpips_net)), (lpips_linear, "linear"), (inception, "inception"),
                       (fid_inception, "fid_inception")):
        if path is not None:
            _need(path, kind, lpips_net)
    net = (FidInception.from_file(fid_inception) if fid_inception is not None else
           InceptionFeatures.from_file(inception) if inception is not None else None)
    return {"lpips": None if lpips_backbone is None else LPIPS.from_files(lpips_backbone, lpips_linear, lpips_net),
            "inception": net}


def perceptual_metrics(x_hat: Tensor, x_true: Tensor, *, lpips: LPIPS | None = None,
                       inception: InceptionFeatures | None = None, k: int = 3, batch_size: int = 32) -> dict:
    """Perceptual metrics of reconstructions ``x_hat`` against ground truths ``x_true`` (``[B, C, H, W]``
    in ``[0, 1]``).

    * with ``lpips``: ``"lpips"``, one float per image;
    * with ``inception``: set-level ``"fid"`` (reconstructions vs ground truths), ``"inception_score"``
      and ``"inception_score_std"`` (of the reconstructions, ``min(10, B)`` splits), ``"precision"``
      and ``"recall"`` (ground truths as the real set, k-NN with ``min(k, B − 1)``), ``"kid"`` and
      ``"kid_std"`` (:func:`kid_from_features`); NaN when B < 2. With :class:`FidInception` the values
      are the standard ones (comparable with published tables at equal set size).

    FID on fewer than ~2048 images is biased (upwards, more so for fewer images): compare values only
    at equal set size. See :class:`InceptionFeatures` for why values are not comparable with
    published FIDs.
    """
    if x_hat.shape != x_true.shape:
        raise ValueError(f"perceptual_metrics: {list(x_hat.shape)} and {list(x_true.shape)} differ in shape")
    out: dict = {}
    if lpips is not None:
        ref = next(lpips.parameters())
        with torch.no_grad():
            out["lpips"] = [float(v) for batch in zip(x_hat.split(batch_size), x_true.split(batch_size))
                            for v in lpips(batch[0].to(ref.device), batch[1].to(ref.device)).cpu()]
    if inception is not None:
        pool_hat, logits_hat = inception.features(x_hat, batch_size)
        pool_true, _ = inception.features(x_true, batch_size)
        n = x_hat.shape[0]
        out["inception_score"], out["inception_score_std"] = inception_score(logits_hat, min(10, n))
        if n < 2:
            out.update(fid=math.nan, precision=math.nan, recall=math.nan)
        else:
            out["fid"] = fid_from_features(pool_hat, pool_true)
            out["kid"], out["kid_std"] = kid_from_features(pool_hat, pool_true)
            out["precision"], out["recall"] = precision_recall(pool_true, pool_hat, k=min(k, n - 1))
    return out
