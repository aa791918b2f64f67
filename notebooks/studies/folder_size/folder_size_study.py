"""How many steps for a folder of N pictures? The measurement behind ``runs.MAX_PASSES`` (lesson 10).

For N = 100 and 300 pictures drawn (fixed seed) from ``data/twemoji-things`` — a folder nothing in
the course was tuned on — train the ``cpu`` profile from scratch for its 1,800 steps and, at a few
steps along the way, draw 64 samples with the preview sampler (same seeds each time) and measure:

    swd            multi-scale SWD x1e3 of the samples against all pictures of the folder
                   (no network involved, so it means the same on any folder; lower is better)
    copy_share     share of samples whose nearest training picture (pixels, flips and 2-px shifts)
                   is closer than 1/3 of the typical gap between two training pictures
    median_ratio   median over samples of that distance / the typical gap (1 = as far as two
                   different training pictures; near 0 = a copy)

Writes notebooks/studies/folder_size/results.json and a grid per (N, step) of 32 samples. About 40 minutes
on 2 cores. Then ``--nearest`` draws, for the last grid of each N, every sample beside its nearest
training picture (``n<N>_step<S>_nearest.png``), from the saved grids (seconds):

    .venv/bin/python notebooks/studies/folder_size/folder_size_study.py [--sizes 100 300] [--steps 1800]
    .venv/bin/python notebooks/studies/folder_size/folder_size_study.py --nearest

``--from-run RUN`` adds the row of a finished `make train DATA=data/twemoji-things` run (all 857
pictures, the default a user gets): the same measures on its 64 final samples (``RUN/samples/``),
its training minutes, the estimate it printed before its first step, the minutes from that estimate
to its end, the wall time of the whole command (``--command-minutes``, timed outside), and its grid.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from ddpm_lessons import plotting
from ddpm_lessons.data import make_dataset, read_image_folder
from ddpm_lessons.metrics import MemorisationCheck, swd
from ddpm_lessons.profiles import get_profile, sampler_options
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig
from ddpm_lessons.unet import build_unet

HERE = Path(__file__).resolve().parent          # notebooks/studies/folder_size: results and grids
ROOT = HERE.parents[2]
FOLDER = ROOT / "data" / "twemoji-things"
OUT = HERE


def training_subset(everything, n):
    """The n pictures a study run trains on (seeded by n)."""
    return everything[np.sort(np.random.default_rng(n).choice(len(everything), n, replace=False))]


def grid_images(path, size, ncols=8, pad=1):
    """The images of a grid saved by plotting.save_grid, back as (N, size, size, 3) uint8."""
    from PIL import Image
    g = np.asarray(Image.open(path).convert("RGB"))
    rows, cols = (g.shape[0] + pad) // (size + pad), (g.shape[1] + pad) // (size + pad)
    return np.stack([g[r * (size + pad): r * (size + pad) + size, c * (size + pad): c * (size + pad) + size]
                     for r in range(rows) for c in range(cols)])


def nearest_figures(results, everything, size):
    for n, r in results.items():
        step = r["rows"][-1]["step"]
        samples = grid_images(OUT / f"n{n}_step{step}.png", size)
        train = training_subset(everything, int(n))
        c = MemorisationCheck(train, feature_fn=None).check(samples)
        pairs = np.concatenate([np.stack([s, train[i]]) for s, i in zip(samples, c["pixel_index"])])
        plotting.save_grid(OUT / f"n{n}_step{step}_nearest.png", pairs, 16)
        print(f"N={n} step {step}: nearest-picture ratios", np.round(np.sort(c["pixel_ratio"]), 2))


def add_run(run, results, everything, path, command_minutes=None):
    import shutil
    from PIL import Image
    samples = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted((run / "samples").glob("*.png"))])
    done = json.loads((run / "results.json").read_text())
    c = MemorisationCheck(everything, feature_fn=None).check(samples)
    settings = json.loads((run / "settings.json").read_text())["profile"]
    row = {"step": done["steps"], "passes": round(done["steps"] * settings["batch_size"] / len(everything), 1),
           "train_minutes": done["train_minutes"], "swd": swd(samples, everything)["swd"],
           "copy_share": c["share_flagged"], "median_ratio": float(np.median(c["pixel_ratio"])),
           "loss": done["final_loss_mean_last_100_steps"], "samples": len(samples),
           "minutes_estimated": done.get("minutes_estimated_before_training"),
           "minutes_after_estimate": done.get("minutes_after_estimate"), "command_minutes": command_minutes}
    shutil.copy(run / "samples.png", OUT / "all_run.png")
    results["all"] = {"images": len(everything), "batch_size": settings["batch_size"], "rows": [row],
                      "run": run.name}
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["all"], indent=1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nearest", action="store_true", help="only draw the nearest-picture figures")
    p.add_argument("--from-run", default=None, help="add the row of a make train DATA=data/twemoji-things run")
    p.add_argument("--command-minutes", type=float, default=None, help="its wall time, timed outside")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--evals", type=int, nargs="+", default=[200, 400, 625, 900, 1200, 1800])
    args = p.parse_args()
    import keras
    profile = get_profile("cpu")
    everything, _ = read_image_folder(FOLDER, profile.image_size)
    OUT.mkdir(exist_ok=True)
    path = OUT / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.nearest:
        return nearest_figures({k: v for k, v in results.items() if k != "all"}, everything, profile.image_size)
    if args.from_run:
        return add_run(Path(args.from_run), results, everything, path, args.command_minutes)
    for n in args.sizes:
        keras.utils.set_random_seed(0)
        images = training_subset(everything, n)
        settings = profile.replace(train_steps=args.steps)
        schedule = NoiseSchedule.from_kind(settings.schedule, settings.timesteps)
        trainer = Trainer(build_unet(settings), schedule, TrainConfig.from_profile(settings))
        check = MemorisationCheck(images, feature_fn=None)
        rows = []
        ds = make_dataset(images, settings.batch_size, seed=0)
        t_start = time.perf_counter()
        for stop in [e for e in args.evals if e <= args.steps]:
            trainer.fit(ds, stop, progress=False)
            train_min = trainer.history["seconds"][-1] / 60
            samples = generate(trainer.ema_model, schedule, 64, seed=0, **sampler_options(settings))
            c = check.check(samples)
            row = {"step": stop, "passes": round(stop * settings.batch_size / n, 1),
                   "train_minutes": round(train_min, 2), "swd": swd(samples, everything)["swd"],
                   "copy_share": c["share_flagged"], "median_ratio": float(np.median(c["pixel_ratio"])),
                   "loss": float(np.mean(trainer.history["loss"][-10:]))}
            rows.append(row)
            plotting.save_grid(OUT / f"n{n}_step{stop}.png", samples[:32], 8)
            print(f"N={n} {json.dumps(row)}  ({(time.perf_counter() - t_start) / 60:.1f} min)", flush=True)
        floor = swd(everything[np.random.default_rng(1).choice(len(everything), 64, replace=False)],
                    everything)["swd"]
        results[str(n)] = {"images": n, "batch_size": settings.batch_size, "rows": rows,
                           "swd_real_64": floor}
        path.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
