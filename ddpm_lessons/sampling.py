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


_LOOP_CACHE: dict = {}
_LOOP_CACHE_SIZE = 8


def make_ddpm_loop(eps_fn, schedule: NoiseSchedule, clip_x0=None, variance="posterior"):
    """A compiled ``run(x, t_hi, t_lo, seed)`` taking x_{t_hi} to x_{t_lo} (paper indices).

    Runs the steps with 0-based index t_hi-1, ..., t_lo in a ``tf.while_loop``; t_hi, t_lo and
    seed are int32 scalar tensors, so one trace serves every segment and every seed.
    Step i draws its noise with the stateless seed (seed, i). The last few loops are cached,
    keyed by (eps_fn, schedule, clip_x0, variance): pass the same eps_fn object to sample again
    without tracing again.
    """
    key = (eps_fn, id(schedule), clip_x0, variance)
    cached = _LOOP_CACHE.get(key)
    if cached is not None and cached[0] is schedule:
        return cached[1]

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

    if len(_LOOP_CACHE) >= _LOOP_CACHE_SIZE:
        _LOOP_CACHE.pop(next(iter(_LOOP_CACHE)))
    _LOOP_CACHE[key] = (schedule, run)
    return run


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
    run = make_ddpm_loop(eps_fn, schedule, clip_x0=clip_x0, variance=variance)
    seed_t = tf.constant(int(seed), tf.int32)
    x = tf.random.stateless_normal(list(shape), seed=_noise_seed(seed_t, T), dtype=dtype)
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
