"""Lesson 02 — the forward (noising) process and its posterior.

    q(x_t | x_0)          = N( sqrt(abar_t) x_0, (1 - abar_t) I )                (Ho et al. eq. 4)
    x_t                   = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  eps ~ N(0, I)
    q(x_{t-1} | x_t, x_0) = N( coef1_t x_0 + coef2_t x_t, beta~_t I )           (eqs. 6-7)
    x_0 from (x_t, eps)   = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps        (eq. 4 inverted)

``t`` is a batch of integer timesteps, one per example, 0-based (see ``schedule.py``).
Works on tensors of any rank: the per-timestep constant is broadcast over every axis
after the batch axis.
"""
from __future__ import annotations

import tensorflow as tf

from .schedule import NoiseSchedule


def extract(values, t, x_shape, dtype=tf.float32):
    """Gather ``values[t]`` for a batch of timesteps and reshape to broadcast against x.

    values: (T,) array; t: (B,) int; returns (B, 1, ..., 1) with len(x_shape) axes.
    """
    out = tf.gather(tf.constant(values, dtype=dtype), tf.cast(t, tf.int32))
    rank = x_shape.rank if isinstance(x_shape, tf.TensorShape) else len(x_shape)
    return tf.reshape(out, [-1] + [1] * (rank - 1))


def q_sample(x0, t, noise, schedule: NoiseSchedule):
    """Draw x_t ~ q(x_t | x_0) in one step: sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4).

    x0, noise: (B, ...) float; t: (B,) int in [0, T). Returns x_t with x0's shape and dtype.
    """
    x0 = tf.convert_to_tensor(x0)
    noise = tf.convert_to_tensor(noise, dtype=x0.dtype)
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape, x0.dtype) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape, x0.dtype) * noise)


def q_step(x_prev, t, noise, schedule: NoiseSchedule):
    """One step of the chain: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (eq. 2)."""
    x_prev = tf.convert_to_tensor(x_prev)
    noise = tf.convert_to_tensor(noise, dtype=x_prev.dtype)
    return (extract(schedule.alphas ** 0.5, t, x_prev.shape, x_prev.dtype) * x_prev
            + extract(schedule.betas ** 0.5, t, x_prev.shape, x_prev.dtype) * noise)


def q_posterior_mean_variance(x0, x_t, t, schedule: NoiseSchedule):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7).

    mean = coef1_t x_0 + coef2_t x_t,  var = beta_t (1 - abar_{t-1}) / (1 - abar_t).
    """
    x0 = tf.convert_to_tensor(x0)
    x_t = tf.convert_to_tensor(x_t, dtype=x0.dtype)
    shape, dtype = x0.shape, x0.dtype
    mean = (extract(schedule.posterior_mean_coef1, t, shape, dtype) * x0
            + extract(schedule.posterior_mean_coef2, t, shape, dtype) * x_t)
    var = extract(schedule.posterior_variance, t, shape, dtype)
    log_var = extract(schedule.posterior_log_variance_clipped, t, shape, dtype)
    return mean, var, log_var


def predict_x0_from_eps(x_t, t, eps, schedule: NoiseSchedule):
    """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps: what a noise predictor implies about x_0."""
    x_t = tf.convert_to_tensor(x_t)
    eps = tf.convert_to_tensor(eps, dtype=x_t.dtype)
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape, x_t.dtype) * x_t
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape, x_t.dtype) * eps)


# ---------------------------------------------------------------- v-prediction (lesson 12)
#
# Salimans & Ho (2022), Sec. 4 and App. D: with a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t) the pair
# (x_0, eps) is rotated by the angle phi_t (cos phi = a_t, sin phi = s_t):
#
#     x_t = a_t x_0 + s_t eps,     v_t = a_t eps - s_t x_0
#     x_0 = a_t x_t - s_t v_t,     eps = s_t x_t + a_t v_t
#
# A network that predicts v never divides by a_t, so its x_0 stays bounded where abar_t -> 0.

def velocity(x0, eps, t, schedule: NoiseSchedule):
    """v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, the target of a v-prediction network."""
    x0 = tf.convert_to_tensor(x0)
    eps = tf.convert_to_tensor(eps, dtype=x0.dtype)
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape, x0.dtype) * eps
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape, x0.dtype) * x0)


def eps_from_v(x_t, t, v, schedule: NoiseSchedule):
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v: the noise a v-prediction implies."""
    x_t = tf.convert_to_tensor(x_t)
    v = tf.convert_to_tensor(v, dtype=x_t.dtype)
    return (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape, x_t.dtype) * x_t
            + extract(schedule.sqrt_alphas_cumprod, t, x_t.shape, x_t.dtype) * v)


def x0_from_v(x_t, t, v, schedule: NoiseSchedule):
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    x_t = tf.convert_to_tensor(x_t)
    v = tf.convert_to_tensor(v, dtype=x_t.dtype)
    return (extract(schedule.sqrt_alphas_cumprod, t, x_t.shape, x_t.dtype) * x_t
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape, x_t.dtype) * v)
