"""Lesson 13 — ask for what you want: a class-conditional U-Net and classifier-free guidance.

The pieces live where they belong (``blocks.LabelEmbedding``, ``build_unet(num_classes=)``,
``Trainer.drop_labels``, ``sampling.guided_eps_fn``, ``data.class_labels``); this module holds what
the lesson measures with them (Ho & Salimans 2022):

    eps_w(x, y) = eps(x, none) + w (eps(x, y) - eps(x, none))          guided noise, their eq. 6
    p_w(x | y)  proportional to  p(x) p(y | x)^w                        what it samples (w >= 0)

    requests             labels asking for every class of one label kind equally often
    proportional_labels  labels of random real images: each class as often as in the data
    agreement            per class and macro average share of samples classified as the class asked for
    class_diversity      mean pairwise feature distance among samples asked for one class
    load_conditional_reference   the shipped conditional ``cpu`` network (``assets/conditional_cpu``)
    run_labels, describe_labels  a conditional run's labels (lesson 09 with CONDITIONAL=1) and their counts

This module imports neither matplotlib nor ipywidgets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import class_labels

CONDITIONAL_DIR = Path(__file__).resolve().parent / "assets" / "conditional_cpu"
CONDITIONAL_WEIGHTS = "ema.float16.npz"


def requests(num_classes, kind: int, n: int, grouped: bool = False) -> np.ndarray:
    """(n, K) int32 labels: kind ``kind`` asks for each of its classes n / n_kind times (the first
    ones once more when n does not divide), every other kind is "no label" (``blocks.null_labels``).
    The classes cycle (0, 1, 2, 0, 1, ...), or with ``grouped`` come in blocks (0, 0, 1, 1, ...):
    one grid row per class."""
    from .blocks import null_labels
    labels = null_labels(num_classes, n)
    k = int(num_classes[kind])
    labels[:, kind] = np.arange(n) * k // n if grouped else np.arange(n) % k
    return labels


def proportional_labels(labels, n: int, seed: int = 0) -> np.ndarray:
    """(n, K): the labels of n real images drawn at random (with replacement when n > N), so each
    class (and pair of classes) is asked for as often as it occurs in the data."""
    labels = np.asarray(labels, np.int32)
    rng = np.random.default_rng(seed)
    return labels[rng.choice(len(labels), n, replace=n > len(labels))]


def agreement(predicted, asked, num_classes: int) -> dict:
    """How often the classifier finds the class that was asked for, over one label kind.

    predicted, asked: (N,) ints. Returns {"per_class": [share for class 0..n-1], "macro": mean of
    the per-class shares (each class counts the same), "n": N}. Classes never asked for are NaN
    and left out of the macro average."""
    predicted, asked = np.asarray(predicted), np.asarray(asked)
    per_class = [float(np.mean(predicted[asked == c] == c)) if np.any(asked == c) else float("nan")
                 for c in range(num_classes)]
    return {"per_class": per_class, "macro": float(np.nanmean(per_class)), "n": int(len(asked))}


def class_diversity(features, asked, num_classes: int) -> float:
    """Mean over the classes asked for of the mean pairwise Euclidean distance between the
    features of samples asked for that class: how varied the pictures of one class are."""
    features, asked = np.asarray(features, np.float64), np.asarray(asked)
    out = []
    for c in range(num_classes):
        f = features[asked == c]
        if len(f) >= 2:
            d2 = np.maximum(np.sum(f ** 2, 1)[:, None] + np.sum(f ** 2, 1)[None] - 2 * f @ f.T, 0)
            out.append(np.sqrt(d2)[np.triu_indices(len(f), 1)].mean())
    return float(np.mean(out))


def load_conditional_reference():
    """(EMA U-Net, settings) of the shipped conditional ``cpu`` run (``make train CONDITIONAL=1`` on the
    shipped portraits, stored as float16 by ``training.save_compact_weights``). ``settings`` is its
    ``settings.json`` as ``runs.read_settings`` gives it: the knobs as a Profile under "profile",
    the kinds and class names under "labels"."""
    from .runs import read_settings
    from .weights import load_compact_weights
    from .unet import build_unet
    path = CONDITIONAL_DIR / CONDITIONAL_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no conditional weights at {path.name} in the package's assets; "
                                "train your own with `make train CONDITIONAL=1`")
    settings = read_settings(CONDITIONAL_DIR)
    model = build_unet(settings["profile"], name="conditional_ema_unet")
    return load_compact_weights(model, path), settings


def run_labels(report, num_classes, saved_labels) -> tuple[np.ndarray | None, list]:
    """The class labels a run trains on: (labels (N, K) int32 in the order of ``report.used``, kinds), or
    (None, []) for an unconditional run (``num_classes`` empty). ``saved_labels`` are the run's
    ``settings.json`` "labels" entries ({"kind", "classes"} each); a continued run whose folder now has
    other classes raises ValueError, since its label embedding was made for the old ones."""
    if not num_classes:
        return None, []
    labels, kinds = class_labels(report)
    if [names for _, names in kinds] != [k["classes"] for k in saved_labels]:
        raise ValueError(f"the folder's classes {[names for _, names in kinds]} differ from the run's "
                         f"{[k['classes'] for k in saved_labels]}: start a new run (FRESH=1)")
    return labels, kinds


def describe_labels(labels, kinds) -> str:
    """One line per label kind: how many pictures carry each class ("no label" last), e.g.
    "labels, skin tone: light 190, medium 188, ..., no label 162"."""
    lines = []
    for k, (kind, names) in enumerate(kinds):
        counts = np.bincount(labels[:, k], minlength=len(names) + 1)
        lines.append(f"labels, {kind}: " + ", ".join(f"{n} {c}" for n, c in zip(list(names) + ["no label"], counts) if c))
    return "\n".join(lines)
