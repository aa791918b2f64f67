"""Build the photographic study folder from Debian's package ``tuxpaint-stamps-default``.

Tux Paint's stamps are cut-out pictures (most of them photographs of one thing: fruit, flowers,
tools, planets, houses, vehicles; some drawings) with an alpha channel, GPL-2 (Copyright
2002-2022 Bill Kendrick and the Tux Paint contributors). This script turns them into ordinary
image folders, so a study can train on photographs with the same loader as a learner's folder:

    data/tuxpaint-photos/       every stamp of the study categories (about 380 pictures)
    data/tuxpaint-photos-300/   a fixed random 300 of them
    data/tuxpaint-photos-100/   a fixed random 100 of those 300
    data/tuxpaint-animals/      the 'animals' category: kept out of every study and of the general
                                prior, for checks that nothing was tuned on

Each picture: alpha-composited onto white, padded to a square (white, the object centred, never
cropped), resized to 64x64 (Lanczos), saved as RGB PNG named ``<category>_<sub-path>_<name>.png``.
Left out: ``*_mirror.png`` (a mirror image of another stamp: a duplicate once training flips) and
any file that is not a PNG. Each folder gets ``sources.csv`` (file, category, the path in the
package, whether it sits in a ``cartoon`` sub-folder, i.e. a drawing) and ``LICENSE.txt`` (the
package's copyright file). The folders are study data, built on demand and not committed
(``.gitignore``): the tests build a fake package tree instead.

How to build (needs apt-get and dpkg, i.e. Debian or Ubuntu, Python 3.10+, numpy and Pillow):

    python data/build_tuxpaint_photos.py                     # apt-get download + dpkg -x into /tmp
    python data/build_tuxpaint_photos.py --package-root DIR  # an already unpacked package (DIR/usr/...)

The output is deterministic: the same package version gives the same files and subsets.
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "tuxpaint-stamps-default"
STAMPS = Path("usr/share/tuxpaint/stamps")
COPYRIGHT = Path("usr/share/doc") / PACKAGE / "copyright"
STUDY_CATEGORIES = ("food", "plants", "town", "vehicles", "household", "clothes", "sports", "hobbies",
                    "seasonal", "space", "people")
HELD_OUT_CATEGORIES = ("animals",)
SUBSETS = (300, 100)          # each drawn from the one before it (100 within 300), seed SUBSET_SEED
SUBSET_SEED = 0
SIZE = 64
HERE = Path(__file__).resolve().parent


def fetch_package(workdir: Path) -> Path:
    """``apt-get download`` the package into workdir and ``dpkg -x`` it; returns the unpacked root."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise SystemExit(f"error: apt-get download left no {PACKAGE}_*.deb in {workdir}")
    root = workdir / "root"
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    return root


def list_stamps(package_root: Path, categories) -> list:
    """Sorted (category, path relative to the stamps folder) of every usable stamp PNG."""
    stamps = Path(package_root) / STAMPS
    if not stamps.is_dir():
        raise SystemExit(f"error: {stamps} does not exist: give the folder that holds usr/share/tuxpaint")
    out = []
    for cat in categories:
        for f in sorted((stamps / cat).rglob("*")):
            if f.is_file() and f.suffix.lower() == ".png" and not f.stem.endswith("_mirror"):
                out.append((cat, f.relative_to(stamps)))
    return out


def slug(rel: Path) -> str:
    """stamps path -> file name: food/fruit/apple_red.png -> food_fruit_apple-red.png"""
    parts = [re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in rel.with_suffix("").parts]
    return "_".join(parts) + ".png"


def to_square_rgb(path: Path, size: int = SIZE) -> Image.Image:
    """RGBA stamp -> white background, padded to a square around its centre, size x size RGB."""
    im = Image.open(path).convert("RGBA")
    side = max(im.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.LANCZOS)


def write_folder(out: Path, rows: list, package_root: Path, images: dict) -> None:
    """Write the pictures of ``rows`` with sources.csv and LICENSE.txt into an emptied ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    for r in rows:
        images[r["file"]].save(out / r["file"], optimize=True)
    with open(out / "sources.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "category", "package_path", "drawing"])
        w.writeheader()
        w.writerows(rows)
    lic = Path(package_root) / COPYRIGHT
    text = lic.read_text() if lic.exists() else "GPL-2: see the Debian package's copyright file\n"
    (out / "LICENSE.txt").write_text(f"Pictures from the Debian package {PACKAGE} (Tux Paint stamps),\n"
                                     f"resized to {SIZE}x{SIZE} on white. Its copyright file:\n\n{text}")


def build(package_root: Path, out_dir: Path, name: str = "tuxpaint-photos") -> dict:
    """Build the study folder, its subsets and the held-out animals; returns {folder: count}."""
    counts = {}
    for cats, folder_name, subsets in ((STUDY_CATEGORIES, name, SUBSETS),
                                       (HELD_OUT_CATEGORIES, "tuxpaint-animals", ())):
        found = list_stamps(package_root, cats)
        if not found:
            continue
        rows, images = [], {}
        for cat, rel in found:
            fname = slug(rel)
            if fname in images:
                raise SystemExit(f"error: two stamps map to {fname}")
            images[fname] = to_square_rgb(Path(package_root) / STAMPS / rel)
            rows.append({"file": fname, "category": cat, "package_path": str(STAMPS / rel),
                         "drawing": int("cartoon" in rel.parts)})
        write_folder(out_dir / folder_name, rows, package_root, images)
        counts[folder_name] = len(rows)
        chosen = rows
        for k in subsets:
            if len(chosen) < k:
                break
            pick = np.random.default_rng(SUBSET_SEED).permutation(len(chosen))[:k]
            chosen = [chosen[i] for i in sorted(pick)]
            write_folder(out_dir / f"{folder_name}-{k}", chosen, package_root, images)
            counts[f"{folder_name}-{k}"] = k
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--package-root", type=Path, default=None,
                   help="an unpacked package (the folder holding usr/); default: apt-get download it")
    p.add_argument("--out", type=Path, default=HERE, help="where the folders go (default: data/)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.package_root or fetch_package(Path(tmp))
        counts = build(root, args.out)
    for folder, n in counts.items():
        print(f"{args.out / folder}: {n} pictures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
