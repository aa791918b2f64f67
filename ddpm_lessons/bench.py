"""How close do training and sampling come to this machine's limit?  ``python -m ddpm_lessons.bench``

What is measured, and how:

    limit        matmul GFLOP/s (n x n times n x n, n = 512/1024/2048, 2 n^3 FLOPs, inside a
                 tf.function, best of several repeats), and a 3x3 SAME ``tf.nn.conv2d`` at the U-Net's
                 own shapes: for each level (resolution r, width c) a forward pass on (B, r, r, c) -> c
                 channels, 2 B r^2 9 c^2 FLOPs, B = the profile's batch size. The "conv limit" is the
                 FLOP-weighted aggregate over the levels: sum of FLOPs / sum of best times. Small
                 shapes chain several convs per call so the call overhead is not charged to them.
                 Both in float32 and, where the CPU has AVX512_BF16 or AMX, in bfloat16.
    model        parameters; forward GFLOP per image counted from the layers: the graph of one traced
                 forward pass at batch 1 goes through TensorFlow's FLOP registry
                 (``tf.compat.v1.profiler``). It counts Conv2D, MatMul (Dense), BatchMatMul and the
                 element-wise ops. Keras's TensorFlow backend lowers attention's ``ops.einsum`` to
                 BatchMatMulV2, which is counted (2 x 2 N^2 C per attention layer); should an ``Einsum``
                 op appear in the graph, the registry has no entry for it and we count it by hand
                 (2 x the product of all its index sizes).
    training     images/s of the real ``Trainer`` on random images in [-1, 1] at the profile's batch size,
                 in three modes: eager (``tf.config.run_functions_eagerly``), tf.function and XLA
                 (``jit_compile``), each in float32 and bfloat16 (Keras's "mixed_bfloat16": float32
                 weights and loss), each in a fresh subprocess so the first step (trace + compile) is
                 timed honestly and peak RSS is per run. Achieved GFLOP/s = images/s x 3 x forward
                 GFLOP per image: we assume the backward pass costs about two forwards. The share of
                 each limit is against the same precision's limit.
    step profile where one compiled training step spends its time: TensorFlow's profiler traces a few
                 steps, and the time of every op it ran is summed by what the op belongs to
                 (convolutions, GroupNorm, attention, the rest of the network, optimizer, EMA
                 update, noising and loss); the input pipeline (one batch from ``make_dataset``)
                 is timed apart.
    speed check  (``--speed-check``, what a GPU owner runs: ``make speed-check``) about a minute of the
                 real ``Trainer`` of the profile's U-Net in the precision "auto" picks (float16 on a GPU),
                 one device: images/s, and achieved FLOP/s as a share of the same precision's matmul
                 speed (n = 4096 and 8192).
    sampling     seconds to draw 32 images with DDPM (all T steps) and with DDIM eta = 0, DDIM eta = 1
                 and DPM-Solver++(2M) at 10/20/50 steps, each sampler warmed up once (tracing excluded),
                 against the bound steps x (best time of one compiled forward pass over 32 images).

Writes ``<out>/bench-<profile>.json`` and ``<out>/bench-<profile>.png`` and prints a table. The
timings share the machine with whatever else runs on it: a busy machine depresses them.
One script-like module (about 780 lines): every measurement above shares the timer, the FLOP count,
the machine's peak and the report; no lesson imports it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("eager", "function", "xla")
MATMUL_SIZES = (512, 1024, 2048)
FAST_SAMPLERS = (("ddim", 0.0), ("ddim", 1.0), ("dpm++2m", 0.0))
FAST_STEPS = (10, 20, 50)
SAMPLE_BATCH = 32


# ------------------------------------------------------------------ timing helpers
def best_time(fn, repeats=5, warmup=1) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.
    ``fn`` must block until its work is done (e.g. end in ``.numpy()``)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_facts() -> dict:
    """CPU model, core count, TensorFlow version and whether oneDNN is on."""
    import tensorflow as tf
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    try:
        from tensorflow.python.util import _pywrap_util_port
        onednn = bool(_pywrap_util_port.IsMklEnabled()) if env is None else env != "0"
    except ImportError:
        onednn = None if env is None else env != "0"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "tensorflow": tf.__version__, "onednn": onednn,
            "python": platform.python_version()}


def cpu_ghz(cpuinfo: str | None = None) -> float | None:
    """The CPU's nominal clock in GHz: the "@ 2.80GHz" of its model name, else the highest "cpu MHz"
    line of /proc/cpuinfo; None where neither is there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    m = re.search(r"@\s*([0-9.]+)\s*GHz", cpuinfo)
    if m:
        return float(m.group(1))
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)]
    return max(mhz) / 1000 if mhz else None


