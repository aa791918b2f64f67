"""The ancestral reverse step (Ho et al. Algorithm 2) on points and on images."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons import sampling
from ddpm_lessons.forward import q_sample
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


def _posterior_from_the_betas(betas, t, x0, x_t):
    """q(x_{t-1} | x_t, x_0) without the schedule's tables: given x_0, (x_{t-1}, x_t) is jointly
    Gaussian (x_{t-1} ~ N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}), then x_t = sqrt(alpha_t) x_{t-1}
    + sqrt(beta_t) e); condition it on x_t. Returns (mean like x0, var (B,)), float64."""
    alphas = 1.0 - np.asarray(betas, np.float64)
    abar_prev = np.append(1.0, np.cumprod(alphas))[t]                 # abar_{t-1}; 1 before the first step
    a, b = alphas[t], 1.0 - alphas[t]
    var_prev = 1.0 - abar_prev                                         # Var(x_{t-1} | x_0)
    cov = np.sqrt(a) * var_prev                                        # Cov(x_{t-1}, x_t | x_0)
    var_t = a * var_prev + b                                           # Var(x_t | x_0)
    bshape = (-1,) + (1,) * (x0.ndim - 1)
    r = lambda v: np.reshape(v, bshape)
    mean = r(np.sqrt(abar_prev)) * x0 + r(cov / var_t) * (x_t - r(np.sqrt(a * abar_prev)) * x0)
    return mean, var_prev - cov ** 2 / var_t


@pytest.mark.parametrize("shape", SHAPES)
def test_true_noise_recovers_x0_and_posterior(schedule, shape):
    """With the noise that made x_t, x0_hat = x_0 and (mean, var) are those of q(x_{t-1} | x_t, x_0)
    (eq. 7), here worked out from the betas alone by conditioning a Gaussian, not read from the
    schedule's posterior tables that p_mean_variance itself uses."""
    x0, eps, t = _inputs(shape, seed=1)
    x_t = q_sample(x0, t, eps, schedule)
    mean, var, x0_hat = p_mean_variance(x_t, t, eps, schedule)
    want_mean, want_var = _posterior_from_the_betas(schedule.betas, t.numpy(), x0.numpy(), x_t.numpy())
    assert float(tf.reduce_max(tf.abs(x0_hat - x0))) < 1e-6, "x0_hat from the true noise is not x_0"
    assert float(np.max(np.abs(mean.numpy() - want_mean))) < 1e-6, "mean is not the posterior mean (eq. 7)"
    var = var.numpy().reshape(-1)
    assert np.allclose(var, want_var, rtol=1e-9, atol=1e-15), (
        f"variance='posterior' is not Var(x_{{t-1}} | x_t, x_0) = beta~_t (eq. 7): {var} vs {want_var}")
    assert want_var[t.numpy() == 0] == 0.0 and np.all(want_var[t.numpy() > 0] > 0)
    # the same comparison rejects the table read one index off (beta~_{t-1} for beta~_t)
    late = schedule.posterior_variance[np.maximum(t.numpy() - 1, 0)]
    assert not np.allclose(late, want_var, rtol=1e-9, atol=1e-15), "the check cannot see an off-by-one"


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


# ------------------------------------------------------------------ Algorithm 2 on Gaussian images
#
# For i.i.d. N(0, s^2) pixels the exact noise predictor is linear in x, eps*(x, t) =
# sqrt(1 - abar_t) x / V_t with V_t = abar_t s^2 + 1 - abar_t = Var(x_t), and so is every step of
# Algorithm 2: x_{t-1} = k_t x_t + sigma_t z with k_t = E[x_{t-1} | x_t] / x_t = sqrt(alpha_t) V_{t-1} / V_t.
# From x_T ~ N(0, 1) the variance after each step follows v_{t-1} = k_t^2 v_t + sigma_t^2 exactly
# (sigma_t^2 = beta~_t, none at t = 0). It ends below s^2: the sampler's sigma_t^2 = beta~_t is the
# spread of x_{t-1} given x_t *and* x_0; the spread of x_0 given x_t, (coef1_t)^2 Var(x_0 | x_t), is
# dropped at every step (with it added back at every step, t = 0 included, the recursion returns
# s^2 to 1e-15: this is not a discretisation error of the mean). Measured with the recursion, for
# the linear schedule: at s = 0.3 the shortfall 1 - v/s^2 is 2.5% at T = 1000 and 1.9% at T = 2000
# (from_kind("linear", T), beta 1e-4..0.02 over T steps); it halves with T (2.5%, 1.3%, 0.7% at
# T = 1000, 2000, 4000) only if the betas are scaled by 1000/T. At the s = 0.05 used here: 14.3% at
# T = 1000, 12.6% at T = 2000. The test compares the sampler with the recursion, not with s^2.

GAUSS_S = 0.05                      # small s: the three broken variants below land far from the truth
GAUSS_SHAPE = (12500, 2, 2, 2)      # 100 000 pixel values: the variance ratio's standard error is 0.45%
GAUSS_Z = 4.0                       # accepted |sample variance / exact - 1| in standard errors


def _gaussian_eps(schedule, s2):
    """The exact eps* for i.i.d. N(0, s^2) pixels (a new function each call: a fresh compiled loop)."""
    abar = tf.constant(schedule.alphas_cumprod, tf.float32)

    def eps_fn(x, t):
        a = tf.reshape(tf.gather(abar, t), [-1, 1, 1, 1])
        return tf.sqrt(1.0 - a) * x / (a * s2 + 1.0 - a)
    return eps_fn


