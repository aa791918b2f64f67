"""The training target (issue #14): v-prediction (Salimans & Ho 2022) and min-SNR weighting
(Hang et al. 2023) — the conversions, the optimal predictors on Gaussian data, the weights, the
Trainer's loss, the knobs' validation and old run folders."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons import runs
from ddpm_lessons.forward import eps_from_v, extract, predict_x0_from_eps, q_sample, velocity, x0_from_v
from ddpm_lessons.profiles import PROFILES
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig, loss_weight
from ddpm_lessons.unet import build_unet

SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(), groups=4)
T_CHECK = np.array([0, 500, 999])          # first, middle and last timestep


@pytest.fixture(scope="module", params=["linear", "cosine"])
def sched(request):
    return NoiseSchedule.from_kind(request.param, 1000)


def per_example_sq(x):
    return np.sum(np.square(np.asarray(x, np.float64)), axis=tuple(range(1, np.ndim(x))))


# ----------------------------------------------------------------------------- conversions

def test_v_conversions_round_trip_and_preserve_the_norm(sched):
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    x_t = q_sample(x0, T_CHECK, eps, sched)
    v = velocity(x0, eps, T_CHECK, sched)
    # (x0, eps) -> (x_t, v) -> (x0, eps)
    np.testing.assert_allclose(eps_from_v(x_t, T_CHECK, v, sched).numpy(), eps, atol=2e-5)
    np.testing.assert_allclose(x0_from_v(x_t, T_CHECK, v, sched).numpy(), x0, atol=2e-5)
    # (x_t, v) -> (x0, eps) -> (x_t, v), from arbitrary x_t and v
    xt2 = rng.standard_normal(x0.shape).astype(np.float32)
    v2 = rng.standard_normal(x0.shape).astype(np.float32)
    x0b, epsb = x0_from_v(xt2, T_CHECK, v2, sched), eps_from_v(xt2, T_CHECK, v2, sched)
    np.testing.assert_allclose(q_sample(x0b, T_CHECK, epsb, sched).numpy(), xt2, atol=2e-5)
    np.testing.assert_allclose(velocity(x0b, epsb, T_CHECK, sched).numpy(), v2, atol=2e-5)
    # a rotation of (x0, eps): ||v||^2 + ||x_t||^2 = ||x0||^2 + ||eps||^2 per example
    np.testing.assert_allclose(per_example_sq(v) + per_example_sq(x_t),
                               per_example_sq(x0) + per_example_sq(eps), rtol=1e-5)


# ----------------------------------------------------------------------------- Gaussian data

SIGMA = 0.5                                 # x0 ~ N(0, SIGMA^2 I)
T_GAUSS = np.array([0, 100, 300, 500, 700, 900, 999])


def optimal_predictors(sched, t):
    """E[eps | x_t], E[x0 | x_t] and v_opt = a E[eps|x_t] - s E[x0|x_t] per unit of x_t, (len(t),)."""
    a, s = sched.sqrt_alphas_cumprod[t], sched.sqrt_one_minus_alphas_cumprod[t]
    denom = a ** 2 * SIGMA ** 2 + s ** 2                    # Var(x_t)
    eps_opt, x0_opt = s / denom, a * SIGMA ** 2 / denom
    return eps_opt, x0_opt, a * eps_opt - s * x0_opt


def broken_eps_from_v(x_t, t, v, schedule):
    """eps_from_v with its two coefficients swapped: eps = sqrt(abar) x_t + sqrt(1 - abar) v (wrong)."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x_t.shape, x_t.dtype) * x_t
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape, x_t.dtype) * v)


def closed_form_error(sched, eps_from_v_fn):
    """Largest |eps_from_v(x_t, t, v_opt) - E[eps | x_t]| over T_GAUSS and a few x_t."""
    x_t = np.random.default_rng(1).standard_normal((len(T_GAUSS), 5))
    eps_opt, _, v_opt = optimal_predictors(sched, T_GAUSS)
    got = np.asarray(eps_from_v_fn(tf.constant(x_t), T_GAUSS, tf.constant(v_opt[:, None] * x_t), sched))
    return np.abs(got - eps_opt[:, None] * x_t).max()


