"""The feature networks of lesson 11: a small CNN trained on the shipped data, and one never trained.

    feature_fn         images -> (N, 128) features (the global-average-pool layer of the network)
    random_feature_fn  images -> (N, 480) features of a random network (fixed seed, never trained)
    layout_feature_fn  the same network, averaged over a 4x4 grid instead of the whole picture (where
                       things are: the verdict's whole-picture score)
    detail_feature_fn  the same kind of network on each picture's fine detail, clip(4 (x - blur(x)))
    build_feature_net  conv3x3-BN-ReLU stack with two heads: subcategory and skin tone
    train_feature_net  reproduces the shipped weights (``assets/feature_net.weights.h5``)
    classify_images    images -> (N, 2) predicted (subcategory, skin tone) of the shipped network's heads
    as_unit_float      uint8 or [-1, 1] floats -> float32 in [-1, 1] (every metric's input)
    resize_images      bilinear, antialiased resize (the network sees 32x32)
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..data import SKIN_TONES, SUBCATEGORIES, emoji_labels, to_unit_range

ASSETS = Path(__file__).resolve().parent.parent / "assets"      # ddpm_lessons/assets
FEATURE_WEIGHTS = ASSETS / "feature_net.weights.h5"
FEATURE_INFO = ASSETS / "feature_net.json"
FEATURE_SIZE = 32                  # the feature network sees 32x32 images


# ============================================================================ image helpers

def as_unit_float(images) -> np.ndarray:
    """uint8 pixels or [-1, 1] floats (array or tensor) -> float32 (N, H, W, C) in [-1, 1].

    uint8: x = pixel / 127.5 - 1 (``data.to_unit_range``); floats are clipped to [-1, 1].
    """
    if hasattr(images, "numpy"):
        images = images.numpy()
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got shape {images.shape}")
    if images.dtype == np.uint8:
        return to_unit_range(images)
    return np.clip(images.astype(np.float32), -1.0, 1.0)


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


def feature_split(n: int, held_out: float = 0.15, seed: int = 0):
    """(train indices, held-out indices) of a fixed random split of n images."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(held_out * n))
    return np.sort(order[k:]), np.sort(order[:k])


def load_labelled_data(path=None, size: int = FEATURE_SIZE, with_groups: bool = False):
    """The shipped images at ``size`` (uint8) with integer labels (subcategory, skin tone); with
    ``with_groups`` also each image's emoji without its skin tone (``data.emoji_base_name``)."""
    from ..data import default_dataset_path, emoji_base_name, read_image_folder, read_labels
    path = default_dataset_path() if path is None else Path(path)
    images, report = read_image_folder(path, size)
    rows = read_labels(path)
    sub, tone = emoji_labels(report.used, rows).T
    if not with_groups:
        return images, sub, tone
    names = {r["file"]: r.get("name", r["file"]) for r in rows}
    return images, sub, tone, np.array([emoji_base_name(names[Path(f).name]) for f in report.used])


