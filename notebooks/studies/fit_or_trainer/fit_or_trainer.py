"""Study (issue: "Trainer or keras.Model.train_step run by fit?"), a measurement, not a test.

    nice -n 5 .venv/bin/python notebooks/studies/fit_or_trainer/fit_or_trainer.py            # everything
    .venv/bin/python notebooks/studies/fit_or_trainer/fit_or_trainer.py --only checks         # the tiny checks

Builds ``DiffusionModel``, a small ``keras.Model`` whose ``train_step`` is Algorithm 1 (Ho et al. 2020)
with the pieces ``ddpm_lessons.training.Trainer`` uses (Diffusion.noised, WarmupSchedule, Adam with
global_clipnorm, the EMA with the warmed-up decay ema_decay_at), and compares it with the Trainer:

1. equality: the same initial weights (the shipped reference network), the same batch, the same seed:
   the two draw identical t and noise (both use ``tf.random.Generator.from_seed(seed)`` and draw t,
   then the noise), so 3 steps of each must give the same losses, weights, EMA and random state;
2. speed: paired rounds on the cpu profile (32 px, batch 32, the emoji portraits): Trainer.fit,
   DiffusionModel.fit with steps_per_execution 1, then 10; N steps each, after an untimed warm-up;
3. behaviour, on the tiny profile: TerminateOnNaN against the Trainer's skipped step,
   BackupAndRestore mid-epoch (weights, optimizer, EMA, random state, data position), and the
   optimizer's ``use_ema`` (can the average be sampled during fit; what fit's end does to the weights).

Writes results.json beside itself and prints a table.

The EMA of DiffusionModel is an explicit second copy of the network (``float32_copy``), not
``Adam(use_ema=True)``: the copy can be sampled at any time during training, it is saved by
``save_weights``/``BackupAndRestore`` with the model (a tracked sub-layer), and it uses the Trainer's
warmed-up decay min(d, (1 + n) / (10 + n)) — Keras's ``use_ema`` keeps the average in a private list
of the optimizer and writes it over the model's weights at the end of ``fit`` (check 3c).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np                                          # noqa: E402
import tensorflow as tf                                     # noqa: E402
import keras                                                # noqa: E402

from ddpm_lessons.data import make_dataset, read_image_folder       # noqa: E402
from ddpm_lessons.diffusion import Diffusion                        # noqa: E402
from ddpm_lessons.profiles import get_profile, resolve_compile, resolve_precision, cpu_flags  # noqa: E402
from ddpm_lessons.schedule import NoiseSchedule                     # noqa: E402
from ddpm_lessons.training import (Trainer, TrainConfig, TrainingDiverged, WarmupSchedule,  # noqa: E402
                                   ema_decay_at, load_reference_weights)
from ddpm_lessons.unet import build_unet, float32_copy, network_inputs  # noqa: E402

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the fit version

class DiffusionModel(keras.Model):
    """``network`` ([x_t, t] -> v or eps) trained by ``fit``: ``train_step`` is Algorithm 1.

    ``ema_decay``: keep ``ema_network``, an explicit float32 copy updated after every step with decay
    min(ema_decay, (1 + n) / (10 + n)) (n = optimizer.iterations before the step), as the Trainer;
    None: no EMA (for the ``use_ema`` check). The random numbers come from ``tf.random.Generator
    .from_seed(seed)``, drawn in the Trainer's order (t, then the noise), so both draw the same."""

    def __init__(self, network, schedule, prediction="v", ema_decay=0.995, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.network, self.schedule = network, schedule
        self.diffusion = Diffusion(schedule, prediction)
        self.ema_decay = ema_decay
        self.ema_network = None
        if ema_decay is not None:
            self.ema_network = float32_copy(network)
            self.ema_network.trainable = False          # not in trainable_weights: no optimizer slots
        self.rng = tf.random.Generator.from_seed(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True                               # the network is built; BackupAndRestore asks

    @property
    def metrics(self):
        return [self.loss_tracker]                      # reset by fit at every epoch

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def train_step(self, x0):
        # Algorithm 1: t ~ Uniform{0..T-1} (0-based), eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        t = self.rng.uniform([tf.shape(x0)[0]], 0, self.schedule.T, dtype=tf.int32)
        noise = self.rng.normal(tf.shape(x0), dtype=x0.dtype)
        x_t, target, weight = self.diffusion.noised(x0, t, noise)
        # take a gradient step on  w || target - net(x_t, t) ||^2
        with tf.GradientTape() as tape:
            out = tf.cast(self.network(network_inputs(self.network, x_t, t), training=True), x0.dtype)
            loss = tf.reduce_mean(weight * tf.reduce_mean(tf.square(target - out), axis=[1, 2, 3]))
        grads = tape.gradient(loss, self.network.trainable_variables)
        if self.ema_network is not None:
            decay = ema_decay_at(tf.cast(self.optimizer.iterations, tf.float32), self.ema_decay)
        self.optimizer.apply(grads, self.network.trainable_variables)   # clipped by global_clipnorm
        if self.ema_network is not None:                # theta_ema <- d theta_ema + (1 - d) theta
            for ema_w, w in zip(self.ema_network.weights, self.network.trainable_variables):
                ema_w.assign(decay * ema_w + (1.0 - decay) * w)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


class ProbeModel(DiffusionModel):
    """DiffusionModel that also reports which batch it trained on (batches whose pixels all hold
    id / 1000) and the step's own loss: for the BackupAndRestore and TerminateOnNaN checks."""

    def train_step(self, x0):
        logs = super().train_step(x0)
        logs["batch_id"] = tf.round(x0[0, 0, 0, 0] * 1000.0)
        return logs


def make_optimizer(config: TrainConfig, use_ema=False, ema_momentum=0.99):
    """The Trainer's optimizer on one device: Adam, the warm-up schedule, the global-norm clip."""
    return keras.optimizers.Adam(WarmupSchedule(config.learning_rate, config.warmup_steps),
                                 global_clipnorm=config.grad_clip or None,
                                 use_ema=use_ema, ema_momentum=ema_momentum)


def compiled_model(network, schedule, config: TrainConfig, steps_per_execution=1, cls=DiffusionModel,
                   jit=False, **kwargs):
    model = cls(network, schedule, config.prediction, seed=config.seed,
                **{"ema_decay": config.ema_decay, **kwargs})
    opt = make_optimizer(config)
    opt.build(network.trainable_variables)     # as the Trainer: build the slots before the first trace
    model.compile(optimizer=opt, jit_compile=jit, steps_per_execution=steps_per_execution)
    return model


def max_abs_diff(a, b):
    return float(max(np.max(np.abs(np.asarray(x) - np.asarray(y))) if np.size(x) else 0.0 for x, y in zip(a, b)))


def all_finite(variables):
    return bool(all(np.all(np.isfinite(v.numpy())) for v in variables))


def load_average():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


class Recorder(keras.callbacks.Callback):
    """Per-batch logs (as floats) and the optimizer's step counter after each batch."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        row = {"batch": int(batch), "iterations": int(self.model.optimizer.iterations.numpy())}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.rows.append(row)


# ----------------------------------------------------------------------------- 1. equality

def equality_check(trainer, model, batch, steps=3, what=None):
    """``steps`` steps of each on ``batch`` from the same weights and seed: losses, weight updates, EMA,
    random state. The DiffusionModel steps run through fit (one fit per step: each fit resets the
    loss mean, so its logged loss is that step's loss)."""
    w0 = [w.numpy() for w in trainer.model.trainable_variables]
    assert max_abs_diff(w0, [w.numpy() for w in model.network.trainable_variables]) == 0.0
    # the gradient norm at the start (is the clip at 1.0 engaged?), from the DiffusionModel's pieces
    g = tf.random.Generator.from_state(model.rng.state.numpy(), model.rng.algorithm)
    t = g.uniform([batch.shape[0]], 0, model.schedule.T, dtype=tf.int32)
    noise = g.normal(batch.shape)
    x_t, target, weight = model.diffusion.noised(batch, t, noise)
    with tf.GradientTape() as tape:
        out = model.network([x_t, t], training=True)
        loss0 = tf.reduce_mean(weight * tf.reduce_mean(tf.square(target - out), axis=[1, 2, 3]))
    grad_norm = float(tf.linalg.global_norm(tape.gradient(loss0, model.network.trainable_variables)))

    trainer_losses = [trainer.train_step(batch) for _ in range(steps)]
    single = tf.data.Dataset.from_tensors(batch).repeat()
    fit_losses = [float(model.fit(single, steps_per_epoch=1, epochs=1, verbose=0).history["loss"][0])
                  for _ in range(steps)]
    wt = [w.numpy() for w in trainer.model.trainable_variables]
    wf = [w.numpy() for w in model.network.trainable_variables]
    update = max(float(np.max(np.abs(a - b))) for a, b in zip(wt, w0))
    loss_rel = max(abs(a - b) / abs(a) for a, b in zip(trainer_losses, fit_losses))
    out = {
        "what": what or (f"{steps} steps on one batch of 32 emoji portraits, from the shipped reference weights "
                         "(cpu profile, v-prediction), seed 0 in both: losses, weights and EMA after the steps"),
        "loss_at_start_of_draw_1": float(loss0),
        "grad_norm_step_1": grad_norm,
        "clip_engaged": grad_norm > trainer.config.grad_clip,
        "trainer_losses": trainer_losses,
        "fit_losses": fit_losses,
        "loss_max_relative_difference": loss_rel,
        "weights_max_abs_difference": max_abs_diff(wt, wf),
        "largest_weight_update": update,
        "ema_max_abs_difference": max_abs_diff([w.numpy() for w in trainer.ema_model.trainable_variables],
                                               [w.numpy() for w in model.ema_network.weights]),
        "rng_state_equal": bool(np.array_equal(trainer.rng.state.numpy(), model.rng.state.numpy())),
        "step_counters": [int(trainer.step.numpy()), int(model.optimizer.iterations.numpy())],
        "tolerance": "loss: relative 1e-6 (a few float32 ulps); weights and EMA: 1e-6 absolute "
                     "(compare largest_weight_update: the steps' own size)",
    }
    out["equal_within_tolerance"] = bool(loss_rel <= 1e-6 and out["weights_max_abs_difference"] <= 1e-6
                                         and out["ema_max_abs_difference"] <= 1e-6 and out["rng_state_equal"])
    return out


def clip_equality(log, grad_clip=0.05):
    """The equality check on the tiny profile from random weights with the global-norm clip lowered to
    ``grad_clip`` (below the gradient norm, ~0.2 here), so that the clip is engaged in both (the cpu
    profile's reference weights have a gradient norm of ~0.14, under the clip of 1.0)."""
    tp, tc, ts, tnet = tiny_setup()
    tc = dataclasses.replace(tc, grad_clip=grad_clip)
    tbatch = tf.constant(np.random.default_rng(3).uniform(
        -1, 1, (tp.batch_size, tp.image_size, tp.image_size, 3)).astype("float32"))
    eqc = equality_check(Trainer(copy_net(tnet, tp), ts, tc), compiled_model(copy_net(tnet, tp), ts, tc, 1),
                         tbatch, what=f"3 steps, tiny profile, random weights N(0, 0.1), one random batch, seed 0 "
                                      f"in both, global_clipnorm = grad_clip = {grad_clip} (to engage the clip)")
    eqc["grad_clip"] = grad_clip
    log(f"equality (grad_clip {grad_clip}, engaged: {eqc['clip_engaged']}): losses {eqc['trainer_losses']} vs "
        f"{eqc['fit_losses']}; max rel {eqc['loss_max_relative_difference']:.2e}; weights "
        f"{eqc['weights_max_abs_difference']:.2e} (largest update {eqc['largest_weight_update']:.2e}); EMA "
        f"{eqc['ema_max_abs_difference']:.2e}; rng equal {eqc['rng_state_equal']}; grad norm {eqc['grad_norm_step_1']:.3f}")
    return eqc


# ----------------------------------------------------------------------------- 2. speed

class Timing(keras.callbacks.Callback):
    """When fit began and ended its training (on_train_end comes after fit's epoch loop waited for the
    last step: Keras's catch_stop_iteration calls async_wait)."""

    def on_train_begin(self, logs=None):
        self.begin = time.perf_counter()

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()


def iterator_teardown(dataset, ages=(20.0, 45.0)):
    """Seconds that deleting an iterator over ``dataset`` takes after it was pulled from once a second
    for ``age`` seconds (keras fit makes a new iterator per call and drops it when it returns)."""
    out = []
    for age in ages:
        t0 = time.perf_counter()
        it = iter(dataset)
        while time.perf_counter() - t0 < age:
            next(it)
            time.sleep(1.0)
        t1 = time.perf_counter()
        del it
        t2 = time.perf_counter()
        out.append({"age_s": round(t1 - t0, 2), "delete_s": round(t2 - t1, 2), "done_at_age_s": round(t2 - t0, 2)})
    return out


def speed(trainer, fit1, fit10, dataset, batch_size, steps, rounds, min_rounds, budget_s, log):
    """Paired rounds: Trainer, fit (steps_per_execution 1), fit (10); img/s of each timed call.

    For fit two times: the whole call, and its training alone (on_train_begin -> on_train_end), which
    leaves out the start of the call and what follows on_train_end. In the first run of this study (N = 40,
    whole calls timed) 4 of 12 timed fit calls took 82.0 s where the others took ~49 s: the extra ~33 s
    came after on_train_end, when fit returns and drops its data iterator, and those calls ended 41.0 s or
    82.0 s after they began. ``iterator_teardown`` tries to reproduce that outside fit (pulling from an
    iterator for 20 or 45 s, then deleting it). The Trainer keeps one iterator for the whole run."""
    repeated = dataset.repeat()                 # fit needs more than one pass (34 batches < N)
    warm = 10

    def run_trainer(n):
        t0 = time.perf_counter()
        trainer.fit(dataset, int(trainer.step.numpy()) + n, progress=False)
        t1 = time.perf_counter()
        return {"call": t1 - t0, "training": t1 - t0, "after_end": 0.0}

    def run_fit(model, n):
        timing = Timing()
        t0 = time.perf_counter()
        model.fit(repeated, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[timing])
        t1 = time.perf_counter()
        return {"call": t1 - t0, "training": timing.end - timing.begin, "after_end": t1 - timing.end}

    t0 = time.perf_counter()
    warmup = {"trainer": run_trainer(warm), "fit_spe1": run_fit(fit1, warm), "fit_spe10": run_fit(fit10, warm)}
    log(f"warm-up ({warm} steps each, includes tracing): "
        + ", ".join(f"{k} {v['call']:.1f} s" for k, v in warmup.items()))
    rows = []
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            log(f"time budget reached after {r} rounds")
            break
        sec = {"trainer": run_trainer(steps), "fit_spe1": run_fit(fit1, steps), "fit_spe10": run_fit(fit10, steps)}
        ips = {k: steps * batch_size / v["training"] for k, v in sec.items()}
        ips_call = {k: steps * batch_size / v["call"] for k, v in sec.items()}
        row = {"round": r + 1, "img_per_s": ips, "img_per_s_whole_call": ips_call, "seconds": sec,
               "ratio_spe1": ips["fit_spe1"] / ips["trainer"], "ratio_spe10": ips["fit_spe10"] / ips["trainer"],
               "ratio_spe1_whole_call": ips_call["fit_spe1"] / ips_call["trainer"],
               "ratio_spe10_whole_call": ips_call["fit_spe10"] / ips_call["trainer"],
               "loadavg": load_average()}
        rows.append(row)
        log(f"round {r + 1}: trainer {ips['trainer']:.1f}  fit/spe1 {ips['fit_spe1']:.1f}  fit/spe10 "
            f"{ips['fit_spe10']:.1f} img/s  ratios {row['ratio_spe1']:.3f} {row['ratio_spe10']:.3f}  "
            f"(whole call {row['ratio_spe1_whole_call']:.3f} {row['ratio_spe10_whole_call']:.3f}; after end "
            f"{sec['fit_spe1']['after_end']:.1f} / {sec['fit_spe10']['after_end']:.1f} s)  load {row['loadavg']}")

    def summary(key):
        v = [r[key] for r in rows]
        se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else float("nan")
        return {"median": statistics.median(v), "min": min(v), "max": max(v), "mean": statistics.mean(v),
                "standard_error": se, "per_round": v}
    teardown = iterator_teardown(dataset.repeat())
    log(f"deleting an iterator of the pipeline: {teardown}")
    return {"steps_per_call": steps, "batch_size": batch_size, "rounds": len(rows),
            "warmup_seconds": warmup, "warmup_steps": warm, "total_seconds": time.perf_counter() - t0,
            "rows": rows,
            "ratio_fit_spe1_over_trainer": summary("ratio_spe1"),
            "ratio_fit_spe10_over_trainer": summary("ratio_spe10"),
            "ratio_fit_spe1_over_trainer_whole_call": summary("ratio_spe1_whole_call"),
            "ratio_fit_spe10_over_trainer_whole_call": summary("ratio_spe10_whole_call"),
            "median_img_per_s": {k: statistics.median(r["img_per_s"][k] for r in rows)
                                 for k in ("trainer", "fit_spe1", "fit_spe10")},
            "iterator_teardown": teardown,
            "note": ("img/s = N x 32 / seconds. Trainer: the whole Trainer.fit call (it reads its statistics every "
                     "10 steps and keeps its iterator between calls). fit: its training (on_train_begin -> "
                     "on_train_end); *_whole_call also counts the start of the call and the deletion of its "
                     "iterator after on_train_end (see iterator_teardown). The Trainer's step also does its NaN "
                     "guard and loss-by-timestep buckets, which the DiffusionModel step does not.")}


# ----------------------------------------------------------------------------- 3. behaviour (tiny)

def tiny_setup():
    profile = get_profile("tiny")
    config = TrainConfig.from_profile(profile, prediction="v", jit_compile=False)
    schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
    keras.utils.set_random_seed(0)
    net = build_unet(profile)
    rng = np.random.default_rng(0)   # random weights everywhere: the zero-initialised output conv would stop the gradients
    net.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in net.get_weights()])
    return profile, config, schedule, net


def copy_net(net, profile):
    other = build_unet(profile)
    other.set_weights(net.get_weights())
    return other


def id_dataset(profile, n=1000):
    """Batches whose every pixel is id / 1000 (id = 0, 1, 2, ...), so a step can say which batch it got."""
    shape = [profile.batch_size, profile.image_size, profile.image_size, 3]
    return tf.data.Dataset.range(n).map(lambda i: tf.fill(shape, tf.cast(i, tf.float32) / 1000.0))


def check_terminate_on_nan(log):
    profile, config, schedule, net = tiny_setup()
    rng = np.random.default_rng(1)
    B, S = profile.batch_size, profile.image_size
    batches = rng.uniform(-1, 1, (20, B, S, S, 3)).astype("float32")
    bad = 2
    batches[bad, 0, 0, 0, 0] = np.nan           # one pixel of the third batch
    data = tf.data.Dataset.from_tensor_slices(batches)
    out = {"nan_in_batch": bad, "steps_asked": 20}
    for spe in (1, 5):
        model = compiled_model(copy_net(net, profile), schedule, config, spe, cls=ProbeModel)
        rec = Recorder()
        model.fit(data, steps_per_epoch=20, epochs=1, verbose=0,
                  callbacks=[keras.callbacks.TerminateOnNaN(), rec])
        out[f"fit_spe{spe}"] = {
            "steps_applied": int(model.optimizer.iterations.numpy()),
            "callback_calls": len(rec.rows),
            "weights_finite": all_finite(model.network.trainable_variables),
            "ema_finite": all_finite(model.ema_network.weights),
            "stopped": bool(model.stop_training)}
    trainer = Trainer(copy_net(net, profile), schedule, config)
    try:
        trainer.fit(data, 20, progress=False)
        message = None
    except TrainingDiverged as e:
        message = str(e)
    out["trainer"] = {"raised": message is not None, "message": message,
                      "steps_counted": int(trainer.step.numpy()),
                      "optimizer_iterations": int(trainer.optimizer.iterations.numpy()),
                      "weights_finite": all_finite(trainer.model.trainable_variables),
                      "ema_finite": all_finite(trainer.ema_model.trainable_variables)}
    log(f"TerminateOnNaN: {json.dumps({k: v for k, v in out.items() if k != 'trainer'})}")
    log(f"Trainer on the same data: { {k: v for k, v in out['trainer'].items() if k != 'message'} }")
    return out


class Interrupt(keras.callbacks.Callback):
    """Raise after batch ``at`` (0-based) of epoch 0, after taking a snapshot of the state at the
    backup made at batch ``snap``."""

    def __init__(self, at, snap):
        super().__init__()
        self.at, self.snap, self.epoch, self.state = at, snap, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 0 and batch == self.snap:
            self.state = snapshot(self.model)
        if self.epoch == 0 and batch == self.at:
            raise KeyboardInterrupt("simulated interruption")


def snapshot(model):
    return {"weights": [w.numpy() for w in model.network.trainable_variables],
            "ema": [w.numpy() for w in model.ema_network.weights],
            "adam": [v.numpy() for v in model.optimizer.variables],
            "iterations": int(model.optimizer.iterations.numpy()),
            "rng": model.rng.state.numpy().copy()}


class AtTrainBegin(keras.callbacks.Callback):
    """The model's state when training begins (after BackupAndRestore, listed before it, restored)."""

    def on_train_begin(self, logs=None):
        self.state = snapshot(self.model)
        self.initial_epoch = int(self.model._initial_epoch or 0)


def check_backup_and_restore(log):
    profile, config, schedule, net = tiny_setup()
    data = id_dataset(profile)
    epochs, per_epoch, save_freq, stop_after, last_backup = 2, 8, 3, 6, 5
    # uninterrupted reference
    ref = compiled_model(copy_net(net, profile), schedule, config, cls=ProbeModel)
    rec_ref = Recorder()
    ref.fit(data, steps_per_epoch=per_epoch, epochs=epochs, verbose=0, callbacks=[rec_ref])
    with tempfile.TemporaryDirectory() as backup:
        first = compiled_model(copy_net(net, profile), schedule, config, cls=ProbeModel)
        rec_a, stop = Recorder(), Interrupt(stop_after, last_backup)
        try:
            first.fit(data, steps_per_epoch=per_epoch, epochs=epochs, verbose=0,
                      callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=save_freq), rec_a, stop])
        except KeyboardInterrupt:
            pass
        saved = json.loads((Path(backup) / "training_metadata.json").read_text())
        # "a new process": new objects from the same initial weights and seed
        second = compiled_model(copy_net(net, profile), schedule, config, cls=ProbeModel)
        rec_b, begin = Recorder(), AtTrainBegin()
        second.fit(data, steps_per_epoch=per_epoch, epochs=epochs, verbose=0,
                   callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=save_freq), begin, rec_b])
    s, b = stop.state, begin.state
    ids = lambda rows: [int(r["batch_id"]) for r in rows]
    out = {
        "setting": (f"{epochs} epochs x {per_epoch} steps, BackupAndRestore(save_freq={save_freq}), interrupted "
                    f"after batch {stop_after} of epoch 0 (last backup after batch {last_backup}), then a new "
                    "model fits again with the same callback"),
        "backup_metadata": saved,
        "uninterrupted_batch_ids": ids(rec_ref.rows),
        "interrupted_run_batch_ids": ids(rec_a.rows),
        "resumed_initial_epoch": begin.initial_epoch,
        "resumed_batch_ids": ids(rec_b.rows),
        "restored_iterations": b["iterations"],
        "iterations_at_last_backup": s["iterations"],
        "weights_restored": max_abs_diff(s["weights"], b["weights"]) == 0.0,
        "ema_restored": max_abs_diff(s["ema"], b["ema"]) == 0.0,
        "adam_state_restored": max_abs_diff(s["adam"], b["adam"]) == 0.0,
        "rng_state_restored": bool(np.array_equal(s["rng"], b["rng"])),
        "rng_state_at_resume_is_the_seed": bool(np.array_equal(
            b["rng"], tf.random.Generator.from_seed(config.seed).state.numpy())),
        "steps_total_uninterrupted": int(ref.optimizer.iterations.numpy()),
        "steps_total_interrupted_plus_resumed": int(second.optimizer.iterations.numpy()),
        "final_weights_equal_uninterrupted": max_abs_diff(
            [w.numpy() for w in ref.network.trainable_variables],
            [w.numpy() for w in second.network.trainable_variables]) == 0.0,
    }
    out["trainer"] = trainer_resume(profile, config, schedule, net, data, epochs * per_epoch, stop_after + 1,
                                    last_backup + 1)
    log("BackupAndRestore: " + json.dumps({k: v for k, v in out.items() if k != "setting"}))
    return out


