"""Freeze the `cpu` recipe: network, batch, warm-up, EMA decay and precision, by the course's protocol.

    .venv/bin/python notebooks/studies/tuning/tune_cpu_profile.py time      # step time of every variant, side by side
    .venv/bin/python notebooks/studies/tuning/tune_cpu_profile.py train     # every variant (resumes; ~45 min on 2 cores)
    .venv/bin/python notebooks/studies/tuning/tune_cpu_profile.py score     # the protocol on their EMA weights

Every variant starts from the `cpu` profile (v-prediction, learning rate 1e-3, batch 32, warm-up 200,
EMA decay 0.995, 1,800 steps, bfloat16 where the CPU has it) and changes one thing. The variants get
the same **wall time**: each one's step time is measured side by side in one process (``time``) and
its step count is 1,800 x (base step time / its step time). ``base-f32`` is the same run computed in
float32: it has the same *steps*, and answers whether bfloat16 hurts.

Each run keeps three EMA averages of its weights (decay 0.99, 0.995 and 0.999: the trainer's own
and two more updated the same way after every step), so the EMA decay costs no extra runs.

The decision rule, fixed before the runs: each final EMA network draws n = 512 samples from fresh
seeds (3000...) with the few-step sampler (DPM-Solver++(2M), 10 Karras steps from sigma 80); all are
scored against the same ScoreReference (calibrated detail KID with paired standard errors, SWD, the
whole-picture KID). A variant replaces the base only if its detail KID is lower by more than 2 paired
standard errors; bfloat16 stays on only if base is not worse than base-f32 by more than 2 paired SE.
Runs live in runs/recipe/<name>/ (not committed); results in notebooks/studies/tuning/results.json, one
32-sample grid per variant in notebooks/studies/tuning/<name>.png.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ddpm_lessons  # noqa: F401  (quiets TensorFlow's start-up logs)
import keras
import numpy as np
import tensorflow as tf

from ddpm_lessons import plotting
from ddpm_lessons.data import default_dataset_path, make_dataset, read_image_folder
from ddpm_lessons.metrics import (PROTOCOL_SAMPLES, ScoreReference, detail_feature_fn, paired_difference,
                                  random_feature_fn)
from ddpm_lessons.profiles import get_profile, resolve_precision
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import TrainConfig, Trainer, ema_decay_at
from ddpm_lessons.unet import build_unet, count_params

HERE = Path(__file__).resolve().parent          # notebooks/studies/tuning: results and grids
ROOT = HERE.parents[2]
RUNS = ROOT / "runs" / "recipe"
OUT = HERE
BASE_STEPS = 1800
SEED = 3000                        # fresh sampling seeds: no lesson, preview or earlier study uses them
SAMPLER = dict(sampler="dpm++2m", steps=10, spacing="karras", sigma_max=80.0)
EXTRA_EMA = (0.99, 0.999)          # besides the trainer's own 0.995
# name -> (changes to the cpu profile, precision, equal "time" or equal "steps" with base, what it tests)
VARIANTS = {
    "base": ({}, "auto", "steps", "the cpu profile: 4 levels, attention at 16 and 8, batch 32, warm-up 200"),
    "base-f32": ({}, "float32", "steps", "the same 1,800 steps computed in float32 (does bfloat16 hurt?)"),
    "small": ({"channel_mults": (1, 2, 3), "attention_resolutions": (8,)}, "auto", "time",
              "3 levels, attention at 8 only (~half the compute per image), more steps"),
    "batch64": ({"batch_size": 64}, "auto", "time", "batch 64, fewer steps"),
    "warmup50": ({"warmup_steps": 50}, "auto", "time", "learning-rate warm-up of 50 steps instead of 200"),
}


def profile_for(name, steps=BASE_STEPS):
    changes, _, _, _ = VARIANTS[name]
    return get_profile("cpu").replace(**changes, train_steps=steps)


def precision_for(name):
    return resolve_precision(VARIANTS[name][1])[0]


def time_variants(images, rounds=3):
    """Seconds per training step of every variant, measured in this process, alternating rounds."""
    trainers = {}
    for name in VARIANTS:
        profile = profile_for(name)
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        keras.utils.set_random_seed(0)
        trainers[name] = (Trainer(build_unet(profile, precision=precision_for(name)), schedule,
                                  TrainConfig.from_profile(profile)),
                          next(iter(make_dataset(images, profile.batch_size, seed=0))))
    seconds = {name: [] for name in VARIANTS}
    for r in range(rounds):
        for name, (trainer, x0) in trainers.items():
            seconds[name].append(trainer.time_steps(x0, num_steps=8, warmup=2 if r == 0 else 1))
            print(f"round {r}: {name:9s} {seconds[name][-1]:.3f} s/step", flush=True)
    best = {name: min(s) for name, s in seconds.items()}
    steps = {}
    for name, (_, _, budget, _) in VARIANTS.items():
        steps[name] = BASE_STEPS if budget == "steps" else int(round(BASE_STEPS * best["base"] / best[name]))
    return {"seconds_per_step": best, "all_seconds": seconds, "steps": steps,
            "images_per_s": {n: profile_for(n).batch_size / s for n, s in best.items()}}


def ema_copies(trainer, decays):
    """Extra EMA averages of the trainer's weights: {decay: [tf.Variable]}, updated by the callback."""
    copies = {d: [tf.Variable(w) for w in trainer.model.trainable_variables] for d in decays}

    @tf.function
    def update(n):
        for d, vs in copies.items():
            decay = ema_decay_at(n, d)                     # the trainer's own formula, d capped
            for ema_w, w in zip(vs, trainer.model.trainable_variables):
                ema_w.assign(decay * ema_w + (1.0 - decay) * w)

    def callback(trainer_, logs):        # after step n (1-based) the trainer used update index n - 1
        update(tf.constant(float(logs["step"] - 1)))
    return copies, callback


