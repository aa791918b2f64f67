"""Lesson 08 (used from lesson 03 on) — ancestral DDPM sampling, Ho et al. 2020, Algorithm 2.

A noise predictor eps_theta(x_t, t) defines the reverse step p_theta(x_{t-1} | x_t):

    x0_hat  = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps_theta(x_t, t)         (eq. 4 inverted)
    mean    = coef1_t x0_hat + coef2_t x_t                                      (eqs. 6-7)
            = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_theta)         (eq. 11, same thing)
    x_{t-1} = mean + sigma_t z,  z ~ N(0, I),  z = 0 at the last step          (Algorithm 2, line 4)

with sigma_t^2 = beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) ("posterior", eq. 7) or
sigma_t^2 = beta_t ("beta"); Ho et al. Sec. 3.2 found both to work about as well.

Indices are 0-based as in ``schedule.py``: the step with index ``t`` in ``0..T-1`` maps the
paper's x_{t+1} to x_t, so the loop ends with the step ``t = 0`` that returns x_0 without noise.

Everything here is rank-agnostic TensorFlow: x may be (B, 2) points (lesson 03) or
(B, H, W, C) images (lesson 08). ``eps_fn(x_t, t)`` takes x_t (B, ...) and t (B,) int32 and
returns a tensor shaped like x_t.
"""
from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from .forward import extract, predict_x0_from_eps, q_posterior_mean_variance
from .schedule import NoiseSchedule

VARIANCES = ("posterior", "beta")


