"""Memorisation check of lesson 11: each sample's nearest training images, and near-copies.

    pixel_distances       RMS pixel distance of every query to every training image, minimised over
                          mirror images and shifts of <= 2 px: (m, n)
    pixel_nearest         the nearest one: (distance, index)
    feature_nearest       L2 distance of feature vectors (mirror images included)
    near_duplicate_groups which images are "the same picture" (same name, or closer than 3/4 of the
                          typical gap): they must stay on one side of a held-out split
    grouped_split         training / held-out indices with whole groups on each side
    MemorisationCheck     flags a sample when it is closer to a training image than training images
                          are to each other (d1 < 0.9 gap) *and* much closer to it than to the next
                          ones (d1 < 0.9 x mean of the 5 nearest): a copy, not an average picture
"""
from __future__ import annotations

import numpy as np

from .features import as_unit_float, feature_fn, grouped_split  # noqa: F401 (grouped_split: re-exported)


def _flip(x):
    return x[:, :, ::-1]


def _crops(x, max_shift):
    """The central crop and all crops shifted by up to max_shift pixels: (S, N, h, w, C)."""
    s, h, w = max_shift, x.shape[1], x.shape[2]
    return np.stack([x[:, s + dy: h - s + dy, s + dx: w - s + dx]
                     for dy in range(-s, s + 1) for dx in range(-s, s + 1)])


def _pairwise_min_dist2(q, variants):
    """q (m, D), variants (V, n, D) -> squared distances minimised over the V variants: (m, n)."""
    best = np.full((len(q), variants.shape[1]), np.inf)
    qq = (q ** 2).sum(1)[:, None]
    for t in variants:
        np.minimum(best, qq + (t ** 2).sum(1)[None, :] - 2.0 * (q @ t.T), out=best)
    return np.maximum(best, 0.0)


def _nearest(dist, exclude_same=False):
    """(distance to the nearest, its index) per row of a distance matrix; ``exclude_same``: skip
    the diagonal (query i is training image i)."""
    if exclude_same:
        dist = dist.copy()
        dist[np.arange(len(dist)), np.arange(len(dist))] = np.inf
    idx = dist.argmin(1)
    return dist[np.arange(len(dist)), idx], idx


def pixel_distances(queries, train, max_shift: int = 2, flips: bool = True) -> np.ndarray:
    """RMS pixel distance of each query to each training image, over the central (H-2s)x(W-2s)
    crop of the query, minimised over the training image, its mirror image (training flips
    images) and every shift of up to ``max_shift`` pixels: (len(queries), len(train))."""
    q = as_unit_float(queries).astype(np.float32)
    t = as_unit_float(train).astype(np.float32)
    s = max_shift
    qc = q[:, s: q.shape[1] - s, s: q.shape[2] - s].reshape(len(q), -1)
    variants = [_crops(t, s)] + ([_crops(_flip(t), s)] if flips else [])
    variants = np.concatenate(variants).reshape(-1, len(t), qc.shape[1])
    return np.sqrt(_pairwise_min_dist2(qc, variants) / qc.shape[1])


def pixel_nearest(queries, train, max_shift: int = 2, flips: bool = True, exclude_same=False):
    """Nearest training image of each query in pixel space (see ``pixel_distances``): (dist, index);
    ``exclude_same``: query i is training image i (its own distance is skipped)."""
    return _nearest(pixel_distances(queries, train, max_shift, flips), exclude_same)


def feature_nearest(query_features, train_features, train_features_flipped=None, exclude_same=False):
    """Nearest training image of each query in feature space (L2, mirror images included)."""
    q = np.asarray(query_features, np.float64)
    variants = [np.asarray(train_features, np.float64)]
    if train_features_flipped is not None:
        variants.append(np.asarray(train_features_flipped, np.float64))
    return _nearest(np.sqrt(_pairwise_min_dist2(q, np.stack(variants))), exclude_same)   # plain L2