def fma_flop_per_cycle(flags) -> int:
    """float32 FLOPs one core can issue per cycle, from its flags, assuming two FMA units (every
    AVX2 core since Haswell; AVX-512 Xeons of the Gold/Platinum class): 2 units x 2 (multiply + add)
    x lanes, lanes = 16 with avx512f, 8 with fma (AVX2), 4 without. One-unit AVX-512 parts have
    half: the share printed against this peak is then a lower bound."""
    flags = set(flags)
    return 2 * 2 * (16 if "avx512f" in flags else 8 if "fma" in flags else 4)


def fma_peak(flags=None, ghz=None, cores=None) -> dict:
    """{gflops, ghz, cores, flop_per_cycle}: the float32 FMA peak = cores x GHz x FLOP per cycle, with
    cores the CPUs this process may use (logical: two hyper-threads of one core share its units)."""
    from .profiles import cpu_flags
    held = None
    if flags is None:
        flags = cpu_flags()
        if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith("AVX2"):   # --emulate-avx2's hold
            held = "AVX2 (ONEDNN_MAX_CPU_ISA)"
            flags = {f for f in flags if not f.startswith("avx512")}
    ghz = cpu_ghz() if ghz is None else ghz
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) \
        if cores is None else cores
    per_cycle = fma_flop_per_cycle(flags)
    return {"gflops": cores * ghz * per_cycle if ghz else None, "ghz": ghz, "cores": cores,
            "flop_per_cycle": per_cycle, "held_to": held}


# ------------------------------------------------------------------ the limit
def matmul_limit(sizes=MATMUL_SIZES, repeats=5, dtype="float32") -> list[dict]:
    """GFLOP/s of an n x n matmul in ``dtype`` inside a tf.function, best of ``repeats``, per size n."""
    import tensorflow as tf
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    rows = []
    for n in sizes:
        a = tf.cast(tf.random.normal([n, n], seed=1), dtype)
        b = tf.cast(tf.random.normal([n, n], seed=2), dtype)
        seconds = best_time(lambda: mm(a, b).numpy(), repeats)
        rows.append({"n": n, "gflop": 2 * n ** 3 / 1e9, "seconds": seconds,
                     "gflops": 2 * n ** 3 / seconds / 1e9})
    return rows


def conv_limit(profile, batch=None, repeats=5, dtype="float32") -> dict:
    """3x3 SAME conv GFLOP/s in ``dtype`` at each level's (batch, r, r, c) -> c; plus the FLOP-weighted
    aggregate.

    Small shapes run several convs chained in one call (``chained``), so the tf.function's call
    overhead, which a training step pays once for all its layers, is not charged to each conv."""
    import tensorflow as tf
    from .unet import level_table
    batch = batch or profile.batch_size

    @tf.function
    def conv(x, w, reps):          # reps chained convs per call: small shapes are not call overhead
        for _ in tf.range(reps):
            x = tf.nn.conv2d(x, w, 1, "SAME")
        return tf.reduce_sum(tf.cast(x, tf.float32))

    rows = []
    for row in level_table(profile):
        if row["level"] == "middle":      # same shape as the last level
            continue
        r, c = row["resolution"], row["channels"]
        x = tf.cast(tf.random.normal([batch, r, r, c], seed=1), dtype)
        w = tf.cast(tf.random.normal([3, 3, c, c], seed=2) / (9 * c) ** 0.5, dtype)  # keeps the chain's scale ~1
        flops = 2 * batch * r * r * 9 * c * c
        reps = max(1, round(2e8 / flops))
        seconds = best_time(lambda: conv(x, w, tf.constant(reps)).numpy(), repeats) / reps
        rows.append({"level": row["level"], "resolution": r, "channels": c, "gflop": flops / 1e9,
                     "seconds": seconds, "gflops": flops / seconds / 1e9, "chained": reps})
    total = sum(r["gflop"] for r in rows) / sum(r["seconds"] for r in rows)
    return {"batch": batch, "dtype": dtype, "levels": rows, "limit_gflops": total}


# ------------------------------------------------------------------ FLOPs counted from the graph
def _einsum_flops(op) -> int:
    """2 x the product of all index sizes of a (two-operand) einsum: one multiply-add per index tuple."""
    equation = op.get_attr("equation").decode().replace(" ", "")
    inputs = equation.split("->")[0].split(",")
    sizes = {}
    for spec, tensor in zip(inputs, op.inputs):
        for letter, dim in zip(spec, tensor.shape.as_list()):
            sizes[letter] = dim
    product = 1
    for dim in sizes.values():
        product *= int(dim)
    return 2 * product


