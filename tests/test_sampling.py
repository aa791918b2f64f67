"""Samplers (lesson 08): DDPM and DDIM against analytic answers, inversion, shapes and ranges."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.sampling import (END, SAMPLERS, heun_sample, heun_timesteps, karras_timesteps, run_loop,
                                   sigmas, start_timestep, timestep_grid, clip, ddim_invert, ddim_sample, ddim_step, ddpm_sample,
                                   ddim_loop_step, dpmpp2m_coefficients, dpmpp2m_sample, make_loop, model_eps_fn,
                                   p_mean_variance, sample, timestep_sequence)
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.toy import default_mixture, mixture_eps_fn, sliced_wasserstein_w2

LINEAR = NoiseSchedule.from_kind("linear", 1000)
COSINE = NoiseSchedule.from_kind("cosine", 1000)


def gaussian_eps(schedule, s):
    """Exact eps* for i.i.d. N(0, s^2) pixels: sqrt(1 - abar) x / (abar s^2 + 1 - abar)."""
    abar = tf.constant(schedule.alphas_cumprod, tf.float32)

    def eps_fn(x, t):
        ab = tf.reshape(tf.gather(abar, t), [-1] + [1] * (len(x.shape) - 1))
        return tf.sqrt(1 - ab) * x / (ab * s * s + 1 - ab)
    return eps_fn


# ------------------------------------------------------------------ broken variants
# Each closed-form test below also runs one of these and asserts that it *fails*, so every run
# shows that the test can tell a right sampler from a wrong one.

def forgets_its_noise(x, i, grid, ctx):
    """DDIM eta = 1 without its fresh noise: sqrt(1 - abar_s - sigma^2) eps and no sigma z."""
    t, s = grid[i], grid[i + 1]
    eps, x0_hat = ctx.denoise(x, t)
    a_t, a_s = ctx.gather(t), ctx.gather(s)
    sigma = tf.sqrt((1.0 - a_s) / (1.0 - a_t)) * tf.sqrt(1.0 - a_t / a_s)
    return tf.sqrt(a_s) * x0_hat + tf.sqrt(tf.maximum(1.0 - a_s - sigma ** 2, 0.0)) * eps, x0_hat, ctx.carry


def euler_instead_of_heun(x, i, grid, ctx):
    """Heun's step without its second evaluation (Euler in sigma): first order, not second."""
    t, s = grid[i], grid[i + 1]
    a_t, a_s = ctx.gather(t), ctx.gather(s)
    _, d0 = ctx.denoise(x, t)
    sig_t, sig_s = tf.sqrt((1 - a_t) / a_t), tf.sqrt((1 - a_s) / a_s)
    x_ve = x / tf.sqrt(a_t)
    return (x_ve + (sig_s - sig_t) * (x_ve - d0) / sig_t) * tf.sqrt(a_s), d0, ctx.carry


def churn_at_the_old_level(x, i, grid, ctx):
    """Heun with churn that adds the noise of sigma_hat but then steps as if still at sigma_t."""
    t, s, t_hat = grid[i], grid[i + 1], tf.cast(ctx.extra[0, i], tf.int32)
    a_t, a_hat, a_s = ctx.gather(t), ctx.gather(t_hat), ctx.gather(s)
    sig = lambda a: tf.sqrt((1.0 - a) / a)
    x_hat = x / tf.sqrt(a_t) + tf.sqrt(sig(a_hat) ** 2 - sig(a_t) ** 2) * ctx.noise(x, t)
    _, d0 = ctx.denoise(x_hat * tf.sqrt(a_t), t)                # wrong: the level is sigma_hat now
    x_s = x_hat + (sig(a_s) - sig(a_t)) * (x_hat - d0) / sig(a_t)
    x_s = tf.where(tf.greater_equal(s, 0), x_s, d0)
    return x_s * tf.sqrt(a_s), d0, ctx.carry


