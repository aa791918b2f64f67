"""Flow matching (lesson 15, ``ddpm_lessons/flow.py``): the straight path, its velocity target, the
exact velocity of a Gaussian mixture, Euler and Heun in the samplers' compiled loop, and the objective
switch of the Trainer."""
import json

import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.diffusion import Diffusion, objective
from ddpm_lessons.flow import FlowMatching, flow_sample, velocity_fn
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.toy import GaussianMixture, default_mixture, distance_floor, sliced_wasserstein_w2
from ddpm_lessons.training import Trainer, TrainConfig
from ddpm_lessons.unet import build_unet

rng = np.random.default_rng(0)
X0 = tf.constant(rng.uniform(-1, 1, (4, 8, 8, 3)), tf.float64)
NOISE = tf.constant(rng.standard_normal((4, 8, 8, 3)), tf.float64)


def test_the_path_starts_at_the_data_and_ends_at_the_noise_exactly():
    """x_0 = x0 and x_1 = eps bit for bit (a path with the ends swapped, or alpha = t, fails)."""
    fm = FlowMatching()
    x_start, _, _ = fm.noised(X0, tf.zeros([4], tf.float64), NOISE)
    x_end, _, _ = fm.noised(X0, tf.ones([4], tf.float64), NOISE)
    assert np.array_equal(x_start.numpy(), X0.numpy()) and np.array_equal(x_end.numpy(), NOISE.numpy())


def test_the_velocity_target_is_the_paths_derivative():
    """target = d x_t / dt, by central differences of the path itself (float64, h = 1e-4): a target of the
    wrong sign (x0 - eps) or a v-prediction target differs by O(1)."""
    fm = FlowMatching()
    t = tf.constant([0.1, 0.35, 0.6, 0.9], tf.float64)
    h = 1e-4
    _, target, weight = fm.noised(X0, t, NOISE)
    ahead, _, _ = fm.noised(X0, t + h, NOISE)
    behind, _, _ = fm.noised(X0, t - h, NOISE)
    np.testing.assert_allclose(target.numpy(), ((ahead - behind) / (2 * h)).numpy(), atol=1e-9)
    assert np.all(weight.numpy() == 1.0)


def test_predict_inverts_the_path_for_the_true_velocity():
    """Given the true velocity at (x_t, t), ``predict`` returns the eps and x0 that made x_t."""
    fm = FlowMatching()
    t = tf.constant([0.0, 0.3, 0.7, 1.0], tf.float64)
    x_t, u, _ = fm.noised(X0, t, NOISE)
    eps, x0 = fm.predict(u, x_t, t)
    np.testing.assert_allclose(eps.numpy(), NOISE.numpy(), atol=1e-12)
    np.testing.assert_allclose(x0.numpy(), X0.numpy(), atol=1e-12)


def test_the_exact_velocity_of_a_mixture_is_the_average_of_eps_minus_x0_given_x_t():
    """``velocity_star`` against a Monte Carlo estimate of E[eps - x0 | x_t = x]: draw (x0, eps) pairs,
    keep those whose x_t falls in a small ball around x, average. At t = 1, u* = x - E[x0] exactly."""
    m = default_mixture()
    x = tf.constant([[0.3, -0.2]], tf.float64)
    np.testing.assert_allclose(m.velocity_star(x, 1.0).numpy()[0], x.numpy()[0] - m.moments()[0], atol=1e-12)
    t = 0.5
    x0 = m.sample(6_000_000, seed=1).astype(np.float64)
    eps = np.random.default_rng(2).standard_normal(x0.shape)
    x_t = (1 - t) * x0 + t * eps
    near = np.linalg.norm(x_t - x.numpy(), axis=1) < 0.03
    mc = (eps - x0)[near].mean(0)
    se = (eps - x0)[near].std(0) / np.sqrt(near.sum())
    exact = m.velocity_star(x, t).numpy()[0]
    assert near.sum() > 3000 and np.all(np.abs(mc - exact) < 4 * se + 0.01), (mc, exact, se, near.sum())


