"""Lesson 05 — self-attention over the pixels of a feature map, by hand.

For x of shape (B, H, W, C), flatten the N = H*W positions into a sequence and let every
position look at every other one:

    h        = GroupNorm(x)                       reshaped to (B, N, C)
    q, k, v  = h W_q + b_q,  h W_k + b_k,  h W_v + b_v          each (B, N, heads, d), d = C / heads
    A        = softmax( q k^T / sqrt(d) )        over the keys:  (B, heads, N, N)
    o        = A v                                (B, N, heads, d) -> (B, N, C)
    out      = x + (o W_o + b_o)                  reshaped back to (B, H, W, C)

The residual adds the *un-normalised* input x. W_o starts at zero (Ho et al.), so a fresh
block is the identity. The N x N map A costs 2 x 2 N^2 C FLOPs (q k^T, then A v; any number of
heads) and N^2 numbers of memory per head: 16x more at 32x32 than at 16x16, which is why the U-Net
only attends at low resolutions (lesson 05 counts it in the traced graph).
``to_multi_head_attention`` copies the weights into ``keras.layers.MultiHeadAttention``,
which computes the same thing (lesson 05 checks it).
"""
from __future__ import annotations

import keras
from keras import layers, ops

from .blocks import GN_EPSILON, PACKAGE, GroupNorm


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelfAttention2D(layers.Layer):
    """x + proj(softmax(q k^T / sqrt(d)) v), q/k/v from GroupNorm(x); (B, H, W, C) -> same shape."""

    def __init__(self, num_heads: int = 1, groups: int = 8, zero_init: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.groups = int(groups)
        self.zero_init = bool(zero_init)
        self.norm = GroupNorm(self.groups, epsilon=GN_EPSILON, name="norm")
        self.channels = self.head_dim = None   # set in build, from the input's channels

    def build(self, x_shape):
        c = x_shape[-1]
        if c % self.num_heads or c % self.groups:
            raise ValueError(f"{self.name}: channels {c} must be divisible by num_heads "
                             f"{self.num_heads} and by groups {self.groups}")
        self.channels = c
        self.head_dim = c // self.num_heads
        self.query = layers.Dense(c, name="query")
        self.key = layers.Dense(c, name="key")
        self.value = layers.Dense(c, name="value")
        self.proj = layers.Dense(c, kernel_initializer="zeros" if self.zero_init else "glorot_uniform",
                                 name="proj")
        self.norm.build(x_shape)
        for dense in (self.query, self.key, self.value, self.proj):
            dense.build((None, None, c))
        self.built = True

    def _heads(self, dense, h):
        """(B, N, C) -> (B, N, heads, d)."""
        return ops.reshape(dense(h), (-1, ops.shape(h)[1], self.num_heads, self.head_dim))

    def attention_weights(self, x):
        """The attention map A = softmax(q k^T / sqrt(d)): (B, H, W, C) -> (B, heads, N, N)."""
        return self._attend(x)[1]

    def _attend(self, x):
        b, hgt, wid, c = ops.shape(x)
        h = ops.reshape(self.norm(x), (-1, hgt * wid, c))                       # (B, N, C)
        q, k, v = (self._heads(d, h) for d in (self.query, self.key, self.value))  # (B, N, heads, d)
        scores = ops.einsum("bnhd,bmhd->bhnm", q, k) / ops.sqrt(ops.cast(self.head_dim, q.dtype))
        weights = ops.softmax(scores, axis=-1)                                   # (B, heads, N, N)
        o = ops.einsum("bhnm,bmhd->bnhd", weights, v)                            # (B, N, heads, d)
        o = self.proj(ops.reshape(o, (-1, hgt * wid, c)))                        # (B, N, C)
        return ops.reshape(o, (-1, hgt, wid, c)), weights

    def call(self, x):
        return x + self._attend(x)[0]

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "groups": self.groups,
                "zero_init": self.zero_init}


def to_multi_head_attention(layer: SelfAttention2D) -> layers.MultiHeadAttention:
    """A ``keras.layers.MultiHeadAttention`` holding ``layer``'s q/k/v/proj weights.

    With ``h = GroupNorm(x)`` flattened to (B, N, C), ``x + mha(h, h)`` equals ``layer(x)``.
    Keras stores W_q as (C, heads, d) and W_o as (heads, d, C); ours are (C, C) Dense kernels.
    The weights go in through the layer's public sub-layers ``query_dense``, ``key_dense``,
    ``value_dense`` and ``output_dense`` (each an ``EinsumDense`` with ``kernel`` and ``bias``).
    """
    if not layer.built:
        raise ValueError("build or call the SelfAttention2D layer first")
    c, nh, d = layer.channels, layer.num_heads, layer.head_dim
    mha = layers.MultiHeadAttention(num_heads=nh, key_dim=d, value_dim=d, output_shape=c,
                                    name=f"{layer.name}_as_mha")
    mha.build((None, None, c), (None, None, c))
    for ours, theirs in ((layer.query, mha.query_dense), (layer.key, mha.key_dense),
                         (layer.value, mha.value_dense)):
        theirs.kernel.assign(ops.reshape(ours.kernel, (c, nh, d)))
        theirs.bias.assign(ops.reshape(ours.bias, (nh, d)))
    mha.output_dense.kernel.assign(ops.reshape(layer.proj.kernel, (nh, d, c)))
    mha.output_dense.bias.assign(layer.proj.bias)
    return mha