def near_duplicate_groups(images, names=None, tau: float = 0.75, max_shift: int = 2) -> np.ndarray:
    """A group id per image: images with the same name (e.g. the skin tones of one emoji), and
    images closer than ``tau`` x the typical gap (median nearest-neighbour distance) to each other
    (e.g. "man superhero" and "woman superhero" at 16x16), are one group (union-find)."""
    x = as_unit_float(images)
    dist = pixel_distances(x, x, max_shift)
    np.fill_diagonal(dist, np.inf)
    parent = np.arange(len(x))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i, j):
        parent[root(i)] = root(j)

    if names is not None:
        first = {}
        for i, name in enumerate(names):
            join(i, first.setdefault(name, i))
    for i, j in zip(*np.where(dist < tau * np.median(dist.min(1)))):
        join(i, j)
    return np.array([root(i) for i in range(len(x))])


class MemorisationCheck:
    """Nearest training images, and which samples are (near-)copies of one.

    Two ratios per sample, from its pixel distances d1 <= d2 <= ... to the training images
    (flips and shifts of <= 2 px included):

        gap ratio  d1 / typical gap, the median distance of a training image to its nearest
                   *other* training image (``num_reference`` of them, fixed seed)
        knn ratio  d1 / mean(d1 .. d_k), k = 5: how much closer the nearest is than the next ones

    A sample is **flagged** as a near-copy when both are below their thresholds (0.9 and 0.9):
    closer to one training picture than training pictures are to each other, *and* clearly
    closer to it than to the others. The second condition keeps blurry "average" samples, which
    sit at a similar distance from many pictures, from being flagged. The thresholds were chosen
    on lesson 11's sets (an over-trained 8-image model: >= 90% flagged; held-out real images
    split by ``near_duplicate_groups``: <= 5%). The gap ratio is also reported in feature space
    (``feature_fn``; None to skip).
    """

    def __init__(self, train_images, feature_fn=feature_fn, threshold: float = 0.9,
                 knn_threshold: float = 0.9, k: int = 5, max_shift: int = 2, num_reference: int = 300,
                 seed: int = 0):
        self.train = as_unit_float(train_images)
        self.threshold, self.knn_threshold, self.k = threshold, knn_threshold, k
        self.max_shift, self.feature_fn = max_shift, feature_fn
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
        """Per sample: nearest training index and distance, the gap and knn ratios, the flag; the
        share flagged (and the feature-space nearest and ratio when there is a feature_fn)."""
        x = as_unit_float(samples)
        full = pixel_distances(x, self.train, self.max_shift)          # (samples, training images)
        i, dist = full.argmin(1), np.sort(full, axis=1)
        d = dist[:, 0]
        knn = d / np.maximum(dist[:, : min(self.k, dist.shape[1])].mean(1), 1e-12)
        out = {"pixel_dist": d, "pixel_index": i, "pixel_ratio": d / self.train_gap_pixel, "knn_ratio": knn,
               "train_gap_pixel": self.train_gap_pixel, "threshold": self.threshold,
               "knn_threshold": self.knn_threshold}
        out["flagged"] = (out["pixel_ratio"] < self.threshold) & (knn < self.knn_threshold)
        if self.feature_fn is not None:
            fd, fi = feature_nearest(self.feature_fn(x), self.train_features, self.train_features_flipped)
            out.update(feature_dist=fd, feature_index=fi, feature_ratio=fd / self.train_gap_feature,
                       train_gap_feature=self.train_gap_feature)
        out["share_flagged"] = float(out["flagged"].mean()) if len(x) else 0.0
        return out

    def closest_pairs(self, samples, result=None, k: int = 8):
        """(sample, nearest training image) pairs of the k closest samples, interleaved: (2k, H, W, C)."""
        result = result or self.check(samples)
        order = np.argsort(result["pixel_ratio"])[:k]
        x = as_unit_float(samples)
        return np.stack([im for j in order for im in (x[j], self.train[result["pixel_index"][j]])]), order