def graph_flops(graph) -> tuple[int, dict]:
    """(total FLOPs from ``tf.compat.v1.profiler``, FLOPs by op type) of a traced graph (static shapes).

    The breakdown uses the same registry the profiler uses; ``Einsum`` (not in the registry) is
    counted by hand and added to both.
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")        # the v1 profiler warns that its shape helper is deprecated
    try:
        total = int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)
    finally:
        logger.setLevel(level)
    by_type = {}
    for op in graph.get_operations():
        if op.type == "Einsum":
            flops = _einsum_flops(op)
            total += flops
        else:
            try:
                flops = int(tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0)
            except ValueError:      # an incomplete shape: the profiler skips it too
                flops = 0
        if flops:
            by_type[op.type] = by_type.get(op.type, 0) + flops
    return total, by_type


def forward_flops(model) -> tuple[int, dict]:
    """FLOPs of one forward pass over one image, ``model([x (1, H, W, C), t (1,)])`` (plus zero
    augmentation labels for a U-Net that takes them: ``unet.network_inputs``)."""
    import tensorflow as tf
    from .unet import network_inputs
    _, h, w, c = model.input_shape[0]
    fn = tf.function(lambda x, t: model(network_inputs(model, x, t), training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, h, w, c], tf.float32),
                                        tf.TensorSpec([1], tf.float32))
    return graph_flops(concrete.graph)


def flops_summary(by_type: dict) -> dict:
    """Shares of conv, dense (MatMul), attention (BatchMatMul/Einsum) and everything else."""
    total = sum(by_type.values()) or 1
    groups = {"conv": ("Conv2D",), "dense": ("MatMul",),
              "attention": ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")}
    shares = {name: sum(by_type.get(t, 0) for t in types) / total for name, types in groups.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return shares


# ------------------------------------------------------------------ training, one mode per process
def bench_trainer(profile, precision="float32", jit_compile=False):
    """(the real ``Trainer`` of ``profile``'s U-Net in ``precision``, one batch of random images in
    [-1, 1] at the profile's batch size): what the training rows and the step profile time."""
    import tensorflow as tf
    from .schedule import NoiseSchedule
    from .training import Trainer, TrainConfig
    from .unet import build_unet
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    trainer = Trainer(build_unet(profile, precision=precision), schedule,
                      TrainConfig.from_profile(profile, jit_compile=jit_compile))
    b, s, c = profile.batch_size, profile.image_size, profile.channels
    return trainer, tf.random.uniform([b, s, s, c], -1.0, 1.0, seed=0)


def train_worker(profile_name: str, mode: str, steps: int, precision: str = "float32") -> dict:
    """Time the real ``Trainer`` in one mode and precision, in this (fresh) process; returns a
    JSON-able dict."""
    import keras
    import tensorflow as tf
    from .profiles import get_profile
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    profile = get_profile(profile_name)
    keras.utils.set_random_seed(0)
    tf.config.run_functions_eagerly(mode == "eager")
    trainer, x0 = bench_trainer(profile, precision, jit_compile=(mode == "xla"))
    b = profile.batch_size
    t0 = time.perf_counter()
    loss = trainer.train_step(x0)                   # trace + compile (+ run) in the compiled modes
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = trainer.train_step(x0)
        times.append(time.perf_counter() - t0)
    mean = sum(times) / len(times)
    return {"profile": profile.name, "mode": mode, "precision": precision, "batch_size": b, "steps": steps,
            "first_step_s": first, "step_s": mean, "best_step_s": min(times),
            "images_per_s": b / mean, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loss": loss}


def run_worker(profile_name: str, mode: str, steps: int, precision: str = "float32", env=None) -> dict:
    """``train_worker`` in a fresh ``python -m ddpm_lessons.bench --_worker`` process (``env``: extra
    environment variables for it, e.g. TF_ENABLE_ONEDNN_OPTS)."""
    cmd = [sys.executable, "-m", "ddpm_lessons.bench", "--_worker", "--profile", profile_name,
           "--mode", mode, "--steps", str(steps), "--precision", precision]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"worker {profile_name}/{mode}/{precision} failed (exit {done.returncode}):\n"
                           + done.stderr[-3000:])
    result = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------ oneDNN x compile mode, paired
AVX2_EMULATION = {"ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
SETTINGS = {"oneDNN off, tf.function": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "function"),
            "oneDNN off, XLA": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "xla"),
            "oneDNN on, tf.function": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "function"),
            "oneDNN on, XLA": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "xla")}


def compare_settings(profile_name="cpu", rounds=3, steps=15, emulate_avx2=False, log=print) -> dict:
    """Training images/s of the real Trainer under each of ``SETTINGS`` (oneDNN on/off x tf.function/
    XLA), in fresh processes, the settings alternating round by round so that a change in the machine's
    load hits them all alike; ``emulate_avx2`` holds oneDNN and XLA's code generation to AVX2 (an
    AVX-512 machine approaching an AVX2 laptop: TensorFlow's own Eigen kernels are built for AVX2 or less
    anyway). Returns per setting the img/s of every round, the median, and the ratio of medians to
    "oneDNN off, tf.function" (what an AVX2 CPU ran before this package turned oneDNN on)."""
    extra = AVX2_EMULATION if emulate_avx2 else {}
    runs = {name: [] for name in SETTINGS}
    for r in range(rounds):
        for name, (env, mode) in SETTINGS.items():
            w = run_worker(profile_name, mode, steps, env=dict(env, **extra))
            runs[name].append(w["images_per_s"])
            log(f"  round {r + 1}/{rounds}  {name:24s} {w['images_per_s']:6.1f} img/s  (first step {w['first_step_s']:.0f} s)")
    med = {name: float(np.median(v)) for name, v in runs.items()}
    base = med["oneDNN off, tf.function"]
    return {"profile": profile_name, "rounds": rounds, "steps": steps, "emulate_avx2": emulate_avx2,
            "env": extra, "images_per_s": runs, "median": med, "ratio_to_off_function": {k: v / base for k, v in med.items()}}


