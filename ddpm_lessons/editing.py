"""Lesson 16 — use a trained model on pictures: SDEdit, inpainting, interpolation, DDIM inversion.

Nothing here is a new sampler. Each operation is a start point, a grid or a step function for the
compiled loop of ``sampling.py`` (``make_loop`` / ``run_loop``), which runs it as it runs DDIM:

    SDEdit     (Meng et al. 2022)     x_t0 = sqrt(abar_t0) x + sqrt(1 - abar_t0) z, then DDIM from t0 to 0
    inpainting (Lugmayr et al. 2022)  after every step the known pixels are replaced by the original,
                                      noised to the step's level: x_s <- m * q(x_s | x0) + (1 - m) * x_s
    RePaint's resampling               the same grid with jumps *back up*: x_s ~ q(x_s | x_t) =
                                      N(sqrt(abar_s / abar_t) x_t, (1 - abar_s / abar_t) I), s > t
    slerp      (Shoemake 1985)        z(a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1
    real-picture interpolation        ``sampling.ddim_invert`` both pictures, slerp the codes, decode with DDIM

``eps_fn`` is a sampler's network function (``sampling.model_eps_fn``, ``guided_eps_fn`` or lesson 03's
exact ``toy.mixture_eps_fn``); pictures are floats in [-1, 1], (B, H, W, C) (or (B, 2) points).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from .sampling import (END, _noise_seed, _start, ddim_invert, ddim_loop_step, ddim_sample, initial_noise, make_loop,
                       run_loop, timestep_grid, timestep_sequence)
from .flow import FlowMatching
from .schedule import NoiseSchedule

MASK_PRESETS = ("left-half", "centre-square", "strokes")
VISIT = 2 ** 20               # a noise key is start time + visit x VISIT (``repaint_grid``)


# ============================================================================ SDEdit

def block_sketch(images, block: int = 4) -> np.ndarray:
    """Each picture averaged over block x block squares and shown at full size: a mosaic of its colours, the
    kind of coarse colour layout SDEdit starts from (lesson 16's inputs). (N, H, W, C) -> the same shape."""
    x = np.asarray(images, np.float32)
    n, h, w, c = x.shape
    small = x.reshape(n, h // block, block, w // block, block, c).mean(axis=(2, 4))
    return np.repeat(np.repeat(small, block, axis=1), block, axis=2)


def check_discrete(eps_fn):
    """The edits here walk the discrete schedule's timesteps: a flow-matching network (lesson 15) is refused."""
    if isinstance(getattr(eps_fn, "objective", None), FlowMatching):
        raise ValueError("editing (SDEdit, inpainting, inversion) is built on the DDPM schedule's timesteps; "
                         "this network was trained with flow matching (OBJECTIVE=flow): edit with a v or eps run")


def strength_grid(schedule: NoiseSchedule, strength: float, steps: int) -> np.ndarray | None:
    """The grid an edit of ``strength`` walks: ``round(strength * steps)`` (at least 1) uniform timesteps
    from t0 = round(strength (T - 1)) down, then END; None for strength 0 (nothing to do). Strength 1 is
    the plain DDIM grid of ``steps`` steps; strength 1/2 the second half of it, at the same step size."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength = {strength}: it must lie in [0, 1] (0 returns the picture, 1 a new sample)")
    if float(strength) == 0.0:
        return None
    t0 = int(round(float(strength) * (schedule.T - 1)))
    k = min(max(1, int(round(float(strength) * steps))), t0 + 1)
    return np.append(timestep_sequence(schedule.T, k, t0), END).astype(np.int32)


def sdedit(eps_fn, images, schedule: NoiseSchedule, strength: float, steps: int = 50, eta: float = 0.0,
           seed: int = 0, clip_x0=1.0) -> np.ndarray:
    """SDEdit (Meng et al. 2022): noise ``images`` to t0 = strength (T - 1), then run DDIM (``eta`` = 0:
    deterministic given the noise; 1: ancestral) back to a picture. x_t0 = sqrt(abar_t0) x + sqrt(1 - abar_t0) z
    with z = ``initial_noise(seed)``, the z every sampler of ``sampling.py`` starts from for this seed, so
    strength 1 is ``ddim_sample(seed=seed)`` exactly: at t0 = T - 1 the picture's share sqrt(abar) (4.9e-5 on the
    cosine schedule) is left out, as every sampler leaves it out (the first step divides x_t by it). Strength 0 returns the pictures unchanged. Returns NumPy, shaped like ``images``."""
    check_discrete(eps_fn)
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    grid = strength_grid(schedule, strength, steps)
    if grid is None:
        return x.numpy()
    a = float(schedule.alphas_cumprod[grid[0]])
    z = initial_noise(x.shape, int(seed), schedule.T, x.dtype)
    share = np.sqrt(a) if grid[0] < schedule.T - 1 else 0.0       # strength 1: the sampler's own start
    x_t0 = share * x + np.sqrt(1.0 - a) * z
    run = make_loop(eps_fn, schedule, ddim_loop_step(float(eta)), ("ddim", float(eta)), clip_x0=clip_x0,
                    rank=len(x.shape))
    return run_loop(run, x_t0, grid, np.zeros((0, len(grid) - 1), np.float32), seed).numpy()


# ============================================================================ inpainting

def mask_preset(name: str, size: int, seed: int = 0) -> np.ndarray:
    """A (size, size, 1) float32 mask, 1 where the picture is *kept*, 0 in the hole to fill:
    "left-half" (the left half is lost), "centre-square" (the middle size/2 x size/2), "strokes"
    (three random brush strokes, 3 px wide for 32 px)."""
    m = np.ones((size, size, 1), np.float32)
    if name == "left-half":
        m[:, : size // 2] = 0
    elif name == "centre-square":
        m[size // 4: size - size // 4, size // 4: size - size // 4] = 0
    elif name == "strokes":
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:size, :size]
        width = max(1.0, size / 20)
        for _ in range(3):
            (y0, x0), (y1, x1) = rng.uniform(0.1 * size, 0.9 * size, (2, 2))
            d = np.array([y1 - y0, x1 - x0])
            u = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / max(d @ d, 1e-9), 0, 1)
            dist = np.hypot(yy - (y0 + u * d[0]), xx - (x0 + u * d[1]))
            m[dist <= width, 0] = 0
    else:
        raise ValueError(f"unknown mask {name!r}: give one of {', '.join(MASK_PRESETS)} or a PNG of the "
                         "picture's size (white = keep, black = fill)")
    return m


def repaint_grid(grid, jump: int = 5, resample: int = 1):
    """RePaint's walk (Lugmayr et al. 2022, Sec. 4.2) on a decreasing ``grid`` (ending in END): down ``jump``
    steps, back up the same ``jump`` steps, down again, ``resample`` times in all, then on to the next
    ``jump`` steps; the last stretch (to the picture) is walked once. resample = 1 is ``grid`` itself.
    Returns (times, keys) as int32: the walk, and per step a noise key, start time + visit x 2^20: the start
    time itself on the first visit (as every sampler draws it), another on every later visit (fresh noise)."""
    grid = [int(t) for t in grid]
    if resample < 1 or jump < 1:
        raise ValueError(f"resample = {resample}, jump = {jump}: both must be at least 1")
    walk, keys, visits = [grid[0]], [], {}
    starts = range(0, len(grid) - 1, jump)
    for i in starts:
        seg = grid[i: min(i + jump, len(grid) - 1) + 1]
        passes = 1 if seg[-1] == END else resample
        for p in range(passes):
            path = seg[1:] + (seg[-2::-1] if p < passes - 1 else [])
            for t in path:
                start = walk[-1]
                n = visits.get(start, 0)
                visits[start] = n + 1
                keys.append(start + n * VISIT)              # visit 0: the start time itself
                walk.append(t)
    return np.asarray(walk, np.int32), np.asarray(keys, np.int32)


def key_rows(keys) -> np.ndarray:
    """Noise keys as the loop's ``extra``: (2, K) float32 rows key mod VISIT and key // VISIT, both exact (a single
    float32 holds whole numbers exactly only up to 2^24; RePaint's keys pass it from 8 visits on)."""
    keys = np.asarray(keys, np.int64)
    return np.stack([keys % VISIT, keys // VISIT]).astype(np.float32)


def _inpaint_inputs(eps_fn):
    """The known pictures and the mask as tf.Variables kept on ``eps_fn`` (any batch and size), set before
    each call, so that one compiled inpainting loop serves every picture and mask."""
    state = eps_fn.__dict__.setdefault("_inpaint_inputs", {})
    if not state:
        state["known"] = tf.Variable(tf.zeros([0]), shape=tf.TensorShape(None), trainable=False)
        state["mask"] = tf.Variable(tf.zeros([0]), shape=tf.TensorShape(None), trainable=False)
    return state["known"], state["mask"]


def inpaint_loop_step(inner, known, mask):
    """A step function for ``make_loop`` that fills the hole of ``known`` (tf.Variables: the pictures and a
    mask broadcastable against them, 1 = keep). On a step down t -> s it runs ``inner`` (a DDIM step), then
    puts back the known pixels noised to level s with their own noise: m q(x_s | x0) + (1 - m) x_s, exactly
    the known pixels at s = END (``tf.where``: bit-exact). On a step up (s > t, RePaint's jump back) it noises
    x forwards: x_s = sqrt(abar_s / abar_t) x_t + sqrt(1 - abar_s / abar_t) z. ``ctx.extra[0]`` holds each
    step's noise key (``repaint_grid``) as two exact float32 rows, key mod VISIT and key // VISIT (one
    float32 holds whole numbers exactly only up to 2^24): visiting a time again draws fresh noise."""
    def step(x, i, grid, ctx):
        t, s = grid[i], grid[i + 1]
        key = tf.cast(ctx.extra[0, i], tf.int32) + tf.cast(ctx.extra[1, i], tf.int32) * VISIT
        draw = lambda k: tf.random.stateless_normal(tf.shape(x), seed=_noise_seed(ctx.seed, k), dtype=x.dtype)
        ctx.noise = lambda x_, t_: draw(key)                  # this visit's noise for the inner step
        keep = tf.cast(mask, x.dtype) > 0.5
        x0 = tf.cast(known, x.dtype)

        def down():
            x_s, x0_hat, _ = inner(x, i, grid, ctx)
            a_s = ctx.gather(s)
            known_s = tf.sqrt(a_s) * x0 + tf.sqrt(tf.maximum(1.0 - a_s, 0.0)) * draw(-2 - key)
            return tf.where(keep, known_s, x_s), x0_hat

        def up():
            r = ctx.gather(s) / ctx.gather(t)
            return tf.sqrt(r) * x + tf.sqrt(tf.maximum(1.0 - r, 0.0)) * draw(-2 - key), x

        x_next, x0_hat = tf.cond(tf.less(s, t), down, up)
        return tf.ensure_shape(x_next, x.shape), tf.ensure_shape(x0_hat, x.shape), ctx.carry
    return step


def inpaint(eps_fn, images, mask, schedule: NoiseSchedule, steps: int = 50, eta: float = 1.0, seed: int = 0,
            resample: int = 1, jump: int = 5, clip_x0=1.0) -> np.ndarray:
    """Fill the hole (mask 0) of ``images`` with the model: DDIM(``eta``) on ``steps`` uniform steps from
    x_T = ``initial_noise(seed)`` (so with nothing known it is ``ddim_sample``'s picture of the seed), the known
    pixels put back after every step (``inpaint_loop_step``). ``resample`` > 1 is RePaint's resampling:
    every ``jump`` steps go back up and down again, ``resample`` times (about resample x the network
    evaluations). ``mask``: (H, W, 1), (B, H, W, 1) or any shape that broadcasts against ``images``, 1 = keep. The known pixels come back exactly."""
    check_discrete(eps_fn)
    x0 = np.asarray(images, np.float32)
    mask = np.asarray(mask, np.float32)
    try:
        fits = np.broadcast_shapes(mask.shape, x0.shape) == x0.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"the mask's shape {mask.shape} does not fit the pictures' {x0.shape}: make a mask of "
                         f"the pictures' size, (H, W, 1) = ({x0.shape[1]}, {x0.shape[2] if x0.ndim > 2 else 1}, 1)")
    grid = timestep_grid(schedule, steps)
    walk, keys = repaint_grid(grid, jump, resample)
    known, held_mask = _inpaint_inputs(eps_fn)
    known.assign(x0)
    held_mask.assign(mask)
    run = make_loop(eps_fn, schedule, inpaint_loop_step(ddim_loop_step(float(eta)), known, held_mask),
                    ("inpaint", float(eta)), clip_x0=clip_x0, rank=x0.ndim)
    x = _start(x0.shape, seed, schedule, walk[0], None, tf.float32)       # ddim_sample's start for this seed
    return run_loop(run, x, walk, key_rows(keys), seed).numpy()


def inpaint_evaluations(schedule: NoiseSchedule, steps: int, resample: int = 1, jump: int = 5) -> int:
    """Network evaluations of ``inpaint``: one per step down of its walk (steps up cost none)."""
    walk, _ = repaint_grid(timestep_grid(schedule, steps), jump, resample)
    return int(np.sum(np.diff(walk.astype(np.int64)) < 0))


# ============================================================================ interpolation

def slerp(z0, z1, alphas) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985) between two arrays of one shape, each taken as one vector:

        z(a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1,   cos(theta) = <z0, z1> / (|z0| |z1|)

    Returns (len(alphas),) + z0.shape, float32. z(0) = z0 and z(1) = z1 exactly; with |z0| = |z1| every z(a)
    has that norm (the straight line between two noises passes through norms that Gaussian noise of this
    size never has: sqrt(1/2) of it half-way). Nearly parallel pairs fall back to the line."""
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs two arrays of one shape, got {z0.shape} and {z1.shape}")
    cos = np.sum(z0 * z1) / (np.linalg.norm(z0) * np.linalg.norm(z1))
    theta = float(np.arccos(np.clip(cos, -1.0, 1.0)))
    out = []
    for a in np.asarray(alphas, np.float64):
        if theta > 1e-6:
            w0, w1 = np.sin((1 - a) * theta) / np.sin(theta), np.sin(a * theta) / np.sin(theta)
        else:
            w0, w1 = 1 - a, a
        out.append(w0 * z0 + w1 * z1)
    return np.stack(out).astype(np.float32)


def interpolate_noise(eps_fn, shape, schedule: NoiseSchedule, seed_a: int, seed_b: int, frames: int = 8,
                      steps: int = 50) -> np.ndarray:
    """(frames, ...) pictures decoded by DDIM (eta = 0) from the slerp between the starting noises of
    ``seed_a`` and ``seed_b`` (one picture each, ``shape`` = (H, W, C)): the first and last frames are
    ``ddim_sample``'s pictures of those seeds."""
    grid = timestep_grid(schedule, steps)
    scale = np.sqrt(1.0 - schedule.alphas_cumprod[grid[0]])
    z = [initial_noise((1,) + tuple(shape), s, schedule.T).numpy()[0] for s in (seed_a, seed_b)]
    path = slerp(z[0], z[1], np.linspace(0, 1, frames))
    return ddim_sample(eps_fn, path.shape, schedule, num_steps=steps, eta=0.0, x_T=scale * path, clip_x0=1.0)


def round_trip(eps_fn, images, schedule: NoiseSchedule, steps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(codes, reconstructions): ``ddim_invert`` then ``ddim_sample`` (eta = 0) on the same grid of ``steps``
    steps, no clipping on either side. The mean |reconstruction - picture| is the inversion's error."""
    check_discrete(eps_fn)
    x = np.asarray(images, np.float32)
    codes = ddim_invert(eps_fn, x, schedule, num_steps=steps)
    back = ddim_sample(eps_fn, x.shape, schedule, num_steps=steps, eta=0.0, x_T=codes)
    return codes, back


def interpolate_real(eps_fn, picture_a, picture_b, schedule: NoiseSchedule, frames: int = 8, steps: int = 50):
    """(frames, ...) pictures between two real ones: both inverted by DDIM (``ddim_invert``), their codes
    slerped, every code decoded by DDIM (eta = 0, the inversion's grid). The first and last frames are the
    two pictures' *reconstructions* (the round trip's error included), not the pictures themselves."""
    codes = ddim_invert(eps_fn, np.stack([picture_a, picture_b]).astype(np.float32), schedule, num_steps=steps)
    path = slerp(codes[0], codes[1], np.linspace(0, 1, frames))
    return ddim_sample(eps_fn, path.shape, schedule, num_steps=steps, eta=0.0, x_T=path)
