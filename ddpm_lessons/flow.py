"""Lesson 15 — flow matching with a straight path (rectified flow): an objective beside DDPM's.

The path and what the network learns (Lipman et al. 2023; Liu et al. 2023, "rectified flow"):

    x_t = (1 - t) x0 + t eps,   t in [0, 1]          a schedule with alpha_t = 1 - t, sigma_t = t
    u   = dx_t / dt = eps - x0                       the velocity: the training target
    loss  E || u - u_theta(x_t, t) ||^2,  t ~ U(0, 1), or logit-normal t = sigmoid(m + s n) (Esser et al. 2024, SD3)
    predict:  x0 = x_t - t u,   eps = x_t + (1 - t) u    (read off u, no division)

Sampling integrates the ODE dx/dt = u_theta(x, t) from t = 1 (x = eps, pure noise) down to t = 0:

    Euler   x_s = x_t + (s - t) u(x_t, t)  =  (1 - s) x0_hat + s eps_hat        (DDIM's eta = 0 step, eq. 12,
                                                                                 with alpha = 1 - s, sigma = s)
    Heun    x'  = Euler,  x_s = x_t + (s - t) (u(x_t, t) + u(x', s)) / 2        (the last step, to t = 0: Euler)
    DPM-Solver++(2M)  lesson 08's multistep step with alpha = 1 - t, sigma = t   (one evaluation per step)

Both run in ``sampling.py``'s compiled loop (``make_loop``): Euler *is* ``sampling.ddim_loop_step(0.0)``
on this objective's alpha and sigma, DPM-Solver++(2M) is ``sampling.dpmpp2m_loop_step`` with the path's
weights (``sampling.dpmpp2m_weights``), Heun is one more step function. ``FlowMatching`` has the
interface of ``diffusion.Diffusion`` (``noised``, ``predict``, ``network_time``, the training times),
so the Trainer and the samplers take either. Time is continuous: the network's sinusoidal time
embedding is given ``TIME_SCALE`` t (0 .. 999, the range DDPM's timesteps span).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

TIME_SCALE = 999.0                 # t = 1 reaches the U-Net's time embedding as DDPM's last timestep does
TIME_SAMPLINGS = ("uniform", "logit-normal")
FLOW_SAMPLERS = ("euler", "heun", "dpm++2m")


def check_time_sampling(time_sampling):
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling = {time_sampling!r} must be one of {TIME_SAMPLINGS}")


class FlowMatching:
    """The straight path x_t = (1 - t) x0 + t eps and its velocity target (the ``prediction="flow"`` objective).

    ``time_sampling``: how training draws t: "uniform" (U(0, 1)) or "logit-normal" (t = sigmoid(m + s n),
    n ~ N(0, 1), m = 0, s = 1: SD3's choice, more steps in the middle of the path)."""

    prediction = "flow"
    continuous = True              # the samplers' context asks this object for alpha_t, sigma_t (no table)

    def __init__(self, time_sampling: str = "uniform", T: int = 1000):
        check_time_sampling(time_sampling)
        self.time_sampling, self.T = time_sampling, T        # T: the loops' iteration cap and noise keys

    # ---------------------------------------------------------------- the path
    @staticmethod
    def alpha_sigma(t, x):
        """(alpha_t, sigma_t) = (1 - t, t), shaped to broadcast against x: (B, 1, ..., 1) for t (B,),
        (1, ..., 1) for a scalar t."""
        t = tf.cast(t, x.dtype)
        t = tf.reshape(t, [-1 if len(t.shape) else 1] + [1] * (len(x.shape) - 1))
        return 1.0 - t, t

    def noised(self, x0, t, noise):
        """(x_t, the velocity target eps - x0, the loss weight 1 (B,)) for clean x0 at times t (B,) in [0, 1]."""
        noise = tf.cast(noise, x0.dtype)
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise, noise - x0, tf.ones([tf.shape(x0)[0]], x0.dtype)

    def predict(self, output, x_t, t):
        """(eps, x0) that the predicted velocity ``output`` at (x_t, t) implies: x0 = x_t - t u,
        eps = x_t + (1 - t) u."""
        u = tf.cast(output, x_t.dtype)
        alpha, sigma = self.alpha_sigma(t, x_t)
        return x_t + alpha * u, x_t - sigma * u

    @staticmethod
    def velocity(eps, x0):
        """u = d/dt [(1 - t) x0 + t eps] = eps - x0."""
        return eps - x0

    # ---------------------------------------------------------------- time
    def network_time(self, t):
        """The time ``eps_fn`` and ``predict`` take at grid time t: t itself (float32), no rounding."""
        return tf.cast(t, tf.float32)

    @staticmethod
    def unet_time(t):
        """What the U-Net's time embedding receives: TIME_SCALE t (0 .. 999 as DDPM's timesteps)."""
        return TIME_SCALE * tf.cast(t, tf.float32)

    def training_times(self, rng: tf.random.Generator, batch):
        """t (B,) float32 for one training batch, drawn with ``rng``."""
        if self.time_sampling == "uniform":
            return rng.uniform([batch], dtype=tf.float32)
        return tf.sigmoid(rng.normal([batch], dtype=tf.float32))

    def training_times_stateless(self, total, seed):
        """The same from a stateless seed (the distributed step: one draw for the global batch)."""
        if self.time_sampling == "uniform":
            return tf.random.stateless_uniform([total], seed, dtype=tf.float32)
        return tf.sigmoid(tf.random.stateless_normal([total], seed, dtype=tf.float32))

    @staticmethod
    def bucket(t, buckets: int):
        """The loss-statistics bucket of t in [0, 1]: floor(t buckets), the last bucket holding t = 1."""
        return tf.minimum(tf.cast(tf.cast(t, tf.float32) * buckets, tf.int32), buckets - 1)

    # ---------------------------------------------------------------- grids
    @staticmethod
    def grid(num_steps: int, t_max: float = 1.0) -> np.ndarray:
        """The decreasing times a flow sampler visits: num_steps + 1 evenly spaced from t_max to 0, float32."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        return np.linspace(t_max, 0.0, num_steps + 1).astype(np.float32)


def velocity_fn(u_fn, objective: FlowMatching | None = None):
    """A velocity function ``u_fn(x, t) -> u`` (t (B,) float in [0, 1]; e.g. a ToyMLP trained on the
    velocity, or ``GaussianMixture.velocity_star``) as the samplers take it: ``fn(x, t)`` gives the noise
    it implies, ``fn.predict_eps_x0`` (eps, x0) and ``fn.objective`` the ``FlowMatching`` it follows."""
    objective = objective or FlowMatching()
    fn = lambda x, t: objective.predict(u_fn(x, t), x, t)[0]
    fn.predict_eps_x0 = lambda x, t: objective.predict(u_fn(x, t), x, t)
    fn.objective = objective
    return fn


def heun_loop_step(x, i, grid, ctx):
    """Heun's second-order step on the flow ODE from grid[i] to grid[i + 1] (Karras et al. 2022, Alg. 1,
    in the flow's own time): the Euler step, then the average of the velocities at both ends; the last
    step (to t = 0, where x0_hat is the answer) is Euler alone: 2K - 1 network evaluations."""
    t, s = grid[i], grid[i + 1]
    h = tf.cast(s - t, x.dtype)                              # < 0: the ODE runs from t = 1 down to 0
    eps, x0_hat = ctx.denoise(x, t)
    u = FlowMatching.velocity(eps, x0_hat)
    euler = x + h * u

    def corrected():
        eps1, x01 = ctx.denoise(euler, s)
        return x + h * 0.5 * (u + FlowMatching.velocity(eps1, x01))

    return tf.cond(tf.greater(s, 0.0), corrected, lambda: euler), x0_hat, ctx.carry


def flow_sample(velocity_fn, shape, num_steps=10, sampler="euler", seed=0, clip_x0=None, x_T=None,
                dtype=tf.float32, return_trajectory=False):
    """Samples (NumPy, ``shape``) by integrating dx/dt = u(x, t) from t = 1 to 0 in ``num_steps`` steps.

    ``velocity_fn``: ``sampling.model_eps_fn(model, prediction="flow")`` or any eps_fn that carries a
    ``FlowMatching`` as ``.objective`` and ``.predict_eps_x0(x, t) -> (eps, x0)``; t is given as (B,) float32
    in [0, 1]. sampler: "euler" (num_steps evaluations), "heun" (2 num_steps - 1) or "dpm++2m" (lesson 08's
    DPM-Solver++(2M) on the straight path's alpha = 1 - t, sigma = t: num_steps evaluations). x_T: the start at
    t = 1, else z = ``sampling.initial_noise(seed)``, the z every DDPM sampler starts from."""
    from .sampling import ddim_loop_step, dpmpp2m_loop_step, dpmpp2m_weights, initial_noise, make_loop, run_loop
    objective = getattr(velocity_fn, "objective", None)
    if not isinstance(objective, FlowMatching):
        raise ValueError("flow_sample needs a velocity function of a flow-matching network: "
                         "sampling.model_eps_fn(model, prediction='flow')")
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; choose one of {FLOW_SAMPLERS}")
    if not 1 <= num_steps <= objective.T:               # the compiled loop runs at most T steps
        raise ValueError(f"num_steps must be between 1 and {objective.T}, got {num_steps}")
    grid = objective.grid(num_steps)
    x = tf.cast(x_T, dtype) if x_T is not None else initial_noise(shape, int(seed), objective.T, dtype)
    extra = np.zeros((0, num_steps), np.float32)
    if sampler == "euler":
        step, key = ddim_loop_step(0.0), ("ddim", 0.0)
    elif sampler == "heun":
        step, key = heun_loop_step, ("flow-heun",)
    else:
        t, s = grid[:-1].astype(np.float64), grid[1:].astype(np.float64)
        extra = np.stack(dpmpp2m_weights(1.0 - t, t, 1.0 - s, s)).astype(np.float32)
        step, key = dpmpp2m_loop_step, ("dpm++2m",)
    run = make_loop(velocity_fn, objective, step, key, clip_x0=clip_x0,
                    keep_trajectory=bool(return_trajectory), rank=len(x.shape))
    out = run_loop(run, x, grid, extra, seed)
    if not return_trajectory:
        return out.numpy()
    x0, xs, x0s = out
    return x0.numpy(), (grid[:-1], xs.numpy(), x0s.numpy())


def reflow_pairs(model, schedule, num_pairs: int, seed: int = 0, sampler: str = "heun", steps: int = 10,
                 batch_size: int = 128):
    """The pairs of rectified flow's second round ("reflow", Liu et al. 2023, section 2.3):

        (z, x0 = ODE_theta(z)),   z ~ N(0, I)          x0: what the trained flow network makes of z

    drawn with ``sampling.generate`` (``sampler``, ``steps``; batch i from seed + i, whose start is
    ``sampling.initial_noise(seed + i)``). Trained on these couples instead of independent (x0, eps), the
    straight line from z to x0 is the path itself: paths no longer cross, and the velocity along each
    is constant, which few-step samplers get right. Returns (noise, images), float32 (N, H, W, C)."""
    from .sampling import generate, initial_noise
    images = generate(model, schedule, num_pairs, sampler=sampler, steps=steps, seed=seed,
                      batch_size=batch_size, prediction="flow")
    size, channels = model.input_shape[0][1], model.input_shape[0][3]
    noise = [initial_noise((min(batch_size, num_pairs - start), size, size, channels), seed + i, schedule.T).numpy()
             for i, start in enumerate(range(0, num_pairs, batch_size))]
    return np.concatenate(noise).astype(np.float32), images.astype(np.float32)


def pair_dataset(noise, images, batch_size: int, seed: int = 0):
    """A tf.data pipeline of reflow's couples: batches {"images": x0 (B, H, W, C), "noise": z (B, H, W, C)}
    (the Trainer trains on each image with its own noise), shuffled together (seeded, every pass), no flip:
    a flipped picture would no longer be what its noise becomes."""
    noise, images = np.asarray(noise, np.float32), np.asarray(images, np.float32)
    if noise.shape != images.shape:
        raise ValueError(f"noise {noise.shape} and images {images.shape} must pair one to one")
    if not 1 <= batch_size <= len(images):
        raise ValueError(f"batch_size {batch_size} must be between 1 and the number of pairs ({len(images)})")
    ds = tf.data.Dataset.from_tensor_slices({"images": images, "noise": noise})
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
