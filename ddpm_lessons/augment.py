"""Lesson 10 — augmentation that does not leak (Karras et al. 2022, EDM's ``augment_pipe``; ADA).

A small folder is learnt by heart quickly. Rotating, shifting and rescaling the pictures gives the
network more to learn from, but a network trained on rotated pictures also *generates* rotated
pictures: the augmentation leaks into the samples. EDM's remedy: tell the network which transform
was applied, as an extra conditioning input ``a`` (the augmentation labels), and ask for a = 0 (no
transform) when sampling. The network then learns the data and the transforms apart.

Each image gets each transform independently with probability p:

    rotation       k quarter turns, k uniform in {1, 2, 3}          a = (sin(k pi/2), cos(k pi/2) - 1)
    translation    (dx, dy) whole pixels, each uniform in [-m, m]    a = (dx / size, dy / size)
                   with m = size // 8; border pixels reflected
    scaling        s = 2^z, z ~ N(0, 0.2^2) clipped to [-0.5, 0.5]    a = z
                   about the centre, bilinear, reflected border

so ``a`` (B, AUGMENT_DIM = 5) is zero exactly when nothing was applied: p = 0 gives the identity and
a = 0. The left-right flip of ``data.make_dataset`` stays a plain augmentation: a mirrored photograph
is still a photograph.

All three are one coordinate map, output pixel -> source pixel, sampled bilinearly:
src = R^-1 (out - d) / s about the image centre. Quarter turns and whole-pixel shifts land on pixel
centres, so they are exact (equal to ``np.rot90`` and a reflected ``np.roll``; tested).
"""
from __future__ import annotations

import math

import tensorflow as tf

AUGMENT_DIM = 5
SCALE_STD = 0.2          # of log2(scale)
SCALE_LIMIT = 0.5        # |log2(scale)| at most this: 0.71x .. 1.41x


def draw_augmentations(n, p: float, seed, size: int) -> dict:
    """Per-image transform parameters for ``n`` images, each transform with probability ``p``:
    ``k`` (n,) int32 quarter turns (0 = none), ``dx``, ``dy`` (n,) int32 pixel shifts, ``log2_scale`` (n,)
    float32. ``seed``: a stateless seed, shape (2,) int (the same seed gives the same draws)."""
    if not 0 <= p <= 1:
        raise ValueError(f"augmentation probability p = {p!r} must lie in [0, 1], e.g. 0.15")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
    apply = [tf.random.stateless_uniform([n], seeds[i]) < p for i in range(3)]
    m = max(size // 8, 1)
    k = tf.random.stateless_uniform([n], seeds[3], 1, 4, dtype=tf.int32)
    shift = tf.random.stateless_uniform([2, n], seeds[4], -m, m + 1, dtype=tf.int32)
    z = tf.clip_by_value(SCALE_STD * tf.random.stateless_normal([n], seeds[5]), -SCALE_LIMIT, SCALE_LIMIT)
    zero = tf.zeros([n], tf.int32)
    return {"k": tf.where(apply[0], k, zero),
            "dx": tf.where(apply[1], shift[0], zero), "dy": tf.where(apply[1], shift[1], zero),
            "log2_scale": tf.where(apply[2], z, tf.zeros([n]))}


def augment_labels(params: dict, size: int):
    """The conditioning input a (B, AUGMENT_DIM) float32 of the transforms in ``params``
    (zero where nothing was applied): (sin(k pi/2), cos(k pi/2) - 1, dx / size, dy / size, log2 s)."""
    angle = tf.cast(params["k"], tf.float32) * (math.pi / 2)
    return tf.stack([tf.round(tf.sin(angle)), tf.round(tf.cos(angle)) - 1.0,
                     tf.cast(params["dx"], tf.float32) / size, tf.cast(params["dy"], tf.float32) / size,
                     tf.cast(params["log2_scale"], tf.float32)], axis=1)


def _reflect(coord, size: int):
    """Pixel coordinates (float) folded into [0, size - 1] by mirror reflection about the border
    (d c b a | a b c d | d c b a), as NumPy's ``mode="symmetric"``."""
    period = 2.0 * size
    c = tf.math.floormod(coord + 0.5, period)
    c = tf.where(c >= size, period - c, c) - 0.5
    return tf.clip_by_value(c, 0.0, size - 1.0)


def apply_augmentations(images, params: dict):
    """``images`` (B, H, W, C), H = W, transformed per image by ``params`` (``draw_augmentations``).

    Output pixel (i, j) with centred coordinates u = j + 0.5 - W/2, v = i + 0.5 - H/2 reads the
    source at R^-1 ((u, v) - (dx, dy)) / s (then back to pixel indices), bilinearly, border reflected.
    R turns by k quarter turns counter-clockwise on screen, as ``np.rot90(image, k)``."""
    images = tf.convert_to_tensor(images)
    dtype = images.dtype
    x = tf.cast(images, tf.float32)
    b, size = tf.shape(x)[0], x.shape[1]
    centre = (tf.range(size, dtype=tf.float32) + 0.5) - size / 2.0
    v, u = tf.meshgrid(centre, centre, indexing="ij")                                  # (H, W) each
    u, v = u[None] - tf.cast(params["dx"], tf.float32)[:, None, None], v[None] - tf.cast(params["dy"], tf.float32)[:, None, None]
    angle = tf.cast(params["k"], tf.float32)[:, None, None] * (math.pi / 2)
    cos, sin = tf.round(tf.cos(angle)), tf.round(tf.sin(angle))
    # the inverse quarter turn: output (u, v) reads the source at R(-k) (u, v); equal to np.rot90(image, k)
    su, sv = cos * u - sin * v, sin * u + cos * v
    inv_scale = tf.pow(2.0, -tf.cast(params["log2_scale"], tf.float32))[:, None, None]
    su, sv = su * inv_scale + size / 2.0 - 0.5, sv * inv_scale + size / 2.0 - 0.5     # pixel indices
    su, sv = _reflect(su, size), _reflect(sv, size)
    u0, v0 = tf.floor(su), tf.floor(sv)
    fu, fv = (su - u0)[..., None], (sv - v0)[..., None]
    u0, v0 = tf.cast(u0, tf.int32), tf.cast(v0, tf.int32)
    u1, v1 = tf.minimum(u0 + 1, size - 1), tf.minimum(v0 + 1, size - 1)
    batch = tf.broadcast_to(tf.range(b)[:, None, None], tf.shape(u0))

    def at(vv, uu):
        return tf.gather_nd(x, tf.stack([batch, vv, uu], axis=-1))

    top = at(v0, u0) * (1 - fu) + at(v0, u1) * fu
    bottom = at(v1, u0) * (1 - fu) + at(v1, u1) * fu
    return tf.cast(top * (1 - fv) + bottom * fv, dtype)


def augment(images, p: float, seed):
    """(augmented images, augmentation labels a (B, AUGMENT_DIM)) for a batch ``images`` (B, H, W, C):
    ``draw_augmentations`` + ``apply_augmentations`` + ``augment_labels``."""
    images = tf.convert_to_tensor(images)
    size = images.shape[1]
    params = draw_augmentations(tf.shape(images)[0], p, seed, size)
    return apply_augmentations(images, params), augment_labels(params, size)