def _run_step(step, eps_fn, shape, schedule, grid, seed=0, x_T=None):
    from ddpm_lessons.sampling import initial_noise, make_loop
    run = make_loop(eps_fn, schedule, step, ("test", step.__name__), rank=len(shape))
    if x_T is None:
        x_T = np.sqrt(1 - schedule.alphas_cumprod[grid[0]]) * initial_noise(shape, seed, schedule.T)
    return run_loop(run, x_T, grid, np.zeros((0, len(grid) - 1), np.float32), seed).numpy()


def test_timestep_sequence():
    assert timestep_sequence(1000, 1000).tolist() == list(range(999, -1, -1))
    assert timestep_sequence(1000, 1).tolist() == [999], "one step starts from noise, not at t = 0"
    assert timestep_sequence(1000, 2).tolist() == [999, 0]
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


def ddim_gaussian_variance(schedule, s, steps, eta):
    """The exact variance DDIM ends with for N(0, s^2) pixels and the exact eps*: every step is
    linear, x_s = c x_t + sigma z with eps* = k_t x_t, k_t = sqrt(1 - a_t) / (a_t s^2 + 1 - a_t), so
    c = sqrt(a_s / a_t) (1 - sqrt(1 - a_t) k_t) + sqrt(1 - a_s - sigma^2) k_t and v_s = c^2 v_t + sigma^2,
    from v = 1 - abar at the first timestep (the samplers' start, sqrt(1 - abar) z)."""
    grid = timestep_grid(schedule, steps)
    ab = np.append(schedule.alphas_cumprod, 1.0)
    v = 1.0 - ab[grid[0]]
    for t, u in zip(grid[:-1], grid[1:]):
        a_t, a_s = ab[t], ab[u]
        sigma2 = eta ** 2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        k = np.sqrt(1 - a_t) / (a_t * s * s + 1 - a_t)
        c = np.sqrt(a_s / a_t) * (1 - np.sqrt(1 - a_t) * k) + np.sqrt(max(1 - a_s - sigma2, 0.0)) * k
        v = c * c * v + sigma2
    return v


@pytest.mark.parametrize("eta, steps", [(0.0, 1000), (0.0, 50), (1.0, 50), (1.0, 10)])
def test_ddim_reproduces_gaussian_images(eta, steps):
    """Exact eps*: the samples' variance is the exact recursion's (ddim_gaussian_variance) to within
    sampling error (24,000 values: 4 standard errors of a variance, 4 sqrt(2/n) = 3.7%). The recursion's
    answer differs from s^2 by the discretisation error (e.g. 10% for eta = 1 in 10 steps); a sampler
    that drops its fresh noise or mixes up abar_s and abar_t lands outside."""
    s, n = 0.5, 3000 * 8
    want = ddim_gaussian_variance(COSINE, s, steps, eta)
    x = ddim_sample(gaussian_eps(COSINE, s), (3000, 2, 2, 2), COSINE, num_steps=steps, eta=eta, seed=1)
    assert abs(x.mean()) < 4 * np.sqrt(want / n)
    assert x.var() == pytest.approx(want, rel=4 * np.sqrt(2 / n)), f"variance {x.var():.4f}, exact {want:.4f}"
    broken = _run_step(forgets_its_noise, gaussian_eps(COSINE, s), (3000, 2, 2, 2), COSINE, timestep_grid(COSINE, steps), seed=1)
    if eta == 1.0:
        assert abs(broken.var() / want - 1) > 4 * np.sqrt(2 / n), "the test must tell a sampler without its noise"


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


