"""Known-bad pictures made from a folder's own pictures, scored beside the samples (lesson 11).

    gaussian_blur   the pictures blurred by sigma pixels: right layout, missing detail
    noise_images    Gaussian noise clipped to [-1, 1]: nothing right
    blob_images     the pictures with their layout destroyed and their local statistics kept
                    (phase-randomised, Theiler et al. 1992's IAAFT): the colours, the histogram
                    and the power spectrum of a picture, no thing in it. What an undertrained model
                    gives on a varied folder, and what a score must tell apart from real pictures
                    before it may call samples "like your pictures".

All take and return float32 (N, H, W, C) in [-1, 1] (uint8 is accepted too).
"""
from __future__ import annotations

import numpy as np

from .features import _filter_axis, as_unit_float, gaussian_blur  # noqa: F401 (the blur lives with the detail features)


def noise_images(shape, seed: int = 0) -> np.ndarray:
    """Standard Gaussian noise of ``shape`` (N, H, W, C), clipped to [-1, 1]."""
    return np.clip(np.random.default_rng(seed).standard_normal(shape), -1, 1).astype(np.float32)


def _match_histogram(y, sorted_values):
    """Give each channel of y (H, W, C) exactly the values ``sorted_values`` (H*W, C), in y's rank
    order: the result has the source's per-channel histogram and y's ordering of pixels."""
    h, w, c = y.shape
    flat = y.reshape(-1, c)
    out = np.empty_like(flat)
    for ch in range(c):
        out[np.argsort(flat[:, ch], kind="stable"), ch] = sorted_values[:, ch]
    return out.reshape(h, w, c)


def blob_images(images, n: int | None = None, seed: int = 0, iterations: int = 10) -> np.ndarray:
    """``n`` phase-randomised pictures (default: one per picture; more cycle through them with new
    phases): the structure of the picture is gone, its local statistics stay.

    For a picture x with channels x_c, F(x_c) = A_c exp(i phi_c). One random phase field theta
    (the phase of the 2-D FFT of white noise, so the result stays real) is added to every channel:

        y_c = F^-1( A_c exp(i (phi_c + theta)) )

    which keeps each channel's power spectrum |A_c|^2 and the channels' relative phases (their
    colour correlations), and moves every feature to random places. Then IAAFT (Schreiber &
    Schmitz 1996) alternates: give each channel exactly x_c's histogram (rank remapping), then give
    it back the amplitudes A_c (keeping its phases), ``iterations`` times, ending on the histogram:
    the per-channel histogram is exact, the power spectrum is close (tests/test_metrics.py).
    """
    x = as_unit_float(images).astype(np.float64)
    n = len(x) if n is None else int(n)
    rng = np.random.default_rng(seed)
    out = np.empty((n,) + x.shape[1:], np.float32)
    for i in range(n):
        src = x[i % len(x)]
        f = np.fft.fft2(src, axes=(0, 1))
        amp = np.abs(f)
        values = np.sort(src.reshape(-1, src.shape[-1]), axis=0)
        theta = np.angle(np.fft.fft2(rng.standard_normal(src.shape[:2])))[..., None]
        y = np.real(np.fft.ifft2(f * np.exp(1j * theta), axes=(0, 1)))
        for _ in range(iterations):
            y = _match_histogram(y, values)
            g = np.fft.fft2(y, axes=(0, 1))
            y = np.real(np.fft.ifft2(amp * np.exp(1j * np.angle(g)), axes=(0, 1)))
        out[i] = _match_histogram(y, values)
    return out
