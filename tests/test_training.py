"""The training loop (lesson 07): learning, EMA arithmetic, exact resume, and the NaN guard."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig, TrainingDiverged, WarmupSchedule, ema_decay_at
from ddpm_lessons.unet import build_unet

SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(), groups=4)
SCHEDULE = NoiseSchedule.from_kind("cosine", 1000)


def batch(seed=0, n=8):
    """A fixed batch of smooth 'images' in [-1, 1] (a gradient plus a colour per image)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1, 1, 8, dtype=np.float32)[None, :, None, None]
    colour = rng.uniform(-0.5, 0.5, (n, 1, 1, 3)).astype(np.float32)
    return tf.constant(np.clip(ramp * 0.5 + colour + 0 * np.zeros((n, 8, 8, 3), np.float32), -1, 1))


def make_trainer(tmp=None, seed=0, **cfg):
    tf.keras.utils.set_random_seed(seed)
    config = TrainConfig(**{"learning_rate": 2e-3, "warmup_steps": 5, "ema_decay": 0.9,
                            "checkpoint_every": 3, "jit_compile": False, "seed": seed, **cfg})
    return Trainer(build_unet(SMALL), SCHEDULE, config, checkpoint_dir=tmp)


def weights(model):
    return [w.numpy().copy() for w in model.trainable_variables]


def test_warmup_schedule_values():
    lr = WarmupSchedule(1e-3, 10)
    assert float(lr(0)) == pytest.approx(1e-4) and float(lr(4)) == pytest.approx(5e-4)
    assert float(lr(9)) == pytest.approx(1e-3) and float(lr(500)) == pytest.approx(1e-3)


@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
def test_fresh_model_loss_is_one_and_training_lowers_it(jit):
    """Also under XLA, which make train picks on GPUs and CPUs without AVX-512 while make test runs
    tf.function (DDPM_COMPILE=function). The two cannot be compared step for step: with the same seed,
    TensorFlow's normal draws differ under XLA (Generator.normal and stateless_normal alike)."""
    tr = make_trainer(jit_compile=jit)
    x = batch()
    first = tr.train_step(x)
    # the zero-initialised output conv predicts eps = 0, so the first loss is E[eps^2] = 1
    assert first == pytest.approx(1.0, abs=0.1)
    losses = [tr.train_step(x) for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.6, f"loss did not fall: last 10 mean {np.mean(losses[-10:]):.3f}"
    assert int(tr.step.numpy()) == 61 and int(tr.optimizer.iterations.numpy()) == 61


def test_ema_follows_its_recurrence():
    tr = make_trainer(ema_decay=0.8)
    x = batch(1)
    expected = weights(tr.model)          # the EMA starts as a copy of the initial weights
    assert all(np.array_equal(a, b) for a, b in zip(expected, weights(tr.ema_model)))
    for n in range(7):
        tr.train_step(x)
        d = ema_decay_at(n, 0.8)
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights(tr.model))]
    for e, got, raw in zip(expected, weights(tr.ema_model), weights(tr.model)):
        np.testing.assert_allclose(got, e, rtol=1e-4, atol=1e-6)
    gap = max(np.abs(g - r).max() for g, r in zip(weights(tr.ema_model), weights(tr.model)))
    assert gap > 1e-5, "after training steps the EMA must lag behind the raw weights"


