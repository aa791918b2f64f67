"""Lessons 07 and 12 — one object for what the network is trained to predict and what that implies.

The trainer and every sampler step ask this object, not the formulas spread over the lessons:

    noised(x0, t, noise)  -> (x_t, target, weight)                          training (Algorithm 1)
        x_t = alpha_t x0 + sigma_t eps,  alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)   (Ho et al. eq. 4)
        target: eps ("eps", Ho et al. 2020) or v = alpha_t eps - sigma_t x0 ("v", Salimans & Ho 2022)
        weight: 1, or min-SNR (Hang et al. 2023): min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR + 1) for v
    predict(output, x_t, t) -> (eps, x0)                                    sampling
        eps-prediction: eps = output,              x0 = (x_t - sigma_t eps) / alpha_t
        v-prediction:   x0 = alpha_t x_t - sigma_t v,  eps = sigma_t x_t + alpha_t v   (no division)

The tables alpha_t, sigma_t are built once in float64 from the schedule, with one more row for the clean
image (t = END = -1: alpha = 1, sigma = 0), and cast once per dtype. ``t`` may be an int or float tensor
holding trained timesteps, of any shape that broadcasts after reshaping to (B, 1, ..., 1), or a scalar.
Time is not integer-only in the machinery around this object: the network's time input is a float,
the samplers' grids are float32 and reach the tables and the network through ``gather`` and
``network_time``, so an objective in continuous time (flow matching, EDM) replaces these two.
The choice of target is checked here, in one place (``check_target``), and ``objective`` builds the
object for it: this ``Diffusion`` for "eps" and "v", ``flow.FlowMatching`` for "flow" (lesson 15: the
straight path x_t = (1 - t) x0 + t eps and its velocity target, in continuous time).
"""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from .flow import FlowMatching, check_time_sampling
from .schedule import NoiseSchedule

PREDICTIONS = ("eps", "v", "flow")           # "flow": flow matching's velocity (flow.py), not a Diffusion
LOSS_WEIGHTINGS = ("none", "min-snr")
END = -1                                     # the clean image: abar = 1 (the grids' last entry)


