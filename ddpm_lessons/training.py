"""Lesson 07 — training: the simplified DDPM objective, made fast and safe to interrupt.

One training step (Ho et al. 2020, Algorithm 1; the loss is eq. 14, "L_simple"):

    t ~ Uniform{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    loss = mean_b  w_b * mean || target_b - net_theta(x_t, t)_b ||^2
    theta <- Adam(theta, clip_by_global_norm(grad loss)),  learning rate warmed up linearly
    theta_ema <- d theta_ema + (1 - d) theta,  d = min(ema_decay, (1 + n) / (10 + n))

The target and the weight are options of ``TrainConfig`` (and of the profile):

    prediction="eps"  target = eps                                   (Ho et al. 2020, the default)
    prediction="v"    target = v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022)
    loss_weighting="none"     w = 1                                  (L_simple, the default)
    loss_weighting="min-snr"  w = min(SNR_t, gamma) / SNR_t for eps,
                              w = min(SNR_t, gamma) / (SNR_t + 1) for v  (Hang et al. 2023)
                              with SNR_t = abar_t / (1 - abar_t), gamma = snr_gamma

The EMA is kept explicitly, as a second copy of the model (``Trainer.ema_model``), rather than
with Keras's optimizer option ``use_ema``: Keras only swaps the averaged weights into the model at
the end of ``fit``, while we want to sample from the average *during* training and checkpoint both.
The warm-up of the decay (as in ``tf.train.ExponentialMovingAverage(num_updates=...)``) keeps the
early average from being dominated by the random initial weights.

``Trainer`` owns model, EMA model, optimizer, step counter, random-number state and the data
iterator, checkpoints them all with ``tf.train.CheckpointManager``, and resumes exactly where it
stopped. A step whose loss is NaN or Inf is not taken (no update, no EMA, no count), and training
stops with the step number and a hint before anything is saved, so the last good checkpoint stays
intact. This module imports neither matplotlib nor ipywidgets.

One module of about 600 lines: the step, its statistics on the device, the checkpoint and the
resumed data order are one state that a checkpoint must save together. What stands apart went to
``progress.py`` (log lines), ``weights.py`` (shipped networks), ``locks.py`` and ``diffusion.py``.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .profiles import resolve_compile, resolve_precision
from .diffusion import LOSS_WEIGHTINGS, PREDICTIONS, Diffusion, check_target, objective  # noqa: F401 (re-exported)
from .flow import check_time_sampling
from .locks import hold
from .progress import PROGRESS_MODES, ProgressLines, format_duration, progress_mode  # noqa: F401 (the loop's; re-exported)
from .weights import (GENERAL_DIR, REFERENCE_DIR, REFERENCE_WEIGHTS, SHIPPED, load_compact_weights,  # noqa: F401
                      load_reference_weights, load_shipped_weights, reference_prediction, save_compact_weights,
                      shipped_settings)   # re-exported: lessons 08-13 import them from here
from .schedule import NoiseSchedule
from .augment import augment_labels, apply_augmentations, draw_augmentations
from .unet import augment_dim, build_unet, float32_copy, label_classes, network_inputs


TARGET_NAMES = {"eps": "the noise (epsilon)", "v": "v (velocity of the variance-preserving path)",
                "flow": "the flow-matching velocity eps - x0 (lesson 15)"}


@dataclass
class TrainConfig:
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0           # global gradient-norm clip (0 or None: no clipping)
    ema_decay: float = 0.995
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    jit_compile: bool | None = None  # XLA; None = $DDPM_COMPILE if set, else profiles.resolve_compile: a GPU or a CPU without AVX-512
    seed: int = 0
    loss_buckets: int = 10           # timestep buckets for the loss-by-t breakdown
    prediction: str = "eps"          # what the network predicts: "eps", "v" or "flow" (flow matching's velocity)
    time_sampling: str = "uniform"   # flow matching's training times: "uniform" or "logit-normal" (flow.py)
    loss_weighting: str = "none"     # per-example weight: "none" or "min-snr"
    snr_gamma: float = 5.0           # gamma of min-SNR weighting
    label_dropout: float = 0.15      # conditional U-Net: each label kind -> "no label" with this probability
    augment_p: float = 0.0           # each transform of augment.py with this probability per image (lesson 10)

    def __post_init__(self):
        check_target(self.prediction, self.loss_weighting, self.snr_gamma)
        check_time_sampling(self.time_sampling)
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout = {self.label_dropout!r} must lie in [0, 1), e.g. 0.15")
        if not (isinstance(self.augment_p, numbers.Real) and 0 <= self.augment_p < 1):
            raise ValueError(f"augment_p = {self.augment_p!r} must lie in [0, 1), e.g. 0.15 (0: no augmentation)")

    @classmethod
    def from_profile(cls, profile, **changes) -> "TrainConfig":
        """The training knobs of a ``Profile`` (learning rate, warm-up, clip, EMA, checkpoints,
        target and loss weighting); ``changes`` override them."""
        keys = ("learning_rate", "warmup_steps", "grad_clip", "ema_decay", "checkpoint_every",
                "prediction", "loss_weighting", "snr_gamma", "label_dropout", "augment_p", "time_sampling")
        mode = getattr(profile, "compile", "auto")
        jit = {} if mode == "auto" else {"jit_compile": mode == "xla"}     # auto: the Trainer resolves it
        return cls(**{**{k: getattr(profile, k) for k in keys}, **jit, **changes})


def loss_weight(t, schedule: NoiseSchedule, prediction="eps", loss_weighting="none", snr_gamma=5.0):
    """Per-example loss weight w(t), (B,) float32, for a batch of timesteps t (B,).

    "none": w = 1.  "min-snr" (Hang et al. 2023), SNR_t = abar_t / (1 - abar_t):
    w = min(SNR_t, gamma) / SNR_t for eps-prediction, min(SNR_t, gamma) / (SNR_t + 1) for v.
    Either way w ||target - prediction||^2 = min(SNR_t, gamma) ||x0 - x0_hat||^2, because
    ||eps - eps_hat||^2 = SNR_t ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR_t + 1) ||x0 - x0_hat||^2.
    """
    return tf.gather(Diffusion(schedule, prediction, loss_weighting, snr_gamma).table("weight"), tf.cast(t, tf.int32))


@keras.saving.register_keras_serializable(package="ddpm_lessons")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(n) = peak * min(1, (n + 1) / warmup_steps): a linear warm-up, then constant."""

    def __init__(self, peak: float, warmup_steps: int):
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return self.peak * tf.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def pick_strategy(setting: str = "auto", gpus: int | None = None):
    """(a ``tf.distribute.Strategy`` or None, why) for training.

    "auto": ``MirroredStrategy`` over every GPU when TensorFlow sees more than one (the global batch is
    split across them, the gradients all-reduced), else None (one device, the plain step);
    "off": None. ``gpus`` (a count) defaults to this machine's; tests pass their own."""
    if setting not in ("auto", "off"):
        raise ValueError(f"distribute = {setting!r}: give 'auto' (several GPUs when there are) or 'off'")
    if setting == "off":
        return None, "distribute = 'off' was asked for: one device"
    if gpus is None:
        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus > 1:
        return tf.distribute.MirroredStrategy(), f"{gpus} GPUs: MirroredStrategy, the global batch split across them"
    return None, f"{gpus} GPU{'s' * (gpus != 1)}: one device"


