"""Is the score calibrated? Candidate scores on sets whose order we know (lesson 11, section 7).

For each folder (the shipped emoji portraits, data/twemoji-things which nothing was tuned on, and the
photographs of data/build_tuxpaint_photos.py when they have been built),
at 32x32, n = min(512, half the folder) images per set, every set scored against the same real
half B with the same subsets (so differences are paired):

    real       n images of the other half A (the floor: a perfect model)
    final      a finished run's samples          (<folder>_final.npz, in this folder)
    early      the same recipe after 200 steps   (<folder>_early.npz)
    blobs      half A phase-randomised: each picture's colours and textures, no thing in it
    blur1/2    half A blurred, sigma = 1 / 2 px
    noise      Gaussian noise, clipped
    collapsed  8 images of half A, each repeated n/8 times (a model that has collapsed)

Two orders must hold, each step by more than 2 paired standard errors: real < final < early (training
progress) and real < blur 1 px < blur 2 px < noise; collapsed must score clearly above real, and blobs
above early (a score that sees things).
Candidates: KID in the emoji feature network (trained on the shipped data), KID in a *random*
convolutional network (never trained: the same on any folder), the same network averaged over a 4x4
grid instead of the whole picture (``layout_feature_fn``), KID in another random network applied to
the pictures' fine detail (``detail_feature_fn``: x - blur(x), amplified 4x), and SWD. Writes
notebooks/studies/calibration/results.json; ~8 minutes:

    .venv/bin/python notebooks/studies/calibration/calibrate_scores.py
"""
import json
import time
from pathlib import Path

import numpy as np

from ddpm_lessons.data import default_dataset_path, read_image_folder
from ddpm_lessons.metrics import (as_unit_float, detail_feature_fn, feature_fn, gaussian_blur, kid,
                                  random_feature_fn, swd)
from ddpm_lessons.metrics.features import layout_feature_fn
from ddpm_lessons.metrics.references import blob_images

HERE = Path(__file__).resolve().parent                  # notebooks/studies/calibration: the sets and results
ROOT = HERE.parents[2]
OUT = HERE
FOLDERS = {"emoji": default_dataset_path(), "twemoji": ROOT / "data" / "twemoji-things",
           "photos": ROOT / "data" / "tuxpaint-photos"}
CANDIDATES = {"emoji-net": feature_fn, "random-net": random_feature_fn, "layout-net": layout_feature_fn,
              "detail-net": detail_feature_fn}
CHAINS = (["real", "final", "early"], ["real", "blur1", "blur2", "noise"])   # training progress; blur
SUBSETS = 10


def sets_for(folder, name):
    images, _ = read_image_folder(folder, 32)
    x = as_unit_float(images)
    order = np.random.default_rng(0).permutation(len(x))
    a, b = x[order[: len(x) // 2]], x[order[len(x) // 2:]]
    n = min(512, len(a))
    g = np.random.default_rng(1)
    sets = {"real": a[:n]}
    for which in ("final", "early"):
        path = OUT / f"{name}_{which}.npz"
        if path.exists():
            sets[which] = as_unit_float(np.load(path)["images"])[:n]
    sets.update(blur1=gaussian_blur(a[:n], 1.0), blur2=gaussian_blur(a[:n], 2.0),
                noise=np.clip(g.standard_normal(a[:n].shape), -1, 1).astype(np.float32),
                collapsed=np.repeat(a[:8], -(-n // 8), axis=0)[:n], blobs=blob_images(a[:n], seed=1))
    return sets, b, n


def paired(r1, r2):
    """(difference of KIDs, its paired standard error) over the same real subsets."""
    d = np.asarray(r2["subset_kids"]) - np.asarray(r1["subset_kids"])
    return float(r2["kid"] - r1["kid"]), float(d.std(ddof=1) / np.sqrt(len(d)))


def main():
    results = {}
    for name, folder in FOLDERS.items():
        if not folder.exists():
            print(f"{name}: {folder} is missing (data/build_tuxpaint_photos.py builds it), skipped")
            continue
        sets, b, n = sets_for(folder, name)
        res = {"n": n, "sets": {}}
        for fname, fn in CANDIDATES.items():
            t0 = time.perf_counter()
            fb = fn(b)
            rows = {k: kid(fn(v), fb, n_subsets=SUBSETS, seed=0) for k, v in sets.items()}
            steps = []
            for chain in CHAINS:
                present = [k for k in chain if k in rows]
                for lo, hi in zip(present, present[1:]):
                    diff, se = paired(rows[lo], rows[hi])
                    steps.append({"from": lo, "to": hi, "diff": diff, "se": se, "z": diff / se})
            diff, se = paired(rows["real"], rows["collapsed"])
            bdiff, bse = paired(rows["early"], rows["blobs"]) if "early" in rows else (np.nan, np.nan)
            res[fname] = {"kid": {k: [r["kid"], r["se"]] for k, r in rows.items()}, "steps": steps,
                          "collapsed_vs_real": {"diff": diff, "se": se, "z": diff / se},
                          "blobs_vs_early": {"diff": bdiff, "se": bse, "z": bdiff / bse},
                          "seconds": round(time.perf_counter() - t0, 1)}
        res["swd"] = {k: swd(v, b)["swd"] for k, v in sets.items()}
        results[name] = res
        print(f"\n{name}: n = {n}, real half B = {len(b)}")
        for fname in CANDIDATES:
            r = res[fname]
            print(f"  KID x1e3, {fname}: " + "  ".join(f"{k} {1e3 * v[0]:.1f}+-{1e3 * v[1]:.1f}"
                                                      for k, v in r["kid"].items()))
            print("    steps (z = diff / paired se): " + "  ".join(f"{s['from']}<{s['to']} z={s['z']:.1f}"
                                                               for s in r["steps"])
                  + f"   collapsed-real z={r['collapsed_vs_real']['z']:.1f}"
                  + f"   blobs-early z={r['blobs_vs_early']['z']:.1f}")
        print("  SWD x1e3: " + "  ".join(f"{k} {v:.1f}" for k, v in res["swd"].items()))
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
