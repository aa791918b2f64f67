"""ddpm_lessons: a denoising diffusion model (Ho et al. 2020) built from scratch, one lesson per module.

    profiles   every size knob, by name (tiny / cpu / gpu)         lesson 00
    data       image folders -> tf.data in [-1, 1], with a report   lessons 00, 10
    plotting   image grids and figures (the only matplotlib user)   all lessons
    schedule   beta_t, alpha_bar_t, posterior constants             lesson 01
    forward    q(x_t | x_0) and q(x_{t-1} | x_t, x_0)               lesson 02
"""
import os as _os

# Keep TensorFlow's C++ start-up chatter out of notebooks and logs (set before TF loads).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