def test_nan_guard_stops_and_keeps_the_last_checkpoint(tmp_path):
    tr = make_trainer(tmp_path)
    tr.fit(tf.data.Dataset.from_tensors(batch(3)), total_steps=3, progress=False)
    good = weights(tr.model)
    poisoned = batch(4).numpy()
    poisoned[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4.*ckpt-3.*learning_rate"):
        tr.fit(tf.data.Dataset.from_tensors(tf.constant(poisoned)), total_steps=10, progress=False)
    assert tr.manager.latest_checkpoint.endswith("ckpt-3"), "nothing may be saved after a NaN"

    again = make_trainer(tmp_path, seed=5)
    assert again.restore() == 3
    for a, b in zip(good, weights(again.model)):
        assert np.all(np.isfinite(b))
        np.testing.assert_array_equal(a, b)


def test_loss_by_timestep_buckets_cover_every_step():
    tr = make_trainer()
    for _ in range(5):
        tr.train_step(batch(5))
    edges, mean = tr.loss_by_timestep()
    assert edges[0] == 0 and edges[-1] == 1000 and len(mean) == 10
    assert tr.bucket_count.sum() == 5 * 8, "every example's loss lands in one bucket"


def test_two_trainers_cannot_share_a_checkpoint_folder(tmp_path):
    """The folder lock is an flock: held by a living process it stops a second Trainer; released by the
    operating system when that process ends (even by kill -9); a pid written in the file alone holds nothing."""
    import subprocess, sys
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another process is training"):
            make_trainer(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "lock").write_text(str(sleeper.pid))        # a living pid, but no flock
        assert make_trainer(tmp_path).checkpoint_dir == tmp_path, "a released lock is taken over"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / "lock").read_text() == str(__import__("os").getpid()), "the holder's pid is in the file"


def test_mixed_precision_trains_with_loss_scaling_and_restores_the_policy():
    """float16 compute (what "auto" picks on a GPU), checked on small shapes on the CPU: layers compute
    in float16 with float32 weights, the output is float32, the loss is scaled, training works, and
    the EMA model we sample from computes in float32."""
    import keras
    from ddpm_lessons.profiles import resolve_precision
    assert resolve_precision("auto", gpu=True)[0] == "float16"
    tf.keras.utils.set_random_seed(0)
    model = build_unet(SMALL, precision="float16")
    assert keras.config.dtype_policy().name == "float32", "build_unet must restore the global policy"
    assert model.get_layer("conv_in").compute_dtype == "float16"
    assert all(w.dtype == "float32" for w in model.trainable_variables)
    x = batch()
    out = model([x, tf.zeros([8], tf.int32)])
    assert out.dtype == tf.float32
    trainer = Trainer(model, SCHEDULE, TrainConfig(learning_rate=2e-3, warmup_steps=5, ema_decay=0.9,
                                                   jit_compile=False))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.ema_model.get_layer("conv_in").compute_dtype == "float32"
    losses = [trainer.train_step(x) for _ in range(40)]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses
    # the weights moved (a skipped step, from a loss scale that overflowed forever, would not move them)
    assert not np.allclose(trainer.model.get_layer("out_conv").kernel.numpy(), 0)


def test_compact_weights_round_trip_in_float16(tmp_path):
    """The shipped reference is stored as float16: each weight comes back as its float16 rounding
    (relative error <= 2^-11), in about half the bytes of float32; another network is refused."""
    from ddpm_lessons.training import load_compact_weights, save_compact_weights
    tf.keras.utils.set_random_seed(0)
    model = build_unet(SMALL)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])
    path = save_compact_weights(model, tmp_path / "ema.float16.npz")
    fresh = load_compact_weights(build_unet(SMALL), path)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(b, a.astype(np.float16).astype(np.float32))
        big = np.abs(a) > 1e-4                      # float16's normal range: relative rounding <= 2^-11
        assert np.all(np.abs(b - a)[big] <= 2.0 ** -11 * np.abs(a)[big])
    float32_bytes = sum(w.size * 4 for w in model.get_weights())
    overhead = 400 * len(model.weights)             # the .npz's per-array header and zip entry
    assert path.stat().st_size < 0.5 * float32_bytes + overhead
    with pytest.raises(ValueError, match="another network"):
        load_compact_weights(build_unet({**SMALL, "base_width": 12}), path)


# ----------------------------------------------------------------------------- faults a review found (#30)