def p_mean_variance(x_t, t, eps, schedule: NoiseSchedule, clip_x0=None, variance="posterior"):
    """Mean and variance of p_theta(x_{t-1} | x_t) from a noise prediction (eqs. 6-7 via x0_hat).

    x_t, eps: (B, ...); t: (B,) int. ``clip_x0``: None (points) or a bound c (images: 1.0) so
    x0_hat is clipped to [-c, c] before the posterior mean is formed.
    Returns (mean, var, x0_hat); var has shape (B, 1, ..., 1).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    x_t = tf.convert_to_tensor(x_t)
    x0_hat = predict_x0_from_eps(x_t, t, eps, schedule)
    if clip_x0 is not None:
        x0_hat = tf.clip_by_value(x0_hat, -clip_x0, clip_x0)
    mean, post_var, _ = q_posterior_mean_variance(x0_hat, x_t, t, schedule)
    if variance == "posterior":
        var = post_var                                           # beta~_t (eq. 7)
    else:
        var = extract(schedule.betas, t, x_t.shape, x_t.dtype)  # beta_t
    return mean, var, x0_hat


def ddpm_step(x_t, t, eps, schedule: NoiseSchedule, noise, clip_x0=None, variance="posterior"):
    """One ancestral step x_t -> x_{t-1} = mean + sigma_t z (Algorithm 2, line 4).

    t: (B,) int; noise z: shaped like x_t. No noise is added where t == 0 (the last step).
    """
    mean, var, _ = p_mean_variance(x_t, t, eps, schedule, clip_x0=clip_x0, variance=variance)
    rank = len(x_t.shape)
    nonzero = tf.reshape(tf.cast(tf.not_equal(tf.cast(t, tf.int32), 0), mean.dtype),
                         [-1] + [1] * (rank - 1))
    return mean + nonzero * tf.sqrt(var) * tf.cast(noise, mean.dtype)


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


def _noise_seed(seed, i):
    """Stateless seed pair for step i (i = T draws x_T): reproducible, XLA-safe."""
    return tf.stack([tf.cast(seed, tf.int32), tf.cast(i, tf.int32)])


def initial_noise(shape, seed, T: int, dtype=tf.float32):
    """x_T ~ N(0, I) from the stateless seed (seed, T): every sampler starts here for the same seed."""
    return tf.random.stateless_normal(list(shape), seed=_noise_seed(seed, T), dtype=dtype)


_LOOP_CACHE: dict = {}
_LOOP_CACHE_SIZE = 8


def _cached_loop(key, schedule, run):
    """The loop already stored under ``key`` for this very schedule object (it keeps its traces),
    else ``run``, stored; the oldest is dropped when more than ``_LOOP_CACHE_SIZE`` are kept."""
    cached = _LOOP_CACHE.get(key)
    if cached is not None and cached[0] is schedule:
        return cached[1]
    if len(_LOOP_CACHE) >= _LOOP_CACHE_SIZE:
        _LOOP_CACHE.pop(next(iter(_LOOP_CACHE)))
    _LOOP_CACHE[key] = (schedule, run)
    return run


def make_ddpm_loop(eps_fn, schedule: NoiseSchedule, clip_x0=None, variance="posterior", rank=None):
    """A compiled ``run(x, t_hi, t_lo, seed)`` taking x_{t_hi} to x_{t_lo} (paper indices).

    Runs the steps with 0-based index t_hi-1, ..., t_lo in a ``tf.while_loop``; t_hi, t_lo and
    seed are int32 scalar tensors, so one trace serves every segment and every seed.
    Step i draws its noise with the stateless seed (seed, i). The last few loops are cached,
    keyed by (eps_fn, schedule, clip_x0, variance, rank): pass the same eps_fn object to sample
    again without tracing again. ``rank`` (of x) keeps points and images in separate loops, so
    TensorFlow never relaxes x to an unknown rank.
    """
    key = (eps_fn, id(schedule), clip_x0, variance, rank)

    @tf.function(reduce_retracing=True)
    def run(x, t_hi, t_lo, seed):
        batch = tf.shape(x)[0]

        def body(i, x):
            t = tf.fill([batch], i)
            eps = tf.cast(eps_fn(x, t), x.dtype)
            z = tf.random.stateless_normal(tf.shape(x), seed=_noise_seed(seed, i), dtype=x.dtype)
            return i - 1, ddpm_step(x, t, eps, schedule, z, clip_x0=clip_x0, variance=variance)

        _, x = tf.while_loop(lambda i, x: i >= t_lo, body, (t_hi - 1, x),
                             maximum_iterations=schedule.T)
        return x

    return _cached_loop(key, schedule, run)


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
    T = schedule.T
    run = make_ddpm_loop(eps_fn, schedule, clip_x0=clip_x0, variance=variance, rank=len(shape))
    seed_t = tf.constant(int(seed), tf.int32)
    x = initial_noise(shape, seed_t, T, dtype)
    stops = sorted({int(s) for s in (return_trajectory or [])} | {0}, reverse=True)
    if stops[0] > T or stops[-1] < 0:
        raise ValueError(f"trajectory steps must lie in [0, {T}], got {return_trajectory}")
    snaps, current = {T: x.numpy()}, T
    for s in stops:
        if s < current:
            with _quiet_tf_warnings():
                x = run(x, tf.constant(current, tf.int32), tf.constant(s, tf.int32), seed_t)
            current = s
            snaps[s] = x.numpy()
    x0 = snaps[0]
    if not return_trajectory:
        return x0
    return x0, np.stack([snaps[int(s)] for s in return_trajectory])


# ============================================================================ DDIM (lesson 08)
#
# DDIM (Song, Meng & Ermon 2021, eq. 12) walks a decreasing subsequence tau of the T timesteps.
# From x_t to x_s (s < t, s = -1 meaning "x_0 itself", abar_{-1} = 1):
#
#     x0_hat  = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)        [clipped; eps recomputed from it]
#     sigma   = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)        (eq. 16)
#     x_s     = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z
#
# eta = 0: deterministic ("DDIM"); eta = 1 with all T steps: sigma^2 = beta~_t and the step *is*
# the DDPM posterior-variance step (Algorithm 2); eta = 1 on a subsequence is ancestral sampling
# on the respaced schedule of Nichol & Dhariwal (2021).

def timestep_sequence(T: int, num_steps: int) -> np.ndarray:
    """``num_steps`` timesteps evenly spread over 0..T-1, decreasing: T-1, ..., 0 (0-based)."""
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be between 1 and T={T}, got {num_steps}")
    return np.unique(np.round(np.linspace(0, T - 1, num_steps)).astype(np.int32))[::-1].copy()


def _abar_with_end(schedule: NoiseSchedule, dtype):
    """alpha_bar as a (T + 1,) tensor whose last entry (index -1) is 1: the clean image."""
    return tf.constant(np.append(schedule.alphas_cumprod, 1.0), dtype=dtype)


def ddim_step(x_t, t, s, eps, schedule: NoiseSchedule, eta=0.0, noise=None, clip_x0=None):
    """One DDIM step x_t -> x_s (Song et al. eq. 12). t, s: (B,) int, s < t, s = -1 for x_0.

    Returns (x_s, x0_hat). ``noise`` z (shaped like x_t) is needed only when eta > 0.
    """
    x_t = tf.convert_to_tensor(x_t)
    eps = tf.cast(eps, x_t.dtype)
    abar = _abar_with_end(schedule, x_t.dtype)
    shape = [-1] + [1] * (len(x_t.shape) - 1)
    a_t = tf.reshape(tf.gather(abar, tf.cast(t, tf.int32)), shape)
    s_index = tf.math.floormod(tf.cast(s, tf.int32), schedule.T + 1)  # -1 -> T: the appended 1.0
    a_s = tf.reshape(tf.gather(abar, s_index), shape)
    x0_hat = (x_t - tf.sqrt(1.0 - a_t) * eps) / tf.sqrt(a_t)
    if clip_x0 is not None:
        x0_hat = tf.clip_by_value(x0_hat, -clip_x0, clip_x0)
        eps = (x_t - tf.sqrt(a_t) * x0_hat) / tf.sqrt(1.0 - a_t)     # the noise the clipped x0 implies
    sigma = eta * tf.sqrt((1.0 - a_s) / (1.0 - a_t)) * tf.sqrt(1.0 - a_t / a_s)
    x_s = tf.sqrt(a_s) * x0_hat + tf.sqrt(tf.maximum(1.0 - a_s - sigma ** 2, 0.0)) * eps
    if noise is not None:
        x_s = x_s + sigma * tf.cast(noise, x_t.dtype)
    return x_s, x0_hat


def make_ddim_loop(eps_fn, schedule: NoiseSchedule, eta=0.0, clip_x0=None, keep_trajectory=False,
                   rank=None):
    """A compiled ``run(x, taus, seed)``: DDIM steps along the decreasing int32 tensor ``taus``.

    One ``tf.while_loop``; taus, eta's noise seed and the batch are tensors, so one trace serves
    every step count and seed. With ``keep_trajectory`` it also returns x_t and x0_hat before
    every step, stacked: (K, B, ...) each. ``rank``: as in ``make_ddpm_loop``.
    """
    key = ("ddim", eps_fn, id(schedule), float(eta), clip_x0, keep_trajectory, rank)

    @tf.function(reduce_retracing=True)
    def run(x, taus, seed):
        batch, k = tf.shape(x)[0], tf.shape(taus)[0]
        prevs = tf.concat([taus[1:], [-1]], axis=0)
        xs = tf.TensorArray(x.dtype, size=k if keep_trajectory else 0, dynamic_size=False)
        x0s = tf.TensorArray(x.dtype, size=k if keep_trajectory else 0, dynamic_size=False)

        def body(i, x, xs, x0s):
            t, s = tf.fill([batch], taus[i]), tf.fill([batch], prevs[i])
            eps = eps_fn(x, t)
            z = (tf.random.stateless_normal(tf.shape(x), seed=_noise_seed(seed, taus[i]), dtype=x.dtype)
                 if eta > 0 else None)
            x_next, x0_hat = ddim_step(x, t, s, eps, schedule, eta=eta, noise=z, clip_x0=clip_x0)
            if keep_trajectory:
                xs, x0s = xs.write(i, x), x0s.write(i, x0_hat)
            return i + 1, x_next, xs, x0s

        _, x, xs, x0s = tf.while_loop(lambda i, *_: i < k, body, (0, x, xs, x0s),
                                      maximum_iterations=schedule.T)
        if keep_trajectory:
            return x, xs.stack(), x0s.stack()
        return x

    return _cached_loop(key, schedule, run)


def ddim_sample(eps_fn, shape, schedule: NoiseSchedule, num_steps=50, eta=0.0, seed=0,
                clip_x0=None, x_T=None, return_trajectory=False, dtype=tf.float32):
    """DDIM sampling with ``num_steps`` network evaluations (Song et al. 2021).

    eta = 0 is deterministic given x_T; eta = 1 is ancestral sampling on the respaced schedule.
    x_T: optional starting noise (e.g. from ``ddim_invert``); else drawn from ``seed`` exactly
    as ``ddpm_sample`` draws it, so both samplers start from the same x_T for the same seed.
    Returns x_0 as NumPy (B, ...); with ``return_trajectory`` also (taus, x_t (K, B, ...),
    x0_hat (K, B, ...)) before each step.
    """
    taus = tf.constant(timestep_sequence(schedule.T, num_steps), tf.int32)
    seed_t = tf.constant(int(seed), tf.int32)
    if x_T is None:
        x_T = initial_noise(shape, seed_t, schedule.T, dtype)
    run = make_ddim_loop(eps_fn, schedule, eta=eta, clip_x0=clip_x0, keep_trajectory=return_trajectory,
                         rank=len(x_T.shape))
    x_T = tf.cast(x_T, dtype)
    with _quiet_tf_warnings():
        # trace once for any batch size and step count (a later call with other sizes reuses it)
        run.get_concrete_function(tf.TensorSpec([None] + x_T.shape[1:], dtype),
                                  tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32))
        out = run(x_T, taus, seed_t)
    if not return_trajectory:
        return out.numpy()
    x0, xs, x0s = out
    return x0.numpy(), (taus.numpy(), xs.numpy(), x0s.numpy())


def ddim_invert(eps_fn, x0, schedule: NoiseSchedule, num_steps=50):
    """Encode images into DDIM noise: the eta = 0 update run forwards, x_0 -> x_T (Song et al. Sec. 4.3).

    From x_s to the next timestep t > s along the same subsequence that ``ddim_sample`` walks down:
    x_t = sqrt(abar_t) x0_hat(x_s, s) + sqrt(1 - abar_t) eps(x_s, s). Decoding the result with
    ``ddim_sample(..., eta=0, x_T=result)`` and the same ``num_steps`` gives back x_0 up to the
    discretisation error (eps is evaluated at the start of each step, not at its end).
    """
    taus = timestep_sequence(schedule.T, num_steps)[::-1]             # increasing: 0, ..., T-1
    abar = schedule.alphas_cumprod
    x0 = tf.convert_to_tensor(x0)
    steps = lambda t: tf.fill([tf.shape(x0)[0]], int(t))
    a = abar[taus[0]]                                                  # x_0 -> x_{tau_0}: ~ the clean image
    x = np.sqrt(a) * x0 + np.sqrt(1 - a) * tf.cast(eps_fn(np.sqrt(a) * x0, steps(taus[0])), x0.dtype)
    for s, t in zip(taus[:-1], taus[1:]):
        eps = tf.cast(eps_fn(x, steps(s)), x0.dtype)
        x0_hat = (x - np.sqrt(1 - abar[s]) * eps) / np.sqrt(abar[s])
        x = np.sqrt(abar[t]) * x0_hat + np.sqrt(1 - abar[t]) * eps
    return x.numpy()


# ============================================================================ DPM-Solver++(2M)
#
# Lu et al. 2022 ("DPM-Solver++", Algorithm 2): a second-order multistep solver of the
# probability-flow ODE written for the data prediction x0_hat. With alpha = sqrt(abar),
# sigma = sqrt(1 - abar) and lambda = log(alpha / sigma), from x_t to x_s along tau:
#
#     h      = lambda_s - lambda_t,  r = h_prev / h
#     D      = (1 + 1/(2r)) x0_hat(x_t) - 1/(2r) x0_hat(previous step)     (first step: D = x0_hat)
#     x_s    = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D
#
# With D = x0_hat the step is exactly deterministic DDIM; the correction D uses the x0_hat of
# the step before at no extra network evaluation. The last step (to x_0, sigma = 0) is first
# order ("lower order final"), so it returns x0_hat.

def dpmpp2m_coefficients(schedule: NoiseSchedule, taus) -> tuple:
    """Per-step (c_x, c_d, w) for x_s = c_x x_t + c_d ((1 + w) x0_hat - w x0_prev), as float64
    NumPy arrays of the length of ``taus`` (decreasing 0-based timesteps; the last step goes to x_0)."""
    taus = np.asarray(taus)
    ab = np.append(schedule.alphas_cumprod.astype(np.float64), 1.0)
    t, s = taus, np.append(taus[1:], -1)
    alpha_t, sigma_t = np.sqrt(ab[t]), np.sqrt(1 - ab[t])
    alpha_s, sigma_s = np.sqrt(ab[s]), np.sqrt(1 - ab[s])
    c_x = sigma_s / sigma_t
    c_d = alpha_s - alpha_t * sigma_s / sigma_t            # alpha_s (1 - e^{-h}), e^{-h} = alpha_t sigma_s / (sigma_t alpha_s)
    with np.errstate(divide="ignore"):
        lam = lambda a, b: np.log(a) - np.log(b)
        h = lam(alpha_s, sigma_s) - lam(alpha_t, sigma_t)   # inf on the last step (sigma_s = 0)
    w = np.zeros(len(taus))
    inner = np.arange(1, len(taus) - 1)                    # not the first step, not the last
    w[inner] = h[inner] / (2 * h[inner - 1])               # 1 / (2 r), r = h_prev / h
    return c_x, c_d, w


def make_dpmpp2m_loop(eps_fn, schedule: NoiseSchedule, clip_x0=None, rank=None):
    """A compiled ``run(x, taus, c_x, c_d, w)``: DPM-Solver++(2M) along ``taus`` (one trace for
    every step count; the coefficients come from ``dpmpp2m_coefficients``)."""
    key = ("dpmpp2m", eps_fn, id(schedule), clip_x0, rank)
    abar = tf.constant(schedule.alphas_cumprod, tf.float32)

    @tf.function(reduce_retracing=True)
    def run(x, taus, c_x, c_d, w):
        batch, k = tf.shape(x)[0], tf.shape(taus)[0]

        def body(i, x, x0_prev):
            t = tf.fill([batch], taus[i])
            eps = tf.cast(eps_fn(x, t), x.dtype)
            a_t = tf.cast(tf.gather(abar, taus[i]), x.dtype)
            x0_hat = (x - tf.sqrt(1.0 - a_t) * eps) / tf.sqrt(a_t)
            if clip_x0 is not None:
                x0_hat = tf.clip_by_value(x0_hat, -clip_x0, clip_x0)
            wi = tf.cast(w[i], x.dtype)
            d = (1.0 + wi) * x0_hat - wi * x0_prev
            x_next = tf.cast(c_x[i], x.dtype) * x + tf.cast(c_d[i], x.dtype) * d
            return i + 1, x_next, x0_hat

        _, x, _ = tf.while_loop(lambda i, *_: i < k, body, (0, x, tf.zeros_like(x)),
                                maximum_iterations=schedule.T)
        return x

    return _cached_loop(key, schedule, run)


def dpmpp2m_sample(eps_fn, shape, schedule: NoiseSchedule, num_steps=20, seed=0, clip_x0=None,
                   x_T=None, dtype=tf.float32):
    """DPM-Solver++(2M) with ``num_steps`` network evaluations; deterministic given x_T, which is
    drawn from ``seed`` exactly as ``ddpm_sample`` and ``ddim_sample`` draw it. Returns NumPy (B, ...)."""
    taus = timestep_sequence(schedule.T, num_steps)
    c_x, c_d, w = (tf.constant(c, tf.float32) for c in dpmpp2m_coefficients(schedule, taus))
    if x_T is None:
        x_T = initial_noise(shape, int(seed), schedule.T, dtype)
    x_T = tf.cast(x_T, dtype)
    run = make_dpmpp2m_loop(eps_fn, schedule, clip_x0=clip_x0, rank=len(x_T.shape))
    vec = tf.TensorSpec([None], tf.float32)
    with _quiet_tf_warnings():
        run.get_concrete_function(tf.TensorSpec([None] + x_T.shape[1:], dtype),
                                  tf.TensorSpec([None], tf.int32), vec, vec, vec)
        return run(x_T, tf.constant(taus, tf.int32), c_x, c_d, w).numpy()


# ============================================================================ one entry point

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


def sample(eps_fn, shape, schedule: NoiseSchedule, sampler="ddim", steps=50, eta=1.0, seed=0,
           clip_x0=None):
    """x_0 (NumPy, ``shape``) from any sampler of this module, from the same x_T for the same seed.

    "ddpm": Algorithm 2, all T steps (``steps`` is ignored); "ddim": ``steps`` DDIM steps with
    noise ``eta`` (eta = 1: ancestral sampling on the respaced schedule, Nichol & Dhariwal);
    "dpm++2m": DPM-Solver++(2M), ``steps`` network evaluations, deterministic.
    """
    if sampler == "ddpm":
        return ddpm_sample(eps_fn, shape, schedule, seed=seed, clip_x0=clip_x0)
    if sampler == "ddim":
        return ddim_sample(eps_fn, shape, schedule, num_steps=steps, eta=eta, seed=seed, clip_x0=clip_x0)
    if sampler == "dpm++2m":
        return dpmpp2m_sample(eps_fn, shape, schedule, num_steps=steps, seed=seed, clip_x0=clip_x0)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


_EPS_FNS: dict = {}


def model_eps_fn(model):
    """``eps_fn(x, t) = model([x, t], training=False)`` for a Keras U-Net; the same model gives
    the same function object, so compiled sampling loops are reused, not re-traced."""
    fn = _EPS_FNS.get(id(model))
    if fn is None or fn[0] is not model:
        fn = (model, lambda x, t: tf.cast(model([x, t], training=False), x.dtype))
        _EPS_FNS[id(model)] = fn
    return fn[1]


def generate(model, schedule: NoiseSchedule, num_images: int, sampler="ddim", steps=50, eta=1.0,
             seed=0, batch_size=64):
    """Images in [-1, 1], (num_images, H, W, C), from a trained U-Net with x0_hat clipped to [-1, 1].

    sampler: one of ``SAMPLERS`` (see ``sample``). Drawn in batches of ``batch_size``; batch i
    uses seed ``seed + i``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    eps_fn = model_eps_fn(model)
    size, channels = model.input_shape[0][1], model.input_shape[0][3]
    out = []
    for i, start in enumerate(range(0, num_images, batch_size)):
        shape = (min(batch_size, num_images - start), size, size, channels)
        out.append(sample(eps_fn, shape, schedule, sampler=sampler, steps=steps, eta=eta, seed=seed + i,
                          clip_x0=1.0))
    return np.concatenate(out)
