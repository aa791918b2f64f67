"""Profiles: every size knob of the course in one frozen object.

    tiny  tests and CI on 2 CPU cores: tracing, not training, dominates
    cpu   the default without a GPU: recognisable portraits in about ten minutes on 2 cores (frozen by
          the course's evaluation protocol at equal wall time: the table in lesson 09, made by
          notebooks/studies/tuning/tune_cpu_profile.py; v-prediction, bfloat16 where the CPU has
          it, DPM-Solver++(2M)-10)
    gpu   the keras.io DDPM example's scale: 64x64 images, a U-Net with attention at 16 and 8

``get_profile()`` reads the environment variable ``DDPM_PROFILE``; without it, it picks
``gpu`` when TensorFlow sees a GPU and ``cpu`` otherwise. Change one knob with
``dataclasses.replace(profile, batch_size=16)``.

``DDPM_MAX_STEPS=N`` caps the training steps of every lesson at N (``capped``): a test run of the
full-size network, e.g. ``make test-gpu`` (MAX_STEPS=500), where lesson 09 would otherwise train 50,000 steps.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass

ENV_VAR = "DDPM_PROFILE"
MAX_STEPS_VAR = "DDPM_MAX_STEPS"
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
COMPILE_MODES = ("auto", "function", "xla")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # x86 CPU flags of native bfloat16 arithmetic


@dataclass(frozen=True)
class Profile:
    name: str
    # data
    image_size: int            # images are resized to image_size x image_size
    channels: int = 3
    # diffusion
    timesteps: int = 1000      # T; the same in every profile so lesson outputs match
    schedule: str = "cosine"   # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal)
    # U-Net
    base_width: int = 32       # channels of the first level
    channel_mults: tuple = (1, 2, 2)   # level i has base_width * channel_mults[i] channels
    num_res_blocks: int = 1    # residual blocks per level
    attention_resolutions: tuple = (8,)  # feature-map sizes that get self-attention
    dropout: float = 0.0
    groups: int = 8            # GroupNorm groups
    num_classes: tuple | None = None  # conditional U-Net: classes per label kind, e.g. (5, 6); None: unconditional
    distribute: str = "auto"  # "auto": MirroredStrategy over several GPUs when there are (training.pick_strategy); "off"
    precision: str = "auto"   # training compute: "float32", "bfloat16", "float16" or "auto" (resolve_precision)
    compile: str = "auto"     # the training step: "function" (tf.function), "xla" (jit_compile) or "auto" (resolve_compile)
    # training
    batch_size: int = 32
    train_steps: int = 2000
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    checkpoint_every: int = 200
    preview_every: int = 500
    lesson_train_steps: int = 200  # the short demonstration run of lesson 07
    prediction: str = "eps"    # the network's target: "eps" (Ho et al.), "v" (Salimans & Ho 2022) or "flow" (lesson 15)
    time_sampling: str = "uniform"  # flow matching's training times: "uniform" or "logit-normal" (SD3)
    loss_weighting: str = "none"   # "none" (L_simple) or "min-snr" (Hang et al. 2023)
    snr_gamma: float = 5.0     # gamma of min-SNR weighting: w = min(SNR, gamma) / SNR (eps), / (SNR + 1) (v)
    label_dropout: float = 0.15    # conditional: each label kind -> "no label" with this probability (lesson 13)
    augment_p: float = 0.0     # non-leaking augmentation (lesson 10): each transform with this probability per image
    augment_dim: int = 0       # the U-Net's augmentation-label input: 0 (none) or 5 (augment.AUGMENT_DIM)
    # sampling
    sampler: str = "ddim"      # "ddim" (any steps, eta below), "dpm++2m", "heun" (EDM) or "ddpm" (all T steps);
                               # a flow-matching network: "euler", "heun" or "dpm++2m" (flow.py)
    sample_steps: int = 50     # steps of the sampler used for previews and final grids (heun: noise levels)
    sample_eta: float = 1.0    # DDIM noise: 1 = ancestral on a respaced schedule, 0 = deterministic
    sample_spacing: str = "uniform"   # timesteps "uniform" in t, or "karras" (rho = 7 in sigma)
    sample_sigma_max: float | None = None  # start at the last timestep with sigma <= this (None: t = T-1)
    sample_churn: float = 0.0  # heun only: EDM's S_churn (0 = deterministic)
    num_samples: int = 64      # the final grid (and its single PNG files)
    verdict_samples: int = 256 # samples scored by the verdict at the end of a run (lesson 11)
    # lesson 03 (2-D toy)
    toy_train_steps: int = 3000
    toy_width: int = 128
    toy_num_samples: int = 4000

    def __post_init__(self):
        """Reject values that cannot work, with the knob's name, its value and what would."""
        def need(ok, knob, rule):
            if not ok:
                raise ValueError(f"profile {self.name!r}: {knob} = {getattr(self, knob)!r} {rule}")
        levels = len(self.channel_mults)
        need(levels >= 1 and all(int(m) >= 1 for m in self.channel_mults), "channel_mults",
             "must be one or more positive integers, e.g. (1, 2, 2)")
        need(self.image_size >= 4 and self.image_size % 2 ** (levels - 1) == 0, "image_size",
             f"cannot be halved {levels - 1} times (one per extra level of channel_mults="
             f"{tuple(self.channel_mults)}); use a multiple of {2 ** (levels - 1)}")
        for knob in ("base_width", "num_res_blocks", "groups", "batch_size", "train_steps",
                     "checkpoint_every", "preview_every", "sample_steps", "num_samples", "verdict_samples",
                     "timesteps"):
            need(int(getattr(self, knob)) >= 1, knob, "must be a positive whole number")
        need(all(self.base_width * m % self.groups == 0 for m in self.channel_mults), "groups",
             f"must divide every level's width {[self.base_width * m for m in self.channel_mults]}")
        need(self.learning_rate > 0 and self.learning_rate < 1, "learning_rate", "must lie in (0, 1), e.g. 2e-4")
        need(self.warmup_steps >= 0, "warmup_steps", "must be 0 or more")
        need(0 <= self.ema_decay < 1, "ema_decay", "must lie in [0, 1), e.g. 0.999")
        need(0 <= self.dropout < 1, "dropout", "must lie in [0, 1)")
        need(self.num_classes is None or (len(self.num_classes) >= 1 and all(int(n) >= 1 for n in self.num_classes)),
             "num_classes", "must be None (unconditional) or one positive class count per label kind, e.g. (5, 6)")
        need(0 <= self.label_dropout < 1, "label_dropout", "must lie in [0, 1), e.g. 0.15")
        need(0 <= self.augment_p < 1, "augment_p", "must lie in [0, 1), e.g. 0.15 (0: no augmentation)")
        need(self.augment_dim in (0, 5), "augment_dim", "must be 0 (no augmentation input) or 5")
        need(self.distribute in ("auto", "off"), "distribute", "must be 'auto' or 'off'")
        need(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        need(self.compile in COMPILE_MODES, "compile", f"must be one of {COMPILE_MODES}")
        need(self.schedule in ("linear", "cosine"), "schedule", "must be 'linear' or 'cosine'")
        need(self.prediction in ("eps", "v", "flow"), "prediction", "must be 'eps', 'v' or 'flow'")
        need(self.time_sampling in ("uniform", "logit-normal"), "time_sampling", "must be 'uniform' or 'logit-normal'")
        need(self.loss_weighting in ("none", "min-snr"), "loss_weighting", "must be 'none' or 'min-snr'")
        need(isinstance(self.snr_gamma, numbers.Real) and self.snr_gamma > 0, "snr_gamma",
             "must be a positive number, e.g. 5.0")
        if self.prediction == "flow":
            need(self.sampler in ("euler", "heun", "dpm++2m"), "sampler",
                 "must be 'euler', 'heun' or 'dpm++2m' for a flow-matching network")
            need(self.loss_weighting == "none", "loss_weighting", "must be 'none' for flow matching")
        else:
            need(self.sampler in ("ddim", "ddpm", "dpm++2m", "heun"), "sampler",
                 "must be 'ddim', 'dpm++2m', 'heun' or 'ddpm'")
        need(self.sample_spacing in ("uniform", "karras"), "sample_spacing", "must be 'uniform' or 'karras'")
        need(self.sample_sigma_max is None or self.sample_sigma_max > 1, "sample_sigma_max",
             "must be None (start at t = T-1) or a noise level above 1, e.g. 80")
        need(self.sample_churn >= 0, "sample_churn", "must be 0 or more")
        need(self.sample_steps <= self.timesteps, "sample_steps", f"must not exceed T = {self.timesteps}")
        need(0 <= self.sample_eta <= 1, "sample_eta", "must lie in [0, 1]")

    def replace(self, **changes) -> "Profile":
        """A copy with some knobs changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)


PROFILES = {
    "tiny": Profile(
        name="tiny", image_size=16, base_width=16, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(8,), groups=4, batch_size=16, train_steps=30, learning_rate=1e-3,
        # tf.function: XLA's first trace of this step costs 2-2.5x tf.function's (39-70 s against 18-27 s on
        # a loaded 2-core Xeon), and 30-40 steps never earn it back: on a CPU without AVX-512 "auto" would pick XLA.
        compile="function",
        warmup_steps=5, ema_decay=0.9, checkpoint_every=10, preview_every=20, lesson_train_steps=40,
        sampler="heun", sample_steps=5, sample_spacing="karras", sample_sigma_max=80.0, sample_churn=1.25,
        num_samples=16, verdict_samples=32, toy_train_steps=300, toy_width=64, toy_num_samples=1000),
    "cpu": Profile(
        name="cpu", image_size=32, base_width=32, channel_mults=(1, 2, 3, 4), num_res_blocks=1,
        attention_resolutions=(16, 8), groups=8, batch_size=32, train_steps=1800,
        learning_rate=1e-3, warmup_steps=200, ema_decay=0.995, checkpoint_every=200, prediction="v",
        preview_every=500, sampler="dpm++2m", sample_steps=10, sample_spacing="karras", sample_sigma_max=80.0,
        num_samples=64),
    "gpu": Profile(
        name="gpu", image_size=64, base_width=64, channel_mults=(1, 2, 4, 8), num_res_blocks=2,
        attention_resolutions=(16, 8), dropout=0.1, groups=8, batch_size=64,
        train_steps=50_000,
        learning_rate=2e-4, warmup_steps=1000, ema_decay=0.999, checkpoint_every=1000,
        preview_every=5000, lesson_train_steps=2000, sampler="heun", sample_steps=18, sample_spacing="karras",
        sample_sigma_max=80.0, sample_churn=0.0, num_samples=64, verdict_samples=512,
        toy_train_steps=5000),
}


# ---------------------------------------------------------------- the objective of a profile

# make train OBJECTIVE=flow: lesson 15's best flow-matching run at 10 network evaluations (its study:
# logit-normal training times beat uniform ones, DPM-Solver++(2M) on the straight path was the best sampler)
FLOW_TIME_SAMPLING = "logit-normal"
FLOW_SAMPLING = dict(sampler="dpm++2m", sample_steps=10, sample_spacing="uniform", sample_sigma_max=None,
                     sample_churn=0.0)


def with_objective(profile: Profile, objective: str) -> Profile:
    """``profile`` trained for ``objective``: "eps" or "v" (with the profile's samplers) or "flow" (flow
    matching, lesson 15: ``FLOW_TIME_SAMPLING``, sampled with ``FLOW_SAMPLING``); "" leaves it as it is."""
    if not objective or objective == profile.prediction:
        return profile
    if objective == "flow":
        return profile.replace(prediction="flow", loss_weighting="none", time_sampling=FLOW_TIME_SAMPLING,
                               **FLOW_SAMPLING)
    if objective in ("eps", "v") and profile.prediction != "flow":
        return profile.replace(prediction=objective)
    raise ValueError(f"OBJECTIVE={objective!r} is not known here: give eps, v or flow (lesson 15)")


# ---------------------------------------------------------------- the sampler of a profile

def network_evaluations(sampler: str, steps: int, T: int = 1000) -> int:
    """How many times a sampler calls the network: T for "ddpm", 2 steps - 1 for "heun", else steps."""
    return T if sampler == "ddpm" else 2 * steps - 1 if sampler == "heun" else steps


def sampler_options(settings) -> dict:
    """The sampling keywords of a ``Profile`` (or a run's settings) for ``generate``: sampler, steps,
    eta, spacing, sigma_max, churn and the network's prediction."""
    return {"sampler": settings.sampler, "steps": settings.sample_steps, "eta": settings.sample_eta,
            "spacing": getattr(settings, "sample_spacing", "uniform"),
            "sigma_max": getattr(settings, "sample_sigma_max", None),
            "churn": getattr(settings, "sample_churn", 0.0),
            "prediction": getattr(settings, "prediction", "eps")}


def describe_sampler(settings) -> str:
    """e.g. "heun-10 (19 network evaluations, karras spacing, from sigma 80)"."""
    o = sampler_options(settings)
    name = f"{o['sampler']}-{o['steps'] if o['sampler'] != 'ddpm' else settings.timesteps}"
    bits = [f"{network_evaluations(o['sampler'], o['steps'], settings.timesteps)} network evaluations"]
    if o["prediction"] == "flow":
        return f"{name} ({bits[0]}, flow matching's ODE from t = 1, evenly spaced)"
    if o["sampler"] == "ddim":
        bits.append(f"eta {o['eta']:g}")
    if o["sampler"] == "heun" and o["churn"]:
        bits.append(f"churn {o['churn']:g}")
    if o["sampler"] != "ddpm":
        bits.append(f"{o['spacing']} spacing")
        if o["sigma_max"] is not None or o["sampler"] == "heun":
            bits.append(f"from sigma {80.0 if o['sigma_max'] is None else o['sigma_max']:g}")
    return f"{name} ({', '.join(bits)})"


# ---------------------------------------------------------------- training precision

def cpu_flags() -> set:
    """The CPU's feature flags from /proc/cpuinfo (an empty set where there is no such file)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str = "auto", flags=None, gpu=None) -> tuple[str, str]:
    """(compute dtype for *training*, why): "float32", "bfloat16" or "float16".

    "auto" picks float16 on a GPU (with loss scaling), bfloat16 on a CPU that does bfloat16
    arithmetic natively (AVX512_BF16 or AMX: 1.05-1.28x the float32 step on the 2-core machine),
    else float32 (without those flags TensorFlow emulates bfloat16, which is slower).
    ``flags`` (a set of CPU flags) and ``gpu`` (bool) default to this machine's; tests pass their own.
    Weights, the loss and the optimizer stay float32 in every case, and sampling computes in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r} must be one of {PRECISIONS}")
    if precision != "auto":
        return precision, f"precision = {precision!r} was asked for"
    if gpu is None:
        gpu = gpu_available()
    if gpu:
        return "float16", "a GPU: float16 compute with loss scaling"
    flags = cpu_flags() if flags is None else set(flags)
    have = [f for f in BF16_FLAGS if f in flags]
    if have:
        return "bfloat16", f"this CPU has {' and '.join(have)}: bfloat16 arithmetic in hardware"
    return "float32", (f"this CPU has neither {' nor '.join(BF16_FLAGS)}: TensorFlow would emulate "
                       "bfloat16, which is slower than float32")


def resolve_compile(mode: str = "auto", flags=None, gpu=None) -> tuple[bool, str]:
    """(XLA for the training step?, why). "auto": XLA on a GPU, and on a CPU without AVX-512 (AVX2
    laptops: with oneDNN on, XLA was at least as fast as tf.function in paired runs, README Speed);
    tf.function on an AVX-512 CPU, where it beat XLA. A stored rule per machine class, not a timing of
    both modes before each run: XLA's first trace costs 30-50 s on these CPUs. ``flags`` and ``gpu``
    default to this machine's; tests pass their own."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile = {mode!r} must be one of {COMPILE_MODES}")
    if mode != "auto":
        return mode == "xla", f"compile = {mode!r} was asked for"
    if gpu is None:
        gpu = gpu_available()
    if gpu:
        return True, "a GPU: XLA"
    flags = cpu_flags() if flags is None else set(flags)
    if "avx512f" in flags:
        return False, ("an AVX-512 CPU: tf.function (faster than XLA on such CPUs in paired runs, README "
                       "Speed; COMPILE=xla to try it)")
    return True, ("a CPU without AVX-512: XLA (with oneDNN, at least as fast as tf.function on such CPUs in "
                  "paired runs, README Speed; COMPILE=function to try it)")


def gpu_available() -> bool:
    """True when TensorFlow sees at least one GPU (imports TensorFlow lazily)."""
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def max_steps(environ=None) -> int | None:
    """The cap on training steps from ``$DDPM_MAX_STEPS`` (a positive whole number), or None."""
    value = (os.environ if environ is None else environ).get(MAX_STEPS_VAR, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_STEPS_VAR}={value!r}: give a positive whole number of steps, e.g. 500, "
                         "or leave it unset for the profile's own")
    return int(value)


def capped_steps(steps: int, cap: int | None = None) -> int:
    """``steps``, at most the cap (``max_steps()`` when ``cap`` is None): for a lesson's own step counts."""
    cap = max_steps() if cap is None else cap
    return int(steps) if cap is None else min(int(steps), cap)


def capped(profile: Profile, cap: int | None) -> Profile:
    """``profile`` with every training length at most ``cap`` steps, for a test run that exercises
    everything once: train_steps, lesson_train_steps, toy_train_steps <= cap; the warm-up <= cap / 5;
    checkpoints and previews at least twice per run. None: the profile unchanged."""
    if cap is None:
        return profile
    return profile.replace(
        train_steps=min(profile.train_steps, cap), lesson_train_steps=min(profile.lesson_train_steps, cap),
        toy_train_steps=min(profile.toy_train_steps, cap), warmup_steps=min(profile.warmup_steps, cap // 5),
        checkpoint_every=max(1, min(profile.checkpoint_every, cap // 2)),
        preview_every=max(1, min(profile.preview_every, cap // 2)))


def get_profile(name: str | None = None) -> Profile:
    """The named profile; else ``$DDPM_PROFILE``; else ``gpu`` with a GPU, ``cpu`` without; with its
    training steps capped by ``$DDPM_MAX_STEPS`` when that is set (``capped``)."""
    source = "argument"
    if name is None:
        name, source = os.environ.get(ENV_VAR, "").strip() or None, f"${ENV_VAR}"
    if name is None:
        name = "gpu" if gpu_available() else "cpu"
    key = name.strip().lower()
    if key not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (from {source}); "
            f"valid profiles: {', '.join(PROFILES)}. Set e.g. {ENV_VAR}=cpu")
    return capped(PROFILES[key], max_steps())