def test_ddim_invert_is_the_eta0_update_run_forwards():
    """The compiled inversion equals the docstring's update written out in NumPy, step by step:
    x_{tau_0} = sqrt(a) x0 + sqrt(1 - a) eps(sqrt(a) x0, tau_0), then
    x_t = sqrt(abar_t) x0_hat(x_s, s) + sqrt(1 - abar_t) eps(x_s, s) up the grid."""
    eps_fn = gaussian_eps(COSINE, 0.5)
    x0 = (np.random.default_rng(4).standard_normal((3, 4, 4, 3)) * 0.5).astype(np.float32)
    for spacing, sigma_max in (("uniform", None), ("karras", 80.0)):
        taus = timestep_grid(COSINE, 12, spacing, sigma_max)[:-1][::-1]
        ab = COSINE.alphas_cumprod.astype(np.float64)
        eps = lambda x, t: np.asarray(eps_fn(tf.constant(x, tf.float32), tf.fill([3], int(t))), np.float64)
        a = ab[taus[0]]
        x = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps(np.sqrt(a) * x0, taus[0])
        for s_, t_ in zip(taus[:-1], taus[1:]):
            e = eps(x, s_)
            x0_hat = (x - np.sqrt(1 - ab[s_]) * e) / np.sqrt(ab[s_])
            x = np.sqrt(ab[t_]) * x0_hat + np.sqrt(1 - ab[t_]) * e
        np.testing.assert_allclose(ddim_invert(eps_fn, x0, COSINE, 12, spacing, sigma_max), x, rtol=1e-3, atol=1e-3)


def test_ddim_full_eta1_matches_ddpm_on_the_mixture():
    mixture = default_mixture()
    eps_fn = mixture_eps_fn(mixture, LINEAR)
    ddpm = ddpm_sample(eps_fn, (3000, 2), LINEAR, seed=1)
    ddim = ddim_sample(eps_fn, (3000, 2), LINEAR, num_steps=1000, eta=1.0, seed=1)
    # same seed, same noise draws, same update: the same samples up to float rounding
    assert np.abs(ddpm - ddim).max() < 1e-3
    floor = sliced_wasserstein_w2(mixture.sample(3000, seed=5), mixture.sample(3000, seed=6))
    assert sliced_wasserstein_w2(ddim, mixture.sample(3000, seed=7)) < 2 * floor + 0.02


def test_image_sampling_shapes_and_one_trace():
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(),
                            groups=4))
    # random (non-zero) last layer so the output is not trivially zero
    w = model.get_layer("out_conv")
    w.kernel.assign(tf.random.normal(w.kernel.shape, stddev=0.5, seed=1))
    eps_fn = model_eps_fn(model)
    assert model_eps_fn(model) is eps_fn
    for steps, eta in [(1, 0.0), (7, 0.0), (25, 1.0), (200, 0.3)]:
        x = ddim_sample(eps_fn, (3, 8, 8, 3), COSINE, num_steps=steps, eta=eta, clip_x0=1.0)
        assert x.shape == (3, 8, 8, 3) and np.all(np.isfinite(x))
    run = make_loop(eps_fn, COSINE, ddim_loop_step(0.0), ("ddim", 0.0), clip_x0=1.0, rank=4)   # the cached one
    assert run.experimental_get_tracing_count() == 1, "one trace must serve every step count"
    x, (taus, xs, x0s) = ddim_sample(eps_fn, (2, 8, 8, 3), COSINE, num_steps=10, clip_x0=1.0,
                                     return_trajectory=True)
    assert xs.shape == x0s.shape == (10, 2, 8, 8, 3) and len(taus) == 10


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
    floor = sliced_wasserstein_w2(mixture.sample(3000, seed=5), mixture.sample(3000, seed=6))
    ddpm = sliced_wasserstein_w2(ddpm_sample(eps_fn, (3000, 2), COSINE, seed=2), target)
    x = sample(eps_fn, (3000, 2), COSINE, sampler=sampler, steps=1000, eta=eta, seed=1)
    d = sliced_wasserstein_w2(x, target)
    assert ddpm < 2 * floor and d < 2 * floor + 0.02, f"{sampler}: {d:.4f}, DDPM {ddpm:.4f}, floor {floor:.4f}"
    # the check has power: a sampler that forgets the fresh noise of its eta = 1 steps fails it
    broken = _run_step(forgets_its_noise, eps_fn, (3000, 2), COSINE, timestep_grid(COSINE, 1000), seed=1)
    assert sliced_wasserstein_w2(broken, target) > 3 * floor


