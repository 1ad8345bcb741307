"""What each solver's output is, as a statement about the posterior: the one table of solver classes.

* ``exact`` — an *asymptotically exact sampler*: its draws converge in law to p(x | y) when the
  budget named in ``limit`` goes to infinity (for the prior it is given: a perfect denoiser).
* ``approx`` — an *approximate sampler*: random draws whose law differs from p(x | y) by an
  approximation that no budget removes (``limit`` names it); exact only in the cases stated.
* ``point`` — a *point estimator*: an optimiser or a deterministic map (MAP-like, MMSE-like or
  regularised); a spread over restarts is not a posterior spread, and the apps and benchmarks
  report no posterior std or coverage for it.

The classes and their justifications are measured in benchmarks/results/posterior_convergence.md
(normalised distance to exact Gaussian-mixture posteriors against NFE; coverage of credible
intervals). ``tests/test_solver_classes.py`` checks the table covers every registered solver.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SolverClass:
    kind: str   # "exact" | "approx" | "point"
    limit: str  # exact: what must go to infinity; approx: the approximation; point: what it estimates

    def __post_init__(self):
        if self.kind not in ("exact", "approx", "point"):
            raise ValueError(f"solver class kind must be exact, approx or point, got {self.kind!r}")


_E, _A, _P = "exact", "approx", "point"

#: Every solver of :data:`invdiff.solvers.SOLVERS` and :data:`~invdiff.solvers.BRIDGE_SOLVERS` by name.
SOLVER_CLASSES: dict[str, SolverClass] = {
    "mcgdiff": SolverClass(_E, "particles → ∞ (and steps → ∞ for the DDPM kernel); converges at a fixed "
                               "budget with adaptive resampling (ESS < N/2), see configs/experiment/mcgdiff_converging"),
    "pnpdm": SolverClass(_E, "ρ_min → 0 and Gibbs iterations → ∞ at each ρ (prior_steps → ∞ for the exact "
                             "denoising step); mixing between well-separated modes is exponentially slow in "
                             "separation/ρ, so on multimodal posteriors it does not converge at practical budgets"),
    "tmpd": SolverClass(_A, "p(x₀ | x_t) projected on a Gaussian with Tweedie's two moments (exact for Gaussian priors)"),
    "pigdm": SolverClass(_A, "p(x₀ | x_t) ≈ N(x̂₀, r_t²) with a scalar r_t (exact for isotropic Gaussian priors "
                             "with prior_variance matched and the posterior guidance step)"),
    "daps": SolverClass(_A, "p(x₀ | x_σ) ≈ N(x̂₀, r_σ²) in each annealing level's Langevin target (exact for "
                            "isotropic Gaussian priors with r_data_std matched and converged Langevin chains)"),
    "dps": SolverClass(_A, "p(y | x_t) ≈ p(y | x̂₀(x_t)) (Tweedie plug-in) with a step size ζ in place of the "
                           "likelihood's scale"),
    "mcg": SolverClass(_A, "DPS's Tweedie plug-in plus a projection onto the measurement"),
    "ddrm": SolverClass(_A, "a variational conditional in the SVD coefficients (η, η_b) that keeps the prior's "
                            "noise level per coefficient; ignores the prior's correlations with observed ones"),
    "ddnm": SolverClass(_A, "range–null-space decomposition: the range replaced by A⁺y (noise-shrunk), the null "
                            "space denoised"),
    "diffpir": SolverClass(_A, "a half-quadratic-splitting proximal step on x̂₀ inside the sampler"),
    "score_sde": SolverClass(_A, "replacement: the range of the state projected onto (a noised) y, ignoring σ_y "
                                 "and the coupling between range and null space"),
    "cm4ir": SolverClass(_A, "back-projection guidance with noise injection on the consistency function"),
    "ot_ode": SolverClass(_A, "ΠGDM's Gaussian p(x₀ | x_t) guidance in the flow ODE"),
    "flowdps": SolverClass(_A, "DPS-like data-consistency steps on x̂₀ inside the flow ODE"),
    "i2sb": SolverClass(_A, "a learned conditional bridge p(x₀ | x₁) (exact for a perfectly trained bridge of "
                            "this operator and noise)"),
    "cddb": SolverClass(_A, "the learned bridge with a DDS-style data-consistency step"),
    "dds": SolverClass(_A, "the Tweedie estimate corrected by M CG steps on the data term (a projection onto Ax = y, or a "
                           "proximal step of fixed weight γ), re-noised with the unconditional ε̂; exact for no "
                           "non-degenerate prior (noiseless, η = 1 and converged CG it equals DDNM)"),
    "fps_smc": SolverClass(_A, "the pseudo-measurements y_t are filtered as conditionally independent given x_t although "
                               "they share y's noise (for σ_y > 0 more particles concentrate the samples on y), and a "
                               "constant c_rate is not the reverse kernel; asymptotically exact only for σ_y = 0 with "
                               "c_rate='ddpm', as particles → ∞ and steps → ∞"),
    "lgd": SolverClass(_A, "p(x₀ | x_t) ≈ N(x̂₀(x_t), r_t² I) with a fixed r_t, estimated by n Monte-Carlo draws, and a "
                           "step size ζ in place of the likelihood's scale"),
    "sitcom": SolverClass(_A, "each step's x̂₀ is moved onto the noise ball ‖A x̂₀ − y‖² = m (σ_y + 0.001)² by optimising "
                              "the denoiser's input from x_t, then re-noised; no likelihood weighting, so the spread along "
                              "observed directions is set by the stopping rule and the optimiser"),
    "enkg": SolverClass(_A, "DPS-like guidance with the Jacobian replaced by the ensemble's statistical linearisation and "
                            "a normalised step w/‖M‖_F in place of the likelihood's scale; members interact (not "
                            "independent draws) and the step ignores σ_y"),
    "diffusionmbir": SolverClass(_A, "slices a priori independent under the 2-D prior, coupled only by a z-TV MAP step "
                                     "(warm-started inexact ADMM toward argmin ½‖Ax − y‖² + λ‖D_z x‖₁) in place of the "
                                     "likelihood; ignores σ_y"),
    "reddiff": SolverClass(_P, "a variational (mode-seeking) fit of a Gaussian with vanishing variance: MAP-like"),
    "pnp_flow": SolverClass(_P, "plug-and-play forward–backward splitting with the flow's denoiser"),
    "ictm": SolverClass(_P, "MAP over the flow's source noise (trajectory matching)"),
    "dflow": SolverClass(_P, "an optimiser of the source noise through the ODE (MAP-like)"),
    "pnp_cm": SolverClass(_P, "PnP-ADMM with the consistency function as the prior's proximal map"),
    "indi": SolverClass(_P, "the learned InDI path (a deterministic restoration; MMSE-like at one step)"),
    "pinv": SolverClass(_P, "the pseudo-inverse A⁺y"),
    "tv": SolverClass(_P, "the total-variation regularised least-squares estimate"),
    "dpir": SolverClass(_P, "plug-and-play half-quadratic splitting with the prior's denoiser"),
}


def solver_class(name: str) -> SolverClass:
    """The class of the solver registered as ``name`` (KeyError naming the table otherwise)."""
    try:
        return SOLVER_CLASSES[name]
    except KeyError:
        raise KeyError(f"solver {name!r} has no entry in invdiff.solvers.classes.SOLVER_CLASSES") from None
