"""Issue #33's check: `make generate CLASS=<name> GUIDANCE=2` gives pictures of the class asked for as often
as lesson 13 measured with the same network.

    .venv/bin/python notebooks/studies/editing/conditional_cli_check.py            # a few minutes on 2 CPU cores
    .venv/bin/python notebooks/studies/editing/conditional_cli_check.py -n 16      # a quick look

A run folder is made in a temporary directory from the shipped conditional network
(``ddpm_lessons/assets/conditional_cpu``: its settings.json as it is, its float16 EMA weights saved as the
run's checkpoint ``ema_model``, as `make train CONDITIONAL=1` leaves one). For every class of both label kinds
the command line's own code path, ``runs.main(["generate", run, "--class", name, "--guidance", "2", ...])``,
writes N = 48 PNG files (the run's sampler, DPM-Solver++(2M)-10; the other kind "no label"; seed 7000 +
100 k + c, fresh: lesson 13 drew with 4000..), lesson 11's classifier reads them back, and the macro
agreement per kind (``guidance.agreement``) is printed beside lesson 13's at w = 2
(notebooks/studies/guidance/results.json: about 512 samples per kind, drawn in one batch of mixed classes).
Standard errors are binomial per class, sqrt(sum p (1 - p) / n_c) / K for the macro average.

Writes conditional_cli_check.json beside this file (results.json here is editing_study.py's).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from ddpm_lessons import runs  # noqa: E402
from ddpm_lessons.guidance import CONDITIONAL_DIR, agreement, load_conditional_reference  # noqa: E402
from ddpm_lessons.metrics import classify_images  # noqa: E402

HERE = Path(__file__).resolve().parent
LESSON13 = ROOT / "notebooks" / "studies" / "guidance" / "results.json"
SEED = 7000
GUIDANCE = 2.0
PER_CLASS = 48


def make_run_folder(root) -> Path:
    """A run folder holding the shipped conditional network: settings.json and checkpoints/ckpt-<steps>."""
    import tensorflow as tf
    model, settings = load_conditional_reference()
    run = Path(root) / "conditional-cpu"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(CONDITIONAL_DIR / "settings.json", run / "settings.json")
    tf.train.CheckpointManager(tf.train.Checkpoint(ema_model=model), str(run / "checkpoints"), 1).save(
        checkpoint_number=settings["profile"].train_steps)
    ema = runs.load_ema_model(run)[0]                      # what the command line will load: the same weights
    assert all(np.array_equal(a, b) for a, b in zip(ema.get_weights(), model.get_weights()))
    return run


def read_pngs(folder) -> np.ndarray:
    """uint8 (N, H, W, 3) of every PNG in ``folder``, in name order."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(folder).glob("*.png"))])


def macro_se(per_class, n_per_class) -> float:
    """The binomial standard error of the mean of per-class shares, each from ``n_per_class`` samples."""
    p = np.asarray(per_class, np.float64)
    return float(math.sqrt(np.sum(p * (1 - p) / n_per_class)) / len(p))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--per-class", type=int, default=PER_CLASS)
    ap.add_argument("--out", default=str(HERE / "conditional_cli_check.json"))
    args = ap.parse_args(argv)
    n = args.per_class
    t_start = time.perf_counter()
    lesson13 = next(row for row in json.loads(LESSON13.read_text())["rows"] if row["w"] == GUIDANCE)
    kinds_out = []
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run_folder(tmp)
        kinds = [(k["kind"], k["classes"]) for k in runs.read_settings(run)["labels"]]
        for k, (kind, names) in enumerate(kinds):
            predicted, asked, files = [], [], []
            for c, name in enumerate(names):
                out = Path(tmp) / "out" / f"{k}-{c}"
                t0 = time.perf_counter()
                status = runs.main(["generate", str(run), "--class", name, "--guidance", f"{GUIDANCE:g}", "-n", str(n),
                                    "--seed", str(SEED + 100 * k + c), "--out", str(out)])
                assert status == 0, f"make generate CLASS={name} failed"
                files.append(sorted(p.name for p in out.glob("*.png"))[0])
                predicted.append(classify_images(read_pngs(out))[:, k])
                asked.append(np.full(n, c))
                print(f"  {kind} {name}: {np.mean(predicted[-1] == c):.0%} ({time.perf_counter() - t0:.0f} s)", flush=True)
            a = agreement(np.concatenate(predicted), np.concatenate(asked), len(names))
            ref_n = lesson13["n_per_kind"][kind] / len(names)
            row = {"kind": kind, "classes": names, "macro": a["macro"], "macro_se": macro_se(a["per_class"], n),
                   "per_class": a["per_class"], "n_per_class": n, "first_file": files[0],
                   "lesson13_macro": lesson13["agreement"][kind],
                   "lesson13_macro_se": macro_se(lesson13["per_class"][kind], ref_n),
                   "lesson13_per_class": lesson13["per_class"][kind], "lesson13_n_per_class": ref_n}
            row["difference"] = row["macro"] - row["lesson13_macro"]
            row["difference_se"] = math.hypot(row["macro_se"], row["lesson13_macro_se"])
            kinds_out.append(row)
            print(f"{kind}: macro agreement {100 * row['macro']:.1f}% +- {100 * row['macro_se']:.1f} through the "
                  f"command line, lesson 13 {100 * row['lesson13_macro']:.1f}% +- {100 * row['lesson13_macro_se']:.1f} "
                  f"(difference {100 * row['difference']:+.1f} +- {100 * row['difference_se']:.1f})", flush=True)
    settings = runs.read_settings(CONDITIONAL_DIR)["profile"]
    result = {"source": "the shipped conditional network (ddpm_lessons/assets/conditional_cpu) as a run folder",
              "command": "runs.main(['generate', run, '--class', name, '--guidance', '2', '-n', N, '--seed', s])",
              "sampler": runs.describe_sampler(settings), "guidance": GUIDANCE, "seed": SEED,
              "seeds": "SEED + 100 k + c for class c of kind k", "kinds": kinds_out,
              "lesson13": str(LESSON13.relative_to(ROOT)),
              "minutes": round((time.perf_counter() - t_start) / 60, 1)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['minutes']} min)")


if __name__ == "__main__":
    main()