# ------------------------------------------------------------------ sampling
def sampling_bench(profile, quick=False, batch=SAMPLE_BATCH, steps_list=FAST_STEPS, repeats=5) -> dict:
    """Seconds to draw ``batch`` images per sampler against steps x one compiled forward pass."""
    import numpy as np
    import tensorflow as tf
    from .sampling import ddpm_loop_step, initial_noise, make_loop, model_eps_fn, run_loop, sample
    from .schedule import NoiseSchedule
    from .unet import build_unet
    model = build_unet(profile)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    T, s, c = schedule.T, profile.image_size, profile.channels
    shape = (batch, s, s, c)
    eps_fn = model_eps_fn(model)

    forward = tf.function(lambda x, t: model([x, t], training=False))
    x = tf.random.normal(shape, seed=0)
    t = tf.fill([batch], T // 2)
    forward_s = best_time(lambda: forward(x, t).numpy(), repeats)

    rows = []
    # DDPM: warm the loop up on 2 steps (one trace serves every segment), then time it.
    run = make_loop(eps_fn, schedule, ddpm_loop_step(), ("ddpm", "posterior"), clip_x0=1.0, rank=len(shape))
    x_T = initial_noise(shape, 0, T)
    steps_from_top = lambda n: np.arange(T - 1, T - n - 2, -1, dtype=np.int32)   # n steps, then stop
    run_loop(run, x_T, steps_from_top(2), np.zeros((0, 2), np.float32), 0).numpy()
    if quick:
        timed = min(100, T)
        t0 = time.perf_counter()
        run_loop(run, x_T, steps_from_top(timed), np.zeros((0, timed), np.float32), 0).numpy()
        seconds = (time.perf_counter() - t0) * T / timed
        note = f"timed {timed} of {T} steps, scaled by {T / timed:g}"
    else:
        t0 = time.perf_counter()
        sample(eps_fn, shape, schedule, sampler="ddpm", seed=0, clip_x0=1.0)
        seconds, note = time.perf_counter() - t0, ""
    rows.append({"sampler": "ddpm", "eta": 1.0, "steps": T, "seconds": seconds, "note": note})

    for sampler, eta in FAST_SAMPLERS:
        sample(eps_fn, shape, schedule, sampler=sampler, steps=2, eta=eta, seed=0, clip_x0=1.0)  # warm up
        for steps in steps_list:
            t0 = time.perf_counter()
            sample(eps_fn, shape, schedule, sampler=sampler, steps=steps, eta=eta, seed=0, clip_x0=1.0)
            rows.append({"sampler": sampler, "eta": eta, "steps": steps,
                         "seconds": time.perf_counter() - t0, "note": ""})
    for row in rows:
        row["bound_s"] = row["steps"] * forward_s
        row["ratio"] = row["seconds"] / row["bound_s"]
    return {"batch": batch, "forward_s": forward_s, "quick": quick, "rows": rows}


# ------------------------------------------------------------------ where a step spends its time
STEP_PARTS = ("convolutions", "GroupNorm", "attention", "other network ops", "optimizer", "EMA update",
              "noising and loss")


def step_part(event_name: str) -> str | None:
    """What a profiler op event ("scope/path:OpType") belongs to; None for events that are not ops."""
    if not re.fullmatch(r"[\w./-]+:\w+", event_name):   # not an op: "ExecutorState::Process",
        return None                                  # "EagerLocalExecute: __inference_...", "ParallelFor"
    path, op_type = event_name.rsplit(":", 1)
    path = re.sub(r"^(cond(_\d+)?/(then|else)/_\d+/cond(_\d+)?/)+", "", path)   # inside the step's tf.cond
    head = path.split("/")[0]
    if head.startswith("ema_update"):
        return "EMA update"
    if head.startswith("adam") or head.startswith("loss_scale_optimizer"):
        return "optimizer"
    if head.startswith(("noising", "loss", "stateful_")):
        return "noising and loss"
    if "Conv2D" in op_type:
        return "convolutions"
    if "norm" in path:
        return "GroupNorm"
    if "attn" in path:
        return "attention"
    return "other network ops"


def profile_step(profile, precision="float32", steps=3) -> dict:
    """Milliseconds per compiled training step by part (``STEP_PARTS``), from TensorFlow's profiler:
    the op events of ``steps`` traced steps, summed over the threads that ran them (so the total can
    exceed the wall time on several cores); plus the wall time of a step and of one input batch."""
    import tempfile
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    from .data import make_dataset
    trainer, x0 = bench_trainer(profile, precision)
    b, s, c = profile.batch_size, profile.image_size, profile.channels
    for _ in range(3):
        trainer.train_step(x0)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(x0)
        wall = (time.perf_counter() - t0) / steps
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    ps = {part: 0 for part in STEP_PARTS}
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                part = step_part(plane.event_metadata[event.metadata_id].name)
                if part:
                    ps[part] += event.duration_ps
    ms = {part: v / 1e9 / steps for part, v in ps.items()}
    images = np.random.default_rng(0).integers(0, 256, (4 * b, s, s, c), dtype=np.uint8)
    batches = iter(make_dataset(images, b, seed=0).repeat())
    next(batches)
    t0 = time.perf_counter()
    for _ in range(20):
        next(batches)
    return {"precision": precision, "steps": steps, "step_ms": 1e3 * wall, "ms_by_part": ms,
            "op_ms": sum(ms.values()), "input_batch_ms": 1e3 * (time.perf_counter() - t0) / 20}


# ------------------------------------------------------------------ one profile, end to end
def bench_profile(name, steps=None, modes=MODES, sampling=True, quick=False, log=print,
                  precisions=None) -> dict:
    """Everything but the machine-wide matmul limit for one profile; returns a JSON-able dict.
    ``precisions``: the training precisions to time (default float32, and bfloat16 where the CPU
    has it: ``profiles.resolve_precision``)."""
    from .profiles import get_profile, resolve_precision
    from .unet import build_unet, count_params
    profile = get_profile(name)
    t0 = time.perf_counter()
    model = build_unet(profile)
    flops, by_type = forward_flops(model)
    result = {"profile": profile.name, "params": count_params(model),
              "forward_gflop_per_image": flops / 1e9, "flops_by_type": by_type,
              "flops_shares": flops_summary(by_type)}
    del model
    log(f"  [{name}] FLOPs counted in {time.perf_counter() - t0:.1f} s")
    auto, why = resolve_precision("auto", gpu=False)
    result["bfloat16"] = {"on": auto == "bfloat16", "why": why}
    from .profiles import resolve_compile
    jit, compile_why = resolve_compile("auto", gpu=False)
    result["chosen"] = {"mode": "xla" if jit else "function", "precision": auto, "why": compile_why}
    if precisions is None:
        precisions = ("float32", "bfloat16") if auto == "bfloat16" else ("float32",)
    t0 = time.perf_counter()
    result["conv"] = {p: conv_limit(profile, dtype=p) for p in precisions}
    log(f"  [{name}] conv limits measured in {time.perf_counter() - t0:.1f} s")
    result["training"] = {}
    for mode in modes:
        for precision in precisions:
            n = (steps or 10) if mode != "eager" else min(steps or 3, 3)
            r = run_worker(profile.name, mode, n, precision)
            r["achieved_gflops"] = r["images_per_s"] * 3 * result["forward_gflop_per_image"]
            r["share_of_conv_limit"] = r["achieved_gflops"] / result["conv"][precision]["limit_gflops"]
            result["training"][f"{mode}/{precision}"] = r
            log(f"  [{name}] training, {mode}/{precision}: {r['process_s']:.1f} s in a subprocess")
    t0 = time.perf_counter()
    result["step_profile"] = {p: profile_step(profile, p) for p in precisions}
    log(f"  [{name}] step profiled in {time.perf_counter() - t0:.1f} s")
    if sampling:
        t0 = time.perf_counter()
        result["sampling"] = sampling_bench(profile, quick=quick)
        log(f"  [{name}] sampling measured in {time.perf_counter() - t0:.1f} s")
    return result


def paired_step_rates(trainers: dict, batch, rounds: int = 8, steps: int = 12, log=print) -> dict:
    """Images/s of several ``Trainer``s on one ``batch``, measured in alternation: after three untimed
    steps (tracing) and one untimed round each, ``rounds`` rounds of ``steps`` steps per trainer, the
    order reversed every other round, so a busy machine slows every contender alike. Returns
    {"images_per_s": {name: [per round]}, "ratio": {name: (mean, standard error) of its per-round rate
    over the first trainer's}}: a win counts only beyond two standard errors."""
    names = list(trainers)
    size = int(batch.shape[0])
    for name in names:
        for _ in range(3 + steps):
            trainers[name].train_step(batch)
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(steps):
                trainers[name].train_step(batch)
            rates[name].append(size * steps / (time.perf_counter() - t0))
        log(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names) + " img/s")
    base = np.array(rates[names[0]])
    ratio = {}
    for name in names[1:]:
        q = np.array(rates[name]) / base
        ratio[name] = (float(q.mean()), float(q.std(ddof=1) / np.sqrt(len(q))) if len(q) > 1 else float("nan"))
    return {"images_per_s": rates, "ratio": ratio, "rounds": rounds, "steps": steps}


