"""What the non-leaking augmentation (lesson 10, augment.py) costs per training step (issue #29: <= 5%).

Three ``Trainer``s of the cpu profile on one batch, timed in alternation by ``bench.paired_step_rates``:
no augmentation (today's network), the augmentation-label input with p = 0 (the general prior's
network fine-tuned without augmentation), and p = 0.2 with the input (the study's augmented runs).
Prints each one's images/s per round and its rate over the first one's, mean +- standard error.

    .venv/bin/python notebooks/studies/speed/augment_cost.py [--rounds 8] [--xla]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent          # notebooks/studies/speed: the measurements
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    a = argparse.ArgumentParser()
    a.add_argument("--rounds", type=int, default=8)
    a.add_argument("--steps", type=int, default=12)
    a.add_argument("--xla", action="store_true")
    a.add_argument("--out", default=str(HERE / "augment_cost.json"))
    args = a.parse_args(argv)
    import keras
    import tensorflow as tf
    from ddpm_lessons.augment import AUGMENT_DIM
    from ddpm_lessons.bench import machine_facts, paired_step_rates
    from ddpm_lessons.profiles import cpu_flags, get_profile
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig
    from ddpm_lessons.unet import build_unet
    profile = get_profile("cpu")
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    arms = {"none": (0, 0.0), "input, p=0": (AUGMENT_DIM, 0.0), "input, p=0.2": (AUGMENT_DIM, 0.2)}
    trainers = {}
    for name, (dim, p) in arms.items():
        keras.utils.set_random_seed(0)
        trainers[name] = Trainer(build_unet(profile, augment_dim=dim), schedule,
                                 TrainConfig.from_profile(profile, augment_p=p, jit_compile=args.xla))
    x0 = tf.random.uniform([profile.batch_size, profile.image_size, profile.image_size, 3], -1, 1, seed=0)
    out = paired_step_rates(trainers, x0, args.rounds, args.steps, log=lambda line: print(line, flush=True))
    for name, (mean, se) in out["ratio"].items():
        print(f"{name}: {mean:.3f} +- {se:.3f} of the rate without augmentation ({args.rounds} paired rounds)")
    facts = machine_facts()
    facts["flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    Path(args.out).write_text(json.dumps({"machine": facts, "xla": args.xla, **out}, indent=1))


if __name__ == "__main__":
    main()
