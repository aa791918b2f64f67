"""Run by tests/test_distribute.py in a subprocess (logical devices must be set before TensorFlow
starts): the Trainer under MirroredStrategy on two logical CPU devices against one device, and a
resumed two-device run against an uninterrupted one. Prints one JSON line of measurements."""
import json
import sys
import tempfile

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from ddpm_lessons.schedule import NoiseSchedule          # noqa: E402  (after the device set-up)
from ddpm_lessons.training import Trainer, TrainConfig   # noqa: E402
from ddpm_lessons.unet import build_unet                 # noqa: E402

SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1,), num_res_blocks=1,   # one level, no attention:
             attention_resolutions=(), groups=4)   # the step under a strategy is tested, not the U-Net (traces 2-3x faster)
ONE, TWO = ["/cpu:0"], ["/cpu:0", "/cpu:1"]
schedule = NoiseSchedule.from_kind("cosine", 100)
images = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 3)).astype("float32")
rng = np.random.default_rng(1)
INIT = None


def trainer(devices, clip, checkpoint_dir=None, precision="float32"):
    """A Trainer on ``devices``; every U-Net starts from the same random weights (none zero, so every
    weight gets a gradient)."""
    global INIT
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        model = build_unet(SMALL, precision=precision)
    if INIT is None:
        INIT = [rng.normal(0, 0.2, w.shape).astype("float32") for w in model.get_weights()]
    model.set_weights(INIT)
    config = TrainConfig(grad_clip=clip, warmup_steps=0, jit_compile=False, checkpoint_every=1)
    return Trainer(model, schedule, config, checkpoint_dir=checkpoint_dir, strategy=strategy)


def one_step(tr, n=8):
    batch = next(iter(tr.strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(images[:n]).batch(n))))
    loss, per_example, t = tr._compiled_step(batch)
    return float(loss), t.numpy(), [w.numpy() for w in tr.model.trainable_variables + tr.ema_model.trainable_variables]


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


# Count the sums over replicas of the whole gradient list (one all_reduce call per replica per sum).
gradient_sums = []
_all_reduce = tf.distribute.ReplicaContext.all_reduce


def counting_all_reduce(self, reduce_op, value, options=None):
    gradient_sums.append(len(tf.nest.flatten(value)))
    return _all_reduce(self, reduce_op, value, options)


tf.distribute.ReplicaContext.all_reduce = counting_all_reduce

out = {}
clip = 0.05                                   # the gradient norm is ~0.25 here: the clip is engaged
l1, t1, w1 = one_step(trainer(ONE, clip))
two32 = trainer(TWO, clip)
gradient_sums.clear()
l2, t2, w2 = one_step(two32)
n_weights = len(two32.model.trainable_variables)
out["gradient_sums_per_replica"] = sum(n == n_weights for n in gradient_sums) / 2
_, _, w_free = one_step(trainer(ONE, None))
out.update(loss_one=l1, loss_two=l2, same_t=bool(np.array_equal(t1, t2)), weights=max_diff(w1, w2),
           unclipped_vs_clipped=max_diff(w1, w_free))
# A global batch of 7 on two replicas: parts of 4 and 3, and still one device's t, noise and step.
o1, s1, v1 = one_step(trainer(ONE, clip), n=7)
o2, s2, v2 = one_step(trainer(TWO, clip), n=7)
out.update(odd_loss_one=o1, odd_loss_two=o2, odd_same_t=bool(np.array_equal(s1, s2)), odd_weights=max_diff(v1, v2))


def first_moments(tr):
    """Adam's first moments after one step: m = (1 - beta_1) g, so they hold the gradient Adam was given
    (clipped and unscaled). Adam's first *update* is ~lr sign(g), blind to the gradient's scale."""
    return [v.numpy() for v in tr.optimizer.variables if v.path.endswith("_momentum")]


# float16 with loss scaling (what "auto" picks on a GPU): the scaled loss, the clip at grad_clip x scale
# on the reduced gradients, and LossScaleOptimizer's unscaling, on two replicas against one device and
# against float32 (two32's step above); compared on the gradient Adam received (relative to its largest entry).
m32 = first_moments(two32)
one16, two16 = trainer(ONE, clip, precision="float16"), trainer(TWO, clip, precision="float16")
f1, f2 = one_step(one16)[0], one_step(two16)[0]
top = max(float(np.abs(m).max()) for m in m32)
out.update(f16_loss_one=f1, f16_loss_two=f2,
           f16_grad_two_vs_one=max_diff(first_moments(one16), first_moments(two16)) / top,
           f16_grad_vs_f32=max_diff(first_moments(two16), m32) / top,
           f16_scale=float(two16.optimizer.dynamic_scale.numpy()), f16_skipped=int(two16.optimizer.iterations.numpy()) == 0)

# A NaN in one replica's part of the batch: no replica takes the step (weights, EMA and counter as before)
# and the statistics name the step.
for precision, bad in (("float32", two32), ("float16", two16)):         # each has taken one step
    before = [w.numpy() for w in bad.model.trainable_variables + bad.ema_model.trainable_variables]
    poisoned = images[:8].copy()
    poisoned[6, 0, 0, 0] = np.nan                              # image 6 is in the second replica's part
    bad._compiled_step(next(iter(bad.strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(poisoned).batch(8)))))
    after = [w.numpy() for w in bad.model.trainable_variables + bad.ema_model.trainable_variables]
    out[f"nan_{precision}_moved"] = max_diff(before, after) if all(np.isfinite(a).all() for a in after) else float("nan")
    out[f"nan_{precision}_step"] = int(bad.step.numpy())
    out[f"nan_{precision}_bad_step"] = int(bad._stats["bad_step"].numpy())

# Reflow's batches carry each image's own noise (flow.pair_dataset): two replicas slice it with the images
# and train on it as one device does; the drawn noise would give another loss.
own_noise = np.random.default_rng(2).standard_normal(images[:8].shape).astype("float32")


def paired_step(tr):
    batch = next(iter(tr.strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices({"images": images[:8], "noise": own_noise}).batch(8))))
    loss, _, t = tr._compiled_step(*tr._split(batch))
    return float(loss), t.numpy(), [w.numpy() for w in tr.model.trainable_variables + tr.ema_model.trainable_variables]


p1, pt1, pw1 = paired_step(trainer(ONE, clip))
p2, pt2, pw2 = paired_step(trainer(TWO, clip))
out.update(pair_loss_one=p1, pair_loss_two=p2, pair_same_t=bool(np.array_equal(pt1, pt2)), pair_weights=max_diff(pw1, pw2),
           pair_vs_drawn_loss=abs(p1 - l1))

data = tf.data.Dataset.from_tensor_slices(images).batch(8)      # two global batches of 8
straight = trainer(TWO, clip)
straight.fit(data, 3, progress=False)
with tempfile.TemporaryDirectory() as tmp:
    first = trainer(TWO, clip, tmp)
    first.fit(data, 2, progress=False)                          # "interrupted" after step 2
    resumed = trainer(TWO, clip, tmp)
    out["resumed_at"] = resumed.restore()
    resumed.fit(data.skip(0), 3, progress=False)
    out["resumed_step"] = int(resumed.step.numpy())
    out["resume"] = max_diff([w.numpy() for w in straight.model.trainable_variables + straight.ema_model.trainable_variables],
                             [w.numpy() for w in resumed.model.trainable_variables + resumed.ema_model.trainable_variables])
print(json.dumps(out))
sys.stdout.flush()
