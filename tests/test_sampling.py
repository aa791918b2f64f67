"""Samplers (lesson 08): DDPM and DDIM against analytic answers, inversion, shapes and ranges."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.sampling import (SAMPLERS, ddim_invert, ddim_sample, ddim_step, ddpm_sample,
                                   ddim_loop_step, dpmpp2m_coefficients, dpmpp2m_sample, make_loop, model_eps_fn,
                                   p_mean_variance, sample, timestep_sequence)
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
    run = make_loop(eps_fn, COSINE, ddim_loop_step(0.0), ("ddim", 0.0), clip_x0=1.0, rank=4)   # the cached one
    assert run.experimental_get_tracing_count() == 1, "one trace must serve every step count"
    x, (taus, xs, x0s) = ddim_sample(eps_fn, (2, 8, 8, 3), COSINE, num_steps=10, clip_x0=1.0,
                                     return_trajectory=True)
    assert xs.shape == x0s.shape == (10, 2, 8, 8, 3) and len(taus) == 10
    x_ddpm = ddpm_sample(eps_fn, (2, 8, 8, 3), COSINE, clip_x0=1.0)
    assert np.all(np.abs(x_ddpm) <= 1)


def test_ddim_eta1_on_a_subsequence_is_the_respaced_posterior_step():
    """Nichol & Dhariwal respacing: betas' = 1 - abar_t / abar_s along tau; DDIM with eta = 1 is the
    posterior-variance ancestral step of that respaced schedule."""
    rng = np.random.default_rng(1)
    taus = timestep_sequence(1000, 20)
    t, s = taus[:-1], taus[1:]
    ab = COSINE.alphas_cumprod
    beta = 1 - ab[t] / ab[s]
    x_t, eps, z = (rng.standard_normal((len(t), 5)) for _ in range(3))
    x0 = (x_t - np.sqrt(1 - ab[t])[:, None] * eps) / np.sqrt(ab[t])[:, None]
    c1 = np.sqrt(ab[s]) * beta / (1 - ab[t])                      # eq. 7 with the respaced betas
    c2 = np.sqrt(1 - beta) * (1 - ab[s]) / (1 - ab[t])
    var = beta * (1 - ab[s]) / (1 - ab[t])
    want = c1[:, None] * x0 + c2[:, None] * x_t + np.sqrt(var)[:, None] * z
    got, _ = ddim_step(tf.constant(x_t), tf.constant(t), tf.constant(s), tf.constant(eps), COSINE,
                       eta=1.0, noise=tf.constant(z))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_dpmpp2m_without_its_correction_is_ddim():
    """Two steps are both first order (the first has no history, the last goes to x_0): DDIM."""
    c_x, c_d, w = dpmpp2m_coefficients(COSINE, timestep_sequence(1000, 2))
    assert np.all(w == 0) and c_x[-1] == 0 and c_d[-1] == 1
    eps_fn = gaussian_eps(COSINE, 0.5)
    x_T = np.random.default_rng(4).standard_normal((64, 3)).astype(np.float32)
    a = dpmpp2m_sample(eps_fn, x_T.shape, COSINE, num_steps=2, x_T=x_T)
    b = ddim_sample(eps_fn, x_T.shape, COSINE, num_steps=2, eta=0.0, x_T=x_T)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)   # float32: x0_hat divides by sqrt(abar_999) ~ 5e-5


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_deterministic_samplers_converge_at_their_order(schedule):
    """For N(0, s^2) pixels the probability-flow ODE is solved exactly by
    x_0 = s x_T / sqrt(abar_T s^2 + 1 - abar_T). Doubling the steps halves DDIM's error (first
    order) and quarters DPM-Solver++(2M)'s (second order)."""
    s = 0.5
    eps_fn = gaussian_eps(schedule, s)
    x_T = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    ab = schedule.alphas_cumprod[-1]
    exact = s * x_T / np.sqrt(ab * s * s + 1 - ab)
    err = lambda x: float(np.sqrt(np.mean((x - exact) ** 2)))
    ddim = [err(ddim_sample(eps_fn, x_T.shape, schedule, num_steps=n, eta=0.0, x_T=x_T)) for n in (80, 160)]
    dpm = [err(dpmpp2m_sample(eps_fn, x_T.shape, schedule, num_steps=n, x_T=x_T)) for n in (80, 160)]
    assert 1.7 < ddim[0] / ddim[1] < 2.3, f"DDIM errors at 80/160 steps: {ddim}"
    assert 3.2 < dpm[0] / dpm[1] < 4.8, f"DPM-Solver++(2M) errors at 80/160 steps: {dpm}"
    assert dpm[1] < ddim[1] / 2


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("dpm++2m", 0.0)])
def test_all_T_steps_reach_the_mixture_like_ddpm(sampler, eta):
    """With the exact score of lesson 03's Gaussian mixture and all T steps, every sampler draws
    from the mixture: as close to it (sliced Wasserstein) as the reference DDPM sampler is."""
    mixture = default_mixture()
    eps_fn = mixture_eps_fn(mixture, COSINE)
    target = mixture.sample(3000, seed=7)
    floor = sliced_wasserstein(mixture.sample(3000, seed=5), mixture.sample(3000, seed=6))
    ddpm = sliced_wasserstein(ddpm_sample(eps_fn, (3000, 2), COSINE, seed=2), target)
    x = sample(eps_fn, (3000, 2), COSINE, sampler=sampler, steps=1000, eta=eta, seed=1)
    d = sliced_wasserstein(x, target)
    assert ddpm < 2 * floor and d < 2 * floor + 0.02, f"{sampler}: {d:.4f}, DDPM {ddpm:.4f}, floor {floor:.4f}"
    # a broken sampler is caught: the same check on a 1-step DDIM fails
    assert sliced_wasserstein(sample(eps_fn, (3000, 2), COSINE, "ddim", steps=1, eta=0.0), target) > 3 * floor