# ------------------------------------------------------------------ the one-minute speed check (a GPU owner's)
SPEED_CHECK_SIZES = (4096, 8192)


def device_facts() -> dict:
    """The GPUs TensorFlow sees (name and compute capability), or the CPU's facts when it sees none."""
    import tensorflow as tf
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({"name": details.get("device_name", gpu.name),
                     "compute_capability": list(details.get("compute_capability") or [])})
    return {**machine_facts(), "gpus": gpus}


def speed_check(profile_name="gpu", seconds=60.0, precision="auto", sizes=SPEED_CHECK_SIZES, log=print) -> dict:
    """About ``seconds`` of timed training: the real ``Trainer`` of the profile's U-Net in ``precision``
    ("auto": float16 on a GPU) on one device, and the same precision's matmul limit.

        images/s  = steps x batch / seconds of those steps (after two untimed steps: trace, compile)
        achieved  = images/s x 3 x forward FLOPs per image      (backward ~ 2 forwards)
        share     = achieved / the best n x n matmul FLOP/s in that precision, n in ``sizes``
    """
    from .profiles import get_profile, resolve_precision
    profile = get_profile(profile_name)
    precision, why = resolve_precision(precision)
    facts = device_facts()
    t0 = time.perf_counter()
    matmul = matmul_limit(sizes, repeats=5, dtype=precision)
    limit = max(r["gflops"] for r in matmul)
    log(f"  matmul limit ({precision}): {limit:,.0f} GFLOP/s ({time.perf_counter() - t0:.1f} s)")
    from .training import compile_choice         # the Trainer's own rule ($DDPM_COMPILE before "auto")
    jit, compile_why = compile_choice(profile.compile)
    trainer, x0 = bench_trainer(profile, precision, jit_compile=jit)
    flops, _ = forward_flops(trainer.ema_model)     # the trained U-Net's float32 copy: the same layers
    t0 = time.perf_counter()
    for _ in range(2):
        loss = float(trainer.train_step(x0))
    first = time.perf_counter() - t0
    log(f"  two untimed steps (trace{' + XLA compile' if trainer.config.jit_compile else ''}): {first:.1f} s")
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < seconds:   # each step waits for its loss: no queue builds up
        loss = trainer.train_step(x0)
        steps += 1
    timed = time.perf_counter() - t0
    images_per_s = steps * profile.batch_size / timed
    achieved = images_per_s * 3 * flops / 1e9
    from . import ONEDNN_SWITCHED_ON
    peak = fma_peak() if not facts["gpus"] else None
    return {"profile": profile.name, "precision": precision, "why": why, "jit_compile": trainer.config.jit_compile,
            "compile_why": compile_why, "onednn_switched_on_by_ddpm_lessons": ONEDNN_SWITCHED_ON,
            "fma_peak": peak, "share_of_fma_peak": (images_per_s * 3 * flops / 1e9 / peak["gflops"])
            if peak and peak["gflops"] else None,
            "device": facts, "matmul": matmul, "matmul_limit_gflops": limit,
            "forward_gflop_per_image": flops / 1e9, "batch_size": profile.batch_size,
            "untimed_s": first, "steps": steps, "timed_s": timed, "images_per_s": images_per_s,
            "achieved_gflops": achieved, "share_of_matmul": achieved / limit, "loss": loss}