def train(name, images, steps):
    profile = profile_for(name, steps)
    precision = precision_for(name)
    run_dir = RUNS / name
    keras.utils.set_random_seed(0)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    model = build_unet(profile, precision=precision)
    trainer = Trainer(model, schedule, TrainConfig.from_profile(profile, checkpoint_every=steps),
                      checkpoint_dir=run_dir / "checkpoints")
    if trainer.restore() >= steps:
        return
    if int(trainer.step.numpy()):
        raise RuntimeError(f"{run_dir} holds a half-finished run: the extra EMAs are not checkpointed; delete it")
    copies, callback = ema_copies(trainer, EXTRA_EMA)
    print(f"\n== {name}: {count_params(model):,} parameters, {precision}, batch {profile.batch_size}, "
          f"{steps} steps", flush=True)
    t0 = time.perf_counter()
    trainer.fit(make_dataset(images, profile.batch_size, seed=0), steps, callbacks=[callback], progress=True)
    trainer.ema_model.save_weights(run_dir / f"ema_{profile.ema_decay}.weights.h5")
    for d, vs in copies.items():
        for ema_w, v in zip(trainer.ema_model.trainable_variables, vs):
            ema_w.assign(v)
        trainer.ema_model.save_weights(run_dir / f"ema_{d}.weights.h5")
    (run_dir / "train.json").write_text(json.dumps({
        "steps": steps, "precision": precision, "batch_size": profile.batch_size,
        "parameters": count_params(model), "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(trainer._elapsed, 1),
        "final_loss": float(np.mean(trainer.history["loss"][-50:])),
        "loss_by_timestep": [None if not np.isfinite(v) else float(v) for v in trainer.loss_by_timestep()[1]]},
        indent=1))


def draw(model, schedule, profile, cache):
    """512 samples (cached as uint8), in [-1, 1]."""
    if cache.exists():
        return np.load(cache)["samples"].astype(np.float32) / 127.5 - 1.0
    x = generate(model, schedule, PROTOCOL_SAMPLES, seed=SEED, batch_size=128, prediction=profile.prediction,
                 **SAMPLER)
    x = np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
    np.savez_compressed(cache, samples=x)
    return x.astype(np.float32) / 127.5 - 1.0


