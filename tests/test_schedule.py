"""Properties of the noise schedules (lesson 01): known values and the posterior identities."""
import math

import numpy as np
import pytest

from ddpm_lessons.schedule import (NoiseSchedule, cosine_beta_schedule, linear_beta_schedule,
                                   make_betas)


@pytest.fixture(params=["linear", "cosine"])
def sched(request):
    return NoiseSchedule.from_kind(request.param, 1000)


def test_linear_betas_endpoints_and_known_alpha_bar_T():
    betas = linear_beta_schedule(1000)
    assert betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    # Ho et al.'s schedule ends with alpha_bar_T ~ 4.04e-5: x_T is noise to 4 decimal places
    # (value from prod(1 - beta_t); cf. the DDPM paper's L_T ~ 1e-5 nats per dimension).
    s = NoiseSchedule(betas)
    assert s.alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-3)
    assert s.alphas_cumprod[499] == pytest.approx(0.07859, rel=1e-3)


def test_cosine_alpha_bar_follows_the_squared_cosine():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule(cosine_beta_schedule(T, s=s_))
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    # away from the clipped last step, alpha_bar_t (paper's t+1) equals f(t+1)/f(0)
    for t in (0, 10, 249, 499, 749, 900):
        assert sched.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9), t
    assert sched.alphas_cumprod[499] == pytest.approx(0.49384, rel=1e-4)
    assert sched.betas.max() == pytest.approx(0.999), "cosine betas are clipped at max_beta"
    # the schedule the course builds by name has the same offset (catches a changed default s)
    built = NoiseSchedule.from_kind("cosine", 1000)
    assert built.alphas_cumprod[499] == pytest.approx(0.49384, rel=1e-4)
    assert built.alphas_cumprod[0] == pytest.approx(f(1) / f(0), rel=1e-9)


def test_alpha_bar_monotone_in_unit_interval(sched):
    ab = sched.alphas_cumprod
    assert np.all((ab > 0) & (ab < 1))
    assert np.all(np.diff(ab) < 0), "alpha_bar must fall strictly"
    assert ab[0] > 0.999 and ab[-1] < 1e-4, "x_1 is nearly clean and x_T nearly pure noise"
    assert np.all(np.diff(sched.log_snr()) < 0)
    np.testing.assert_allclose(np.log(sched.snr()), sched.log_snr(), rtol=1e-9, atol=1e-9)


def test_posterior_variance_is_the_gaussian_product(sched):
    # q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precisions add,
    # 1/var = alpha_t/beta_t + 1/(1 - abar_{t-1}), for t >= 1 (paper's t >= 2)
    t = np.arange(1, sched.T)
    precision = sched.alphas[t] / sched.betas[t] + 1.0 / (1.0 - sched.alphas_cumprod_prev[t])
    np.testing.assert_allclose(sched.posterior_variance[t], 1.0 / precision, rtol=1e-8)
    assert sched.posterior_variance[0] == 0.0, "x_0 is known exactly at the last reverse step"
    assert np.all(sched.posterior_variance <= sched.betas + 1e-15), "beta~_t <= beta_t"
    assert np.all(np.isfinite(sched.posterior_log_variance_clipped))


def test_posterior_coefficients_obey_the_law_of_total_expectation_and_variance(sched):
    # Averaging the posterior over x_t ~ q(x_t|x_0) must give back q(x_{t-1}|x_0):
    #   coef1 + coef2 sqrt(abar_t) = sqrt(abar_{t-1})
    #   coef2^2 (1 - abar_t) + beta~_t = 1 - abar_{t-1}
    c1, c2, ab, abp = (sched.posterior_mean_coef1, sched.posterior_mean_coef2,
                       sched.alphas_cumprod, sched.alphas_cumprod_prev)
    np.testing.assert_allclose(c1 + c2 * np.sqrt(ab), np.sqrt(abp), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c2 ** 2 * (1 - ab) + sched.posterior_variance, 1 - abp,
                               rtol=1e-9, atol=1e-12)


def test_x0_reconstruction_constants(sched):
    """x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps recovers x_0 from x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
    built with the other two tables (catches a wrong sign or a missing square root in any of the four)."""
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, sched.T))
    x_t = sched.sqrt_alphas_cumprod * x0 + sched.sqrt_one_minus_alphas_cumprod * eps
    np.testing.assert_allclose(sched.sqrt_recip_alphas_cumprod * x_t - sched.sqrt_recipm1_alphas_cumprod * eps,
                               x0, rtol=1e-6, atol=1e-6)
    # and x_t has unit variance when x_0 does: abar + (1 - abar) = 1 from the two square-root tables
    np.testing.assert_allclose(sched.sqrt_alphas_cumprod ** 2 + sched.sqrt_one_minus_alphas_cumprod ** 2, 1.0,
                               rtol=1e-12)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown schedule kind 'quadratic'"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="beta_start"):
        linear_beta_schedule(10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match=r"beta\[2\]"):
        NoiseSchedule([0.1, 0.2, 1.5])
    with pytest.raises(ValueError, match="T must be"):
        cosine_beta_schedule(0)
