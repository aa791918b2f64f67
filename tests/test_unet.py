"""Lesson 06: the U-Net (ddpm_lessons.unet)."""
import numpy as np
import pytest
import keras

from ddpm_lessons.profiles import PROFILES
from ddpm_lessons.unet import build_unet, count_params, level_table, unet_config


def _forward(model, size, channels=3, batch=2):
    x = np.random.randn(batch, size, size, channels).astype("float32")
    t = np.linspace(0, 999, batch).astype("int32")
    return x, t, np.asarray(model([x, t]))


@pytest.mark.parametrize("name", ["tiny", "cpu"])
def test_profile_shapes(name):
    p = PROFILES[name]
    model = build_unet(p)
    x, _, y = _forward(model, p.image_size, p.channels)
    assert y.shape == x.shape


def test_gpu_profile_builds_at_64():
    p = PROFILES["gpu"]
    model = build_unet(p)
    assert model.output_shape == (None, 64, 64, 3) == (None, p.image_size, p.image_size, 3)
    assert count_params(model) > 10_000_000, "the gpu profile is the seed's scale"


@pytest.mark.parametrize("kwargs", [
    dict(channel_mults=(1, 2, 2, 2), attention_resolutions=(4,)),       # repeated widths still halve
    dict(channel_mults=(1, 1), attention_resolutions=(16, 8), num_res_blocks=2),  # attention at 2 levels
    dict(channel_mults=(1,), attention_resolutions=(), num_res_blocks=1, mid_attention=False),
    dict(channel_mults=(1, 2), num_heads=2, scale_shift=True, dropout=0.1),
])
def test_odd_configurations(kwargs):
    cfg = dict(image_size=16, channels=3, base_width=8, groups=4, num_res_blocks=1)
    cfg.update(kwargs)
    model = build_unet(cfg)
    x, _, y = _forward(model, 16)
    assert y.shape == x.shape
    mults = cfg["channel_mults"]
    down = [l for l in model.layers if l.name.endswith("_downsample")]
    assert len(down) == len(mults) - 1, "one downsample per level boundary, whatever the widths"
    rows = level_table(cfg)
    assert [r["resolution"] for r in rows[:-1]] == [16 // 2 ** i for i in range(len(mults))]


def test_fresh_unet_outputs_exactly_zero():
    model = build_unet(PROFILES["tiny"])
    _, _, y = _forward(model, 16, batch=3)
    assert np.all(y == 0.0), "design promise: zero-initialised out_conv => eps_hat = 0 at init"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Keras's own model.save
def test_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_unet(PROFILES["tiny"], dropout=0.1)
    for w in model.weights:  # leave init so the output is not trivially zero
        w.assign(w.numpy() + np.random.randn(*w.shape).astype("float32") * 0.02)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x, t, y = _forward(model, 16)
    np.testing.assert_array_equal(np.asarray(loaded([x, t])), y)
    assert count_params(loaded) == count_params(model)
    assert np.abs(y).max() > 0


def test_time_changes_output():
    keras.utils.set_random_seed(0)
    model = build_unet(PROFILES["tiny"])
    for w in model.weights:
        w.assign(w.numpy() + np.random.randn(*w.shape).astype("float32") * 0.02)
    x = np.random.randn(1, 16, 16, 3).astype("float32")
    y0 = np.asarray(model([x, np.array([1], "int32")]))
    y1 = np.asarray(model([x, np.array([800], "int32")]))
    assert np.abs(y0 - y1).max() > 1e-4


def test_the_time_input_is_a_real_number():
    """Continuous time must be possible (flow matching, EDM): the time input is float32. A whole timestep
    given as int or as float gives the same output to the bit (Keras casts the int); t = 10.5 gives an
    output of its own. Catches a time input that is int-only (10.5 would be refused or truncated to 10)."""
    keras.utils.set_random_seed(0)
    model = build_unet(PROFILES["tiny"])
    for w in model.weights:
        w.assign(w.numpy() + np.random.randn(*w.shape).astype("float32") * 0.02)
    assert model.inputs[1].dtype == "float32"
    x = np.random.randn(1, 16, 16, 3).astype("float32")
    out = lambda t, dtype: np.asarray(model([x, np.array([t], dtype)]))
    np.testing.assert_array_equal(out(10, "int32"), out(10.0, "float32"))
    half = out(10.5, "float32")
    assert np.abs(half - out(10, "float32")).max() > 1e-7 and np.abs(half - out(11, "float32")).max() > 1e-7


def test_config_validation():
    with pytest.raises(ValueError, match="halved"):
        unet_config(dict(image_size=20, channel_mults=(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="divisible"):
        unet_config(dict(base_width=12, groups=8))
    with pytest.raises(ValueError, match="unknown"):
        unet_config(PROFILES["tiny"], widht=3)
    assert unet_config(PROFILES["cpu"])["channel_mults"] == PROFILES["cpu"].channel_mults
