"""What should the network predict? eps vs v, with and without min-SNR weighting, at equal compute (lesson 12).

    .venv/bin/python notebooks/studies/targets/compare_targets.py train            # 4 runs of the cpu recipe (~40 min)
    .venv/bin/python notebooks/studies/targets/compare_targets.py score            # the protocol on their EMA weights
    .venv/bin/python notebooks/studies/targets/compare_targets.py few-step         # eps and v with 5-15 evaluations

Four runs of the `cpu` profile on the shipped data, identical but for the target: the same seed, data
order, steps, batch and learning rate (so the same compute): eps / none (the course's target today),
v / none, eps / min-SNR (gamma 5), v / min-SNR (gamma 5). Each keeps its EMA weights at 1/3, 2/3 and
all of its steps (runs/targets/<name>/, not committed).

The decision rule, fixed before the runs: each variant is scored by the course's protocol (n = 512
samples from fresh seeds, one ScoreReference, calibrated detail KID with paired standard errors, SWD)
with the course's few-step sampler (lesson 08) at the end of training; a variant replaces eps / none
only if its KID is lower by more than 2 paired standard errors; otherwise the course keeps eps.
(The whole-picture KID and its paired difference are reported beside it, as in the verdict.)
Writes notebooks/studies/targets/results.json and one 32-sample grid per run and checkpoint, next to this script.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ddpm_lessons  # noqa: F401  (quiets TensorFlow's start-up logs)
import keras
import numpy as np

from ddpm_lessons import plotting
from ddpm_lessons.data import default_dataset_path, make_dataset, read_image_folder
from ddpm_lessons.metrics import (PROTOCOL_SAMPLES, ScoreReference, detail_feature_fn, paired_difference,
                                  random_feature_fn)
from ddpm_lessons.profiles import get_profile
from ddpm_lessons.sampling import generate_cached, network_evaluations
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import TrainConfig, Trainer
from ddpm_lessons.unet import build_unet

HERE = Path(__file__).resolve().parent          # notebooks/studies/targets: results and grids
ROOT = HERE.parents[2]
RUNS = ROOT / "runs" / "targets"
VARIANTS = {"eps": ("eps", "none"), "v": ("v", "none"), "eps-minsnr": ("eps", "min-snr"),
            "v-minsnr": ("v", "min-snr")}
BASE = "eps"
SEED = 2000                        # fresh sampling seeds (not the previews', not lesson 08's study)
# the samplers each run's final weights are scored with: (sampler, steps, options)
SAMPLERS = {"heun-10": dict(sampler="heun", steps=10, spacing="karras", sigma_max=80.0, churn=2.5)}


def profile_for(name):
    prediction, weighting = VARIANTS[name]
    return get_profile("cpu").replace(prediction=prediction, loss_weighting=weighting, snr_gamma=5.0)


def train(name, images):
    profile = profile_for(name)
    keras.utils.set_random_seed(0)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    model = build_unet(profile)
    steps = profile.train_steps
    keep = [steps // 3, 2 * steps // 3, steps]
    run_dir = RUNS / name
    trainer = Trainer(model, schedule, TrainConfig.from_profile(profile, checkpoint_every=steps // 3),
                      checkpoint_dir=run_dir / "checkpoints")
    start = trainer.restore()

    def save_ema(trainer_, logs):
        if int(logs["step"]) in keep:
            trainer_.ema_model.save_weights(run_dir / f"ema_{int(logs['step'])}.weights.h5")

    print(f"\n== {name}: {profile.prediction} / {profile.loss_weighting}, {steps} steps from {start}", flush=True)
    t0 = time.perf_counter()
    trainer.fit(make_dataset(images, profile.batch_size, seed=0), steps, callbacks=[save_ema], progress=True)
    (run_dir / "train.json").write_text(json.dumps({
        "steps": steps, "seconds": round(time.perf_counter() - t0, 1), "keep": keep,
        "final_loss": float(np.mean(trainer.history["loss"][-50:])),
        "loss_by_timestep": [None if not np.isfinite(v) else float(v) for v in trainer.loss_by_timestep()[1]]},
        indent=1))


def draw(model, schedule, profile, kw, cache):
    """512 samples of ``model`` with sampler ``kw`` (cached as uint8 in ``cache``), in [-1, 1]."""
    return generate_cached(cache, model, schedule, PROTOCOL_SAMPLES, seed=SEED, batch_size=128,
                           prediction=profile.prediction, **kw)


def score(images, out):
    reference = ScoreReference(images, feature_fn=detail_feature_fn)
    shapes = ScoreReference(images, feature_fn=random_feature_fn)
    results = {"num_samples": PROTOCOL_SAMPLES, "seed": SEED, "runs": {}}
    scores = {}
    for name in VARIANTS:
        profile = profile_for(name)
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        info = json.loads((RUNS / name / "train.json").read_text())
        model = build_unet(profile)
        row = {"prediction": profile.prediction, "loss_weighting": profile.loss_weighting,
               "snr_gamma": profile.snr_gamma, "train": info, "scores": {}}
        for step in info["keep"]:
            model.load_weights(RUNS / name / f"ema_{step}.weights.h5")
            for label, kw in SAMPLERS.items():
                x = draw(model, schedule, profile, kw, RUNS / name / f"samples_{step}_{label}.npz")
                s, sh = reference.score(x, with_subsets=True), shapes.score(x, with_subsets=True)
                scores[(name, step, label)] = (s, sh)
                entry = {"kid": s["kid"], "kid_se": s["kid_se"], "swd": s["swd"], "shapes_kid": sh["kid"],
                         "shapes_kid_se": sh["kid_se"], "nfe": network_evaluations(kw["sampler"], kw["steps"])}
                if name != BASE:
                    base, base_sh = scores[(BASE, step, label)]
                    d, d2 = paired_difference(base, s), paired_difference(base_sh, sh)
                    entry.update(vs_eps=d["diff"], vs_eps_se=d["se"], wins=d["b_wins"], loses=d["a_wins"],
                                 shapes_vs_eps=d2["diff"], shapes_vs_eps_se=d2["se"])
                row["scores"][f"{label} @ {step}"] = entry
                print(f"{name:11s} step {step:5d} {label:8s} KID x1e3 {1e3 * s['kid']:6.2f} +- "
                      f"{1e3 * s['kid_se']:4.2f}  SWD {s['swd']:5.1f}  shapes {1e3 * sh['kid']:5.1f} +- {1e3 * sh['kid_se']:4.1f}"
                      + (f"  vs eps {1e3 * entry['vs_eps']:+6.2f} +- {1e3 * entry['vs_eps_se']:4.2f}"
                         f"  shapes vs eps {1e3 * entry['shapes_vs_eps']:+5.1f} +- {1e3 * entry['shapes_vs_eps_se']:4.1f}"
                         if "vs_eps" in entry else ""), flush=True)
            plotting.save_grid(out / f"{name}_{step}.png", x[:32], 8)
        results["runs"][name] = row
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    # the weighting's effect within each target, at the end (the same protocol, paired)
    last = max(info["keep"])
    results["pairs"] = {}
    for a, b in [("eps", "eps-minsnr"), ("v", "v-minsnr"), ("v", "eps-minsnr")]:
        for label in SAMPLERS:
            (sa, sha), (sb, shb) = scores[(a, last, label)], scores[(b, last, label)]
            d, d2 = paired_difference(sa, sb), paired_difference(sha, shb)
            results["pairs"][f"{b} vs {a} @ {last}"] = {"diff": d["diff"], "se": d["se"], "shapes_diff": d2["diff"],
                                                        "shapes_se": d2["se"]}
            print(f"{b} vs {a} at step {last}: KID x1e3 {1e3 * d['diff']:+.2f} +- {1e3 * d['se']:.2f}, "
                  f"shapes {1e3 * d2['diff']:+.1f} +- {1e3 * d2['se']:.1f}", flush=True)
    m = min(PROTOCOL_SAMPLES, len(reference.a))
    f = reference.score(reference.a[:m])
    results["floor"] = {"kid": f["kid"], "kid_se": f["kid_se"], "swd": f["swd"], "n": m,
                        "shapes_kid": shapes.score(shapes.a[:m])["kid"]}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


FEW = {"dpm++2m-5": dict(sampler="dpm++2m", steps=5, spacing="karras", sigma_max=80.0),
       "heun-5": dict(sampler="heun", steps=5, spacing="karras", sigma_max=80.0, churn=1.25),
       "dpm++2m-10": dict(sampler="dpm++2m", steps=10, spacing="karras", sigma_max=80.0),
       "heun-8": dict(sampler="heun", steps=8, spacing="karras", sigma_max=80.0, churn=2.0)}


def few_step(images, out):
    """eps and v at the end of training with fewer evaluations: the fewest that are not worse than
    the same network's Heun-10 (19 evaluations) by more than 2 paired standard errors."""
    reference = ScoreReference(images, feature_fn=detail_feature_fn)
    results = json.loads((out / "results.json").read_text())
    results["few_step"] = {}
    for name in ("eps", "v"):
        profile = profile_for(name)
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        step = max(json.loads((RUNS / name / "train.json").read_text())["keep"])
        model = build_unet(profile)
        model.load_weights(RUNS / name / f"ema_{step}.weights.h5")
        base = reference.score(draw(model, schedule, profile, SAMPLERS["heun-10"],
                                    RUNS / name / f"samples_{step}_heun-10.npz"), with_subsets=True)
        rows = {}
        for label, kw in FEW.items():
            s = reference.score(draw(model, schedule, profile, kw, RUNS / name / f"samples_{step}_{label}.npz"),
                                with_subsets=True)
            d = paired_difference(base, s)
            rows[label] = {"nfe": network_evaluations(kw["sampler"], kw["steps"]), "kid": s["kid"],
                           "kid_se": s["kid_se"], "swd": s["swd"], "vs_heun10": d["diff"], "vs_heun10_se": d["se"],
                           "as_good": not d["a_wins"]}
            print(f"{name:4s} {label:11s} NFE {rows[label]['nfe']:3d}  KID x1e3 {1e3 * s['kid']:6.2f} +- "
                  f"{1e3 * s['kid_se']:4.2f}  SWD {s['swd']:5.1f}  vs its heun-10 {1e3 * d['diff']:+.2f} +- "
                  f"{1e3 * d['se']:.2f}", flush=True)
        results["few_step"][name] = rows
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["train", "score", "few-step"])
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    out = HERE
    out.mkdir(parents=True, exist_ok=True)
    images, _ = read_image_folder(default_dataset_path(), get_profile("cpu").image_size)
    if args.what == "train":
        for name in args.only or VARIANTS:
            train(name, images)
    elif args.what == "score":
        score(images, out)
    else:
        few_step(images, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