def compile_choice(mode: str = "auto") -> tuple[bool, str]:
    """(XLA for the training step?, why), as a Trainer decides: ``mode`` unless it is "auto", then
    $DDPM_COMPILE if set (``make test`` sets it), else ``profiles.resolve_compile`` by the machine."""
    if mode == "auto":
        mode = os.environ.get("DDPM_COMPILE", "").strip() or "auto"
    return resolve_compile(mode)


def build_for_training(settings):
    """The profile's U-Net made for training on this machine: (model, strategy, what was chosen and why).

    Precision by ``resolve_precision(settings.precision)`` (bfloat16 where the CPU has AVX512_BF16 or AMX;
    sampling copies stay float32), devices by ``pick_strategy(settings.distribute)`` (a MirroredStrategy
    over several GPUs, the model built in its scope), and the Trainer's compile choice for its step:
    ``compile_choice(settings.compile)``; XLA stays off under a strategy."""
    precision, why = resolve_precision(settings.precision)
    strategy, devices = pick_strategy(settings.distribute)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_unet(settings, precision=precision)
    jit, compile_why = compile_choice(getattr(settings, "compile", "auto"))
    if strategy is not None and jit:
        jit, compile_why = False, "several devices: tf.function (the Trainer leaves XLA off under a strategy)"
    return model, strategy, (f"training computes in {precision}: {why}; devices: {devices}\n"
                             f"training step compiled with {'XLA' if jit else 'tf.function'}: {compile_why}")