def distinct_images(n=24, size=8, seed=0):
    """n different uint8 pictures, so that every batch differs from every other."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_resume_continues_the_data_where_it_stopped(tmp_path):
    """Catches: a resumed (or a second) fit() starting the data iterator anew, which replays the first
    pass's order and flips; and a resume that takes any state (weights, EMA, Adam's moments and step,
    the random generator) from anywhere but the checkpoint. 24 pictures in batches of 4 (6 per pass,
    reshuffled every pass), 8 steps: the resumed run ends where the uninterrupted one does."""
    from ddpm_lessons.data import make_dataset
    straight = make_trainer(seed=3)
    straight.fit(make_dataset(distinct_images(), 4, seed=1), total_steps=8, progress=False)

    first = make_trainer(tmp_path, seed=3)
    first.fit(make_dataset(distinct_images(), 4, seed=1), total_steps=5, progress=False)   # saved at 3 and 5
    del first
    resumed = make_trainer(tmp_path, seed=3)         # the program started again (its fresh generator is at draw 0)
    assert resumed.restore() == 5
    assert int(resumed.optimizer.iterations.numpy()) == 5 and resumed.history["step"][-1] == 5
    resumed.fit(make_dataset(distinct_images(), 4, seed=1), total_steps=8, progress=False)

    in_process = make_trainer(seed=3)
    ds = make_dataset(distinct_images(), 4, seed=1)
    in_process.fit(ds, total_steps=4, progress=False)
    in_process.fit(ds, total_steps=8, progress=False)
    for other in (resumed, in_process):
        for a, b in zip(weights(straight.model) + weights(straight.ema_model), weights(other.model) + weights(other.ema_model)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_nan_loss_is_not_applied_to_the_weights_or_the_ema(tmp_path):
    """Catches: the update (and the EMA) applied before the loss is checked, leaving NaN in memory."""
    tr = make_trainer(tmp_path)
    tr.fit(tf.data.Dataset.from_tensors(batch(3)), total_steps=3, progress=False)
    before, ema_before = weights(tr.model), weights(tr.ema_model)
    poisoned = batch(4).numpy()
    poisoned[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="at step 4"):
        tr.train_step(tf.constant(poisoned))
    for a, b in zip(before + ema_before, weights(tr.model) + weights(tr.ema_model)):
        np.testing.assert_array_equal(a, b)
    assert int(tr.step.numpy()) == 3 == int(tr.optimizer.iterations.numpy())


def test_a_float16_step_skipped_for_overflow_moves_neither_ema_nor_counter():
    """Catches: a step whose scaled gradients overflowed (the LossScaleOptimizer skips it and halves
    the scale) still updating the EMA and the step counter, which then drifts from optimizer.iterations."""
    tf.keras.utils.set_random_seed(0)
    trainer = Trainer(build_unet(SMALL, precision="float16"), SCHEDULE,
                      TrainConfig(learning_rate=2e-3, warmup_steps=5, ema_decay=0.9, jit_compile=False))
    x = batch()
    trainer.train_step(x)
    ema = weights(trainer.ema_model)
    trainer.optimizer.dynamic_scale.assign(2.0 ** 120)           # float16 gradients overflow at this scale
    trainer.train_step(x)
    assert float(trainer.optimizer.dynamic_scale.numpy()) == 2.0 ** 119, "the step should have overflowed"
    assert int(trainer.step.numpy()) == 1 == int(trainer.optimizer.iterations.numpy())
    for a, b in zip(ema, weights(trainer.ema_model)):
        np.testing.assert_array_equal(a, b)


def test_continuing_a_float16_run_in_float32_is_refused_with_a_message(tmp_path):
    """Catches: a raw checkpoint traceback when a continued run switches precision (the float16 run's
    loss-scale optimizer is another object graph)."""
    tf.keras.utils.set_random_seed(0)
    config = TrainConfig(learning_rate=2e-3, warmup_steps=5, checkpoint_every=2, jit_compile=False)
    Trainer(build_unet(SMALL, precision="float16"), SCHEDULE, config, checkpoint_dir=tmp_path).fit(
        tf.data.Dataset.from_tensors(batch()), total_steps=2, progress=False)
    with pytest.raises(ValueError, match="float16.*continue with the precision it was trained with"):
        Trainer(build_unet(SMALL), SCHEDULE, config, checkpoint_dir=tmp_path).restore()


def test_compact_weights_load_by_path_not_by_position(tmp_path):
    """Catches: weights matched by position and shape, so that two kernels of equal shape stored in
    another order swap silently; and a stored path that the model does not have."""
    from ddpm_lessons.training import load_compact_weights, save_compact_weights
    tf.keras.utils.set_random_seed(0)
    model = build_unet(SMALL)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])
    path = save_compact_weights(model, tmp_path / "ema.float16.npz")
    with np.load(path) as f:
        paths, values = list(f["paths"]), [f[f"w{i}"] for i in range(len(f["paths"]))]
    shapes = [v.shape for v in values]
    i = next(i for i in range(len(values)) if shapes.count(shapes[i]) > 1 and len(shapes[i]) == 4)
    j = next(j for j in range(i + 1, len(values)) if shapes[j] == shapes[i])
    order = list(range(len(values)))
    order[i], order[j] = j, i                        # the same weights, stored in another order
    np.savez_compressed(tmp_path / "shuffled.npz", paths=np.array([paths[k] for k in order]),
                        **{f"w{n}": values[k] for n, k in enumerate(order)})
    fresh = load_compact_weights(build_unet(SMALL), tmp_path / "shuffled.npz")
    for w, v in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(w.numpy(), v.numpy().astype(np.float16).astype(np.float32), err_msg=w.path)
    renamed = [p if k != i else "unet/no_such_layer/kernel" for k, p in enumerate(paths)]
    np.savez_compressed(tmp_path / "renamed.npz", paths=np.array(renamed), **{f"w{n}": v for n, v in enumerate(values)})
    with pytest.raises(ValueError, match="no_such_layer"):
        load_compact_weights(build_unet(SMALL), tmp_path / "renamed.npz")


def test_the_clip_after_the_sum_is_kerass_clip_on_one_device():
    """AdamClippedAfterSum moves Keras's global-norm clip after the (replica) sum; on one device the
    sum is the gradient, so two steps must equal keras.optimizers.Adam(global_clipnorm=...)'s to the
    bit, and the clip must be engaged (an unclipped step differs). Catches a clip that is skipped,
    done twice, or done with another norm."""
    import keras
    from ddpm_lessons.training import AdamClippedAfterSum
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(3,)).astype("float32")]
    grads = [tf.constant(rng.normal(0, 5, size=w.shape).astype("float32")) for w in start]   # norm ~ 9 > clip

    def two_steps(optimizer):
        variables = [tf.Variable(w) for w in start]
        optimizer.build(variables)
        optimizer.apply(grads, variables)                                   # clipped (norm ~ 9)
        optimizer.apply([g * 0.01 for g in grads], variables)               # not clipped: its update depends on
        return [v.numpy() for v in variables]                               # the size the first step had

    mine = two_steps(AdamClippedAfterSum(0.1, global_clipnorm=0.5))
    kerass = two_steps(keras.optimizers.Adam(0.1, global_clipnorm=0.5))
    free = two_steps(keras.optimizers.Adam(0.1))
    for a, b in zip(mine, kerass):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - b).max()) for a, b in zip(mine, free)) > 1e-3, "the clip must be engaged"


def test_build_for_training_says_what_the_trainer_will_do(monkeypatch):
    """Lesson 09's machine choices (training.build_for_training): the compile line follows the Trainer's
    rule (the profile's compile, else $DDPM_COMPILE, else resolve_compile) and the asked precision is used."""
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.training import build_for_training
    tiny = get_profile("tiny").replace(precision="float32")
    for profile_mode, env, want in [("function", "xla", "tf.function"), ("auto", "xla", "XLA"), ("auto", "function", "tf.function")]:
        monkeypatch.setenv("DDPM_COMPILE", env)
        settings = tiny.replace(compile=profile_mode)
        model, strategy, machine = build_for_training(settings)
        trainer = Trainer(model, NoiseSchedule.from_kind(settings.schedule, settings.timesteps), TrainConfig.from_profile(settings))
        assert strategy is None and model.dtype_policy.name == "float32"
        assert f"compiled with {want}:" in machine and trainer.config.jit_compile == (want == "XLA"), (profile_mode, env, machine)
