"""Try variants of the `cpu` profile on the shipped data and judge them by lesson 11's score.

    .venv/bin/python notebooks/tune_cpu_profile.py                  # every variant below
    .venv/bin/python notebooks/tune_cpu_profile.py --only base lr1e-3 --steps 1000

Each variant trains from scratch (checkpoints in runs/tuning/<name>/, so an interrupted sweep
resumes), and every ``--score-every`` steps its EMA network draws 256 samples with the profile's
preview sampler from one fixed seed; the samples are scored (KID in the course feature space, SWD)
against half of the shipped images. Results go to notebooks/tuning/results.json and one small
sample grid per variant (notebooks/tuning/<name>.png); lesson 09 shows them as a table.
Scores do not depend on how busy the machine is; the minutes do (they are training-step time only).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ddpm_lessons  # noqa: F401  (quiets TensorFlow's start-up logs)
from ddpm_lessons import plotting
from ddpm_lessons.data import default_dataset_path, make_dataset, read_image_folder
from ddpm_lessons.metrics import ScoreCallback, ScoreReference, evaluate_samples
from ddpm_lessons.profiles import get_profile
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import TrainConfig, Trainer
from ddpm_lessons.unet import build_unet, count_params

import keras
import numpy as np

# Every try starts from the cpu profile as it was when the table was made (the reference run's
# settings: learning rate 2e-3); the winner, lr1e-3, is the cpu profile now.
TABLE_BASE = {"learning_rate": 2e-3}
# name -> (changes to TABLE_BASE, steps as a multiple of --steps, what it tests)
VARIANTS = {
    "base": ({}, 1.0, "the reference run's settings (learning rate 2e-3)"),
    "linear": ({"schedule": "linear"}, 1.0, "linear beta schedule (Ho et al.) instead of cosine"),
    "lr1e-3": ({"learning_rate": 1e-3}, 1.0, "half the learning rate (the cpu profile now)"),
    "small-2x": ({"channel_mults": (1, 2, 3), "attention_resolutions": (8,)}, 2.0,
                 "3 levels, attention at 8 only (~half the compute per image), twice the steps"),
}


def run_variant(name, changes, steps, reference, images, out_dir, runs_dir, score_every, num_samples):
    profile = get_profile("cpu").replace(**{**TABLE_BASE, **changes}, train_steps=steps)
    keras.utils.set_random_seed(0)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    model = build_unet(profile)
    trainer = Trainer(model, schedule, TrainConfig.from_profile(profile, checkpoint_every=score_every),
                      checkpoint_dir=runs_dir / name)
    start = trainer.restore()
    scorer = ScoreCallback(score_every, reference=reference, num_samples=num_samples, seed=0,
                           num_steps=profile.sample_steps, eta=profile.sample_eta)
    log = runs_dir / name / "scores.json"
    if log.exists():
        scorer.history = [r for r in json.loads(log.read_text()) if r["step"] <= start]

    def keep(trainer_, logs):
        if int(logs["step"]) % score_every == 0:
            log.write_text(json.dumps(scorer.history, indent=1))

    print(f"\n== {name}: {count_params(model):,} parameters, {steps} steps, from step {start}", flush=True)
    dataset = make_dataset(images, profile.batch_size, seed=0)
    trainer.fit(dataset, steps, callbacks=[scorer, keep], progress=True)
    if not scorer.history or scorer.history[-1]["step"] != steps:
        scorer.evaluate(trainer, steps)
        log.write_text(json.dumps(scorer.history, indent=1))
    plotting.save_grid(out_dir / f"{name}.png", scorer.last_samples[:32], 8) if scorer.last_samples is not None \
        else None
    last = scorer.history[-1]
    return {"name": name, "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
            "parameters": count_params(model), "steps": steps, "batch_size": profile.batch_size,
            "train_minutes": round(trainer._elapsed / 60, 2),
            "final_loss": float(np.mean(trainer.history["loss"][-10:])),
            "kid": last["kid"], "kid_se": last["kid_se"], "swd": last["swd"], "scores": scorer.history}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps of a variant with multiple 1")
    p.add_argument("--only", nargs="*", default=None, help=f"variants to run (default: all of {list(VARIANTS)})")
    p.add_argument("--score-every", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--out", default=str(Path(__file__).parent / "tuning"))
    p.add_argument("--runs", default=str(Path(__file__).parent.parent / "runs" / "tuning"))
    args = p.parse_args(argv)
    out_dir, runs_dir = Path(args.out), Path(args.runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, _ = read_image_folder(default_dataset_path(), get_profile("cpu").image_size)
    reference = ScoreReference(images)
    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    floor = evaluate_samples(reference.a[:args.num_samples], reference=reference, references=False)
    results["_floor"] = {"kid": floor["kid"], "kid_se": floor["kid_se"], "swd": floor["swd"],
                         "n": args.num_samples, "what": "real images of the other half (a perfect model)"}
    for name in args.only or list(VARIANTS):
        changes, mult, what = VARIANTS[name]
        t0 = time.time()
        row = run_variant(name, changes, int(round(args.steps * mult)), reference, images, out_dir,
                          runs_dir, args.score_every, args.num_samples)
        row["what"], row["wall_minutes"] = what, round((time.time() - t0) / 60, 1)
        results[name] = row
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        print(f"== {name}: KID x1e3 {1e3 * row['kid']:.1f} +- {1e3 * row['kid_se']:.1f}, "
              f"SWD x1e3 {row['swd']:.1f}, {row['train_minutes']} training minutes", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
