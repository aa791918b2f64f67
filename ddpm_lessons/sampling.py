"""Lesson 08 (used from lesson 03 on) — samplers: ancestral DDPM, DDIM, DPM-Solver++(2M), EDM-Heun.

Every sampler here walks a decreasing grid of trained timesteps t_0 > t_1 > ... > t_{K-1}, then
to the clean image (written t = -1, alpha-bar = 1), one *step function* per interval, inside one
compiled ``tf.while_loop`` (``make_loop``). The step functions differ; the loop does not.

    DDPM     (Ho et al. 2020, Algorithm 2)   x_{t-1} = mean_theta(x_t, t) + sqrt(v_t) z       (eqs. 6-7, 11)
    DDIM     (Song et al. 2021, eq. 12)      x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - v) eps + sqrt(v) z
    DPM++2M  (Lu et al. 2022, Algorithm 2)   x_s = (b_s/b_t) x_t + a_s (1 - e^{-h}) D,  a = sqrt(abar), b = sqrt(1 - abar)
    Heun     (Karras et al. 2022, Alg. 2)    second-order probability-flow ODE step in sigma, with "churn"

with x0_hat = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps_theta(x_t, t) (eq. 4 inverted), and v a step's
variance (the papers' sigma^2). As in lesson 08, sigma alone means the noise level sqrt((1 - abar)/abar).

Where sampling starts. The cosine schedule's abar at t = T-1 is 2.4e-9: x0_hat there multiplies
the network's error in eps by sqrt((1 - abar)/abar) = 2e4. ``sigma_max`` starts the grid at the
largest timestep whose sigma_t = sqrt((1 - abar_t)/abar_t) is at most sigma_max (EDM uses 80),
from x = sqrt(1 - abar_t) z, the noise part of x_t (its data part sqrt(abar_t) x_0 is < 1.3% there).
Lesson 08 measures what this does to each sampler.

Timesteps stay integers. The U-Net was trained on t in 0..T-1, so every grid here (uniform in t,
or Karras et al.'s rho = 7 spacing in sigma, ``timestep_grid``) is rounded to trained timesteps,
and each step uses the exact sigma of the timestep it rounded to: the solver and the network agree.
The loop itself is not integer-only: grids travel as float32, and the step functions reach abar and
the network's time input through the context (``gather``, ``Diffusion.network_time``), which is where
a continuous-time objective would differ.

Indices are 0-based as in ``schedule.py``. Everything is rank-agnostic TensorFlow: x may be (B, 2)
points (lesson 03) or (B, H, W, C) images. ``eps_fn(x_t, t)`` takes x_t (B, ...) and t (B,) int32
and returns a tensor shaped like x_t.

One module of about 680 lines on purpose: the four samplers are step functions of one compiled
loop and share its grid, start and denoising context; apart, each would import all of it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from .profiles import network_evaluations  # noqa: F401  (re-exported: samplers' cost)
from .blocks import null_labels
from .data import from_unit_range, to_unit_range
from .diffusion import Diffusion, check_target
from .flow import FLOW_SAMPLERS, FlowMatching, flow_sample
from .forward import extract, predict_x0_from_eps, q_posterior_mean_variance
from .schedule import NoiseSchedule
from .unet import label_classes, network_inputs

VARIANCES = ("posterior", "beta")
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "heun")
SPACINGS = ("uniform", "karras")
END = -1                                     # the grid's last entry: the clean image, abar = 1


# ============================================================================ one DDPM step

def p_mean_variance(x_t, t, eps, schedule: NoiseSchedule, clip_x0=None, variance="posterior"):
    """Mean and variance of p_theta(x_{t-1} | x_t) from a noise prediction (eqs. 6-7 via x0_hat).

    x_t, eps: (B, ...); t: (B,) int. ``clip_x0``: None (points) or a bound c (images: 1.0) so
    x0_hat is clipped to [-c, c] before the posterior mean is formed.
    Returns (mean, var, x0_hat); var has shape (B, 1, ..., 1).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    x_t = tf.convert_to_tensor(x_t)
    x0_hat = clip(predict_x0_from_eps(x_t, t, eps, schedule), clip_x0)
    mean, post_var, _ = q_posterior_mean_variance(x0_hat, x_t, t, schedule)
    if variance == "posterior":
        var = post_var                                           # beta~_t (eq. 7)
    else:
        var = extract(schedule.betas, t, x_t.shape, x_t.dtype)  # beta_t
    return mean, var, x0_hat


def ddpm_step(x_t, t, eps, schedule: NoiseSchedule, noise, clip_x0=None, variance="posterior"):
    """One ancestral step x_t -> x_{t-1} = mean + sqrt(v_t) z (Algorithm 2, line 4; Ho et al.'s sigma_t^2 = v_t).

    t: (B,) int; noise z: shaped like x_t. No noise is added where t == 0 (the last step).
    """
    mean, var, _ = p_mean_variance(x_t, t, eps, schedule, clip_x0=clip_x0, variance=variance)
    rank = len(x_t.shape)
    nonzero = tf.reshape(tf.cast(tf.not_equal(tf.cast(t, tf.int32), 0), mean.dtype),
                         [-1] + [1] * (rank - 1))
    return mean + nonzero * tf.sqrt(var) * tf.cast(noise, mean.dtype)


