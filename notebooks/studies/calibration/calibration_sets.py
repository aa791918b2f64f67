"""The sample sets that lesson 11 calibrates its scores and the verdict on, for three folders
(committed, so the calibration can be re-checked without training anything).

For each folder, at the cpu profile's 32x32 and with the profile's sampler (DPM-Solver++(2M), 10
network evaluations), from fresh seeds (not the previews' or the final grid's):

    final    512 samples of a finished run's EMA weights
             (emoji portraits: the shipped reference checkpoint; twemoji-things and the photographs
             of data/build_tuxpaint_photos.py: a run folder of `make train DATA=...`, given with
             --twemoji-run / --photos-run)
    early    512 samples of the same recipe after only EARLY_STEPS = 200 training steps (trained
             here, from scratch)

Real, blurred, blob and noise sets are made from the folder itself by ``calibrate_scores.py`` and
``calibrate_verdict.py``. Writes notebooks/studies/calibration/<folder>_<set>.npz (uint8 (512, 32, 32, 3)).
About 3 minutes per early set and 1 per final set on 2 cores:

    .venv/bin/python notebooks/studies/calibration/calibration_sets.py --twemoji-run runs/<twemoji run> --photos-run runs/<photos run>
"""
import argparse
from pathlib import Path

import numpy as np

from ddpm_lessons.data import default_dataset_path, from_unit_range, make_dataset, read_image_folder
from ddpm_lessons.profiles import get_profile, sampler_options
from ddpm_lessons.runs import load_ema_model
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig, load_reference_weights
from ddpm_lessons.unet import build_unet

HERE = Path(__file__).resolve().parent                  # notebooks/studies/calibration: the sets and results
ROOT = HERE.parents[2]
OUT = HERE
FOLDERS = {"emoji": default_dataset_path(), "twemoji": ROOT / "data" / "twemoji-things",
           "photos": ROOT / "data" / "tuxpaint-photos"}
NUM, SEED, EARLY_STEPS = 512, 5000, 200


def draw(model, schedule, settings):
    return from_unit_range(generate(model, schedule, NUM, seed=SEED,
                                             **sampler_options(settings)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--twemoji-run", help="run folder of make train DATA=data/twemoji-things")
    p.add_argument("--photos-run", help="run folder of make train DATA=data/tuxpaint-photos")
    p.add_argument("--only", nargs="*", default=None, help="e.g. emoji_final twemoji_early")
    args = p.parse_args()
    import keras
    OUT.mkdir(exist_ok=True)
    profile = get_profile("cpu")
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    todo = args.only or [f"{f}_{s}" for f in FOLDERS for s in ("final", "early")]
    for name in todo:
        folder, which = name.split("_")
        if which == "final" and folder == "emoji":
            model = load_reference_weights(build_unet(profile))
            settings = profile
        elif which == "final":
            run = {"twemoji": args.twemoji_run, "photos": args.photos_run}[folder]
            if not run:
                raise SystemExit(f"{name}: give --{folder}-run <run folder>")
            model, schedule, saved, ckpt = load_ema_model(run)
            settings = saved["profile"]
            print(f"{name}: {run} at {ckpt}")
        else:
            keras.utils.set_random_seed(0)
            images, _ = read_image_folder(FOLDERS[folder], profile.image_size)
            trainer = Trainer(build_unet(profile), schedule, TrainConfig.from_profile(profile))
            trainer.fit(make_dataset(images, profile.batch_size, seed=0), EARLY_STEPS, progress=False)
            model, settings = trainer.ema_model, profile
        samples = draw(model, schedule, settings)
        np.savez_compressed(OUT / f"{name}.npz", images=samples)
        print(f"{name}: {samples.shape} -> {OUT / name}.npz", flush=True)


if __name__ == "__main__":
    main()
