"""Lesson 01 — the noise schedule.

Everything the forward and reverse processes need is a function of one sequence
beta_1..beta_T. We store it 0-based, as the official DDPM code does: index ``t`` in
``0..T-1`` is the paper's timestep ``t + 1``.

    alpha_t          = 1 - beta_t
    alpha_bar_t      = prod_{s<=t} alpha_s                       (Ho et al. 2020, eq. 4)
    SNR(t)           = alpha_bar_t / (1 - alpha_bar_t)            (Kingma et al. 2021)
    posterior var    = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)          (eq. 7)
    posterior mean   = coef1 * x_0 + coef2 * x_t,                               (eq. 7)
        coef1 = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)
        coef2 = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)

The arrays are NumPy float64 (exact enough to check the maths); the TensorFlow code
casts them where it uses them. This module imports neither TensorFlow nor matplotlib.
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULE_KINDS = ("linear", "cosine")


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_t rising linearly from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4)."""
    if T < 1:
        raise ValueError(f"T must be a positive number of timesteps, got {T}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas whose alpha_bar follows a squared cosine (Nichol & Dhariwal 2021, eq. 17).

    alpha_bar(t) = f(t) / f(0),  f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2),
    beta_t = min(1 - alpha_bar(t + 1) / alpha_bar(t), max_beta).
    """
    if T < 1:
        raise ValueError(f"T must be a positive number of timesteps, got {T}")
    steps = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


def make_betas(kind: str, T: int, **kwargs) -> np.ndarray:
    """``linear_beta_schedule`` or ``cosine_beta_schedule`` by name."""
    if kind == "linear":
        return linear_beta_schedule(T, **kwargs)
    if kind == "cosine":
        return cosine_beta_schedule(T, **kwargs)
    raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}")


class NoiseSchedule:
    """All per-timestep constants of a diffusion process, precomputed from ``betas``.

    Attributes (each a float64 array of length T, index t = paper's t + 1):
    ``betas, alphas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod,
    sqrt_one_minus_alphas_cumprod, sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod,
    posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1,
    posterior_mean_coef2``.
    """

    def __init__(self, betas):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not np.all((betas > 0) & (betas < 1)):
            bad = int(np.flatnonzero(~((betas > 0) & (betas < 1)))[0])
            raise ValueError(f"every beta must lie in (0, 1); beta[{bad}] = {betas[bad]}")
        self.T = int(betas.size)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)                          # eq. 4
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps   (eq. 4 solved for x_0)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)   (eqs. 6-7)
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        # variance is 0 at t = 0; clip the log so it stays finite (as the official code does)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / one_minus

    @classmethod
    def from_kind(cls, kind: str = "linear", T: int = 1000, **kwargs) -> "NoiseSchedule":
        """``NoiseSchedule(make_betas(kind, T, **kwargs))``."""
        return cls(make_betas(kind, T, **kwargs))

    def snr(self) -> np.ndarray:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def log_snr(self) -> np.ndarray:
        """Natural log of the SNR: falls from about +9 to about -10 for the linear schedule."""
        return np.log(self.alphas_cumprod) - np.log1p(-self.alphas_cumprod)

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.T}, beta=[{self.betas[0]:.3g} .. {self.betas[-1]:.3g}], "
                f"alpha_bar_T={self.alphas_cumprod[-1]:.3g})")