def clip(x0_hat, clip_x0):
    """x0_hat limited to the data range: None (no limit), a bound c (clip to [-c, c]), or
    "dynamic" (Saharia et al. 2022: per image, s = max(1, 99.5th percentile of |x0_hat|), then
    clip to [-s, s] and divide by s)."""
    if clip_x0 is None:
        return x0_hat
    if clip_x0 == "dynamic":
        flat = tf.sort(tf.reshape(tf.abs(x0_hat), [tf.shape(x0_hat)[0], -1]), axis=1)
        k = tf.cast(tf.round(0.995 * tf.cast(tf.shape(flat)[1] - 1, tf.float32)), tf.int32)
        s = tf.maximum(tf.gather(flat, k, axis=1), 1.0)
        s = tf.reshape(s, [-1] + [1] * (len(x0_hat.shape) - 1))
        return tf.clip_by_value(x0_hat, -s, s) / s
    return tf.clip_by_value(x0_hat, -clip_x0, clip_x0)


# ============================================================================ the time grid

def sigmas(schedule: NoiseSchedule) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1: the noise level of x_t / sqrt(abar_t)
    (the "variance-exploding" view of Karras et al. 2022). Increasing in t."""
    return np.sqrt((1.0 - schedule.alphas_cumprod) / schedule.alphas_cumprod)


def start_timestep(schedule: NoiseSchedule, sigma_max=None) -> int:
    """T-1, or the largest timestep whose sigma_t <= ``sigma_max``."""
    if sigma_max is None:
        return schedule.T - 1
    ok = np.flatnonzero(sigmas(schedule) <= sigma_max)
    if not len(ok):
        raise ValueError(f"sigma_max = {sigma_max} is below the smallest trained sigma "
                         f"{sigmas(schedule)[0]:.3g}")
    return int(ok[-1])


def timestep_sequence(T: int, num_steps: int, t_start: int | None = None) -> np.ndarray:
    """``num_steps`` timesteps evenly spread from ``t_start`` (default T-1) down to 0 (0-based).
    One step starts at t_start, as every other implementation does (not at 0, which would treat
    pure noise as a nearly clean image)."""
    t_start = T - 1 if t_start is None else int(t_start)
    if not 1 <= num_steps <= t_start + 1:
        raise ValueError(f"num_steps must be between 1 and {t_start + 1} (T={T}), got {num_steps}")
    return np.unique(np.round(np.linspace(t_start, 0, num_steps)).astype(np.int32))[::-1].copy()


def karras_timesteps(schedule: NoiseSchedule, num_steps: int, sigma_max=None, rho: float = 7.0):
    """Karras et al. (2022) eq. 5, sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    from sigma(t_start) down to sigma(0), each rounded (in log sigma) to the nearest trained timestep.
    Rounding can merge neighbours at the low end: the result may be shorter than ``num_steps``."""
    sig = sigmas(schedule)
    t_start = start_timestep(schedule, sigma_max)
    if not 1 <= num_steps <= t_start + 1:
        raise ValueError(f"num_steps must be between 1 and {t_start + 1}, got {num_steps}")
    hi, lo = sig[t_start] ** (1 / rho), sig[0] ** (1 / rho)
    wanted = (hi + np.linspace(0, 1, num_steps) * (lo - hi)) ** rho
    return np.unique(nearest_timesteps(schedule, wanted))[::-1].copy()


def nearest_timesteps(schedule: NoiseSchedule, wanted_sigmas) -> np.ndarray:
    """For each wanted noise level, the trained timestep whose sigma_t is nearest in log sigma: int32."""
    log_sig = np.log(sigmas(schedule))
    return np.abs(log_sig[None, :] - np.log(np.asarray(wanted_sigmas))[:, None]).argmin(axis=1).astype(np.int32)


def timestep_grid(schedule: NoiseSchedule, num_steps: int, spacing: str = "uniform",
                  sigma_max=None) -> np.ndarray:
    """The decreasing timesteps a sampler visits, then ``END`` (-1, the clean image): int32 (K + 1,)."""
    if spacing == "uniform":
        taus = timestep_sequence(schedule.T, num_steps, start_timestep(schedule, sigma_max))
    elif spacing == "karras":
        taus = karras_timesteps(schedule, num_steps, sigma_max)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    return np.append(taus, END).astype(np.int32)


def _abar(schedule: NoiseSchedule, dtype=tf.float32):
    """alpha_bar as a (T + 1,) tensor whose last entry (index -1 = END) is 1: the clean image."""
    return tf.constant(np.append(schedule.alphas_cumprod, 1.0), dtype=dtype)


# ============================================================================ the step functions
#
# A step function is  step(x, i, grid, ctx) -> (x_next, x0_hat, carry)  for the interval
# grid[i] -> grid[i + 1]. ``ctx`` holds what every step may need: ``denoise(x, t)`` -> (eps, x0_hat)
# with x0_hat clipped as asked, ``noise(t)`` (stateless: the same seed and t give the same z in
# every sampler), ``gather(t)`` (abar_t broadcastable against x), ``carry`` (what the step
# passed on: DPM-Solver++'s previous x0_hat), ``extra`` (a per-step vector: Heun's churned times).

class _Context:
    def __init__(self, eps_fn, schedule, x, seed, clip_x0, carry, extra, diffusion=None):
        self.diffusion = diffusion or Diffusion(schedule, "eps")
        self.continuous = getattr(self.diffusion, "continuous", False)   # flow.FlowMatching: no abar table
        self.abar = None if self.continuous else _abar(schedule, x.dtype)
        self.batch, self.rank = tf.shape(x)[0], len(x.shape)
        self.eps_fn, self.schedule, self.seed, self.clip_x0 = eps_fn, schedule, seed, clip_x0
        self.carry, self.extra = carry, extra

    def gather(self, t):
        """abar_t for a scalar grid time (END -> 1), shaped (1, 1, ..., 1)."""
        a = tf.gather(self.abar, tf.math.floormod(tf.cast(t, tf.int32), self.schedule.T + 1))
        return tf.reshape(a, [1] * self.rank)

    def alpha_sigma(self, t, dtype):
        """(alpha_t, sigma_t) of x_t = alpha_t x0 + sigma_t eps at a scalar grid time, shaped (1, ..., 1):
        sqrt(abar_t), sqrt(1 - abar_t) here; the objective's own for a continuous one (flow: 1 - t, t)."""
        if self.continuous:
            return self.diffusion.alpha_sigma(t, tf.zeros([1] * self.rank, dtype))
        a = self.gather(t)
        return tf.sqrt(a), tf.sqrt(tf.maximum(1.0 - a, 0.0))

    def times(self, t):
        """(B,) copies of the time the network is given at grid time t (``Diffusion.network_time``)."""
        return tf.fill([self.batch], self.diffusion.network_time(t))

    def denoise(self, x, t):
        """(eps, x0_hat) at scalar timestep t from ``predict`` (``Diffusion.predict``: a v-network's x0 is
        read off v, not divided out of eps); with a clipped x0_hat, eps is the one it implies."""
        eps, x0_hat = predict(self.eps_fn, x, self.times(t), self.diffusion)
        if self.clip_x0 is not None:
            x0_hat = clip(x0_hat, self.clip_x0)
            if self.continuous:
                alpha, sigma = self.alpha_sigma(t, x.dtype)
                eps = (x - alpha * x0_hat) / sigma
            else:
                a = self.gather(t)
                eps = (x - tf.sqrt(a) * x0_hat) / tf.sqrt(1.0 - a)
        return eps, x0_hat

    def noise(self, x, t):
        return tf.random.stateless_normal(tf.shape(x), seed=_noise_seed(self.seed, t), dtype=x.dtype)


