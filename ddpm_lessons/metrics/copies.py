"""Memorisation check of lesson 11: each sample's nearest training image, and near-copies.

    pixel_nearest      RMS pixel distance, minimised over mirror images and shifts of <= 2 px
    feature_nearest    L2 distance of feature vectors (mirror images included)
    MemorisationCheck  flags samples closer than 1/3 of the typical train-train gap
"""
from __future__ import annotations

import numpy as np

from .features import as_unit_float, feature_fn


def _flip(x):
    return x[:, :, ::-1]


def _crops(x, max_shift):
    """The central crop and all crops shifted by up to max_shift pixels: (S, N, h, w, C)."""
    s, h, w = max_shift, x.shape[1], x.shape[2]
    return np.stack([x[:, s + dy: h - s + dy, s + dx: w - s + dx]
                     for dy in range(-s, s + 1) for dx in range(-s, s + 1)])


def _pairwise_min_dist(q, variants, exclude_same=False, chunk=256):
    """q (m, D), variants (V, n, D) -> (min over V of RMS distance (m, n)) ... reduced to the
    nearest index: returns (dist (m,), index (m,))."""
    m, (V, n, D) = len(q), variants.shape
    best = np.full((m, n), np.inf)
    qq = (q ** 2).sum(1)[:, None]
    for v in range(V):
        t = variants[v]
        d2 = qq + (t ** 2).sum(1)[None, :] - 2.0 * (q @ t.T)
        np.minimum(best, d2, out=best)
    if exclude_same:
        best[np.arange(m), np.arange(m)] = np.inf
    idx = best.argmin(1)
    return np.sqrt(np.maximum(best[np.arange(m), idx], 0.0) / D), idx


def pixel_nearest(queries, train, max_shift: int = 2, flips: bool = True, exclude_same=False):
    """Nearest training image of each query in pixel space: RMS distance over the central
    (H-2s)x(W-2s) crop of the query, minimised over the training image, its mirror image
    (training flips images) and every shift of up to ``max_shift`` pixels. Returns (dist, index)."""
    q = as_unit_float(queries).astype(np.float32)
    t = as_unit_float(train).astype(np.float32)
    s = max_shift
    qc = q[:, s: q.shape[1] - s, s: q.shape[2] - s].reshape(len(q), -1)
    variants = [_crops(t, s)] + ([_crops(_flip(t), s)] if flips else [])
    variants = np.concatenate(variants).reshape(-1, len(t), qc.shape[1])
    return _pairwise_min_dist(qc, variants, exclude_same=exclude_same)


def feature_nearest(query_features, train_features, train_features_flipped=None, exclude_same=False):
    """Nearest training image of each query in feature space (L2, mirror images included)."""
    q = np.asarray(query_features, np.float64)
    variants = [np.asarray(train_features, np.float64)]
    if train_features_flipped is not None:
        variants.append(np.asarray(train_features_flipped, np.float64))
    dist, idx = _pairwise_min_dist(q, np.stack(variants), exclude_same=exclude_same)
    return dist * np.sqrt(q.shape[1]), idx     # plain L2, not RMS


class MemorisationCheck:
    """Nearest training images, and which samples are (near-)copies of one.

    The scale: for ``num_reference`` training images (fixed seed), the distance to their nearest
    *other* training image, with the same flips and shifts; its median is the "typical gap"
    between two different training images. A sample is **flagged** when its pixel distance to
    the nearest training image is below ``threshold`` x that median (default 1/3). The same ratio
    is reported in feature space (``feature_fn``; None to skip).
    """

    def __init__(self, train_images, feature_fn=feature_fn, threshold: float = 1 / 3,
                 max_shift: int = 2, num_reference: int = 300, seed: int = 0):
        self.train = as_unit_float(train_images)
        self.threshold, self.max_shift, self.feature_fn = threshold, max_shift, feature_fn
        n = len(self.train)
        ref = np.sort(np.random.default_rng(seed).permutation(n)[: min(num_reference, n)])
        # distance of each reference image to its nearest *other* training image
        others = np.concatenate([ref, np.setdiff1d(np.arange(n), ref)])  # ref first: i-th <-> i-th
        d, _ = pixel_nearest(self.train[ref], self.train[others], max_shift, exclude_same=True)
        self.train_gap_pixel = float(np.median(d))
        if feature_fn is not None:
            self.train_features = feature_fn(self.train)
            self.train_features_flipped = feature_fn(_flip(self.train))
            fd, _ = feature_nearest(self.train_features[others][: len(ref)], self.train_features[others],
                                    self.train_features_flipped[others], exclude_same=True)
            self.train_gap_feature = float(np.median(fd))

    def check(self, samples) -> dict:
        """Per sample: nearest training index and distance (pixels, features), the ratios to the
        typical train-train gap, and the flag; plus the share flagged."""
        x = as_unit_float(samples)
        d, i = pixel_nearest(x, self.train, self.max_shift)
        out = {"pixel_dist": d, "pixel_index": i, "pixel_ratio": d / self.train_gap_pixel,
               "train_gap_pixel": self.train_gap_pixel, "threshold": self.threshold}
        out["flagged"] = out["pixel_ratio"] < self.threshold
        if self.feature_fn is not None:
            fd, fi = feature_nearest(self.feature_fn(x), self.train_features, self.train_features_flipped)
            out.update(feature_dist=fd, feature_index=fi, feature_ratio=fd / self.train_gap_feature,
                       train_gap_feature=self.train_gap_feature)
            out["feature_flagged"] = out["feature_ratio"] < self.threshold
        out["share_flagged"] = float(out["flagged"].mean())
        return out

    def closest_pairs(self, samples, result=None, k: int = 8):
        """(sample, nearest training image) pairs of the k closest samples, interleaved: (2k, H, W, C)."""
        result = result or self.check(samples)
        order = np.argsort(result["pixel_ratio"])[:k]
        x = as_unit_float(samples)
        return np.stack([im for j in order for im in (x[j], self.train[result["pixel_index"][j]])]), order
