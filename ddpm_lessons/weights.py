"""Networks as small files: the float16 ``.npz`` the course ships its trained networks in
(``assets/reference_cpu``, the emoji run of lesson 09; ``assets/general_cpu``, the broad prior of
lesson 10), loaded by each weight's path, and their settings. Lesson 09 saves a run this way; lessons
08, 10 and 13 and ``make train INIT=`` load one.
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

REFERENCE_DIR = Path(__file__).resolve().parent / "assets" / "reference_cpu"
REFERENCE_WEIGHTS = "ema.float16.npz"


def save_compact_weights(model: keras.Model, path) -> Path:
    """Save ``model``'s weights as float16 in a compressed ``.npz`` (half the size of float32), with
    each weight's path, for the shipped reference. float16 keeps 11 significant bits: a relative
    rounding error of at most 2^-11 = 0.05% per weight."""
    path = Path(path)
    weights = model.weights
    np.savez_compressed(path, paths=np.array([w.path for w in weights]),
                        **{f"w{i}": np.asarray(w.numpy(), np.float16) for i, w in enumerate(weights)})
    return path


def load_compact_weights(model: keras.Model, path) -> keras.Model:
    """Load weights saved by ``save_compact_weights`` into ``model`` (cast back to its float32 variables),
    each by its stored path (not by position: two kernels of equal shape cannot swap). A file whose
    paths or shapes differ from the model's is refused, naming the first weight that does not fit."""
    path = Path(path)
    with np.load(path) as data:
        paths = [str(p) for p in data["paths"]]
        stored = {p: data[f"w{i}"] for i, p in enumerate(paths)}
    mine = [w.path for w in model.weights]
    if len(set(mine)) != len(mine) or len(stored) != len(paths):
        raise ValueError(f"{path.name}: weight paths repeat, so they cannot be matched by name")
    missing, extra = [p for p in mine if p not in stored], [p for p in paths if p not in set(mine)]
    if missing or extra:
        raise ValueError(f"{path.name} holds {len(paths)} weights, the model has {len(mine)}; "
                         + (f"the file has {extra[0]!r}, which the model has not" if extra else
                            f"the model's {missing[0]!r} is not in the file")
                         + ": it was saved from another network")
    for w in model.weights:
        if tuple(stored[w.path].shape) != tuple(w.shape):
            raise ValueError(f"{path.name}: the weight {w.path} has shape {stored[w.path].shape}, the model's "
                             f"has {tuple(w.shape)}: it was saved from another network")
    for w in model.weights:
        w.assign(stored[w.path].astype(np.float32))
    return model


def reference_prediction() -> str:
    """What the shipped reference network predicts ("eps" or "v"), from its settings.json."""
    settings = json.loads((REFERENCE_DIR / "settings.json").read_text())
    return settings.get("profile", {}).get("prediction", "eps")


def load_reference_weights(model: keras.Model, prediction: str | None = None) -> keras.Model:
    """Load the shipped reference run's EMA weights (``assets/reference_cpu``) into ``model``, which must be
    the ``cpu`` profile's U-Net (``build_unet(get_profile("cpu"))``): ``load_shipped_weights(model,
    "reference", prediction)``, which refuses weights that predict another target than ``prediction``."""
    return load_shipped_weights(model, "reference", prediction)


GENERAL_DIR = Path(__file__).resolve().parent / "assets" / "general_cpu"
SHIPPED = {"reference": REFERENCE_DIR, "general": GENERAL_DIR}   # INIT= name -> folder of ema.float16.npz


def shipped_settings(name: str) -> dict:
    """The profile (a dict) that the shipped network ``name`` ("reference": the emoji run of lesson 09;
    "general": the broad prior of lesson 10) was trained with, from its settings.json."""
    if name not in SHIPPED:
        raise ValueError(f"INIT={name!r} is not known: give one of {', '.join(SHIPPED)}, or leave it empty "
                         "to train from scratch")
    path = SHIPPED[name] / "settings.json"
    if not path.exists():
        raise FileNotFoundError(f"the shipped {name} network is missing ({path.parent.name}/settings.json in the "
                                "package's assets): train from scratch (no INIT=)")
    return json.loads(path.read_text())["profile"]


def load_shipped_weights(model: keras.Model, name: str, prediction: str | None = None) -> keras.Model:
    """Load the shipped network ``name``'s EMA weights (``SHIPPED``) into ``model``, which must be the
    same U-Net: a model of another image size, prediction target or augmentation input is refused with
    a ValueError that names the difference and what to do."""
    saved = shipped_settings(name)
    size = int(model.input_shape[0][1])
    if size != saved["image_size"]:
        raise ValueError(f"the shipped {name} network is for {saved['image_size']}x{saved['image_size']} "
                         f"pictures, this U-Net for {size}x{size}: leave SIZE= out with INIT={name}, or "
                         "train from scratch")
    if prediction is not None and prediction != saved.get("prediction", "eps"):
        raise ValueError(f"the shipped {name} network predicts {saved.get('prediction', 'eps')!r}, but this run "
                         f"uses prediction={prediction!r}: start from scratch (no INIT={name}), or set the "
                         f"profile's prediction to {saved.get('prediction', 'eps')!r}")
    from .unet import augment_dim
    if augment_dim(model) != saved.get("augment_dim", 0):
        raise ValueError(f"the shipped {name} network has augment_dim={saved.get('augment_dim', 0)}, this U-Net "
                         f"{augment_dim(model)}: build it with build_unet(..., augment_dim={saved.get('augment_dim', 0)})")
    return load_compact_weights(model, SHIPPED[name] / REFERENCE_WEIGHTS)
