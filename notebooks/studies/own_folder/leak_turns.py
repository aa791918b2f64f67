"""The leak, counted (lesson 10, section 7): how many samples come out turned by a quarter or a half turn.

The emoji reference was fine-tuned on the emoji portraits for 5 minutes with heavy augmentation
(own_folder_study.py --folder portraits --method leak-ref / told-ref: each transform with p = 0.5, so half
of the training pictures are turned by 90, 180 or 270 degrees), once without the augmentation input
(the network is not told: the transforms are part of "the data") and once with it (zeros at sampling).

A judge of orientation: a small CNN trained on 80% of the portraits shown in the four quarter turns
(labels 0, 90, 180, 270 degrees; seeded), its accuracy measured on the other 20%. It then labels
N_SAMPLES = 512 samples of each network (seed 1000, as the study) and the held-out real portraits: the
share called turned (not 0 degrees), with its binomial standard error, over all samples and over those
the judge calls with probability >= 0.9 (a blob has no orientation). The real portraits' share is what
the judge gets wrong on upright pictures; plain-ref (the same fine-tune without augmentation) is what
fine-tuning alone does; general-aug is what a learner gets by default (the general prior, trained with
the augmentation input from its start, fine-tuned 5 minutes with p = 0.2, told). Writes results/leak_turns.json, and for each 5-minute network up to 16 samples
the judge confidently calls turned (results/portraits-<method>-turned.png).

    .venv/bin/python notebooks/studies/own_folder/leak_turns.py [--store /work/study-runs]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from own_folder_study import N_SAMPLES, RESULTS, ROOT, SAMPLE_SEED, read_folder, settings_for

ARMS = ("plain-ref", "leak-ref", "told-ref", "general-aug")   # general-aug: the default (the prior, p = 0.2, told)


def train_judge(images, seed=0, epochs=12):
    """(model, held-out accuracy per turn) of a CNN telling the quarter turn k of a portrait (k = 0..3)."""
    import keras
    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.8 * len(images))
    x = images.astype(np.float32) / 127.5 - 1

    def turned(idx):
        xs = np.concatenate([np.rot90(x[idx], k, axes=(1, 2)) for k in range(4)])
        return xs, np.repeat(np.arange(4), len(idx))

    x_train, y_train = turned(order[:cut])
    x_test, y_test = turned(order[cut:])
    layers = keras.layers
    model = keras.Sequential([keras.Input(x.shape[1:])] + [
        layer for width in (32, 64, 128) for layer in (layers.Conv2D(width, 3, padding="same", activation="relu"),
                                                       layers.MaxPooling2D())]
        + [layers.GlobalAveragePooling2D(), layers.Dense(4)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, shuffle=True, verbose=0)
    pred = model.predict(x_test, batch_size=256, verbose=0).argmax(1)
    accuracy = {f"{90 * k}": float((pred[y_test == k] == k).mean()) for k in range(4)}
    return model, accuracy, x[order[cut:]]


CONFIDENT = 0.9      # a call the judge makes with probability >= this: a face whose orientation is clear


def judge_probabilities(judge, x):
    """(N, 4) probabilities of the quarter turns 0/90/180/270 for pictures x (N, H, W, 3) in [-1, 1]."""
    import keras
    return keras.ops.convert_to_numpy(keras.ops.softmax(judge.predict(x, batch_size=256, verbose=0)))


def share_turned(judge, x, confident=0.0):
    """For pictures x (N, H, W, 3) in [-1, 1]: (share the judge calls turned, its binomial SE, counts per
    turn, how many were judged) over the pictures whose call has probability >= ``confident``
    (a blob has no orientation: the judge guesses, with low confidence)."""
    prob = judge_probabilities(judge, x)
    keep = prob.max(1) >= confident
    k = prob[keep].argmax(1)
    p = float((k != 0).mean()) if len(k) else float("nan")
    return p, float(np.sqrt(p * (1 - p) / max(len(k), 1))), np.bincount(k, minlength=4).tolist(), int(len(k))


def samples_of(method: str, store: Path, minutes: int = 5):
    from ddpm_lessons.profiles import sampler_options
    from ddpm_lessons.sampling import generate
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import load_compact_weights, load_shipped_weights
    from ddpm_lessons.unet import build_unet
    settings = settings_for(method if method != "reference" else "leak-ref")       # the same U-Net, no augment input
    model = build_unet(settings)
    if method == "reference":
        load_shipped_weights(model, "reference", settings.prediction)
    else:
        load_compact_weights(model, store / "portraits" / method / f"ema-{minutes}min.float16.npz")
    schedule = NoiseSchedule.from_kind(settings.schedule, settings.timesteps)
    return generate(model, schedule, N_SAMPLES, seed=SAMPLE_SEED, batch_size=128, **sampler_options(settings))


def main(argv=None):
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--store", default=str(ROOT / "runs" / "own_folder"), help="where own_folder_study.py put the snapshots")
    a.add_argument("--long-store", default="", help="a told-ref run trained to 10 minutes (--budgets 5 10), if any")
    args = a.parse_args(argv)
    images = read_folder("emoji-portraits", 32)
    judge, accuracy, held_out = train_judge(images)
    print("the judge's accuracy on held-out portraits, per turn:", {k: f"{v:.1%}" for k, v in accuracy.items()})
    result = {"judge_accuracy": accuracy, "n_samples": N_SAMPLES, "sample_seed": SAMPLE_SEED, "shares": {}}
    arms = [(name, Path(args.store), 5) for name in ARMS
            if (Path(args.store) / "portraits" / name / "ema-5min.float16.npz").exists()]
    if args.long_store and (Path(args.long_store) / "portraits" / "told-ref" / "ema-10min.float16.npz").exists():
        arms.append(("told-ref", Path(args.long_store), 10))
    for name, store, minutes in [("real (held out)", None, 0), ("reference", None, 0)] + arms:
        x = held_out if store is None and name.startswith("real") else samples_of(name, store, minutes)
        name = f"{name} {minutes} min" if minutes else name
        result["shares"][name] = {"n": len(x)}
        for label, level in (("all", 0.0), ("confident", CONFIDENT)):
            p, se, counts, judged = share_turned(judge, x, level)
            result["shares"][name][label] = {"turned": p, "se": se, "counts_0_90_180_270": counts, "judged": judged}
            print(f"{name:16s} {label:9s} ({judged:3d} of {len(x)}): turned {p:6.1%} +- {se:4.1%}  "
                  f"(0/90/180/270: {counts})")
        if store is not None and minutes == 5:         # what the judge calls turned, to look at
            from ddpm_lessons.plotting import save_grid
            prob = judge_probabilities(judge, x)
            turned = np.flatnonzero((prob.max(1) >= CONFIDENT) & (prob.argmax(1) != 0))[:16]
            if len(turned):
                save_grid(RESULTS / f"portraits-{name.split()[0]}-turned.png", x[turned], 8)
    (RESULTS / "leak_turns.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
