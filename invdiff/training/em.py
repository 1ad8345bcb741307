"""Expectation–maximisation: a diffusion prior learned from measurements alone by alternating
posterior sampling with the package's own solvers (E-step) and training on the samples (M-step)
— Rozet, Andry, Lanusse & Louppe, "Learning diffusion priors from observations by expectation
maximization" (NeurIPS 2024, Alg. 1), and Bai et al. 2024 (the same alternation for image priors).

Round k = 1 … K: E-step — one posterior sample x_i ~ q_{θ_{k−1}}(x | y_i) per measurement with
``em_solver`` (``em_solver_steps`` steps, the sample's own operator and σ_y); M-step — θ_k: the EDM
network trained ``em_m_steps`` steps on those samples, starting from θ_{k−1}'s weights (Rozet et
al. continue training rather than restart). θ_0, ``em_init="gaussian"``: a Gaussian fitted to the
measurements by closed-form EM (:func:`gaussian_em`, Rozet et al. §4: their initial prior is a
Gaussian fitted by EM), diagonal in the measurement domain's coordinates (pixels; Fourier
coefficients for MRI — a stationary Gaussian), whose exact posterior gives round 1's samples; or a
prior file / shipped name (e.g. an ambient prior to refine).

Resumable per round: ``<out>/round_<k>/samples.safetensors`` (the E-step's samples, atomic) and
``<out>/round_<k>/`` (the M-step's trainer: checkpoint, prior.safetensors, log). A finished round is
never recomputed; a killed M-step resumes from its checkpoint. ``<out>/prior.safetensors`` is the
last round's prior.

Deviations: Rozet et al. sample with MMPS (moment-matching posterior sampling, not in this package);
any solver of :data:`invdiff.solvers.SOLVERS` is used here (default ``ddnm``: exact data consistency
on MRI's SVD and no network gradient — cheap on CPU). Samples are clipped to the data range before
training (the network is trained on [0, 1] images). Their Gaussian initialisation has a full or
low-rank covariance; here it is diagonal in the domain's coordinates (closed form at 64×64).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .corrupted import make_domain


# -- the generic loop ----------------------------------------------------------------------------

def expectation_maximisation(prior, e_step: Callable, m_step: Callable, rounds: int, *, start: int = 1,
                             on_round: Callable | None = None):
    """θ_k = m_step(e_step(θ_{k−1}, k), θ_{k−1}, k) for k = start … rounds; returns the last prior.
    ``on_round(k, samples, prior)`` after each round."""
    for k in range(start, rounds + 1):
        samples = e_step(prior, k)
        prior = m_step(samples, prior, k)
        if on_round is not None:
            on_round(k, samples, prior)
    return prior


# -- Gaussian pieces (closed forms) --------------------------------------------------------------

def fit_gaussian(samples: Tensor) -> tuple[Tensor, Tensor]:
    """The M-step of a full-covariance Gaussian: the samples' mean and covariance (maximum likelihood)."""
    x = samples.reshape(samples.shape[0], -1).to(torch.float64)
    mu = x.mean(0)
    d = x - mu
    return mu, d.T @ d / x.shape[0]


def gaussian_posterior_samples(mean: Tensor, cov: Tensor, ms, generator: torch.Generator) -> Tensor:
    """One exact posterior sample per measurement of a pixel-kind set (``inpainting``/``denoising``)
    under the prior N(mean, cov) (flattened image; dense conditioning, for small images)."""
    if ms.kind == "mri":
        raise ValueError("gaussian_posterior_samples is for pixel measurements; MRI uses gaussian_em's diagonal form")
    N = len(ms)
    C, H, W = ms.image_shape
    d = C * H * W
    obs = ms.mask[:, None].expand(N, C, H, W).reshape(N, d) > 0
    y = ms.y.reshape(N, d).to(torch.float64)
    out = torch.empty(N, d, dtype=torch.float64)
    z = torch.randn(N, d, generator=generator, dtype=torch.float64)
    patterns, inverse = torch.unique(obs, dim=0, return_inverse=True)
    for p, pat in enumerate(patterns):
        idx = (inverse == p).nonzero().flatten()
        o = pat.nonzero().flatten()
        s2 = ms.sigma_y[idx].to(torch.float64)
        for i_chunk in idx.split(1) if not bool((s2 == s2[0]).all()) else [idx]:
            s = float(ms.sigma_y[i_chunk[0]])
            Soo = cov[o][:, o] + s * s * torch.eye(len(o), dtype=torch.float64)
            K = cov[:, o] @ torch.linalg.inv(Soo)                     # gain [d, |o|]
            post_cov = cov - K @ cov[o]
            L = torch.linalg.cholesky(0.5 * (post_cov + post_cov.T) + 1e-12 * torch.eye(d, dtype=torch.float64))
            m = mean + (y[i_chunk][:, o] - mean[o]) @ K.T
            out[i_chunk] = m + z[i_chunk] @ L.T
    return out.reshape(N, C, H, W)


