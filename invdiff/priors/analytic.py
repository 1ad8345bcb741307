"""Analytic priors with exact denoisers and exact linear-Gaussian posteriors: the test oracle.

For a Gaussian mixture ``p(x₀) = Σ_k π_k N(μ_k, Σ_k)`` and ``x = x₀ + σ n``:

    p(k | x) ∝ π_k N(x; μ_k, Σ_k + σ² I),
    E[x₀ | x] = Σ_k p(k | x) (μ_k + Σ_k (Σ_k + σ² I)⁻¹ (x − μ_k)),

computed through ``Σ_k = Q_k diag(λ_k) Q_kᵀ`` (no inverse; Q skipped for diagonal covariances).
For ``y = A x₀ + σ_y n`` the posterior is again a mixture (Bishop 2006, §2.3.3):

    S_k = A Σ_k Aᵀ + σ_y² I,   K_k = Σ_k Aᵀ S_k⁻¹,
    μ_k' = μ_k + K_k (y − A μ_k),   Σ_k' = Σ_k − K_k A Σ_k,   π_k' ∝ π_k N(y; A μ_k, S_k).

Both work on vectors ``[B, d]`` and on images ``[B, C, H, W]`` (flattened, d = C·H·W). By default
model space = physical space (``data_range = model_range = (0, 1)``); ``sample``, ``mean`` and
``covariance`` are in physical units, ``denoiser`` in model space, as for every prior.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._random import GeneratorArg, check_generator, randn
from .base import Prior, per_sample_sigma


def _dense(operator, d: int, shape) -> Tensor:
    """The ``[m, d]`` matrix of a linear operator (its ``matrix`` if it has one)."""
    caps = getattr(operator, "capabilities", frozenset({"linear"}))
    if "linear" not in caps:
        raise ValueError("exact posteriors need a linear operator")
    if hasattr(operator, "matrix"):
        return operator.matrix.to(torch.float64)
    if d > 20000:
        raise ValueError(f"building a dense operator of dimension {d} is too large for an exact posterior")
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    cols = torch.cat([operator.A(eye[i : i + 256]).reshape(min(256, d - i), -1) for i in range(0, d, 256)])
    return cols.T


class GaussianMixturePrior(Prior):
    """``Σ_k π_k N(μ_k, Σ_k)`` in model space.

    :param means: ``[K, d]`` (or ``[K, *shape]``).
    :param weights: ``[K]``, positive (normalised here).
    :param covs: a scalar (isotropic, shared), ``[K]`` (isotropic per component), ``[K, d]``
        (diagonal), ``[K, d, d]`` (full, symmetric positive semi-definite) or ``[1, d, d]`` (one full
        covariance shared by all components: decomposed once).
    :param shape: event shape (default ``(d,)``); e.g. ``(1, 8, 8)`` for images.
    """

    def __init__(self, means, weights, covs, *, shape=None, data_range=(0.0, 1.0), model_range=(0.0, 1.0)):
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        means = means.reshape(K, -1)
        d = means.shape[1]
        shape = (d,) if shape is None else tuple(int(s) for s in shape)
        if math.prod(shape) != d:
            raise ValueError(f"shape {shape} does not hold d = {d} entries")
        super().__init__(shape, data_range=data_range, model_range=model_range)
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.shape[0] != K or not bool((weights > 0).all()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"weights must be {K} positive finite numbers")
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 0:
            covs = covs.expand(K, d).clone()
        elif covs.ndim == 1 and covs.shape[0] == K:
            covs = covs[:, None].expand(K, d).clone()
        if covs.shape == (K, d):
            if not bool((covs >= 0).all()):
                raise ValueError("covariances must be >= 0")
            Q, lam = None, covs
        elif covs.shape == (1, d, d) and K > 1:  # shared: one eigendecomposition, viewed K times
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10 * float(covs.abs().max())):
                raise ValueError("full covariances must be symmetric")
            lam, Q = torch.linalg.eigh(covs)
            if bool((lam < -1e-9 * lam.abs().amax(1, keepdim=True)).any()):
                raise ValueError("full covariances must be positive semi-definite")
            lam, Q = lam.clamp_min(0.0).expand(K, d), Q.expand(K, d, d)
        elif covs.shape == (K, d, d):
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10 * float(covs.abs().max())):
                raise ValueError("full covariances must be symmetric")
            lam, Q = torch.linalg.eigh(covs)
            if bool((lam < -1e-9 * lam.abs().amax(1, keepdim=True)).any()):
                raise ValueError("full covariances must be positive semi-definite")
            lam = lam.clamp_min(0.0)
        else:
            raise ValueError(f"covs must be a scalar, [K], [K, d] or [K, d, d] with K={K}, d={d}; got {tuple(covs.shape)}")
        self.register_buffer("means", means)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("lam", lam)
        self.register_buffer("Q", Q)
        self.K, self.d = K, d
        self._isotropic = Q is None and bool((lam == lam[:, :1]).all())  # shared-variance components

    # -- moments ------------------------------------------------------------------------------
    def cov_matrices(self) -> Tensor:
        """Model-space ``[K, d, d]`` covariances."""
        if self.Q is None:
            return torch.diag_embed(self.lam)
        if self.Q.stride(0) == 0:  # one shared covariance
            return ((self.Q[0] * self.lam[0][None, :]) @ self.Q[0].T).expand(self.K, self.d, self.d)
        return self.Q @ torch.diag_embed(self.lam) @ self.Q.transpose(1, 2)

    def mean(self) -> Tensor:
        """Mixture mean ``[*shape]`` in physical units."""
        return self.to_physical((self.weights[:, None] * self.means).sum(0)).reshape(self.shape)

    def covariance(self) -> Tensor:
        """Mixture covariance ``[d, d]`` in physical units."""
        m = (self.weights[:, None] * self.means).sum(0)
        dev = self.means - m
        cov = (self.weights[:, None, None] * (self.cov_matrices() + dev[:, :, None] * dev[:, None, :])).sum(0)
        return cov / self.scale**2

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, n: int, generator: GeneratorArg = None) -> Tensor:
        """``n`` exact samples ``[n, *shape]`` in physical units."""
        if isinstance(generator, (list, tuple)):  # one generator per item: item i uses only g_i
            check_generator(generator, n)
            k = torch.cat([torch.multinomial(self.weights, 1, generator=g) for g in generator])
        else:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = randn((n, self.d), generator)
        if self.Q is None:
            z = z * self.lam[k].sqrt()
        else:  # the symmetric square root is unique, unlike eigenvectors: same draws on any BLAS/thread count
            root = self._sqrt_cov()
            out = torch.empty_like(z)
            for c in torch.unique(k).tolist():  # one [n_c, d] @ [d, d] product per component, not n d×d gathers
                sel = k == c
                out[sel] = z[sel] @ root[c].T
            z = out
        return self.to_physical(self.means[k] + z).reshape(n, *self.shape)

    def _sqrt_cov(self) -> Tensor:
        """``Σ_k^{1/2} = Q diag(√λ) Qᵀ`` ``[K, d, d]`` (computed once)."""
        if getattr(self, "_sqrt", None) is None or self._sqrt.device != self.Q.device:
            if self.Q.stride(0) == 0:  # one shared covariance
                root = (self.Q[0] * self.lam[0].clamp_min(0).sqrt()[None, :]) @ self.Q[0].T
                self._sqrt = root.expand(self.K, self.d, self.d)
            else:
                self._sqrt = (self.Q * self.lam.clamp_min(0).sqrt()[:, None, :]) @ self.Q.transpose(1, 2)
        return self._sqrt

    # -- denoiser -----------------------------------------------------------------------------
    def _log_resp_and_means(self, x: Tensor, sigma2: Tensor) -> tuple[Tensor, Tensor]:
        """log p(k | x) ``[B, K]`` and E[x₀ | x, k] ``[B, K, d]`` for σ² ``[B, 1]``."""
        dev = x[:, None, :] - self.means[None]  # [B, K, d]
        z = dev if self.Q is None else torch.einsum("kde,bkd->bke", self.Q, dev)
        v = self.lam[None] + sigma2[:, :, None]  # [B, K, d]
        log_n = -0.5 * (z * z / v).sum(-1) - 0.5 * torch.log(2 * math.pi * v).sum(-1)
        log_resp = torch.log_softmax(self.weights.log()[None] + log_n, dim=1)
        shrunk = self.lam[None] / v * z
        cond = shrunk if self.Q is None else torch.einsum("kde,bke->bkd", self.Q, shrunk)
        return log_resp, self.means[None] + cond

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        self.check_input(x)
        return self.raw_denoiser(x, per_sample_sigma(sigma, x))

    def raw_denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        sig = sigma.reshape(-1, 1).to(torch.float64)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if self._isotropic:
            out = self._isotropic_denoiser(flat, sig**2)
        else:
            log_resp, cond_means = self._log_resp_and_means(flat, sig**2)
            out = (log_resp.exp()[:, :, None] * cond_means).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def _isotropic_denoiser(self, x: Tensor, sigma2: Tensor) -> Tensor:
        """E[x₀ | x] for components N(μ_k, c_k I), without [B, K, d] temporaries: with
        v_k = c_k + σ² and a_k = c_k / v_k, p(k | x) ∝ π_k v_k^{−d/2} exp(−‖x − μ_k‖² / 2v_k) and
        E[x₀ | x] = Σ_k p(k | x) ((1 − a_k) μ_k + a_k x) — two [B, d] × [d, K] products."""
        c = self.lam[:, 0][None]  # [1, K]
        v = c + sigma2  # [B, K]
        dist2 = ((x * x).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means**2).sum(1)[None]).clamp_min(0)
        log_resp = torch.log_softmax(self.weights.log()[None] - 0.5 * dist2 / v - 0.5 * self.d * torch.log(v), dim=1)
        r, a = log_resp.exp(), c / v
        return (r * (1 - a)) @ self.means + (r * a).sum(1, keepdim=True) * x

    def velocity(self, x_t: Tensor, t, path=None) -> Tensor:
        """The exact probability-flow velocity on an interpolant ``path`` (x_t = α x₀ + σ ε, model
        space), in closed form in x_t's own coordinates — not through :meth:`denoiser`, so that the
        two check each other — and also at α(t) = 0:

            p(k | x_t) ∝ π_k N(x_t; α μ_k, α² Σ_k + σ² I),   C_k = α² Σ_k + σ² I,
            E[x₀ | x_t, k] = μ_k + α Σ_k C_k⁻¹ (x_t − α μ_k),   E[ε | x_t, k] = σ C_k⁻¹ (x_t − α μ_k),
            v = Σ_k p(k | x_t) (α' E[x₀ | x_t, k] + σ' E[ε | x_t, k])."""
        if path is None:
            raise ValueError("GaussianMixturePrior.velocity needs an interpolant path (invdiff.priors.flow)")
        B = x_t.shape[0]
        tt = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        tt = (tt.expand(B) if tt.ndim == 0 else tt).reshape(B, 1)
        a, s, da, ds = path.alpha(tt), path.sigma(tt), path.d_alpha(tt), path.d_sigma(tt)  # [B, 1]
        flat = x_t.reshape(B, -1).to(torch.float64)
        dev = flat[:, None, :] - a[:, :, None] * self.means[None]  # [B, K, d]
        z = dev if self.Q is None else torch.einsum("kde,bkd->bke", self.Q, dev)
        c = a[:, :, None] ** 2 * self.lam[None] + s[:, :, None] ** 2  # eigenvalues of C_k: [B, K, d]
        log_n = -0.5 * (z * z / c).sum(-1) - 0.5 * torch.log(2 * math.pi * c).sum(-1)
        resp = torch.softmax(self.weights.log()[None] + log_n, dim=1)  # [B, K]
        w = z / c  # C_k⁻¹ (x_t − α μ_k) in the eigenbasis
        x0_k = (a[:, :, None] * self.lam[None] * w)
        eps_k = s[:, :, None] * w
        drift = da[:, :, None] * x0_k + ds[:, :, None] * eps_k
        drift = drift if self.Q is None else torch.einsum("kde,bke->bkd", self.Q, drift)
        v = (resp[:, :, None] * (da[:, :, None] * self.means[None] + drift)).sum(1)
        return v.reshape(x_t.shape).to(x_t.dtype)

    def log_prob(self, x_phys: Tensor) -> Tensor:
        """Exact log-density (physical units) of ``[B, *shape]`` points -> ``[B]``."""
        flat = self.to_model(x_phys).reshape(x_phys.shape[0], -1).to(torch.float64)
        dev = flat[:, None, :] - self.means[None]
        z = dev if self.Q is None else torch.einsum("kde,bkd->bke", self.Q, dev)
        lam = self.lam[None].expand_as(z)
        if bool((lam == 0).any()):
            raise ValueError("log_prob needs non-degenerate covariances")
        log_n = -0.5 * (z * z / lam).sum(-1) - 0.5 * torch.log(2 * math.pi * lam).sum(-1)
        return torch.logsumexp(self.weights.log()[None] + log_n, 1) + self.d * math.log(self.scale)

    # -- exact posterior --------------------------------------------------------------------------
    def posterior(self, operator, y: Tensor, sigma_y) -> "GaussianMixturePrior":
        """Exact posterior of ``x`` (physical units) given ``y = A x + σ_y n`` for a linear
        ``operator`` and one measurement ``y`` (``[*meas]`` or ``[1, *meas]``), σ_y in
        measurement units. Returns a :class:`GaussianMixturePrior` with the same affine map."""
        y = torch.as_tensor(y, dtype=torch.float64)
        meas = tuple(getattr(operator, "meas_size", y.shape))
        if y.ndim == len(meas) + 1:
            if y.shape[0] != 1:
                raise ValueError(f"posterior takes one measurement; got a batch of {y.shape[0]} (loop over it)")
            y = y[0]
        sigma_y = float(sigma_y)
        if not sigma_y > 0:
            raise ValueError(f"sigma_y must be > 0, got {sigma_y} (a noiseless posterior is degenerate: "
                             "use a small positive σ_y)")
        A = _dense(operator, self.d, self.shape)
        yv = y.reshape(-1)
        if A.shape[0] != yv.numel():
            raise ValueError(f"y has {yv.numel()} entries but the operator measures {A.shape[0]}")
        # Physical-space prior: x_phys = (x_model − offset)/scale.
        mu = (self.means - self.offset) / self.scale
        # components sharing one isotropic/diagonal covariance share the posterior covariance and
        # gain too: computed once (d = 800, K = 25: seconds instead of minutes)
        shared = self.Q is None and bool((self.lam == self.lam[:1]).all())
        covs = (torch.diag_embed(self.lam[:1]) if shared else self.cov_matrices()) / self.scale**2
        AS = A[None] @ covs  # [K, m, d]
        S = AS @ A.T[None] + sigma_y**2 * torch.eye(A.shape[0], dtype=torch.float64)
        L = torch.linalg.cholesky(S)
        resid = yv[None] - mu @ A.T  # [K, m]
        gain = torch.cholesky_solve(AS, L).transpose(1, 2)  # Σ Aᵀ S⁻¹: [K, d, m]
        mu_post = mu + (gain @ resid[:, :, None])[:, :, 0]
        # Joseph form (I − KA) Σ (I − KA)ᵀ + σ_y² K Kᵀ: positive semi-definite by construction, where
        # Σ − KAΣ loses it to cancellation for ill-conditioned A and small σ_y.
        I_KA = torch.eye(self.d, dtype=torch.float64) - gain @ A
        cov_post = I_KA @ covs @ I_KA.transpose(1, 2) + sigma_y**2 * gain @ gain.transpose(1, 2)
        cov_post = 0.5 * (cov_post + cov_post.transpose(1, 2))
        w = torch.cholesky_solve(resid[:, :, None], L.expand(resid.shape[0], *L.shape[1:]))[:, :, 0]
        log_det = 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
        log_w = self.weights.log() - 0.5 * (resid * w).sum(1) - 0.5 * log_det
        weights = torch.softmax(log_w, 0)
        keep = weights > 1e-300  # drop components with zero posterior mass
        return GaussianMixturePrior(
            mu_post[keep] * self.scale + self.offset, weights[keep],
            (cov_post if shared and int(keep.sum()) > 1 else cov_post.expand(self.K, -1, -1)[keep]) * self.scale**2,
            shape=self.shape, data_range=self.data_range, model_range=self.model_range,
        )


class GaussianPrior(GaussianMixturePrior):
    """``N(mean, cov)``: ``cov`` a scalar (isotropic), ``[d]`` (diagonal) or ``[d, d]`` (full)."""

    def __init__(self, mean, cov, *, shape=None, data_range=(0.0, 1.0), model_range=(0.0, 1.0)):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.ndim == 1 and cov.shape[0] != d:
            raise ValueError(f"a diagonal cov needs {d} entries, got {cov.shape[0]}")
        if cov.ndim == 2 and cov.shape != (d, d):
            raise ValueError(f"a full cov needs shape ({d}, {d}), got {tuple(cov.shape)}")
        covs = cov if cov.ndim == 0 else cov[None]
        super().__init__(mean.reshape(1, d), torch.ones(1), covs, shape=shape if shape is not None else tuple(mean.shape) or (1,),
                         data_range=data_range, model_range=model_range)


def smooth_cov(h: int, w: int, length: float = 1.5, var: float = 0.25, nugget: float = 0.02) -> Tensor:
    """Squared-exponential covariance over an h×w pixel grid plus a nugget (well conditioned)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    return var * torch.exp(-d2 / (2 * length**2)) + nugget * torch.eye(h * w, dtype=torch.float64)