def test_every_sampler_gives_finite_images_for_every_step_count_and_clips_at_every_step():
    """Few steps (1, 2, 3: grids with no interior) to many; all T steps are test_all_T_steps_... 's.
    A range check under clip_x0 could not fail (the last step returns the clipped x0_hat); what can:
    clip_x0 acting at every step. Clipped only at the last one, a run would be clip(the unclipped run)."""
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(),
                            groups=4))
    w = model.get_layer("out_conv")
    w.kernel.assign(tf.random.normal(w.kernel.shape, stddev=2.0, seed=2))   # a wild predictor
    eps_fn = model_eps_fn(model)
    runs = {}
    for sampler in SAMPLERS:
        for steps in {"ddpm": [1000]}.get(sampler, [1, 2, 3, 10, 50]):
            runs[sampler, steps] = x = sample(eps_fn, (2, 8, 8, 3), COSINE, sampler=sampler, steps=steps, eta=1.0,
                                              seed=3, clip_x0=1.0)
            assert x.shape == (2, 8, 8, 3) and np.all(np.isfinite(x)), f"{sampler}-{steps}"
    for sampler in SAMPLERS:
        steps = 1000 if sampler == "ddpm" else 10
        clipped = runs[sampler, steps]
        free = sample(eps_fn, (2, 8, 8, 3), COSINE, sampler=sampler, steps=steps, eta=1.0, seed=3)
        assert np.abs(free).max() > 1.5, f"{sampler}: the wild predictor must leave [-1, 1] unclipped"
        assert np.abs(clipped - np.clip(free, -1, 1)).max() > 0.05, f"{sampler}: clip_x0 must act before the last step"
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


# ------------------------------------------------------------------ EDM: grids and the Heun sampler

def test_sigma_max_start_and_karras_grid_are_trained_timesteps():
    sig = sigmas(COSINE)
    assert np.all(np.diff(sig) > 0) and sig[-1] > 1e4, "cosine: sigma at T-1 is ~2e4 (abar 2.4e-9)"
    t0 = start_timestep(COSINE, 80.0)
    assert sig[t0] <= 80.0 < sig[t0 + 1]
    for n in (5, 10, 18, 40):
        taus = karras_timesteps(COSINE, n)
        assert taus[0] == COSINE.T - 1 and taus[-1] == 0 and np.all(np.diff(taus) < 0)
        grid = timestep_grid(COSINE, n, "karras", 80.0)
        assert grid[0] == t0 and grid[-1] == END and grid[-2] == 0
        # each timestep is the trained one nearest (in log sigma) to Karras et al.'s eq. 5 value
        hi, lo = sig[t0] ** (1 / 7), sig[0] ** (1 / 7)
        wanted = (hi + np.linspace(0, 1, n) * (lo - hi)) ** 7
        nearest = np.abs(np.log(sig)[None] - np.log(wanted)[:, None]).argmin(1)
        assert set(grid[:-1]) == set(nearest)
    # rho = 7 puts most steps at low noise: half of a 10-step grid lies below sigma = 1
    assert np.mean(sig[timestep_grid(COSINE, 10, "karras", 80.0)[:-1]] < 1) >= 0.4
    with pytest.raises(ValueError, match="spacing"):
        timestep_grid(COSINE, 10, "log")


