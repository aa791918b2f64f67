"""Every sampler scored by the course's evaluation protocol on the shipped reference weights (lesson 08).

    .venv/bin/python notebooks/studies/samplers/compare_samplers.py                      # diagnosis, then the sweep
    .venv/bin/python notebooks/studies/samplers/compare_samplers.py --part diagnosis     # one part
    .venv/bin/python notebooks/studies/samplers/compare_samplers.py --num-samples 64     # a quick look (not the protocol)
    .venv/bin/python notebooks/studies/samplers/compare_samplers.py --recount            # network evaluations only

The protocol (lesson 11): n = 512 samples from fresh seeds (1000, 1001, ... one per batch of 128:
seeds no lesson draws previews with), one ``ScoreReference`` for every contender (the same real
half B and the same subsets), KID in the calibrated detail network +- its standard error, SWD,
and the whole-picture random-network KID ("shapes and colours"); a contender differs from DDPM-1000
only when the paired KID difference exceeds 2 paired standard errors (in the detail score, the
calibrated one; the whole-picture KID's paired difference is reported beside it). Every sampler starts from the
same noise z for the same seed.

Two parts. **diagnosis**: DDIM (eta = 0) and DPM-Solver++(2M) at 10 and 20 evaluations as lesson 08
first ran them, then one change at a time: the start (t = 999, sigma ~2e4, vs sigma <= 80), x0
clipping (on / off / dynamic), the spacing (uniform in t vs Karras rho = 7), the last step.
**sweep**: each sampler with the fixes at several numbers of network evaluations (NFE).
Writes notebooks/studies/samplers/results.json (read by lessons 08 and 09) and a 16-sample grid per
contender, next to this script; samples are cached in its cache/ (not committed), so an interrupted run
continues.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import ddpm_lessons  # noqa: F401  (quiets TensorFlow's start-up logs)
from ddpm_lessons import plotting
from ddpm_lessons.data import default_dataset_path, read_image_folder
from ddpm_lessons.metrics import (PROTOCOL_SAMPLES, ScoreReference, detail_feature_fn, paired_difference,
                                  random_feature_fn)
from ddpm_lessons.profiles import get_profile
from ddpm_lessons.sampling import generate, network_evaluations, timestep_grid
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import REFERENCE_DIR, load_reference_weights, reference_prediction
from ddpm_lessons.unet import build_unet

HERE = Path(__file__).resolve().parent          # notebooks/studies/samplers: results, grids, cache/
SEED = 1000                        # fresh: previews and lessons draw with seeds 0..63
BATCH = 128
REFERENCE = "ddpm-1000"


def reference_id() -> str:
    """The first 10 hex digits of the SHA-1 of the shipped reference weights: names the sample cache."""
    import hashlib
    weights = sorted(p for p in REFERENCE_DIR.iterdir() if ".weights." in p.name or p.suffix == ".npz")
    return hashlib.sha1(b"".join(p.read_bytes() for p in weights)).hexdigest()[:10]


def contender(sampler, steps, eta=0.0, sigma_max=None, clip="1", spacing="uniform", churn=0.0):
    return {"sampler": sampler, "steps": steps, "eta": eta, "sigma_max": sigma_max, "clip": clip,
            "spacing": spacing, "churn": churn}


def name_of(c):
    s = f"{c['sampler']}-{c['steps']}"
    if c["sampler"] == "ddim":
        s += f" eta={c['eta']:g}"
    if c["sampler"] == "heun":
        s += f" churn={c['churn']:g}"
    if c["sampler"] != "ddpm":
        s += f" start={'999' if c['sigma_max'] is None else 'sigma' + format(c['sigma_max'], 'g')}"
        s += f" clip={c['clip']} {c['spacing']}"
    return s


DIAGNOSIS = [contender("ddpm", 1000, eta=1.0)]
for _sampler in ("ddim", "dpm++2m"):                                             # 10 evaluations each
    DIAGNOSIS += [contender(_sampler, 10),                                       # as lesson 08 ran them
                  contender(_sampler, 10, sigma_max=80.0),                       # the start only
                  contender(_sampler, 10, clip="none"),                          # clipping only
                  contender(_sampler, 10, clip="dynamic"),
                  contender(_sampler, 10, spacing="karras"),                     # spacing only
                  contender(_sampler, 10, sigma_max=80.0, clip="none"),
                  contender(_sampler, 10, sigma_max=80.0, spacing="karras")]
DIAGNOSIS += [contender("ddim", 10, eta=1.0), contender("ddim", 10, eta=1.0, sigma_max=80.0)]

SWEEP = []
for _nfe in (5, 10, 15, 20, 30):
    SWEEP += [contender("ddim", _nfe, sigma_max=80.0, spacing="karras"),
              contender("ddim", _nfe, eta=1.0, sigma_max=80.0),
              contender("dpm++2m", _nfe, sigma_max=80.0, spacing="karras")]
for _levels in (3, 5, 8, 10, 15):                                                # NFE 5, 9, 15, 19, 29
    SWEEP += [contender("heun", _levels, sigma_max=80.0, spacing="karras"),
              contender("heun", _levels, sigma_max=80.0, spacing="karras", churn=0.25 * _levels)]


def evaluations_made(c, schedule) -> int:
    """The network evaluations the sampler makes: counted on the grid it walks (``timestep_grid``), whose
    levels can merge after rounding to trained timesteps (Karras spacing from t = 999: 10 -> 7)."""
    if c["sampler"] == "ddpm":
        return network_evaluations("ddpm", c["steps"], schedule.T)
    levels = len(timestep_grid(schedule, c["steps"], c["spacing"], c["sigma_max"])) - 1
    return network_evaluations(c["sampler"], levels, schedule.T)


def clip_value(c):
    return {"1": 1.0, "none": None, "dynamic": "dynamic"}[c["clip"]]


def draw(c, model, schedule, n, cache_dir, prediction="eps"):
    """(samples in [-1, 1], seconds to draw them): from the cache, else drawn and cached."""
    name = name_of(c)
    cache = cache_dir / f"{name.replace(' ', '_').replace('=', '')}_n{n}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return f["samples"].astype(np.float32) / 127.5 - 1.0, float(f["seconds"])
    t0 = time.perf_counter()
    x = generate(model, schedule, n, sampler=c["sampler"], steps=c["steps"], eta=c["eta"], seed=SEED,
                 batch_size=BATCH, spacing=c["spacing"], sigma_max=c["sigma_max"], churn=c["churn"],
                 clip_x0=clip_value(c), prediction=prediction)
    seconds = time.perf_counter() - t0
    x = np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
    np.savez_compressed(cache, samples=x, seconds=seconds)
    print(f"drew {name}: {seconds:.0f} s", flush=True)
    return x.astype(np.float32) / 127.5 - 1.0, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=PROTOCOL_SAMPLES)
    p.add_argument("--part", choices=["diagnosis", "sweep", "all"], default="all")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--generate-only", action="store_true", help="draw and cache the samples, score nothing")
    p.add_argument("--recount", action="store_true",
                   help="only recount the network evaluations of every row in results.json (no sampling, no scores)")
    args = p.parse_args(argv)
    out, n = Path(args.out), args.num_samples
    profile = get_profile("cpu")
    if args.recount:
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        results = json.loads((out / "results.json").read_text())
        for name, row in results["runs"].items():
            nfe = evaluations_made(row, schedule)
            if nfe != row["nfe"]:
                print(f"{name}: {row['nfe']} -> {nfe} network evaluations")
                row["nfe"] = nfe
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return 0
    prediction = reference_prediction()
    model = load_reference_weights(build_unet(profile), prediction)
    cache_dir = out / "cache" / reference_id()        # samples of other reference weights are not reused
    cache_dir.mkdir(parents=True, exist_ok=True)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    parts = {"diagnosis": DIAGNOSIS, "sweep": SWEEP}
    todo = [c for part in (parts if args.part == "all" else [args.part]) for c in parts[part]]
    todo = [DIAGNOSIS[0]] + [c for c in todo if c is not DIAGNOSIS[0]]            # DDPM-1000 first
    samples = {}
    for c in (todo[1:] if args.generate_only else todo):                          # (drawing only: not DDPM-1000)
        samples[name_of(c)] = draw(c, model, schedule, n, cache_dir, prediction)
        if args.generate_only:
            samples.pop(name_of(c))
    if args.generate_only:
        return 0
    images, _ = read_image_folder(default_dataset_path(), profile.image_size)
    detail = ScoreReference(images, feature_fn=detail_feature_fn)
    shapes = ScoreReference(images, feature_fn=random_feature_fn)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if (results.get("num_samples") != n or results.get("protocol") != "detail-kid"
            or results.get("reference", {}).get("id", reference_id()) != reference_id()):
        results = {"num_samples": n, "protocol": "detail-kid", "seed": SEED, "runs": {}}
    results["reference"] = {"id": reference_id(), "prediction": prediction}
    m = min(n, len(detail.a))
    real = detail.score(detail.a[:m], with_subsets=True)
    results["floor"] = {"kid": real["kid"], "kid_se": real["kid_se"], "swd": real["swd"],
                        "shapes_kid": shapes.score(shapes.a[:m])["kid"], "n": m}
    subsets = {}
    done = set()
    for c in todo:
        name = name_of(c)
        if name in done:
            continue
        done.add(name)
        x, seconds = samples[name]
        s, sh = detail.score(x, with_subsets=True), shapes.score(x, with_subsets=True)
        subsets[name] = (s, sh)
        row = {**c, "nfe": evaluations_made(c, schedule),
               "seconds": round(seconds, 1), "kid": s["kid"], "kid_se": s["kid_se"], "swd": s["swd"],
               "shapes_kid": sh["kid"], "shapes_kid_se": sh["kid_se"],
               "parts": [p for p in parts if c in parts[p]]}
        if name != REFERENCE:
            d = paired_difference(subsets[REFERENCE][0], s)     # KID(this) - KID(DDPM-1000), paired
            d2 = paired_difference(subsets[REFERENCE][1], sh)   # the same in the whole-picture features
            row.update(vs_ddpm=d["diff"], vs_ddpm_se=d["se"], reaches_ddpm=not d["a_wins"],
                       shapes_vs_ddpm=d2["diff"], shapes_vs_ddpm_se=d2["se"], shapes_reach_ddpm=not d2["a_wins"])
        results["runs"][name] = row
        plotting.save_grid(out / f"{name.replace(' ', '_').replace('=', '')}.png", x[:16], 8)
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        vs = (f"  vs DDPM {1e3 * row['vs_ddpm']:+6.2f} +- {1e3 * row['vs_ddpm_se']:4.2f}"
              f"{' reaches' if row['reaches_ddpm'] else '        '}"
              f"  shapes vs DDPM {1e3 * row['shapes_vs_ddpm']:+6.1f} +- {1e3 * row['shapes_vs_ddpm_se']:4.1f}"
              f"{' reaches' if row['shapes_reach_ddpm'] else ''}") if "vs_ddpm" in row else ""
        print(f"{name:48s} NFE {row['nfe']:4d}  KID x1e3 {1e3 * s['kid']:6.2f} +- {1e3 * s['kid_se']:4.2f}  "
              f"SWD {s['swd']:5.1f}  shapes {1e3 * row['shapes_kid']:6.1f}{vs}  {seconds:5.0f} s", flush=True)
    f = results["floor"]
    print(f"{'real (floor)':48s}           KID x1e3 {1e3 * f['kid']:6.2f} +- {1e3 * f['kid_se']:4.2f}  "
          f"SWD {f['swd']:5.1f}  shapes {1e3 * f['shapes_kid']:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
