"""Flow matching against DDPM's v-prediction at equal training compute, judged by the protocol (lesson 15).

    .venv/bin/python notebooks/studies/flow/compare_flow.py train       # the four runs below (~70 min)
    .venv/bin/python notebooks/studies/flow/compare_flow.py train --only reflow
    .venv/bin/python notebooks/studies/flow/compare_flow.py score       # the protocol at 1-20 network evaluations

Runs of the `cpu` profile on the shipped portraits, identical but for the objective: the same seed,
data order, steps (1,800), batch (32), learning rate, EMA and precision (so the same compute):
**v** (the course's recipe: DDPM's cosine schedule, v-prediction), **flow** (the straight path
x_t = (1 - t) x0 + t eps, velocity target, t ~ U(0, 1); flow.py) and **flow-ln** (the same with SD3's
logit-normal t). **reflow** is rectified flow's second round: 8,192 couples (z, x0) drawn from flow's EMA
network (Heun, 19 evaluations), then 1,800 more steps from flow's weights on those couples (twice flow's
training compute, plus the drawing). Each keeps its EMA weights and loss history in runs/flow/<name>/
(not committed).

The protocol (lesson 11): n = 512 samples from fresh seeds (4000, 4001, ... one per batch of 128), one
ScoreReference per feature network for every contender (the same real subsets), detail KID +- its
standard error, SWD, shapes KID; a difference counts only beyond 2 paired standard errors. Each method is
sampled at 1, 2, 4, 8, 10 and 20 network evaluations with each of its samplers (v: DDIM eta = 0 and
DPM-Solver++(2M), Karras spacing from sigma 80, lesson 08's fixes; flow: Euler, Heun with the largest
number of levels that fits, 2K - 1 <= the budget, and DPM-Solver++(2M) on the straight path from 4 steps on),
and its best sampler at each budget (the lowest detail KID) is its row. Writes notebooks/studies/flow/results.json and a 16-sample grid per contender here.
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
from ddpm_lessons.flow import pair_dataset, reflow_pairs
from ddpm_lessons.metrics import (PROTOCOL_SAMPLES, ScoreReference, detail_feature_fn, paired_difference,
                                  random_feature_fn)
from ddpm_lessons.profiles import get_profile, network_evaluations
from ddpm_lessons.sampling import generate_cached
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import TrainConfig, Trainer
from ddpm_lessons.unet import build_unet

HERE = Path(__file__).resolve().parent          # notebooks/studies/flow: results and grids
ROOT = HERE.parents[2]
RUNS = ROOT / "runs" / "flow"
SEED = 4000                        # fresh sampling seeds (previews 0.., samplers study 1000, targets 2000)
BUDGETS = (1, 2, 4, 8, 10, 20)     # network evaluations


NAMES = ("v", "flow", "flow-ln", "reflow")
PAIRS, PAIR_SEED = 8192, 5000      # reflow's couples (z, x0): from seeds 5000.. (one per batch of 128)


def profile_for(name):
    cpu = get_profile("cpu")
    if name == "v":
        return cpu
    return cpu.replace(prediction="flow", time_sampling="logit-normal" if name == "flow-ln" else "uniform",
                       sampler="euler", sample_steps=10, sample_spacing="uniform", sample_sigma_max=None)


def samplers_for(name, budget):
    """{label: generate keywords} of ``name``'s samplers at ``budget`` network evaluations."""
    if name == "v":
        return {f"ddim-{budget}": dict(sampler="ddim", steps=budget, eta=0.0, spacing="karras", sigma_max=80.0),
                f"dpm++2m-{budget}": dict(sampler="dpm++2m", steps=budget, spacing="karras", sigma_max=80.0)}
    out = {f"euler-{budget}": dict(sampler="euler", steps=budget)}
    levels = (budget + 1) // 2
    if levels >= 2:
        out[f"heun-{levels}"] = dict(sampler="heun", steps=levels)
    if budget >= 4:                    # up to 3 steps flow's DPM-Solver++(2M) is Euler (its first two steps have no history)
        out[f"dpm++2m-{budget}"] = dict(sampler="dpm++2m", steps=budget)
    return out


