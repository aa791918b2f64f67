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
src = R^-1 (out - d) / s about the image centre, done as a quarter turn, then one (size x size)
interpolation matrix per axis and image (shift and isotropic scale act on rows and columns
separately): two small batched matrix products instead of a gather per pixel. Quarter turns and
whole-pixel shifts land on pixel centres, so they are exact (equal to ``np.rot90`` and a reflected
``np.roll``; tested).
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


def _axis_map(shift, log2_scale, size: int):
    """(B, size, size) matrices A with out[i] = sum_j A[i, j] src[j] along one axis: output pixel i
    reads the source at (i + 0.5 - size/2 - shift) / s + size/2 - 0.5, mirror-reflected into the
    picture, linearly interpolated between its two neighbours (two non-zeros per row)."""
    centre = tf.range(size, dtype=tf.float32) + 0.5 - size / 2.0                          # (size,)
    inv_scale = tf.pow(2.0, -tf.cast(log2_scale, tf.float32))[:, None]                    # (B, 1)
    src = (centre[None] - tf.cast(shift, tf.float32)[:, None]) * inv_scale + size / 2.0 - 0.5
    src = _reflect(src, size)                                                              # (B, size)
    lo = tf.floor(src)
    frac = (src - lo)[..., None]
    lo = tf.cast(lo, tf.int32)
    hi = tf.minimum(lo + 1, size - 1)
    return tf.one_hot(lo, size) * (1 - frac) + tf.one_hot(hi, size) * frac


def apply_augmentations(images, params: dict):
    """``images`` (B, H, W, C), H = W, transformed per image by ``params`` (``draw_augmentations``).

    First the quarter turns (``np.rot90(image, k)``, picked per image from the batch turned 0-3
    times), then shift and scale about the centre, separately along rows and columns: output pixel
    (i, j) reads the turned picture at ((i, j) + 1/2 - size/2 - (dy, dx)) / s + size/2 - 1/2, border
    mirror-reflected, bilinearly (two (B, size, size) matrices, ``_axis_map``). Together: output
    (u, v) reads the source at R^-1 ((u, v) - (dx, dy)) / s, with centred coordinates u, v."""
    images = tf.convert_to_tensor(images)
    dtype = images.dtype
    x = tf.cast(images, tf.float32)
    size = x.shape[1]
    xt = tf.transpose(x, [0, 2, 1, 3])                            # np.rot90 by k = flips of x and its transpose
    turned = tf.stack([x, tf.reverse(xt, [1]), tf.reverse(x, [1, 2]), tf.reverse(xt, [2])])  # (4, B, H, W, C)
    pick = tf.one_hot(params["k"], 4, axis=0)[:, :, None, None, None]                      # (4, B, 1, 1, 1)
    x = tf.reduce_sum(turned * pick, axis=0)
    rows = _axis_map(params["dy"], params["log2_scale"], size)
    cols = _axis_map(params["dx"], params["log2_scale"], size)
    x = tf.einsum("bij,bjwc->biwc", rows, x)
    x = tf.einsum("bkw,biwc->bikc", cols, x)
    return tf.cast(x, dtype)


def augment(images, p: float, seed):
    """(augmented images, augmentation labels a (B, AUGMENT_DIM)) for a batch ``images`` (B, H, W, C):
    ``draw_augmentations`` + ``apply_augmentations`` + ``augment_labels``."""
    images = tf.convert_to_tensor(images)
    size = images.shape[1]
    params = draw_augmentations(tf.shape(images)[0], p, seed, size)
    return apply_augmentations(images, params), augment_labels(params, size)
