"""The forward process (lesson 02): closed form vs the iterated chain, and the posterior."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.forward import (predict_x0_from_eps, q_posterior_mean_variance, q_sample,
                                  q_step)
from ddpm_lessons.schedule import NoiseSchedule

N = 200_000  # samples: the standard error of a variance estimate is ~sqrt(2/N) = 0.3%


@pytest.fixture(scope="module", params=["linear", "cosine"])
def sched(request):
    return NoiseSchedule.from_kind(request.param, 1000)


def test_unit_variance_data_stays_unit_variance(sched):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((N, 1)).astype(np.float32)
    for t in (0, 100, 500, 999):
        tt = np.full((N,), t)
        xt = q_sample(x0, tt, rng.standard_normal((N, 1)), sched).numpy()
        assert abs(xt.mean()) < 0.02, f"t={t}: mean {xt.mean():.4f}"
        assert xt.var() == pytest.approx(1.0, abs=0.02), (
            f"t={t}: Var(x_t) = {xt.var():.4f}; with (1 - abar) instead of sqrt(1 - abar) it shrinks")


def test_closed_form_matches_the_iterated_chain(sched):
    """x_t from eq. 4 in one jump has the same mean and variance as t+1 one-step updates (eq. 2)."""
    rng = np.random.default_rng(1)
    x0 = np.full((N, 1), 0.7, np.float32)  # a fixed x_0: mean sqrt(abar) x0, variance 1 - abar
    x = tf.constant(x0)
    checkpoints = {50, 300, 700}
    for t in range(701):
        x = q_step(x, np.full((N,), t), rng.standard_normal((N, 1)).astype(np.float32), sched)
        if t in checkpoints:
            xt = x.numpy()
            mean, var = sched.sqrt_alphas_cumprod[t] * 0.7, 1 - sched.alphas_cumprod[t]
            assert xt.mean() == pytest.approx(mean, abs=0.01), f"t={t}"
            assert xt.var() == pytest.approx(var, rel=0.02), f"t={t}"
            closed = q_sample(x0, np.full((N,), t), rng.standard_normal((N, 1)), sched).numpy()
            assert closed.mean() == pytest.approx(xt.mean(), abs=0.015)
            assert closed.var() == pytest.approx(xt.var(), rel=0.03)


def test_posterior_is_the_conditional_of_the_joint(sched):
    """Draw x_{t-1} ~ q(.|x_0) then x_t ~ q(x_t|x_{t-1}); the residual x_{t-1} - mu~(x_0, x_t)
    must have mean 0, variance beta~_t, and be uncorrelated with x_t (eqs. 6-7)."""
    rng = np.random.default_rng(2)
    x0 = np.full((N, 1), -0.4, np.float32)
    for t in (1, 20, 400, 900):
        x_prev = q_sample(x0, np.full((N,), t - 1), rng.standard_normal((N, 1)), sched)
        x_t = q_step(x_prev, np.full((N,), t), rng.standard_normal((N, 1)).astype(np.float32), sched)
        mean, var, log_var = q_posterior_mean_variance(x0, x_t, np.full((N,), t), sched)
        resid = (x_prev - mean).numpy().ravel()
        assert abs(resid.mean()) < 4 * np.sqrt(sched.posterior_variance[t] / N) + 1e-6
        assert resid.var() == pytest.approx(sched.posterior_variance[t], rel=0.02), f"t={t}"
        assert abs(np.corrcoef(resid, x_t.numpy().ravel())[0, 1]) < 0.01
        np.testing.assert_allclose(np.exp(log_var.numpy()), var.numpy(), rtol=1e-5)


def test_per_example_timesteps_broadcast_over_images(sched):
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 10, 500, 999])
    xt = q_sample(x0, t, eps, sched).numpy()
    assert xt.shape == x0.shape
    for i, ti in enumerate(t):  # each example uses its own timestep's constants
        expect = sched.sqrt_alphas_cumprod[ti] * x0[i] + sched.sqrt_one_minus_alphas_cumprod[ti] * eps[i]
        np.testing.assert_allclose(xt[i], expect, rtol=1e-5, atol=1e-6)
    # and a noise predictor that is exactly right recovers x_0 (eq. 4 inverted)
    x0_hat = predict_x0_from_eps(xt, t[:3].tolist() + [900], eps, sched).numpy()
    np.testing.assert_allclose(x0_hat[:3], x0[:3], atol=2e-3)
    assert not np.allclose(x0_hat[3], x0[3], atol=1e-2), "wrong t must not reconstruct x_0"