def fixed_batch_loss(images, buckets=10, per_bucket=32):
    """Per-timestep-bucket loss of base's final weights computed in float32 and in bfloat16 on one
    fixed batch, the same t and the same noise: what bfloat16 changes in the network's answer."""
    profile = profile_for("base")
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    from ddpm_lessons.forward import q_sample, velocity
    rng = np.random.default_rng(0)
    x0 = next(iter(make_dataset(images, per_bucket, seed=0)))
    noise = tf.constant(rng.standard_normal(x0.shape).astype(np.float32))
    ts = [tf.constant(rng.integers(b * schedule.T // buckets, (b + 1) * schedule.T // buckets, per_bucket),
                      tf.int32) for b in range(buckets)]
    rows = {}
    for precision in ("float32", "bfloat16"):
        model = build_unet(profile, precision=precision)
        model.load_weights(RUNS / "base" / "ema_0.995.weights.h5")
        rows[precision] = [float(tf.reduce_mean(tf.square(
            velocity(x0, noise, t, schedule) - tf.cast(model([q_sample(x0, t, noise, schedule), t]), tf.float32))))
            for t in ts]
    rows["relative_difference"] = [abs(b - a) / a for a, b in zip(rows["float32"], rows["bfloat16"])]
    return rows


def score(images):
    reference = ScoreReference(images, feature_fn=detail_feature_fn)
    shapes = ScoreReference(images, feature_fn=random_feature_fn)
    results = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    results.update({"num_samples": PROTOCOL_SAMPLES, "seed": SEED, "sampler": SAMPLER, "variants": {}})
    scores = {}
    for name, (changes, _, budget, what) in VARIANTS.items():
        if not (RUNS / name / "train.json").exists():
            print(f"{name}: not trained yet (python notebooks/studies/tuning/tune_cpu_profile.py train --only {name})")
            continue
        info = json.loads((RUNS / name / "train.json").read_text())
        profile = profile_for(name, info["steps"])
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        model = build_unet(profile)                                  # samples computed in float32
        row = {"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
               "budget": budget, "what": what, "train": info, "ema": {}}
        for decay in (profile.ema_decay, 0.99, 0.999):         # the profile's own first: the pairs need it
            model.load_weights(RUNS / name / f"ema_{decay}.weights.h5")
            x = draw(model, schedule, profile, RUNS / name / f"samples_ema{decay}.npz")
            s, sh = reference.score(x, with_subsets=True), shapes.score(x, with_subsets=True)
            scores[(name, decay)] = (s, sh)
            entry = {"kid": s["kid"], "kid_se": s["kid_se"], "swd": s["swd"], "shapes_kid": sh["kid"],
                     "shapes_kid_se": sh["kid_se"]}
            if (name, decay) != ("base", 0.995):
                (b, bsh) = scores[("base", 0.995)]
                d, d2 = paired_difference(b, s), paired_difference(bsh, sh)
                entry.update(vs_base=d["diff"], vs_base_se=d["se"], wins=d["b_wins"], loses=d["a_wins"],
                             shapes_vs_base=d2["diff"], shapes_vs_base_se=d2["se"])
            row["ema"][str(decay)] = entry
            print(f"{name:9s} ema {decay:<6g} KID x1e3 {1e3 * s['kid']:6.2f} +- {1e3 * s['kid_se']:4.2f}  SWD "
                  f"{s['swd']:5.1f}  shapes {1e3 * sh['kid']:5.1f} +- {1e3 * sh['kid_se']:4.1f}"
                  + (f"  vs base {1e3 * entry['vs_base']:+6.2f} +- {1e3 * entry['vs_base_se']:4.2f}"
                     f"  shapes {1e3 * entry['shapes_vs_base']:+5.1f} +- {1e3 * entry['shapes_vs_base_se']:4.1f}"
                     if "vs_base" in entry else ""), flush=True)
            if decay == profile.ema_decay:
                plotting.save_grid(OUT / f"{name}.png", x[:32], 8)
        results["variants"][name] = row
        (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    # The bar of the run-time goal: the shipped reference checkpoint before the freeze (eps-prediction,
    # 3,000 steps at lr 2e-3), with the same sampler, seeds and reference subsets.
    from ddpm_lessons.training import load_reference_weights, reference_prediction
    if reference_prediction() == "eps":
        profile = get_profile("cpu").replace(prediction="eps")
        model = load_reference_weights(build_unet(profile))
        x = draw(model, NoiseSchedule.from_kind(profile.schedule, profile.timesteps), profile,
                 RUNS / "old_reference_samples.npz")
        s, sh = reference.score(x, with_subsets=True), shapes.score(x, with_subsets=True)
        (b, bsh) = scores[("base", 0.995)]
        d, d2 = paired_difference(s, b), paired_difference(sh, bsh)
        results["old_reference"] = {"kid": s["kid"], "kid_se": s["kid_se"], "swd": s["swd"], "shapes_kid": sh["kid"],
                                    "shapes_kid_se": sh["kid_se"], "base_vs_it": d["diff"], "base_vs_it_se": d["se"],
                                    "shapes_base_vs_it": d2["diff"], "shapes_base_vs_it_se": d2["se"]}
        print(f"old reference (eps, 3,000 steps) KID x1e3 {1e3 * s['kid']:6.2f} +- {1e3 * s['kid_se']:4.2f}  SWD "
              f"{s['swd']:5.1f}  shapes {1e3 * sh['kid']:5.1f}; base vs it {1e3 * d['diff']:+.2f} +- {1e3 * d['se']:.2f}",
              flush=True)
    m = min(PROTOCOL_SAMPLES, len(reference.a))
    f = reference.score(reference.a[:m])
    results["floor"] = {"kid": f["kid"], "kid_se": f["kid_se"], "swd": f["swd"], "n": m,
                        "shapes_kid": shapes.score(shapes.a[:m])["kid"]}
    results["bfloat16_fixed_batch"] = fixed_batch_loss(images)
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["time", "train", "score"])
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    images, _ = read_image_folder(default_dataset_path(), get_profile("cpu").image_size)
    results = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    if args.what == "time":
        results = {"timing": time_variants(images)}        # a new timing starts a new table
        (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results["timing"]["steps"]))
    elif args.what == "train":
        for name in args.only or VARIANTS:
            train(name, images, results["timing"]["steps"][name])
    else:
        score(images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