def trainer_resume(profile, config, schedule, net, data, total, stop_at, every):
    """The Trainer the same way: checkpoints every ``every`` steps, killed after step ``stop_at``, a new
    Trainer restores and finishes; compared with an uninterrupted Trainer."""
    cfg = dataclasses.replace(config, checkpoint_every=every)
    ref = Trainer(copy_net(net, profile), schedule, cfg)
    ref.fit(data, total, progress=False)

    def kill(trainer, logs):
        if logs["step"] == stop_at:
            raise KeyboardInterrupt("simulated interruption")
    with tempfile.TemporaryDirectory() as run:
        first = Trainer(copy_net(net, profile), schedule, cfg, checkpoint_dir=run)
        try:
            first.fit(data, total, callbacks=[kill], progress=False)
        except KeyboardInterrupt:
            pass
        second = Trainer(copy_net(net, profile), schedule, cfg, checkpoint_dir=run)
        restored = second.restore()
        second.fit(data, total, progress=False)
    same = lambda a, b: max_abs_diff([w.numpy() for w in a], [w.numpy() for w in b]) == 0.0
    return {"setting": f"checkpoint_every={every}, interrupted after step {stop_at}, restore() + fit({total})",
            "restored_step": restored, "steps_total": int(second.step.numpy()),
            "optimizer_iterations": int(second.optimizer.iterations.numpy()),
            "final_weights_equal_uninterrupted": same(ref.model.trainable_variables, second.model.trainable_variables),
            "final_ema_equal_uninterrupted": same(ref.ema_model.trainable_variables, second.ema_model.trainable_variables),
            "rng_state_equal_uninterrupted": bool(np.array_equal(ref.rng.state.numpy(), second.rng.state.numpy()))}