def test_the_optimal_v_implies_the_optimal_eps_and_x0_on_gaussian_data(sched):
    x_t = np.random.default_rng(2).standard_normal((len(T_GAUSS), 5))       # float64 all the way
    eps_opt, x0_opt, v_opt = optimal_predictors(sched, T_GAUSS)
    v = tf.constant(v_opt[:, None] * x_t)
    np.testing.assert_allclose(eps_from_v(x_t, T_GAUSS, v, sched).numpy(), eps_opt[:, None] * x_t, atol=1e-12)
    np.testing.assert_allclose(x0_from_v(x_t, T_GAUSS, v, sched).numpy(), x0_opt[:, None] * x_t, atol=1e-12)
    # the check has power: the same check on eps_from_v with its coefficients swapped fails
    assert closed_form_error(sched, eps_from_v) < 1e-12
    assert closed_form_error(sched, broken_eps_from_v) > 0.05


def test_the_closed_form_predictors_are_the_least_squares_fits(sched):
    """Monte Carlo: regressing eps, x0 and velocity(x0, eps) on x_t recovers the closed-form slopes,
    so minimising the v-loss and converting with eps_from_v gives the minimiser of the eps-loss."""
    n = 200_000
    rng = np.random.default_rng(3)
    eps_opt, x0_opt, v_opt = optimal_predictors(sched, T_GAUSS)
    for i, t in enumerate(T_GAUSS):
        tt = np.full((n,), t)
        x0 = SIGMA * rng.standard_normal((n, 1))
        eps = rng.standard_normal((n, 1))
        x_t = q_sample(x0, tt, eps, sched).numpy().ravel()
        v = velocity(x0, eps, tt, sched).numpy().ravel()
        slope = lambda y: np.dot(x_t, y) / np.dot(x_t, x_t)     # argmin_k mean (y - k x_t)^2
        # standard error of a slope ~ sqrt(Var(residual) / (n Var(x_t))) <= sqrt(1 / (n * 0.25))
        tol = 5 * np.sqrt(1 / (n * 0.25))
        assert slope(eps.ravel()) == pytest.approx(eps_opt[i], abs=tol), f"t={t}"
        assert slope(x0.ravel()) == pytest.approx(x0_opt[i], abs=tol), f"t={t}"
        assert slope(v) == pytest.approx(v_opt[i], abs=tol), f"t={t}"


# ----------------------------------------------------------------------------- loss weights

def test_loss_weight_values_at_known_snrs():
    lin = NoiseSchedule.from_kind("linear", 1000)
    # t = 0 of the linear schedule: beta = 1e-4, SNR = 0.9999 / 1e-4 = 9999 > gamma
    w = lambda pred, kind="min-snr", t=0, g=5.0: float(loss_weight([t], lin, pred, kind, g)[0])
    assert w("eps") == pytest.approx(5 / 9999, rel=1e-5)
    assert w("v") == pytest.approx(5 / 10000, rel=1e-5)
    # a late timestep, SNR < gamma: eps keeps weight 1, v gets SNR / (SNR + 1)
    snr = lin.snr()[800]
    assert snr < 1.0
    assert w("eps", t=800) == pytest.approx(1.0)
    assert w("v", t=800) == pytest.approx(snr / (snr + 1), rel=1e-5)
    # gamma moves the knee: with gamma = 0.5 the t = 800 weight of eps is 0.5 / SNR
    assert w("eps", t=800, g=0.5) == pytest.approx(min(1.0, 0.5 / snr), rel=1e-5)
    t = np.arange(0, 1000, 37)
    for pred in ("eps", "v"):
        ones = loss_weight(t, lin, pred, "none")
        assert ones.dtype == tf.float32 and ones.shape == (len(t),)
        np.testing.assert_array_equal(ones.numpy(), 1.0)