def _ddpm_variance_recursion(betas, s2):
    """Var(x_0) of Algorithm 2 with eps* from x_T ~ N(0, 1), in float64, from the betas alone:
    v_{t-1} = k_t^2 v_t + beta~_t, k_t = sqrt(alpha_t) V_{t-1} / V_t, beta~_t = Var(x_{t-1} | x_t, x_0)
    = (1 - abar_{t-1}) - alpha_t (1 - abar_{t-1})^2 / (alpha_t (1 - abar_{t-1}) + beta_t)."""
    alphas = 1.0 - np.asarray(betas, np.float64)
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    V, V_prev = abar * s2 + 1.0 - abar, abar_prev * s2 + 1.0 - abar_prev
    k = np.sqrt(alphas) * V_prev / V
    beta_tilde = (1.0 - abar_prev) - alphas * (1.0 - abar_prev) ** 2 / (alphas * (1.0 - abar_prev) + 1.0 - alphas)
    v = 1.0
    for t in range(len(alphas) - 1, -1, -1):
        v = k[t] ** 2 * v + (beta_tilde[t] if t > 0 else 0.0)
    return v


def _variance_z(x, want):
    """(sample variance / want - 1) in standard errors; x is exactly Gaussian, so SE = sqrt(2 / n)."""
    return (x.var() / want - 1.0) / np.sqrt(2.0 / x.size)


# Broken variants of ddpm_loop_step (Algorithm 2), each a step function like the real one, run by
# ddpm_sample itself (monkeypatched) on the same seed: the variance check must reject each of them.

def _ancestral(x, t, eps, var, ctx):
    """mean + sigma z as ddpm_loop_step forms it (no noise at t = 0), with the variance given."""
    mean, _, x0_hat = p_mean_variance(x, ctx.times(t), eps, ctx.schedule)
    keep = 1.0 - tf.cast(tf.equal(t, 0), x.dtype)
    return mean + keep * tf.sqrt(var) * ctx.noise(x, t), x0_hat, ctx.carry


def _table(values, t, dtype):
    return tf.gather(tf.constant(values, dtype), tf.cast(t, tf.int32))      # grid times are float32


def beta_for_beta_tilde(x, i, grid, ctx):
    """sigma_t^2 = beta_t where variance="posterior" promises beta~_t."""
    t = grid[i]
    eps = tf.cast(ctx.eps_fn(x, ctx.times(t)), x.dtype)
    return _ancestral(x, t, eps, _table(ctx.schedule.betas, t, x.dtype), ctx)


def posterior_variance_one_index_low(x, i, grid, ctx):
    """sigma_t^2 = beta~_{t-1}: the posterior-variance table read one index too low."""
    t = grid[i]
    eps = tf.cast(ctx.eps_fn(x, ctx.times(t)), x.dtype)
    return _ancestral(x, t, eps, _table(ctx.schedule.posterior_variance, tf.maximum(t - 1, 0), x.dtype), ctx)


def network_asked_about_t_minus_1(x, i, grid, ctx):
    """eps_theta(x_t, t - 1) (clamped at 0): the prediction belongs to abar_{t-1}, not abar_t."""
    t = grid[i]
    eps = tf.cast(ctx.eps_fn(x, ctx.times(tf.maximum(t - 1, 0))), x.dtype)
    return _ancestral(x, t, eps, _table(ctx.schedule.posterior_variance, t, x.dtype), ctx)


@pytest.mark.parametrize("broken", [None, beta_for_beta_tilde, posterior_variance_one_index_low,
                                    network_asked_about_t_minus_1],
                         ids=["ddpm_sample", "beta-for-beta-tilde", "posterior-variance-index-low",
                              "eps-at-t-minus-1"])
def test_ddpm_sample_variance_follows_the_exact_recursion(broken, monkeypatch):
    """ddpm_sample with eps* on N(0, s^2) images: the sample variance equals the exact recursion
    (above) to within GAUSS_Z standard errors and the mean is 0; each broken variant, run through
    ddpm_sample with the same seed, fails that same variance check. With s = 0.05, T = 1000 the
    variants' exact final variances are 18.5% higher (beta), 10.3% lower (beta~ index) and 7.0%
    higher (eps at t - 1) than the correct one: 41, 23 and 16 standard errors, against a band of 4."""
    sch = NoiseSchedule.from_kind("linear", 1000)
    s2 = GAUSS_S ** 2
    want = _ddpm_variance_recursion(sch.betas, s2)
    if broken is not None:
        monkeypatch.setattr(sampling, "ddpm_loop_step", lambda variance="posterior": broken)
    x = ddpm_sample(_gaussian_eps(sch, s2), GAUSS_SHAPE, sch, seed=0)
    z = _variance_z(x, want)
    report = f"sample variance / exact = {x.var() / want:.4f} ({z:+.1f} SE; exact v / s^2 = {want / s2:.4f})"
    print(f"{'ddpm_sample' if broken is None else broken.__name__}: {report}")
    if broken is None:
        assert x.shape == GAUSS_SHAPE
        assert abs(z) < GAUSS_Z, f"ddpm_sample: {report}, want within {GAUSS_Z:.0f} SE"
        assert abs(x.mean()) < 4 * np.sqrt(want / x.size), f"sample mean {x.mean():.5f} is not 0 (4 SE)"
    else:
        assert abs(z) >= GAUSS_Z, f"the broken variant {broken.__name__} passed the check: {report}"


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
