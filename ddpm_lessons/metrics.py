"""Lesson 11 — how good is it? Sample-quality scores with no downloaded weights, and memorisation.

    feature_fn        images -> (N, 128) features of a small CNN trained on the shipped data
                      (weights in ``assets/feature_net.weights.h5``; ``train_feature_net``
                      reproduces them)
    kid               Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the
                      kernel k(x, y) = (x.y / d + 1)^3, +- a standard error from disjoint subsets
    swd               multi-scale sliced Wasserstein distance on Laplacian-pyramid patches
                      (Karras et al. 2018, progressive GANs): needs no network at all
    ScoreReference    real data split in halves: scores samples against one half, and gives the
                      floor (real vs real) and ceilings (noise, blurred data) at the same size
    evaluate_samples  all of it in one call -> dict
    nearest_training  memorisation: each sample's nearest training image (pixels and features,
                      flips and small shifts included) and which samples are near-copies
    ScoreCallback     score a fixed seed's EMA samples every N training steps; keep the best

Images are (N, H, W, 3), uint8 or floats in [-1, 1]. Command line:

    python -m ddpm_lessons.metrics score <folder-or-npz> [--real <folder>] [--size 32]
    python -m ddpm_lessons.metrics train-features      # rebuild the shipped feature network

This module imports neither matplotlib nor ipywidgets.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
FEATURE_WEIGHTS = ASSETS / "feature_net.weights.h5"
FEATURE_INFO = ASSETS / "feature_net.json"
FEATURE_SIZE = 32                  # the feature network sees 32x32 images
SUBCATEGORIES = ("face", "person", "person-gesture", "person-role", "person-fantasy")
SKIN_TONES = ("none", "light", "medium-light", "medium", "medium-dark", "dark")


# ============================================================================ image helpers

def as_unit_float(images) -> np.ndarray:
    """uint8 pixels or [-1, 1] floats (array or tensor) -> float32 (N, H, W, C) in [-1, 1]."""
    if hasattr(images, "numpy"):
        images = images.numpy()
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.clip(images.astype(np.float32), -1.0, 1.0)


_GAUSS5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0   # the binomial filter of cv2.pyrDown


def _filter_axis(x, kernel, axis):
    """Convolve along one axis with a symmetric kernel, mirror padding (scipy's 'mirror')."""
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for i, k in enumerate(kernel):
        out += k * np.take(xp, np.arange(i, i + n), axis=axis)
    return out


def gaussian_blur(images, sigma: float) -> np.ndarray:
    """Blur images (N, H, W, C) in [-1, 1] with a Gaussian of std ``sigma`` pixels (reflect edges)."""
    x = as_unit_float(images).astype(np.float64)
    if sigma <= 0:
        return x.astype(np.float32)
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    r = min(r, x.shape[1] - 1, x.shape[2] - 1)   # reflect padding needs r < size
    k = k[len(k) // 2 - r: len(k) // 2 + r + 1]
    k /= k.sum()
    return _filter_axis(_filter_axis(x, k, 1), k, 2).astype(np.float32)


def resize_images(images, size: int) -> np.ndarray:
    """Resize float images (N, H, W, C) to size x size (bilinear, antialiased when shrinking)."""
    import tensorflow as tf
    x = as_unit_float(images)
    if x.shape[1] == size and x.shape[2] == size:
        return x
    return tf.image.resize(x, (size, size), method="bilinear", antialias=True).numpy()


# ============================================================================ the feature network

def build_feature_net(widths=(32, 64, 128), num_subcategories=len(SUBCATEGORIES),
                      num_skin_tones=len(SKIN_TONES)):
    """A small CNN on 32x32 images in [-1, 1] with two heads (subcategory, skin tone).

    conv3x3-BN-ReLU x2 (32) -> maxpool -> x2 (64) -> maxpool -> x1 (128) -> global average pool
    = the **features** (B, 128) -> dropout -> two linear heads (logits). About 140k parameters.
    """
    import keras
    from keras import layers
    inp = keras.Input((FEATURE_SIZE, FEATURE_SIZE, 3), name="image")
    x = inp
    for level, width in enumerate(widths):
        for _ in range(2 if level < len(widths) - 1 else 1):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        if level < len(widths) - 1:
            x = layers.MaxPooling2D(2)(x)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    h = layers.Dropout(0.3)(features)
    sub = layers.Dense(num_subcategories, name="subcategory")(h)
    tone = layers.Dense(num_skin_tones, name="skin_tone")(h)
    return keras.Model(inp, [sub, tone], name="feature_net")


def _label_arrays(files, rows):
    by_file = {r["file"]: r for r in rows}
    sub, tone = [], []
    for f in files:
        r = by_file[Path(f).name]
        s = "face" if r["subcategory"].startswith("face") else r["subcategory"]
        sub.append(SUBCATEGORIES.index(s))
        tone.append(SKIN_TONES.index(r["skin_tone"]))
    return np.array(sub, np.int32), np.array(tone, np.int32)


def feature_split(n: int, held_out: float = 0.15, seed: int = 0):
    """(train indices, held-out indices) of a fixed random split of n images."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(held_out * n))
    return np.sort(order[k:]), np.sort(order[:k])


def load_labelled_data(path=None, size: int = FEATURE_SIZE):
    """The shipped images at ``size`` (uint8) with integer labels (subcategory, skin tone)."""
    from .data import default_dataset_path, read_image_folder, read_labels
    path = default_dataset_path() if path is None else Path(path)
    images, report = read_image_folder(path, size)
    sub, tone = _label_arrays(report.used, read_labels(path))
    return images, sub, tone


def train_feature_net(out_dir=ASSETS, epochs: int = 30, batch_size: int = 64, seed: int = 0,
                      held_out: float = 0.15, verbose: int = 0) -> dict:
    """Train the feature network on the shipped data; write its weights and a JSON report.

    Split: ``held_out`` of the images (fixed seed) are never trained on. Augmentation: random
    left-right flips and shifts of up to 2 pixels. Adam 2e-3 with cosine decay, cross-entropy on
    both heads. Returns the report (held-out accuracy of each head, sizes, time).
    """
    import keras
    import tensorflow as tf
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    images, sub, tone = load_labelled_data()
    train, test = feature_split(len(images), held_out, seed)
    x = as_unit_float(images)
    steps = epochs * math.ceil(len(train) / batch_size)

    def augment(img, labels, s):
        img = tf.image.stateless_random_flip_left_right(img, seed=s)
        pad = tf.pad(img, [[2, 2], [2, 2], [0, 0]], mode="SYMMETRIC")
        img = tf.image.stateless_random_crop(pad, tf.shape(img), seed=s + 1)
        return img, labels

    ds = tf.data.Dataset.from_tensor_slices((x[train], (sub[train], tone[train])))
    ds = ds.shuffle(len(train), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(lambda d, s: augment(d[0], d[1], s))
    ds = ds.batch(batch_size).prefetch(2)
    model = build_feature_net()
    lr = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 2,
                  metrics=[["accuracy"], ["accuracy"]])
    model.fit(ds, epochs=epochs, verbose=verbose)
    p_sub, p_tone = model.predict(x[test], batch_size=256, verbose=0)
    acc_sub = float(np.mean(p_sub.argmax(1) == sub[test]))
    acc_tone = float(np.mean(p_tone.argmax(1) == tone[test]))
    majority = lambda y: float(np.mean(y[test] == np.bincount(y[train]).argmax()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bare = build_feature_net()              # an uncompiled copy: the file then holds no optimizer state
    bare.set_weights(model.get_weights())
    bare.save_weights(out_dir / FEATURE_WEIGHTS.name)
    info = {
        "what": "feature network for KID and memorisation checks (ddpm_lessons.metrics)",
        "made_by": "python -m ddpm_lessons.metrics train-features",
        "data": "data/emoji-portraits at 32x32, labels.csv (face-* subcategories merged into 'face')",
        "classes": {"subcategory": list(SUBCATEGORIES), "skin_tone": list(SKIN_TONES)},
        "images": len(images), "train_images": int(len(train)), "held_out_images": int(len(test)),
        "split": f"held_out={held_out}, numpy default_rng({seed}).permutation",
        "epochs": epochs, "batch_size": batch_size, "seed": seed,
        "augmentation": "random left-right flip, random shift up to 2 px (symmetric padding)",
        "optimizer": "Adam, lr 2e-3 cosine-decayed to 0, cross-entropy on both heads",
        "parameters": int(model.count_params()), "feature_dims": int(model.get_layer("features").output.shape[-1]),
        "held_out_accuracy": {"subcategory": round(acc_sub, 4), "skin_tone": round(acc_tone, 4)},
        "majority_class_accuracy": {"subcategory": round(majority(sub), 4),
                                    "skin_tone": round(majority(tone), 4)},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / FEATURE_INFO.name).write_text(json.dumps(info, indent=2) + "\n")
    _FEATURE_MODELS.clear()
    return info


_FEATURE_MODELS: dict = {}


def load_feature_net(weights=None):
    """The shipped feature network (built from code, weights from ``assets/``; works offline).

    Returns a Keras model ``image (B, 32, 32, 3) -> features (B, 128)``.
    """
    import keras
    path = Path(weights) if weights else FEATURE_WEIGHTS
    key = str(path)
    if key not in _FEATURE_MODELS:
        if not path.exists():
            raise FileNotFoundError(f"feature-network weights not found: {path.name} in "
                                    f"{path.parent.name}/. Rebuild them with "
                                    "`python -m ddpm_lessons.metrics train-features`.")
        full = build_feature_net()
        full.load_weights(path)
        _FEATURE_MODELS[key] = keras.Model(full.input, full.get_layer("features").output,
                                           name="features")
    return _FEATURE_MODELS[key]


def feature_info() -> dict:
    """The JSON report written with the shipped weights (held-out accuracy, how they were made)."""
    return json.loads(FEATURE_INFO.read_text())


def feature_fn(images, batch_size: int = 256) -> np.ndarray:
    """Images (N, H, W, 3), uint8 or [-1, 1] -> (N, 128) float64 features of the shipped network.

    Other sizes are resized to 32x32 first. Any function with this signature (images -> vectors)
    can replace it in ``kid``, ``evaluate_samples`` and ``nearest_training``.
    """
    model = load_feature_net()
    x = resize_images(images, FEATURE_SIZE)
    out = [model(x[i:i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 128))


# ============================================================================ KID

def polynomial_kernel(a, b, degree: int = 3, gamma=None, coef0: float = 1.0):
    """k(x, y) = (gamma x.y + coef0)^degree with gamma = 1/d: (len(a), len(b))."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (gamma * (a @ b.T) + coef0) ** degree


def mmd2_unbiased(fa, fb, estimator: str = "unbiased", **kernel) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between feature sets (m, d) and (n, d):

        1/(m(m-1)) sum_{i!=j} k(a_i, a_j) + 1/(n(n-1)) sum_{i!=j} k(b_i, b_j) - 2/(mn) sum_{i,j} k(a_i, b_j)

    ``estimator="u-statistic"`` (m = n only) also leaves the pairs i = j out of the cross term
    (Gretton et al. Lemma 6); both are unbiased for independent sets. They differ when a set is
    compared with *itself*: the u-statistic gives exactly 0, the default gives
    -2/(n-1) (mean k(a_i, a_i) - mean k(a_i, a_j)), slightly below 0 (a set is not an
    independent draw of itself). Binkowski et al.'s KID code uses the default.
    """
    m, n = len(fa), len(fb)
    if m < 2 or n < 2:
        raise ValueError(f"MMD^2 needs at least 2 points per set, got {m} and {n}")
    kaa, kbb, kab = polynomial_kernel(fa, fa, **kernel), polynomial_kernel(fb, fb, **kernel), \
        polynomial_kernel(fa, fb, **kernel)
    within = (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    if estimator == "unbiased":
        return float(within - 2.0 * kab.mean())
    if estimator == "u-statistic":
        if m != n:
            raise ValueError(f"the u-statistic estimator needs sets of equal size, got {m} and {n}")
        return float(within - 2.0 * (kab.sum() - np.trace(kab)) / (m * (m - 1)))
    raise ValueError(f"unknown estimator {estimator!r}: 'unbiased' or 'u-statistic'")


def kid(fa, fb, n_subsets: int = 10, seed: int = 0, min_subset: int = 4,
        estimator: str = "unbiased") -> dict:
    """Kernel Inception Distance between two feature sets (m, d) and (n, d).

    ``kid``: the unbiased MMD^2 with the cubic polynomial kernel over *all* points (it is 0 in
    expectation when both sets come from one distribution, and can then be slightly negative;
    ``estimator``: see ``mmd2_unbiased``).
    ``se``: its standard error, from ``n_subsets`` **disjoint** random subsets of each set: the
    subset estimates are independent and unbiased, so std / sqrt(n_subsets) is an honest
    standard error of their mean, and a conservative one for the all-points estimate (which
    uses more pairs). ``subset_kids`` holds them. Binkowski et al. and clean-fid instead average
    overlapping subsets of 1000; with our few hundred images that is no longer needed.
    """
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"expected feature arrays (m, d) and (n, d), got {fa.shape} and {fb.shape}")
    small = min(len(fa), len(fb))
    if small < n_subsets * min_subset:
        raise ValueError(f"KID with {n_subsets} disjoint subsets of at least {min_subset} needs "
                         f"{n_subsets * min_subset} points per set, got {len(fa)} and {len(fb)}: "
                         "use more samples or fewer n_subsets")
    rng = np.random.default_rng(seed)
    pa, pb = rng.permutation(len(fa)), rng.permutation(len(fb))
    subs = np.array([mmd2_unbiased(fa[ia], fb[ib], estimator) for ia, ib in
                     zip(np.array_split(pa, n_subsets), np.array_split(pb, n_subsets))])
    return {"kid": mmd2_unbiased(fa, fb, estimator), "se": float(subs.std(ddof=1) / np.sqrt(n_subsets)),
            "subset_kids": subs, "n": (len(fa), len(fb))}


# ============================================================================ SWD

def _pyr_down(x):
    """(N, H, W, C) -> (N, H/2, W/2, C): 5x5 binomial blur, keep every other pixel (cv2.pyrDown)."""
    return _filter_axis(_filter_axis(x, _GAUSS5, 1), _GAUSS5, 2)[:, ::2, ::2]


def _pyr_up(x):
    """(N, H, W, C) -> (N, 2H, 2W, C): zeros between pixels, then the blur times 4 (cv2.pyrUp)."""
    n, h, w, c = x.shape
    up = np.zeros((n, 2 * h, 2 * w, c), x.dtype)
    up[:, ::2, ::2] = x
    return _filter_axis(_filter_axis(up, 2 * _GAUSS5, 1), 2 * _GAUSS5, 2)


def laplacian_pyramid(images, min_resolution: int = 8) -> list:
    """Levels of the Laplacian pyramid, finest first: band-pass details at H, H/2, ..., and the
    blurred low-pass image at ``min_resolution`` last. Summing the upsampled levels gives back
    the image."""
    x = as_unit_float(images).astype(np.float64)
    levels = [x]
    while levels[-1].shape[1] > min_resolution and levels[-1].shape[1] % 2 == 0:
        low = _pyr_down(levels[-1])
        levels[-1] = levels[-1] - _pyr_up(low)
        levels.append(low)
    return levels


def _patches(level, n_patches, patch, rng):
    """``n_patches`` random patch x patch neighbourhoods (n, patch, patch, C), from random images."""
    n, h, w, c = level.shape
    r = patch // 2
    img = rng.integers(0, n, n_patches)
    y = rng.integers(r, h - r, n_patches)
    x = rng.integers(r, w - r, n_patches)
    off = np.arange(-r, r + 1)
    return level[img[:, None, None], (y[:, None] + off)[:, :, None], (x[:, None] + off)[:, None, :]]


def swd_descriptors(images, patches_per_image: int = 128, patch: int = 7, min_resolution: int = 8,
                    seed: int = 0, n_descriptors=None) -> list:
    """Per pyramid level: random 7x7 patches, each channel normalised to mean 0, std 1 over the
    set (as Karras et al. do), flattened to (n_descriptors, 7*7*C) float32."""
    rng = np.random.default_rng(seed)
    levels = laplacian_pyramid(images, min_resolution)
    n = n_descriptors or patches_per_image * len(levels[0])
    out = []
    for level in levels:
        if level.shape[1] < patch:
            raise ValueError(f"pyramid level {level.shape[1]}x{level.shape[1]} is smaller than the "
                             f"{patch}x{patch} patch; raise min_resolution")
        d = _patches(level, n, patch, rng)
        d = d - d.mean(axis=(0, 1, 2), keepdims=True)
        d = d / (d.std(axis=(0, 1, 2), keepdims=True) + 1e-8)
        out.append(d.reshape(n, -1).astype(np.float32))
    return out


def sliced_wasserstein(a, b, num_directions: int = 512, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between projections.

    a, b: (n, d) with the same n. Projected on a direction, each set is a list of n numbers;
    W1 between two such lists is the mean |difference| of their sorted values.
    """
    if len(a) != len(b):
        raise ValueError(f"sliced_wasserstein needs sets of equal size, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for chunk in np.array_split(np.arange(num_directions), max(1, num_directions // 128)):
        dirs = rng.standard_normal((a.shape[1], len(chunk))).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
        total += float(np.abs(pa - pb).mean(axis=0).sum())
    return total / num_directions


def swd(images_a, images_b, patches_per_image: int = 128, num_directions: int = 512,
        min_resolution: int = 8, seed: int = 0, descriptors_b=None) -> dict:
    """Multi-scale sliced Wasserstein distance (Karras et al. 2018, Sec. 5 and Appendix D).

    Both sets go through a Laplacian pyramid (finest level first, down to ``min_resolution``);
    at each level ``patches_per_image`` x len(smaller set) random 7x7 patches are taken from
    each set, normalised per channel, and compared with the sliced Wasserstein distance.
    Returns {"levels": {resolution: SWD x 1e3}, "swd": their mean x 1e3} (Karras report x 1e3).
    """
    n = patches_per_image * min(len(images_a), len(images_b))
    da = swd_descriptors(images_a, patch=7, min_resolution=min_resolution, seed=seed, n_descriptors=n)
    if descriptors_b is None or len(descriptors_b[0]) != n:
        descriptors_b = swd_descriptors(images_b, patch=7, min_resolution=min_resolution,
                                        seed=seed + 1, n_descriptors=n)
    size = np.asarray(images_a).shape[1]
    levels = {size // 2 ** i: 1e3 * sliced_wasserstein(a, b, num_directions, seed=seed + 2 + i)
              for i, (a, b) in enumerate(zip(da, descriptors_b))}
    return {"levels": levels, "swd": float(np.mean(list(levels.values())))}


# ============================================================================ reference points

class ScoreReference:
    """Real images split into two disjoint halves A and B (fixed seed).

    ``score(samples)`` compares samples with half B. ``references(n)`` compares, at the same
    sample count n, with half B: n real images of half A (the **floor**: what a perfect model
    scores), pure Gaussian noise clipped to [-1, 1], and half A blurred with sigma = 1 px and
    2 px (the **ceilings**). Features of B are computed once.
    """

    def __init__(self, real_images, feature_fn=feature_fn, seed: int = 0, n_subsets: int = 10,
                 swd_patches: int = 128, swd_min_resolution: int = 8):
        real = as_unit_float(real_images)
        order = np.random.default_rng(seed).permutation(len(real))
        half = len(real) // 2
        # random order (not sorted): any slice a[:n] is a random sample (files come sorted by kind)
        self.a, self.b = real[order[:half]], real[order[half:]]
        self.feature_fn, self.seed, self.n_subsets = feature_fn, seed, n_subsets
        self.swd_patches, self.swd_min_resolution = swd_patches, swd_min_resolution
        self.features_b = feature_fn(self.b) if feature_fn is not None else None
        self._references = {}

    @property
    def image_shape(self):
        return self.b.shape[1:]

    def score(self, samples, with_subsets: bool = False) -> dict:
        """{"kid", "kid_se", "swd", "swd_levels", "n"} of samples against half B."""
        x = as_unit_float(samples)
        if x.shape[1:] != self.b.shape[1:]:
            raise ValueError(f"samples have shape {x.shape[1:]}, the real images {self.b.shape[1:]}: "
                             "resize one of them")
        out = {"n": len(x)}
        if self.feature_fn is not None:
            k = kid(self.feature_fn(x), self.features_b, n_subsets=self._subsets(len(x)), seed=self.seed)
            out["kid"], out["kid_se"] = k["kid"], k["se"]
            if with_subsets:
                out["kid_subsets"] = k["subset_kids"]
        s = swd(x, self.b, patches_per_image=self.swd_patches, min_resolution=self.swd_min_resolution,
                seed=self.seed)
        out["swd"], out["swd_levels"] = s["swd"], s["levels"]
        return out

    def _subsets(self, n):
        return max(2, min(self.n_subsets, n // 8))

    def baselines(self, n: int) -> dict:
        """The reference image sets of size n (n <= len(A)): real, noise, blur1, blur2."""
        n = min(n, len(self.a))
        g = np.random.default_rng(self.seed + 7)
        real = self.a[:n]
        return {"real (other half)": real,
                "blurred sigma=1px": gaussian_blur(real, 1.0),
                "blurred sigma=2px": gaussian_blur(real, 2.0),
                "noise": np.clip(g.standard_normal(real.shape), -1, 1).astype(np.float32)}

    def references(self, n: int) -> dict:
        """{name: score dict} for the baselines at sample count n (cached)."""
        n = min(n, len(self.a))
        if n not in self._references:
            self._references[n] = {k: self.score(v) for k, v in self.baselines(n).items()}
        return self._references[n]


def evaluate_samples(samples, real_images=None, reference: ScoreReference | None = None,
                     feature_fn=feature_fn, references: bool = True, seed: int = 0) -> dict:
    """Score samples against real images, with the floor and ceilings at the same sample count.

    Returns {"kid", "kid_se", "swd", "swd_levels", "n", "references": {"real (other half)": {...},
    "blurred sigma=1px": ..., "blurred sigma=2px": ..., "noise": ...}}. Samples are compared with
    half of the real images; the other half gives the floor. Pass ``reference`` to reuse one.
    """
    if reference is None:
        if real_images is None:
            raise ValueError("give real_images or a ScoreReference")
        reference = ScoreReference(real_images, feature_fn=feature_fn, seed=seed)
    out = reference.score(samples)
    if references:
        out["references"] = reference.references(out["n"])
    return out


def format_scores(result: dict) -> str:
    """A small table of a result of ``evaluate_samples`` (samples and every reference)."""
    rows = [("samples", result)] + list(result.get("references", {}).items())
    has_kid = "kid" in result
    lines = [f"{'':22s} {'KID x 1e3':>16s} {'SWD x 1e3':>10s}   (n = {result['n']})"]
    for name, r in rows:
        k = f"{1e3 * r['kid']:8.2f} +- {1e3 * r['kid_se']:5.2f}" if has_kid else ""
        lines.append(f"{name:22s} {k:>16s} {r['swd']:10.1f}")
    return "\n".join(lines)


# ============================================================================ memorisation

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


# ============================================================================ score during training

class ScoreCallback:
    """Score the EMA model's samples every ``every`` steps of ``Trainer.fit``; keep the best.

    Samples: ``num_samples`` images from the fixed ``seed`` with ``sampler(eps_fn, shape,
    schedule, seed)`` (default: DDIM-50 with eta = 1, x0 clipped). Each evaluation appends
    {"step", "seconds" (training time), "sample_seconds", "kid", "kid_se", "swd"} to
    ``history``; when ``monitor`` improves, the EMA weights go to
    ``keep_best_dir/best_ema.weights.h5`` with ``best.json``.
    """

    def __init__(self, every: int, real_images=None, num_samples: int = 64, seed: int = 0,
                 sampler=None, monitor: str = "kid", keep_best_dir=None, reference=None,
                 feature_fn=feature_fn, verbose: bool = True, num_steps: int = 50, eta: float = 1.0):
        self.every, self.num_samples, self.seed, self.monitor = every, num_samples, seed, monitor
        self.reference = reference or ScoreReference(real_images, feature_fn=feature_fn)
        if monitor == "kid" and self.reference.feature_fn is None:
            raise ValueError("monitor='kid' needs a feature_fn; use monitor='swd'")
        self.sampler = sampler or self.default_sampler(num_steps, eta)
        self.keep_best_dir = Path(keep_best_dir) if keep_best_dir else None
        self.history, self.best, self.verbose = [], None, verbose
        self.last_samples = None

    @staticmethod
    def default_sampler(num_steps=50, eta=1.0):
        def sample(eps_fn, shape, schedule, seed):
            from .sampling import ddim_sample
            return ddim_sample(eps_fn, shape, schedule, num_steps=num_steps, eta=eta, seed=seed,
                               clip_x0=1.0)
        return sample

    def __call__(self, trainer, logs):
        step = int(logs["step"])
        if step % self.every:
            return
        self.evaluate(trainer, step)

    def evaluate(self, trainer, step=None):
        from .sampling import model_eps_fn
        step = int(trainer.step.numpy()) if step is None else step
        t0 = time.perf_counter()
        shape = (self.num_samples,) + tuple(self.reference.image_shape)
        samples = self.sampler(model_eps_fn(trainer.ema_model), shape, trainer.schedule, self.seed)
        t1 = time.perf_counter()
        s = self.reference.score(samples)
        row = {"step": step, "seconds": float(getattr(trainer, "_elapsed", 0.0)),
               "sample_seconds": round(t1 - t0, 2), "score_seconds": round(time.perf_counter() - t1, 2),
               "swd": s["swd"], **({"kid": s["kid"], "kid_se": s["kid_se"]} if "kid" in s else {})}
        self.history.append(row)
        self.last_samples = samples
        if self.best is None or row[self.monitor] < self.best[self.monitor]:
            self.best = row
            if self.keep_best_dir:
                self.keep_best_dir.mkdir(parents=True, exist_ok=True)
                trainer.ema_model.save_weights(self.keep_best_dir / "best_ema.weights.h5")
                (self.keep_best_dir / "best.json").write_text(json.dumps(row, indent=2) + "\n")
        if self.verbose:
            k = f"KID x1e3 {1e3 * row['kid']:.2f} +- {1e3 * row['kid_se']:.2f}  " if "kid" in row else ""
            print(f"\n[score] step {step}: {k}SWD x1e3 {row['swd']:.1f}"
                  f"{'  (best)' if self.best is row else ''}")
        return row


# ============================================================================ command line

def _load_images(path, size=None):
    path = Path(path)
    if path.suffix == ".npz" or path.suffix == ".npy":
        data = np.load(path)
        arr = data if isinstance(data, np.ndarray) else data[data.files[0]]
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 and arr.min() >= 0 and arr.max() > 1.5:
            arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        arr = as_unit_float(arr)
        return resize_images(arr, size) if size and arr.shape[1] != size else arr
    from .data import read_image_folder
    images, _ = read_image_folder(path, size or 32)
    return as_unit_float(images)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m ddpm_lessons.metrics", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="KID and SWD of a folder or .npz of samples, with references")
    s.add_argument("samples", help="image folder, or .npz/.npy with (N, H, W, 3) uint8 or [-1, 1]")
    s.add_argument("--real", default=None, help="real image folder (default: the shipped data)")
    s.add_argument("--size", type=int, default=None, help="resize to this size (default: the samples')")
    s.add_argument("--json", default=None, help="also write the result to this JSON file")
    t = sub.add_parser("train-features", help="retrain the shipped feature network")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--out", default=str(ASSETS))
    args = p.parse_args(argv)
    if args.cmd == "train-features":
        print(json.dumps(train_feature_net(args.out, epochs=args.epochs, verbose=2), indent=2))
        return 0
    from .data import default_dataset_path
    samples = _load_images(args.samples, args.size)
    real = _load_images(args.real or default_dataset_path(), samples.shape[1])
    result = evaluate_samples(samples, real)
    print(format_scores(result))
    if args.json:
        clean = lambda d: {k: (clean(v) if isinstance(v, dict) else v) for k, v in d.items()
                           if not isinstance(v, np.ndarray)}
        Path(args.json).write_text(json.dumps(clean(result), indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