class PeekEMA(keras.callbacks.Callback):
    """During fit: how far the model's weights are from the optimizer's moving averages."""

    def __init__(self):
        super().__init__()
        self.during, self.raw_last = [], None

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        avg = [v.numpy() for v in opt._model_variables_moving_average]
        raw = [w.numpy() for w in self.model.network.trainable_variables]
        self.during.append(max_abs_diff(avg, raw))
        self.raw_last, self.avg_last = raw, avg


def check_use_ema(log):
    profile, config, schedule, net = tiny_setup()
    rng = np.random.default_rng(2)
    B, S = profile.batch_size, profile.image_size
    data = tf.data.Dataset.from_tensor_slices(rng.uniform(-1, 1, (64, S, S, 3)).astype("float32")).batch(B).repeat()
    model = DiffusionModel(copy_net(net, profile), schedule, config.prediction, ema_decay=None, seed=config.seed)
    opt = make_optimizer(config, use_ema=True, ema_momentum=0.9)
    opt.build(model.network.trainable_variables)
    model.compile(optimizer=opt, jit_compile=False)
    w_init = [w.numpy() for w in model.network.trainable_variables]
    peek = PeekEMA()
    model.fit(data, steps_per_epoch=6, epochs=1, verbose=0, callbacks=[peek])
    after = [w.numpy() for w in model.network.trainable_variables]
    first_step_avg = None
    # Keras's first average: a plain copy of the weights after step 1 (momentum 0 when iterations == 0)?
    m2 = DiffusionModel(copy_net(net, profile), schedule, config.prediction, ema_decay=None, seed=config.seed)
    o2 = make_optimizer(config, use_ema=True, ema_momentum=0.9)
    o2.build(m2.network.trainable_variables)
    m2.compile(optimizer=o2, jit_compile=False)
    p2 = PeekEMA()
    m2.fit(data, steps_per_epoch=1, epochs=1, verbose=0, callbacks=[p2])
    first_step_avg = p2.during[0]
    out = {
        "setting": "Adam(use_ema=True, ema_momentum=0.9), 6 steps of fit on the tiny profile",
        "model_minus_average_during_fit": peek.during,
        "model_weights_after_fit_equal_average": max_abs_diff(after, peek.avg_last) == 0.0,
        "model_weights_after_fit_minus_raw_weights_of_last_step": max_abs_diff(after, peek.raw_last),
        "raw_weights_lost_after_fit": max_abs_diff(after, peek.raw_last) > 0.0,
        "first_average_is_copy_of_weights": first_step_avg == 0.0,
        "moved_from_init": max_abs_diff(after, w_init),
        "average_reachable_during_fit_via": "optimizer._model_variables_moving_average (private)",
    }
    log("use_ema: " + json.dumps({k: v for k, v in out.items() if k != "setting"}))
    return out


