"""Lesson 06 — the U-Net that predicts the noise: eps_theta(x_t, t).

Layout (Ho et al. 2020, ``diffusion_tf/models/unet.py``), with L = len(channel_mults) levels,
level i at resolution image_size / 2^i with base_width * channel_mults[i] channels:

    temb = TimeEmbedding(t)                                     (B, 4 * base_width)
    h = conv3x3(x_t)                                            skips = [h]
    down, level i:  num_res_blocks x [ResidualBlock (+ attention)]   push every output to skips
                    then Downsample (not after the last level)      push its output too
    middle:         ResidualBlock, attention, ResidualBlock
    up, level i (L-1 .. 0):
                    (num_res_blocks + 1) x [concat(h, skips.pop()) -> ResidualBlock (+ attention)]
                    then Upsample (not after level 0)
    eps = conv3x3_zero(swish(GroupNorm(h)))                     (B, H, W, C)

Downsampling happens once per level boundary, decided by the level index only, so repeated
multipliers such as (1, 2, 2, 2) still halve the resolution at every level. The final conv is
zero-initialised (as in Ho et al.'s code): **a fresh U-Net predicts eps = 0 exactly**, so the
first training loss is E[eps^2] = 1.

Inputs: x_t (B, H, W, C) float32 and t (B,) float32 (Keras casts int timesteps: a DDPM network is trained
on whole timesteps, but its time input is a real number, as continuous-time objectives need). Output:
(B, H, W, C) float32.
Call it as ``model([x_t, t])`` with both tensors or both NumPy arrays (Keras refuses a mix).
"""
from __future__ import annotations

import contextlib
import dataclasses

import keras
import tensorflow as tf
from keras import layers, ops

from .attention import SelfAttention2D
from .blocks import GN_EPSILON, Downsample, GroupNorm, LabelEmbedding, ResidualBlock, TimeEmbedding, Upsample

UNET_KEYS = ("image_size", "channels", "base_width", "channel_mults", "num_res_blocks",
             "attention_resolutions", "dropout", "groups", "num_classes", "augment_dim")
DEFAULTS = dict(image_size=32, channels=3, base_width=32, channel_mults=(1, 2, 2),
                num_res_blocks=1, attention_resolutions=(8,), dropout=0.0, groups=8, num_classes=None,
                augment_dim=0)


def unet_config(profile_or_kwargs=None, **overrides) -> dict:
    """The U-Net knobs as a plain dict, from a Profile, a dict, or None (-> ``get_profile()``).

    Keys: image_size, channels, base_width, channel_mults, num_res_blocks,
    attention_resolutions, dropout, groups, num_classes, augment_dim (+ num_heads, mid_attention, scale_shift).
    Extra keys in a dict or profile (batch size, ...) are ignored; ``overrides`` win.
    """
    if profile_or_kwargs is None:
        from .profiles import get_profile
        profile_or_kwargs = get_profile()
    src = (dataclasses.asdict(profile_or_kwargs) if dataclasses.is_dataclass(profile_or_kwargs)
           else dict(profile_or_kwargs))
    cfg = {**DEFAULTS, "num_heads": 1, "mid_attention": True, "scale_shift": False}
    cfg.update({k: v for k, v in src.items() if k in cfg})
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown U-Net option(s) {sorted(unknown)}; valid: {sorted(cfg)}")
    cfg.update(overrides)
    cfg["channel_mults"] = tuple(int(m) for m in cfg["channel_mults"])
    cfg["attention_resolutions"] = tuple(int(r) for r in cfg["attention_resolutions"])
    if cfg["num_classes"] is not None:
        cfg["num_classes"] = tuple(int(n) for n in cfg["num_classes"]) or None
    _validate(cfg)
    return cfg