def check_target(prediction, loss_weighting="none", snr_gamma=5.0):
    """Raise ValueError naming the knob and its allowed values for an unknown target or weighting."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction = {prediction!r} must be 'eps', 'v' or 'flow'")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting = {loss_weighting!r} must be 'none' or 'min-snr'")
    if not (isinstance(snr_gamma, numbers.Real) and snr_gamma > 0):     # False for NaN too
        raise ValueError(f"snr_gamma = {snr_gamma!r} must be a positive number, e.g. 5.0")


def objective(schedule: NoiseSchedule, prediction: str = "eps", loss_weighting: str = "none",
              snr_gamma: float = 5.0, time_sampling: str = "uniform"):
    """The object a network of this ``prediction`` is trained and sampled with: a ``Diffusion`` on
    ``schedule`` for "eps" and "v", a ``FlowMatching`` (which needs no schedule) for "flow"."""
    check_target(prediction, loss_weighting, snr_gamma)
    if prediction == "flow":
        if loss_weighting != "none":
            raise ValueError(f"loss_weighting = {loss_weighting!r}: flow matching weighs every t alike ('none')")
        return FlowMatching(time_sampling, schedule.T)
    check_time_sampling(time_sampling)
    return Diffusion(schedule, prediction, loss_weighting, snr_gamma)


class Diffusion:
    """The schedule's noising and the network's parameterisation (``prediction``, ``loss_weighting``)."""

    continuous = False                           # timesteps are the schedule's integers

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", loss_weighting: str = "none",
                 snr_gamma: float = 5.0):
        check_target(prediction, loss_weighting, snr_gamma)
        if prediction == "flow":
            raise ValueError("prediction = 'flow' is flow matching, not a noise schedule's Diffusion: "
                             "use diffusion.objective(schedule, 'flow') (flow.FlowMatching)")
        self.schedule, self.prediction = schedule, prediction
        self.loss_weighting, self.snr_gamma = loss_weighting, float(snr_gamma)
        abar = np.append(np.asarray(schedule.alphas_cumprod, np.float64), 1.0)      # (T + 1,): END -> 1
        with np.errstate(divide="ignore"):
            snr = abar / (1.0 - abar)                           # inf on the END row (never trained on)
        if loss_weighting == "none":
            weight = np.ones_like(abar)
        elif prediction == "eps":
            weight = np.minimum(1.0, snr_gamma / snr)          # min(SNR, gamma) / SNR
        else:
            weight = np.minimum(snr, snr_gamma) / (snr + 1.0)
        self._tables64 = {"alpha": np.sqrt(abar), "sigma": np.sqrt(1.0 - abar), "weight": weight}
        self._tables = {}

    def table(self, name: str, dtype=tf.float32):
        """``name`` ("alpha", "sigma", "weight") as a (T + 1,) constant of ``dtype``, cast once. Only a
        constant made eagerly is kept: one made while a function is traced belongs to that graph alone."""
        key = (name, tf.as_dtype(dtype).name)
        if key not in self._tables:
            with tf.init_scope():                 # eagerly, even while a function is traced: then kept
                self._tables[key] = tf.constant(self._tables64[name], dtype)
        return self._tables[key]

    def gather(self, name: str, t, x):
        """The table ``name`` at timesteps t (END = -1 is the clean image), shaped to broadcast against x:
        (B, 1, ..., 1) for t of shape (B,), (1, ..., 1) for a scalar t."""
        t = tf.math.floormod(tf.cast(t, tf.int32), self.schedule.T + 1)
        values = tf.gather(self.table(name, x.dtype), t)
        return tf.reshape(values, [-1 if len(t.shape) else 1] + [1] * (len(x.shape) - 1))

    def network_time(self, t):
        """The time the network is given for grid time ``t``: a trained timestep (int32) for this
        discrete schedule (a grid may carry it as a float). A continuous-time objective gives t itself."""
        return tf.cast(t, tf.int32)

    @staticmethod
    def unet_time(t):
        """What the U-Net's time embedding receives: the timestep itself (flow matching scales its t)."""
        return t

    def training_times(self, rng: tf.random.Generator, batch):
        """t ~ U{0, ..., T-1} (B,) int32 for one training batch (Ho et al. Algorithm 1, line 3)."""
        return rng.uniform([batch], 0, self.schedule.T, dtype=tf.int32)

    def training_times_stateless(self, total, seed):
        """The same from a stateless seed (the distributed step: one draw for the global batch)."""
        return tf.random.stateless_uniform([total], seed, 0, self.schedule.T, dtype=tf.int32)

    def bucket(self, t, buckets: int):
        """The loss-statistics bucket of timestep t: t buckets // T."""
        return tf.cast(t, tf.int32) * buckets // self.schedule.T

    def noised(self, x0, t, noise):
        """(x_t, the training target, the per-example loss weight (B,)) for clean x0 at timesteps t (B,)."""
        a, s = self.gather("alpha", t, x0), self.gather("sigma", t, x0)
        noise = tf.cast(noise, x0.dtype)
        x_t = a * x0 + s * noise
        target = noise if self.prediction == "eps" else a * noise - s * x0
        return x_t, target, tf.gather(self.table("weight", x0.dtype), tf.cast(t, tf.int32))

    def predict(self, output, x_t, t):
        """(eps, x0) that the network's ``output`` at (x_t, t) implies, for this ``prediction``."""
        output = tf.cast(output, x_t.dtype)
        a, s = self.gather("alpha", t, x_t), self.gather("sigma", t, x_t)
        if self.prediction == "eps":
            return output, (x_t - s * output) / a
        return s * x_t + a * output, a * x_t - s * output