def test_churned_timesteps_raise_sigma_by_one_plus_gamma():
    sig = sigmas(COSINE)
    grid = timestep_grid(COSINE, 20, "karras", 80.0)
    assert np.array_equal(heun_timesteps(COSINE, grid, churn=0.0), grid[:-1])
    t_hat = heun_timesteps(COSINE, grid, churn=4.0)            # gamma = min(4/20, sqrt 2 - 1) = 0.2
    assert np.all(t_hat >= grid[:-1])
    # sigma_hat = 1.2 sigma up to rounding to the nearest trained timestep (half a gap in log sigma)
    log_sig = np.log(sig)
    gap = np.maximum(log_sig[np.minimum(t_hat + 1, COSINE.T - 1)] - log_sig[t_hat],
                     log_sig[t_hat] - log_sig[np.maximum(t_hat - 1, 0)])
    off = np.abs(log_sig[t_hat] - log_sig[grid[:-1]] - np.log(1.2))
    inner = t_hat < COSINE.T - 1                               # not capped at the top of the schedule
    assert np.all(off[inner] <= gap[inner] / 2 + 1e-9), (off, gap)


def test_dynamic_thresholding_keeps_images_in_range_and_leaves_in_range_ones_alone():
    x = tf.constant(np.random.default_rng(0).uniform(-0.9, 0.9, (3, 4, 4, 3)), tf.float32)
    np.testing.assert_array_equal(clip(x, "dynamic"), x)
    y = clip(3.0 * x + tf.constant([[[[5.0]]]]) * tf.one_hot([0, 1, 2], 3)[:, None, None, :], "dynamic")
    assert np.abs(y.numpy()).max() <= 1.0 + 1e-6
    # an image whose 99.5th percentile is s is divided by s: its bulk keeps its shape, not a sign pattern
    big = 4.0 * x
    np.testing.assert_allclose(clip(big, "dynamic").numpy().ravel() / big.numpy().ravel(),
                               1 / np.quantile(np.abs(big.numpy()).reshape(3, -1), 0.995, axis=1,
                                               method="nearest").repeat(48), rtol=2e-2)


@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_heun_solves_the_gaussian_ode_at_second_order(spacing):
    """For N(0, s^2) pixels the probability-flow ODE from sigma_max gives
    x_0 = s x / sqrt(abar s^2 + 1 - abar) exactly. Doubling Heun's steps quarters its error (order 2);
    the broken variant (its Euler half alone) only halves it (order 1) and fails the same check."""
    s, schedule = 0.5, COSINE
    eps_fn = gaussian_eps(schedule, s)
    x_T = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    err = {}
    for n in (20, 40):
        grid = timestep_grid(schedule, n, spacing, 80.0)
        ab = schedule.alphas_cumprod[grid[0]]
        exact = s * x_T / np.sqrt(ab * s * s + 1 - ab)
        rms = lambda x: float(np.sqrt(np.mean((x - exact) ** 2)))
        err[n] = (rms(heun_sample(eps_fn, x_T.shape, schedule, num_steps=n, x_T=x_T, spacing=spacing)),
                  rms(_run_step(euler_instead_of_heun, eps_fn, x_T.shape, schedule, grid, x_T=x_T)))
    # the order p from error ~ steps^-p (the grids are rounded to integer timesteps, so p is not exact)
    heun_order, euler_order = np.log2(err[20][0] / err[40][0]), np.log2(err[20][1] / err[40][1])
    assert 1.6 < heun_order < 2.6, f"Heun errors at 20/40 levels: {err}"
    assert not 1.6 < euler_order < 2.6, f"the broken variant passed the order check: {err}"
    assert err[40][0] < err[40][1] / 5


