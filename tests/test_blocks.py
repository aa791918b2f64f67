"""Lesson 04: timestep embedding, residual block, down/up sampling (ddpm_lessons.blocks)."""
import numpy as np
import pytest
import keras

from ddpm_lessons.blocks import (Downsample, ResidualBlock, SinusoidalEmbedding, TimeEmbedding,
                                 Upsample, timestep_embedding)


def test_timestep_embedding_values_and_shape():
    t = np.array([0, 1, 10, 999], dtype="int32")
    emb = np.asarray(timestep_embedding(t, 32))
    assert emb.shape == (4, 32)
    np.testing.assert_allclose(emb[0, :16], 0.0, atol=1e-7, err_msg="sin(0 * w) must be 0")
    np.testing.assert_allclose(emb[0, 16:], 1.0, atol=1e-7, err_msg="cos(0 * w) must be 1")
    # first frequency is 1: emb[t, 0] = sin(t); last frequency is 1/10000
    np.testing.assert_allclose(emb[:, 0], np.sin(t.astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(emb[:, 15], np.sin(t / 10000.0), atol=1e-5)
    assert np.asarray(timestep_embedding(t, 33)).shape == (4, 33), "odd dim pads one column"


def test_nearby_timesteps_have_similar_embeddings():
    emb = np.asarray(timestep_embedding(np.arange(1000), 64))
    d_near = np.linalg.norm(emb[500] - emb[501])
    d_far = np.linalg.norm(emb[500] - emb[900])
    assert d_near < 0.25 * d_far, f"t=500 vs 501: {d_near:.3f}, vs 900: {d_far:.3f}"
    norms = np.linalg.norm(emb, axis=1)
    np.testing.assert_allclose(norms, np.sqrt(32), rtol=1e-5, err_msg="sin^2 + cos^2 = 1 per pair")


def test_time_embedding_mlp_shape():
    layer = TimeEmbedding(16)
    out = layer(np.array([0, 5, 999], "int32"))
    assert tuple(out.shape) == (3, 64)
    assert len(layer.trainable_weights) == 4, "two Dense layers, kernel + bias each"


@pytest.mark.parametrize("c_in,c_out", [(16, 16), (16, 32)])
def test_residual_block_shapes(c_in, c_out):
    block = ResidualBlock(c_out, groups=4)
    y = block(np.random.randn(2, 8, 8, c_in).astype("float32"), np.random.randn(2, 64).astype("float32"))
    assert tuple(y.shape) == (2, 8, 8, c_out)
    assert (block.shortcut is None) == (c_in == c_out), "1x1 shortcut only when channels change"


@pytest.mark.parametrize("scale_shift", [False, True])
def test_fresh_residual_block_is_identity(scale_shift):
    block = ResidualBlock(16, groups=4, scale_shift=scale_shift)
    x = np.random.randn(2, 8, 8, 16).astype("float32")
    y = block(x, np.random.randn(2, 32).astype("float32"))
    np.testing.assert_array_equal(np.asarray(y), x, err_msg="zero-initialised conv_2 => out == x")


@pytest.mark.parametrize("scale_shift", [False, True])
def test_residual_block_output_depends_on_t(scale_shift):
    keras.utils.set_random_seed(1)
    block = ResidualBlock(16, groups=4, scale_shift=scale_shift)
    temb_layer = TimeEmbedding(8)
    x = np.random.randn(2, 8, 8, 16).astype("float32")
    block(x, temb_layer(np.array([0, 0])))
    block.conv_2.kernel.assign(np.random.randn(*block.conv_2.kernel.shape).astype("float32") * 0.1)
    y0 = np.asarray(block(x, temb_layer(np.array([10, 10]))))
    y1 = np.asarray(block(x, temb_layer(np.array([900, 900]))))
    assert np.abs(y0 - y1).max() > 1e-3, "changing t must change the block's output"


def test_group_norm_statistics_per_group():
    """The course's GroupNorm (blocks.GroupNorm, used by every block): zero mean and unit variance per
    (image, group); catches statistics taken per channel or over the batch."""
    from ddpm_lessons.blocks import GroupNorm
    groups, c = 4, 16
    x = (np.random.randn(3, 8, 8, c) * 5 + 3).astype("float32")
    x[..., :c // groups] *= 4                     # groups of unequal spread: a per-image norm would fail
    y = np.asarray(GroupNorm(groups, epsilon=1e-5)(x))
    g = y.reshape(3, 8 * 8, groups, c // groups)
    np.testing.assert_allclose(g.mean(axis=(1, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(g.var(axis=(1, 3)), 1.0, atol=1e-3)


def test_down_and_upsample_shapes():
    x = np.random.randn(2, 16, 16, 8).astype("float32")
    d = Downsample(8)(x)
    assert tuple(d.shape) == (2, 8, 8, 8)
    u = Upsample(8)(d)
    assert tuple(u.shape) == (2, 16, 16, 8)


def test_layers_serialise():
    for layer in (SinusoidalEmbedding(8), TimeEmbedding(8, 24), ResidualBlock(8, 2, 0.1, True),
                  Downsample(4), Upsample(4)):
        cfg = keras.saving.serialize_keras_object(layer)
        clone = keras.saving.deserialize_keras_object(cfg)
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


@pytest.mark.parametrize("shape,groups", [((4, 8, 8, 16), 4), ((2, 16, 16, 32), 8), ((3, 4, 4, 24), 8)])
def test_group_norm_equals_keras_group_normalization(shape, groups):
    """blocks.GroupNorm (per-channel sums) gives Keras's GroupNormalization's output and gradients."""
    import tensorflow as tf
    from ddpm_lessons.blocks import GroupNorm
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(3.0, 2.0, shape).astype("float32"))     # a mean well away from 0
    ref, ours = keras.layers.GroupNormalization(groups, epsilon=1e-5), GroupNorm(groups, epsilon=1e-5)
    ref.build(shape), ours.build(shape)
    ref.set_weights([rng.normal(1, 0.2, shape[-1]), rng.normal(0, 0.2, shape[-1])])
    ours.set_weights(ref.get_weights())
    grads = []
    for layer in (ref, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y))
        grads.append((y.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert [w.path.split("/")[-1] for w in ours.weights] == ["gamma", "beta"]    # checkpoints load as before
    seq = tf.constant(rng.normal(size=(2, 5, shape[-1])).astype("float32"))    # another rank: Keras's own code
    np.testing.assert_allclose(GroupNorm(groups)(seq).numpy(), keras.layers.GroupNormalization(groups)(seq).numpy(),
                               atol=1e-5)
