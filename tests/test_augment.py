"""Non-leaking augmentation (augment.py): each transform exact or invertible as stated, the labels
say which transform was applied, p = 0 is the identity, and sampling gives the network a = 0."""
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.augment import (AUGMENT_DIM, augment, augment_labels, apply_augmentations,
                                  draw_augmentations)


def params(n, k=0, dx=0, dy=0, z=0.0):
    full = lambda v, dtype: tf.fill([n], tf.cast(v, dtype))
    return {"k": full(k, tf.int32), "dx": full(dx, tf.int32), "dy": full(dy, tf.int32),
            "log2_scale": full(z, tf.float32)}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_quarter_turns_equal_numpy_rot90_and_invert(images, k):
    turned = apply_augmentations(images, params(3, k=k)).numpy()
    np.testing.assert_array_equal(turned, np.rot90(images, k, axes=(1, 2)))
    back = apply_augmentations(turned, params(3, k=(4 - k) % 4)).numpy()
    np.testing.assert_array_equal(back, images)


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, -1), (-2, 2)])
def test_shift_is_a_reflected_roll_and_inverts_inside_the_border(images, dx, dy):
    shifted = apply_augmentations(images, params(3, dx=dx, dy=dy)).numpy()
    padded = np.pad(images, ((0, 0), (16, 16), (16, 16), (0, 0)), mode="symmetric")
    expected = np.roll(padded, (dy, dx), axis=(1, 2))[:, 16:32, 16:32]
    np.testing.assert_array_equal(shifted, expected)
    back = apply_augmentations(shifted, params(3, dx=-dx, dy=-dy)).numpy()
    m = 2                              # the pixels the shift brought in from the border are reflections
    np.testing.assert_array_equal(back[:, m:-m, m:-m], images[:, m:-m, m:-m])


def test_scaling_inverts_approximately_on_a_smooth_picture():
    y, x = np.mgrid[0:32, 0:32] / 31.0
    smooth = np.stack([np.sin(2 * x + y), np.cos(3 * y), x * y], -1)[None].astype(np.float32)
    up = apply_augmentations(smooth, params(1, z=0.4))
    back = apply_augmentations(up, params(1, z=-0.4)).numpy()
    inner = slice(10, 22)              # scaling up pushes the border out; the centre comes back
    err = np.abs(back - smooth)[:, inner, inner].max()
    assert err < 0.02, err
    assert np.abs(up.numpy() - smooth).max() > 0.1          # and it did change the picture


