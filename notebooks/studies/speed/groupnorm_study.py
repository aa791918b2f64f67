"""GroupNorm at the cpu profile's shapes: Keras's layer against ``blocks.GroupNorm`` (#28, item 4).

Keras's GroupNormalization reshapes (B, H, W, C) to (B, H, W, G, C/G), takes ``ops.moments`` over
axes (1, 2, 4) (a mean, then the mean of squared differences: two passes over the tensor), then
y = x * inv + res. ``blocks.GroupNorm`` reduces over (H, W) first, to per-channel means of x and x^2
(B, C), combines them per group ((B, G, C/G) -> (B, G)), and applies y = x a + b with a, b (B, 1, 1, C):
no 5-D reshape, and var = E[x^2] - E[x]^2 (shifted by one sample per group to keep the cancellation small).

Timed: forward + backward (gradients of x, gamma, beta) of one GroupNorm + swish in a tf.function,
at each level's (B, r, r, c) of the cpu profile; A and B alternate, ``--rounds`` pairs, each the
best of a few calls; the paired ratio's median and standard error are printed. A busy machine
slows both alike; only the ratio is read.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent          # notebooks/studies/speed: the measurements
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddpm_lessons.blocks import GN_EPSILON, GroupNorm  # noqa: E402

SHAPES = [(32, 32, 32, 32), (32, 16, 16, 64), (32, 8, 8, 96), (32, 4, 4, 128), (32, 32, 32, 64), (32, 16, 16, 160)]


def build_with(norm_class, profile):
    """The profile's U-Net with every GroupNorm (blocks, attention, the output) built as ``norm_class``."""
    from ddpm_lessons import attention, blocks, unet
    original = blocks.GroupNorm
    for module in (blocks, attention, unet):
        module.GroupNorm = norm_class
    try:
        return unet.build_unet(profile)
    finally:
        for module in (blocks, attention, unet):
            module.GroupNorm = original


def step_study(rounds, steps, jit):
    """Paired whole-step timings: two Trainers of the cpu profile, Keras's GroupNorm and the rewrite,
    alternating ``steps`` steps each, ``rounds`` times (the order flips every round)."""
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig
    profile = get_profile("cpu")
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    x0 = tf.random.uniform([profile.batch_size, profile.image_size, profile.image_size, 3], -1, 1, seed=0)
    trainers = {}
    for name, cls in (("keras", keras.layers.GroupNormalization), ("sums", GroupNorm)):
        keras.utils.set_random_seed(0)
        trainers[name] = Trainer(build_with(cls, profile), schedule, TrainConfig.from_profile(profile, jit_compile=jit))
        n_sums = sum(isinstance(layer, GroupNorm) for layer in trainers[name].model._flatten_layers())
        print(f"{name}: {n_sums} rewritten GroupNorm layers", flush=True)
    from ddpm_lessons.bench import paired_step_rates
    out = paired_step_rates(trainers, x0, rounds, steps, log=lambda line: print(line, flush=True))
    mean, se = out["ratio"]["sums"]
    return {"jit_compile": jit, **out, "ratio_mean": mean, "ratio_se": se}


def forward_backward(norm):
    """A tf.function: the gradients of sum(swish(norm(x))^2) by x, gamma and beta."""
    @tf.function
    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.silu(norm(x))
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, norm.gamma, norm.beta])
    return fn


def timed(fn, args, calls=5):
    fn(*args)
    best = 1e9
    for _ in range(calls):
        t0 = time.perf_counter()
        out = fn(*args)
        float(tf.reduce_sum(out[0]))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    a = argparse.ArgumentParser()
    a.add_argument("--rounds", type=int, default=5)
    a.add_argument("--out", default=str(HERE / "groupnorm.json"))
    a.add_argument("--step", action="store_true", help="the whole training step, paired (slow)")
    a.add_argument("--xla", action="store_true", help="with --step: XLA instead of tf.function")
    a.add_argument("--steps", type=int, default=20)
    args = a.parse_args(argv)
    if args.step:
        result = step_study(args.rounds, args.steps, args.xla)
        print(f"whole step, {'XLA' if args.xla else 'tf.function'}: sums / keras = {result['ratio_mean']:.3f} "
              f"+- {result['ratio_se']:.3f} (paired, {args.rounds} rounds)")
        Path(args.out).write_text(json.dumps(result, indent=1))
        return
    groups = 8
    rows = []
    for shape in SHAPES:
        c = shape[-1]
        x = tf.random.normal(shape, 0.5, 2.0, seed=1)
        layer = keras.layers.GroupNormalization(groups, epsilon=GN_EPSILON)
        layer.build(shape)
        layer.gamma.assign(np.random.default_rng(0).normal(1, 0.1, c))
        layer.beta.assign(np.random.default_rng(1).normal(0, 0.1, c))
        sums = GroupNorm(groups, epsilon=GN_EPSILON)
        sums.build(shape)
        sums.set_weights(layer.get_weights())
        err = float(tf.reduce_max(tf.abs(layer(x) - sums(x))))

        keras_fb, sums_fb = forward_backward(layer), forward_backward(sums)
        gk, gs = keras_fb(x), sums_fb(x)
        grad_err = max(float(tf.reduce_max(tf.abs(p - q)) / (tf.reduce_max(tf.abs(p)) + 1e-12)) for p, q in zip(gk, gs))
        ratios, tk, ts = [], [], []
        for _ in range(args.rounds):
            k, s = timed(keras_fb, (x,)), timed(sums_fb, (x,))
            tk.append(k), ts.append(s), ratios.append(k / s)
        r = np.array(ratios)
        row = {"shape": shape, "max_abs_diff": err, "grad_rel_diff": grad_err, "keras_ms": 1e3 * float(np.median(tk)),
               "sums_ms": 1e3 * float(np.median(ts)), "speedup_median": float(np.median(r)),
               "speedup_mean": float(r.mean()), "speedup_se": float(r.std(ddof=1) / np.sqrt(len(r)))}
        rows.append(row)
        print(f"{str(shape):20s} keras {row['keras_ms']:7.2f} ms  sums {row['sums_ms']:7.2f} ms  "
              f"x{row['speedup_mean']:.2f} +- {row['speedup_se']:.2f}  (max |diff| {err:.1e}, grads {grad_err:.1e})", flush=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "rounds": args.rounds}, indent=1))


if __name__ == "__main__":
    main()
