"""Each stored sample grid of the own-folder study beside the nearest training pictures (lesson 10, section 7).

For results/<folder>-<method>-<min>min.png (64 samples, 8 x 8 tiles of 32 px with 1-px gaps, written by
own_folder_study.py --evaluate), takes its first 16 samples, finds each one's nearest picture of the folder
it was trained on (``metrics.copies.pixel_nearest``: RMS pixel distance, mirror images and shifts of up
to 2 px allowed, the copy check's own distance) and writes <same name>-nearest.png: rows 1 and 3 the
samples, rows 2 and 4 the training picture nearest to the one above it. The distances go into
results/nearest.json. Needs the study folders (data/build_tuxpaint_photos.py); the figures are stored so
that the lesson can show them without the folders.

    .venv/bin/python notebooks/studies/own_folder/own_folder_nearest.py [grid.png ...]
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))          # the repository (notebooks/studies/own_folder/ is 3 deep)
sys.path.insert(0, str(HERE))

from own_folder_study import FOLDERS, RESULTS, read_folder  # noqa: E402

from ddpm_lessons.metrics.copies import pixel_nearest  # noqa: E402
from ddpm_lessons.plotting import save_grid  # noqa: E402

TILE, GAP, SHOWN = 32, 1, 16


def tiles(path, n=SHOWN):
    """The first ``n`` tiles (uint8 (n, 32, 32, 3)) of a grid written by ``plotting.save_grid``."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    cols = (grid.shape[1] + GAP) // (TILE + GAP)
    out = [grid[r * (TILE + GAP): r * (TILE + GAP) + TILE, c * (TILE + GAP): c * (TILE + GAP) + TILE]
           for r in range((n + cols - 1) // cols) for c in range(cols)]
    return np.stack(out[:n])


def main(paths=None):
    paths = [Path(p) for p in paths] if paths else sorted(p for p in RESULTS.glob("*min.png"))
    store = RESULTS / "nearest.json"
    found = json.loads(store.read_text()) if store.exists() else {}
    folders = {}
    for path in paths:
        folder = re.match(r"(.+?)-(scratch|general|leak|told|plain)", path.stem).group(1)
        if folder not in folders:
            folders[folder] = read_folder(FOLDERS[folder], TILE)
        train = folders[folder]
        samples = tiles(path)
        dist, idx = pixel_nearest(samples, train)
        pairs = []
        for half in (slice(0, 8), slice(8, 16)):
            pairs += [samples[half], train[idx[half]]]
        save_grid(path.with_name(path.stem + "-nearest.png"), np.concatenate(pairs), ncols=8)
        found[path.stem] = {"distances": [round(float(d), 4) for d in dist], "nearest": [int(i) for i in idx]}
        print(f"{path.name}: median distance to the nearest training picture {np.median(dist):.3f}")
    store.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