def format_speed_check(r: dict) -> str:
    """The speed check in four lines, for a GPU owner to read and send back."""
    dev = r["device"]
    where = ", ".join(f"{g['name']} (compute capability {'.'.join(map(str, g['compute_capability']))})"
                      for g in dev["gpus"]) or f"no GPU: {dev['cpu']}, {dev['cores']} cores"
    return "\n".join([
        f"device: {where}; TensorFlow {dev['tensorflow']}",
        f"profile {r['profile']}: batch {r['batch_size']}, {r['forward_gflop_per_image']:.2f} GFLOP per image forward, "
        f"{r['precision']} ({r['why']}); {'XLA' if r['jit_compile'] else 'tf.function'} "
        f"({r.get('compile_why', '')}); oneDNN {_onednn_words(dev.get('onednn'), r.get('onednn_switched_on_by_ddpm_lessons'))}",
        f"training: {r['images_per_s']:,.1f} img/s ({r['steps']} steps in {r['timed_s']:.1f} s; "
        f"the two untimed first steps took {r['untimed_s']:.1f} s)",
        f"= {r['achieved_gflops']:,.0f} GFLOP/s = {r['share_of_matmul']:.1%} of this device's {r['precision']} "
        f"matmul speed ({r['matmul_limit_gflops']:,.0f} GFLOP/s, best of n = "
        f"{', '.join(str(m['n']) for m in r['matmul'])})"]
        + ([f"  = {r['share_of_fma_peak']:.1%} of the float32 FMA peak ({_peak_words(r['fma_peak'])})"]
           if r.get("share_of_fma_peak") else []))