def test_euler_with_the_exact_velocity_gives_back_the_mixture():
    """The probability-flow ODE of the straight path, integrated from pure noise with u*, ends on the
    mixture: sliced W2 to fresh data within the spread of the same distance between two draws of the data."""
    m = default_mixture()
    fn = velocity_fn(lambda x, t: m.velocity_star(x, t))
    x = flow_sample(fn, (2000, 2), num_steps=200, sampler="euler", seed=0)
    ref = m.sample(2000, seed=100)
    floor = distance_floor(lambda s: m.sample(2000, seed=s), ref, repeats=8)["sw2"]
    assert sliced_wasserstein_w2(x, ref) < floor.mean() + 3 * floor.std(), (sliced_wasserstein_w2(x, ref), floor)


@pytest.fixture(scope="module")
def order_errors():
    """Median end-point error of Euler, Heun and DPM-Solver++(2M) at 8-64 steps against Heun at 1,000 steps,
    on a fixed z."""
    m = default_mixture()
    fn = velocity_fn(lambda x, t: m.velocity_star(x, t))
    z = np.random.default_rng(1).standard_normal((1000, 2))
    ref = flow_sample(fn, z.shape, num_steps=1000, sampler="heun", x_T=z, dtype=tf.float64)
    steps = np.array([8, 16, 32, 64])
    errors = {s: [np.median(np.linalg.norm(flow_sample(fn, z.shape, num_steps=int(n), sampler=s, x_T=z,
                                                       dtype=tf.float64) - ref, axis=1)) for n in steps]
              for s in ("euler", "heun", "dpm++2m")}
    return steps, errors


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2), ("dpm++2m", 2)])
def test_the_error_falls_with_the_number_of_steps_at_the_solvers_order(order_errors, sampler, order):
    """log(error) against log(steps) has slope -order within 0.2 (the median over 1,000 points: a few
    points near the boundary between two modes, where u* is steep at small t, converge late and would
    dominate an RMS)."""
    steps, errors = order_errors
    slope = np.polyfit(np.log(steps), np.log(errors[sampler]), 1)[0]
    assert abs(slope + order) < 0.2, (sampler, slope, errors[sampler])


def test_euler_is_ddims_eta_0_step_on_the_straight_path():
    """One Euler step x + (s - t) u, by hand, against the sampler's first step (DDIM's eta = 0 update with
    alpha = 1 - t, sigma = t) for a linear velocity field."""
    fn = velocity_fn(lambda x, t: 0.5 * x - 0.2)
    z = np.random.default_rng(3).standard_normal((5, 3))
    x1 = flow_sample(fn, z.shape, num_steps=1, sampler="euler", x_T=z, dtype=tf.float64)      # t = 1 -> 0
    np.testing.assert_allclose(x1, z + (0.0 - 1.0) * (0.5 * z - 0.2), atol=1e-12)
    x2 = flow_sample(fn, z.shape, num_steps=2, sampler="euler", x_T=z, dtype=tf.float64)      # 1 -> 0.5 -> 0
    half = z - 0.5 * (0.5 * z - 0.2)
    np.testing.assert_allclose(x2, half - 0.5 * (0.5 * half - 0.2), atol=1e-12)


def test_flow_dpm_solver_starts_as_euler_and_then_uses_its_history():
    """DPM-Solver++(2M) on the straight path (lesson 08's step with alpha = 1 - t, sigma = t): its first step
    is DDIM's, i.e. Euler's; the path starts at alpha = 0 (lambda = -inf), so the second step's history
    weight is 0 too and up to 3 steps it *is* Euler; from 4 steps the correction differs from Euler."""
    m = default_mixture()
    fn = velocity_fn(lambda x, t: m.velocity_star(x, t))
    z = np.random.default_rng(4).standard_normal((200, 2))
    run = lambda sampler, k: flow_sample(fn, z.shape, num_steps=k, sampler=sampler, x_T=z, dtype=tf.float64)  # noqa: E731
    for k in (1, 2, 3):
        np.testing.assert_allclose(run("dpm++2m", k), run("euler", k), atol=1e-12)
    assert np.abs(run("dpm++2m", 4) - run("euler", 4)).max() > 0.05