def predict(eps_fn, x, t, diffusion):
    """(eps, x0_hat) of the network behind ``eps_fn`` at (x, t (B,)): ``eps_fn.predict_eps_x0`` when it has one
    (``model_eps_fn``: the network's own target through ``Diffusion.predict``), else eps_fn's noise
    through ``diffusion`` (an eps ``Diffusion``)."""
    if getattr(eps_fn, "predict_eps_x0", None) is not None:
        return eps_fn.predict_eps_x0(x, t)
    return diffusion.predict(eps_fn(x, t), x, t)


def ddpm_loop_step(variance="posterior"):
    """Algorithm 2 (all T steps): grid[i + 1] = grid[i] - 1."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")

    def step(x, i, grid, ctx):
        t = grid[i]
        _, x0_hat = ctx.denoise(x, t)
        mean, var, _ = q_posterior_mean_variance(x0_hat, x, ctx.times(t), ctx.schedule)
        if variance == "beta":
            var = extract(ctx.schedule.betas, ctx.times(t), x.shape, x.dtype)
        last = tf.cast(tf.equal(t, 0), x.dtype)
        return mean + (1.0 - last) * tf.sqrt(var) * ctx.noise(x, t), x0_hat, ctx.carry
    return step


def x0_and_eps(x_t, a_t, eps, clip_x0=None):
    """(x0_hat, eps) from a noise prediction, with abar_t ``a_t`` broadcastable against x_t:
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 4 inverted); with ``clip_x0`` x0_hat
    is clipped and eps becomes the noise the clipped x0_hat implies."""
    x0_hat = (x_t - tf.sqrt(1.0 - a_t) * eps) / tf.sqrt(a_t)
    if clip_x0 is not None:
        x0_hat = clip(x0_hat, clip_x0)
        eps = (x_t - tf.sqrt(a_t) * x0_hat) / tf.sqrt(1.0 - a_t)
    return x0_hat, eps


def ddim_step(x_t, t, s, eps, schedule: NoiseSchedule, eta=0.0, noise=None, clip_x0=None):
    """One DDIM step x_t -> x_s (Song et al. eq. 12). t, s: (B,) int, s < t, s = -1 for x_0;
    with eta = 0 also s > t: the same update run forwards is DDIM inversion (``ddim_invert``).

        sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)                 (eq. 16)
        x_s   = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z

    eta = 0: deterministic; eta = 1 on all T steps: the DDPM posterior step; eta = 1 on a
    subsequence: ancestral sampling on the respaced schedule (Nichol & Dhariwal 2021).
    Returns (x_s, x0_hat). ``noise`` z (shaped like x_t) is needed only when eta > 0.
    """
    x_t = tf.convert_to_tensor(x_t)
    eps = tf.cast(eps, x_t.dtype)
    abar = _abar(schedule, x_t.dtype)
    shape = [-1] + [1] * (len(x_t.shape) - 1)
    a_t = tf.reshape(tf.gather(abar, tf.cast(t, tf.int32)), shape)
    a_s = tf.reshape(tf.gather(abar, tf.math.floormod(tf.cast(s, tf.int32), schedule.T + 1)), shape)
    x0_hat, eps = x0_and_eps(x_t, a_t, eps, clip_x0)
    return ddim_update(x0_hat, eps, a_t, a_s, eta, noise), x0_hat


def ddim_update(x0_hat, eps, a_t, a_s, eta=0.0, noise=None):
    """Song et al. eq. 12 from (x0_hat, eps) at abar_t ``a_t`` to abar_s ``a_s`` (broadcastable):
    sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z, sigma from eq. 16 (0 when eta = 0)."""
    sigma = 0.0 if (not tf.is_tensor(eta) and eta == 0) else \
        eta * tf.sqrt((1.0 - a_s) / (1.0 - a_t)) * tf.sqrt(1.0 - a_t / a_s)
    x_s = tf.sqrt(a_s) * x0_hat + tf.sqrt(tf.maximum(1.0 - a_s - sigma ** 2, 0.0)) * eps
    if noise is not None:
        x_s = x_s + sigma * tf.cast(noise, x0_hat.dtype)
    return x_s


def ddim_loop_step(eta=0.0):
    """DDIM (eq. 12) from grid[i] to grid[i + 1]; fresh noise only when eta > 0. With eta = 0 the step is
    x_s = alpha_s x0_hat + sigma_s eps_hat in the objective's own alpha, sigma: on flow matching's straight
    path (alpha = 1 - t, sigma = t) that is exactly Euler's step x_t + (s - t) u (``flow.py``)."""
    def step(x, i, grid, ctx):
        t, s = grid[i], grid[i + 1]
        eps, x0_hat = ctx.denoise(x, t)
        if eta == 0:
            alpha_s, sigma_s = ctx.alpha_sigma(s, x.dtype)
            return alpha_s * x0_hat + sigma_s * eps, x0_hat, ctx.carry
        return ddim_update(x0_hat, eps, ctx.gather(t), ctx.gather(s), eta, ctx.noise(x, t)), x0_hat, ctx.carry
    return step