def _onednn_words(on, switched) -> str:
    return ({True: "on", False: "off", None: "unknown"}[on]
            + (" (switched on by ddpm_lessons: TensorFlow leaves it off on this CPU)" if switched else ""))


def _peak_words(peak: dict) -> str:
    return (f"{peak['gflops']:,.0f} GFLOP/s = {peak['cores']} cores x {peak['ghz']:.2f} GHz x "
            f"{peak['flop_per_cycle']} FLOP/cycle" + (f", held to {peak['held_to']}" if peak.get("held_to") else ""))


# ------------------------------------------------------------------ report
def format_report(machine: dict, matmul: dict, result: dict) -> str:
    """The printed table for one profile; ``matmul``: {precision: matmul_limit rows}."""
    lines = []
    onednn = {True: "on", False: "off", None: "unknown"}[machine["onednn"]]
    lines.append(f"machine: {machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']}, "
                 f"oneDNN {onednn}" + (f", flags {' '.join(machine['flags'])}" if machine.get("flags") else ""))
    peak = machine.get("fma_peak")
    if peak and peak.get("gflops"):
        lines.append(f"float32 FMA peak: {_peak_words(peak)} (two FMA units per core assumed)")
    for precision, rows in matmul.items():
        lines.append(f"matmul limit ({precision}, n x n, tf.function, best of 5):  "
                     + "   ".join(f"n={r['n']}: {r['gflops']:.1f}" for r in rows) + "  GFLOP/s")
    bf16 = result.get("bfloat16")
    if bf16:
        lines.append(f"bfloat16 training: {'on' if bf16['on'] else 'off'} by default ({bf16['why']})")
    sh = result["flops_shares"]
    lines.append(f"\nprofile {result['profile']}: {result['params'] / 1e6:.3f} M parameters, forward "
                 f"{result['forward_gflop_per_image']:.4f} GFLOP/image (conv {sh['conv']:.0%}, dense "
                 f"{sh['dense']:.0%}, attention {sh['attention']:.0%}, other {sh['other']:.0%})")
    convs = result["conv"]
    first = next(iter(convs.values()))
    lines.append(f"conv 3x3 SAME at the U-Net's shapes (batch {first['batch']}), GFLOP/s:")
    lines.append(f"  {'level':>5} {'res':>4} {'ch':>4} {'GFLOP':>8} " + " ".join(f"{p:>9}" for p in convs))
    for k, r in enumerate(first["levels"]):
        lines.append(f"  {r['level']:>5} {r['resolution']:>4} {r['channels']:>4} {r['gflop']:>8.3f} "
                     + " ".join(f"{c['levels'][k]['gflops']:>9.1f}" for c in convs.values()))
    lines.append("  conv limit (FLOP-weighted): "
                 + ", ".join(f"{p} {c['limit_gflops']:.1f}" for p, c in convs.items()) + " GFLOP/s")
    if result.get("training"):
        any_run = next(iter(result["training"].values()))
        lines.append(f"training (batch {any_run['batch_size']}; achieved = img/s x 3 x forward GFLOP, "
                     "backward ~ 2 forwards; shares of the same precision's limits):")
        lines.append(f"  {'mode':<9} {'precision':<9} {'steps':>5} {'1st step s':>10} {'img/s':>8} {'GFLOP/s':>8} "
                     f"{'% conv':>7} {'% matmul':>8} {'% FMA':>6} {'peak MB':>8}")
        for key, r in result["training"].items():
            precision = r.get("precision", "float32")
            mm = max(x["gflops"] for x in matmul.get(precision, matmul.get("float32")))
            lines.append(f"  {r['mode']:<9} {precision:<9} {r['steps']:>5} {r['first_step_s']:>10.2f} "
                         f"{r['images_per_s']:>8.1f} {r['achieved_gflops']:>8.2f} {r['share_of_conv_limit']:>7.1%} "
                         f"{r['achieved_gflops'] / mm:>8.1%} "
                         + (f"{r['achieved_gflops'] / peak['gflops']:>6.1%}" if peak and peak.get("gflops") else f"{'-':>6}")
                         + f" {r['peak_rss_mb']:>8.0f}"
                         + ("  <- make train's choice" if (r["mode"], precision) == tuple(
                             result.get("chosen", {}).get(k) for k in ("mode", "precision")) else ""))
    if result.get("chosen"):
        lines.append(f"  make train's choice here: {result['chosen']['mode']}, {result['chosen']['precision']} "
                     f"({result['chosen']['why']})")
    for precision, sp in result.get("step_profile", {}).items():
        lines.append(f"where a compiled {precision} step spends its time (TensorFlow profiler, {sp['steps']} "
                     f"steps; op time summed over threads: {sp['op_ms']:.0f} ms, wall {sp['step_ms']:.0f} ms "
                     f"per step; one input batch {sp['input_batch_ms']:.2f} ms):")
        lines.append("  " + "  ".join(f"{part} {ms / sp['op_ms']:.0%}" for part, ms in sp["ms_by_part"].items()))
    if result.get("sampling"):
        smp = result["sampling"]
        lines.append(f"sampling {smp['batch']} images (bound = steps x one compiled forward pass over "
                     f"{smp['batch']} images = {smp['forward_s'] * 1e3:.1f} ms; tracing excluded):")
        lines.append(f"  {'sampler':<14} {'steps':>5} {'seconds':>9} {'bound s':>9} {'ratio':>6}")
        for r in smp["rows"]:
            label = r["sampler"] + (f" eta={r['eta']:g}" if r["sampler"] == "ddim" else "")
            note = f"  ({r['note']})" if r["note"] else ""
            lines.append(f"  {label:<14} {r['steps']:>5} {r['seconds']:>9.2f} {r['bound_s']:>9.2f} "
                         f"{r['ratio']:>6.2f}{note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .plotting import plot_bench
    parser = argparse.ArgumentParser(prog="python -m ddpm_lessons.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="append", help="profile to measure (repeatable; default cpu and tiny)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed training steps (default 10; eager runs at most 3)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"training modes, comma-separated ({','.join(MODES)})")
    parser.add_argument("--no-sampling", action="store_true", help="skip the sampling benchmark")
    parser.add_argument("--quick", action="store_true", help="time DDPM on 100 of its T steps and scale up")
    parser.add_argument("--out", default="runs/bench", help="folder for bench-<profile>.json and .png")
    parser.add_argument("--speed-check", action="store_true",
                        help="only the one-minute check: the profile's training img/s on one device and its share "
                             "of the matmul speed in the training precision (float16 on a GPU); writes "
                             "<out>/speed-check-<profile>.json")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds of the speed check")
    parser.add_argument("--compare-settings", action="store_true",
                        help="paired training img/s under oneDNN on/off x tf.function/XLA (fresh processes, "
                             "alternating rounds); writes <out>/settings-<profile>[-avx2].json")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare-settings")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="with --compare-settings: hold oneDNN and XLA to AVX2 (ONEDNN_MAX_CPU_ISA, XLA_FLAGS)")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="function", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        profile = (args.profile or ["tiny"])[-1]
        print(json.dumps(train_worker(profile, args.mode, args.steps or 10, args.precision)), flush=True)
        return 0

    if args.compare_settings:
        from .profiles import cpu_flags
        name = (args.profile or ["cpu"])[-1]
        result = compare_settings(name, rounds=args.rounds, steps=args.steps or 15, emulate_avx2=args.emulate_avx2,
                                  log=lambda line: print(line, flush=True))
        result["machine"] = machine_facts()
        result["machine"]["flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"settings-{name}{'-avx2' if args.emulate_avx2 else ''}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"\n{result['machine']['cpu']}, flags {' '.join(result['machine']['flags'])}"
              + (", held to AVX2" if args.emulate_avx2 else ""))
        for k, v in result["median"].items():
            print(f"  {k:24s} median {v:6.1f} img/s  x{result['ratio_to_off_function'][k]:.2f}   rounds: "
                  + " ".join(f"{x:.1f}" for x in result["images_per_s"][k]))
        print(f"wrote {path}")
        return 0

    if args.speed_check:
        result = speed_check((args.profile or ["gpu"])[-1], seconds=args.seconds,
                             log=lambda line: print(line, flush=True))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"speed-check-{result['profile']}.json"
        path.write_text(json.dumps(result, indent=1))
        print("\n" + format_speed_check(result) + f"\nwrote {path}", flush=True)
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; choose from {MODES}")
    start = time.perf_counter()
    machine = machine_facts()
    t0 = time.perf_counter()
    from .profiles import cpu_flags, resolve_precision
    machine["flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    machine["fma_peak"] = fma_peak()
    precisions = ("float32", "bfloat16") if resolve_precision("auto", gpu=False)[0] == "bfloat16" else ("float32",)
    matmul = {p: matmul_limit(dtype=p) for p in precisions}
    print(f"  matmul limits ({', '.join(precisions)}) measured in {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.profile or ["cpu", "tiny"]:
        result = bench_profile(name, steps=args.steps, modes=modes, sampling=not args.no_sampling,
                               quick=args.quick, log=lambda s: print(s, flush=True), precisions=precisions)
        doc = {"machine": machine, "matmul": matmul, **result}
        (out / f"bench-{result['profile']}.json").write_text(json.dumps(doc, indent=1))
        plot_bench(out / f"bench-{result['profile']}.png", matmul, result)
        print("\n" + format_report(machine, matmul, result) + "\n", flush=True)
        print(f"wrote {out / ('bench-' + result['profile'] + '.json')} and .png", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":      # ``-m`` imports the package first, which quiets TensorFlow's logs
    sys.exit(main())
