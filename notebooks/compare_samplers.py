"""Score every sampler at several step counts on the shipped reference checkpoint (lesson 08).

    .venv/bin/python notebooks/compare_samplers.py                    # 256 samples each
    .venv/bin/python notebooks/compare_samplers.py --num-samples 64   # a quick look

Same weights (``assets/reference_cpu``), same seeds (hence the same x_T for every sampler), the
score of lesson 11 (KID in the course feature space with its standard error, and SWD) against
half of the shipped images, with the real-vs-real floor at the same sample count. Writes
notebooks/samplers/results.json (read by lesson 08) and a grid of the first 16 samples per run.
A finished entry is not run again, so an interrupted comparison continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ddpm_lessons  # noqa: F401  (quiets TensorFlow's start-up logs)
from ddpm_lessons import plotting
from ddpm_lessons.data import default_dataset_path, read_image_folder
from ddpm_lessons.metrics import ScoreReference
from ddpm_lessons.profiles import get_profile
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import load_reference_weights
from ddpm_lessons.unet import build_unet

# (sampler, eta) -> step counts
RUNS = {("ddim", 1.0): [10, 20, 50, 100],
        ("ddim", 0.0): [10, 20, 50, 100],
        ("dpm++2m", 0.0): [10, 20, 50],
        ("ddpm", 1.0): [1000]}


def label(sampler, eta, steps):
    return f"{sampler}-{steps}" + (f" eta={eta:g}" if sampler == "ddim" else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=str(Path(__file__).parent / "samplers"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profile = get_profile("cpu")
    model = load_reference_weights(build_unet(profile))
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    images, _ = read_image_folder(default_dataset_path(), profile.image_size)
    reference = ScoreReference(images)
    n = args.num_samples
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if results.get("num_samples") != n:
        results = {"num_samples": n, "runs": {}}
    floor = reference.score(reference.a[:n])
    results["floor"] = {"kid": floor["kid"], "kid_se": floor["kid_se"], "swd": floor["swd"]}
    for (sampler, eta), step_counts in RUNS.items():
        for steps in step_counts:
            name = label(sampler, eta, steps)
            if name in results["runs"]:
                continue
            t0 = time.perf_counter()
            x = generate(model, schedule, n, sampler=sampler, steps=steps, eta=eta, seed=0,
                         batch_size=args.batch_size)
            seconds = time.perf_counter() - t0
            s = reference.score(x)
            results["runs"][name] = {"sampler": sampler, "eta": eta, "steps": steps,
                                     "network_evaluations": schedule.T if sampler == "ddpm" else steps,
                                     "seconds": round(seconds, 1), "kid": s["kid"], "kid_se": s["kid_se"],
                                     "swd": s["swd"]}
            plotting.save_grid(out / f"{name.replace(' ', '_').replace('=', '')}.png", x[:16], 8)
            results_file.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{name:22s} KID x1e3 {1e3 * s['kid']:6.1f} +- {1e3 * s['kid_se']:4.1f}   "
                  f"SWD x1e3 {s['swd']:5.1f}   {seconds:6.1f} s", flush=True)
    print(f"{'real (floor)':22s} KID x1e3 {1e3 * floor['kid']:6.1f} +- {1e3 * floor['kid_se']:4.1f}   "
          f"SWD x1e3 {floor['swd']:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