def reflow_data(schedule, batch_size):
    """Reflow's couples from the first flow run's EMA network (Heun, 10 levels = 19 evaluations, its best
    sampler at 20), cached in runs/flow/reflow/pairs.npz: (the dataset of pairs, seconds spent drawing them)."""
    cache = RUNS / "reflow" / "pairs.npz"
    seconds = 0.0
    if not cache.exists():
        first = build_unet(profile_for("flow"))
        first.load_weights(RUNS / "flow" / "ema.weights.h5")
        t0 = time.perf_counter()
        noise, pictures = reflow_pairs(first, schedule, PAIRS, seed=PAIR_SEED, sampler="heun", steps=10)
        seconds = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, noise=noise, images=pictures, seconds=seconds)
        print(f"{PAIRS} pairs drawn in {seconds:.0f} s", flush=True)
    with np.load(cache) as f:
        noise, pictures, seconds = f["noise"], f["images"], float(f["seconds"])
    return pair_dataset(noise, pictures, batch_size, seed=0), seconds


def train(name, images):
    """One contender's run: v, flow (t ~ U(0, 1)) and flow-ln (logit-normal t) from scratch on the portraits;
    reflow starts from flow's EMA weights and trains the same number of steps on its pairs."""
    profile = profile_for(name)
    keras.utils.set_random_seed(0)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    model = build_unet(profile)
    steps = profile.train_steps
    run_dir = RUNS / name
    pair_seconds = None
    if name == "reflow":
        data, pair_seconds = reflow_data(schedule, profile.batch_size)
        model.load_weights(RUNS / "flow" / "ema.weights.h5")      # before the Trainer: its EMA starts here too
    else:
        data = make_dataset(images, profile.batch_size, seed=0)
    trainer = Trainer(model, schedule, TrainConfig.from_profile(profile), checkpoint_dir=run_dir / "checkpoints")
    start = trainer.restore()
    print(f"\n== {name}: prediction {profile.prediction}, time sampling {profile.time_sampling}, "
          f"{steps} steps from {start}", flush=True)
    t0 = time.perf_counter()
    trainer.fit(data, steps, progress="lines", progress_seconds=60)
    trainer.ema_model.save_weights(run_dir / "ema.weights.h5")
    (run_dir / "train.json").write_text(json.dumps({
        "steps": steps, "seconds": round(time.perf_counter() - t0, 1), "prediction": profile.prediction,
        "time_sampling": profile.time_sampling, "pair_seconds": pair_seconds, "history": trainer.history}, indent=1))


def draw(model, schedule, profile, kw, cache):
    """512 samples of ``model`` with sampler ``kw`` (cached as uint8 in ``cache``), in [-1, 1]."""
    return generate_cached(cache, model, schedule, PROTOCOL_SAMPLES, seed=SEED, batch_size=128,
                           prediction=profile.prediction, **kw)


def paired_rows(results, subsets, base, name):
    """{budget: ``name``'s best sampler against ``base``'s best, paired on the same real subsets}: the labels,
    KID(name) - KID(base) +- SE in detail and shapes, and whether name wins or loses beyond 2 paired SEs."""
    rows = {}
    for budget in BUDGETS:
        a, b = results["runs"][base]["best"][str(budget)], results["runs"][name]["best"][str(budget)]
        d = paired_difference(subsets[(base, a)][0], subsets[(name, b)][0])
        d2 = paired_difference(subsets[(base, a)][1], subsets[(name, b)][1])
        rows[str(budget)] = {name: b, base: a, "diff": d["diff"], "se": d["se"], "wins": d["b_wins"],
                             "loses": d["a_wins"], "shapes_diff": d2["diff"], "shapes_se": d2["se"],
                             "shapes_wins": d2["b_wins"], "shapes_loses": d2["a_wins"]}
        print(f"NFE {budget:2d}: {name} ({b}) - {base} ({a}) detail KID x1e3 {1e3 * d['diff']:+.2f} +- "
              f"{1e3 * d['se']:.2f}  shapes {1e3 * d2['diff']:+.1f} +- {1e3 * d2['se']:.1f}", flush=True)
    return rows