def gaussian_em(ms, iters: int = 10, chunk: int = 1024) -> dict:
    """Closed-form EM for a Gaussian diagonal in the measurement domain's coordinates (pixels, or the
    real image's Fourier coefficients for MRI: a stationary Gaussian with a mean image): with
    per-coefficient observations ĉ = x̂ + e, E|e|² = τ² (:mod:`invdiff.training.corrupted`), the
    posterior of each coefficient is m = μ + v/(v + τ²)(ĉ − μ), variance vτ²/(v + τ²) where observed
    (the prior elsewhere); μ ← mean m, v ← mean(|m − μ|² + posterior variance). Physical units.
    Returns ``{"mean", "var", "kind", "image_shape", "iters"}`` (``mean``: coefficients)."""
    dom = make_domain(ms.kind, ms.image_shape)

    def parts(sl):
        y, m, s = ms.batch(torch.arange(sl.start, sl.stop))
        return dom.observed(y.to(torch.float64), m.to(torch.float64), s)

    slices = [slice(a, min(a + chunk, len(ms))) for a in range(0, len(ms), chunk)]
    num, cnt = 0.0, 0.0
    for sl in slices:  # initial mean: the average of the observed coefficients
        c, S, _ = parts(sl)
        num, cnt = num + (c * S).sum(0), cnt + S.sum(0)
    mu = num / cnt.clamp(min=1)
    var = None
    for sl in slices:
        c, S, _ = parts(sl)
        dv = (S * (c - mu).abs().square()).sum(0)
        var = dv if var is None else var + dv
    var = (var / cnt.clamp(min=1)).clamp(min=1e-8)
    var = torch.where(cnt > 0, var, var[cnt > 0].mean())
    for _ in range(int(iters)):
        s1, s2 = 0.0, 0.0
        for sl in slices:
            c, S, tau2 = parts(sl)
            g = var / (var + tau2)
            m = torch.where(S > 0, mu + g * (c - mu), mu.expand_as(c))
            pv = torch.where(S > 0, var * tau2 / (var + tau2), var.expand_as(S))
            s1 = s1 + m.sum(0)
            s2 = s2 + (m.abs().square() + pv).sum(0)
        mu = s1 / len(ms)
        var = (s2 / len(ms) - mu.abs().square()).clamp(min=1e-10)
    return {"mean": mu, "var": var, "kind": ms.kind, "image_shape": tuple(ms.image_shape), "iters": int(iters)}


def gaussian_em_posterior_samples(g: dict, ms, generator: torch.Generator, chunk: int = 1024) -> Tensor:
    """One exact posterior sample per measurement under :func:`gaussian_em`'s Gaussian (physical units)."""
    dom = make_domain(ms.kind, ms.image_shape)
    mu, var = g["mean"], g["var"]
    out = []
    for a in range(0, len(ms), chunk):
        y, m, s = ms.batch(torch.arange(a, min(a + chunk, len(ms))))
        c, S, tau2 = dom.observed(y.to(torch.float64), m.to(torch.float64), s)
        m_post = torch.where(S > 0, mu + var / (var + tau2) * (c - mu), mu.expand_as(c))
        pv = torch.where(S > 0, var * tau2 / (var + tau2), var.expand_as(S))
        xi = dom.forward(torch.randn((c.shape[0], *ms.image_shape), generator=generator, dtype=torch.float64))
        out.append(dom.to_image(m_post + pv.sqrt() * xi))
    return torch.cat(out).float()


