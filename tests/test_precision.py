"""bfloat16 training (issue: faster on a CPU): when it is on, how close it computes to float32, and
that sampling always computes in float32."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.profiles import PROFILES, Profile, resolve_precision
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig
from ddpm_lessons.unet import build_unet, float32_copy

SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,), groups=4)
SCHEDULE = NoiseSchedule.from_kind("cosine", 1000)


def compute_dtypes(model):
    return {layer.dtype_policy.compute_dtype for layer in model._flatten_layers() if layer is not model}


def random_weights(model, seed=0):
    """Every weight random (the zero-initialised output conv too), so outputs are not all zero."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])


def test_auto_picks_bfloat16_only_with_the_cpu_flag():
    assert resolve_precision("auto", flags={"avx2", "avx512f", "avx512_bf16"}, gpu=False)[0] == "bfloat16"
    assert resolve_precision("auto", flags={"avx2", "amx_tile", "amx_bf16"}, gpu=False)[0] == "bfloat16"
    dtype, why = resolve_precision("auto", flags={"avx2", "avx512f", "avx512_vnni"}, gpu=False)
    assert dtype == "float32" and "avx512_bf16" in why and "emulate" in why        # the bench prints why
    assert resolve_precision("auto", flags=set(), gpu=False)[0] == "float32"       # no /proc/cpuinfo
    assert resolve_precision("auto", flags={"avx512_bf16"}, gpu=True)[0] == "float16"
    assert resolve_precision("float32", flags={"avx512_bf16"}, gpu=False)[0] == "float32"  # the off switch
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("bf16")
    with pytest.raises(ValueError, match="precision"):
        PROFILES["tiny"].replace(precision="half")
    assert all(p.precision == "auto" for p in PROFILES.values()) and Profile.precision == "auto"


def test_bfloat16_unet_computes_close_to_float32():
    """Same weights, same input: bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4%), so the
    output may differ by a few 0.1% of its size, and no more than 3% (rms) through the whole U-Net."""
    tf.keras.utils.set_random_seed(0)
    f32 = build_unet(SMALL)
    bf16 = build_unet(SMALL, precision="bfloat16")
    assert "bfloat16" in compute_dtypes(bf16) and compute_dtypes(f32) == {"float32"}
    assert bf16.get_layer("out_conv").compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in bf16.weights)
    random_weights(f32)
    bf16.set_weights(f32.get_weights())
    x = tf.random.stateless_normal([6, 8, 8, 3], seed=[1, 2])
    t = tf.constant([0, 10, 200, 500, 800, 999])
    a, b = f32([x, t]).numpy(), bf16([x, t]).numpy()
    assert b.dtype == np.float32
    rel = np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2))
    assert 1e-4 < rel < 0.03, rel                 # different (it does compute in bfloat16), but close


def test_bfloat16_training_step_is_finite_and_the_ema_model_samples_in_float32(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_unet(SMALL, precision="bfloat16")
    trainer = Trainer(model, SCHEDULE, TrainConfig(learning_rate=2e-3, warmup_steps=2, ema_decay=0.9,
                                                   jit_compile=False, checkpoint_every=3),
                      checkpoint_dir=tmp_path)
    assert compute_dtypes(trainer.ema_model) == {"float32"}
    assert trainer.ema_model.get_layer("t").dtype == "float32"        # the inputs keep their dtypes (t: float32, not bfloat16)
    x = tf.random.stateless_uniform([8, 8, 8, 3], seed=[3, 4], minval=-1, maxval=1)
    losses = [trainer.train_step(x) for _ in range(6)]
    assert np.all(np.isfinite(losses))
    kernel = trainer.model.get_layer("out_conv").kernel
    assert kernel.dtype == "float32" and not np.allclose(kernel.numpy(), 0)
    trainer.save()
    # sampling from the EMA model is exactly a float32 U-Net with the same weights
    f32 = build_unet(SMALL)
    f32.set_weights(trainer.ema_model.get_weights())
    random_weights(f32, seed=1)                       # trained 6 steps the output is still tiny: be sure
    trainer.ema_model.set_weights(f32.get_weights())
    opts = dict(num_images=4, sampler="ddim", steps=3, eta=0.0, seed=5)
    np.testing.assert_array_equal(generate(trainer.ema_model, SCHEDULE, **opts), generate(f32, SCHEDULE, **opts))
    as_bf16 = build_unet(SMALL, precision="bfloat16")
    as_bf16.set_weights(f32.get_weights())
    assert not np.array_equal(generate(as_bf16, SCHEDULE, **opts), generate(f32, SCHEDULE, **opts))
    # a bfloat16 checkpoint resumes in float32 (the variables are float32 under both policies)
    resumed = Trainer(build_unet(SMALL), SCHEDULE, TrainConfig(jit_compile=False), checkpoint_dir=tmp_path)
    assert resumed.restore() == 6
    for a, b in zip(resumed.model.get_weights(), trainer.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_float32_copy_keeps_weights_and_gives_float32_outputs():
    tf.keras.utils.set_random_seed(0)
    bf16 = build_unet(SMALL, precision="bfloat16")
    random_weights(bf16, seed=2)
    copy = float32_copy(bf16)
    f32 = build_unet(SMALL)
    f32.set_weights(bf16.get_weights())
    x, t = tf.random.stateless_normal([2, 8, 8, 3], seed=[5, 6]), tf.constant([3, 700])
    np.testing.assert_array_equal(copy([x, t]).numpy(), f32([x, t]).numpy())
    assert compute_dtypes(copy) == {"float32"}