def test_heun_with_churn_reaches_the_mixture_in_few_evaluations():
    """Lesson 03's mixture with its exact score: EDM's stochastic sampler with 25 noise levels
    (49 evaluations) is as close to the mixture as DDPM with 1000; a variant that churns but steps
    from the old noise level is not."""
    mixture = default_mixture()
    eps_fn = mixture_eps_fn(mixture, COSINE)
    target = mixture.sample(3000, seed=7)
    floor = sliced_wasserstein_w2(mixture.sample(3000, seed=5), mixture.sample(3000, seed=6))
    x = heun_sample(eps_fn, (3000, 2), COSINE, num_steps=25, churn=10.0, seed=1)
    d = sliced_wasserstein_w2(x, target)
    assert d < 2 * floor + 0.02, f"Heun-25 with churn: {d:.4f}, floor {floor:.4f}"
    x = heun_sample(eps_fn, (3000, 2), COSINE, num_steps=25, churn=0.0, seed=1)
    assert sliced_wasserstein_w2(x, target) < 2 * floor + 0.02
    # the check has power: churn whose raised noise level the denoiser is not told about fails it
    grid = timestep_grid(COSINE, 25, "karras", 80.0)
    from ddpm_lessons.sampling import initial_noise, make_loop
    run = make_loop(eps_fn, COSINE, churn_at_the_old_level, ("test", "churn_at_the_old_level"), rank=2)
    x_T = np.sqrt(1 - COSINE.alphas_cumprod[grid[0]]) * initial_noise((3000, 2), 1, COSINE.T)
    extra = heun_timesteps(COSINE, grid, churn=10.0)[None, :].astype(np.float32)
    broken = run_loop(run, x_T, grid, extra, 1).numpy()
    assert sliced_wasserstein_w2(broken, target) > 3 * floor, sliced_wasserstein_w2(broken, target)


def test_a_v_network_gives_its_x0_without_dividing_by_sqrt_abar():
    """Catches: v-prediction sampled through eps (v -> eps, then x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)),
    which at the first timestep (abar = 2.4e-9 on the cosine schedule) multiplies float32 rounding by
    1/sqrt(abar) = 2e4. Read off v, x0 = sqrt(abar) x_t - sqrt(1 - abar) v is exact to float32 rounding."""
    from ddpm_lessons.unet import build_unet, network_inputs
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(), groups=4))
    w = model.get_layer("out_conv")
    w.kernel.assign(tf.random.normal(w.kernel.shape, stddev=0.5, seed=2))
    _, (taus, xs, x0s) = ddim_sample(model_eps_fn(model, COSINE, "v"), (4, 8, 8, 3), COSINE, num_steps=4,
                                     return_trajectory=True)
    t = int(taus[0])
    v = model(network_inputs(model, tf.constant(xs[0]), tf.fill([4], t)), training=False).numpy().astype(np.float64)
    abar = COSINE.alphas_cumprod[t]
    assert abar < 1e-8, "the check is about the first, noisiest step"
    expected = np.sqrt(abar) * xs[0].astype(np.float64) - np.sqrt(1 - abar) * v
    assert np.abs(x0s[0] - expected).max() < 1e-5, np.abs(x0s[0] - expected).max()


def test_one_v_network_serves_several_compiled_samplers():
    """Catches: a table made while one sampler's loop was traced, kept, and used in another's graph
    ("the tensor ... cannot be accessed from here")."""
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(), groups=4))
    fn = model_eps_fn(model, COSINE, "v")
    for sampler in ("ddim", "dpm++2m", "heun", "ddim"):
        x = sample(fn, (2, 8, 8, 3), COSINE, sampler=sampler, steps=3, seed=1, clip_x0=1.0)
        assert x.shape == (2, 8, 8, 3) and np.all(np.isfinite(x))


def test_the_loop_takes_float_grids_and_fractional_times_draw_their_own_noise():
    """Grids travel as float32 (continuous time must be possible): a whole-number time keys the same noise
    as the int timestep did (every stored sample stays what it was), and a fractional one its own draw,
    neither its floor's nor its ceiling's. Catches a seed that truncates float times (10.5 -> 10)."""
    from ddpm_lessons.sampling import _noise_seed
    draw = lambda t: tf.random.stateless_normal([64], seed=_noise_seed(3, t)).numpy()
    np.testing.assert_array_equal(draw(tf.constant(10, tf.int32)), draw(tf.constant(10.0, tf.float32)))
    np.testing.assert_array_equal(draw(-1), draw(tf.constant(-1.0)))
    half = draw(tf.constant(10.5))
    assert not np.allclose(half, draw(10)) and not np.allclose(half, draw(11))