def smooth_gaussian(shape, mean: float = 0.5, length: float = 2.0, var: float = 0.04, nugget: float = 0.002,
                    data_range=(0.0, 1.0), model_range=(-1.0, 1.0)) -> GaussianPrior:
    """An analytic image prior ``N(mean, Σ)``: each channel a smooth Gaussian field
    (:func:`smooth_cov`: correlation length ``length`` pixels, variance ``var + nugget``), channels
    independent. Exact denoiser and posterior; dense ``d × d`` covariance (``d = C·H·W ≤ 4096``),
    so meant for small images and tests, not for real reconstructions."""
    C, H, W = (int(s) for s in shape)
    d = C * H * W
    if d > 4096:
        raise ValueError(f"smooth_gaussian keeps a dense {d}×{d} covariance; use images of at most 4096 pixels "
                         f"(e.g. shape=[1,64,64]), got {[C, H, W]}")
    block = smooth_cov(H, W, length=length, var=var, nugget=nugget)
    cov = torch.block_diag(*([block] * C))
    return GaussianPrior(torch.full((d,), float(mean)), cov, shape=(C, H, W), data_range=tuple(data_range),
                         model_range=tuple(model_range))


def exact_consistency_function(prior: GaussianMixturePrior, x: Tensor, sigma, sigma_min: float) -> Tensor:
    """The exact consistency function f*(x, σ) of a Gaussian prior N(μ, Σ = Q diag(λ) Qᵀ): the end
    point at ``sigma_min`` of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (EDM form) through x
    at σ. With D(x, σ) = μ + Σ(Σ + σ² I)⁻¹(x − μ) the ODE is linear and, per eigen-direction,
    d(x − μ)_k/dσ = σ (x − μ)_k / (λ_k + σ²), so (x_σ − μ)_k / √(λ_k + σ²) is constant along it:

        f*(x, σ) = μ + Q diag(√((λ + σ_min²) / (λ + σ²))) Qᵀ (x − μ).

    It is the oracle of consistency models (Song et al. 2023, arXiv:2303.01469): f*(x, σ_min) = x,
    and x_σ ~ N(μ, Σ + σ² I) is mapped onto N(μ, Σ + σ_min² I).

    :param prior: a one-component :class:`GaussianMixturePrior` (a :class:`GaussianPrior`).
    :param x: ``[B, *prior.shape]`` in model space.
    :param sigma: a float or ``[B]`` tensor, > 0; ``sigma_min`` a float ≥ 0 (0: the data end point).
    :returns: ``[B, *prior.shape]`` in x's dtype (computed in float64)."""
    if prior.K != 1:
        raise ValueError(f"the closed-form consistency function needs a Gaussian (K = 1), got K = {prior.K}: "
                         "a mixture's PF-ODE is not linear")
    sigma_min = float(sigma_min)
    if not (math.isfinite(sigma_min) and sigma_min >= 0):
        raise ValueError(f"sigma_min must be finite and >= 0, got {sigma_min}")
    prior.check_input(x)
    s2 = per_sample_sigma(sigma, x).reshape(-1, 1).to(torch.float64) ** 2  # [B, 1]
    dev = x.reshape(x.shape[0], -1).to(torch.float64) - prior.means  # [B, d]
    lam = prior.lam[:1]  # [1, d]
    ratio = ((lam + sigma_min**2) / (lam + s2)).sqrt()  # [B, d]
    if prior.Q is None:
        out = prior.means + ratio * dev
    else:
        Q = prior.Q[0]
        out = prior.means + (ratio * (dev @ Q)) @ Q.T
    return out.reshape(x.shape).to(x.dtype)


