"""Lesson 03: the exact eps* of a Gaussian mixture, exact-score sampling, and a trained MLP."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.forward import q_sample
from ddpm_lessons.sampling import ddpm_sample
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.toy import (GaussianMixture, build_toy_mlp, component_stats, default_mixture,
                              mixture_eps_fn, mmd_rbf, sliced_wasserstein, train_toy, two_moons)

MIX = default_mixture()


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule.from_kind(request.param, 1000)


def test_eps_star_matches_finite_difference_score(schedule):
    """eps*(x, t) = -sqrt(1 - abar_t) grad log p_t(x), with grad log p_t by central differences.

    float64, step h = 1e-5: the difference quotient's error is O(h^2 |d^3 log p|) ~ 1e-8 here;
    we allow 1e-5 (absolute, eps* is O(1)).
    """
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.0, 2.0, size=(64, 2))
    h = 1e-5
    for t in [0, 10, 100, 400, 999]:
        abar = schedule.alphas_cumprod[t]
        p_t = MIX.noised(abar)
        grad = np.stack([(p_t.log_density(x + h * e) - p_t.log_density(x - h * e)) / (2 * h)
                         for e in np.eye(2)], axis=1)
        want = -np.sqrt(1.0 - abar) * grad
        got = MIX.eps_star(tf.constant(x), tf.fill([64], t), schedule).numpy()
        err = np.abs(got - want).max()
        assert err < 1e-5, f"t={t}: eps* differs from the finite-difference score by {err:.2e} (tol 1e-5)"


def test_noised_mixture_matches_forward_process(schedule):
    """x_t = q_sample(x_0) of mixture samples has the moments of MIX.noised(abar_t).

    200000 points: the standard error of each mean / covariance entry is below 0.003;
    tolerance 0.015 (5 SE).
    """
    x0 = MIX.sample(200_000, seed=1)
    for t in [100, 300, 600]:
        eps = np.random.default_rng(t).standard_normal(x0.shape).astype(np.float32)
        x_t = q_sample(x0, tf.fill([len(x0)], t), eps, schedule).numpy().astype(np.float64)
        mean, cov = MIX.noised(schedule.alphas_cumprod[t]).moments()
        assert np.abs(x_t.mean(0) - mean).max() < 0.015, f"t={t}: mean of x_t {x_t.mean(0)} != {mean}"
        assert np.abs(np.cov(x_t, rowvar=False) - cov).max() < 0.015, f"t={t}: covariance of x_t wrong"


def test_exact_score_sampling_reproduces_the_mixture(schedule):
    """Ancestral sampling with eps* gives the mixture back.

    n = 4000 samples, fixed seed. Shares: binomial SE sqrt(w(1-w)/n) <= 0.008; tolerance 4 SE.
    Means: SE sigma_k / sqrt(n_k) per coordinate; tolerance 4 SE (about 0.02-0.035).
    Variances: sampling SE sqrt(2 / n_k) <= 5% plus a ~5% shrinkage that is the 1000-step sampler's
    own discretisation error; tolerance: relative error within 20%.
    """
    n = 4000
    x = ddpm_sample(mixture_eps_fn(MIX, schedule), (n, 2), schedule, seed=0)
    st = component_stats(MIX, x)
    se_share = np.sqrt(MIX.weights * (1 - MIX.weights) / n)
    assert np.all(np.abs(st["share"] - MIX.weights) < 4 * se_share), (
        f"shares {st['share']} vs weights {MIX.weights}: tolerance 4 SE = {4 * se_share}")
    var = np.diagonal(MIX.covs, axis1=1, axis2=2)                       # (K, 2)
    se_mean = np.sqrt(var / st["count"][:, None])
    assert np.all(np.abs(st["mean"] - MIX.means) < 4 * se_mean), (
        f"component means {st['mean'].tolist()} vs {MIX.means.tolist()}: tolerance 4 SE")
    rel = np.diagonal(st["cov"], axis1=1, axis2=2) / var - 1
    assert np.all(np.abs(rel) < 0.2), f"component variances off by {rel.round(3).tolist()} (tol 20%)"


def test_trained_mlp_gets_close_to_the_exact_sampler():
    """A width-128 MLP trained for 1500 steps (seconds) samples within 2x the exact sampler's
    sliced Wasserstein distance to fresh mixture draws (measured ratio about 1.4 here), and
    every component's share within 0.05 of its weight."""
    sch = NoiseSchedule.from_kind("linear", 1000)
    model = build_toy_mlp(width=128, seed=0)
    loss = train_toy(model, MIX.sample(20_000, seed=1), sch, steps=1500, batch=256, lr=3e-3, seed=0)
    assert loss[-100:].mean() < 0.7 * loss[:100].mean(), "the training loss did not go down"
    truth = MIX.sample(4000, seed=2)
    x_mlp = ddpm_sample(model, (2000, 2), sch, seed=4)
    x_exact = ddpm_sample(mixture_eps_fn(MIX, sch), (2000, 2), sch, seed=4)
    d_mlp, d_exact = sliced_wasserstein(x_mlp, truth), sliced_wasserstein(x_exact, truth)
    assert d_mlp < 2.0 * d_exact, (
        f"trained MLP: SW {d_mlp:.4f} vs exact-score SW {d_exact:.4f}; want within a factor 2")
    share = component_stats(MIX, x_mlp)["share"]
    assert np.all(np.abs(share - MIX.weights) < 0.05), f"MLP shares {share} vs {MIX.weights}"


def test_distances_and_data():
    """The distances are 0 on identical sets, symmetric, and grow with a shift."""
    a, b = MIX.sample(1000, seed=5), MIX.sample(1000, seed=6)
    assert sliced_wasserstein(a, a) == 0.0 and mmd_rbf(a, a) < 1e-3
    assert np.isclose(sliced_wasserstein(a, b), sliced_wasserstein(b, a))
    assert sliced_wasserstein(a, b) < sliced_wasserstein(a, b + 0.5) < sliced_wasserstein(a, b + 1.0)
    assert mmd_rbf(a, b) < mmd_rbf(a, b + 0.5)
    moons = two_moons(2000, seed=0)
    assert moons.shape == (2000, 2) and np.allclose(moons.mean(0), 0, atol=1e-5)
    with pytest.raises(ValueError):
        GaussianMixture([0.5, 0.6], [[0, 0], [1, 1]], [np.eye(2)] * 2)