def train_feature_net(out_dir=ASSETS, epochs: int = 30, batch_size: int = 64, seed: int = 0,
                      held_out: float = 0.15, verbose: int = 0, split: str = "random") -> dict:
    """Train the feature network on the shipped data; write its weights and a JSON report.

    Split: ``held_out`` of the images (fixed seed) are never trained on: a random share of the
    images (``split="random"``, the shipped weights), or of the emoji with all their skin-tone
    variants together (``"grouped"``: accuracy on emoji never seen in any tone; lesson 13). Augmentation: random
    left-right flips and shifts of up to 2 pixels. Adam 2e-3 with cosine decay, cross-entropy on
    both heads. Returns the report (held-out accuracy of each head, sizes, time).
    """
    import keras
    import tensorflow as tf
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    if split not in ("random", "grouped"):
        raise ValueError(f"split = {split!r}: give 'random' or 'grouped'")
    images, sub, tone, groups = load_labelled_data(with_groups=True)
    if split == "random":
        train, test = feature_split(len(images), held_out, seed)
    else:
        train, test = grouped_split(groups, held_out, seed)
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
    macro = lambda pred, y: float(np.mean([np.mean(pred[y[test] == c] == c) for c in np.unique(y[test])]))
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
        "split": (f"held_out={held_out}, numpy default_rng({seed}).permutation" if split == "random" else
                  f"held_out={held_out} of the emoji (all skin tones together), metrics.grouped_split seed {seed}"),
        "epochs": epochs, "batch_size": batch_size, "seed": seed,
        "augmentation": "random left-right flip, random shift up to 2 px (symmetric padding)",
        "optimizer": "Adam, lr 2e-3 cosine-decayed to 0, cross-entropy on both heads",
        "parameters": int(model.count_params()), "feature_dims": int(model.get_layer("features").output.shape[-1]),
        "held_out_accuracy": {"subcategory": round(acc_sub, 4), "skin_tone": round(acc_tone, 4)},
        **({"held_out_macro_accuracy": {"subcategory": round(macro(p_sub.argmax(1), sub), 4),
                                        "skin_tone": round(macro(p_tone.argmax(1), tone), 4)}}
           if split == "grouped" else {}),
        "majority_class_accuracy": {"subcategory": round(majority(sub), 4),
                                    "skin_tone": round(majority(tone), 4)},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / FEATURE_INFO.name).write_text(json.dumps(info, indent=2) + "\n")
    _FEATURE_MODELS.clear()
    _FULL_NETS.clear()
    return info


_FEATURE_MODELS: dict = {}


def load_feature_net(weights=None):
    """The shipped feature network (built from code, weights from ``assets/``; works offline).

    Returns a Keras model ``image (B, 32, 32, 3) -> features (B, 128)``.
    """
    import keras
    key = str(Path(weights) if weights else FEATURE_WEIGHTS)
    if key not in _FEATURE_MODELS:
        full = _full_feature_net(key)
        _FEATURE_MODELS[key] = keras.Model(full.input, full.get_layer("features").output,
                                           name="features")
    return _FEATURE_MODELS[key]


_FULL_NETS: dict = {}


def _full_feature_net(path):
    """The feature network with both heads and the weights at ``path`` (built once per path)."""
    path = Path(path)
    if str(path) not in _FULL_NETS:
        if not path.exists():
            raise FileNotFoundError(f"feature-network weights not found: {path.name} in "
                                    f"{path.parent.name}/. Rebuild them with "
                                    "`python -m ddpm_lessons.metrics train-features`.")
        full = build_feature_net()
        full.load_weights(path)
        _FULL_NETS[str(path)] = full
    return _FULL_NETS[str(path)]


def classify_images(images, batch_size: int = 256) -> np.ndarray:
    """Images (N, H, W, 3), uint8 or [-1, 1] -> (N, 2) int: the shipped network's predicted
    subcategory (index into SUBCATEGORIES) and skin tone (into SKIN_TONES), argmax of each head."""
    full = _full_feature_net(FEATURE_WEIGHTS)
    x = resize_images(images, FEATURE_SIZE)
    out = [np.stack([h.numpy().argmax(1) for h in full(x[i:i + batch_size], training=False)], 1)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0, 2), np.int32)


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



# ============================================================================ a random network

RANDOM_WIDTHS = (32, 64, 128, 256)
_RANDOM_MODELS = {}