def _validate(cfg):
    from .augment import AUGMENT_DIM
    if cfg["augment_dim"] not in (0, AUGMENT_DIM):
        raise ValueError(f"augment_dim must be 0 (no augmentation input) or {AUGMENT_DIM} (augment.AUGMENT_DIM), "
                         f"got {cfg['augment_dim']}")
    if cfg["num_classes"] is not None and min(cfg["num_classes"]) < 1:
        raise ValueError(f"num_classes must hold one positive class count per label kind, got {cfg['num_classes']}")
    n_down = len(cfg["channel_mults"]) - 1
    if not cfg["channel_mults"] or min(cfg["channel_mults"]) < 1:
        raise ValueError(f"channel_mults must be positive integers, got {cfg['channel_mults']}")
    if cfg["image_size"] % (2 ** n_down):
        raise ValueError(f"image_size {cfg['image_size']} cannot be halved {n_down} times "
                         f"(one per extra level of channel_mults={cfg['channel_mults']})")
    if cfg["num_res_blocks"] < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {cfg['num_res_blocks']}")
    for m in cfg["channel_mults"]:
        width = cfg["base_width"] * m
        if width % cfg["groups"] or width % cfg["num_heads"]:
            raise ValueError(f"level width {width} (= {cfg['base_width']} x {m}) must be divisible "
                             f"by groups={cfg['groups']} and num_heads={cfg['num_heads']}")


def level_table(profile_or_kwargs=None, **overrides) -> list[dict]:
    """One row per level: level, resolution, channels, res_blocks (down/up), attention.

    Pure arithmetic, no TensorFlow: what ``build_unet`` will build.
    """
    cfg = unet_config(profile_or_kwargs, **overrides)
    rows = []
    for i, m in enumerate(cfg["channel_mults"]):
        res = cfg["image_size"] // 2 ** i
        rows.append(dict(level=i, resolution=res, channels=cfg["base_width"] * m,
                         res_blocks=f"{cfg['num_res_blocks']} down / {cfg['num_res_blocks'] + 1} up",
                         attention=res in cfg["attention_resolutions"]))
    last = rows[-1]
    rows.append(dict(level="middle", resolution=last["resolution"], channels=last["channels"],
                     res_blocks="2", attention=cfg["mid_attention"]))
    return rows


POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def build_unet(profile_or_kwargs=None, name: str = "unet", precision: str = "float32", **overrides) -> keras.Model:
    """A ``keras.Model`` mapping ``[x_t (B, H, W, C), t (B,)]`` to predicted noise (B, H, W, C);
    with ``num_classes=(n_1, ..., n_K)`` (K label kinds) it also takes ``labels (B, K)`` int32,
    embedded by ``blocks.LabelEmbedding`` (row n_k of kind k = "no label") and added to the time
    embedding: ``[x_t, t, labels]``. Without ``num_classes`` the network is exactly the unconditional one.
    With ``augment_dim=5`` (lesson 10) it also takes the augmentation labels a (B, 5) float32 last,
    mapped by a bias-free Dense to the time embedding's width and added to it (EDM's ``map_augment``):
    a = 0 (no transform; what sampling passes, ``network_inputs``) adds nothing.

    ``profile_or_kwargs``: a Profile, a dict of U-Net knobs, or None for ``get_profile()``;
    keyword ``overrides`` change single knobs (``build_unet(profile, base_width=64)``).
    ``precision``: what the layers compute in: "float32" (the default: sampling and evaluation),
    or, for *training*, "bfloat16" / "float16" (Keras's "mixed_bfloat16" / "mixed_float16"
    policies: weights stay float32, the output layer computes in float32). The profile's
    ``precision`` knob is resolved by ``profiles.resolve_precision`` and passed here by the trainers.
    """
    cfg = unet_config(profile_or_kwargs, **overrides)
    if precision not in POLICIES:
        raise ValueError(f"precision = {precision!r} must be one of {tuple(POLICIES)}")
    with dtype_policy(POLICIES[precision]):
        return _build(cfg, name)


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Keras's global dtype policy set to ``policy`` inside the ``with`` block, and put back after:
    layers built inside compute in it (sub-layers too, which a layer's own ``dtype`` does not reach)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (its weights too) whose every layer computes in float32.

    For sampling from a network trained under a mixed policy: its first sampling steps multiply
    the network's error (x0_hat = (x_t - sigma eps_hat) / alpha), so bfloat16's 8-bit mantissa is
    not enough there. Weights are float32 under every policy, so nothing is lost by the copy."""
    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)
    with dtype_policy("float32"):
        copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _build(cfg, name):
    size, width, mults = cfg["image_size"], cfg["base_width"], cfg["channel_mults"]
    nrb, groups = cfg["num_res_blocks"], cfg["groups"]

    def res_block(c, label):
        return ResidualBlock(c, groups=groups, dropout=cfg["dropout"],
                             scale_shift=cfg["scale_shift"], name=label)

    def attention(label):
        return SelfAttention2D(num_heads=cfg["num_heads"], groups=groups, name=label)

    x_in = keras.Input((size, size, cfg["channels"]), name="x_t")
    t_in = keras.Input((), dtype="float32", name="t")
    inputs = [x_in, t_in]
    temb = TimeEmbedding(width, 4 * width, name="time_embedding")(t_in)
    if cfg["num_classes"]:                      # conditional: labels (B, K), K label kinds
        y_in = keras.Input((len(cfg["num_classes"]),), dtype="int32", name="labels")
        inputs.append(y_in)
        temb = layers.Add(name="time_and_labels")(
            [temb, LabelEmbedding(cfg["num_classes"], 4 * width, name="label_embedding")(y_in)])

    if cfg["augment_dim"]:                      # non-leaking augmentation: which transform was applied
        a_in = keras.Input((cfg["augment_dim"],), dtype="float32", name="augment")
        inputs.append(a_in)
        temb = layers.Add(name="time_and_augment")(
            [temb, layers.Dense(4 * width, use_bias=False, name="augment_embedding")(a_in)])

    h = layers.Conv2D(width, 3, padding="same", name="conv_in")(x_in)
    skips = [h]
    for i, m in enumerate(mults):                                   # down
        res = size // 2 ** i
        for j in range(nrb):
            h = res_block(width * m, f"down{i}_res{j}")(h, temb)
            if res in cfg["attention_resolutions"]:
                h = attention(f"down{i}_attn{j}")(h)
            skips.append(h)
        if i < len(mults) - 1:
            h = Downsample(width * m, name=f"down{i}_downsample")(h)
            skips.append(h)

    h = res_block(h.shape[-1], "mid_res0")(h, temb)                  # middle
    if cfg["mid_attention"]:
        h = attention("mid_attn")(h)
    h = res_block(h.shape[-1], "mid_res1")(h, temb)

    for i in reversed(range(len(mults))):                            # up
        res = size // 2 ** i
        for j in range(nrb + 1):
            h = layers.Concatenate(name=f"up{i}_concat{j}")([h, skips.pop()])
            h = res_block(width * mults[i], f"up{i}_res{j}")(h, temb)
            if res in cfg["attention_resolutions"]:
                h = attention(f"up{i}_attn{j}")(h)
        if i > 0:
            h = Upsample(width * mults[i], name=f"up{i}_upsample")(h)
    assert not skips, "every skip connection must be used exactly once"

    h = GroupNorm(groups, epsilon=GN_EPSILON, name="out_norm")(h)
    h = layers.Activation("silu", name="out_swish")(h)
    eps = layers.Conv2D(cfg["channels"], 3, padding="same", kernel_initializer="zeros",
                        dtype="float32", name="out_conv")(h)
    return keras.Model(inputs, eps, name=name)


def label_classes(model) -> tuple | None:
    """The class counts per label kind of a conditional U-Net (``build_unet(num_classes=...)``), else None."""
    layers_ = [layer for layer in model.layers if layer.name == "label_embedding"]
    return layers_[0].num_classes if layers_ else None


def augment_dim(model) -> int:
    """The width of a U-Net's augmentation-label input (``build_unet(augment_dim=5)``), else 0."""
    layers_ = [layer for layer in model.layers if layer.name == "augment_embedding"]
    return int(layers_[0].kernel.shape[0]) if layers_ else 0


def network_inputs(model, x_t, t, labels=None, augment=None) -> list:
    """The input list of ``model``: [x_t, t], then labels (a conditional U-Net), then the augmentation
    labels (a U-Net with ``augment_dim``): ``augment`` (B, A), or zeros (no transform: sampling)."""
    inputs = [x_t, t] if labels is None else [x_t, t, labels]
    dim = augment_dim(model)
    if dim:
        inputs.append(tf.zeros([tf.shape(x_t)[0], dim], tf.float32) if augment is None else augment)
    return inputs


def count_params(model) -> int:
    """Number of trainable scalars."""
    return int(sum(int(ops.size(w)) for w in model.trainable_weights))


def load_unet(path) -> keras.Model:
    """``keras.models.load_model`` for a saved U-Net (this module registers its custom layers)."""
    return keras.models.load_model(path)
