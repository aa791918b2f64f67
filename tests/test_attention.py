"""Lesson 05: hand-built self-attention over pixels (ddpm_lessons.attention)."""
import numpy as np
import pytest
import keras

from ddpm_lessons.attention import SelfAttention2D, to_multi_head_attention


def _random_layer(c=16, heads=1, groups=4, seed=0):
    keras.utils.set_random_seed(seed)
    layer = SelfAttention2D(num_heads=heads, groups=groups, zero_init=False)
    layer.build((None, 6, 6, c))
    for w in layer.weights:   # non-trivial biases and GroupNorm affine too
        w.assign(w.numpy() + np.random.randn(*w.shape).astype("float32") * 0.1)
    return layer


def test_fresh_attention_is_identity():
    x = np.random.randn(2, 4, 4, 8).astype("float32")
    np.testing.assert_array_equal(np.asarray(SelfAttention2D(groups=4)(x)), x)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_matches_keras_multi_head_attention(heads):
    layer = _random_layer(heads=heads)
    x = np.random.randn(2, 6, 6, 16).astype("float32")
    ours = np.asarray(layer(x))
    mha = to_multi_head_attention(layer)
    h = np.asarray(layer.norm(x)).reshape(2, 36, 16)
    out, scores = mha(h, h, return_attention_scores=True)
    theirs = x + np.asarray(out).reshape(2, 6, 6, 16)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg="output differs from MultiHeadAttention")
    np.testing.assert_allclose(np.asarray(layer.attention_weights(x)), np.asarray(scores), atol=1e-6)


def test_permutation_equivariance():
    layer = _random_layer()
    x = np.random.randn(1, 6, 6, 16).astype("float32")
    perm = np.random.default_rng(0).permutation(36)
    permute = lambda a: a.reshape(1, 36, 16)[:, perm].reshape(1, 6, 6, 16)  # noqa: E731
    np.testing.assert_allclose(np.asarray(layer(permute(x))), permute(np.asarray(layer(x))), atol=1e-5)


def test_attention_weights_are_distributions():
    a = np.asarray(_random_layer(heads=2).attention_weights(np.random.randn(2, 6, 6, 16).astype("float32")))
    assert a.shape == (2, 2, 36, 36)
    assert (a >= 0).all()
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


def test_serialises():
    """Catches: a get_config that drops an argument (the clone would come back with the default heads or
    groups and compute something else with the same weights)."""
    layer = SelfAttention2D(num_heads=2, groups=4, zero_init=False, name="attn")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert (clone.num_heads, clone.groups, clone.zero_init) == (2, 4, False)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 16)).astype("float32")
    layer(x), clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(layer(x)), atol=1e-6)


def test_bad_heads_raises():
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention2D(num_heads=3, groups=4)(np.zeros((1, 2, 2, 8), "float32"))


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_map_flops_grow_with_n_squared(heads):
    """FLOPs counted in the traced graph (bench.graph_flops): the two map matmuls (q k^T, A v) are
    exactly 2 x 2 N^2 C for any number of heads, the four projections 4 x 2 N C^2."""
    import tensorflow as tf
    from ddpm_lessons.bench import graph_flops
    c = 32
    for r in (4, 8, 16):
        layer = SelfAttention2D(num_heads=heads, groups=4)
        graph = tf.function(lambda x: layer(x)).get_concrete_function(
            tf.TensorSpec([1, r, r, c], tf.float32)).graph
        _, by_op = graph_flops(graph)
        n = r * r
        matmuls = sum(by_op.get(op, 0) for op in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"))
        assert matmuls == 2 * 2 * n * n * c, (r, by_op)
        assert by_op.get("MatMul", 0) == 4 * 2 * n * c * c, (r, by_op)
