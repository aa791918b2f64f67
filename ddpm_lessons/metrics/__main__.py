"""Command line of lesson 11's scores:

    python -m ddpm_lessons.metrics score <folder-or-npz> [--real <folder>] [--size 32]
    python -m ddpm_lessons.metrics train-features      # rebuild the shipped feature network
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import __doc__ as _package_doc
from .features import ASSETS, as_unit_float, resize_images, train_feature_net
from .scores import evaluate_samples, format_scores


def _load_images(path, size=None):
    path = Path(path)
    if path.suffix == ".npz" or path.suffix == ".npy":
        data = np.load(path)
        arr = data if isinstance(data, np.ndarray) else data[data.files[0]]
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 and arr.min() >= 0 and arr.max() > 1.5:
            arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        arr = as_unit_float(arr)
        return resize_images(arr, size) if size and arr.shape[1] != size else arr
    from ..data import read_image_folder
    images, _ = read_image_folder(path, size or 32)
    return as_unit_float(images)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m ddpm_lessons.metrics",
                                description=_package_doc.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="KID and SWD of a folder or .npz of samples, with references")
    s.add_argument("samples", help="image folder, or .npz/.npy with (N, H, W, 3) uint8 or [-1, 1]")
    s.add_argument("--real", default=None, help="real image folder (default: the shipped data)")
    s.add_argument("--size", type=int, default=None, help="resize to this size (default: the samples')")
    s.add_argument("--json", default=None, help="also write the result to this JSON file")
    t = sub.add_parser("train-features", help="retrain the shipped feature network")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--out", default=str(ASSETS))
    args = p.parse_args(argv)
    if args.cmd == "train-features":
        print(json.dumps(train_feature_net(args.out, epochs=args.epochs, verbose=2), indent=2))
        return 0
    from ..data import default_dataset_path
    samples = _load_images(args.samples, args.size)
    real = _load_images(args.real or default_dataset_path(), samples.shape[1])
    result = evaluate_samples(samples, real)
    print(format_scores(result))
    if args.json:
        clean = lambda d: {k: (clean(v) if isinstance(v, dict) else v) for k, v in d.items()
                           if not isinstance(v, np.ndarray)}
        Path(args.json).write_text(json.dumps(clean(result), indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