def test_objective_gives_flow_matching_for_flow_and_diffusion_otherwise():
    schedule = NoiseSchedule.from_kind("cosine", 100)
    assert isinstance(objective(schedule, "flow"), FlowMatching)
    assert isinstance(objective(schedule, "v"), Diffusion) and objective(schedule, "v").prediction == "v"
    with pytest.raises(ValueError, match="objective"):
        Diffusion(schedule, "flow")
    with pytest.raises(ValueError, match="time_sampling"):
        TrainConfig(prediction="flow", time_sampling="beta")


SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1,), num_res_blocks=1,
             attention_resolutions=(), groups=4)


def test_the_trainer_takes_the_flow_objective_and_a_flow_checkpoint_refuses_another_target(tmp_path):
    """One Trainer, two objectives: with prediction="flow" its step draws t in [0, 1] (floats, not the
    schedule's integer timesteps); a flow checkpoint continues as flow and refuses to load as an eps or
    v run, with a message naming both targets. (One process may hold a folder's lock several times.)"""
    schedule = NoiseSchedule.from_kind("cosine", 100)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(images).batch(8).repeat()
    config = TrainConfig(prediction="flow", warmup_steps=0, jit_compile=False, checkpoint_every=2)
    trainer = Trainer(build_unet(SMALL), schedule, config, checkpoint_dir=tmp_path)
    assert isinstance(trainer.diffusion, FlowMatching)
    _, _, t = trainer._compiled_step(tf.constant(images))
    t = t.numpy()
    assert t.dtype == np.float32 and np.all((t >= 0) & (t <= 1)) and len(set(t)) == 8 and np.any(t != np.round(t))
    trainer.fit(data, 2, progress=False)
    assert json.loads((tmp_path / "history.json").read_text())["config"]["prediction"] == "flow"
    for other in ("eps", "v"):
        wrong = Trainer(build_unet(SMALL), schedule, TrainConfig(prediction=other, jit_compile=False),
                        checkpoint_dir=tmp_path)
        with pytest.raises(ValueError, match=rf"flow-matching velocity.*prediction='flow'.*prediction='{other}'"):
            wrong.restore()
    assert Trainer(build_unet(SMALL), schedule, config, checkpoint_dir=tmp_path).restore() == 2


def test_the_trainer_trains_on_each_images_own_noise_when_the_batch_carries_it():
    """Reflow's batches {"images", "noise"}: the step's loss is the flow loss of *that* noise (recomputed by
    hand from the same t: the Trainer's generator, seeded alike, draws t first), not of noise it draws."""
    schedule = NoiseSchedule.from_kind("cosine", 100)
    r = np.random.default_rng(3)
    x0 = r.uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
    z = r.standard_normal((4, 8, 8, 3)).astype("float32")
    config = TrainConfig(prediction="flow", warmup_steps=0, jit_compile=False)
    trainer = Trainer(build_unet(SMALL), schedule, config)
    t = FlowMatching().training_times(tf.random.Generator.from_seed(config.seed), 4)
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * z
    out = trainer.model([x_t, 999.0 * t], training=True)
    expected = float(tf.reduce_mean(tf.square(z - x0 - out)))
    loss, _, t_used = trainer._compiled_step(*trainer._split({"images": tf.constant(x0), "noise": tf.constant(z)}))
    np.testing.assert_allclose(t_used.numpy(), t.numpy())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    augmented = Trainer(build_unet(SMALL), schedule, TrainConfig(prediction="flow", augment_p=0.5, jit_compile=False))
    with pytest.raises(ValueError, match="cannot be augmented"):
        augmented._split({"images": x0, "noise": z})


