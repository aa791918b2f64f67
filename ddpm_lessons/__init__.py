"""ddpm_lessons: a denoising diffusion model (Ho et al. 2020) built from scratch, one lesson per module.

    profiles   every size knob, by name (tiny / cpu / gpu)              lesson 00
    data       image folders -> tf.data in [-1, 1], with a report        lessons 00, 10
    plotting   image grids and figures (the only matplotlib user)        all lessons
    schedule   beta_t, alpha_bar_t, posterior constants                  lesson 01
    forward    q(x_t | x_0), q(x_{t-1} | x_t, x_0); v <-> eps <-> x_0     lessons 02, 12
    toy        the whole method on 2-D points, exact mixture score       lesson 03
    blocks     time embedding, residual block, down/up sampling          lesson 04
    attention  self-attention over pixels, by hand                       lesson 05
    unet       the assembled U-Net                                       lesson 06
    diffusion  the objective: noised(x0, t) and predict(output) for eps/v  lessons 07, 08, 12
    training   the Trainer: loss (eps or v, weighting), EMA, checkpoints lessons 07, 12, 14
    progress   plain progress lines for logs (a Progbar in terminals)    lesson 07
    weights    the shipped networks as float16 files, loaded by path     lessons 08-10, 13
    sampling   DDPM, DDIM, DPM-Solver++(2M), EDM Heun, DDIM inversion    lesson 08
    runs       run folders, the step rule, the time estimate, PNGs out   lessons 09, 10
    locks      one training process per run folder (fcntl.flock)        lesson 07
    augment    non-leaking augmentation: transforms and their labels     lesson 10
    metrics    KID, SWD, the copy check, the protocol, the verdict       lesson 11
    bench      speed against the machine's limit (python -m ...bench)    (script)
"""
import os as _os

# Keep TensorFlow's C++ start-up chatter out of notebooks and logs (set before TF loads).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# oneDNN where TensorFlow leaves it off: TensorFlow turns its oneDNN kernels on by itself only on CPUs
# with AVX512_VNNI, AVX512_BF16 or AMX; on an x86 CPU with AVX2 but none of those (most laptops) they
# train the course's U-Net faster (README, Speed). Setting it where TensorFlow would turn it on anyway
# changes nothing. A value the user set always wins. Must happen before TensorFlow is first imported.
from .profiles import cpu_flags as _cpu_flags        # (profiles imports no TensorFlow)

ONEDNN_SWITCHED_ON = False      # True where this package turned oneDNN on and TensorFlow would not have
if "TF_ENABLE_ONEDNN_OPTS" not in _os.environ and "avx2" in _cpu_flags():
    _os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    ONEDNN_SWITCHED_ON = not ({"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"} & _cpu_flags())

__version__ = "0.1.0"