def score(images, out):
    detail = ScoreReference(images, feature_fn=detail_feature_fn)
    shapes = ScoreReference(images, feature_fn=random_feature_fn)
    results = {"num_samples": PROTOCOL_SAMPLES, "seed": SEED, "budgets": list(BUDGETS), "runs": {}}
    subsets = {}
    for name in NAMES:
        profile = profile_for(name)
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        model = build_unet(profile)
        model.load_weights(RUNS / name / "ema.weights.h5")
        info = json.loads((RUNS / name / "train.json").read_text())
        row = {"prediction": profile.prediction, "time_sampling": profile.time_sampling,
               "train_seconds": info["seconds"], "pair_seconds": info.get("pair_seconds"), "steps": info["steps"],
               "final_loss": float(np.mean(info["history"]["loss"][-20:])), "samplers": {}, "best": {}}
        for budget in BUDGETS:
            best = None
            for label, kw in samplers_for(name, budget).items():
                t0 = time.perf_counter()
                x = draw(model, schedule, profile, kw, RUNS / name / f"samples_{label}.npz")
                seconds = time.perf_counter() - t0
                s, sh = detail.score(x, with_subsets=True), shapes.score(x, with_subsets=True)
                subsets[(name, label)] = (s, sh)
                row["samplers"][label] = {"nfe": network_evaluations(kw["sampler"], kw["steps"]), "kid": s["kid"],
                                          "kid_se": s["kid_se"], "swd": s["swd"], "shapes_kid": sh["kid"],
                                          "shapes_kid_se": sh["kid_se"], "seconds": round(seconds, 1)}
                plotting.save_grid(out / f"{name}_{label}.png", x[:16], 8)
                print(f"{name:4s} {label:12s} NFE {row['samplers'][label]['nfe']:3d}  KID x1e3 {1e3 * s['kid']:7.2f} +- "
                      f"{1e3 * s['kid_se']:5.2f}  SWD {s['swd']:6.1f}  shapes {1e3 * sh['kid']:6.1f}", flush=True)
                if best is None or s["kid"] < row["samplers"][best]["kid"]:
                    best = label
            row["best"][str(budget)] = best
        results["runs"][name] = row
        h = info["history"]                     # the loss as logged, smoothed (EMA 0.9) for the lesson's plot
        smooth, acc = [], None
        for value in h["loss"]:
            acc = value if acc is None else 0.9 * acc + 0.1 * value
            smooth.append(round(acc, 5))
        results.setdefault("loss_curves", {})[name] = {"step": h["step"], "loss": smooth}
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    # every flow run's best against v's best, and the variants' against flow's (uniform t), per budget
    results["vs_v"] = {name: paired_rows(results, subsets, "v", name) for name in NAMES[1:]}
    results["vs_flow"] = {name: paired_rows(results, subsets, "flow", name) for name in ("flow-ln", "reflow")}
    results["flow_vs_v"] = {budget: {"flow": r["flow"], "v": r["v"], "diff": r["diff"], "se": r["se"],   # lesson 15's
                                     "flow_wins": r["wins"], "v_wins": r["loses"], "shapes_diff": r["shapes_diff"],
                                     "shapes_se": r["shapes_se"]} for budget, r in results["vs_v"]["flow"].items()}
    # the fewest evaluations at which each method is not worse than the other's 10-evaluation score
    results["reaches_other_at_10"] = {}
    for a, b in (("flow", "v"), ("v", "flow"), ("flow-ln", "v"), ("v", "flow-ln"), ("reflow", "v"), ("v", "reflow")):
        target = subsets[(b, results["runs"][b]["best"]["10"])][0]
        first = None
        for budget in BUDGETS:
            d = paired_difference(target, subsets[(a, results["runs"][a]["best"][str(budget)])][0])
            if not d["a_wins"]:                      # not worse than the target beyond 2 paired SEs
                first = budget
                break
        key = a if b == "v" else "v" if b == "flow" else f"v vs {b}"       # "flow", "v" (against flow), ...
        results["reaches_other_at_10"][key] = first
        print(f"{a} first reaches {b}'s 10-evaluation detail score at {first} evaluations", flush=True)
    m = min(PROTOCOL_SAMPLES, len(detail.a))
    f = detail.score(detail.a[:m])
    results["floor"] = {"kid": f["kid"], "kid_se": f["kid_se"], "swd": f["swd"], "n": m,
                        "shapes_kid": shapes.score(shapes.a[:m])["kid"]}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["train", "score"])
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    images, _ = read_image_folder(default_dataset_path(), get_profile("cpu").image_size)
    if args.what == "train":
        for name in args.only or NAMES:
            train(name, images)
    else:
        score(images, HERE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