def test_min_snr_weighted_losses_are_min_snr_times_the_x0_error(sched):
    """w ||eps - eps_hat||^2 = min(SNR, gamma) ||x0 - x0_hat||^2 with w = min(SNR, gamma) / SNR,
    and w ||v - v_hat||^2 = min(SNR, gamma) ||x0 - x0_hat||^2 with w = min(SNR, gamma) / (SNR + 1)."""
    gamma = 5.0
    rng = np.random.default_rng(4)
    t = np.concatenate([T_CHECK, rng.integers(0, 1000, 29)])
    x0 = rng.uniform(-1, 1, (len(t), 4, 4, 3))
    eps = rng.standard_normal(x0.shape)
    x_t = q_sample(x0, t, eps, sched)
    snr = sched.snr()[t]
    assert (snr > gamma).any() and (snr < gamma).any()
    x0_error = lambda x0_hat: per_example_sq(x0 - np.asarray(x0_hat))

    eps_hat = eps + rng.standard_normal(x0.shape)                    # some imperfect predictions
    x0_hat = predict_x0_from_eps(x_t, t, eps_hat, sched)
    np.testing.assert_allclose(per_example_sq(eps - eps_hat), snr * x0_error(x0_hat), rtol=1e-6)
    w = loss_weight(t, sched, "eps", "min-snr", gamma).numpy()
    np.testing.assert_allclose(w * per_example_sq(eps - eps_hat), np.minimum(snr, gamma) * x0_error(x0_hat),
                               rtol=1e-5)

    v = velocity(x0, eps, t, sched).numpy()
    v_hat = v + rng.standard_normal(x0.shape)
    x0_hat = x0_from_v(x_t, t, v_hat, sched)
    np.testing.assert_allclose(per_example_sq(v - v_hat), (snr + 1) * x0_error(x0_hat), rtol=1e-6)
    w = loss_weight(t, sched, "v", "min-snr", gamma).numpy()
    np.testing.assert_allclose(w * per_example_sq(v - v_hat), np.minimum(snr, gamma) * x0_error(x0_hat),
                               rtol=1e-5)


# ----------------------------------------------------------------------------- the Trainer

@pytest.mark.parametrize("prediction, weighting", [("v", "none"), ("v", "min-snr"), ("eps", "min-snr")])
def test_trainer_loss_uses_the_configured_target_and_weight(prediction, weighting):
    schedule = NoiseSchedule.from_kind("cosine", 1000)
    tf.keras.utils.set_random_seed(0)
    config = TrainConfig(learning_rate=2e-3, warmup_steps=1, jit_compile=False, prediction=prediction,
                         loss_weighting=weighting, snr_gamma=5.0)
    tr = Trainer(build_unet(SMALL), schedule, config)
    rng = np.random.default_rng(5)
    x0 = tf.constant(rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32))
    tr.train_step(x0)                               # one step first: the output is no longer zero
    # replay the step's random numbers from a copy of the Trainer's generator
    copy = tf.random.Generator.from_state(tr.rng.state.numpy(), tr.rng.algorithm)
    t = copy.uniform([8], 0, schedule.T, dtype=tf.int32)
    noise = copy.normal(x0.shape, dtype=tf.float32)
    x_t = q_sample(x0, t, noise, schedule)
    out = tr.model([x_t, t], training=True).numpy()
    assert np.abs(out).max() > 1e-4, "the check needs a non-zero model output"
    ab = schedule.alphas_cumprod[t.numpy()]          # the weight from its definition, not from the Trainer's table
    snr = ab / (1 - ab)
    w = (np.ones_like(snr) if weighting == "none" else
         np.minimum(snr, 5.0) / (snr if prediction == "eps" else snr + 1)).astype(np.float32)
    mse = lambda target: w * np.mean(np.square(np.asarray(target) - out), axis=(1, 2, 3))
    v_target, eps_target = mse(velocity(x0, noise, t, schedule)), mse(noise)
    expected, other = (v_target, eps_target) if prediction == "v" else (eps_target, v_target)

    loss, per_example, t_step = tr._compiled_step(x0)
    np.testing.assert_array_equal(t_step.numpy(), t.numpy())
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-4, atol=1e-7)
    assert float(loss) == pytest.approx(expected.mean(), rel=1e-4)
    assert abs(float(loss) - other.mean()) > 1e-2 * other.mean(), "the other target would give another loss"
    if weighting == "min-snr":
        unweighted = expected / w
        assert abs(float(loss) - unweighted.mean()) > 1e-2 * unweighted.mean(), "the weight must matter"


# ----------------------------------------------------------------------------- the knobs

