"""Calibrate the verdict (lesson 11, section 8): its call and advice on sets whose truth is known,
for three folders at their full size and at 100 pictures (and the photographs at 144, the size of
the folder that first showed the verdict calling blobs "like your pictures").

For each folder and size: the folder's pictures R (all of them, or a fixed random subset), and
N = 256 samples per set (the cpu profile's verdict_samples), each judged against R exactly as at the
end of a run (``metrics.verdict``):

    real vs real   pictures of the folder that are not in R (the full folders: half of the pictures
                   judged against the other half)
    good run       a finished run's samples (<folder>_final.npz in this folder, calibration_sets.py)
    200 steps      the same recipe after 200 training steps (<folder>_early.npz)
    blobs          R's pictures phase-randomised (another seed than the verdict's own reference)
    blurred 1px    R's pictures blurred by 1 px
    noise          Gaussian noise clipped to [-1, 1]

Writes notebooks/studies/calibration/verdict.json; lesson 11 prints it. About 10 minutes on 2 cores (the photographs
need data/build_tuxpaint_photos.py first):

    .venv/bin/python notebooks/studies/calibration/calibrate_verdict.py
"""
import json
import time
from pathlib import Path

import numpy as np

from ddpm_lessons.data import read_image_folder
from ddpm_lessons.metrics import as_unit_float
from ddpm_lessons.metrics.references import blob_images, gaussian_blur, noise_images
from ddpm_lessons.metrics.verdict import FolderVerdict

HERE = Path(__file__).resolve().parent                  # notebooks/studies/calibration: the sets and results
ROOT = HERE.parents[2]
CAL = HERE
FOLDERS = {"emoji": ROOT / "data" / "emoji-portraits", "twemoji": ROOT / "data" / "twemoji-things",
           "photos": ROOT / "data" / "tuxpaint-photos"}
SIZES = {"emoji": (None, 100), "twemoji": (None, 100), "photos": (None, 144, 100)}
N, SIZE = 256, 32
SETS = ("real vs real", "good run", "200 steps", "blobs", "blurred 1px", "noise")


def row(v):
    keep = ("call", "apart_by", "near_copies", "advice", "swd_x1e3")
    return {**{k: v[k] for k in keep}, **{name: {k: s[k] for k in ("kid_x1e3", "se_x1e3", "z", "p", "apart")}
                                           for name, s in v["scores"].items()}}


def main():
    out = {"n_samples": N, "image_size": SIZE, "folders": {}}
    for folder, path in FOLDERS.items():
        if not path.exists():
            print(f"{folder}: {path} is missing, skipped")
            continue
        x = as_unit_float(read_image_folder(path, SIZE)[0])
        final = np.load(CAL / f"{folder}_final.npz")["images"][:N]
        early = np.load(CAL / f"{folder}_early.npz")["images"][:N]
        for size in SIZES[folder]:
            t0 = time.perf_counter()
            order = np.random.default_rng(11).permutation(len(x))
            if size is None:                 # the whole folder; real vs real: one half against the other
                pictures, held = x, None
                half = order[: len(x) // 2]
                rest = order[len(x) // 2:]
                floor = FolderVerdict(x[rest], n=min(N, len(half))).judge(x[half][:N])
            else:
                pictures, held = x[order[:size]], x[order[size:]][:N]
            judge = FolderVerdict(pictures, n=N)
            some = pictures[np.arange(N) % len(pictures)]
            sets = {"real vs real": held, "good run": final, "200 steps": early,
                    "blobs": blob_images(pictures, n=N, seed=99), "blurred 1px": gaussian_blur(some, 1.0),
                    "noise": noise_images(some.shape, seed=99)}
            rows = {}
            for name, images in sets.items():
                if name == "real vs real" and held is None:
                    rows[name] = row(floor)
                    rows[name]["n"] = floor["n"]
                    continue
                if len(images) < N:          # fewer held-out pictures than N: judge them against R at their n
                    v = FolderVerdict(pictures, n=len(images)).judge(images)
                else:
                    v = judge.judge(images)
                rows[name] = row(v)
                rows[name]["n"] = v["n"]
            key = f"{folder} {len(pictures)}"
            out["folders"][key] = {"pictures": len(pictures), "sets": rows,
                                   "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{key}: " + "  ".join(f"{k}={r['call']}" for k, r in rows.items()), flush=True)
    (CAL / "verdict.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {CAL / 'verdict.json'}")


if __name__ == "__main__":
    main()