def build_random_net(widths=RANDOM_WIDTHS, seed: int = 0, grid: int = 1):
    """A convolutional network that is never trained: conv3x3-ReLU per level (He-normal weights
    from a fixed seed), 2x2 average pooling between levels; the features are every level's
    average over each cell of a ``grid`` x ``grid`` grid, concatenated. ``grid=1``: the global
    average, 32 + 64 + 128 + 256 = 480 values per 32x32 image (what is there, not where);
    ``grid=4``: 16 x 480 = 7,680 values (also where it is: the layout score)."""
    import keras
    x_in = keras.Input((FEATURE_SIZE, FEATURE_SIZE, 3))
    x, pooled = x_in, []
    for i, w in enumerate(widths):
        x = keras.layers.Conv2D(w, 3, padding="same", activation="relu",
                                kernel_initializer=keras.initializers.HeNormal(seed=seed + i))(x)
        if grid == 1:
            pooled.append(keras.layers.GlobalAveragePooling2D()(x))
        else:
            cell = x.shape[1] // grid
            pooled.append(keras.layers.Flatten()(keras.layers.AveragePooling2D(cell)(x) if cell > 1 else x))
        if i < len(widths) - 1:
            x = keras.layers.AveragePooling2D(2)(x)
    return keras.Model(x_in, keras.layers.Concatenate()(pooled), name="random_features")


def _random_net_features(key, x, batch_size, **net):
    """Features of the cached ``build_random_net(**net)`` (built once per ``key``) for 32x32 images
    ``x`` in [-1, 1], in batches: float64 (N, d)."""
    if key not in _RANDOM_MODELS:
        _RANDOM_MODELS[key] = build_random_net(**net)
    model = _RANDOM_MODELS[key]
    if not len(x):
        return np.zeros((0,) + tuple(model.output.shape[1:]))
    return np.concatenate([model(x[i:i + batch_size], training=False).numpy()
                           for i in range(0, len(x), batch_size)]).astype(np.float64)


def random_feature_fn(images, batch_size: int = 256) -> np.ndarray:
    """Images (N, H, W, 3) -> (N, 480) features of ``build_random_net()``: the same network on
    any machine and for any folder, since nothing in it was learned from data."""
    return _random_net_features("net", resize_images(images, FEATURE_SIZE), batch_size)


LAYOUT_GRID = 4                    # the layout score keeps a 4x4 grid of where things are


def layout_feature_fn(images, batch_size: int = 256) -> np.ndarray:
    """Images (N, H, W, 3) -> (N, 7680) features of ``build_random_net(grid=4)`` (never trained):
    each level's average over each cell of a 4x4 grid, so the features say *where* each colour
    and edge is, not only that it is somewhere. The verdict's whole-picture score: it tells real
    pictures from their phase-randomised blobs (same colours and textures, no thing) on every
    folder the course measured, and a finished run from the same run early (lesson 11)."""
    return _random_net_features("layout", resize_images(images, FEATURE_SIZE), batch_size, grid=LAYOUT_GRID)


DETAIL_GAIN = 4.0                  # the fine detail is small: amplified 4x, then clipped to [-1, 1]


def detail_images(images) -> np.ndarray:
    """The fine detail of each image at 32x32: clip(4 (x - blur_1px(x)), -1, 1), a high-pass image
    (what blurring removes, and what a model learns last)."""
    x = resize_images(images, FEATURE_SIZE)
    return np.clip(DETAIL_GAIN * (x - gaussian_blur(x, 1.0)), -1.0, 1.0).astype(np.float32)


def detail_feature_fn(images, batch_size: int = 256) -> np.ndarray:
    """Images (N, H, W, 3) -> (N, 480) features of a random network (``build_random_net(seed=100)``,
    never trained) applied to their fine detail (``detail_images``). The course's score: on two
    folders it orders real < finished run < 300-step run < blurred < noise (lesson 11, section 7)."""
    return _random_net_features("detail", detail_images(images), batch_size, seed=100)


# ----------------------------------------------------------------------------- helpers the other metrics share

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


def grouped_split(groups, held_out: float = 0.15, seed: int = 0):
    """(train indices, held-out indices): a random ``held_out`` share of the *groups* is held out
    whole, so no picture has a near-copy on the other side."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    held = np.random.default_rng(seed).choice(unique, int(round(held_out * len(unique))), replace=False)
    mask = np.isin(groups, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)
