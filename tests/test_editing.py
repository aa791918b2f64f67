"""Editing (lesson 16): SDEdit, inpainting with RePaint's resampling, slerp and the DDIM round trip, each
against an answer known in advance (an exact identity, a plain sample, a Gaussian's exact conditional)."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons import editing
from ddpm_lessons.editing import (inpaint, inpaint_evaluations, interpolate_noise, interpolate_real, mask_preset,
                                  repaint_grid, round_trip, sdedit, slerp, strength_grid)
from ddpm_lessons.flow import FlowMatching
from ddpm_lessons.sampling import END, ddim_sample, make_loop, model_eps_fn, run_loop, timestep_grid
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.toy import default_mixture, mixture_eps_fn

COSINE = NoiseSchedule.from_kind("cosine", 1000)


@pytest.fixture(scope="module")
def tiny_eps_fn():
    """A tiny U-Net with a random (non-zero) last layer: its pictures are not trivially zero."""
    from ddpm_lessons.unet import build_unet
    model = build_unet(dict(image_size=8, base_width=8, channel_mults=(1, 2), attention_resolutions=(), groups=4))
    out = model.get_layer("out_conv")
    out.kernel.assign(tf.random.normal(out.kernel.shape, stddev=0.5, seed=1))
    return model_eps_fn(model)


def pictures(n=4, size=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def correlated_gaussian_eps(schedule, rho):
    """Exact eps* of x ~ N(0, [[1, rho], [rho, 1]]): sqrt(1 - abar) (abar Sigma + (1 - abar) I)^-1 x_t."""
    abar = tf.constant(schedule.alphas_cumprod, tf.float32)
    cov = tf.constant([[1.0, rho], [rho, 1.0]])

    def eps_fn(x, t):
        a = tf.reshape(tf.gather(abar, t), [-1, 1, 1])
        return tf.sqrt(1 - a[:, 0]) * tf.linalg.solve(a * cov + (1 - a) * tf.eye(2), x[..., None])[..., 0]
    return eps_fn


# ------------------------------------------------------------------ SDEdit

def test_strength_grid_is_the_tail_of_the_plain_grid():
    assert strength_grid(COSINE, 0.0, 50) is None
    np.testing.assert_array_equal(strength_grid(COSINE, 1.0, 50), timestep_grid(COSINE, 50))
    g = strength_grid(COSINE, 0.5, 50)
    assert g[0] == 500 and g[-1] == END and len(g) == 25 + 1 and np.all(np.diff(g) < 0)
    assert len(strength_grid(COSINE, 0.01, 50)) == 2                 # at least one step
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="strength"):
            strength_grid(COSINE, bad, 50)


def test_sdedit_strength_0_is_the_picture_and_strength_1_the_plain_sample(tiny_eps_fn):
    x = pictures()
    np.testing.assert_array_equal(sdedit(tiny_eps_fn, x, COSINE, 0.0), x)
    for eta in (0.0, 1.0):
        edited = sdedit(tiny_eps_fn, x, COSINE, 1.0, steps=6, eta=eta, seed=7)
        plain = ddim_sample(tiny_eps_fn, x.shape, COSINE, num_steps=6, eta=eta, seed=7, clip_x0=1.0)
        np.testing.assert_array_equal(edited, plain)
    other = sdedit(tiny_eps_fn, x, COSINE, 1.0, steps=6, eta=0.0, seed=8)
    assert np.abs(other - plain).max() > 1e-2                        # the seed matters


def test_sdedit_moves_further_from_its_input_as_strength_grows():
    """Points far from the mixture, edited by its exact eps: the mean distance to the input grows with the
    strength, and at strength 1 the edits are the mixture's own samples (their mean is the mixture's)."""
    mix = default_mixture()
    fn = mixture_eps_fn(mix, COSINE)
    x = np.full((2000, 2), 4.0, np.float32)
    strengths = (0.0, 0.1, 0.3, 0.6, 1.0)
    out = {s: sdedit(fn, x, COSINE, s, steps=40, seed=1, clip_x0=None) for s in strengths}
    dist = [np.linalg.norm(out[s] - x, axis=1).mean() for s in strengths]
    assert dist[0] == 0 and all(b > a + 0.05 for a, b in zip(dist, dist[1:])), dist
    mean, _ = mix.moments()
    np.testing.assert_allclose(out[1.0].mean(0), mean, atol=0.1)


# ------------------------------------------------------------------ inpainting

def test_mask_presets():
    assert mask_preset("left-half", 32).shape == (32, 32, 1)
    assert (1 - mask_preset("left-half", 32)).mean() == 0.5
    assert (1 - mask_preset("left-half", 32))[:, :16].all()
    assert (1 - mask_preset("centre-square", 32)).mean() == 0.25
    strokes = mask_preset("strokes", 32, seed=3)
    assert 0.03 < (1 - strokes).mean() < 0.5 and set(np.unique(strokes)) == {0.0, 1.0}
    np.testing.assert_array_equal(strokes, mask_preset("strokes", 32, seed=3))
    assert not np.array_equal(strokes, mask_preset("strokes", 32, seed=4))
    with pytest.raises(ValueError, match="left-half"):
        mask_preset("circle", 32)


def test_repaint_grid_walks_down_and_back_and_draws_fresh_noise_on_revisits():
    grid = timestep_grid(COSINE, 10)
    walk, keys = repaint_grid(grid, jump=3, resample=1)
    np.testing.assert_array_equal(walk, grid)
    np.testing.assert_array_equal(keys, grid[:-1])                   # the plain sampler's noise keys
    walk, keys = repaint_grid(grid, jump=3, resample=4)
    assert walk[0] == grid[0] and walk[-1] == END and len(keys) == len(walk) - 1
    steps = np.diff(walk.astype(int))
    # three full stretches of 3 steps, each walked 4 times down and 3 times up; the last stretch once
    assert np.sum(steps < 0) == 3 * 3 * 4 + 1 and np.sum(steps > 0) == 3 * 3 * 3
    assert len(set(keys.tolist())) == len(keys), "a time visited again must draw new noise"
    _, big = repaint_grid(timestep_grid(COSINE, 50), jump=5, resample=20)      # keys beyond float32's 2^24
    assert big.max() > 2 ** 24 and len(set(big.tolist())) == len(big)
    rows = editing.key_rows(big)                                            # how the loop is given them
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0].astype(np.int64) + rows[1].astype(np.int64) * editing.VISIT, big)
    first = {}
    for start, key in zip(walk[:-1], keys):
        first.setdefault(int(start), int(key))
    assert all(first[t] == t for t in first)                          # first visits: as the plain sampler
    assert inpaint_evaluations(COSINE, 10, resample=4, jump=3) == 37


def test_inpainting_keeps_the_known_pixels_bit_exact_and_with_no_hole_known_is_the_sample(tiny_eps_fn):
    x = pictures()
    mask = mask_preset("centre-square", 8)
    for resample in (1, 3):
        out = inpaint(tiny_eps_fn, x, mask, COSINE, steps=6, seed=2, resample=resample, jump=2)
        keep = mask[..., 0] > 0.5
        np.testing.assert_array_equal(out[:, keep], x[:, keep])
        assert np.abs(out[:, ~keep] - x[:, ~keep]).mean() > 0.05
    nothing_known = inpaint(tiny_eps_fn, x, np.zeros((8, 8, 1), np.float32), COSINE, steps=6, eta=1.0, seed=2)
    plain = ddim_sample(tiny_eps_fn, x.shape, COSINE, num_steps=6, eta=1.0, seed=2, clip_x0=1.0)
    np.testing.assert_allclose(nothing_known, plain, atol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        inpaint(tiny_eps_fn, x, np.ones((4, 4, 1), np.float32), COSINE, steps=3)


def test_repaint_resampling_moves_the_fill_toward_the_exact_conditional():
    """x ~ N(0, [[1, rho], [rho, 1]]) with x1 = c known: the exact fill is x2 | x1 = c ~ N(rho c, 1 - rho^2).
    Plain replacement misses it (its x2 never learns x1 early enough), more steps do not help; RePaint's
    resampling brings the mean and variance close."""
    rho, c = 0.9, 1.5
    fn = correlated_gaussian_eps(COSINE, rho)
    x = np.tile(np.array([[c, 0.0]], np.float32), (4000, 1))
    mask = np.array([1.0, 0.0], np.float32)
    fill = lambda **kw: inpaint(fn, x, mask, COSINE, eta=1.0, seed=0, clip_x0=None, **kw)
    plain, longer, resampled = fill(steps=50), fill(steps=200), fill(steps=50, resample=5, jump=5)
    assert np.all(plain[:, 0] == c) and np.all(resampled[:, 0] == c)
    miss = lambda out: abs(out[:, 1].mean() - rho * c)
    assert miss(plain) > 0.3 and miss(longer) > 0.3, (miss(plain), miss(longer))
    assert miss(resampled) < 0.5 * miss(plain), (miss(resampled), miss(plain))
    assert abs(resampled[:, 1].var() - (1 - rho ** 2)) < abs(plain[:, 1].var() - (1 - rho ** 2))


def test_the_step_back_up_is_the_forward_process():
    """RePaint's jump from t up to s > t: x_s = sqrt(abar_s / abar_t) x_t + sqrt(1 - abar_s / abar_t) z. From
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e, x_s must have mean sqrt(abar_s) x0 and variance 1 - abar_s."""
    t, s = 200, 700
    fn = lambda x, tt: tf.zeros_like(x)                                  # never called on a step up
    known, mask = editing._inpaint_inputs(fn)
    known.assign(np.zeros((1, 2), np.float32))
    mask.assign(np.zeros((1, 2), np.float32))
    run = make_loop(fn, COSINE, editing.inpaint_loop_step(editing.ddim_loop_step(1.0), known, mask), ("up",),
                    rank=2)
    x0, a_t, a_s = 0.7, COSINE.alphas_cumprod[t], COSINE.alphas_cumprod[s]
    x_t = np.sqrt(a_t) * x0 + np.sqrt(1 - a_t) * np.random.default_rng(0).standard_normal((20000, 2))
    x_s = run_loop(run, x_t.astype(np.float32), np.array([t, s]), np.array([[t], [0]], np.float32), 3).numpy()
    np.testing.assert_allclose(x_s.mean(), np.sqrt(a_s) * x0, atol=0.02)
    np.testing.assert_allclose(x_s.var(), 1 - a_s, atol=0.02)


# ------------------------------------------------------------------ interpolation and inversion

def test_slerp_ends_exactly_and_keeps_the_norm():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    z1 = z1 * np.linalg.norm(z0) / np.linalg.norm(z1)
    path = slerp(z0, z1, np.linspace(0, 1, 9))
    assert path.shape == (9, 8, 8, 3)
    np.testing.assert_array_equal(path[0], z0)
    np.testing.assert_array_equal(path[-1], z1)
    np.testing.assert_allclose(np.linalg.norm(path.reshape(9, -1), axis=1), np.linalg.norm(z0), rtol=1e-5)
    # equal angles between neighbours (a straight line would not keep the norm: sqrt(1/2) of it half-way)
    unit = path.reshape(9, -1) / np.linalg.norm(path.reshape(9, -1), axis=1, keepdims=True)
    angles = np.arccos(np.clip(np.sum(unit[1:] * unit[:-1], 1), -1, 1))
    np.testing.assert_allclose(angles, angles.mean(), rtol=1e-3)
    np.testing.assert_allclose(slerp(z0, z0, [0.3])[0], z0, rtol=1e-6)   # parallel: the line


def test_inversion_then_generation_returns_the_start_with_the_exact_toy_score():
    """Lesson 03's exact eps of the mixture makes the probability-flow ODE exactly invertible: the round
    trip's error is DDIM's discretisation error, which falls with the steps."""
    mix = default_mixture()
    fn = mixture_eps_fn(mix, COSINE)
    x = mix.sample(500, seed=3).astype(np.float32)
    errors = [np.abs(round_trip(fn, x, COSINE, steps=k)[1] - x).mean() for k in (20, 200)]
    assert errors[1] < 0.02 and errors[1] < 0.5 * errors[0], errors


def test_interpolations_start_and_end_at_the_samples_and_reconstructions(tiny_eps_fn):
    frames = interpolate_noise(tiny_eps_fn, (8, 8, 3), COSINE, seed_a=1, seed_b=2, frames=5, steps=4)
    assert frames.shape == (5, 8, 8, 3)
    for seed, frame in ((1, frames[0]), (2, frames[-1])):
        alone = ddim_sample(tiny_eps_fn, (1, 8, 8, 3), COSINE, num_steps=4, eta=0.0, seed=seed, clip_x0=1.0)
        np.testing.assert_allclose(frame, alone[0], atol=1e-5)
    x = pictures(2)
    frames = interpolate_real(tiny_eps_fn, x[0], x[1], COSINE, frames=4, steps=5)
    _, back = round_trip(tiny_eps_fn, x, COSINE, steps=5)
    np.testing.assert_allclose(frames[[0, -1]], back, atol=1e-4)
    assert np.abs(frames[1] - frames[0]).mean() > 1e-3


def test_a_flow_matching_network_is_refused():
    fn = lambda x, t: x
    fn.objective = FlowMatching()
    with pytest.raises(ValueError, match="flow matching"):
        sdedit(fn, pictures(), COSINE, 0.5)
