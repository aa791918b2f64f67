"""Can the cpu profile's 3x3 convolutions run nearer the matmul limit? (#28, item 4)

A 3x3 SAME convolution of (B, r, r, c_in) by a (3, 3, c_in, c_out) kernel is a matmul in disguise:
gather each pixel's 3x3 neighbourhood into a row (im2col, (B r^2, 9 c_in)) and multiply by the kernel
reshaped to (9 c_in, c_out). Its FLOPs, forward + backward (input and kernel gradients), are
3 x 2 B r^2 9 c_in c_out. Timed here, paired (the variants alternate, round by round, each the best of
a few calls in a tf.function), at each level's shape of the cpu profile:

  conv2d       ``tf.nn.conv2d`` NHWC, as the U-Net runs it (oneDNN's kernel where oneDNN is on)
  conv2d XLA   the same under ``jit_compile=True`` (XLA's own convolution emitter)
  im2col       ``tf.image.extract_patches`` + one matmul: the matmul the conv is
  9 matmuls    nine shifted (B r^2, c_in) x (c_in, c_out) matmuls, summed
  matmul       the im2col matmul alone on ready-made patches (forward + both gradients): the limit

Prints GFLOP/s and each variant's paired speed relative to conv2d (mean +- standard error over rounds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent          # notebooks/studies/speed: the measurements
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

import ddpm_lessons  # noqa: E402,F401  (oneDNN switch before TensorFlow loads)
import tensorflow as tf  # noqa: E402

from ddpm_lessons.bench import best_time, fma_peak  # noqa: E402

# (B, r, c_in, c_out): the cpu profile's levels (widths 32, 64, 96, 128 at 32, 16, 8, 4 px) and two
# of the up path's convolutions on a concatenated skip (c_in = this level + the skip's channels).
SHAPES = [(32, 32, 32, 32), (32, 16, 64, 64), (32, 8, 96, 96), (32, 4, 128, 128),
          (32, 32, 64, 32), (32, 16, 160, 64)]


def variants(b, r, cin, cout):
    def grads(forward):
        def fn(x, w):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = forward(x, w)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x, w])
        return fn

    def conv(x, w):
        return tf.nn.conv2d(x, w, 1, "SAME")

    def im2col(x, w):
        p = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")  # (B, r, r, 9 c_in)
        # extract_patches orders a patch (row, col, channel), as the kernel's reshape does
        return tf.reshape(tf.reshape(p, [-1, 9 * cin]) @ tf.reshape(w, [9 * cin, cout]), [b, r, r, cout])

    def nine(x, w):
        xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        out = 0.0
        for i in range(3):
            for j in range(3):
                out += tf.reshape(tf.reshape(xp[:, i:i + r, j:j + r, :], [-1, cin]) @ w[i, j], [b, r, r, cout])
        return out

    def matmul(p, k):
        return p @ k

    return {"conv2d": tf.function(grads(conv)),
            "conv2d XLA": tf.function(grads(conv), jit_compile=True),
            "im2col": tf.function(grads(im2col)),
            "9 matmuls": tf.function(grads(nine)),
            "matmul": tf.function(grads(matmul))}


def best_of(fn, args, calls):
    """Best of ``calls`` calls (``bench.best_time``), each waited for."""
    return best_time(lambda: float(tf.reduce_sum(fn(*args)[0])), repeats=calls, warmup=0)


def study(rounds=5, calls=5, log=print):
    rows = []
    for b, r, cin, cout in SHAPES:
        x = tf.random.normal([b, r, r, cin], seed=1)
        w = tf.random.normal([3, 3, cin, cout], stddev=0.05, seed=2)
        p = tf.random.normal([b * r * r, 9 * cin], seed=3)
        k = tf.reshape(w, [9 * cin, cout])
        fns = variants(b, r, cin, cout)
        args = {name: ((p, k) if name == "matmul" else (x, w)) for name in fns}
        ref = fns["conv2d"](x, w)                    # the variants compute the same gradients
        for name in ("conv2d XLA", "im2col", "9 matmuls"):
            got = fns[name](x, w)
            err = max(float(tf.reduce_max(tf.abs(g - e)) / tf.reduce_max(tf.abs(e))) for g, e in zip(got, ref))
            assert err < 1e-3, (name, err)
        fns["matmul"](p, k)
        times = {name: [] for name in fns}
        order = list(fns)
        for k_round in range(rounds):
            for name in (order if k_round % 2 == 0 else order[::-1]):
                times[name].append(best_of(fns[name], args[name], calls))
        flops = 3 * 2 * b * r * r * 9 * cin * cout
        base = np.array(times["conv2d"])
        row = {"shape": [b, r, cin, cout], "gflop": flops / 1e9, "variants": {}}
        line = f"B={b} {r:>2}px {cin:>3}->{cout:<3}"
        for name, t in times.items():
            t = np.array(t)
            ratio = base / t                           # > 1: faster than conv2d
            row["variants"][name] = {"ms": 1e3 * float(np.median(t)), "gflops": flops / float(np.median(t)) / 1e9,
                                     "speed_vs_conv2d": float(ratio.mean()),
                                     "se": float(ratio.std(ddof=1) / np.sqrt(len(ratio)))}
            v = row["variants"][name]
            line += f" | {name} {v['gflops']:6.1f} GF/s x{v['speed_vs_conv2d']:.2f}+-{v['se']:.2f}"
        rows.append(row)
        log(line)
    return rows


def main(argv=None):
    a = argparse.ArgumentParser()
    a.add_argument("--rounds", type=int, default=5)
    a.add_argument("--out", default=str(HERE / "conv.json"))
    args = a.parse_args(argv)
    peak = fma_peak()
    print(f"float32 FMA peak of this machine: {peak}", flush=True)
    rows = study(args.rounds, log=lambda s: print(s, flush=True))
    total = {name: sum(r["gflop"] for r in rows) / sum(r["gflop"] / r["variants"][name]["gflops"] for r in rows)
             for name in rows[0]["variants"]}
    print("FLOP-weighted over the shapes: " + ", ".join(f"{n} {g:.1f} GF/s" for n, g in total.items()))
    Path(args.out).write_text(json.dumps({"rows": rows, "rounds": args.rounds, "fma_peak": peak,
                                          "weighted_gflops": total}, indent=1))


if __name__ == "__main__":
    main()