def test_labels_say_which_transform_was_applied():
    p = draw_augmentations(4000, 0.5, tf.constant([1, 2]), 32)
    a = augment_labels(p, 32).numpy()
    assert a.shape == (4000, AUGMENT_DIM)
    k = np.round(np.arctan2(a[:, 0], a[:, 1] + 1) / (np.pi / 2)).astype(int) % 4
    np.testing.assert_array_equal(k, p["k"].numpy())
    np.testing.assert_array_equal(np.round(a[:, 2] * 32).astype(int), p["dx"].numpy())
    np.testing.assert_array_equal(np.round(a[:, 3] * 32).astype(int), p["dy"].numpy())
    np.testing.assert_allclose(a[:, 4], p["log2_scale"].numpy())
    identity = (p["k"].numpy() == 0) & (p["dx"].numpy() == 0) & (p["dy"].numpy() == 0) & (p["log2_scale"].numpy() == 0)
    np.testing.assert_array_equal(np.all(a == 0, axis=1), identity)
    # each transform with probability p: quarter turns in {1, 2, 3}, shifts within size // 8
    applied = p["k"].numpy() > 0
    assert abs(applied.mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    assert set(np.unique(p["k"].numpy())) == {0, 1, 2, 3}
    assert np.abs(p["dx"].numpy()).max() == 4 and np.abs(p["log2_scale"].numpy()).max() <= 0.5


def test_p_zero_is_the_identity_with_zero_labels(images):
    out, a = augment(images, 0.0, tf.constant([3, 4]))
    np.testing.assert_array_equal(out.numpy(), images)
    assert a.shape == (3, AUGMENT_DIM) and not np.any(a.numpy())


def test_a_wrong_probability_is_refused():
    with pytest.raises(ValueError, match="must lie in"):
        draw_augmentations(4, 1.5, tf.constant([0, 0]), 16)
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.training import TrainConfig
    with pytest.raises(ValueError, match="augment_p"):
        get_profile("tiny").replace(augment_p=-0.1)
    with pytest.raises(ValueError, match="augment_p"):
        TrainConfig(augment_p=1.0)
    with pytest.raises(ValueError, match="augment_dim"):
        get_profile("tiny").replace(augment_dim=3)


def test_sampling_gives_the_network_zero_augmentation_labels():
    """The augmentation input's weights have no effect on sampling: it is fed zeros."""
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.sampling import model_eps_fn
    from ddpm_lessons.unet import augment_dim, build_unet
    model = build_unet(get_profile("tiny"), augment_dim=AUGMENT_DIM)
    assert augment_dim(model) == AUGMENT_DIM and [i.name for i in model.inputs][-1] == "augment"
    rng = np.random.default_rng(1)
    for w in model.trainable_weights:      # fresh zero-initialised convs would hide the embedding
        w.assign(w.numpy() + rng.normal(0, 0.05, w.shape))
    x = tf.random.stateless_normal([2, 16, 16, 3], [0, 1])
    t = tf.constant([10, 500])
    fn = model_eps_fn(model)
    emb = model.get_layer("augment_embedding").kernel
    emb.assign(np.random.default_rng(2).normal(0, 1.0, emb.shape))
    before = fn(x, t).numpy()
    emb.assign(np.zeros(emb.shape))
    np.testing.assert_allclose(fn(x, t).numpy(), before, atol=1e-6)
    # but the network does read the input when it is not zero
    a = tf.ones([2, AUGMENT_DIM])
    emb.assign(np.random.default_rng(2).normal(0, 1.0, emb.shape))
    assert np.abs(model([x, t, a]).numpy() - before).max() > 1e-3


def test_trainer_feeds_the_labels_of_the_transform_it_applied():
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import TrainConfig, Trainer
    from ddpm_lessons.unet import build_unet
    x0 = tf.random.stateless_uniform([8, 16, 16, 3], [5, 6], -1, 1)
    seed = tf.constant([7, 8], tf.int64)
    schedule = NoiseSchedule.from_kind("cosine", 100)
    told = Trainer(build_unet(get_profile("tiny"), augment_dim=AUGMENT_DIM), schedule, TrainConfig(augment_p=0.5))
    out, a = told._augmented(x0, lambda: seed, 8, 0, 8)
    p = draw_augmentations(8, 0.5, seed, 16)
    np.testing.assert_array_equal(out.numpy(), apply_augmentations(x0, p).numpy())
    np.testing.assert_array_equal(a.numpy(), augment_labels(p, 16).numpy())
    # a replica's slice takes its own images' transforms out of the global draw
    _, a_part = told._augmented(x0[4:], lambda: seed, 8, 4, 4)
    np.testing.assert_array_equal(a_part.numpy(), a.numpy()[4:])
    # without the input the network is not told (the leak of lesson 10); with p = 0 nothing happens
    blind = Trainer(build_unet(get_profile("tiny")), schedule, TrainConfig(augment_p=0.5))
    assert blind._augmented(x0, lambda: seed, 8, 0, 8)[1] is None
    plain = Trainer(build_unet(get_profile("tiny")), schedule, TrainConfig())
    same, none = plain._augmented(x0, lambda: pytest.fail("p = 0 must draw nothing"), 8, 0, 8)
    assert same is x0 and none is None


def test_shipped_weights_load_with_their_shapes_and_refuse_another_network(tmp_path, monkeypatch):
    """INIT=general: a stored float16 network loads into the same U-Net as float32; another image size,
    target or a missing augmentation input is refused by name."""
    import json
    from ddpm_lessons import training
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.unet import build_unet
    profile = get_profile("tiny").replace(augment_dim=AUGMENT_DIM, prediction="v")
    source = build_unet(profile)
    rng = np.random.default_rng(0)
    for w in source.weights:
        w.assign(rng.normal(0, 0.1, w.shape))
    folder = tmp_path / "general_tiny"
    folder.mkdir()
    training.save_compact_weights(source, folder / training.REFERENCE_WEIGHTS)
    (folder / "settings.json").write_text(json.dumps({"profile": {"image_size": 16, "prediction": "v",
                                                                  "augment_dim": AUGMENT_DIM}}))
    monkeypatch.setitem(training.SHIPPED, "general", folder)
    model = training.load_shipped_weights(build_unet(profile), "general", prediction="v")
    for a, b in zip(model.weights, source.weights):
        assert a.dtype == "float32" and a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2 ** -10, atol=1e-7)    # float16 rounding
    with pytest.raises(ValueError, match="for 16x16 pictures, this U-Net for 32x32"):
        training.load_shipped_weights(build_unet(profile, image_size=32), "general")
    with pytest.raises(ValueError, match="predicts 'v'"):
        training.load_shipped_weights(build_unet(profile), "general", prediction="eps")
    with pytest.raises(ValueError, match="augment_dim=5"):
        training.load_shipped_weights(build_unet(profile, augment_dim=0), "general")
    with pytest.raises(ValueError, match="INIT='other' is not known"):
        training.load_shipped_weights(build_unet(profile), "other")


def test_the_shipped_general_prior_loads_into_the_cpu_unet_with_the_augment_input():
    """What INIT=general loads: the cpu profile's U-Net with augment_dim=5, predicting v, every weight
    finite and none left at its initial value (an untrained table would stay at zero or at random)."""
    from ddpm_lessons import training
    from ddpm_lessons.profiles import get_profile
    from ddpm_lessons.unet import build_unet
    saved = training.shipped_settings("general")
    assert saved["augment_dim"] == AUGMENT_DIM and saved["image_size"] == 32
    fresh = build_unet(get_profile("cpu"), augment_dim=AUGMENT_DIM)
    before = [w.numpy().copy() for w in fresh.weights]
    model = training.load_shipped_weights(fresh, "general", prediction=saved["prediction"])
    for w, b in zip(model.weights, before):
        assert np.all(np.isfinite(w.numpy())), w.path
        assert not np.array_equal(w.numpy(), b) or w.path.endswith(("gamma", "beta")), f"{w.path} was not trained"
    assert np.abs(model.get_layer("augment_embedding").kernel.numpy()).max() > 1e-3   # it learned the transforms
