"""Your own folder (issue #29): from scratch or from the general prior, with or without the
non-leaking augmentation, after 2, 5 and 10 training minutes. Lesson 10's table and grids.

For one folder and one method this script trains the ``cpu`` profile's U-Net (batch 32, the
profile's learning rate unless the method says otherwise) and keeps the EMA weights at the step
counts of the budgets (``BUDGET_STEPS``: minutes x 60 / the stored seconds per step). ``--evaluate``
then scores each snapshot by the course's protocol (lesson 11):

    n = 512 samples from fresh seeds (seed 1000 +), the profile's sampler (DPM-Solver++(2M), 10 steps)
    layout and detail KID x 1e3 +- SE and SWD x 1e3 against the folder's *kind* (``REFERENCE``: all
        376 photographs for the photo subsets, all 857 twemoji for the twemoji subset, the folder itself
        for the held-out animals), one ScoreReference per reference folder (fixed seed), so that two
        methods' paired difference (``metrics.scores.paired_difference``) uses the same real subsets
    the verdict a learner's run gets (metrics.verdict on the training folder) with its near-copy share
    a grid of 64 samples per snapshot (results/<folder>-<method>-<minutes>min.png), to be judged by eye:
        the rotation leak is counted there (neither a linear nor a small CNN quarter-turn classifier
        on layout features told turned from upright cut-out photographs better than 45% of the time,
        chance 25%, so no automatic count is made)

    .venv/bin/python notebooks/studies/own_folder/own_folder_study.py --folder photos-100 --method general
    .venv/bin/python notebooks/studies/own_folder/own_folder_study.py --folder photos-100 --method general --evaluate

Snapshots go to --store (default /work/study-runs; large, not in the repository); results and
grids to notebooks/studies/own_folder/results/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]          # notebooks/studies/own_folder/ -> the repository
sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

FOLDERS = {"photos-100": "tuxpaint-photos-100", "photos-300": "tuxpaint-photos-300",
           "twemoji-300": "twemoji-things:300", "animals": "tuxpaint-animals",
           "portraits": "emoji-portraits"}     # the leak demonstration: a turned face is easy to see
REFERENCE = {"photos-100": "tuxpaint-photos", "photos-300": "tuxpaint-photos", "twemoji-300": "twemoji-things",
             "animals": "tuxpaint-animals", "portraits": "emoji-portraits"}
AUGMENT_P = 0.2
METHODS = {   # init, augmentation p, the network told the transforms, learning rate (None: the profile's)
    "scratch": dict(init="", augment_p=0.0, told=False, learning_rate=None),        # today's default
    "scratch-aug": dict(init="", augment_p=AUGMENT_P, told=True, learning_rate=None),
    "leak": dict(init="", augment_p=0.5, told=False, learning_rate=None),            # the leak, made visible
    "told": dict(init="", augment_p=0.5, told=True, learning_rate=None),             # ... and prevented
    "general": dict(init="general", augment_p=0.0, told=True, learning_rate=None),
    "general-aug": dict(init="general", augment_p=AUGMENT_P, told=True, learning_rate=None),
    # The leak on a network that already draws faces (the emoji reference), fine-tuned on the portraits
    # with heavy augmentation: not told (the transforms are part of "the data") and told.
    "leak-ref": dict(init="reference", augment_p=0.5, told=False, learning_rate=None),
    "told-ref": dict(init="reference", augment_p=0.5, told=True, learning_rate=None),
    "plain-ref": dict(init="reference", augment_p=0.0, told=False, learning_rate=None),   # the same, no augmentation
}
SECONDS_PER_STEP = 21.0 * 60 / 1800     # lesson 09's stored cpu run (float32, 2-core Intel Xeon, alone)
BUDGETS = (2, 5, 10)                    # training minutes
BUDGET_STEPS = {m: int(round(m * 60 / SECONDS_PER_STEP)) for m in BUDGETS}
N_SAMPLES, SAMPLE_SEED = 512, 1000


def read_folder(spec: str, size: int):
    """Pictures of ``data/<name>`` as uint8; "name:N" is a fixed random N of them (seeded by N, as
    notebooks/studies/folder_size/folder_size_study.py draws them)."""
    from ddpm_lessons.data import read_image_folder
    name, _, n = spec.partition(":")
    images, _ = read_image_folder(ROOT / "data" / name, size)
    if n:
        images = images[np.sort(np.random.default_rng(int(n)).choice(len(images), int(n), replace=False))]
    return images


def settings_for(method: str):
    from ddpm_lessons.augment import AUGMENT_DIM
    from ddpm_lessons.profiles import get_profile
    m = METHODS[method]
    profile = get_profile("cpu").replace(augment_p=m["augment_p"], augment_dim=AUGMENT_DIM if m["told"] else 0)
    return profile.replace(learning_rate=m["learning_rate"]) if m["learning_rate"] else profile


def load_start(model, init: str, settings):
    """The shipped network ``init`` into ``model``; a network shipped without the augmentation input
    (the reference) goes into one with it by weight path, its new augmentation Dense left as built
    (it adds nothing for unaugmented pictures: the labels are zeros)."""
    from ddpm_lessons.training import load_shipped_weights, shipped_settings
    from ddpm_lessons.unet import augment_dim, build_unet
    if shipped_settings(init).get("augment_dim", 0) == augment_dim(model):
        return load_shipped_weights(model, init, settings.prediction)
    source = load_shipped_weights(build_unet(settings.replace(augment_dim=0)), init, settings.prediction)
    values = {w.path: w for w in source.weights}
    for w in model.weights:
        if w.path in values:
            w.assign(values[w.path])
    return model


def train(folder: str, method: str, store: Path, budgets=BUDGETS):
    import keras
    from ddpm_lessons.data import make_dataset
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig, save_compact_weights
    from ddpm_lessons.unet import build_unet
    settings = settings_for(method)
    images = read_folder(FOLDERS[folder], settings.image_size)
    out = store / folder / method
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    schedule = NoiseSchedule.from_kind(settings.schedule, settings.timesteps)
    trainer = Trainer(build_unet(settings), schedule, TrainConfig.from_profile(settings))
    if METHODS[method]["init"]:
        load_start(trainer.model, METHODS[method]["init"], settings)
        load_start(trainer.ema_model, METHODS[method]["init"], settings)
    ds = make_dataset(images, min(settings.batch_size, len(images)), seed=0)
    log = {"folder": folder, "method": method, "images": len(images), "settings": {
        k: getattr(settings, k) for k in ("learning_rate", "augment_p", "augment_dim", "ema_decay", "batch_size")},
        "snapshots": {}}
    for minutes in budgets:
        steps = BUDGET_STEPS[minutes]
        trainer.fit(ds, steps, progress="lines", progress_seconds=60)
        path = out / f"ema-{minutes}min.float16.npz"
        save_compact_weights(trainer.ema_model, path)
        log["snapshots"][str(minutes)] = {"steps": steps, "training_seconds": trainer.history["seconds"][-1],
                                          "loss": trainer.history["loss"][-1]}
        print(f"{folder}/{method}: {minutes} min budget = {steps} steps, trained in "
              f"{trainer.history['seconds'][-1] / 60:.1f} min", flush=True)
    (out / "train.json").write_text(json.dumps(log, indent=1))


def evaluate(folder: str, method: str, store: Path, budgets=BUDGETS):
    from ddpm_lessons.metrics.features import detail_feature_fn, layout_feature_fn
    from ddpm_lessons.metrics.scores import ScoreReference
    from ddpm_lessons.metrics.verdict import FolderVerdict
    from ddpm_lessons.plotting import save_grid
    from ddpm_lessons.profiles import sampler_options
    from ddpm_lessons.sampling import generate
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import load_compact_weights
    from ddpm_lessons.unet import build_unet
    settings = settings_for(method)
    train_images = read_folder(FOLDERS[folder], settings.image_size)
    reference_images = read_folder(REFERENCE[folder], settings.image_size)
    refs = {name: ScoreReference(reference_images, feature_fn=fn, seed=0)
            for name, fn in (("layout", layout_feature_fn), ("detail", detail_feature_fn))}
    judge = FolderVerdict(train_images, N_SAMPLES)
    schedule = NoiseSchedule.from_kind(settings.schedule, settings.timesteps)
    model = build_unet(settings)
    log = json.loads((store / folder / method / "train.json").read_text())
    result = {**log, "n_samples": N_SAMPLES, "sample_seed": SAMPLE_SEED, "scores": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for minutes in budgets:
        load_compact_weights(model, store / folder / method / f"ema-{minutes}min.float16.npz")
        t0 = time.perf_counter()
        samples = generate(model, schedule, N_SAMPLES, seed=SAMPLE_SEED, batch_size=128, **sampler_options(settings))
        row = {"sampling_seconds": round(time.perf_counter() - t0, 1)}
        for name, ref in refs.items():
            s = ref.score(samples, with_subsets=True)
            row[name] = {"kid_x1e3": 1e3 * s["kid"], "se_x1e3": 1e3 * s["kid_se"],
                         "subsets_x1e3": [1e3 * v for v in s["kid_subsets"]]}
            row["swd_x1e3"] = s["swd"]            # ScoreReference reports SWD x 1e3 already
        v = judge.judge(samples)
        row["verdict"] = {k: v[k] for k in ("call", "apart_by", "near_copies", "near_copies_among_real", "swd_x1e3")}
        row["verdict"]["z"] = {k: v["scores"][k]["z"] for k in v["scores"]}
        result["scores"][str(minutes)] = row
        save_grid(RESULTS / f"{folder}-{method}-{minutes}min.png", samples[:64])
        print(f"{folder}/{method} {minutes} min: layout KID {row['layout']['kid_x1e3']:.2f} +- "
              f"{row['layout']['se_x1e3']:.2f}, detail {row['detail']['kid_x1e3']:.2f} +- {row['detail']['se_x1e3']:.2f}, "
              f"SWD {row['swd_x1e3']:.1f}, verdict {v['call']}, near copies {v['near_copies']:.1%}", flush=True)
    (RESULTS / f"{folder}-{method}.json").write_text(json.dumps(result, indent=1))


def main(argv=None):
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--folder", choices=list(FOLDERS), required=True)
    a.add_argument("--method", choices=list(METHODS), required=True)
    a.add_argument("--store", default=str(ROOT / "runs" / "own_folder"), help="where the trained snapshots go (runs/ is not committed)")
    a.add_argument("--evaluate", action="store_true")
    a.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    args = a.parse_args(argv)
    budgets = tuple(b for b in args.budgets if b in BUDGET_STEPS)
    (evaluate if args.evaluate else train)(args.folder, args.method, Path(args.store), budgets)


if __name__ == "__main__":
    main()
