"""Lesson 04 — the building blocks of the U-Net.

    timestep embedding   emb(t)_i = sin(t w_i),  emb(t)_{i+d/2} = cos(t w_i),
                         w_i = 10000^(-i / (d/2 - 1)),  i = 0 .. d/2 - 1     (Ho et al. get_timestep_embedding)
    time MLP             temb = Dense_2(swish(Dense_1(emb(t))))              both Dense: 4 * base_width units
    residual block       h = conv3x3(swish(GN(x)))
                         h = h + Dense(swish(temb))                         (per-channel shift)
                           or GN(h) * (1 + scale) + shift                    (scale-shift, Nichol & Dhariwal)
                         h = conv3x3_zero(dropout(swish(GN(h))))
                         out = shortcut(x) + h                              shortcut: 1x1 conv if channels change
    downsample           conv3x3, stride 2                                   (H, W) -> (H/2, W/2)
    upsample             nearest x2, then conv3x3                            (H, W) -> (2H, 2W)

The last conv of a residual block starts at zero, so a fresh block with equal in/out
channels is the identity: out = x. Images are channels-last, (B, H, W, C); t is (B,) int.
Every layer is registered for saving, so a model built from them loads back with
``keras.models.load_model``.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

PACKAGE = "ddpm_lessons"
GN_EPSILON = 1e-5


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017; Ho et al. 2020).

    t: (B,) int or float; returns (B, dim) float32 = [sin(t w_0..), cos(t w_0..)] with
    w_i = max_period^(-i / (dim/2 - 1)). Odd ``dim`` gets one zero column at the end.
    """
    if dim < 4:
        raise ValueError(f"timestep embedding dim must be >= 4, got {dim}")
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.arange(half, dtype="float32") / (half - 1))
    args = ops.cast(ops.reshape(t, (-1, 1)), "float32") * ops.reshape(freqs, (1, -1))  # (B, half)
    emb = ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)                      # (B, 2*half)
    if dim % 2:
        emb = ops.pad(emb, [[0, 0], [0, 1]])
    return emb


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupNorm(layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` (the same weights, config and result, to float32 round-off),
    computed the cheaper way for channels-last (B, H, W, C) inputs: per-channel sums first.

        s1_c = mean_hw(x - m_g),  s2_c = mean_hw((x - m_g)^2)          (B, C), one pass each
        mu_g = mean over the group's channels of s1,  var_g = mean of s2 - mu_g^2      (B, G)
        y = x a + b,  a = gamma / sqrt(var_g + eps),  b = beta - (mu_g + m_g) a      (B, 1, 1, C)

    m_g (one pixel of each group, no gradient) only shifts the data to keep E[x^2] - E[x]^2 from
    cancelling. Keras's layer reshapes to (B, H, W, G, C/G) and takes two passes for the moments;
    this is 1.2-1.3x faster forward + backward at the U-Net's larger shapes on a 2-core CPU
    (notebooks/studies/speed/groupnorm_study.py). Other input ranks use Keras's own code.
    """

    def call(self, inputs):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs)
        c = inputs.shape[-1]
        k = c // self.groups
        x = ops.cast(inputs, "float32")             # as Keras: the statistics in float32
        shift = ops.repeat(ops.stop_gradient(x[:, :1, :1, ::k]), k, axis=3)          # (B, 1, 1, C)
        xs = x - shift
        s1 = ops.mean(xs, axis=(1, 2))                                                  # (B, C)
        s2 = ops.mean(ops.square(xs), axis=(1, 2))
        mu = ops.mean(ops.reshape(s1, (-1, self.groups, k)), axis=-1)                  # (B, G)
        var = ops.maximum(ops.mean(ops.reshape(s2, (-1, self.groups, k)), axis=-1) - ops.square(mu), 0.0)
        a = ops.repeat(ops.rsqrt(var + self.epsilon), k, axis=1)                       # (B, C)
        if self.scale:
            a = a * ops.cast(self.gamma, "float32")
        b = -(ops.repeat(mu, k, axis=1) + shift[:, 0, 0, :]) * a
        if self.center:
            b = b + ops.cast(self.beta, "float32")
        y = x * a[:, None, None, :] + b[:, None, None, :]
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SinusoidalEmbedding(layers.Layer):
    """Layer form of ``timestep_embedding``: (B,) timesteps -> (B, dim). No weights."""

    def __init__(self, dim: int, max_period: float = 10000.0, **kwargs):
        kwargs.setdefault("autocast", False)     # t stays float32 under a bfloat16 policy (999 -> 1000 in bf16)
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.max_period = float(max_period)

    def call(self, t):
        return timestep_embedding(t, self.dim, self.max_period)

    def compute_output_shape(self, t_shape):
        return (t_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "max_period": self.max_period}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TimeEmbedding(layers.Layer):
    """t -> temb: sinusoidal(dim) -> Dense(hidden) -> swish -> Dense(hidden).

    (B,) float32 (or int) -> (B, hidden). Ho et al. use dim = base width and hidden = 4 * base width.
    Its input is not cast to a mixed-precision policy's compute dtype: bfloat16 keeps 8 significant
    bits, so t = 999 would become 1000 (the two Dense layers still compute in the policy's dtype).
    """

    def __init__(self, dim: int, hidden: int | None = None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.hidden = int(hidden or 4 * dim)
        self.sinusoidal = SinusoidalEmbedding(self.dim, name="sinusoidal")
        self.dense_1 = layers.Dense(self.hidden, name="dense_1")
        self.dense_2 = layers.Dense(self.hidden, name="dense_2")

    def build(self, t_shape):
        self.dense_1.build((None, self.dim))
        self.dense_2.build((None, self.hidden))
        self.built = True

    def call(self, t):
        emb = self.sinusoidal(t)                                 # (B, dim)
        return self.dense_2(ops.silu(self.dense_1(emb)))         # (B, hidden)

    def compute_output_shape(self, t_shape):
        return (t_shape[0], self.hidden)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": self.hidden}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LabelEmbedding(layers.Layer):
    """labels -> one vector per image: the sum over label kinds k of a learned row E_k[y_k].

    (B, K) int -> (B, dim), with K = len(num_classes). Table k has num_classes[k] + 1 rows: row
    num_classes[k] is the "no label" token (``null_labels``), so one network can be asked for either
    kind, both or neither (classifier-free guidance, Ho & Salimans 2022). The sum is added to the
    time embedding, so every residual block sees it.
    """

    def __init__(self, num_classes, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = tuple(int(n) for n in num_classes)
        self.dim = int(dim)
        for k, n in enumerate(self.num_classes):   # one attribute each: a TF checkpoint saves attributes, not lists
            setattr(self, f"table_{k}", layers.Embedding(n + 1, self.dim, name=f"table_{k}"))

    @property
    def tables(self) -> list:
        """The K embedding tables, table k of shape (num_classes[k] + 1, dim)."""
        return [getattr(self, f"table_{k}") for k in range(len(self.num_classes))]

    def build(self, labels_shape):
        for table in self.tables:
            table.build((None,))
        self.built = True

    def call(self, labels):
        labels = ops.cast(labels, "int32")
        return sum(table(labels[:, k]) for k, table in enumerate(self.tables))   # (B, dim)

    def compute_output_shape(self, labels_shape):
        return (labels_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "num_classes": list(self.num_classes), "dim": self.dim}


def null_labels(num_classes, batch: int):
    """(batch, K) int32 "no label" tokens: column k holds num_classes[k]."""
    return np.tile(np.asarray(num_classes, np.int32), (int(batch), 1))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBlock(layers.Layer):
    """GN -> swish -> conv3x3 -> (+ time) -> GN -> swish -> dropout -> conv3x3(zero init), plus shortcut.

    call(x, temb): x (B, H, W, C_in), temb (B, D) -> (B, H, W, out_channels).
    Time enters as a per-channel shift h + Dense(swish(temb)) (Ho et al.), or with
    ``scale_shift=True`` as GN(h) * (1 + scale) + shift (Nichol & Dhariwal's "scale-shift norm").
    The second conv is zero-initialised, so a fresh block returns shortcut(x): exactly x
    when C_in == out_channels (no 1x1 shortcut then).
    """

    def __init__(self, out_channels: int, groups: int = 8, dropout: float = 0.0,
                 scale_shift: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)
        self.groups = int(groups)
        self.dropout_rate = float(dropout)
        self.scale_shift = bool(scale_shift)
        if self.out_channels % self.groups:
            raise ValueError(f"{self.name}: out_channels {self.out_channels} is not divisible "
                             f"by groups {self.groups} (GroupNorm needs whole groups)")
        self.norm_1 = GroupNorm(self.groups, epsilon=GN_EPSILON, name="norm_1")
        self.conv_1 = layers.Conv2D(self.out_channels, 3, padding="same", name="conv_1")
        self.time_proj = layers.Dense(self.out_channels * (2 if self.scale_shift else 1),
                                      name="time_proj")
        self.norm_2 = GroupNorm(self.groups, epsilon=GN_EPSILON, name="norm_2")
        self.dropout = layers.Dropout(self.dropout_rate, name="dropout")
        self.conv_2 = layers.Conv2D(self.out_channels, 3, padding="same",
                                    kernel_initializer="zeros", name="conv_2")
        self.shortcut = None

    def build(self, x_shape, temb_shape):
        in_channels = x_shape[-1]
        if in_channels % self.groups:
            raise ValueError(f"{self.name}: input channels {in_channels} not divisible by "
                             f"groups {self.groups}")
        self.norm_1.build(x_shape)
        self.conv_1.build(x_shape)
        self.time_proj.build(temb_shape)
        h_shape = tuple(x_shape[:-1]) + (self.out_channels,)
        self.norm_2.build(h_shape)
        self.conv_2.build(h_shape)
        if in_channels != self.out_channels:
            self.shortcut = layers.Conv2D(self.out_channels, 1, name="shortcut")
            self.shortcut.build(x_shape)
        self.built = True

    def call(self, x, temb, training=None):
        h = self.conv_1(ops.silu(self.norm_1(x)))                           # (B, H, W, C_out)
        t = self.time_proj(ops.silu(temb))[:, None, None, :]                # (B, 1, 1, C_out or 2 C_out)
        if self.scale_shift:
            scale, shift = ops.split(t, 2, axis=-1)
            h = self.norm_2(h) * (1.0 + scale) + shift
        else:
            h = self.norm_2(h + t)
        h = self.conv_2(self.dropout(ops.silu(h), training=training))
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h

    def compute_output_shape(self, x_shape, temb_shape):
        return tuple(x_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels, "groups": self.groups,
                "dropout": self.dropout_rate, "scale_shift": self.scale_shift}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Downsample(layers.Layer):
    """(B, H, W, C) -> (B, H/2, W/2, C) with a learned 3x3 conv of stride 2 (Ho et al.)."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.conv = layers.Conv2D(self.channels, 3, strides=2, padding="same", name="conv")

    def build(self, x_shape):
        self.conv.build(x_shape)
        self.built = True

    def call(self, x):
        return self.conv(x)

    def compute_output_shape(self, x_shape):
        half = lambda n: None if n is None else (n + 1) // 2  # noqa: E731
        return (x_shape[0], half(x_shape[1]), half(x_shape[2]), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Upsample(layers.Layer):
    """(B, H, W, C) -> (B, 2H, 2W, C): nearest-neighbour x2, then a 3x3 conv (Ho et al.)."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.resize = layers.UpSampling2D(2, interpolation="nearest", name="nearest")
        self.conv = layers.Conv2D(self.channels, 3, padding="same", name="conv")

    def build(self, x_shape):
        b, h, w, c = x_shape
        self.conv.build((b, None if h is None else 2 * h, None if w is None else 2 * w, c))
        self.built = True

    def call(self, x):
        return self.conv(self.resize(x))

    def compute_output_shape(self, x_shape):
        dbl = lambda n: None if n is None else 2 * n  # noqa: E731
        return (x_shape[0], dbl(x_shape[1]), dbl(x_shape[2]), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
