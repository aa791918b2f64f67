"""Samplers (lesson 08): DDPM and DDIM against analytic answers, inversion, shapes and ranges."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.sampling import (ddim_invert, ddim_sample, ddim_step, ddpm_sample, make_ddim_loop,
                                   model_eps_fn, p_mean_variance, timestep_sequence)
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.toy import default_mixture, mixture_eps_fn, sliced_wasserstein

LINEAR = NoiseSchedule.from_kind("linear", 1000)
COSINE = NoiseSchedule.from_kind("cosine", 1000)


def gaussian_eps(schedule, s):
    """Exact eps* for i.i.d. N(0, s^2) pixels: sqrt(1 - abar) x / (abar s^2 + 1 - abar)."""
    abar = tf.constant(schedule.alphas_cumprod, tf.float32)

    def eps_fn(x, t):
        ab = tf.reshape(tf.gather(abar, t), [-1] + [1] * (len(x.shape) - 1))
        return tf.sqrt(1 - ab) * x / (ab * s * s + 1 - ab)
    return eps_fn


def test_timestep_sequence():
    assert timestep_sequence(1000, 1000).tolist() == list(range(999, -1, -1))
    seq = timestep_sequence(1000, 50)
    assert len(seq) == 50 and seq[0] == 999 and seq[-1] == 0 and np.all(np.diff(seq) < 0)
    with pytest.raises(ValueError, match="num_steps"):
        timestep_sequence(1000, 0)


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_ddim_eta1_full_step_is_the_ddpm_posterior_step(schedule):
    """sigma^2 = beta~_t and the deterministic part is the posterior mean (Song et al. Sec. 4.1)."""
    rng = np.random.default_rng(0)
    x_t = tf.constant(rng.standard_normal((6, 3, 3, 2)))
    eps = tf.constant(rng.standard_normal((6, 3, 3, 2)))
    t = tf.constant([1, 2, 10, 500, 998, 999])
    z = tf.constant(rng.standard_normal((6, 3, 3, 2)))
    mean, var, _ = p_mean_variance(x_t, t, eps, schedule)
    x_s, _ = ddim_step(x_t, t, t - 1, eps, schedule, eta=1.0, noise=z)
    np.testing.assert_allclose(x_s, mean + tf.sqrt(var) * z, rtol=1e-7, atol=1e-9)


def test_constant_predictor_gives_the_analytic_mean_and_variance():
    """With eps_theta = 0 every step is linear: x_s = sqrt(abar_s / abar_t) x_t + sigma z, so from
    x_T ~ N(0, 1) the final variance follows v_s = (abar_s / abar_t) v_t + sigma^2 exactly."""
    zero = lambda x, t: tf.zeros_like(x)
    n, sched = 40_000, LINEAR
    for steps, eta in [(1000, 1.0), (50, 1.0), (50, 0.5), (20, 0.0)]:
        taus = timestep_sequence(1000, steps)
        ab = np.append(sched.alphas_cumprod, 1.0)
        v = 1.0
        for t, s in zip(taus, list(taus[1:]) + [-1]):
            sigma2 = eta ** 2 * (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s])
            v = ab[s] / ab[t] * v + sigma2
        x = ddim_sample(zero, (n, 1), sched, num_steps=steps, eta=eta, seed=steps)
        assert abs(x.mean()) < 4 * np.sqrt(v / n), f"{steps} steps, eta {eta}: mean {x.mean():.3f}"
        assert x.var() == pytest.approx(v, rel=0.03), f"{steps} steps, eta {eta}: var {x.var():.4g} vs {v:.4g}"
    # and the DDPM sampler (posterior variance) agrees with the 1000-step eta = 1 recursion
    x = ddpm_sample(zero, (n, 1), sched, seed=7)
    ab = sched.alphas_cumprod
    a = sched.posterior_mean_coef1 / np.sqrt(ab) + sched.posterior_mean_coef2
    v = 1.0
    for t in range(999, -1, -1):
        v = a[t] ** 2 * v + (sched.posterior_variance[t] if t > 0 else 0.0)
    assert x.var() == pytest.approx(v, rel=0.03)


@pytest.mark.parametrize("eta, steps, tol", [(0.0, 1000, 0.05), (0.0, 50, 0.12), (1.0, 50, 0.2)])
def test_ddim_reproduces_gaussian_images(eta, steps, tol):
    """Exact eps*: the variance comes back to within the discretisation error, which grows as the
    steps get coarser (and most for eta = 1, whose posterior variance is too small for big steps)."""
    s = 0.5
    x = ddim_sample(gaussian_eps(COSINE, s), (3000, 2, 2, 2), COSINE, num_steps=steps, eta=eta, seed=1)
    assert abs(x.mean()) < 0.02
    assert x.var() == pytest.approx(s * s, rel=tol), f"variance {x.var():.4f}, want {s * s}"


def test_ddim_inversion_round_trips_and_converges():
    s = 0.5
    eps_fn = gaussian_eps(COSINE, s)
    x0 = (np.random.default_rng(2).standard_normal((32, 4, 4, 3)) * s).astype(np.float32)
    errors = {}
    for steps in (50, 200):
        x_T = ddim_invert(eps_fn, x0, COSINE, steps)
        back = ddim_sample(eps_fn, x0.shape, COSINE, num_steps=steps, eta=0.0, x_T=x_T)
        errors[steps] = float(np.sqrt(np.mean((back - x0) ** 2)))
    assert errors[200] < 0.01, f"round trip at 200 steps: rms error {errors[200]:.4f}"
    assert errors[50] / errors[200] > 3, f"error must shrink ~1/steps: {errors}"
    # the deterministic sampler really is deterministic
    x_T = np.random.default_rng(3).standard_normal(x0.shape).astype(np.float32)
    a = ddim_sample(eps_fn, x0.shape, COSINE, num_steps=20, eta=0.0, x_T=x_T, seed=1)
    b = ddim_sample(eps_fn, x0.shape, COSINE, num_steps=20, eta=0.0, x_T=x_T, seed=2)
    np.testing.assert_array_equal(a, b)


def test_ddim_full_eta1_matches_ddpm_on_the_mixture():
    mixture = default_mixture()
    eps_fn = mixture_eps_fn(mixture, LINEAR)
    ddpm = ddpm_sample(eps_fn, (3000, 2), LINEAR, seed=1)
    ddim = ddim_sample(eps_fn, (3000, 2), LINEAR, num_steps=1000, eta=1.0, seed=1)
    # same seed, same noise draws, same update: the same samples up to float rounding
    assert np.abs(ddpm - ddim).max() < 1e-3
    floor = sliced_wasserstein(mixture.sample(3000, seed=5), mixture.sample(3000, seed=6))
    assert sliced_wasserstein(ddim, mixture.sample(3000, seed=7)) < 2 * floor + 0.02


def test_image_sampling_shapes_range_and_one_trace():
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(),
                            groups=4))
    # random (non-zero) last layer so the output is not trivially zero
    w = model.get_layer("out_conv")
    w.kernel.assign(tf.random.normal(w.kernel.shape, stddev=0.5, seed=1))
    eps_fn = model_eps_fn(model)
    assert model_eps_fn(model) is eps_fn
    for steps, eta in [(1, 0.0), (7, 0.0), (25, 1.0), (1000, 0.3)]:
        x = ddim_sample(eps_fn, (3, 8, 8, 3), COSINE, num_steps=steps, eta=eta, clip_x0=1.0)
        assert x.shape == (3, 8, 8, 3) and np.all(np.isfinite(x))
        assert x.min() >= -1 and x.max() <= 1, f"clip_x0=1 must keep samples in [-1, 1] ({steps} steps)"
    run = make_ddim_loop(eps_fn, COSINE, eta=0.0, clip_x0=1.0)
    assert run.experimental_get_tracing_count() == 1, "one trace must serve every step count"
    x, (taus, xs, x0s) = ddim_sample(eps_fn, (2, 8, 8, 3), COSINE, num_steps=10, clip_x0=1.0,
                                     return_trajectory=True)
    assert xs.shape == x0s.shape == (10, 2, 8, 8, 3) and len(taus) == 10
    x_ddpm = ddpm_sample(eps_fn, (2, 8, 8, 3), COSINE, clip_x0=1.0)
    assert np.all(np.abs(x_ddpm) <= 1)