class ExactConsistencyNetwork(torch.nn.Module):
    """The raw network F for which c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ)) is the exact f* of
    a Gaussian prior (:func:`exact_consistency_function`; the scalings solved for F), so that a
    :class:`~invdiff.priors.consistency.ConsistencyPrior` around it is the exact consistency model —
    the oracle of the consistency solvers' tests. Called as ``F(x_in, c_noise)`` with c_noise = ¼ ln σ."""

    def __init__(self, prior: GaussianMixturePrior, sigma_data: float = 0.5, sigma_min: float = 0.002):
        super().__init__()
        self.prior, self.sigma_data, self.sigma_min = prior, float(sigma_data), float(sigma_min)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        from .consistency import consistency_scalings

        sigma = torch.exp(4 * c_noise).reshape(-1, *([1] * (x_in.ndim - 1)))
        c_skip, c_out, c_in, _ = consistency_scalings(sigma, self.sigma_data, self.sigma_min)
        x = x_in / c_in
        f = exact_consistency_function(self.prior, x, sigma.reshape(-1), self.sigma_min)
        return torch.where(c_out == 0, torch.zeros_like(x), (f - c_skip * x) / c_out)


def exact_consistency_prior(prior: GaussianMixturePrior, sigma_range=(0.002, 80.0), sigma_data: float = 0.5):
    """A :class:`~invdiff.priors.consistency.ConsistencyPrior` whose consistency function is the exact
    f* of the Gaussian ``prior`` (same shape, data and model ranges), boundary σ_min = ``sigma_range[0]``."""
    from .consistency import ConsistencyPrior

    lo = float(sigma_range[0])
    return ConsistencyPrior(ExactConsistencyNetwork(prior, sigma_data, lo), shape=prior.shape,
                            sigma_range=sigma_range, sigma_data=sigma_data, data_range=prior.data_range,
                            model_range=prior.model_range)