def all_finite(tensors):
    """One boolean: no NaN or Inf in any of ``tensors`` (the gradients)."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in tensors])


class AdamClippedAfterSum(keras.optimizers.Adam):
    """Adam whose ``global_clipnorm`` bounds the gradient summed over the replicas of a
    ``tf.distribute`` strategy. Keras clips what ``apply`` is given, and its TensorFlow backend sums
    it over the replicas afterwards, so each replica's part would be clipped alone; here the clip
    moves after that sum. On one device the sum is the gradient itself: the same as Keras's clip."""

    def _clip_gradients(self, grads):
        return grads if self.global_clipnorm else super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        summed = super()._all_reduce_sum_gradients(grads_and_vars)
        if not self.global_clipnorm:
            return summed
        clipped = super()._clip_gradients([g for g, _ in summed])       # Keras's clip, on the sum
        return list(zip(clipped, [v for _, v in summed]))


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or Inf; the message says at which step and what to try."""


def ema_decay_at(n, ema_decay):
    """Decay used for the n-th EMA update (0-based): min(ema_decay, (1 + n) / (10 + n)).
    ``n`` a number gives a float; ``n`` a float32 tensor (inside the compiled step) gives a tensor."""
    if tf.is_tensor(n):
        return tf.minimum(tf.cast(ema_decay, n.dtype), (1.0 + n) / (10.0 + n))
    return min(ema_decay, (1.0 + n) / (10.0 + n))


class Trainer:
    """Train ``model`` (``[x_t, t] -> eps``, or ``-> v`` with ``config.prediction="v"``) on
    batches of images in [-1, 1].

    ``checkpoint_dir``: where checkpoints and ``history.json`` go; ``restore()`` continues from
    the latest one. ``fit(dataset, total_steps)`` trains until the step counter reaches
    ``total_steps`` — so calling it again after an interruption finishes the same run.
    """

    def __init__(self, model: keras.Model, schedule: NoiseSchedule, config: TrainConfig | None = None,
                 checkpoint_dir=None, strategy: tf.distribute.Strategy | None = None):
        self.model, self.schedule, self.strategy = model, schedule, strategy
        self.config = replace(config) if config else TrainConfig()   # a copy: jit is resolved below
        c = self.config
        self.diffusion = objective(schedule, c.prediction, c.loss_weighting, c.snr_gamma, c.time_sampling)
        self.num_classes = label_classes(model)
        self.augment_dim = augment_dim(model)    # 0: the network is not told the transforms (they leak)
        self.mixed_precision = model.dtype_policy.compute_dtype == "float16"
        if strategy is not None:
            if not strategy.extended.variable_created_in_scope(model.trainable_variables[0].value):
                raise ValueError("with a strategy, build the model under its scope: "
                                 "`with strategy.scope(): model = build_unet(...)`")
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            # The EMA model computes in float32 whatever the training policy: it is what we sample from.
            self.ema_model = float32_copy(model)
            # The clip bounds the gradient summed over the replicas (one device: the gradient).
            self.optimizer = AdamClippedAfterSum(WarmupSchedule(c.learning_rate, c.warmup_steps),
                                                   global_clipnorm=c.grad_clip or None)
            if self.mixed_precision:   # float16 gradients underflow: scale the loss up, the gradients down
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            # Build the optimizer now: otherwise its slots are created inside the first compiled
            # step, which then gets traced twice (measured: 48 s instead of 23 s for a 4M U-Net).
            self.optimizer.build(model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            # What the loop reports, kept on the device and read every log_every steps (no round trip
            # per step): loss sum and count of the steps taken, loss per timestep bucket, and the
            # first step whose loss (or, outside float16, gradient) was not finite (-1: none).
            self._stats = {k: tf.Variable(v, trainable=False, name=f"stats_{k}") for k, v in (
                ("loss_sum", 0.0), ("steps", tf.constant(0, tf.int64)),
                ("bucket_sum", tf.zeros([c.loss_buckets])), ("bucket_count", tf.zeros([c.loss_buckets])),
                ("bad_step", tf.constant(-1, tf.int64)), ("bad_loss", 0.0))}
        self.rng = tf.random.Generator.from_seed(c.seed)
        self.history = {"step": [], "loss": [], "seconds": []}
        self.bucket_sum = np.zeros(c.loss_buckets)
        self.bucket_count = np.zeros(c.loss_buckets)
        self.checkpoint = tf.train.Checkpoint(model=model, ema_model=self.ema_model,
                                              optimizer=self.optimizer, step=self.step, rng=self.rng)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if self.checkpoint_dir:
            if not hold(self.checkpoint_dir / "lock"):
                raise RuntimeError(
                    f"another process is training with the checkpoints in {self.checkpoint_dir} (its pid "
                    "is in the file 'lock' there); stop it first, or train in a new run folder")
        self.manager = (tf.train.CheckpointManager(self.checkpoint, str(self.checkpoint_dir),
                                                   max_to_keep=c.keep_checkpoints)
                        if self.checkpoint_dir else None)
        if c.jit_compile is None:    # XLA on a GPU and on CPUs without AVX-512; DDPM_COMPILE (make test) decides first
            c.jit_compile = compile_choice()[0]
        self._compiled_step = tf.function(self._train_step if strategy is None else self._distributed_step,
                                          jit_compile=c.jit_compile and strategy is None, reduce_retracing=True)
        self._elapsed = 0.0
        self._batches = self._batches_of = None      # the data iterator fit() walks, kept between calls
        self._restored_from = None                   # the checkpoint restore() loaded (fit restores its iterator)
        self._drawn = 0                              # batches drawn from it (a skipped float16 step draws one too)

    # ------------------------------------------------------------------ the step
    def drop_labels(self, labels):
        """Classifier-free guidance training (Ho & Salimans 2022): each label kind of each image is
        replaced by its "no label" token independently with probability ``config.label_dropout``, so
        one network learns the conditional and the unconditional model. labels (B, K) int32."""
        labels = tf.cast(labels, tf.int32)
        return self._no_label_where(labels, self.rng.uniform(tf.shape(labels)) < self.config.label_dropout)

    def _no_label_where(self, labels, drop):
        """``labels`` (B, K) with the "no label" token of kind k wherever ``drop`` (B, K) is True."""
        return tf.where(drop, tf.broadcast_to(tf.constant(self.num_classes, tf.int32), tf.shape(labels)), labels)

    def _noised(self, x0, t, noise):
        """(x_t, the target, the per-example loss weight) of images x0 at timesteps t with ``noise``."""
        return self.diffusion.noised(x0, t, noise)

    def _train_step(self, x0, labels=None, noise=None):
        """Algorithm 1 on one batch; returns (mean loss, weighted per-example loss (B,), t (B,)).
        ``labels`` (B, K) int32 for a conditional U-Net (``build_unet(num_classes=...)``).
        ``noise`` (B, H, W, C): each image's own noise, paired with it (reflow, lesson 15), else drawn."""
        batch = tf.shape(x0)[0]
        x0, augment = self._augmented(x0, lambda: self.rng.make_seeds(1)[:, 0], batch, 0, batch)
        with tf.name_scope("noising"):      # the scopes name the parts of the bench's step profile
            t = self.diffusion.training_times(self.rng, batch)
            noise = self.rng.normal(tf.shape(x0), dtype=x0.dtype) if noise is None else tf.cast(noise, x0.dtype)
            x_t, target, weight = self._noised(x0, t, noise)
            inputs = network_inputs(self.model, x_t, self.diffusion.unet_time(t),
                                    None if labels is None else self.drop_labels(labels), augment)
        with tf.GradientTape() as tape:
            out = tf.cast(self.model(inputs, training=True), x0.dtype)
            with tf.name_scope("loss"):
                per_example = weight * tf.reduce_mean(tf.square(target - out), axis=[1, 2, 3])
                loss = tf.reduce_mean(per_example)
                scaled = self.optimizer.scale_loss(loss) if self.mixed_precision else loss
        grads = tape.gradient(scaled, self.model.trainable_variables)
        loss_ok, grads_ok = tf.math.is_finite(loss), all_finite(grads)
        took = self._apply_if_finite(loss_ok, grads_ok, lambda: self.optimizer.apply(grads, self.model.trainable_variables))
        tf.cond(took, self._ema_update_and_count, lambda: tf.constant(False))
        self._count(took, loss, per_example, t, grads_ok)
        return loss, per_example, t

    def _apply_if_finite(self, loss_ok, grads_ok, apply):
        """Run ``apply()`` (the optimizer's update) only when the loss is finite (and, outside float16,
        the gradients too) and no earlier step went bad. Returns whether the step counts as taken.
        In float16 the ``LossScaleOptimizer`` itself skips gradients that overflowed (and halves the
        scale): such a step is not taken either, so ``step`` stays equal to ``optimizer.iterations``."""
        healthy = tf.logical_and(loss_ok, self._stats["bad_step"] < 0)
        took = self._taken(loss_ok, grads_ok)

        def run():
            apply()
            return tf.constant(True)

        tf.cond(healthy if self.mixed_precision else took, run, lambda: tf.constant(False))
        return took

    def _taken(self, loss_ok, grads_ok):
        """A step counts as taken when its loss and gradients are finite and no earlier step went bad."""
        return tf.logical_and(tf.logical_and(loss_ok, self._stats["bad_step"] < 0), grads_ok)

    def _count(self, took, loss, per_example, t, grads_ok=True):
        """Add one step to the device statistics (``_stats``): its loss and per-timestep-bucket losses if
        it was taken, and its number if it is the first whose loss (or float32 gradient) is not finite."""
        s, buckets = self._stats, self.config.loss_buckets
        per_example = tf.cast(per_example, tf.float32)
        s["loss_sum"].assign_add(tf.where(took, tf.cast(loss, tf.float32), 0.0))
        s["steps"].assign_add(tf.cast(took, tf.int64))
        which = self.diffusion.bucket(t, buckets)
        keep = tf.cast(took, tf.float32)
        s["bucket_sum"].assign_add(tf.math.unsorted_segment_sum(
            tf.where(took, per_example, tf.zeros_like(per_example)), which, buckets))
        s["bucket_count"].assign_add(tf.math.unsorted_segment_sum(keep * tf.ones_like(per_example), which, buckets))
        bad = tf.logical_not(tf.math.is_finite(loss))
        if not self.mixed_precision:     # in float16 an overflow is the loss scale's business, not a fault
            bad = tf.logical_or(bad, tf.logical_not(grads_ok))
        first = tf.logical_and(bad, s["bad_step"] < 0)
        s["bad_step"].assign(tf.where(first, self.step + 1, s["bad_step"]))
        s["bad_loss"].assign(tf.where(first, tf.cast(loss, tf.float32), s["bad_loss"]))

    def _augmented(self, x0, seed, total, start, b):
        """(x0 augmented, its augmentation labels or None) with ``config.augment_p`` (augment.py): the
        transforms are drawn for ``total`` images from ``seed()`` (called only when p > 0, so a run
        without augmentation draws the same random numbers as before) and images start .. start + b take theirs.
        The labels go to the network only if it has the input (``augment_dim``); p = 0: x0 unchanged."""
        if not self.config.augment_p:
            return x0, None
        with tf.name_scope("augment"):
            params = draw_augmentations(total, self.config.augment_p, seed(), x0.shape[1])
            params = {k: v[start:start + b] for k, v in params.items()}
            return (apply_augmentations(x0, params),
                    augment_labels(params, x0.shape[1]) if self.augment_dim else None)

    def _ema_update_and_count(self):
        """EMA of every trainable weight (decay ``ema_decay_at(step)``), then step + 1. Under a
        strategy this runs in cross-replica context: once per step, on every replica's copy."""
        with tf.name_scope("ema_update"):
            decay = ema_decay_at(tf.cast(self.step, tf.float32), self.config.ema_decay)
            for ema_w, w in zip(self.ema_model.trainable_variables, self.model.trainable_variables):
                ema_w.assign(decay * ema_w + (1.0 - decay) * w)
        self.step.assign_add(1)
        return tf.constant(True)

    # ------------------------------------------------------------------ the step on several devices
    def _distributed_step(self, x0, labels=None, noise=None):
        """One step under ``self.strategy``: each replica runs ``_replica_step`` on its part of the
        global batch (and takes the update); the EMA and the step counter
        are updated once, in cross-replica context, if the step was taken.
        Returns (mean loss over the global batch, per-example loss (B,), t (B,)), as ``_train_step``."""
        loss, per_example, t, grads_ok = self.strategy.run(self._replica_step, args=(x0, labels, noise))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        grads_ok = self.strategy.experimental_local_results(grads_ok)[0]     # the same on every replica
        per_example, t = self.strategy.gather(per_example, axis=0), self.strategy.gather(t, axis=0)
        took = self._taken(tf.math.is_finite(loss), grads_ok)      # _apply_if_finite's rule, on the summed loss
        tf.cond(took, self._ema_update_and_count, lambda: tf.constant(False))
        self._count(took, loss, per_example, t, grads_ok)
        return loss, per_example, t

    def _replica_step(self, x0, labels=None, noise=None):
        """Algorithm 1 on this replica's b of the global B images (B = the sum of the R parts).

        t, the noise and the label dropout are drawn for the whole global batch from stateless seeds
        (config.seed, step) and each replica takes its slice, so R replicas draw exactly what one
        device would. The loss is this replica's sum / B (the replicas' losses add up to the global
        mean). The gradients are summed over the replicas once, by the optimizer's ``apply`` (Keras's
        TensorFlow optimizer all-reduces what each replica gives it), and clipped by the global norm of
        that sum (``AdamClippedAfterSum``, as on one device). Whether the loss and the gradients are
        finite is agreed by all replicas, so that they skip a bad step together. In float16 the loss is
        scaled as on one device and ``LossScaleOptimizer`` unscales (or skips a step that overflowed).
        Returns (loss part, per-example loss (b,), t (b,), whether the gradients were finite)."""
        c = self.config
        ctx = tf.distribute.get_replica_context()
        b = tf.shape(x0)[0]                      # the parts differ by one when R does not divide B
        sizes = ctx.all_gather(tf.reshape(b, [1]), axis=0)          # (R,) every replica's part
        total = tf.reduce_sum(sizes)
        start = tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group])
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(c.seed, tf.int64), tf.cast(self.step, tf.int64)]), 3)
        x0, augment = self._augmented(x0, lambda: tf.random.experimental.stateless_fold_in(seeds[2], 1), total, start, b)
        with tf.name_scope("noising"):
            t = self.diffusion.training_times_stateless(total, seeds[0])[start:start + b]
            noise = tf.random.stateless_normal(tf.concat([[total], tf.shape(x0)[1:]], 0), seeds[1], dtype=x0.dtype
                                               )[start:start + b] if noise is None else tf.cast(noise, x0.dtype)
            x_t, target, weight = self._noised(x0, t, noise)
            if labels is not None:
                labels = tf.cast(labels, tf.int32)
                labels = self._no_label_where(labels, tf.random.stateless_uniform(
                    tf.concat([[total], tf.shape(labels)[1:]], 0), seeds[2])[start:start + b] < c.label_dropout)
            inputs = network_inputs(self.model, x_t, self.diffusion.unet_time(t), labels, augment)
        with tf.GradientTape() as tape:
            out = tf.cast(self.model(inputs, training=True), x0.dtype)
            per_example = weight * tf.reduce_mean(tf.square(target - out), axis=[1, 2, 3])
            loss = tf.reduce_sum(per_example) / tf.cast(total, per_example.dtype)
            scaled = self.optimizer.scale_loss(loss) if self.mixed_precision else loss
        grads = tape.gradient(scaled, self.model.trainable_variables)
        # All replicas agree whether the step is sound: one all-reduce of two counts of replicas in trouble.
        trouble = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(
            tf.logical_not(tf.stack([tf.math.is_finite(loss), all_finite(grads)])), tf.float32))
        loss_ok, grads_ok = trouble[0] == 0, trouble[1] == 0
        if self.mixed_precision:
            # LossScaleOptimizer skips gradients that are not finite (and halves its scale), judging by one
            # replica's: every replica's are made non-finite when the step is not sound.
            sound = self._taken(loss_ok, grads_ok)
            poison = tf.where(sound, tf.constant(1.0, grads[0].dtype), tf.constant(float("nan"), grads[0].dtype))
            self.optimizer.apply([g * poison for g in grads], self.model.trainable_variables)
        else:
            ctx.merge_call(self._apply_together, args=(grads, loss_ok, grads_ok))
        return loss, per_example, t, grads_ok

    def _apply_together(self, strategy, grads, loss_ok, grads_ok):
        """In cross-replica context: every replica applies its gradients, or none does
        (``_apply_if_finite``; a ``tf.cond`` around a merge must stand here, as in Keras's
        LossScaleOptimizer). Each replica's ``apply`` sums the parts over the replicas (Keras's
        TensorFlow optimizer does, in replica context) and then clips the sum (``AdamClippedAfterSum``)."""
        first = lambda v: strategy.experimental_local_results(v)[0]          # noqa: E731  (the same on every replica)
        variables = self.model.trainable_variables
        self._apply_if_finite(first(loss_ok), first(grads_ok), lambda: strategy.extended.call_for_each_replica(
            self.optimizer.apply, args=(grads, variables)))

    def _split(self, batch):
        """(images, labels or None, noise or None) from a batch: images, (images, labels), or a dict with
        "images" and the optional "labels" and "noise" (``flow.pair_dataset``: reflow's fixed pairs)."""
        noise = None
        if isinstance(batch, dict):
            x0, labels, noise = batch["images"], batch.get("labels"), batch.get("noise")
            if noise is not None and self.config.augment_p:
                raise ValueError("a batch with its own noise (reflow's pairs) cannot be augmented: the transform "
                                 "would break the pairing; train it with augment_p = 0")
        else:
            x0, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if (labels is None) != (self.num_classes is None):
            raise ValueError("a conditional U-Net trains on (images, labels) batches, an unconditional one on "
                             "images alone: make_dataset(images, batch, labels=...) gives the pairs"
                             if labels is None else "labels were given to an unconditional U-Net: build it "
                             "with build_unet(..., num_classes=...) to use them")
        return x0, labels, noise

    def time_steps(self, x0, num_steps: int = 8, warmup: int = 3) -> float:
        """Seconds per compiled training step on batch ``x0``: the median of ``num_steps`` steps, each
        waited for as ``train_step`` waits for its loss, after ``warmup`` untimed ones (the first traces
        the step; the next ones are still slower: with 2, the estimate ran 15% over the training).
        Training state is left as it was: weights, EMA, optimizer, step counter and random numbers
        are put back afterwards."""
        variables = (self.model.variables + self.ema_model.variables + self.optimizer.variables
                     + [self.step, self.rng.state] + list(self._stats.values()))
        saved = [v.numpy() for v in variables]
        if self.strategy is not None:               # this batch, split across the replicas
            size = int((x0[0] if isinstance(x0, (tuple, list)) else x0).shape[0])
            x0 = next(iter(self.strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensor_slices(tuple(x0) if isinstance(x0, (tuple, list)) else x0).batch(size))))
        for _ in range(warmup):
            float(self._compiled_step(*self._split(x0))[0])
        times = []
        for _ in range(num_steps):
            t0 = time.perf_counter()
            float(self._compiled_step(*self._split(x0))[0])
            times.append(time.perf_counter() - t0)
        seconds = float(np.median(times))
        for v, value in zip(variables, saved):
            v.assign(value)
        return seconds

    def train_step(self, batch) -> float:
        """One compiled step on ``batch`` (images, or (images, labels) for a conditional U-Net), its
        loss read at once; raises ``TrainingDiverged`` on a NaN/Inf loss, and then the step was not
        taken: weights, EMA and counter are as before it (nothing is saved). ``fit`` reads the loss
        only every ``log_every`` steps."""
        loss = self._compiled_step(*self._split(batch))[0]
        self.read_statistics()
        return float(loss)

    def read_statistics(self):
        """(mean loss of the steps taken since the last read, their number), read from the device;
        the per-timestep buckets are added to ``bucket_sum``/``bucket_count``. Raises
        ``TrainingDiverged`` if a step's loss was not finite (that step and every later one were
        skipped: the weights in memory are those before it)."""
        s = {k: v.numpy() for k, v in self._stats.items()}
        self.bucket_sum += s["bucket_sum"]
        self.bucket_count += s["bucket_count"]
        for k in ("loss_sum", "steps", "bucket_sum", "bucket_count"):
            self._stats[k].assign(tf.zeros_like(self._stats[k]))
        if s["bad_step"] >= 0:
            raise TrainingDiverged(self._divergence_message(float(s["bad_loss"]), int(s["bad_step"])))
        steps = int(s["steps"])
        return (float(s["loss_sum"]) / steps if steps else float("nan")), steps

    def _divergence_message(self, loss, step):
        last = self.manager.latest_checkpoint if self.manager else None
        where = (f"the last good checkpoint ({Path(last).name}) is intact: re-run to resume from it"
                 if last else "no checkpoint was written yet")
        what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient became NaN or Inf (loss {loss:.4g})"
        return (f"training stopped: {what} at step {step}; {where}. "
                f"Try a lower learning_rate (now {self.config.learning_rate:g}), a gradient clip "
                f"(grad_clip now {self.config.grad_clip}), and check the images for NaN/Inf values.")

    # ------------------------------------------------------------------ checkpoints
    def restore(self) -> int:
        """Load the latest checkpoint (and its loss history) if there is one; return the step."""
        if self.manager and self.manager.latest_checkpoint:
            path = self.checkpoint_dir / "history.json"
            saved = json.loads(path.read_text()) if path.exists() else {}
            was = saved.get("loss_scaled")
            if was is not None and was != self.mixed_precision:
                raise ValueError(
                    f"the checkpoints in {self.checkpoint_dir} were trained "
                    f"{'in float16, with a loss-scale optimizer' if was else 'without float16'}, this "
                    f"Trainer {'computes in float16' if self.mixed_precision else 'does not'}: continue with "
                    f"the precision it was trained with ({'float16' if was else 'float32 or bfloat16'}), or "
                    "start a new run")
            target = saved.get("config", {}).get("prediction")
            if target is not None and target != self.config.prediction:
                raise ValueError(
                    f"the checkpoints in {self.checkpoint_dir} were trained to predict {TARGET_NAMES[target]} "
                    f"(prediction={target!r}), this Trainer predicts {TARGET_NAMES[self.config.prediction]} "
                    f"(prediction={self.config.prediction!r}): read as another target the network's output means "
                    f"something else. Continue with prediction={target!r}, or start a new run")
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self._restored_from = self.manager.latest_checkpoint
            for k, v in self._stats.items():
                v.assign(-tf.ones_like(v) if k == "bad_step" else tf.zeros_like(v))
            if saved:
                step = int(self.step.numpy())
                keep = [i for i, s in enumerate(saved["history"]["step"]) if s <= step]
                self.history = {k: [v[i] for i in keep] for k, v in saved["history"].items()}
                self.bucket_sum = np.array(saved["bucket_sum"])
                self.bucket_count = np.array(saved["bucket_count"])
                self._elapsed = self.history["seconds"][-1] if self.history["seconds"] else 0.0
            self._drawn = int(saved.get("batches_drawn", self.step.numpy()))
            self._batches = self._batches_of = None
        return int(self.step.numpy())

    def save(self) -> str | None:
        """Write a checkpoint and ``history.json`` (written to a temp file, then renamed)."""
        if not self.manager:
            return None
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        state = {"history": self.history, "bucket_sum": self.bucket_sum.tolist(),
                 "bucket_count": self.bucket_count.tolist(), "config": asdict(self.config),
                 "loss_scaled": self.mixed_precision, "batches_drawn": self._drawn,
                 "latest_checkpoint": Path(path).name}
        tmp = self.checkpoint_dir / "history.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.checkpoint_dir / "history.json")
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self, dataset, total_steps: int, callbacks=(), progress=True, log_every: int = 10,
            progress_seconds: float = 10.0):
        """Train until the step counter reaches ``total_steps``; returns the loss history.

        ``dataset`` yields float batches (B, H, W, C) in [-1, 1] (or (images, labels), or reflow's
        {"images", "noise"}: ``_split``) and is repeated as needed; a second
        ``fit`` on the same dataset, or one after ``restore()``, continues its batches where the run
        left them. Steps are not waited for one by one: the loss is read from the device every
        ``log_every`` steps (and before each checkpoint), which is when a NaN loss is noticed (the step
        where it happened and the ones after it were skipped). Each callback is called as
        ``callback(trainer, logs)`` after every step, with ``logs = {"step", "loss"}`` (the loss last
        read). A checkpoint is written every ``config.checkpoint_every`` steps and at the end.

        ``progress``: "bar" is a ``keras.utils.Progbar`` (one line that updates in place: a terminal,
        a notebook); "lines" prints a plain line at most every ``progress_seconds`` and at the end
        (``ProgressLines``: a log file, a pipe); True picks by the environment variable
        ``DDPM_PROGRESS`` ("lines" or "bar", which ``make train`` sets from whether its output is a
        terminal; unset: "bar"); False shows nothing. ``self.progress_mode`` says which one runs
        (``plotting.TrainingMonitor`` starts its lines on a fresh line under a bar).
        """
        step = start = int(self.step.numpy())
        if start >= total_steps:
            return self.history
        mode = progress_mode(progress)
        self.progress_mode = mode
        bar = keras.utils.Progbar(total_steps, width=16, stateful_metrics=["loss", "img/s"], interval=0.5) \
            if mode == "bar" else None
        lines = ProgressLines(total_steps, start, every=progress_seconds) if mode == "lines" else None
        if bar:
            bar.update(start)
        batches = self._iterator(dataset, start)
        seconds, n_images, loss = 0.0, 0, float("nan")
        while step < total_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            self._drawn += 1
            self._compiled_step(*self._split(batch))      # not waited for: the statistics stay on the device
            seconds += time.perf_counter() - t0
            n_images += self._batch_size(batch)
            step += 1
            due = self.manager and (step % self.config.checkpoint_every == 0 or step == total_steps)
            if step % log_every == 0 or step == total_steps or step == start + 1 or due:
                t0 = time.perf_counter()
                loss, _ = self.read_statistics()           # waits for the step; raises on a NaN loss
                step = int(self.step.numpy())              # a float16 step skipped for overflow does not count
                seconds += time.perf_counter() - t0
                self._elapsed += seconds
                self.history["step"].append(step)
                self.history["loss"].append(loss)
                self.history["seconds"].append(round(self._elapsed, 3))
                ips = n_images / max(seconds, 1e-9)
                if bar:
                    bar.update(step, [("loss", loss), ("img/s", ips)])
                if lines:
                    lines.update(step, loss, n_images, seconds)
                seconds, n_images = 0.0, 0
                if self.manager and (step % self.config.checkpoint_every == 0 or step >= total_steps):
                    self.save()
            for cb in callbacks:
                cb(self, {"step": step, "loss": loss})
        return self.history

    def _batch_size(self, batch) -> int:
        x0 = self._split(batch)[0]
        if self.strategy is None:
            return int(x0.shape[0])
        return sum(int(v.shape[0]) for v in self.strategy.experimental_local_results(x0))   # every replica's part

    def _iterator(self, dataset, step: int):
        """The iterator over ``dataset.repeat()`` that continues the run: the one the last ``fit`` left
        (same dataset, same process); after ``restore()`` a new one that skips the batches the run
        had drawn (``batches_drawn`` in history.json), so that it sees the batches an uninterrupted run
        would have seen (the pipeline is seeded: a new process walks it in the same order). Saving
        the tf.data iterator itself in the checkpoint was tried and is not exact: with prefetching, a
        save after the pipeline ran into the next pass stores an advanced reshuffle seed."""
        if self._batches is not None and self._batches_of is dataset:
            return self._batches
        repeated = dataset.repeat()
        if self._restored_from and self._drawn:
            repeated = repeated.skip(self._drawn)
        it = iter(repeated if self.strategy is None else self.strategy.experimental_distribute_dataset(repeated))
        self._batches, self._batches_of = it, dataset
        return it

    def loss_by_timestep(self):
        """(bucket edges (buckets + 1,), mean loss per timestep bucket) over all steps so far."""
        edges = np.linspace(0, self.schedule.T, self.config.loss_buckets + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return edges, self.bucket_sum / self.bucket_count
