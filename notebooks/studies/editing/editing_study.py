"""Lesson 16's measurements: SDEdit against strength, inpainting (replacement against RePaint's resampling),
and the DDIM round trip, on the course's shipped reference network (v-prediction, the cpu profile).

    .venv/bin/python notebooks/studies/editing/editing_study.py          # 35 minutes on 2 CPU cores (2026-12-07, shared)

The protocol (lesson 11): n = 512, one ``ScoreReference`` for every contender (the real pictures split once
into halves A and B with seed 0; every score is against half B), detail KID +- its standard error and SWD,
a "win" only beyond 2 paired standard errors. Sampling seeds 6000, 6001, ... one per batch of 128 (fresh:
previews use 0.., the samplers study 1000.., targets 2000.., flow 4000.., reflow's couples 5000..).

SDEdit's inputs are *sketches*: each of the 512 pictures of half A averaged over 4 x 4 blocks (a 8 x 8
mosaic of its colours, shown at 32 x 32), the kind of coarse colour layout Meng et al. start from. Their
distance to the output and the output's score against half B are measured at strengths 0, 0.1, ..., 1,
DDIM on 20 steps (at strength s: round(20 s) steps from t0 = s (T - 1)), eta = 0 and eta = 1.

Inpainting's inputs are the same 512 pictures of half A with the centre square (16 x 16) lost. Its score
is the course's SWD restricted to the hole: the 16 x 16 centre crops of the outputs against the crops of
half B (pyramid levels 16 and 8), beside the unconditional samples' crops; "seam" is the mean |jump| between
the pixel pairs that straddle the hole's edge (one inside, one outside), beside the real pictures' own.
Writes results.json beside this file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from ddpm_lessons.data import default_dataset_path, from_unit_range, read_image_folder, to_unit_range  # noqa: E402
from ddpm_lessons.editing import block_sketch, inpaint, inpaint_evaluations, mask_preset, round_trip, sdedit  # noqa: E402
from ddpm_lessons.metrics import (PROTOCOL_SAMPLES, ScoreReference, detail_feature_fn,  # noqa: E402
                                  paired_difference)
from ddpm_lessons.profiles import get_profile  # noqa: E402
from ddpm_lessons.sampling import ddim_sample, model_eps_fn  # noqa: E402
from ddpm_lessons.schedule import NoiseSchedule  # noqa: E402
from ddpm_lessons.unet import build_unet  # noqa: E402
from ddpm_lessons.weights import load_reference_weights, reference_prediction  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED, BATCH = 6000, 128
STRENGTHS = tuple(round(0.1 * k, 1) for k in range(11))
SDEDIT_STEPS = 20
ROUND_TRIP_STEPS = (10, 50, 100)
ROUND_TRIP_PICTURES = 64
INPAINT = {"replacement, 50 steps": dict(steps=50, resample=1),
           "replacement, 80 steps": dict(steps=80, resample=1),
           "RePaint, 20 steps x 5": dict(steps=20, resample=5, jump=5)}


def batched(fn, inputs, **kw):
    """fn(inputs[batch], seed=SEED + i, **kw) over batches of BATCH, concatenated."""
    return np.concatenate([fn(inputs[s:s + BATCH], seed=SEED + i, **kw)
                           for i, s in enumerate(range(0, len(inputs), BATCH))])


def hole_crop(images):
    """The centre square that ``mask_preset("centre-square")`` loses: (N, H/2, W/2, C)."""
    h = images.shape[1]
    return images[:, h // 4: h - h // 4, h // 4: h - h // 4]


def seam(images, mask):
    """Mean |x_in - x_out| over the pixel pairs (4-neighbours) with one pixel in the hole and one outside."""
    keep = mask[..., 0] > 0.5
    jumps = []
    for axis in (0, 1):
        a, b = keep, np.roll(keep, -1, axis)
        edge = a != b
        if axis == 0:
            edge[-1] = False
        else:
            edge[:, -1] = False
        x, y = images, np.roll(images, -1, axis + 1)
        jumps.append(np.abs(x - y)[:, edge].reshape(len(images), -1))
    return float(np.concatenate(jumps, 1).mean())


def score(reference, samples):
    out = reference.score(samples, with_subsets=True)
    return {"kid_x1e3": 1e3 * out["kid"], "kid_se_x1e3": 1e3 * out["kid_se"], "swd_x1e3": out["swd"],
            "kid": out["kid"], "kid_subsets": [float(k) for k in out["kid_subsets"]], "n": out["n"]}


def main(quick=False):
    global STRENGTHS
    t_start = time.time()
    profile = get_profile("cpu")
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    model = build_unet(profile)
    load_reference_weights(model, reference_prediction())
    eps_fn = model_eps_fn(model, schedule, reference_prediction())
    pixels, _ = read_image_folder(default_dataset_path(), profile.image_size)
    detail = ScoreReference(pixels, feature_fn=detail_feature_fn)
    n = min(PROTOCOL_SAMPLES, len(detail.a))
    if quick:                                       # a check that the script runs: n = 32, three strengths
        n, STRENGTHS = 32, (0.0, 0.5, 1.0)
    pictures = detail.a[:n]
    results = {"n": n, "seed": SEED, "network": "the shipped reference (cpu profile, v-prediction)",
               "floor": score(detail, detail.a[:n])}

    # ---------------------------------------------------------------- SDEdit
    sketches = block_sketch(pictures)
    results["sdedit"] = {"steps": SDEDIT_STEPS, "strengths": list(STRENGTHS), "runs": {}}
    for eta in (0.0, 1.0):
        rows = []
        for s in STRENGTHS:
            t0 = time.time()
            out = batched(lambda x, seed: sdedit(eps_fn, x, schedule, s, steps=SDEDIT_STEPS, eta=eta, seed=seed),
                          sketches)
            out = to_unit_range(from_unit_range(out))                       # as the PNG files hold them
            row = {"strength": s, "distance": float(np.abs(out - sketches).mean()),
                   "distance_to_picture": float(np.abs(out - pictures).mean()),
                   "seconds": round(time.time() - t0, 1), **score(detail, out)}
            rows.append(row)
            print(f"SDEdit eta={eta:g} strength {s:.1f}: distance {row['distance']:.3f}, detail KID "
                  f"{row['kid_x1e3']:.2f} +- {row['kid_se_x1e3']:.2f}, SWD {row['swd_x1e3']:.1f} ({row['seconds']} s)",
                  flush=True)
        results["sdedit"]["runs"][f"eta={eta:g}"] = rows

    # ---------------------------------------------------------------- inpainting
    mask = mask_preset("centre-square", profile.image_size)
    crops = ScoreReference(hole_crop(pixels), feature_fn=None)     # seed 0, same length: the same halves A, B
    results["inpainting"] = {"mask": "centre-square", "contenders": {},
                             "hole_floor_swd_x1e3": crops.score(hole_crop(pictures))["swd"],
                             "seam_real": seam(pictures, mask)}
    uncond = batched(lambda x, seed: ddim_sample(eps_fn, x.shape, schedule, num_steps=50, eta=1.0, seed=seed,
                                                 clip_x0=1.0), pictures)
    contenders = {"unconditional, 50 steps": (uncond, 50)}
    for name, kw in INPAINT.items():
        t0 = time.time()
        out = batched(lambda x, seed: inpaint(eps_fn, x, mask, schedule, eta=1.0, seed=seed, **kw), pictures)
        contenders[name] = (out, inpaint_evaluations(schedule, kw["steps"], kw.get("resample", 1), kw.get("jump", 5)))
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    for name, (out, nfe) in contenders.items():
        out = to_unit_range(from_unit_range(out))
        known = mask[..., 0] > 0.5
        row = {"network_evaluations": nfe, "hole_swd_x1e3": crops.score(hole_crop(out))["swd"],
               "seam": seam(out, mask), "known_pixels_exact": bool(np.array_equal(out[:, known], pictures[:, known])),
               **score(detail, out)}
        results["inpainting"]["contenders"][name] = row
        print(f"{name}: hole SWD {row['hole_swd_x1e3']:.1f}, seam {row['seam']:.3f} (real {results['inpainting']['seam_real']:.3f}), "
              f"detail KID {row['kid_x1e3']:.2f} +- {row['kid_se_x1e3']:.2f}", flush=True)
    c = results["inpainting"]["contenders"]
    paired = lambda a, b: {k: (1e3 * v if k in ("diff", "se") else v)
                           for k, v in paired_difference(c[a], c[b]).items()}       # KID x 1e3
    results["inpainting"]["paired"] = {
        f"{b} vs {a}": paired(a, b)
        for a, b in (("replacement, 80 steps", "RePaint, 20 steps x 5"),
                     ("replacement, 50 steps", "RePaint, 20 steps x 5"),
                     ("unconditional, 50 steps", "RePaint, 20 steps x 5"))}

    # ---------------------------------------------------------------- the DDIM round trip
    few = pictures[:ROUND_TRIP_PICTURES]
    results["round_trip"] = {"pictures": len(few), "rows": []}
    for k in ROUND_TRIP_STEPS:
        t0 = time.time()
        _, back = round_trip(eps_fn, few, schedule, steps=k)
        err = np.abs(back - few)
        per_picture = err.mean(axis=(1, 2, 3))
        row = {"steps": k, "mae": float(err.mean()), "mae_levels": float(err.mean() * 127.5),
               "worst_picture_mae": float(per_picture.max()), "median_picture_mae": float(np.median(per_picture)),
               "seconds": round(time.time() - t0, 1)}
        results["round_trip"]["rows"].append(row)
        print(f"round trip, {k} steps: mean |error| {row['mae']:.4f} ({row['mae_levels']:.1f} of 255 levels), "
              f"median picture {row['median_picture_mae']:.4f}, worst {row['worst_picture_mae']:.3f}", flush=True)

    results["minutes"] = round((time.time() - t_start) / 60, 1)
    if quick:
        print(json.dumps({k: v for k, v in results.items() if k != "sdedit"}, indent=1)[:3000])
        return
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote results.json in {results['minutes']} min")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