# ----------------------------------------------------------------------------- main

def cpu_info():
    model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {"model": model, "cores": os.cpu_count(),
            "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=("all", "checks", "speed", "clip"), default="all")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-rounds", type=int, default=4)
    p.add_argument("--budget", type=float, default=600.0, help="seconds of timed rounds before stopping early")
    p.add_argument("--out", default=str(HERE / "results.json"))
    args = p.parse_args()
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    jit, jit_why = resolve_compile("auto")
    precision, precision_why = resolve_precision("auto")
    results = {"machine": {"cpu": cpu_info(), "python": platform.python_version(), "tensorflow": tf.__version__,
                           "keras": keras.__version__, "loadavg_start": load_average()},
               "jit_compile": jit, "jit_why": jit_why, "precision": precision, "precision_why": precision_why,
               "ema_choice": ("explicit second copy (float32_copy), decay min(d, (1+n)/(10+n)): can be sampled "
                              "during training, saved by save_weights/BackupAndRestore, same warm-up as the "
                              "Trainer; not Adam(use_ema=True) (see behaviour.use_ema)")}
    log(f"cpu {results['machine']['cpu']}; jit_compile={jit} ({jit_why}); precision {precision}")

    if args.only in ("all", "speed"):
        profile = get_profile("cpu")
        config = TrainConfig.from_profile(profile, prediction="v")
        schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
        images, report = read_image_folder(ROOT / "data" / "emoji-portraits", profile.image_size)
        dataset = make_dataset(images, profile.batch_size)
        keras.utils.set_random_seed(0)
        net_t = build_unet(profile, precision=precision)
        load_reference_weights(net_t, "v")
        net_1, net_10 = build_unet(profile, precision=precision), build_unet(profile, precision=precision)
        net_1.set_weights(net_t.get_weights())
        net_10.set_weights(net_t.get_weights())
        trainer = Trainer(net_t, schedule, config)
        fit1 = compiled_model(net_1, schedule, config, 1, jit=jit)
        fit10 = compiled_model(net_10, schedule, config, 10, jit=jit)
        log(f"{report.num_images} images at {profile.image_size} px, batch {profile.batch_size}; "
            f"Trainer jit_compile={trainer.config.jit_compile}")
        batch = next(iter(dataset))
        eq = equality_check(trainer, fit1, batch)
        results["equality"] = eq
        log(f"equality: trainer losses {eq['trainer_losses']}, fit losses {eq['fit_losses']}; max rel "
            f"{eq['loss_max_relative_difference']:.2e}; weights {eq['weights_max_abs_difference']:.2e} "
            f"(largest update {eq['largest_weight_update']:.2e}); EMA {eq['ema_max_abs_difference']:.2e}; "
            f"rng equal {eq['rng_state_equal']}; grad norm {eq['grad_norm_step_1']:.3f}")
        results["equality_clip_engaged"] = clip_equality(log)
        results["speed"] = speed(trainer, fit1, fit10, dataset, profile.batch_size, args.steps, args.rounds,
                                 args.min_rounds, args.budget, log)
    if args.only == "clip":
        results["equality_clip_engaged"] = clip_equality(log)
    if args.only in ("all", "checks"):
        results["behaviour"] = {"terminate_on_nan": check_terminate_on_nan(log),
                                "backup_and_restore": check_backup_and_restore(log),
                                "use_ema": check_use_ema(log)}
    results["machine"]["loadavg_end"] = load_average()
    results["wall_seconds"] = time.perf_counter() - t_start

    if "speed" in results:
        s = results["speed"]
        print("\nround   trainer   fit spe=1   fit spe=10   ratio spe1   ratio spe10   (img/s; fit: on_train_begin..end)")
        for r in s["rows"]:
            i = r["img_per_s"]
            print(f"{r['round']:5d}  {i['trainer']:8.1f}  {i['fit_spe1']:10.1f}  {i['fit_spe10']:11.1f}  "
                  f"{r['ratio_spe1']:11.3f}  {r['ratio_spe10']:12.3f}")
        for k in ("ratio_fit_spe1_over_trainer", "ratio_fit_spe10_over_trainer",
                  "ratio_fit_spe1_over_trainer_whole_call", "ratio_fit_spe10_over_trainer_whole_call"):
            v = s[k]
            print(f"{k}: median {v['median']:.3f} (min {v['min']:.3f}, max {v['max']:.3f}, "
                  f"s.e. {v['standard_error']:.3f}, {s['rounds']} rounds)")
    out = Path(args.out)
    results["sections_run"] = [k for k in ("equality", "equality_clip_engaged", "speed", "behaviour") if k in results]
    if args.only != "all" and out.exists():          # a partial run: keep the other sections of the last run
        kept = json.loads(out.read_text())
        kept.setdefault("earlier_runs", []).append({k: kept.get(k) for k in ("machine", "sections_run", "wall_seconds")})
        kept.update(results)
        results = kept
    out.write_text(json.dumps(results, indent=1, default=float))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