def test_reflow_pairs_are_what_the_sampler_makes_of_their_own_noise():
    """Each (z, x0) pair: x0 is the flow sampler's image started from exactly z (batch i from seed + i, the
    last batch short), and ``pair_dataset`` keeps every image with its noise through the shuffle."""
    from ddpm_lessons.flow import pair_dataset, reflow_pairs
    from ddpm_lessons.sampling import model_eps_fn
    schedule = NoiseSchedule.from_kind("cosine", 100)
    tf.keras.utils.set_random_seed(0)
    model = build_unet(SMALL)
    noise, images = reflow_pairs(model, schedule, 5, seed=7, sampler="euler", steps=2, batch_size=2)
    assert noise.shape == images.shape == (5, 8, 8, 3) and noise.dtype == images.dtype == np.float32
    fn = model_eps_fn(model, schedule, "flow")
    for lo, hi in ((0, 2), (4, 5)):
        again = flow_sample(fn, (hi - lo, 8, 8, 3), num_steps=2, sampler="euler", x_T=noise[lo:hi], clip_x0=1.0)
        np.testing.assert_allclose(again, images[lo:hi], atol=1e-5)
    batches = list(pair_dataset(noise, 3.0 * noise + 1.0, batch_size=2, seed=0))
    assert len(batches) == 2
    for b in batches:
        np.testing.assert_allclose(b["images"].numpy(), 3.0 * b["noise"].numpy() + 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="pair one to one"):
        pair_dataset(noise, images[:4], batch_size=2)


def test_reflow_straightens_the_paths_so_one_euler_step_lands_where_the_ode_goes():
    """Rectified flow's second round on lesson 03's mixture: couples (z, ODE(z)) from the exact field, and a
    ToyMLP trained on them (800 steps: lesson 15 trains 2,000). One Euler step of the reflowed field lands near
    the ODE's end from the same z (median distance < 0.2; measured 0.08), where one step of the exact field
    itself lands on the data's mean (median distance > 0.8; measured 1.15). The control: the same points
    trained *without* their noise (independent eps, the first round's coupling) stay as far as the exact field
    (measured 1.13): the coupling straightens, not the data."""
    from ddpm_lessons import toy
    mix = default_mixture()
    schedule = NoiseSchedule.from_kind("cosine", 1000)
    exact = velocity_fn(lambda x, t: mix.velocity_star(x, t))
    z_pairs = np.random.default_rng(5).standard_normal((20_000, 2))
    x_pairs = flow_sample(exact, z_pairs.shape, num_steps=50, sampler="heun", x_T=z_pairs, dtype=tf.float64)
    z = np.random.default_rng(6).standard_normal((2000, 2))
    end = flow_sample(exact, z.shape, num_steps=50, sampler="heun", x_T=z, dtype=tf.float64)

    def one_step_distance(fn, dtype=tf.float32):
        x = flow_sample(fn, z.shape, num_steps=1, sampler="euler", x_T=z, dtype=dtype)
        return float(np.median(np.linalg.norm(x - end, axis=1)))

    learned = {}
    for name, noise in (("reflow", z_pairs), ("independent", None)):
        mlp = toy.build_toy_mlp(width=128, seed=0)
        toy.train_toy(mlp, x_pairs, schedule, steps=800, batch=256, lr=2e-3, seed=0, objective=FlowMatching(),
                      noise=noise)
        learned[name] = one_step_distance(velocity_fn(
            lambda x, t, m=mlp: m(tf.cast(x, tf.float32), FlowMatching.unet_time(tf.broadcast_to(t, [tf.shape(x)[0]])))))
    first_round = one_step_distance(exact, tf.float64)
    assert learned["reflow"] < 0.2 and first_round > 0.8 and learned["independent"] > 0.8, (learned, first_round)