def test_every_sampler_gives_finite_images_in_range_for_every_step_count():
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(),
                            groups=4))
    w = model.get_layer("out_conv")
    w.kernel.assign(tf.random.normal(w.kernel.shape, stddev=2.0, seed=2))   # a wild predictor
    eps_fn = model_eps_fn(model)
    for sampler in SAMPLERS:
        for steps in {"ddpm": [1000], "heun": [1, 2, 3, 10, 50, 200]}.get(sampler, [1, 2, 3, 10, 50, 1000]):
            x = sample(eps_fn, (2, 8, 8, 3), COSINE, sampler=sampler, steps=steps, eta=1.0, seed=3, clip_x0=1.0)
            assert x.shape == (2, 8, 8, 3) and np.all(np.isfinite(x)), f"{sampler}-{steps}"
            assert x.min() >= -1 and x.max() <= 1, f"{sampler}-{steps}: range [{x.min():.3f}, {x.max():.3f}]"
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(eps_fn, (2, 8, 8, 3), COSINE, sampler="euler")


def test_one_eps_fn_serves_points_and_images():
    """The compiled loops are cached per eps_fn *and rank*: sampling points, then images, then points
    again with the same eps_fn must not relax x to an unknown rank (which breaks len(x.shape))."""
    eps_fn = gaussian_eps(COSINE, 0.5)
    for shape in [(16, 2), (4, 2, 2, 3), (16, 2)]:
        for sampler in SAMPLERS:
            x = sample(eps_fn, shape, COSINE, sampler=sampler, steps=5, eta=1.0, seed=0)
            assert x.shape == shape and np.all(np.isfinite(x)), (sampler, shape)


def test_sampling_keeps_no_model_alive():
    """The compiled loops live on the model's eps_fn, not in a module-level cache: once the learner
    drops a model, sampling has not kept it (and its weights) in memory."""
    import gc
    import weakref
    from ddpm_lessons.sampling import generate
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1,), attention_resolutions=(), groups=4))
    x = generate(model, COSINE, 2, sampler="ddim", steps=3, seed=0)
    assert x.shape == (2, 8, 8, 3)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None, "a sampled model stayed in memory after the last reference to it was dropped"