def dpmpp2m_coefficients(schedule: NoiseSchedule, taus) -> tuple:
    """Per-step (c_x, c_d, w) of ``dpmpp2m_weights`` on this schedule's grid ``taus`` (decreasing
    timesteps; the last step goes to x_0): a = sqrt(abar), b = sqrt(1 - abar), as float64 arrays."""
    taus = np.asarray(taus)
    ab = np.append(schedule.alphas_cumprod.astype(np.float64), 1.0)
    t, s = taus, np.append(taus[1:], END)
    return dpmpp2m_weights(np.sqrt(ab[t]), np.sqrt(1 - ab[t]), np.sqrt(ab[s]), np.sqrt(1 - ab[s]))


def dpmpp2m_weights(alpha_t, sigma_t, alpha_s, sigma_s) -> tuple:
    """Per-step (c_x, c_d, w) for x_s = c_x x_t + c_d ((1 + w) x0_hat - w x0_prev) on any path
    x_t = alpha_t x0 + sigma_t eps (the cosine schedule's, or flow matching's 1 - t, t), steps t -> s:

        lambda = log(alpha / sigma), h = lambda_s - lambda_t
        c_x = sigma_s / sigma_t,  c_d = alpha_s (1 - e^{-h}),  w = 1 / (2r),  r = h_prev / h

    w = 0 on the first step (no history) and on the last (to x_0, "lower order final"); a path that
    starts at alpha = 0 (flow's t = 1) has h = inf there, so its second step is first order too."""
    alpha_t, sigma_t, alpha_s, sigma_s = (np.asarray(v, np.float64) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    c_x = sigma_s / sigma_t
    c_d = alpha_s - alpha_t * sigma_s / sigma_t            # alpha_s (1 - e^{-h}), e^{-h} = alpha_t sigma_s / (sigma_t alpha_s)
    with np.errstate(divide="ignore"):
        lam = lambda a, b: np.log(a) - np.log(b)
        h = lam(alpha_s, sigma_s) - lam(alpha_t, sigma_t)   # inf on the last step (sigma_s = 0)
    w = np.zeros(len(c_x))
    inner = np.arange(1, len(c_x) - 1)                     # not the first step, not the last
    w[inner] = h[inner] / (2 * h[inner - 1])
    return c_x, c_d, w


def dpmpp2m_loop_step(x, i, grid, ctx):
    """DPM-Solver++(2M): ``ctx.extra`` is (3, K): the rows c_x, c_d, w of ``dpmpp2m_coefficients``;
    the carry is the previous step's x0_hat (the correction costs no network evaluation)."""
    _, x0_hat = ctx.denoise(x, grid[i])
    c_x, c_d, w = (tf.cast(ctx.extra[j, i], x.dtype) for j in range(3))
    d = (1.0 + w) * x0_hat - w * ctx.carry
    return c_x * x + c_d * d, x0_hat, x0_hat


def heun_timesteps(schedule: NoiseSchedule, grid, churn: float = 0.0, s_noise: float = 1.0):
    """Karras et al. Algorithm 2's raised noise levels sigma_hat_i = (1 + gamma) sigma_i with
    gamma = min(churn / K, sqrt(2) - 1), rounded to trained timesteps (>= grid[i]): int32 (K,).
    churn = 0 gives the grid itself (the deterministic Heun sampler)."""
    sig = sigmas(schedule)
    taus = np.asarray(grid)[:-1]
    gamma = min(churn / len(taus), np.sqrt(2) - 1) if churn > 0 else 0.0
    t_hat = nearest_timesteps(schedule, sig[taus] * (1 + gamma))
    return np.maximum(t_hat, taus).astype(np.int32)


def heun_loop_step(s_noise=1.0):
    """EDM's step (Karras et al. 2022, Algorithm 2) in x_ve = x / sqrt(abar) with sigma as time:

        churn   x_hat = x_ve + sqrt(sig_hat^2 - sig_t^2) S_noise z            (sig_hat >= sig_t)
        Euler   d = (x_hat - D(x_hat, sig_hat)) / sig_hat,   x' = x_hat + (sig_s - sig_hat) d
        Heun    d' = (x' - D(x', sig_s)) / sig_s,            x_s = x_hat + (sig_s - sig_hat)(d + d')/2

    D is x0_hat. The last step (sig_s = 0) is the Euler step alone: 2K - 1 network evaluations.
    ``ctx.extra`` holds the churned timesteps (``heun_timesteps``) as floats.
    """
    def step(x, i, grid, ctx):
        t, s = grid[i], grid[i + 1]
        t_hat = tf.cast(ctx.extra[0, i], grid.dtype)
        a_t, a_hat, a_s = ctx.gather(t), ctx.gather(t_hat), ctx.gather(s)
        sig = lambda a: tf.sqrt((1.0 - a) / a)
        sig_t, sig_hat, sig_s = sig(a_t), sig(a_hat), sig(a_s)
        x_hat = x / tf.sqrt(a_t)
        x_hat = x_hat + tf.sqrt(tf.maximum(sig_hat ** 2 - sig_t ** 2, 0.0)) * s_noise * ctx.noise(x, t)
        _, d0 = ctx.denoise(x_hat * tf.sqrt(a_hat), t_hat)
        d = (x_hat - d0) / sig_hat
        euler = x_hat + (sig_s - sig_hat) * d

        def corrected():
            _, d1 = ctx.denoise(euler * tf.sqrt(a_s), s)
            return x_hat + (sig_s - sig_hat) * 0.5 * (d + (euler - d1) / sig_s)

        x_s = tf.cond(tf.greater_equal(s, 0), corrected, lambda: d0)       # Euler to sigma = 0 is D itself
        return x_s * tf.sqrt(a_s), d0, ctx.carry
    return step


# ============================================================================ the loop

def _noise_seed(seed, t):
    """Stateless seed pair for the noise drawn at grid time t (t = T draws x_T): reproducible, XLA-safe.
    A whole-number t (every grid of a discrete schedule) keys it by its value, a fractional one (continuous
    time) by its float32 bits, so two times never share a draw."""
    if not tf.is_tensor(t) or t.dtype.is_integer:
        return tf.stack([tf.cast(seed, tf.int32), tf.cast(t, tf.int32)])
    t = tf.cast(t, tf.float32)
    whole = tf.cast(t, tf.int32)
    key = tf.where(tf.equal(tf.cast(whole, tf.float32), t), whole, tf.bitcast(t, tf.int32))
    return tf.stack([tf.cast(seed, tf.int32), key])


def initial_noise(shape, seed, T: int, dtype=tf.float32):
    """z ~ N(0, I) from the stateless seed (seed, T): every sampler starts from it for the same seed."""
    return tf.random.stateless_normal(list(shape), seed=_noise_seed(seed, T), dtype=dtype)


@contextlib.contextmanager
def _quiet_tf_warnings():
    """Each (eps_fn, schedule) pair needs its own trace of the loop, by design; TensorFlow counts
    traces of all closures of ``run`` together and would warn about "excessive retracing"."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def make_loop(eps_fn, schedule: NoiseSchedule, step, key, clip_x0=None, keep_trajectory=False,
              rank=None):
    """A compiled ``run(x, grid, extra, seed)`` applying ``step`` on every interval of ``grid``.

    grid: decreasing float32 times (K + 1,) (the discrete schedule's: whole timesteps) ending in the target (END = -1 for x_0, or any later
    timestep to stop part way); extra: float32 (rows, K) per-step numbers for the step function;
    seed: int32 scalar. One trace serves every grid length, batch and seed. With ``keep_trajectory``
    it also returns x and x0_hat before every step, stacked: (K, B, ...) each.

    The loop is kept on ``eps_fn`` itself under ``key`` (plus schedule, clipping, trajectory and rank),
    so sampling again with the same eps_fn does not trace again, and the loop is freed with eps_fn.
    """
    loops = _loops_of(eps_fn)
    full_key = (key, id(schedule), clip_x0, keep_trajectory, rank)
    if loops is not None and full_key in loops and loops[full_key][0] is schedule:
        return loops[full_key][1]

    # the eps_fn's objective (a flow network's FlowMatching), else an eps Diffusion: it turns a plain
    # eps_fn's noise into x0 (tables cast once) and gives the network's time
    diffusion = getattr(eps_fn, "objective", None) or Diffusion(schedule, "eps")

    @tf.function(reduce_retracing=True, autograph=False)   # plain TF: tf.while_loop and tf.cond are explicit
    def run(x, grid, extra, seed):
        k = tf.shape(grid)[0] - 1
        size = k if keep_trajectory else 0
        xs = tf.TensorArray(x.dtype, size=size, dynamic_size=False)
        x0s = tf.TensorArray(x.dtype, size=size, dynamic_size=False)

        def body(i, x, carry, xs, x0s):
            ctx = _Context(eps_fn, schedule, x, seed, clip_x0, carry, extra, diffusion)
            x_next, x0_hat, carry = step(x, i, grid, ctx)
            if keep_trajectory:
                xs, x0s = xs.write(i, x), x0s.write(i, x0_hat)
            return i + 1, x_next, carry, xs, x0s

        _, x, _, xs, x0s = tf.while_loop(lambda i, *_: i < k, body, (0, x, tf.zeros_like(x), xs, x0s),
                                         maximum_iterations=schedule.T)
        if keep_trajectory:
            return x, xs.stack(), x0s.stack()
        return x

    if loops is not None:
        loops[full_key] = (schedule, run)
    return run


def _loops_of(eps_fn):
    """The dict of compiled loops stored on ``eps_fn`` (None if it cannot hold attributes)."""
    try:
        return eps_fn.__dict__.setdefault("_sampling_loops", {})
    except AttributeError:
        return None


def run_loop(run, x, grid, extra, seed):
    """``run`` (from ``make_loop``) on NumPy grid and extra; traced once for any batch, grid length
    and seed (the first call traces it with those sizes left open)."""
    x = tf.convert_to_tensor(x)
    with _quiet_tf_warnings():
        run.get_concrete_function(tf.TensorSpec([None] + x.shape[1:], x.dtype), tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([], tf.int32))
        return run(x, tf.constant(grid, tf.float32), tf.constant(extra, tf.float32),
                   tf.constant(int(seed), tf.int32))


def _start(shape, seed, schedule, t_start, x_T, dtype):
    """x at the first timestep: ``x_T`` if given, else sqrt(1 - abar_t) z with z = initial_noise(seed)."""
    if x_T is not None:
        return tf.cast(x_T, dtype)
    a = schedule.alphas_cumprod[t_start]
    return tf.cast(np.sqrt(1.0 - a), dtype) * initial_noise(shape, int(seed), schedule.T, dtype)


# ============================================================================ the samplers

def ddpm_sample(eps_fn, shape, schedule: NoiseSchedule, seed=0, clip_x0=None,
                variance="posterior", return_trajectory=None, dtype=tf.float32):
    """Ancestral sampling, Ho et al. Algorithm 2: x_T ~ N(0, I), then T reverse steps.

    eps_fn(x_t, t) -> eps, with t a (B,) int32 tensor. shape: (B, ...) of the samples.
    seed: int; the same seed gives the same samples (x_T uses stateless seed (seed, T)).
    return_trajectory: None/False, or a list of paper timesteps s in [0, T] to snapshot x_s
    (s = T is the starting noise, s = 0 the final sample).
    Returns x_0 as a NumPy array (B, ...); with ``return_trajectory`` also an array
    (len(steps), B, ...) of snapshots, in the order given.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    T = schedule.T
    run = make_loop(eps_fn, schedule, ddpm_loop_step(variance), ("ddpm", variance), clip_x0=clip_x0,
                    rank=len(shape))
    x = initial_noise(shape, int(seed), T, dtype)     # x_T = z itself (Algorithm 2); the others scale z
    stops = sorted({int(s) for s in (return_trajectory or [])} | {0}, reverse=True)
    if stops[0] > T or stops[-1] < 0:
        raise ValueError(f"trajectory steps must lie in [0, {T}], got {return_trajectory}")
    no_extra = np.zeros((0, T), np.float32)
    snaps, current = {T: x.numpy()}, T
    for s in stops:
        if s < current:      # paper x_current -> x_s: 0-based steps current-1 .. s, then stop at s-1
            grid = np.arange(current - 1, s - 2, -1, dtype=np.int32)
            x = run_loop(run, x, grid, no_extra, seed)
            current = s
            snaps[s] = x.numpy()
    x0 = snaps[0]
    if not return_trajectory:
        return x0
    return x0, np.stack([snaps[int(s)] for s in return_trajectory])


def ddim_sample(eps_fn, shape, schedule: NoiseSchedule, num_steps=50, eta=0.0, seed=0,
                clip_x0=None, x_T=None, return_trajectory=False, dtype=tf.float32,
                spacing="uniform", sigma_max=None):
    """DDIM sampling with ``num_steps`` network evaluations (Song et al. 2021).

    eta = 0 is deterministic given x_T; eta = 1 is ancestral sampling on the respaced schedule.
    x_T: optional starting point (e.g. from ``ddim_invert``) at the grid's first timestep; else
    sqrt(1 - abar) z with z from ``seed`` (the z that ``ddpm_sample`` starts from unscaled, as Algorithm 2
    draws x_T ~ N(0, I); on the cosine schedule sqrt(1 - abar_{T-1}) = 1 - 1e-9). spacing, sigma_max: see
    ``timestep_grid``. Returns x_0 as NumPy (B, ...); with ``return_trajectory`` also
    (taus, x_t (K, B, ...), x0_hat (K, B, ...)) before each step.
    """
    grid = timestep_grid(schedule, num_steps, spacing, sigma_max)
    x = _start(shape, seed, schedule, grid[0], x_T, dtype)
    run = make_loop(eps_fn, schedule, ddim_loop_step(float(eta)), ("ddim", float(eta)), clip_x0=clip_x0,
                    keep_trajectory=bool(return_trajectory), rank=len(x.shape))
    out = run_loop(run, x, grid, np.zeros((0, len(grid) - 1), np.float32), seed)
    if not return_trajectory:
        return out.numpy()
    x0, xs, x0s = out
    return x0.numpy(), (grid[:-1], xs.numpy(), x0s.numpy())


def dpmpp2m_sample(eps_fn, shape, schedule: NoiseSchedule, num_steps=20, seed=0, clip_x0=None,
                   x_T=None, dtype=tf.float32, spacing="uniform", sigma_max=None):
    """DPM-Solver++(2M) with ``num_steps`` network evaluations; deterministic given x_T (drawn
    as in ``ddim_sample``). Returns NumPy (B, ...)."""
    grid = timestep_grid(schedule, num_steps, spacing, sigma_max)
    extra = np.stack(dpmpp2m_coefficients(schedule, grid[:-1])).astype(np.float32)
    x = _start(shape, seed, schedule, grid[0], x_T, dtype)
    run = make_loop(eps_fn, schedule, dpmpp2m_loop_step, ("dpm++2m",), clip_x0=clip_x0, rank=len(x.shape))
    return run_loop(run, x, grid, extra, seed).numpy()


def heun_sample(eps_fn, shape, schedule: NoiseSchedule, num_steps=10, churn=0.0, s_noise=1.0, seed=0,
                clip_x0=None, x_T=None, dtype=tf.float32, spacing="karras", sigma_max=80.0):
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 2) on ``num_steps`` noise levels:
    2 num_steps - 1 network evaluations. churn = 0: deterministic (Algorithm 1); churn > 0 adds
    noise before each step and removes it with the step (stochastic). Returns NumPy (B, ...)."""
    grid = timestep_grid(schedule, num_steps, spacing, sigma_max)
    extra = heun_timesteps(schedule, grid, churn)[None, :].astype(np.float32)
    x = _start(shape, seed, schedule, grid[0], x_T, dtype)
    run = make_loop(eps_fn, schedule, heun_loop_step(float(s_noise)), ("heun", float(s_noise)),
                    clip_x0=clip_x0, rank=len(x.shape))
    return run_loop(run, x, grid, extra, seed).numpy()


def ddim_invert(eps_fn, x0, schedule: NoiseSchedule, num_steps=50, spacing="uniform", sigma_max=None):
    """Encode images into DDIM noise: the eta = 0 update run forwards, x_0 -> x_{t_start} (Song et al.
    Sec. 4.3), along the grid ``ddim_sample`` walks down with the same arguments:
    x_t = sqrt(abar_t) x0_hat(x_s, s) + sqrt(1 - abar_t) eps(x_s, s). Decoding the result with
    ``ddim_sample(..., eta=0, x_T=result)`` gives back x_0 up to the discretisation error (eps is
    evaluated at the start of each step, not at its end)."""
    taus = timestep_grid(schedule, num_steps, spacing, sigma_max)[:-1][::-1]     # increasing
    abar = schedule.alphas_cumprod
    x0 = tf.convert_to_tensor(x0)
    a = abar[taus[0]]                                                  # x_0 -> x_{tau_0}: ~ the clean image
    x = np.sqrt(a) * x0 + np.sqrt(1 - a) * tf.cast(eps_fn(np.sqrt(a) * x0, tf.fill([tf.shape(x0)[0]], int(taus[0]))),
                                                   x0.dtype)
    if len(taus) > 1:                  # then DDIM's eta = 0 step up the grid, in the sampler's compiled loop
        run = make_loop(eps_fn, schedule, ddim_loop_step(0.0), ("ddim", 0.0), rank=len(x0.shape))
        x = run_loop(run, x, np.asarray(taus, np.int32), np.zeros((0, len(taus) - 1), np.float32), 0)
    return np.asarray(x)


# ============================================================================ one entry point

def sample(eps_fn, shape, schedule: NoiseSchedule, sampler="ddim", steps=50, eta=1.0, seed=0,
           clip_x0=None, spacing="uniform", sigma_max=None, churn=0.0):
    """x_0 (NumPy, ``shape``) from any sampler of this module, from the same z for the same seed
    ("ddpm" starts at z itself, the others at sqrt(1 - abar) z on their first timestep).

    "ddpm": Algorithm 2, all T steps (``steps``, spacing, sigma_max ignored); "ddim": ``steps`` DDIM
    steps with noise ``eta`` (eta = 1: ancestral sampling on the respaced schedule); "dpm++2m":
    DPM-Solver++(2M), deterministic; "heun": EDM's Heun sampler on ``steps`` noise levels with
    ``churn`` (2 steps - 1 evaluations; sigma_max None here means EDM's 80).
    """
    if isinstance(getattr(eps_fn, "objective", None), FlowMatching):    # a flow-matching network (lesson 15)
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"a flow-matching network samples with {FLOW_SAMPLERS}, not {sampler!r}")
        return flow_sample(eps_fn, shape, num_steps=steps, sampler=sampler, seed=seed, clip_x0=clip_x0)
    if sampler == "ddpm":
        return ddpm_sample(eps_fn, shape, schedule, seed=seed, clip_x0=clip_x0)
    if sampler == "ddim":
        return ddim_sample(eps_fn, shape, schedule, num_steps=steps, eta=eta, seed=seed, clip_x0=clip_x0,
                           spacing=spacing, sigma_max=sigma_max)
    if sampler == "dpm++2m":
        return dpmpp2m_sample(eps_fn, shape, schedule, num_steps=steps, seed=seed, clip_x0=clip_x0,
                              spacing=spacing, sigma_max=sigma_max)
    if sampler == "heun":
        return heun_sample(eps_fn, shape, schedule, num_steps=steps, churn=churn, seed=seed, clip_x0=clip_x0,
                           spacing=spacing, sigma_max=80.0 if sigma_max is None else sigma_max)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


def _eps_fn_of(output_fn, schedule, prediction):
    """``eps_fn(x, t)`` from a network's raw ``output_fn(x, t)``: for "eps" the output itself; for "v"
    the noise it implies, and ``eps_fn.predict_eps_x0(x, t) -> (eps, x0)`` through ``Diffusion.predict``, which
    the samplers use (x0 = sqrt(abar) x_t - sqrt(1 - abar) v: read off v, not divided out of eps)."""
    if prediction == "eps":
        fn = lambda x, t: output_fn(x, t)
        fn.predict_eps_x0 = None                       # the sampler's own eps Diffusion turns eps into x0
        return fn
    target = FlowMatching(T=schedule.T if schedule else 1000) if prediction == "flow" else Diffusion(schedule, prediction)
    fn = lambda x, t: target.predict(output_fn(x, t), x, t)[0]
    fn.predict_eps_x0 = lambda x, t: target.predict(output_fn(x, t), x, t)
    if prediction == "flow":
        fn.objective = target                          # the sampling loop takes its times and alpha, sigma from it
    return fn


def _unet_time(prediction):
    """What turns a sampler's time into the U-Net's time input: ``FlowMatching.unet_time`` (999 t) for a
    flow-matching network, else the timestep itself."""
    return FlowMatching.unet_time if prediction == "flow" else Diffusion.unet_time


def model_eps_fn(model, schedule: NoiseSchedule | None = None, prediction: str = "eps"):
    """``eps_fn(x, t)`` for a Keras U-Net: its output for ``prediction="eps"``, or for a v-prediction
    network (lesson 12) eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (needs ``schedule``), with
    ``eps_fn.predict_eps_x0`` giving the samplers (eps, x0) straight from v (``Diffusion.predict``).
    For a flow-matching network (``prediction="flow"``, lesson 15) t is the path's time in [0, 1] (the
    U-Net is given ``FlowMatching.unet_time(t)``) and ``eps_fn.objective`` is its ``FlowMatching``.
    The function is kept on the model, so the same model gives the same function object and
    compiled sampling loops are reused, not traced again; both go away with the model."""
    check_target(prediction)
    if prediction == "v" and schedule is None:
        raise ValueError("a v-prediction model needs the schedule to turn v into eps")
    key = (prediction, id(schedule) if prediction == "v" else None)
    fns = model.__dict__.setdefault("_ddpm_eps_fns", {})
    if key not in fns:
        unet_time = _unet_time(prediction)
        fns[key] = _eps_fn_of(lambda x, t: tf.cast(model(network_inputs(model, x, unet_time(t)), training=False),
                                                   x.dtype), schedule, prediction)
    return fns[key]


def guided_eps_fn(model, schedule: NoiseSchedule | None = None, prediction: str = "eps"):
    """``eps_fn(x, t)`` for a conditional U-Net with classifier-free guidance (Ho & Salimans 2022):

        out = out_uncond + w (out_cond - out_uncond)     (eps or v: both are linear in it)

    w = 0 is the unconditional model, w = 1 the conditional one, w > 1 pushes further towards the
    labels. Both halves come from one forward pass on the doubled batch [x, x], [t, t],
    [labels, "no label"]. The labels (B, K) and w live in ``fn.labels`` and ``fn.guidance``
    (tf.Variables, set before each batch), so one compiled sampling loop serves every batch and w."""
    check_target(prediction)
    if prediction == "v" and schedule is None:
        raise ValueError("a v-prediction model needs the schedule to turn v into eps")
    num_classes = label_classes(model)
    unet_time = _unet_time(prediction)
    key = ("guided", prediction, id(schedule) if prediction == "v" else None)
    fns = model.__dict__.setdefault("_ddpm_eps_fns", {})
    if key not in fns:
        labels = tf.Variable(tf.zeros([0, len(num_classes)], tf.int32), shape=tf.TensorShape([None, len(num_classes)]),
                             trainable=False)
        guidance = tf.Variable(1.0, trainable=False)

        def guided_output(x, t):
            b = tf.shape(x)[0]
            null = tf.broadcast_to(tf.constant(num_classes, tf.int32), tf.shape(labels))
            xx, tt = tf.concat([x, x], 0), unet_time(tf.concat([t, t], 0))
            out = tf.cast(model(network_inputs(model, xx, tt, tf.concat([labels, null], 0)), training=False), x.dtype)
            cond, uncond = out[:b], out[b:]
            return uncond + tf.cast(guidance, x.dtype) * (cond - uncond)

        fn = _eps_fn_of(guided_output, schedule, prediction)
        fn.labels, fn.guidance = labels, guidance
        fns[key] = fn
    return fns[key]


def is_conditional(model) -> bool:
    """True for a U-Net built with ``num_classes`` (it takes labels)."""
    return label_classes(model) is not None


def generate(model, schedule: NoiseSchedule, num_images: int, sampler="ddim", steps=50, eta=1.0,
             seed=0, batch_size=64, prediction="eps", spacing="uniform", sigma_max=None, churn=0.0,
             clip_x0=1.0, labels=None, guidance=1.0):
    """Images (num_images, H, W, C) from a trained U-Net, x0_hat clipped to [-1, 1] (``clip_x0``).

    sampler and its options: see ``sample``. Drawn in batches of ``batch_size``; batch i uses seed
    ``seed + i``. ``prediction``: what the network predicts ("eps" or "v"). A conditional U-Net
    samples with classifier-free guidance (``guided_eps_fn``): ``labels`` (num_images, K) ints, with
    the "no label" token (num_classes[k]) where a kind is not asked for (None: no label at all), and
    ``guidance`` w.
    """
    allowed = FLOW_SAMPLERS if prediction == "flow" else SAMPLERS
    if sampler not in allowed:
        raise ValueError(f"unknown sampler {sampler!r} for prediction = {prediction!r}; choose one of {allowed}")
    conditional = is_conditional(model)
    if labels is not None and not conditional:
        raise ValueError("labels were given for an unconditional U-Net: build it with num_classes to use them")
    if conditional:
        eps_fn = guided_eps_fn(model, schedule, prediction)
        num_classes = label_classes(model)
        labels = (null_labels(num_classes, num_images) if labels is None
                  else np.asarray(labels, np.int32).reshape(num_images, len(num_classes)))
        eps_fn.guidance.assign(float(guidance))
    else:
        eps_fn = model_eps_fn(model, schedule, prediction)
    size, channels = model.input_shape[0][1], model.input_shape[0][3]
    out = []
    for i, start in enumerate(range(0, num_images, batch_size)):
        shape = (min(batch_size, num_images - start), size, size, channels)
        if conditional:
            eps_fn.labels.assign(labels[start:start + shape[0]])
        out.append(sample(eps_fn, shape, schedule, sampler=sampler, steps=steps, eta=eta, seed=seed + i,
                          clip_x0=clip_x0, spacing=spacing, sigma_max=sigma_max, churn=churn))
    return np.concatenate(out)


def generate_cached(cache, model, schedule: NoiseSchedule, num_images: int, **options):
    """``generate(model, schedule, num_images, **options)`` kept as uint8 pixels in the .npz file ``cache``
    (key "samples") and read back from it when it exists, so a study scores the same samples again
    without drawing them again. Returns floats in [-1, 1] (the pixels' values, as the scores see them)."""
    cache = Path(cache)
    if cache.exists():
        with np.load(cache) as f:
            return to_unit_range(f["samples"])
    pixels = from_unit_range(generate(model, schedule, num_images, **options))
    np.savez_compressed(cache, samples=pixels)
    return to_unit_range(pixels)
