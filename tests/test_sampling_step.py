"""The ancestral reverse step (Ho et al. Algorithm 2) on points and on images."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.forward import q_posterior_mean_variance, q_sample
from ddpm_lessons.sampling import ddpm_loop_step, ddpm_sample, ddpm_step, make_loop, p_mean_variance
from ddpm_lessons.schedule import NoiseSchedule

SHAPES = [(6, 2), (6, 4, 4, 3)]


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule.from_kind(request.param, 1000)


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x_t = tf.constant(rng.standard_normal(shape))                      # float64: check the algebra
    eps = tf.constant(rng.standard_normal(shape))
    t = tf.constant([0, 1, 2, 500, 998, 999], tf.int32)
    return x_t, eps, t


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_equals_eq11_form(schedule, shape):
    """mean via x0_hat and eqs. 6-7 == 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) (eq. 11)."""
    x_t, eps, t = _inputs(shape)
    mean, _, _ = p_mean_variance(x_t, t, eps, schedule)
    bshape = [-1] + [1] * (len(shape) - 1)
    a = tf.reshape(tf.gather(schedule.alphas, t), bshape)
    b = tf.reshape(tf.gather(schedule.betas, t), bshape)
    ab = tf.reshape(tf.gather(schedule.alphas_cumprod, t), bshape)
    eq11 = (x_t - b / tf.sqrt(1.0 - ab) * eps) / tf.sqrt(a)
    err = float(tf.reduce_max(tf.abs(mean - eq11)))
    assert err < 1e-8, f"posterior-mean form and eq. 11 differ by {err:.2e} (float64, tol 1e-8)"


@pytest.mark.parametrize("shape", SHAPES)
def test_true_noise_recovers_x0_and_posterior(schedule, shape):
    """With the noise that made x_t, x0_hat = x_0 and the mean is q(x_{t-1} | x_t, x_0)'s mean."""
    x0, eps, t = _inputs(shape, seed=1)
    x_t = q_sample(x0, t, eps, schedule)
    mean, var, x0_hat = p_mean_variance(x_t, t, eps, schedule)
    q_mean, q_var, _ = q_posterior_mean_variance(x0, x_t, t, schedule)
    assert float(tf.reduce_max(tf.abs(x0_hat - x0))) < 1e-6, "x0_hat from the true noise is not x_0"
    assert float(tf.reduce_max(tf.abs(mean - q_mean))) < 1e-6, "mean is not the posterior mean (eq. 7)"
    assert np.allclose(var, q_var), "variance='posterior' is not beta~_t (eq. 7)"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_step_adds_sigma_times_noise_except_at_t0(schedule, shape, variance):
    """x_{t-1} = mean + sigma_t z with sigma_t = sqrt(beta~_t) or sqrt(beta_t); no noise at t = 0."""
    x_t, eps, t = _inputs(shape, seed=2)
    z = tf.ones(shape, tf.float64)
    mean, var, _ = p_mean_variance(x_t, t, eps, schedule, variance=variance)
    out = ddpm_step(x_t, t, eps, schedule, z, variance=variance)
    added = (out - mean).numpy().reshape(shape[0], -1)                 # = sigma_t, per example
    table = schedule.posterior_variance if variance == "posterior" else schedule.betas
    sigma = np.sqrt(table[t.numpy()])
    sigma[t.numpy() == 0] = 0.0
    assert np.allclose(added, sigma[:, None], rtol=1e-10, atol=1e-12), (
        f"noise term is not sqrt({variance} variance) * z with no noise at t=0: "
        f"got {added[:, 0]}, want {sigma}")


def test_clip_x0_bounds_the_prediction(schedule):
    x_t, eps, t = _inputs((6, 4, 4, 3), seed=3)
    _, _, x0_hat = p_mean_variance(3.0 * x_t, t, eps, schedule, clip_x0=1.0)
    assert float(tf.reduce_max(tf.abs(x0_hat))) <= 1.0, "clip_x0=1 left x0_hat outside [-1, 1]"
    with pytest.raises(ValueError, match="variance"):
        p_mean_variance(x_t, t, eps, schedule, variance="fixed")


def test_sampler_reproduces_gaussian_images():
    """Images of i.i.d. N(0, s^2) pixels: with the exact eps* = sqrt(1-abar) x / (abar s^2 + 1 - abar)
    the sampler must return pixels with mean 0 and variance s^2.

    1500 images x 8 pixels = 12000 values: the standard error of the variance ratio is
    sqrt(2 / 12000) = 1.3%. The 1000-step sampler itself shrinks the variance by about 5%
    (discretisation; it halves when T doubles), so we accept a ratio in [0.88, 1.06].
    """
    sch = NoiseSchedule.from_kind("linear", 1000)
    s2 = 0.3 ** 2
    abar = tf.constant(sch.alphas_cumprod, tf.float32)

    def eps_fn(x, t):
        a = tf.reshape(tf.gather(abar, t), [-1, 1, 1, 1])
        return tf.sqrt(1.0 - a) * x / (a * s2 + 1.0 - a)

    x = ddpm_sample(eps_fn, (1500, 2, 2, 2), sch, seed=0)
    assert x.shape == (1500, 2, 2, 2)
    ratio = x.var() / s2
    assert 0.88 < ratio < 1.06, f"sample variance / s^2 = {ratio:.3f}, want within [0.88, 1.06]"
    assert abs(x.mean()) < 4 * np.sqrt(s2 / x.size), f"sample mean {x.mean():.4f} is not 0 (4 SE)"


def test_seed_trajectory_and_single_trace():
    sch = NoiseSchedule.from_kind("linear", 50)
    eps_fn = lambda x, t: 0.5 * x                     # any deterministic predictor
    a = ddpm_sample(eps_fn, (8, 2), sch, seed=3)
    b, traj = ddpm_sample(eps_fn, (8, 2), sch, seed=3, return_trajectory=[50, 30, 10, 0])
    c = ddpm_sample(eps_fn, (8, 2), sch, seed=4)
    assert np.array_equal(a, b), "the same seed must give the same samples"
    assert not np.allclose(a, c), "different seeds gave the same samples"
    assert traj.shape == (4, 8, 2) and np.array_equal(traj[-1], a), "trajectory must end at x_0"
    x_T = tf.random.stateless_normal((8, 2), seed=[3, 50]).numpy()
    assert np.array_equal(traj[0], x_T), "trajectory[T] must be the starting noise"
    run = make_loop(eps_fn, sch, ddpm_loop_step(), ("ddpm", "posterior"), rank=2)   # the cached one
    assert run.experimental_get_tracing_count() == 1, (
        "the compiled loop was traced more than once: t must be passed as a tensor")