@pytest.mark.parametrize("change, words", [
    (dict(prediction="x0"), "prediction = 'x0' must be 'eps', 'v' or 'flow'"),
    (dict(loss_weighting="snr"), "loss_weighting = 'snr' must be 'none' or 'min-snr'"),
    (dict(snr_gamma=0.0), "snr_gamma = 0.0 must be a positive number"),
])
def test_bad_target_knobs_name_the_knob_and_the_allowed_values(change, words):
    with pytest.raises(ValueError) as err:
        PROFILES["cpu"].replace(**change)
    assert words in str(err.value) and "profile 'cpu'" in str(err.value)
    with pytest.raises(ValueError) as err:
        TrainConfig(**change)
    assert words in str(err.value)
    with pytest.raises(ValueError) as err:
        loss_weight([0], NoiseSchedule.from_kind("linear", 10), **{"prediction": "eps", **change})
    assert words in str(err.value)


def test_profiles_default_to_eps_and_from_profile_copies_the_knobs():
    for p in PROFILES.values():      # lesson 12's comparison chose v for the cpu recipe; the others keep eps
        want = "v" if p.name == "cpu" else "eps"
        assert (p.prediction, p.loss_weighting, p.snr_gamma) == (want, "none", 5.0), p.name
    assert TrainConfig().prediction == "eps" and TrainConfig().loss_weighting == "none"
    c = TrainConfig.from_profile(PROFILES["tiny"].replace(prediction="v", loss_weighting="min-snr", snr_gamma=3.0))
    assert (c.prediction, c.loss_weighting, c.snr_gamma) == ("v", "min-snr", 3.0)
    assert TrainConfig.from_profile(PROFILES["tiny"].replace(prediction="v"), prediction="eps").prediction == "eps"


# ----------------------------------------------------------------------------- run folders

def write_settings(run, profile_dict):
    run.mkdir(parents=True, exist_ok=True)
    (run / "settings.json").write_text(json.dumps({
        "profile": profile_dict, "init_from": "", "grayscale": False, "notes": [],
        "data": {"path": "/nowhere", "fingerprint": "0", "files": 1, "images": 1}}))


def test_old_settings_read_as_eps_and_new_ones_keep_their_target(tmp_path):
    old = dataclasses.asdict(PROFILES["tiny"])
    for key in ("prediction", "loss_weighting", "snr_gamma"):
        del old[key]
    write_settings(tmp_path / "old", old)
    s = runs.read_settings(tmp_path / "old")["profile"]
    assert (s.prediction, s.loss_weighting, s.snr_gamma) == ("eps", "none", 5.0)
    new = dataclasses.asdict(PROFILES["tiny"].replace(prediction="v", loss_weighting="min-snr", snr_gamma=2.0))
    write_settings(tmp_path / "new", new)
    s = runs.read_settings(tmp_path / "new")["profile"]
    assert (s.prediction, s.loss_weighting, s.snr_gamma) == ("v", "min-snr", 2.0)


def test_sampling_from_a_run_passes_the_runs_prediction(tmp_path, monkeypatch):
    """generate_pngs and time_sampler_eval hand the run's prediction to sampling.generate."""
    from ddpm_lessons import sampling
    calls = []

    def fake_generate(model, schedule, num_images, *args, **kwargs):
        calls.append(kwargs.get("prediction"))
        return np.zeros((num_images, 4, 4, 3), np.float32)

    settings = {"profile": PROFILES["tiny"].replace(prediction="v"), "grayscale": False}
    monkeypatch.setattr(sampling, "generate", fake_generate)
    monkeypatch.setattr(runs, "load_ema_model", lambda run: (None, None, settings, "ckpt-7"))
    paths = runs.generate_pngs(tmp_path, 2, out=tmp_path / "out", progress=False)
    assert len(paths) == 2 and calls == ["v"]
    runs.time_sampler_eval(None, None, batch=1, prediction="v")
    assert calls == ["v", "v", "v"]


def test_reference_weights_refuse_a_run_with_another_target():
    from ddpm_lessons.training import load_reference_weights, reference_prediction
    from ddpm_lessons.unet import build_unet
    model = build_unet(PROFILES["cpu"])
    other = "v" if reference_prediction() == "eps" else "eps"
    with pytest.raises(ValueError, match=f"predicts '{reference_prediction()}'.*prediction='{other}'"):
        load_reference_weights(model, prediction=other)
    load_reference_weights(model, prediction=reference_prediction())        # the same target loads