def save_gaussian(path, g: dict) -> Path:
    """Write :func:`gaussian_em`'s result as safetensors (real and imaginary parts of the mean)."""
    from ..priors.checkpoints import save_safetensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = torch.as_tensor(g["mean"])
    tensors = {"mean_re": mean.real.contiguous() if mean.is_complex() else mean.contiguous(),
               "mean_im": mean.imag.contiguous() if mean.is_complex() else torch.zeros_like(mean),
               "var": torch.as_tensor(g["var"]).contiguous()}
    meta = {"kind": g["kind"], "image_shape": list(g["image_shape"]), "iters": g["iters"], "complex": mean.is_complex()}
    save_safetensors(path, tensors, {"invdiff_gaussian_em": json.dumps(meta)})
    return path


def load_gaussian(path) -> dict:
    """Read :func:`save_gaussian`'s file."""
    from ..priors.native import read_tagged

    t, meta = read_tagged(Path(path), "invdiff_gaussian_em", "a Gaussian EM file")
    mean = torch.complex(t["mean_re"], t["mean_im"]) if meta["complex"] else t["mean_re"]
    return {"mean": mean, "var": t["var"], "kind": meta["kind"], "image_shape": tuple(meta["image_shape"]),
            "iters": meta["iters"]}


def gaussian_em_mean_image(g: dict) -> Tensor:
    dom = make_domain(g["kind"], g["image_shape"])
    return dom.to_image(g["mean"][None])[0]


# -- the network EM run ----------------------------------------------------------------------------

class PosteriorSamples:
    """The M-step's training data: one round's posterior samples ``[N, C, S, S]`` in [0, 1] (never a
    clean image), drawn uniformly with replacement."""

    def __init__(self, samples: Tensor, k: int):
        self.images = samples.float().contiguous()
        self.channels, self.size, self.k = int(samples.shape[1]), int(samples.shape[-1]), k

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.images[torch.randint(0, self.images.shape[0], (n,), generator=generator)]

    def describe(self) -> str:
        return f"EM round {self.k}: {self.images.shape[0]} posterior samples {self.channels}×{self.size}×{self.size}"


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) % (2**63 - 1)
    return h


class EMRun:
    """``invdiff-train settings.objective=em``: rounds of posterior sampling and training in ``out``
    (module docstring). ``settings``: the run's :class:`~invdiff.training.TrainSettings` (``em_*``
    fields; the M-step uses its EDM settings with ``steps = em_m_steps``)."""

    def __init__(self, ms, out_dir, settings, *, device="cpu", progress: bool = True, log: Callable = print):
        if not getattr(ms, "measurements", False):
            raise ValueError("settings.objective=em learns from measurements: use data=measurements data.source=<file.h5>")
        from ..solvers import SOLVERS

        if settings.em_solver not in SOLVERS:
            raise ValueError(f"settings.em_solver={settings.em_solver!r} is not a solver; choose one of {sorted(SOLVERS)}")
        self.ms, self.out, self.s = ms, Path(out_dir), settings
        self.device, self.progress, self.log = device, progress, log
        self.solver = SOLVERS[settings.em_solver]

    def round_dir(self, k: int) -> Path:
        return self.out / f"round_{k}"

    def initial_prior(self):
        if self.s.em_init == "gaussian":
            path = self.out / "round_0" / "gaussian.safetensors"
            if path.is_file():
                return load_gaussian(path)
            g = gaussian_em(self.ms, iters=self.s.em_gaussian_iters)
            save_gaussian(path, g)
            return g
        from ..priors import load

        return load(self.s.em_init)

    def e_step(self, prior, k: int) -> Tensor:
        from ..priors.checkpoints import save_safetensors
        from ..priors.native import read_tagged

        path = self.round_dir(k) / "samples.safetensors"
        if path.is_file():
            tensors, _ = read_tagged(path, "invdiff_em", "an EM samples file")
            return tensors["samples"]
        g = torch.Generator().manual_seed(_seed(self.s.seed, k))
        if isinstance(prior, dict):  # θ_0 Gaussian: exact posterior samples
            x = gaussian_em_posterior_samples(prior, self.ms, g)
            how = {"sampler": "exact Gaussian posterior (gaussian_em)"}
        else:
            x = self._solve_all(prior, k)
            how = {"sampler": self.s.em_solver, "steps": self.s.em_solver_steps}
        lo, hi = self.ms.data_range
        x = x.clamp(lo, hi).float()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(path, {"samples": x.contiguous()},
                         {"invdiff_em": json.dumps({"round": k, "n": len(self.ms), **how})})
        return x

    def _solve_all(self, prior, k: int) -> Tensor:
        from tqdm import tqdm

        prior = prior.to(self.device).eval()
        xs = []
        for i in tqdm(range(len(self.ms)), desc=f"EM round {k} E-step", disable=not self.progress):
            op = self.ms.operator(i).to(self.device)
            y, _, s = self.ms.batch(torch.tensor([i]))
            gen = torch.Generator(device=self.device).manual_seed(_seed(self.s.seed, k, i))
            x = self.solver(y.to(self.device, torch.float64), op, prior, sigma_y=float(s[0]),
                            steps=int(self.s.em_solver_steps), generator=gen)
            xs.append(x.detach().cpu())
        return torch.cat(xs)

    def m_step(self, samples: Tensor, prior, k: int):
        from ..priors import load
        from .trainer import Trainer

        d = self.round_dir(k)
        done = d / "prior.safetensors"
        if done.is_file():
            return load(done)
        st = replace(self.s, objective="edm", steps=int(self.s.em_m_steps))
        tr = Trainer(PosteriorSamples(samples, k), d, st, device=self.device,
                     progress=self.progress)
        if tr.step == 0 and not isinstance(prior, dict):  # continue from θ_{k−1} (Rozet et al.)
            net = getattr(prior, "net", None)
            try:
                tr.net.load_state_dict(net.state_dict())
                tr.ema.load_state_dict(net.state_dict())
            except (AttributeError, RuntimeError) as e:
                raise ValueError(f"the EM prior of round {k - 1} has another network than settings.arch: {e}") from e
        tr.train()
        tr.export(done)
        tr.figures(samples=16 if k == self.s.em_rounds else 0)
        return load(done)

    def run(self):
        prior = self.initial_prior()
        start = 1
        while start <= self.s.em_rounds and (self.round_dir(start) / "prior.safetensors").is_file():
            start += 1
        if start > 1:
            from ..priors import load

            prior = load(self.round_dir(start - 1) / "prior.safetensors")

        def on_round(k, samples, p):
            self.log(f"EM round {k}/{self.s.em_rounds}: {len(samples)} posterior samples, prior "
                     f"{self.round_dir(k) / 'prior.safetensors'}")
            state = {"rounds_done": k, "settings": {f: getattr(self.s, f) for f in ("em_rounds", "em_solver",
                                                                                   "em_solver_steps", "em_m_steps",
                                                                                   "em_init", "seed")},
                     "data": self.ms.describe()}
            (self.out / "em.json").write_text(json.dumps(state, indent=1))

        prior = expectation_maximisation(prior, self.e_step, self.m_step, self.s.em_rounds, start=start,
                                         on_round=on_round)
        if not isinstance(prior, dict):
            last = self.round_dir(self.s.em_rounds) / "prior.safetensors"
            final = self.out / "prior.safetensors"
            if last.is_file() and (not final.is_file() or final.read_bytes() != last.read_bytes()):
                tmp = final.with_name(".prior.safetensors.tmp")
                tmp.write_bytes(last.read_bytes())
                tmp.replace(final)
        return prior


__all__ = ["EMRun", "expectation_maximisation", "fit_gaussian", "gaussian_posterior_samples", "gaussian_em",
           "gaussian_em_posterior_samples", "gaussian_em_mean_image"]
